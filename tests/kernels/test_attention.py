"""Canvas attention kernel against its torch reference, and the reference against the model's SDPA call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dgemma_lsp.kernels import reference
from dgemma_lsp.kernels.attention import canvas_attention
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.bfloat16]


def make_inputs(
    batch: int,
    hq: int,
    hkv: int,
    canvas: int,
    dim: int,
    capacity: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """q [B, Hq, C, D], cache_k/cache_v [1, Hkv, capacity, D], k/v [B, Hkv, C, D]; scores of order 1-10."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE).to(dtype)

    scale = dim**-0.25  # keeps q.k near unit variance, like the model's normalised q and k
    q = rand(batch, hq, canvas, dim) * (2 * scale)
    cache_k, cache_v = rand(1, hkv, capacity, dim) * scale, rand(1, hkv, capacity, dim)
    k, v = rand(batch, hkv, canvas, dim) * scale, rand(batch, hkv, canvas, dim)
    return q, cache_k, cache_v, k, v


def random_key_mask(batch: int, canvas: int) -> torch.Tensor:
    """[B, C] bool, a different hidden set per row; each row keeps at least one canvas key."""
    mask = torch.rand(batch, canvas, device=DEVICE) > 0.4
    mask[:, 0] = True
    mask[0, 1:] = True  # row 0 hides nothing, the others differ
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "hq", "hkv", "dim", "lo", "start", "masked"),
    [
        (1, 2, 2, 48, 0, 0, False),  # no prefix: canvas keys only, GQA group 1
        (1, 4, 2, 48, 0, 1, False),  # one cached key, group 2
        (3, 4, 1, 48, 0, 37, True),  # full layer: whole prefix, group 4, per-row key mask
        (3, 4, 2, 32, 5, 42, True),  # sliding window: lo > 0
        (1, 2, 1, 16, 3, 40, True),  # batch 1 with a mask, tiny head_dim
        (1, 4, 2, 256, 2, 70, False),  # the 26B's sliding and full head dims (their launch configs)
        (2, 4, 1, 512, 0, 45, True),
    ],
)
def test_kernel_matches_reference(
    dtype: torch.dtype, batch: int, hq: int, hkv: int, dim: int, lo: int, start: int, masked: bool
) -> None:
    canvas = 7
    q, cache_k, cache_v, k, v = make_inputs(batch, hq, hkv, canvas, dim, start + canvas + 3, dtype)
    key_mask = random_key_mask(batch, canvas) if masked else None
    expected = reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask)
    actual = canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask)
    assert actual.shape == (batch, hq, canvas, dim) and actual.dtype == dtype
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_key_and_query_blocks(dtype: torch.dtype) -> None:
    """A prefix over three key blocks and a canvas over two query blocks (BLOCK_N 64, BLOCK_M 64)."""
    q, cache_k, cache_v, k, v = make_inputs(2, 2, 1, 67, 16, 200, dtype)
    key_mask = random_key_mask(2, 67)
    expected = reference.canvas_attention(q, cache_k, cache_v, 11, 150, k, v, key_mask)
    assert_close(canvas_attention(q, cache_k, cache_v, 11, 150, k, v, key_mask), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_as_the_model_passes_them(dtype: torch.dtype) -> None:
    """q/k/v as transposes of [B, C, H, D] and, at batch 1, the canvas K/V read back from the cache slice."""
    batch, hq, hkv, canvas, dim, start = 1, 4, 2, 7, 48, 20
    heads = torch.randn(batch, canvas, hq + 2 * hkv, dim, device=DEVICE).to(dtype) * dim**-0.25
    q, k, v = (t.transpose(1, 2) for t in heads.split([hq, hkv, hkv], dim=2))
    cache_k, cache_v = make_inputs(1, hq, hkv, canvas, dim, start + canvas + 5, dtype)[1:3]
    cache_k[:, :, start : start + canvas], cache_v[:, :, start : start + canvas] = k, v
    k_view, v_view = cache_k[:, :, start : start + canvas], cache_v[:, :, start : start + canvas]
    expected = reference.canvas_attention(q.contiguous(), cache_k, cache_v, 2, start, k, v)
    assert_close(canvas_attention(q, cache_k, cache_v, 2, start, k_view, v_view), expected, dtype)


@pytest.mark.parametrize("lo,start", [(0, 0), (0, 37), (11, 150), (30, 31)])
def test_window_read_from_device_tensors(lo: int, start: int) -> None:
    """lo and start as device tensors (what a CUDA graph of the step passes) give the int call's output."""
    q, cache_k, cache_v, k, v = make_inputs(2, 4, 2, 7, 32, 160, torch.float32)
    key_mask = random_key_mask(2, 7)
    expected = canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask)
    bounds = torch.tensor([lo, start], device=DEVICE)
    actual = canvas_attention(q, cache_k, cache_v, bounds[0:1], bounds[1:2], k, v, key_mask)
    assert torch.equal(actual, expected)
    with pytest.raises(ValueError, match="both"):
        canvas_attention(q, cache_k, cache_v, bounds[0:1], start, k, v, key_mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo,start,window", [(0, 0, 0), (0, 40, 0), (30, 45, 16), (0, 3, 16)])
def test_causal_encoder_attention(dtype: torch.dtype, lo: int, start: int, window: int) -> None:
    """The encoder's form: new tokens attend causally to each other and, in a sliding layer, only to keys
    less than ``window`` positions back (the prefix too); bounds as ints and as device tensors."""
    q, cache_k, cache_v, k, v = make_inputs(1, 4, 2, 20, 32, 70, dtype)
    expected = reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v, causal=True, window=window)
    bounds = torch.tensor([lo, start], device=DEVICE)
    for lo_, start_ in ((lo, start), (bounds[:1], bounds[1:])):
        actual = canvas_attention(q, cache_k, cache_v, lo_, start_, k, v, causal=True, window=window)
        assert_close(actual, expected, dtype)


