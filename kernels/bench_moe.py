"""Benchmark: the model's torch MoE (Router tail, Experts) against kernels/moe.py, per layer.

    python -m dgemma_lsp.kernels.bench_moe [--device cuda] [--small] [--json FILE]

Real shapes (docs/DIFFUSIONGEMMA.md sections 1, 5): T=256 canvas tokens, d=2816, I=704, E=128, top-8, bf16
activations, bf16 or FP8 e4m3 expert weights. The expert MLP streams every expert once, so it is scored in
weight GB/s (E * 3 * I * d * bytes, plus FP8 scales) and as a share of the measured device copy bandwidth.
On the CPU (TRITON_INTERPRET=1, --small) it is only a smoke run.
"""

from __future__ import annotations

import dataclasses
import sys
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..model.config import ModelArgs, named_config
from ..model.dgemma import Experts
from ..model.load import quantize_experts
from . import moe, reference
from .utils import bench_main, device_name, peak_copy_gbps, time_ms

SHAPES = {
    "real": {"tokens": 256, "dim": 2816, "inter": 704, "experts": 128, "top_k": 8},
    "small": {"tokens": 7, "dim": 48, "inter": 40, "experts": 6, "top_k": 2},
}


def _experts_module(args: ModelArgs, gate_up: torch.Tensor, down: torch.Tensor, fp8: bool) -> Experts:
    """The model's Experts holding these weights (FP8 through load.quantize_experts, as the model does)."""
    with torch.device("meta"):  # no throw-away fp32 allocation at the real shapes
        module = Experts(args)
    module.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
    module.down_proj = nn.Parameter(down, requires_grad=False)
    if fp8:
        quantize_experts(SimpleNamespace(layers=[SimpleNamespace(experts=module)]))  # type: ignore[arg-type]
    return module


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
        "peak_copy_gbps": peak_copy_gbps(device, small),
    }

    result["route"] = {
        "torch_ms": time_ms(lambda: reference.route(logits, per_expert_scale, top_k), device),
        "triton_ms": time_ms(lambda: moe.route(logits, per_expert_scale, top_k), device),
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
            torch_ms = time_ms(lambda m=module: m(x, weights, index), device)
        got = moe.expert_mlp(x, weights, index, *tensors)
        triton_ms = time_ms(lambda t=tensors: moe.expert_mlp(x, weights, index, *t), device)
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


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__.splitlines()[0], run, _report)


if __name__ == "__main__":
    sys.exit(main())
