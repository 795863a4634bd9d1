"""The fast backend with the Triton kernels against the same model with torch ones, on the tiny checkpoint
(CPU: through Triton's interpreter): per-step logits, prefix reuse, and whole completions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dgemma_lsp.kernels import use_triton
from dgemma_lsp.model.checkpoint import LoadedModel
from dgemma_lsp.model.fast import Layout, denoise_fast
from dgemma_lsp.model.kv_cache import KVCache
from dgemma_lsp.model.load import load_fast
from tests.kernels.conftest import DEVICE

PROMPT = [2, *range(40, 77)]  # 38 tokens: past the sliding window (16)


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path) -> tuple[LoadedModel, LoadedModel]:
    # Compared in fp32 (CUDA loads bf16): both sides then round alike and completions match token for token.
    torch_kernels, triton_kernels = (
        dataclasses.replace(loaded, model=loaded.model.float(), dtype=torch.float32)
        for loaded in (load_fast(tiny_checkpoint, device=DEVICE.type, kernels=k) for k in ("torch", "triton"))
    )
    assert not torch_kernels.model.triton and triton_kernels.model.triton
    return torch_kernels, triton_kernels


def test_auto_picks_triton_only_on_cuda() -> None:
    assert not use_triton("auto", torch.device("cpu")) and not use_triton("torch", DEVICE)
    assert use_triton("triton", DEVICE)  # the interpreter runs them here


def test_encode_and_decode_match(models: tuple[LoadedModel, LoadedModel]) -> None:
    outputs = []
    for loaded in models:
        model = loaded.model
        cache = KVCache(model.args, 64, device=DEVICE, dtype=loaded.dtype)
        model.encode(torch.tensor([PROMPT], device=DEVICE), cache, 0)
        canvas = torch.randint(0, model.args.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
        keys = torch.ones(2, 9, dtype=torch.bool)
        keys[1, 6:] = False  # the second row's last positions are unused padding
        soft = torch.randn(2, 9, model.args.dim, generator=torch.Generator().manual_seed(2)) * 0.1
        hidden = model.decode_hidden(canvas.to(DEVICE), cache, soft.to(DEVICE), keys.to(DEVICE))
        outputs.append((cache.keys, cache.values, model.head(hidden)))
    (k0, v0, logits0), (k1, v1, logits1) = outputs
    for a, b in zip(k0 + v0, k1 + v1, strict=True):
        torch.testing.assert_close(a[:, :, : len(PROMPT)], b[:, :, : len(PROMPT)], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits0, logits1, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("first", [0, 30])
def test_encode_with_the_start_on_the_device(models: tuple[LoadedModel, LoadedModel], first: int) -> None:
    """The graphable encoder (start read on the device, causal attention in the kernel, padding tokens after
    the real ones) writes the K/V the eager encoder writes, across the sliding window (16)."""
    loaded = models[1]
    model, ids = loaded.model, torch.tensor([PROMPT], device=DEVICE)
    eager, graphable = (KVCache(model.args, 64, device=DEVICE, dtype=loaded.dtype) for _ in range(2))
    if first:
        for cache in (eager, graphable):
            model.encode(ids[:, :first], cache, 0)
    model.encode(ids[:, first:], eager, first)
    padded = torch.cat([ids[:, first:], torch.full((1, 5), 3, device=DEVICE)], dim=1)
    model.encode(padded, graphable, torch.tensor([first], device=DEVICE))
    for a, b in zip(eager.keys + eager.values, graphable.keys + graphable.values, strict=True):
        torch.testing.assert_close(a[:, :, : len(PROMPT)], b[:, :, : len(PROMPT)], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", [None, Layout((6,), clamped=(5, 6, 7))])
def test_same_completion_as_the_torch_kernels(models: tuple[LoadedModel, LoadedModel], layout) -> None:
    results = []
    for loaded in models:
        settings = dataclasses.replace(loaded.settings, max_denoising_steps=3)
        results.append(
            denoise_fast(
                loaded.model,
                torch.tensor(PROMPT),
                max_new_tokens=40,  # two canvases: the first is committed through the encoder
                settings=settings,
                generator=torch.Generator(device=DEVICE).manual_seed(7),
                layout=layout,
            )
        )
    plain, fused = results
    assert fused.tokens == plain.tokens and fused.steps == plain.steps and fused.blocks == plain.blocks
    if layout is not None:
        assert fused.candidates[0].suffix_logprob == pytest.approx(
            plain.candidates[0].suffix_logprob, abs=1e-3
        )


@pytest.mark.parametrize("layout", [None, Layout((3, 6), clamped=(5, 6))], ids=["plain", "two-lengths"])
def test_step_graphs_give_the_same_completion(models: tuple[LoadedModel, LoadedModel], layout) -> None:
    """The step as a CUDA graph (on the CPU: the same static-buffer code, eagerly) against the torch
    kernels, twice on one document cache: the second prompt is shorter, so the step is replayed at another
    start position."""
    torch_kernels, triton_kernels = models
    settings = dataclasses.replace(triton_kernels.settings, max_denoising_steps=2)
    model = triton_kernels.model
    cache = KVCache(model.args, 128, device=DEVICE, dtype=triton_kernels.dtype)

    def complete(loaded: LoadedModel, prompt: list[int], cache: KVCache | None = None):
        return denoise_fast(
            loaded.model,
            torch.tensor(prompt),
            max_new_tokens=8,  # one canvas
            settings=settings,
            generator=torch.Generator(device=DEVICE).manual_seed(3),
            cache=cache,
            layout=layout,
        )

    model.use_kernels(True, step_graphs=True)
    steps = []
    try:
        for prompt in (PROMPT, PROMPT[:30] + [9, 9]):
            expected, actual = complete(torch_kernels, prompt), complete(triton_kernels, prompt, cache)
            assert actual.tokens == expected.tokens and actual.steps == expected.steps
            assert [c.tokens for c in actual.candidates] == [c.tokens for c in expected.candidates]
            steps.append({k: v for k, v in model.compiled_steps.steps.items() if k[0] == cache.uid})
    finally:
        model.use_kernels(True, step_graphs=DEVICE.type == "cuda")
    # One canvas step for this shape, made for the first prompt and reused; the 38-token prompt was
    # encoded eagerly (longer than a canvas), the second's two changed tokens by an encode step (padded).
    assert list(steps[0]) == [
        (cache.uid, len(layout.middles) if layout else 1, 16 if layout else 32, bool(layout))
    ]
    assert steps[1] == {**steps[0], (cache.uid, 16): steps[1][(cache.uid, 16)]}
    if DEVICE.type == "cuda":
        assert all(step.graph is not None for step in steps[1].values())
