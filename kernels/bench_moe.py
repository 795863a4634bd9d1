"""Benchmark: the model's torch MoE (Router tail, Experts) against kernels/moe.py, per layer.

    python -m dgemma_lsp.kernels.bench_moe [--device cuda] [--small] [--json FILE]

Real shapes (docs/DIFFUSIONGEMMA.md sections 1, 5): T=256 canvas tokens, d=2816, I=704, E=128, top-8, bf16
activations, bf16 or FP8 e4m3 expert weights. The expert MLP streams every expert once, so it is scored in
weight GB/s (E * 3 * I * d * bytes, plus FP8 scales) and as a share of the measured device copy bandwidth.
On the CPU (TRITON_INTERPRET=1, --small) it is only a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import triton
import triton.testing
from torch import nn

from ..model.config import ModelArgs, named_config
from ..model.dgemma import Experts
from ..model.load import quantize_experts
from . import moe, reference
from .utils import device_name, triton_usable

SHAPES = {
    "real": {"tokens": 256, "dim": 2816, "inter": 704, "experts": 128, "top_k": 8},
    "small": {"tokens": 7, "dim": 48, "inter": 40, "experts": 6, "top_k": 2},
}


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()  # warm-up: the interpreter's first call is not representative either
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_copy_gbps(device: torch.device) -> float:
    """Device copy bandwidth (read + write) from a large tensor copy: the ceiling for weight streaming."""
    size = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * size / _time_ms(lambda: dst.copy_(src), device) / 1e6


def _experts_module(args: ModelArgs, gate_up: torch.Tensor, down: torch.Tensor, fp8: bool) -> Experts:
    """The model's Experts holding these weights (FP8 through load.quantize_experts, as the model does)."""
    with torch.device("meta"):  # no throw-away fp32 allocation at the real shapes
        module = Experts(args)
    module.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
    module.down_proj = nn.Parameter(down, requires_grad=False)
    if fp8:
        quantize_experts(SimpleNamespace(layers=[SimpleNamespace(experts=module)]))  # type: ignore[arg-type]
    return module


def run(device: torch.device, small: bool) -> dict[str, Any]:
    """Times route and expert_mlp (bf16 and FP8 weights), torch vs Triton; returns the results."""
    shape = SHAPES["small" if small else "real"]
    tokens, dim, inter, experts, top_k = (shape[k] for k in ("tokens", "dim", "inter", "experts", "top_k"))
    args = dataclasses.replace(
        ModelArgs.from_hf(named_config("tiny")),
        dim=dim,
        num_experts=experts,
        top_k=top_k,
        moe_intermediate_size=inter,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    logits = torch.randn(tokens, experts, device=device)
    per_expert_scale = torch.rand(experts, device=device) + 0.5
    result: dict[str, Any] = {
        "device": device_name(device),
        "shape": shape,
        "peak_copy_gbps": peak_copy_gbps(device),
    }

    result["route"] = {
        "torch_ms": _time_ms(lambda: reference.route(logits, per_expert_scale, top_k), device),
        "triton_ms": _time_ms(lambda: moe.route(logits, per_expert_scale, top_k), device),
    }
    weights, index = moe.route(logits, per_expert_scale, top_k)

    gate_up = torch.randn(experts, 2 * inter, dim, device=device, dtype=dtype) * dim**-0.5
    down = torch.randn(experts, dim, inter, device=device, dtype=dtype) * inter**-0.5
    rows = []
    for name, fp8 in (("bf16", False), ("fp8", True)):
        module = _experts_module(args, gate_up, down, fp8)
        tensors = (module.gate_up_proj, module.down_proj, module.gate_up_scale, module.down_scale)
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        with torch.no_grad():
            expected = module(x, weights, index)
            torch_ms = _time_ms(lambda m=module: m(x, weights, index), device)
        got = moe.expert_mlp(x, weights, index, *tensors)
        triton_ms = _time_ms(lambda t=tensors: moe.expert_mlp(x, weights, index, *t), device)
        row: dict[str, Any] = {"weights": name, "weight_bytes": weight_bytes}
        for provider, ms in (("torch", torch_ms), ("triton", triton_ms)):
            gbps = weight_bytes / ms / 1e6
            row |= {f"{provider}_ms": ms, f"{provider}_gbps": gbps,
                    f"{provider}_pct_copy": 100 * gbps / result["peak_copy_gbps"]}  # fmt: skip
        row["max_abs_diff"] = (got.float() - expected.float()).abs().max().item()
        rows.append(row)
        del module
    result["expert_mlp"] = rows
    return result


def _report(result: dict[str, Any]) -> str:
    shape = " ".join(f"{k}={v}" for k, v in result["shape"].items())
    lines = [
        f"moe on {result['device']} ({shape}); peak copy {result['peak_copy_gbps']:.0f} GB/s",
        f"  route              torch {result['route']['torch_ms']:9.4f} ms   "
        f"triton {result['route']['triton_ms']:9.4f} ms",
    ]
    for row in result["expert_mlp"]:
        parts = [
            f"{p} {row[f'{p}_ms']:9.4f} ms {row[f'{p}_gbps']:8.1f} GB/s {row[f'{p}_pct_copy']:5.1f} %"
            for p in ("torch", "triton")
        ]
        lines.append(
            f"  expert_mlp {row['weights']:>4}  {parts[0]}  {parts[1]}  max|diff| {row['max_abs_diff']:.3g}"
        )
    return "\n".join(lines)


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
    print(_report(result))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(result, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
