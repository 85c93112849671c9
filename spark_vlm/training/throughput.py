"""Throughput and MFU (model FLOPs utilisation), nanoGPT style.

MFU = model FLOPs actually computed per second / the device's peak. The peak is *measured* once at start
(a large matmul in the training precision) unless the config names it, so the number is honest on any
CPU or GPU rather than a datasheet guess.
"""
from __future__ import annotations

import time

import torch


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX units.
    Elsewhere (e.g. an AVX2-only CPU) bf16 falls back to slow kernels: several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where it is fast (see `fast_bf16`), else fp32; an explicit choice is kept."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) else "fp32"


def measure_peak_flops(device: torch.device, dtype: torch.dtype, max_size: int = 2048, repeats: int = 4) -> float:
    """FLOP/s of a square matmul in `dtype` on `device` (best of `repeats`). The size grows from 256 until one
    matmul takes >= 20 ms (or reaches `max_size`), so a slow dtype costs well under a second, not minutes."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)  # also the warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        if size >= max_size or time.perf_counter() - t0 >= 0.02:
            break
        size *= 2
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
