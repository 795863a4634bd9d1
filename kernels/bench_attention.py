"""Canvas attention: the model's torch path (cat prefix + canvas K/V, then SDPA) against the Triton kernel.

    python -m dgemma_lsp.kernels.bench_attention [--device cuda] [--small] [--json FILE]

Real DiffusionGemma-26B-A4B shapes (batch 1, canvas 256, bf16): a sliding layer (16 q heads, 8 kv heads,
head_dim 256, 1023 cached keys) and a full layer (16 q heads, 2 kv heads, head_dim 512) at 2k and 32k
cached keys.
FLOPs = 4 * Hq * C * K * D (QK^T and PV); the percentage is of a bf16 matmul peak measured here once.
On the CPU (always ``--small``) the kernel runs in Triton's interpreter when TRITON_INTERPRET=1 is set, else
the torch fallback runs: a smoke run either way, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# Without CUDA the kernel runs in Triton's interpreter, which must be chosen before triton is first imported;
# ``python -m`` imports the package (and triton) first, so there the shell must set TRITON_INTERPRET=1.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dgemma_lsp.kernels.attention import canvas_attention  # noqa: E402
from dgemma_lsp.kernels.utils import device_name, triton_usable  # noqa: E402

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


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn))
    fn()  # warm-up (the interpreter's first call parses the kernel)
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - begin) * 1e3 / repeats


def matmul_peak_tflops(device: torch.device, small: bool) -> float:
    """bf16 matmul TFLOP/s of a big square GEMM: the ceiling the attention core is compared with."""
    n = 256 if small else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = _time_ms(lambda: a @ b, device, repeats=3)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _torch_path(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    lo: int,
    start: int,
    k: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    # As model/dgemma.py Attention.forward does in decode mode: concatenate, then SDPA with GQA.
    prefix = (q.shape[0], -1, -1, -1)
    keys = torch.cat([cache_k[:, :, lo:start].expand(prefix), k], dim=2)
    values = torch.cat([cache_v[:, :, lo:start].expand(prefix), v], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, scale=1.0, enable_gqa=True)


def run(device: torch.device, small: bool) -> dict:
    """Times both paths per case; returns the device, the measured peak and one result dict per case."""
    dtype, repeats = torch.bfloat16, 2 if device.type == "cpu" else 20
    peak = matmul_peak_tflops(device, small)
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
        torch_ms = _time_ms(lambda args=args: _torch_path(*args), device, repeats)
        triton_ms = _time_ms(lambda args=args: canvas_attention(*args), device, repeats)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke run; the CPU default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = args.small or device.type == "cpu"  # the interpreter would take hours at the real shapes
    report = run(device, small)
    print(
        f"canvas attention on {report['device']} ({report['kernel']}, {report['dtype']}), "
        f"bf16 matmul peak {report['peak_bf16_matmul_tflops']:.3g} TFLOP/s"
    )
    print(
        f"{'case':<10} {'Hq/Hkv':>7} {'D':>4} {'keys':>7} {'torch ms':>9} {'kernel ms':>9} "
        f"{'TFLOP/s':>8} {'% peak':>7} {'speedup':>8} {'max diff':>9}"
    )
    for c in report["cases"]:
        keys = c["cached_keys"] + c["canvas"]
        print(
            f"{c['name']:<10} {c['hq']:>4}/{c['hkv']:<2} {c['head_dim']:>4} {keys:>7} "
            f"{c['torch_ms']:>9.3f} {c['triton_ms']:>9.3f} {c['triton_tflops']:>8.2f} "
            f"{c['triton_pct_peak']:>6.1f}% {c['speedup']:>7.2f}x {c['max_abs_diff']:>9.2g}"
        )
    if report["kernel"] != "triton":
        print(
            "(the Triton kernel did not run: set TRITON_INTERPRET=1 in the environment to run it on the CPU)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