def test_causal_reference_is_the_models_encoder_mask() -> None:
    """The reference's causal/window form equals SDPA under the mask DGemma.encode builds."""
    lo, start, seq, window = 5, 30, 9, 16
    q, cache_k, cache_v, k, v = make_inputs(1, 4, 2, seq, 32, 60, torch.float32)
    query = torch.arange(start, start + seq, device=DEVICE)[:, None]
    key = torch.arange(lo, start + seq, device=DEVICE)[None, :]
    mask = (key <= query) & (key > query - window)
    keys = torch.cat([cache_k[:, :, lo:start], k], dim=2)
    values = torch.cat([cache_v[:, :, lo:start], v], dim=2)
    model = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0, enable_gqa=True)
    spec = reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v, causal=True, window=window)
    assert_close(spec, model)
    assert not torch.allclose(reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v), model)


def test_mask_hides_exactly_the_masked_keys() -> None:
    """Huge values under hidden canvas keys must not leak into the output; visible ones must count."""
    q, cache_k, cache_v, k, v = make_inputs(2, 2, 1, 7, 16, 20, torch.float32)
    key_mask = torch.ones(2, 7, dtype=torch.bool, device=DEVICE)
    key_mask[1, 3] = False
    v[:, :, 3] = 1e4
    out = canvas_attention(q, cache_k, cache_v, 0, 10, k, v, key_mask)
    assert out[1].abs().max() < 100  # row 1 hides the poisoned value
    assert out[0].abs().max() > 100  # row 0 sees its (equally poisoned) key 3: the mask is per row


