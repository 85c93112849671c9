"""Throughput and MFU (model FLOPs utilisation), nanoGPT style.

MFU = model FLOPs actually computed per second / the device's peak. The peak is *measured* once at start
(a large matmul in the training precision) unless the config names it, so the number is honest on any
CPU or GPU rather than a datasheet guess.
"""
from __future__ import annotations

import time

import torch


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 4) -> float:
    """FLOP/s of a square matmul of `size` in `dtype` on `device` (best of `repeats`)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def transformer_train_flops(params: int, tokens: int, layers: int, width: int) -> float:
    """Training FLOPs of one sequence: 6 * params * tokens (fwd + bwd matmuls) + attention scores
    (12 * layers * width * tokens^2), the PaLM appendix-B estimate that nanoGPT uses."""
    return 6 * params * tokens + 12 * layers * width * tokens**2


class Throughput:
    """Tracks samples/s and MFU over a sliding window of steps."""

    def __init__(self, flops_per_sample: float, peak_flops: float | None):
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops
        self._t0 = time.perf_counter()
        self._samples = 0

    def update(self, samples: int) -> None:
        self._samples += samples

    def read(self, reset: bool = True) -> dict:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self._samples / elapsed
        out = {"samples_per_s": rate}
        if self.peak_flops:
            out["mfu"] = rate * self.flops_per_sample / self.peak_flops
        if reset:
            self._t0, self._samples = time.perf_counter(), 0
        return out
