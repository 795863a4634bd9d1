"""Launch helpers shared by the kernels (capability probes, block sizes, contiguity) and the benches' timing,
measured peaks and command line."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Probed, not imported: importing Triton costs start-up time on machines that never launch a kernel.
HAVE_TRITON = importlib.util.find_spec("triton") is not None  # else kernels fall back to torch


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (slowly); read when kernels are defined."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def triton_import_error() -> str | None:
    """Why Triton does not import (not installed, or an installed one failing: a missing libtriton, a
    CUDA mismatch); None when it does. Tried once, when a kernel could first run."""
    if not HAVE_TRITON:
        return "Triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # whatever a broken install raises: the torch kernels run instead
        return f"Triton does not import ({type(exc).__name__}: {exc})"
    return None


def triton_usable(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of ``device``: CUDA with Triton, or the interpreter."""
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and not interpreting()):
        return False
    return triton_import_error() is None


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_size(n: int, limit: int, minimum: int = 16) -> int:
    """The power of two >= n (at least ``minimum``, so tl.dot accepts it); ValueError past ``limit``."""
    size = max(minimum, next_power_of_2(n))
    if size > limit:
        raise ValueError(f"dimension {n} needs a block of {size} > {limit}; split it")
    return size


def contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Kernels index with plain row-major strides: copy only what is not already laid out that way."""
    return tuple(t if t.is_contiguous() else t.contiguous() for t in tensors)


@functools.cache
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (Triton interpreter)" if interpreting() else "cpu"


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds per call of ``fn``: do_bench's median on CUDA; elsewhere (a smoke run, not a
    measurement) the median of 3 perf_counter runs after one warm-up (the interpreter's first call parses)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_copy_gbps(device: torch.device, small: bool) -> float:
    """Copy bandwidth (GB/s, read + write) of a large tensor copy (1 GiB; 16 MiB when ``small``)."""
    size = (1 << 24) if small else (1 << 30)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * size / time_ms(lambda: dst.copy_(src), device) / 1e6


def peak_matmul_tflops(device: torch.device, small: bool) -> float:
    """Matmul TFLOP/s of a square GEMM (n=8192; 256 when ``small``), bf16 on CUDA, fp32 elsewhere."""
    n = 256 if small else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / time_ms(lambda: a @ b, device) / 1e9


def tune_main(
    argv: list[str] | None,
    description: str,
    run: Callable[[torch.device, bool, float], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    budget_s: float,
) -> int:
    """The launch sweeps' command line (``--device``, ``--small``, ``--budget-s``, ``--json FILE``): writes
    ``result = run(device, small, budget_s)`` to the JSON file and prints ``report(result)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    parser.add_argument("--budget-s", type=float, default=budget_s, help="start none after this")
    parser.add_argument("--json", type=Path, metavar="FILE", required=True)
    options = parser.parse_args(argv)
    if not triton_usable(torch.device(options.device)):  # it would time the torch fallback under each name
        print(f"Triton cannot run on {options.device}: nothing to tune", file=sys.stderr)
        return 2
    result = run(torch.device(options.device), options.small, options.budget_s)
    options.json.write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


def bench_main(
    argv: list[str] | None,
    description: str,
    run: Callable[[torch.device, bool], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """The benches' command line (``--device``, ``--small``, ``--json FILE``): refuses, exit 2, where Triton
    cannot run or on the CPU without ``--small``; else prints ``report(result)`` for ``result = run(device,
    small)`` and writes ``result`` to the JSON file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    if not triton_usable(device):
        print(
            f"Triton cannot run on {device}: use CUDA, or set TRITON_INTERPRET=1 in the environment (before "
            "Python starts: `python -m` imports triton first) to run the kernels in its CPU interpreter",
            file=sys.stderr,
        )
        return 2
    if device.type == "cpu" and not options.small:
        print("the real shapes take hours in Triton's CPU interpreter: pass --small", file=sys.stderr)
        return 2
    result = run(device, options.small)
    print(report(result))
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