def test_query_with_no_visible_key_gets_zeros() -> None:
    """No prefix and every canvas key of row 1 hidden: zeros, as scaled_dot_product_attention returns."""
    q, cache_k, cache_v, k, v = make_inputs(2, 2, 2, 7, 16, 10, torch.float32)
    key_mask = torch.ones(2, 7, dtype=torch.bool, device=DEVICE)
    key_mask[1] = False
    out = canvas_attention(q, cache_k, cache_v, 0, 0, k, v, key_mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_close(out, reference.canvas_attention(q, cache_k, cache_v, 0, 0, k, v, key_mask))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_reference_equals_the_models_sdpa(dtype: torch.dtype, batch: int) -> None:
    """The spec is what model/dgemma.py computes: SDPA over [cache[lo:start]; canvas], mask [B, 1, 1, K]."""
    hq, hkv, canvas, dim, lo, start = 4, 2, 7, 48, 4, 37
    q, cache_k, cache_v, k, v = make_inputs(batch, hq, hkv, canvas, dim, 50, dtype)
    key_mask = random_key_mask(batch, canvas)
    prefix = (batch, -1, -1, -1)
    keys = torch.cat([cache_k[:, :, lo:start].expand(prefix), k], dim=2)
    values = torch.cat([cache_v[:, :, lo:start].expand(prefix), v], dim=2)
    mask = torch.cat([key_mask.new_ones(batch, start - lo), key_mask], dim=1)[:, None, None, :]
    model = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0, enable_gqa=True)
    assert_close(reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask), model, dtype)
    # Not a tautology: dropping the mask changes the answer.
    unmasked = reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v)
    assert batch == 1 or not torch.allclose(unmasked.float(), model.float(), atol=1e-2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"][0]}, "q must be"),
        (lambda a: {**a, "v": a["v"][:, :, :-1]}, "k and v"),
        (lambda a: {**a, "start": 1000}, "lo <= start"),
        (lambda a: {**a, "lo": 9, "start": 3}, "lo <= start"),
        (lambda a: {**a, "key_mask": torch.ones(2, 6, dtype=torch.bool)}, "key_mask"),
        (lambda a: {**a, "key_mask": torch.ones(2, 7)}, "key_mask"),
        (lambda a: {**a, "v": a["v"].double(), "k": a["k"].double()}, "dtype"),
        (lambda a: {**a, "cache_k": a["cache_k"][:, :1], "cache_v": a["cache_v"][:, :1]}, "cache"),
    ],
)
def test_bad_arguments_raise(change, message: str) -> None:
    q, cache_k, cache_v, k, v = make_inputs(2, 4, 2, 7, 16, 20, torch.float32)
    args = {"q": q, "cache_k": cache_k, "cache_v": cache_v, "lo": 0, "start": 10, "k": k, "v": v}
    with pytest.raises(ValueError, match=message):
        canvas_attention(**change(args))


def test_query_heads_must_be_a_multiple_of_kv_heads() -> None:
    q, cache_k, cache_v, k, v = make_inputs(1, 3, 2, 7, 16, 20, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        canvas_attention(q, cache_k, cache_v, 0, 10, k, v)


def test_bench_smoke(tmp_path: Path, capsys) -> None:
    from dgemma_lsp.kernels import bench_attention

    out = tmp_path / "bench.json"
    assert bench_attention.main(["--small", "--device", DEVICE.type, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] and report["cases"] and report["kernel"] == "triton"
    for case in report["cases"]:
        assert case["torch_ms"] > 0 and case["triton_ms"] > 0 and case["max_abs_diff"] < 0.1, case
    assert "TFLOP/s" in capsys.readouterr().out


def test_tune_reports_the_fastest_configuration_that_agrees(tmp_path: Path) -> None:
    from dgemma_lsp.kernels import tune_attention

    out = tmp_path / "tune.json"
    argv = ["--small", "--device", DEVICE.type, "--json", str(out), "--budget-s", "600"]
    assert tune_attention.main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report["cases"]) == 2
    for case in report["cases"]:
        timed = [row for row in case["results"] if "ms" in row]
        assert len(timed) == len(case["results"]) == 3  # the current configuration and the small grid's two
        fastest = min(timed, key=lambda row: row["ms"])
        assert case["best"] == fastest["launch"] and case["best_ms"] == fastest["ms"]
        assert case["results"][0]["launch"] == case["current"]
