"""Padding of token rows: the one loop behind caption ids, Flamingo prompts, stand-in LM batches and POPE."""
from __future__ import annotations

import torch


def right_pad(rows: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (ids [N, length] long, padded with `pad_id`; mask [N, length] bool, True on real tokens).

    `length` defaults to the longest row; rows must not be longer (callers cut them first)."""
    length = max(len(r) for r in rows) if length is None else length
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As `right_pad`, with the padding on the left (generation prompts: every row ends on its last token)."""
    ids, mask = right_pad([row[::-1] for row in rows], pad_id)
    return ids.flip(1), mask.flip(1)


def trim_right_padding(batch: dict[str, torch.Tensor], keys=("input_ids", "attention_mask", "labels"),
                       masks=("attention_mask",)) -> dict:
    """Cut the columns that are padding in every row of every right-padded mask in `masks` (all of `keys` share
    the length): the batch is then as long as its longest sequence, not the configured maximum, and no result
    changes (padding is masked and unscored). At least one column is kept."""
    length = max(1, max(int(batch[m].sum(dim=1).max()) for m in masks if m in batch))
    return {k: (v[:, :length] if k in keys else v) for k, v in batch.items()}
