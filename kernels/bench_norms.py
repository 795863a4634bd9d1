"""Benchmark: the model's torch norms against kernels/norms.py.

    python -m dgemma_lsp.kernels.bench_norms [--device cuda] [--small] [--json FILE]

Real shapes (docs/DIFFUSIONGEMMA.md section 1): 256 canvas rows of width 2816 for RMSNorm + residual (bf16);
the sliding layers' head path, 16 query + 8 key + 8 value heads of 256, with the KV-cache write. Both are
memory-bound: scored in GB/s over the bytes that must move (read inputs once, write outputs once) and as a
share of the measured copy bandwidth. On the CPU (TRITON_INTERPRET=1, --small) it is only a smoke run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from . import norms, reference
from .utils import bench_main, device_name, peak_copy_gbps, time_ms

SHAPES = {
    "real": {"rows": 256, "dim": 2816, "n_heads": 16, "kv_heads": 8, "head_dim": 256},
    "small": {"rows": 7, "dim": 48, "n_heads": 4, "kv_heads": 2, "head_dim": 16},
}


def _report(result: dict[str, Any]) -> str:
    lines = [f"{result['device']} ({result['dtype']}), copy peak {result['peak_copy_gbps']:.0f} GB/s"]
    for row in result["ops"]:
        lines.append(
            f"  {row['op']:<24} torch {row['torch_ms']:8.3f} ms  triton {row['triton_ms']:8.3f} ms  "
            f"{row['speedup']:5.2f}x  {row['triton_gbps']:7.1f} GB/s ({row['percent_of_copy_peak']:.0f}%)"
        )
    return "\n".join(lines)


def run(device: torch.device, small: bool) -> dict[str, Any]:
    shape = SHAPES["small" if small else "real"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = dtype.itemsize
    rows, dim = shape["rows"], shape["dim"]
    x = torch.randn(rows, dim, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(dim, device=device, dtype=dtype)
    peak = peak_copy_gbps(device, small)

    def score(name: str, torch_fn: Callable[[], object], triton_fn: Callable[[], object], nbytes: int):
        torch_ms, triton_ms = time_ms(torch_fn, device), time_ms(triton_fn, device)
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
    return bench_main(argv, __doc__.splitlines()[0], run, _report)


if __name__ == "__main__":
    sys.exit(main())
