"""kernels/moe.py against kernels/reference.py; the references against model/dgemma.py's Router/Experts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dgemma_lsp.kernels import bench_moe, moe, reference
from dgemma_lsp.model.config import ModelArgs, named_config
from dgemma_lsp.model.dgemma import Experts, Router
from dgemma_lsp.model.load import quantize_experts
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.bfloat16]
# (T, d, I, E, k): the brief's odd shapes, T=1, and more experts than assignments.
SHAPES = [(7, 48, 40, 6, 2), (7, 48, 40, 5, 3), (1, 48, 40, 6, 2), (3, 24, 20, 16, 2)]


def make_logits(tokens: int, experts: int) -> torch.Tensor:
    """Router logits without near-ties: a shuffled ladder of distinct values per row, plus small noise."""
    ladder = torch.stack([torch.randperm(experts) for _ in range(tokens)]).float() * 0.25
    return (ladder + 0.01 * torch.randn(tokens, experts)).to(DEVICE)


def make_experts(
    experts: int, dim: int, inter: int, dtype: torch.dtype, fp8: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """gate_up [E, 2I, d], down [E, d, I]; FP8 as model/load.py quantize_experts stores them."""
    gate_up = torch.randn(experts, 2 * inter, dim, device=DEVICE) * dim**-0.5
    down = torch.randn(experts, dim, inter, device=DEVICE) * inter**-0.5
    if not fp8:
        return gate_up.to(dtype), down.to(dtype), None, None
    module = SimpleNamespace(gate_up_proj=gate_up, down_proj=down, gate_up_scale=None, down_scale=None)
    quantize_experts(SimpleNamespace(layers=[SimpleNamespace(experts=module)]))  # type: ignore[arg-type]
    return module.gate_up_proj.data, module.down_proj.data, module.gate_up_scale, module.down_scale


def make_routing(tokens: int, experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.rand(experts, device=DEVICE) + 0.5
    return reference.route(make_logits(tokens, experts), scale, top_k)


# ---------------------------------------------------------------------------------------------- router


@pytest.mark.parametrize("logit_dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "experts", "top_k"), [(7, 6, 2), (7, 5, 3), (1, 6, 2), (37, 128, 8)])
def test_route_matches_reference(logit_dtype: torch.dtype, tokens: int, experts: int, top_k: int) -> None:
    logits = make_logits(tokens, experts).to(logit_dtype)
    scale = (torch.rand(experts, device=DEVICE) + 0.5).to(logit_dtype)
    weights, index = moe.route(logits, scale, top_k)
    expected_w, expected_i = reference.route(logits, scale, top_k)
    assert weights.dtype == torch.float32 and index.dtype == torch.int64
    assert weights.shape == index.shape == (tokens, top_k)
    assert torch.equal(index, expected_i)
    assert_close(weights, expected_w, torch.float32)  # fp32 softmax whatever the logits' dtype


def test_route_ties_go_to_the_lower_index() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]], device=DEVICE)
    weights, index = moe.route(logits, torch.ones(5, device=DEVICE), 3)
    assert index.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert_close(weights, torch.full((2, 3), 1 / 3, device=DEVICE), torch.float32)


def test_route_rejects_bad_arguments() -> None:
    logits = torch.zeros(3, 6, device=DEVICE)
    with pytest.raises(ValueError, match="top_k"):
        moe.route(logits, torch.ones(6, device=DEVICE), 7)
    with pytest.raises(ValueError, match="per_expert_scale"):
        moe.route(logits, torch.ones(5, device=DEVICE), 2)
    with pytest.raises(ValueError, match="logits"):
        moe.route(logits[0], torch.ones(6, device=DEVICE), 2)


# ------------------------------------------------------------------------------------------ expert MLP


@pytest.mark.parametrize("fp8", [False, True], ids=["plain", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "dim", "inter", "experts", "top_k"), SHAPES)
def test_expert_mlp_matches_reference(
    dtype: torch.dtype, fp8: bool, tokens: int, dim: int, inter: int, experts: int, top_k: int
) -> None:
    x = torch.randn(tokens, dim, device=DEVICE).to(dtype)
    gate_up, down, gate_up_scale, down_scale = make_experts(experts, dim, inter, dtype, fp8)
    weights, index = make_routing(tokens, experts, top_k)
    out = moe.expert_mlp(x, weights, index, gate_up, down, gate_up_scale, down_scale)
    expected = reference.expert_mlp(x, weights, index, gate_up, down, gate_up_scale, down_scale)
    assert out.dtype == dtype and out.shape == (tokens, dim)
    assert expected.abs().max() > 0.1  # the comparison means something
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("fp8", [False, True], ids=["plain", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_expert_mlp_several_tiles_and_k_steps(dtype: torch.dtype, fp8: bool) -> None:
    """Small tiles: experts with more rows than a tile, several K steps and column blocks, empty experts."""
    tokens, dim, inter, experts, top_k = 23, 48, 40, 6, 2
    x = torch.randn(tokens, dim, device=DEVICE).to(dtype)
    gate_up, down, gate_up_scale, down_scale = make_experts(experts, dim, inter, dtype, fp8)
    # Experts 0 and 3 take every token (23 rows > one 16-row tile); 1, 2, 4, 5 get none.
    index = torch.tensor([[3, 0] if t % 2 else [0, 3] for t in range(tokens)], device=DEVICE)
    weights = torch.rand(tokens, top_k, device=DEVICE)
    out = moe._expert_mlp(
        x, weights, index, gate_up, down, gate_up_scale, down_scale, block_m=16, block_n=16, block_k=16
    )
    expected = reference.expert_mlp(x, weights, index, gate_up, down, gate_up_scale, down_scale)
    # Dequantised FP8 weights, bf16 between the GEMMs: a rounding flipped there by another summation order
    # moves an output by a few ulps.
    loose = (3e-2, 3e-2) if fp8 and dtype == torch.bfloat16 else None
    assert_close(out, expected, dtype, tolerance=loose)


def test_expert_mlp_empty_experts_and_int32_index() -> None:
    """Most experts get no rows; int32 indices work like int64."""
    tokens, dim, inter, experts = 5, 48, 40, 9
    x = torch.randn(tokens, dim, device=DEVICE)
    gate_up, down, _, _ = make_experts(experts, dim, inter, torch.float32, False)
    index = torch.tensor([[8, 2]] * tokens, device=DEVICE, dtype=torch.int32)
    weights = torch.rand(tokens, 2, device=DEVICE)
    expected = reference.expert_mlp(x, weights, index.long(), gate_up, down)
    assert_close(moe.expert_mlp(x, weights, index, gate_up, down), expected, torch.float32)


def test_tile_schedule_covers_every_row_once() -> None:
    counts = [0, 17, 3, 0, 32, 1]
    sorted_experts = torch.repeat_interleave(torch.arange(6), torch.tensor(counts)).to(DEVICE)
    tile_expert, start, end = (t.tolist() for t in moe._tile_schedule(sorted_experts, 6, 16))
    used = [(e, s, min(s + 16, n)) for e, s, n in zip(tile_expert, start, end, strict=True) if e < 6]
    assert [e for e, _, _ in used] == [1, 1, 2, 4, 4, 5]
    rows = [r for e, s, n in used for r in range(s, n)]
    assert rows == list(range(sum(counts)))
    assert all(sorted_experts[r].item() == e for e, s, n in used for r in range(s, n))


def test_expert_mlp_rejects_bad_arguments() -> None:
    x = torch.randn(3, 48, device=DEVICE)
    gate_up, down, _, _ = make_experts(4, 48, 40, torch.float32, False)
    weights, index = torch.rand(3, 2, device=DEVICE), torch.zeros(3, 2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="down must be"):
        moe.expert_mlp(x, weights, index, gate_up, down[:, :, :-1])
    with pytest.raises(ValueError, match="x's dtype"):
        moe.expert_mlp(x.bfloat16(), weights, index, gate_up, down)
    with pytest.raises(ValueError, match="weights must be"):
        moe.expert_mlp(x, weights[:, :1], index, gate_up, down)
    fp8_gate_up, fp8_down, scale, _ = make_experts(4, 48, 40, torch.float32, True)
    with pytest.raises(ValueError, match="down_scale"):
        moe.expert_mlp(x, weights, index, fp8_gate_up, fp8_down, scale, None)


# ---------------------------------------------------------------------------- the spec is the model's


def tiny_args(dim: int = 48, experts: int = 6, top_k: int = 2, inter: int = 40) -> ModelArgs:
    base = ModelArgs.from_hf(named_config("tiny"))
    return dataclasses.replace(base, dim=dim, num_experts=experts, top_k=top_k, moe_intermediate_size=inter)


@pytest.mark.parametrize("fp8", [False, True], ids=["plain", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_references_equal_model_modules(dtype: torch.dtype, fp8: bool) -> None:
    """reference.route / expert_mlp compute what model/dgemma.py Router (after proj) and Experts compute."""
    args = tiny_args()
    router, experts = Router(args), Experts(args)
    with torch.no_grad():
        router.proj.weight.normal_()
        router.per_expert_scale.uniform_(0.5, 1.5)
        experts.gate_up_proj.normal_(std=args.dim**-0.5)
        experts.down_proj.normal_(std=args.moe_intermediate_size**-0.5)
    router, experts = router.to(DEVICE, dtype), experts.to(DEVICE, dtype)
    if fp8:
        quantize_experts(SimpleNamespace(layers=[SimpleNamespace(experts=experts)]))  # type: ignore[arg-type]
    normed = torch.randn(7, args.dim, device=DEVICE).to(dtype)
    with torch.no_grad():
        weights, index = router(normed)
        logits = router.proj(normed * router.scale * router.root_size)
        ref_weights, ref_index = reference.route(logits, router.per_expert_scale, args.top_k)
        out = experts(normed, weights, index)
    assert torch.equal(ref_index, index)
    assert_close(ref_weights, weights, torch.float32)
    expected = reference.expert_mlp(
        normed,
        weights,
        index,
        experts.gate_up_proj,
        experts.down_proj,
        experts.gate_up_scale,
        experts.down_scale,
    )
    assert_close(expected, out, dtype)
    # And the kernels, fed the module's own tensors.
    assert_close(moe.expert_mlp(normed, weights, index, experts.gate_up_proj, experts.down_proj,
                                experts.gate_up_scale, experts.down_scale), out, dtype)  # fmt: skip


# ------------------------------------------------------------------------------------------------ bench


def test_bench_runs_small(tmp_path: Path) -> None:
    path = tmp_path / "moe.json"
    assert bench_moe.main(["--small", "--device", DEVICE.type, "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["device"] and result["peak_copy_gbps"] > 0
    assert {row["weights"] for row in result["expert_mlp"]} == {"bf16", "fp8"}
    for row in result["expert_mlp"]:
        assert row["torch_ms"] > 0 and row["triton_ms"] > 0 and row["max_abs_diff"] < 0.1
