"""Benchmark: the model's torch norms against kernels/norms.py.

    python -m dgemma_lsp.kernels.bench_norms [--device cuda] [--small] [--json FILE]

Real shapes (docs/DIFFUSIONGEMMA.md section 1): 256 canvas rows of width 2816 for RMSNorm + residual (bf16);
the sliding layers' head path, 16 query + 8 key + 8 value heads of 256, with the KV-cache write. Both are
memory-bound: scored in GB/s over the bytes that must move (read inputs once, write outputs once) and as a
share of the measured copy bandwidth. On the CPU (TRITON_INTERPRET=1, --small) it is only a smoke run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import triton.testing

from . import norms, reference
from .utils import device_name, triton_usable

SHAPES = {
    "real": {"rows": 256, "dim": 2816, "n_heads": 16, "kv_heads": 8, "head_dim": 256},
    "small": {"rows": 7, "dim": 48, "n_heads": 4, "kv_heads": 2, "head_dim": 16},
}


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_copy_gbps(device: torch.device) -> float:
    size = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * size / _time_ms(lambda: dst.copy_(src), device) / 1e6


def run(device: torch.device, small: bool) -> dict[str, Any]:
    shape = SHAPES["small" if small else "real"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = dtype.itemsize
    rows, dim = shape["rows"], shape["dim"]
    x = torch.randn(rows, dim, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(dim, device=device, dtype=dtype)
    peak = peak_copy_gbps(device)

    def score(name: str, torch_fn: Callable[[], object], triton_fn: Callable[[], object], nbytes: int):
        torch_ms, triton_ms = _time_ms(torch_fn, device), _time_ms(triton_fn, device)
        gbps = nbytes / triton_ms / 1e6
        return {
            "op": name, "torch_ms": torch_ms, "triton_ms": triton_ms, "speedup": torch_ms / triton_ms,
            "triton_gbps": gbps, "percent_of_copy_peak": 100 * gbps / peak,
        }  # fmt: skip

    results = [
        score(
            "rms_norm+residual",
            lambda: reference.rms_norm(x, weight, 1e-6, residual),
            lambda: norms.rms_norm(x, weight, 1e-6, residual),
            3 * x.numel() * size + weight.numel() * size,
        )
    ]
    hq, hkv, hd = shape["n_heads"], shape["kv_heads"], shape["head_dim"]
    heads = hq + 2 * hkv
    qkv = torch.randn(1, rows, heads, hd, device=device, dtype=dtype)
    head_norm = torch.randn(heads, hd, device=device, dtype=dtype)
    cos, sin = (
        torch.randn(rows, hd, device=device, dtype=dtype),
        torch.randn(rows, hd, device=device, dtype=dtype),
    )
    cache = [torch.zeros(1, hkv, 2 * rows, hd, device=device, dtype=dtype) for _ in range(2)]
    args = (qkv, head_norm, cos, sin, hq, hkv, 1e-6)
    # Read qkv and the tables, write q, k, v and the cache copies of k and v.
    moved = (qkv.numel() + 2 * cos.numel() + qkv.numel() + 2 * hkv * rows * hd) * size
    results.append(
        score(
            "head_norm+rope+kv_write",
            lambda: reference.head_norm_rope(*args, cache=(*cache, rows)),
            lambda: norms.head_norm_rope(*args, cache=(*cache, rows)),
            moved,
        )
    )
    return {"device": device_name(device), "dtype": str(dtype), "peak_copy_gbps": peak, "ops": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    if not triton_usable(device):
        print(
            f"Triton cannot run on {device}: use CUDA, or set TRITON_INTERPRET=1 for the CPU", file=sys.stderr
        )
        return 2
    if device.type == "cpu" and not options.small:
        print("the real shapes take hours in Triton's CPU interpreter: pass --small", file=sys.stderr)
        return 2
    result = run(device, options.small)
    print(f"{result['device']} ({result['dtype']}), copy peak {result['peak_copy_gbps']:.0f} GB/s")
    for row in result["ops"]:
        print(
            f"  {row['op']:<24} torch {row['torch_ms']:8.3f} ms  triton {row['triton_ms']:8.3f} ms  "
            f"{row['speedup']:5.2f}x  {row['triton_gbps']:7.1f} GB/s ({row['percent_of_copy_peak']:.0f}%)"
        )
    if options.json:
        with open(options.json, "w") as file:
            json.dump(result, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
