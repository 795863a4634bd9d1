"""Benchmark the fused vocabulary head against the torch step tail that model/fast.py runs today.

    python -m dgemma_lsp.kernels.bench_vocab_head [--device cuda] [--small] [--json FILE]

Real shapes: one canvas of 256 rows, vocab 262144, hidden 2816, bf16 (DiffusionGemma-26B-A4B). FLOPs are the
two GEMMs (logits and soft embedding, 4 R V d); bytes are the compulsory traffic: E read twice, hidden read,
soft written. Both are reported against a measured peak (a large bf16 matmul, a large tensor copy).
``triton`` is the default launch (GEMMs by cuBLAS) fed the Exp(1) noise tensor the fast backend draws each
step (drawn inside the timing, as the torch tail draws its own), ``fused_gemm`` the one with the GEMMs in the
kernels, ``own_noise`` the kernel drawing its own (seeded) noise. Results before 2026-11-29 timed the
kernel's own noise as ``triton``. On the CPU (TRITON_INTERPRET=1, --small) it is only a smoke run.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from dgemma_lsp.kernels.utils import (
    bench_main,
    device_name,
    peak_copy_gbps,
    peak_matmul_tflops,
    time_ms,
    triton_usable,
)
from dgemma_lsp.kernels.vocab_head import fused_gemm_config, vocab_head

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


def _report(result: dict) -> str:
    fallback = "" if result["triton"] else " (Triton unusable: reference fallback)"
    lines = [
        f"vocab_head on {result['device']}: R={result['rows']} V={result['vocab']} d={result['dim']} "
        f"{result['dtype']}{fallback}",
        f"  measured peak: {result['peak_gbps']:.0f} GB/s copy, {result['peak_tflops']:.1f} TFLOP/s matmul",
    ]
    for name in ("torch", "triton"):
        lines.append(
            f"  {name:>6}: {result[f'{name}_ms']:9.3f} ms  {result[f'{name}_tflops']:7.2f} TFLOP/s "
            f"({result[f'{name}_pct_peak_flops']:5.1f} %)  {result[f'{name}_gbps']:8.1f} GB/s "
            f"({result[f'{name}_pct_peak_bw']:5.1f} %)"
        )
    lines.append(f"  GEMMs in Triton too: {result['fused_gemm_ms']:.3f} ms")
    lines.append(f"  the kernel's own noise instead of a drawn tensor: {result['own_noise_ms']:.3f} ms")
    lines.append(
        f"  speedup {result['speedup']:.2f}x; |lse err| {result['lse_max_abs_err']:.2g}, |entropy err| "
        f"{result['entropy_max_abs_err']:.2g}, argmax agreement {result['argmax_agreement']:.3f}"
    )
    return "\n".join(lines)


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

    noise = torch.empty(rows, vocab, device=device)

    def fused() -> object:  # as the fast backend runs it: Exp(1) noise drawn into a buffer, then read
        noise.exponential_(generator=generator)
        return vocab_head(hidden, weight, temperature, softcap=SOFTCAP, noise=noise)

    def fused_own_noise() -> object:  # the kernel's own Gumbel noise (seeded): no noise tensor at all
        return vocab_head(hidden, weight, temperature, softcap=SOFTCAP, seed=0)

    def fused_gemm() -> object:  # the GEMMs inside the kernels too
        launch = fused_gemm_config(rows, dtype, device)
        noise.exponential_(generator=generator)
        return vocab_head(hidden, weight, temperature, softcap=SOFTCAP, noise=noise, launch=launch)

    # Sanity before timing: the statistics agree (the samples use different noise, so they are not compared).
    want, got = torch_tail(hidden, weight, temperature, generator), fused()
    lse_err = float((got.lse - want[0]).abs().max())
    entropy_err = float((got.entropy - want[1]).abs().max())
    argmax_agree = float((got.argmax == want[2]).float().mean())

    torch_ms = time_ms(lambda: torch_tail(hidden, weight, temperature, generator), device)
    triton_ms = time_ms(fused, device)
    own_noise_ms = time_ms(fused_own_noise, device)
    fused_gemm_ms = time_ms(fused_gemm, device)
    peaks = {"peak_gbps": peak_copy_gbps(device, small), "peak_tflops": peak_matmul_tflops(device, small)}
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
        "fused_gemm_ms": fused_gemm_ms,
        "own_noise_ms": own_noise_ms,
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
    return bench_main(argv, __doc__.splitlines()[0], run, _report)


if __name__ == "__main__":
    sys.exit(main())
