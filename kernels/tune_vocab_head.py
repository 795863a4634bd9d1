"""Sweep the fused vocabulary head's launch configuration at the real shapes; the best is copied into
``vocab_head._launch_config`` by hand, citing the results file.

    python -m dgemma_lsp.kernels.tune_vocab_head --json FILE [--budget-s 170]                  # CUDA
    TRITON_INTERPRET=1 python -m dgemma_lsp.kernels.tune_vocab_head --device cpu --small --json FILE

Greedy phases from the current configuration (GEMMs by cuBLAS): the statistics pass's tiles and warps, the
softmax pass's tiles, the number of programs; last, the GEMMs inside the kernels with their own best tiles
(``vocab_head.fused_gemm_config``). Every configuration must give the same
argmax and log-sum-exp as the current one before it is timed; one that does not fit the GPU is recorded
with its error. The budget stops the sweep early (each configuration compiles two kernels).
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import torch

from dgemma_lsp.kernels.bench_vocab_head import REAL, SMALL, TEMPERATURE
from dgemma_lsp.kernels.utils import device_name, time_ms, tune_main
from dgemma_lsp.kernels.vocab_head import _launch_config, fused_gemm_config, vocab_head


def _phases(small: bool, sms: int, fused_gemm: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Candidate changes per phase, applied to the best configuration found so far."""
    if small:  # a smoke run: a few configurations the interpreter gets through quickly
        return [[{"stats_v": 32}, {"block_r": 16}], [{"soft_v": 32}], [{"programs": 2}], [fused_gemm]]
    stats = [
        {"block_r": r, "stats_v": v, "warps": warps}
        for r, v, warps in itertools.product((8, 16, 32, 64), (128, 256, 512, 1024), (4, 8))
        if r * v <= 16384  # larger tiles spill
    ]
    soft = [{"soft_v": v} for v in (256, 512, 1024, 2048, 4096)]
    return [stats, soft, [{"programs": n * sms} for n in (1, 2, 4, 8)], [fused_gemm]]


def run(device: torch.device, small: bool, budget_s: float) -> dict[str, Any]:
    shape = SMALL if small else REAL
    rows, vocab, dim = shape["rows"], shape["vocab"], shape["dim"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    hidden = torch.randn(rows, dim, device=device).to(dtype)
    weight = (torch.randn(vocab, dim, device=device) * (3.0 / dim**0.5)).to(dtype)
    current = _launch_config(rows, dtype, device)
    want = vocab_head(hidden, weight, TEMPERATURE, seed=1, launch=current)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    deadline = time.perf_counter() + budget_s
    results: list[dict[str, Any]] = []

    def measure(cfg: dict[str, int]) -> float:
        """ms per call; infinity where the configuration fails or disagrees."""
        row: dict[str, Any] = dict(cfg)

        def call() -> Any:
            return vocab_head(hidden, weight, TEMPERATURE, seed=1, launch=cfg)

        try:
            got = call()
            row["agrees"] = bool(
                (got.argmax == want.argmax).float().mean() > 0.99
                and torch.allclose(got.lse, want.lse, atol=1e-2)
            )
            if row["agrees"]:
                row["ms"] = time_ms(call, device)
        except Exception as exc:  # out of shared memory, registers...: record it and go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        results.append(row)
        return row.get("ms", float("inf"))

    best, best_ms = dict(current), measure(current)
    for phase in _phases(small, sms, fused_gemm_config(rows, dtype, device)):
        for change in phase:
            cfg = {**best, **change}
            if cfg == best or time.perf_counter() > deadline:
                continue
            ms = measure(cfg)
            if ms < best_ms:
                best, best_ms = cfg, ms
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        **shape,
        "current": current,
        "current_ms": results[0].get("ms"),
        "best": best,
        "best_ms": best_ms,
        "results": results,
    }


def _report(result: dict[str, Any]) -> str:
    return "\n".join(f"{name}: {result[f'{name}_ms']} ms {result[name]}" for name in ("current", "best"))


def main(argv: list[str] | None = None) -> int:
    return tune_main(argv, __doc__.splitlines()[0], run, _report, budget_s=170.0)


if __name__ == "__main__":
    sys.exit(main())
