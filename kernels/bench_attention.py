"""Canvas attention: the model's torch path (canvas K/V after the prefix, then SDPA) against the kernel.

    python -m dgemma_lsp.kernels.bench_attention [--device cuda] [--small] [--json FILE]

Real DiffusionGemma-26B-A4B shapes (batch 1, canvas 256, bf16): a sliding layer (16 q heads, 8 kv heads,
head_dim 256, 1023 cached keys) and a full layer (16 q heads, 2 kv heads, head_dim 512) at 2k and 32k
cached keys.
FLOPs = 4 * Hq * C * K * D (QK^T and PV); the percentage is of a bf16 matmul peak measured here once.
Results before 2026-11-29 timed a torch path the model does not take (prefix and canvas concatenated, GQA
left to SDPA, which at head dim 512 falls back to its fp32 math path). On the CPU (TRITON_INTERPRET=1,
--small) it is only a smoke run.
"""

from __future__ import annotations

from typing import Any

import torch

from dgemma_lsp.kernels.attention import canvas_attention
from dgemma_lsp.kernels.utils import bench_main, device_name, peak_matmul_tflops, time_ms, triton_usable
from dgemma_lsp.model.dgemma import attend

# name, Hq, Hkv, head_dim, cached keys (start - lo), canvas
REAL_CASES = [
    ("sliding", 16, 8, 256, 1023, 256),
    ("full-2k", 16, 2, 512, 2048, 256),
    ("full-32k", 16, 2, 512, 32768, 256),
]
SMALL_CASES = [
    ("sliding", 2, 1, 32, 23, 16),
    ("full", 4, 1, 64, 40, 16),
]


def _torch_path(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    lo: int,
    start: int,
    k: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """What model/dgemma.py's Attention.forward runs for one canvas: its K/V written after the prefix as
    scratch, one slice of the cache read, and `attend` (K/V heads repeated above head dim 256)."""
    canvas = q.shape[2]
    cache_k.narrow(2, start, canvas).copy_(k)
    cache_v.narrow(2, start, canvas).copy_(v)
    keys, values = cache_k.narrow(2, lo, start + canvas - lo), cache_v.narrow(2, lo, start + canvas - lo)
    return attend(q, keys, values, None)


def _report(result: dict[str, Any]) -> str:
    lines = [
        f"canvas attention on {result['device']} ({result['kernel']}, {result['dtype']}), "
        f"bf16 matmul peak {result['peak_bf16_matmul_tflops']:.3g} TFLOP/s",
        f"{'case':<10} {'Hq/Hkv':>7} {'D':>4} {'keys':>7} {'torch ms':>9} {'kernel ms':>9} "
        f"{'TFLOP/s':>8} {'% peak':>7} {'speedup':>8} {'max diff':>9}",
    ]
    for c in result["cases"]:
        keys = c["cached_keys"] + c["canvas"]
        lines.append(
            f"{c['name']:<10} {c['hq']:>4}/{c['hkv']:<2} {c['head_dim']:>4} {keys:>7} "
            f"{c['torch_ms']:>9.3f} {c['triton_ms']:>9.3f} {c['triton_tflops']:>8.2f} "
            f"{c['triton_pct_peak']:>6.1f}% {c['speedup']:>7.2f}x {c['max_abs_diff']:>9.2g}"
        )
    return "\n".join(lines)


def run(device: torch.device, small: bool) -> dict:
    """Times both paths per case; returns the device, the measured peak and one result dict per case."""
    dtype = torch.bfloat16
    peak = peak_matmul_tflops(device, small)
    cases = []
    for name, hq, hkv, dim, n_prefix, canvas in SMALL_CASES if small else REAL_CASES:
        lo, start = 1, 1 + n_prefix  # lo > 0 as in a sliding window; full layers read from 0 (same cost)
        scale = dim**-0.25  # unit-variance scores, like the model's normalised q and k
        q = torch.randn(1, hq, canvas, dim, device=device, dtype=dtype) * scale
        cache_k = torch.randn(1, hkv, start + canvas, dim, device=device, dtype=dtype) * scale
        cache_v = torch.randn(1, hkv, start + canvas, dim, device=device, dtype=dtype)
        k = torch.randn(1, hkv, canvas, dim, device=device, dtype=dtype) * scale
        v = torch.randn(1, hkv, canvas, dim, device=device, dtype=dtype)
        args = (q, cache_k, cache_v, lo, start, k, v)
        diff = (canvas_attention(*args).float() - _torch_path(*args).float()).abs().max().item()
        torch_ms = time_ms(lambda args=args: _torch_path(*args), device)
        triton_ms = time_ms(lambda args=args: canvas_attention(*args), device)
        flops = 4 * hq * canvas * (n_prefix + canvas) * dim
        cases.append(
            {
                "name": name,
                "hq": hq,
                "hkv": hkv,
                "head_dim": dim,
                "cached_keys": n_prefix,
                "canvas": canvas,
                "flops": flops,
                "torch_ms": torch_ms,
                "triton_ms": triton_ms,
                "torch_tflops": flops / (torch_ms * 1e-3) / 1e12,
                "triton_tflops": flops / (triton_ms * 1e-3) / 1e12,
                "triton_pct_peak": 100 * flops / (triton_ms * 1e-3) / 1e12 / peak,
                "speedup": torch_ms / triton_ms,
                "max_abs_diff": diff,
            }
        )
    return {
        "device": device_name(device),
        "kernel": "triton" if triton_usable(device) else "torch fallback",
        "dtype": str(dtype),
        "peak_bf16_matmul_tflops": peak,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__.splitlines()[0], run, _report)


if __name__ == "__main__":
    raise SystemExit(main())
