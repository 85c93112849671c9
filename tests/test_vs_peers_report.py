"""benchmarks/vs_peers.py's own arithmetic, which runs without the peers installed: the alternating timer with its
page-fault count, the generation ceiling, and the table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_peers  # noqa: E402


def test_timed_rounds_alternates_and_counts_page_faults():
    calls = []
    big = 64 << 20  # above glibc's largest mmap threshold (32 MiB): a fresh mapping each call, faulted in on write

    def allocating():
        calls.append("a")
        bytearray(b"x" * big)

    def idle():
        calls.append("b")

    res = vs_peers.timed_rounds({"a": allocating, "b": idle}, work=10.0, rounds=4, warmup=1)
    assert calls[:2] == ["a", "b"]  # warm-up, one call each
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # who goes first swaps every round
    assert set(res) == {"a", "b"}
    for r in res.values():
        assert 0 < r["min"] <= r["median"] <= r["max"]
    # At least one fault per 2 MiB even where transparent huge pages back the mapping (4 KiB pages: 16384 per call).
    assert res["a"]["page_faults"] >= big // (2 << 20)
    assert res["b"]["page_faults"] < res["a"]["page_faults"] / 10


def test_generation_ceiling_adds_the_seconds():
    # 320 tokens: the LM alone in 0.32 s (1000 tok/s), the visual prefix in 0.4 s (800 "tok/s") -> 0.72 s.
    assert vs_peers.generation_ceiling(1000.0, 800.0) == pytest.approx(320 / 0.72)


def test_table_prints_ratios_faults_and_the_ceiling():
    stat = lambda m, f=0: {"median": m, "min": m - 1, "max": m + 1, "page_faults": f}  # noqa: E731
    rows = [dict(case="stage 1 sparc fp32", unit="samples/s", ours=stat(40.0, 7000), peer_name="open_clip",
                 peer=stat(32.0, 28000), flops_per_sample=1e9),
            dict(case="generation (greedy, 16 x 20 tokens)", unit="tokens/s", ours=stat(350.0),
                 peer_name="open_flamingo", peer=stat(160.0), lm_alone=stat(1000.0, 5),
                 visual_prefix=stat(800.0), work=320)]
    md = vs_peers.table(rows, {"fp32": 80e9, "bf16": 1e9})
    lines = md.splitlines()
    assert "| 1.25x | 50.0% / 40.0% | 7000 / 28000 |" in lines[2]
    assert "| 2.19x |" in lines[3]
    assert "ours at 35% of it, open_flamingo at 16%" in lines[4]
    assert "(400 ms per call)" in lines[5] and "| 444.4 | 44% of the LM alone |" in lines[5]
