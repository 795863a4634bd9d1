"""Sweep canvas attention's launch configuration at the real shapes (a sliding layer and a full layer with
2k cached keys); the best per head dim is copied into ``attention._launch_config`` by hand, citing the
results file.

    python -m dgemma_lsp.kernels.tune_attention --json FILE [--budget-s 60]                     # CUDA
    TRITON_INTERPRET=1 python -m dgemma_lsp.kernels.tune_attention --device cpu --small --json FILE

Every (BLOCK_M, BLOCK_N, num_warps, num_stages) in the grid below, half the budget per case; a
configuration must agree with the current one before it is timed, and one that does not fit the GPU is
recorded with its error.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import torch

from dgemma_lsp.kernels.attention import _launch_config, canvas_attention
from dgemma_lsp.kernels.bench_attention import REAL_CASES, SMALL_CASES
from dgemma_lsp.kernels.utils import device_name, time_ms, tune_main


def _grid(small: bool, head_dim: int) -> list[tuple[int, int, int, int]]:
    if small:  # a smoke run: a few configurations the interpreter gets through quickly
        return [(16, 16, 4, 1), (32, 16, 4, 1)]
    configs = itertools.product((16, 32, 64, 128), (32, 64, 128), (4, 8), (1, 2, 3))
    # Head dim 512: a [BLOCK_M, 512] fp32 accumulator and [BLOCK_N, 512] K/V tiles; larger ones spill.
    return [c for c in configs if head_dim <= 256 or c[0] * c[1] <= 64 * 64]


def _sweep(device: torch.device, small: bool, case: tuple, deadline: float) -> dict[str, Any]:
    name, hq, hkv, dim, n_prefix, canvas = case
    dtype = torch.bfloat16
    lo, start = 1, 1 + n_prefix
    scale = dim**-0.25  # unit-variance scores, like the model's normalised q and k
    q = torch.randn(1, hq, canvas, dim, device=device).to(dtype) * scale
    cache_k = torch.randn(1, hkv, start + canvas, dim, device=device).to(dtype) * scale
    cache_v = torch.randn(1, hkv, start + canvas, dim, device=device).to(dtype)
    k = torch.randn(1, hkv, canvas, dim, device=device).to(dtype) * scale
    v = torch.randn(1, hkv, canvas, dim, device=device).to(dtype)

    def call(cfg: tuple[int, int, int, int]) -> torch.Tensor:
        return canvas_attention(q, cache_k, cache_v, lo, start, k, v, launch=cfg)

    current = _launch_config(dim, canvas)
    want = call(current).float()
    results: list[dict[str, Any]] = []
    for cfg in [current, *(c for c in _grid(small, dim) if c != current)]:
        if time.perf_counter() > deadline:
            break
        row: dict[str, Any] = {"launch": list(cfg)}
        try:
            row["max_abs_diff"] = (call(cfg).float() - want).abs().max().item()
            if row["max_abs_diff"] < 1e-2:
                row["ms"] = time_ms(lambda cfg=cfg: call(cfg), device)
        except Exception as exc:  # out of shared memory, registers...: record it and go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        results.append(row)
    timed = sorted((r for r in results if "ms" in r), key=lambda r: r["ms"])
    return {
        "name": name,
        "head_dim": dim,
        "cached_keys": n_prefix,
        "canvas": canvas,
        "current": list(current),
        "current_ms": results[0].get("ms"),
        "best": timed[0]["launch"] if timed else None,
        "best_ms": timed[0]["ms"] if timed else None,
        "results": results,
    }


def run(device: torch.device, small: bool, budget_s: float) -> dict[str, Any]:
    torch.manual_seed(0)
    cases = (SMALL_CASES if small else REAL_CASES)[:2]
    start = time.perf_counter()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": "bfloat16",
        "cases": [
            _sweep(device, small, case, start + budget_s * (i + 1) / len(cases))
            for i, case in enumerate(cases)
        ],
    }


def _report(result: dict[str, Any]) -> str:
    lines = []
    for case in result["cases"]:
        current, best = f"{case['current_ms']} ms {case['current']}", f"{case['best_ms']} ms {case['best']}"
        lines.append(f"{case['name']}: current {current}, best {best}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return tune_main(argv, __doc__.splitlines()[0], run, _report, budget_s=60.0)


if __name__ == "__main__":
    sys.exit(main())
