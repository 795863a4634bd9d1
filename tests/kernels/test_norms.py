"""RMSNorm (+ residual) and the head norm + RoPE + cache write against kernels/reference.py."""

from __future__ import annotations

import json

import pytest
import torch

from dgemma_lsp.kernels import norms, reference
from dgemma_lsp.model.dgemma import RMSNorm, Rotary
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 48), (1, 13), (3, 5, 100)])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, ...], weighted: bool, with_residual: bool) -> None:
    x = torch.randn(shape, device=DEVICE).to(dtype) * 3
    weight = torch.randn(shape[-1], device=DEVICE).to(dtype) if weighted else None
    residual = torch.randn(shape, device=DEVICE).to(dtype) if with_residual else None
    got = norms.rms_norm(x, weight, 1e-6, residual)
    assert got.dtype == dtype and got.shape == x.shape
    assert_close(got, reference.rms_norm(x, weight, 1e-6, residual))


def test_rms_norm_reads_a_strided_weight() -> None:
    x, weight = torch.randn(5, 48, device=DEVICE), torch.randn(48, 2, device=DEVICE)[:, 0]
    assert_close(norms.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))


def test_head_norm_rope_rounds_as_the_torch_path_does() -> None:
    # fp16, which the interpreter rounds as a GPU does: q and k were 1 ulp off in a third of the elements.
    qkv = torch.randn(1, 32, 8, 64, device=DEVICE).half()
    head_norm = (1 + 0.1 * torch.randn(8, 64, device=DEVICE)).half()
    cos, sin = (t.view(32, 64) for t in Rotary(64, 10000.0)(100, 32, torch.float16))
    got = norms.head_norm_rope(qkv, head_norm, cos.to(DEVICE), sin.to(DEVICE), 4, 2, 1e-6)
    want = reference.head_norm_rope(qkv, head_norm, cos.to(DEVICE), sin.to(DEVICE), 4, 2, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_rms_norm_reference_is_the_models_norm() -> None:
    norm = RMSNorm(48, 1e-6).to(DEVICE)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(7, 48, device=DEVICE)
    assert torch.equal(reference.rms_norm(x, norm.weight, 1e-6), norm(x))


def test_rms_norm_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="last dimension"):
        norms.rms_norm(torch.ones(2, 8, device=DEVICE), torch.ones(7, device=DEVICE), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_heads", "kv_heads", "dim", "k_eq_v"), [(4, 2, 16, False), (2, 1, 48, True)])
@pytest.mark.parametrize(("batch", "cached"), [(1, True), (3, False), (1, "start on the device")])
def test_head_norm_rope(
    dtype: torch.dtype, n_heads: int, kv_heads: int, dim: int, k_eq_v: bool, batch: int, cached: bool | str
) -> None:
    seq, start, capacity = 7, 5, 20
    heads = n_heads + kv_heads * (1 if k_eq_v else 2)
    qkv = torch.randn(batch, seq, heads, dim, device=DEVICE).to(dtype) * 2
    head_norm = torch.randn(heads, dim, device=DEVICE).to(dtype)
    # The model's own proportional RoPE tables (a quarter of the frequencies rotate).
    cos, sin = (t.view(seq, dim) for t in Rotary(dim, 10_000.0, 0.25).to(DEVICE)(start, seq, dtype))
    caches = [
        tuple(torch.zeros(1, kv_heads, capacity, dim, device=DEVICE, dtype=dtype) for _ in range(2))
        for _ in range(2)
    ]
    kernel_start = torch.tensor([start], device=DEVICE) if isinstance(cached, str) else start
    got = norms.head_norm_rope(
        qkv,
        head_norm,
        cos,
        sin,
        n_heads,
        kv_heads,
        1e-6,
        cache=(*caches[0], kernel_start) if cached else None,
    )
    want = reference.head_norm_rope(
        qkv, head_norm, cos, sin, n_heads, kv_heads, 1e-6, cache=(*caches[1], start) if cached else None
    )
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert_close(a, b)
    for a, b in zip(caches[0], caches[1], strict=True):
        assert_close(a, b)
    if cached:  # written exactly at start .. start + seq, nothing else
        keys = caches[0][0]
        assert keys[:, :, start : start + seq].abs().sum() > 0
        assert keys[:, :, :start].abs().sum() == 0 and keys[:, :, start + seq :].abs().sum() == 0


def test_head_norm_rope_checks_its_arguments() -> None:
    qkv = torch.randn(1, 3, 5, 16, device=DEVICE)
    table = torch.ones(3, 16, device=DEVICE)
    with pytest.raises(ValueError, match="neither"):
        norms.head_norm_rope(qkv, torch.ones(5, 16, device=DEVICE), table, table, 2, 2, 1e-6)
    small = torch.zeros(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="capacity"):
        norms.head_norm_rope(
            qkv, torch.ones(5, 16, device=DEVICE), table, table, 3, 1, 1e-6, cache=(small, small.clone(), 2)
        )


def test_bench_runs_small(tmp_path) -> None:
    from dgemma_lsp.kernels import bench_norms

    path = tmp_path / "norms.json"
    assert bench_norms.main(["--small", "--device", DEVICE.type, "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert [row["op"] for row in result["ops"]] == ["rms_norm+residual", "head_norm+rope+kv_write"]
    assert all(row["torch_ms"] > 0 and row["triton_ms"] > 0 for row in result["ops"])
