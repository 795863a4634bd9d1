"""Benchmark the fused vocabulary head against the torch step tail that model/fast.py runs today.

    python -m dgemma_lsp.kernels.bench_vocab_head [--device cuda] [--small] [--json FILE]

Real shapes: one canvas of 256 rows, vocab 262144, hidden 2816, bf16 (DiffusionGemma-26B-A4B). FLOPs are the
two GEMMs (logits and soft embedding, 4 R V d); bytes are the compulsory traffic: E read twice, hidden read,
soft written. Both are reported against a measured peak (a large bf16 matmul, a large tensor copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dgemma_lsp.kernels.utils import device_name, interpreting, triton_usable
from dgemma_lsp.kernels.vocab_head import vocab_head

REAL = {"rows": 256, "vocab": 262144, "dim": 2816}
SMALL = {"rows": 7, "vocab": 1000, "dim": 48}
SOFTCAP = 30.0
TEMPERATURE = 0.6


def torch_tail(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """decode's LM head + fast.py's step_statistics, argmax and self-conditioning input, op for op."""
    w = weight.dtype
    logits = F.linear(hidden, weight).float()  # [R, V]: the GEMM output in w, then an fp32 copy
    logits = torch.tanh(logits / SOFTCAP) * SOFTCAP
    z = logits / temperature
    lse = z.logsumexp(dim=-1, keepdim=True)
    log_p = z - lse
    probs = log_p.exp()
    entropy = -(probs * log_p).sum(-1)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    sample = (probs / noise).argmax(dim=-1)
    argmax = torch.argmax(z, dim=-1)
    soft = torch.softmax(z.to(w), -1, dtype=torch.float32).to(w) @ weight  # [R, d]
    return lse[:, 0], entropy, argmax, sample, soft


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Milliseconds per call: do_bench on CUDA; elsewhere a few perf_counter runs (a smoke run only)."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=25, rep=200))

    def cpu_time(fn: Callable[[], object]) -> float:
        fn()  # warm-up: the interpreter's first call is the slowest
        start, reps = time.perf_counter(), 3
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1e3

    return cpu_time


def _peaks(
    device: torch.device, small: bool, timer: Callable[[Callable[[], object]], float]
) -> dict[str, float]:
    """Measured copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s) of this device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    numel = (1 << 20) if small else (1 << 30)  # 2 GiB of bf16 on the GPU
    src = torch.empty(numel, dtype=dtype, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy_ms = timer(lambda: dst.copy_(src))
    n = 256 if small else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    matmul_ms = timer(lambda: a @ a)
    return {
        "peak_gbps": 2 * src.numel() * src.element_size() / copy_ms / 1e6,
        "peak_tflops": 2 * n**3 / matmul_ms / 1e9,
    }


def run(device: torch.device | str, small: bool) -> dict:
    """Time the torch tail and the fused kernels at the real (or tiny) shapes; the figures as a dict."""
    device = torch.device(device)
    shape = SMALL if small else REAL
    rows, vocab, dim = shape["rows"], shape["vocab"], shape["dim"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the model's weight dtype there
    torch.manual_seed(0)
    hidden = torch.randn(rows, dim, device=device).to(dtype)
    weight = (torch.randn(vocab, dim, device=device) * (3.0 / dim**0.5)).to(dtype)  # logits of std ~3
    temperature = torch.tensor(TEMPERATURE, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def fused() -> object:
        return vocab_head(hidden, weight, temperature, softcap=SOFTCAP, seed=0)

    # Sanity before timing: the statistics agree (the samples use different noise, so they are not compared).
    want, got = torch_tail(hidden, weight, temperature, generator), fused()
    lse_err = float((got.lse - want[0]).abs().max())
    entropy_err = float((got.entropy - want[1]).abs().max())
    argmax_agree = float((got.argmax == want[2]).float().mean())

    timer = _timer(device)
    torch_ms = timer(lambda: torch_tail(hidden, weight, temperature, generator))
    triton_ms = timer(fused)
    peaks = _peaks(device, small, timer)
    flops = 4 * rows * vocab * dim
    nbytes = (2 * vocab * dim + 2 * rows * dim) * weight.element_size()
    result = {
        "op": "vocab_head",
        "device": device_name(device),
        "triton": triton_usable(device),  # False: the launcher fell back to the torch reference
        "dtype": str(dtype).removeprefix("torch."),
        **shape,
        "torch_ms": torch_ms,
        "triton_ms": triton_ms,
        "speedup": torch_ms / triton_ms,
        "flops": flops,
        "bytes": nbytes,
        "lse_max_abs_err": lse_err,
        "entropy_max_abs_err": entropy_err,
        "argmax_agreement": argmax_agree,
        **peaks,
    }
    for name, ms in (("torch", torch_ms), ("triton", triton_ms)):
        result[f"{name}_tflops"] = flops / ms / 1e9
        result[f"{name}_gbps"] = nbytes / ms / 1e6
        result[f"{name}_pct_peak_flops"] = 100 * result[f"{name}_tflops"] / peaks["peak_tflops"]
        result[f"{name}_pct_peak_bw"] = 100 * result[f"{name}_gbps"] / peaks["peak_gbps"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help=f"tiny shapes {SMALL} instead of {REAL}")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cpu":
        if not args.small:
            parser.error("the real shapes need --device cuda; on the CPU use --small (a smoke run)")
        if not interpreting():  # it must be set before triton is imported, which `python -m` does first
            parser.error("on the CPU the kernels run in Triton's interpreter: set TRITON_INTERPRET=1")
    result = run(args.device, args.small)
    fallback = "" if result["triton"] else " (Triton unusable: reference fallback)"
    print(
        f"vocab_head on {result['device']}: R={result['rows']} V={result['vocab']} d={result['dim']} "
        f"{result['dtype']}{fallback}"
    )
    print(f"  measured peak: {result['peak_gbps']:.0f} GB/s copy, {result['peak_tflops']:.1f} TFLOP/s matmul")
    for name in ("torch", "triton"):
        print(
            f"  {name:>6}: {result[f'{name}_ms']:9.3f} ms  {result[f'{name}_tflops']:7.2f} TFLOP/s "
            f"({result[f'{name}_pct_peak_flops']:5.1f} %)  {result[f'{name}_gbps']:8.1f} GB/s "
            f"({result[f'{name}_pct_peak_bw']:5.1f} %)"
        )
    print(
        f"  speedup {result['speedup']:.2f}x; |lse err| {result['lse_max_abs_err']:.2g}, |entropy err| "
        f"{result['entropy_max_abs_err']:.2g}, argmax agreement {result['argmax_agreement']:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
