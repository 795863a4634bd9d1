"""The flash-vocab kernels (LM head, sampling statistics, soft embedding) against kernels/reference.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dgemma_lsp.kernels import bench_vocab_head, reference, tune_vocab_head, vocab_head
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.bfloat16]


def _inputs(
    rows: int, vocab: int, dim: int, dtype: torch.dtype, scale: float = 3.0
) -> tuple[torch.Tensor, ...]:
    """hidden [rows, dim] and weight [vocab, dim] whose logits have standard deviation about ``scale``."""
    hidden = torch.randn(rows, dim, device=DEVICE)
    weight = torch.randn(vocab, dim, device=DEVICE) * (scale / math.sqrt(dim))
    return hidden.to(dtype), weight.to(dtype)


def _z(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float, softcap: float | None = 30.0
) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits / temperature


def _assert_picks_max(picked: torch.Tensor, score: torch.Tensor, dtype: torch.dtype) -> None:
    """In low precision the GEMM may round a logit one ulp apart: accept any near-maximal index."""
    assert_close(score.gather(-1, picked[..., None])[..., 0], score.max(-1).values, dtype)


@pytest.mark.parametrize("gemm", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize("shape", [(7, 1000, 48), (1, 1000, 48), (5, 333, 20)])
def test_matches_reference(dtype: torch.dtype, shape: tuple[int, int, int], gemm: str) -> None:
    hidden, weight = _inputs(*shape, dtype)
    noise = torch.empty(shape[0], shape[1], device=DEVICE).exponential_()
    config = vocab_head.fused_gemm_config if gemm == "triton" else vocab_head._launch_config
    got = vocab_head.vocab_head(hidden, weight, 0.7, noise=noise, launch=config(shape[0], dtype, DEVICE))
    want = reference.vocab_head(hidden, weight, 0.7, noise=noise)
    assert got.lse.dtype == got.entropy.dtype == torch.float32
    assert got.argmax.dtype == got.sample.dtype == torch.int64
    assert got.soft is not None and got.soft.dtype == dtype and got.soft.shape == hidden.shape
    assert_close(got.lse, want.lse, dtype)
    assert_close(got.entropy, want.entropy, dtype)
    assert_close(got.soft, want.soft, dtype)
    if dtype == torch.float32:  # no near-ties at these shapes: the indices must agree exactly
        assert torch.equal(got.argmax, want.argmax)
        assert torch.equal(got.sample, want.sample)
    else:
        z = _z(hidden, weight, 0.7)
        _assert_picks_max(got.argmax, z, dtype)
        _assert_picks_max(got.sample, z - noise.log(), dtype)


@pytest.mark.parametrize(("softcap", "scale"), [(30.0, 40.0), (None, 3.0), (5.0, 3.0)])
def test_softcap_and_tensor_temperature(softcap: float | None, scale: float) -> None:
    # Scale 40 drives the top logits deep into the cap's bend (short of exact ties at 30); None: no cap.
    hidden, weight = _inputs(7, 300, 48, torch.float32, scale)
    temperature = torch.tensor(0.4, device=DEVICE)
    got = vocab_head.vocab_head(hidden, weight, temperature, softcap=softcap)
    want = reference.vocab_head(hidden, weight, temperature, softcap=softcap)
    assert_close(got.lse, want.lse)
    assert_close(got.entropy, want.entropy)
    assert_close(got.soft, want.soft)
    assert torch.equal(got.argmax, want.argmax)
    # The same temperature as a python float gives the same statistics.
    assert_close(vocab_head.vocab_head(hidden, weight, 0.4, softcap=softcap).lse, got.lse)


def test_leading_shape_and_no_soft() -> None:
    hidden, weight = _inputs(6, 200, 24, torch.float32)
    hidden = hidden.view(2, 3, 24)
    got = vocab_head.vocab_head(hidden, weight, 1.0, soft=False)
    want = reference.vocab_head(hidden, weight, 1.0)
    assert got.soft is None
    assert got.lse.shape == got.entropy.shape == got.argmax.shape == got.sample.shape == (2, 3)
    assert_close(got.lse, want.lse)
    assert_close(got.entropy, want.entropy)
    assert torch.equal(got.argmax, want.argmax)
    empty = vocab_head.vocab_head(hidden[:0], weight, 1.0)
    assert empty.lse.shape == (0, 3) and empty.soft is not None and empty.soft.shape == (0, 3, 24)


def test_argmax_ties_take_the_first_index() -> None:
    # Rows 3, 100 (same vocab split, later tile) and 900 (later split) of E are identical and give the largest
    # logit: torch.argmax returns the first.
    hidden, weight = _inputs(7, 1000, 48, torch.float32)
    weight[900] = hidden[0] / 2  # logit |h|^2 / 2 ~ 24, far above the others (~3)
    weight[3] = weight[100] = weight[900]
    got = vocab_head.vocab_head(hidden[:1].expand(7, -1) + 0, weight, 1.0, soft=False)
    assert (got.argmax == 3).all()
    assert torch.equal(got.argmax, reference.vocab_head(hidden[:1].expand(7, -1), weight, 1.0).argmax)


def test_bf16_rounds_logits_before_the_cap() -> None:
    # Small integers make the GEMM exact in any order; logits ~ +-500 then round to even numbers in bf16, so
    # rounding creates exact ties, and lse, argmax and sample must match the reference exactly.
    hidden = torch.randint(-8, 9, (7, 48), device=DEVICE).bfloat16()
    weight = torch.randint(-8, 9, (1000, 48), device=DEVICE).bfloat16()
    noise = torch.empty(7, 1000, device=DEVICE).exponential_()
    got = vocab_head.vocab_head(hidden, weight, 1.0, softcap=None, noise=noise)
    want = reference.vocab_head(hidden, weight, 1.0, softcap=None, noise=noise)
    assert torch.equal(got.argmax, want.argmax)
    assert torch.equal(got.sample, want.sample)
    assert_close(got.lse, want.lse, torch.float32)  # a truncating or missing rounding moves lse by up to 2
    unrounded = torch.logsumexp(hidden.float() @ weight.float().T, -1)
    assert ((unrounded - want.lse).abs() > 0.5).any()  # the rounding matters for these inputs


def _total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def test_in_kernel_noise_samples_softmax() -> None:
    rows, vocab, dim, temperature = 4096, 37, 16, 0.7
    hidden, weight = _inputs(1, vocab, dim, torch.float32, scale=2.0)
    probs = torch.softmax(_z(hidden, weight, temperature)[0], -1)  # [V]
    samples = vocab_head.vocab_head(
        hidden.expand(rows, -1), weight, temperature, seed=1234, soft=False
    ).sample
    freq = torch.bincount(samples, minlength=vocab).float() / rows
    # Expected TV of an honest sample is ~0.5 * sum sqrt(2 p (1 - p) / (pi n)) (about 0.04 here).
    expected = 0.5 * float((2 * probs * (1 - probs) / (math.pi * rows)).sqrt().sum())
    bound = 2.5 * expected
    assert _total_variation(freq, probs) < bound
    # The bound is tight enough to reject sampling at a 25 % wrong temperature (or ignoring it).
    for wrong in (temperature * 1.25, temperature / 1.25, 1.0):
        other = torch.softmax(_z(hidden, weight, wrong)[0], -1)
        assert _total_variation(other, probs) > 1.5 * bound


def test_seeds() -> None:
    hidden, weight = _inputs(1, 100, 16, torch.float32, scale=1.0)
    many = hidden.expand(64, -1)
    first = vocab_head.vocab_head(many, weight, 1.0, seed=1, soft=False).sample
    again = vocab_head.vocab_head(many, weight, 1.0, seed=1, soft=False).sample
    other = vocab_head.vocab_head(many, weight, 1.0, seed=2, soft=False).sample
    assert torch.equal(first, again)
    assert (first != other).float().mean() > 0.5  # near-uniform over 100 tokens: most draws differ
    assert first.unique().numel() > 20  # rows get independent noise, not one draw repeated


def test_rejects_bad_arguments() -> None:
    hidden, weight = _inputs(3, 50, 16, torch.float32)
    with pytest.raises(ValueError, match="must end in d"):
        vocab_head.vocab_head(hidden[:, :8], weight, 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        vocab_head.vocab_head(hidden.bfloat16(), weight, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        vocab_head.vocab_head(hidden, weight, 0.0)
    with pytest.raises(ValueError, match="noise"):
        vocab_head.vocab_head(hidden, weight, 1.0, noise=torch.ones(3, 49, device=DEVICE))


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert bench_vocab_head.main(["--small", "--device", DEVICE.type, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["torch_ms"] > 0 and result["triton_ms"] > 0 and result["device"]


def test_tune_keeps_the_fastest_configuration_that_agrees(tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    argv = ["--small", "--device", DEVICE.type, "--json", str(out)]
    assert tune_vocab_head.main(argv) == 0
    result = json.loads(out.read_text())
    timed = [row for row in result["results"] if "ms" in row]
    assert len(timed) == len(result["results"]) >= 4 and all(row["agrees"] for row in timed)
    fastest = min(timed, key=lambda row: row["ms"])
    assert result["best_ms"] == fastest["ms"] and result["results"][0]["ms"] == result["current_ms"]
    assert result["best"] == {k: v for k, v in fastest.items() if k not in ("agrees", "ms")}
