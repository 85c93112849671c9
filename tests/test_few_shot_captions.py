"""Few-shot captioning (eval/caption.py --shots): open_flamingo's prompt format, the seeded draw of examples (never
the query image), and the CLI end to end on the in-process tiny run of test_flamingo_pretrained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.evaluation.captioner import draw_shots, read_shot_pool
from test_eval_cli import cli
from test_flamingo import make_model, single_thread  # noqa: F401 (an autouse fixture)
from test_flamingo_pretrained import run_dir  # noqa: F401 (a fixture)

CAPTIONS = ["a red cube left of a blue sphere", "two green cylinders behind a small yellow cube",
            "a large metal sphere in front of a rubber cylinder", "there is one purple cube"]


def test_few_shot_prompt_is_open_flamingos_caption_prompt():
    prompts = FlamingoPrompts(make_model().tokenizer)
    enc = prompts.few_shot_prompts([[CAPTIONS[0], CAPTIONS[1]], [CAPTIONS[3]]])
    # The independent version: the prompt as text, tokenised in one go (the two added tokens are special tokens).
    texts = [f"<image>Output: {CAPTIONS[0]}<|endofchunk|><image>Output: {CAPTIONS[1]}<|endofchunk|><image>Output:",
             f"<image>Output: {CAPTIONS[3]}<|endofchunk|><image>Output:"]
    rows = [prompts.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (2, len(rows[0])) and len(rows[1]) < len(rows[0])
    assert ids[0].tolist() == rows[0] and mask[0].all()
    pad = ids.shape[1] - len(rows[1])  # left padding
    assert ids[1, pad:].tolist() == rows[1] and not mask[1, :pad].any() and mask[1, pad:].all()
    assert (ids == prompts.image_id).sum(1).tolist() == [3, 2]  # one <image> per shot, then the query's
    # open_flamingo's postprocessing: the answer ends at a further "Output"
    answer = prompts.tokenizer(" a red cube Output: two", add_special_tokens=False)["input_ids"]
    assert prompts.decode_few_shot(torch.tensor(answer)) == "a red cube"


def coco_folder(tmp_path, n=5):
    """n random 16x16 images and a COCO captions file giving image k the captions [f"caption {k} a", ... b]."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        images.append({"id": 100 + k, "file_name": f"{k}.png"})
        annotations += [{"id": 2 * k + j, "image_id": 100 + k, "caption": CAPTIONS[(k + j) % 4]} for j in range(2)]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    return folder, captions


def test_shots_are_other_images_drawn_by_seed(tmp_path):
    folder, captions = coco_folder(tmp_path)
    pool = read_shot_pool(captions, folder)
    assert [p.name for p, _ in pool] == [f"{k}.png" for k in range(5)] and pool[1][1] == CAPTIONS[1:3]
    queries = [folder / f"{k}.png" for k in range(5)] * 4
    shots = draw_shots(queries, pool, 3, seed=0, image_size=16)
    assert shots.images.shape[1:] == (16, 16, 3) and len(shots.rows) == 20
    shown = {}  # image row -> the pool image it holds, recovered from the pixels
    pool_pixels = [np.asarray(Image.open(p)) for p, _ in pool]
    for k, img in enumerate(shots.images):
        shown[k] = next(i for i, px in enumerate(pool_pixels) if np.array_equal(px, img))
    for query, row in zip(queries, shots.rows):
        images = [shown[i] for i, _ in row]
        assert len(set(images)) == 3 and int(query.stem) not in images  # distinct, never the query itself
        assert all(caption in pool[i][1] for i, (_, caption) in zip(images, row))
    assert draw_shots(queries, pool, 3, seed=0, image_size=16).rows == shots.rows  # seeded
    assert draw_shots(queries, pool, 3, seed=1, image_size=16).rows != shots.rows
    with pytest.raises(ValueError, match="cannot draw 5 few-shot examples for 0.png: .* 5 captioned images"):
        draw_shots(queries, pool, 5, seed=0, image_size=16)
    with pytest.raises(ValueError, match="--shots must be >= 1"):
        draw_shots(queries, pool, -1, seed=0, image_size=16)


def test_caption_cli_few_shot(run_dir, tmp_path, capsys):  # noqa: F811 (the fixture)
    path, _ = run_dir
    folder, captions = coco_folder(tmp_path)
    caption = cli("caption")
    base = ["--checkpoint", path, "--image-dir", str(folder), "--max-new-tokens", "5", "--batch-size", "2"]
    few = caption.main(base + ["--annotations", str(captions), "--shots", "2", "--out", str(tmp_path / "a.json")])
    assert [r["image_id"] for r in few] == [100, 101, 102, 103, 104] and all(isinstance(r["caption"], str) for r in few)
    # the draw is seeded and batching does not change a caption
    again = caption.main(base + ["--annotations", str(captions), "--shots", "2", "--out", str(tmp_path / "b.json"),
                                 "--batch-size", "5", "--shots-from", str(captions)])
    assert again == few
    capsys.readouterr()
    for flags, message in ((["--shots", "2"], "--shots needs captions to show: give --shots-from"),
                           (["--shots", "2", "--shots-from", str(tmp_path / "none.json")],
                            "cannot read COCO captions file"),
                           (["--annotations", str(captions), "--shots", "5"], "cannot draw 5 few-shot examples")):
        with pytest.raises(SystemExit) as exit_info:
            caption.main(base + flags + ["--out", str(tmp_path / "c.json")])
        err = capsys.readouterr().err.replace("\r", "\n").rstrip("\n").split("\n")[-1]  # after any progress bar
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err
