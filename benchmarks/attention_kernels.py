"""Which attention kernel is faster on this CPU: torch's fused SDPA or the written-out one (attention.py)?

For self-attention over L tokens (8 heads of 64, batch chosen so that batch x L = 4096 tokens), in fp32 and bf16,
it times the forward and the forward + backward of `F.scaled_dot_product_attention` and of
`spark_vlm.models.attention.explicit_attention` (median of `--repeats`), and prints which one `attention()` picks.
This is the measurement behind `EXPLICIT_MAX_KEYS`.

    taskset -c 0 python benchmarks/attention_kernels.py --out benchmarks/results/attention_kernels.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spark_vlm.models.attention import explicit_attention, uses_explicit  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def case(length: int, dtype: torch.dtype, repeats: int) -> dict:
    batch = max(1, 4096 // length)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 8, length, 64, generator=g).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, 8, length, 64, generator=g).to(dtype)
    row = {"keys": length, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
           "attention() uses": "explicit" if uses_explicit(q, k) else "sdpa"}
    for name, fn in (("sdpa", F.scaled_dot_product_attention), ("explicit", explicit_attention)):
        def forward():
            with torch.no_grad():
                fn(q, k, v)

        def forward_backward():
            fn(q, k, v).backward(grad)
        row[f"{name} fwd ms"] = median_ms(forward, repeats)
        row[f"{name} fwd+bwd ms"] = median_ms(forward_backward, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/attention_kernels.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [case(n, dt, args.repeats) for dt in (torch.float32, torch.bfloat16) for n in args.lengths]
    head = ("| keys | dtype | SDPA fwd / fwd+bwd ms | explicit fwd / fwd+bwd ms | SDPA / explicit time (fwd+bwd) "
            "| attention() uses |")
    lines = [head, "|---:|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['keys']} | {r['dtype']} | {r['sdpa fwd ms']:.2f} / {r['sdpa fwd+bwd ms']:.2f} | "
                     f"{r['explicit fwd ms']:.2f} / {r['explicit fwd+bwd ms']:.2f} | "
                     f"{r['sdpa fwd+bwd ms'] / r['explicit fwd+bwd ms']:.2f} | {r['attention() uses']} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "threads": args.threads,
            "machine": platform.processor() or platform.machine()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
