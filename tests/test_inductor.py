"""kernels=inductor: the torch path's denoising step and encoder compiled by torch.compile (compiled.py).

The compiles (a minute or two on two cores) happen once, in the module's fixture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dgemma_lsp.model.checkpoint import LoadedModel
from dgemma_lsp.model.fast import Layout, denoise_fast
from dgemma_lsp.model.kv_cache import KVCache
from dgemma_lsp.model.load import load_fast

SHORT = [2, 10, 11, 12, 13]
LONG = [2, *range(40, 140)]  # 101 tokens: past the sliding window (16)


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path) -> tuple[LoadedModel, LoadedModel]:
    eager = load_fast(tiny_checkpoint, device="cpu", kernels="torch")
    compiled = load_fast(tiny_checkpoint, device="cpu", kernels="inductor")  # compiles plain canvases
    assert compiled.model.compiled_steps is not None, "the step did not compile (is a C++ compiler there?)"
    compiled.model.compiled_steps.warm_up(rows=(3,), settings=compiled.settings)  # and batches of canvases
    return eager, compiled


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_steps_give_the_eager_tokens_and_never_recompile(
    models: tuple[LoadedModel, LoadedModel],
) -> None:
    """Prompts shorter and longer than the sliding window, several canvases (commits), a one-token edit
    re-encoded on a kept cache, masked canvases of two widths and a batch of three: the tokens the eager
    torch path gives, and no compile after the warm-up (dynamic shapes serve every size)."""
    eager, compiled = models
    settings = dataclasses.replace(eager.settings, max_denoising_steps=4)
    edited = [*LONG[:-1], 7]
    runs = [
        (SHORT, None, 8),
        (LONG, None, 2 * eager.canvas_length),  # two canvases: the first is committed
        (edited, None, 8),  # re-encodes the last token only
        (LONG, Layout((12,), (5, 6, 7)), 1),
        (LONG, Layout((20,), (5, 6, 7, 8, 9)), 1),
        (LONG, Layout((4, 8, 16), (5, 6)), 1),
    ]
    caches = {
        id(m): KVCache(m.model.args, 64, device=torch.device("cpu"), dtype=torch.float32)
        for m in (eager, compiled)
    }
    before = _graphs()
    for seed, (prompt, layout, max_new) in enumerate(runs):
        outs = [
            denoise_fast(
                m.model,
                torch.tensor(prompt),
                max_new_tokens=max_new,
                settings=settings,
                generator=torch.Generator().manual_seed(seed),
                cache=caches[id(m)],
                layout=layout,
            )
            for m in (eager, compiled)
        ]
        assert outs[1].tokens == outs[0].tokens, (prompt[:3], layout)
        assert [c.tokens for c in outs[1].candidates] == [c.tokens for c in outs[0].candidates]
        assert outs[1].reused_tokens == outs[0].reused_tokens
    assert outs[1].reused_tokens == len(LONG)  # the cache was kept
    assert _graphs() == before


def test_compiled_encoder_writes_the_eager_keys_and_values(models: tuple[LoadedModel, LoadedModel]) -> None:
    eager, compiled = models
    ids, n = torch.tensor([LONG]), len(LONG)
    caches = []
    for m in (eager, compiled):
        cache = KVCache(m.model.args, 8, device=torch.device("cpu"), dtype=torch.float32)
        with torch.inference_mode():
            if m.model.compiled_steps is None:
                m.model.encode(ids, cache, 0)
            else:
                # Eager up to the sliding window, then compiled; the last token padded to two.
                for begin, end in ((0, n - 1), (n - 1, n)):
                    m.model.compiled_steps.encode(ids[:, begin:end], cache, begin)
                    cache.extend(ids[0, begin:end])  # (a cache that grows keeps only what it was told of)
        caches.append(cache)
    for i in range(len(eager.model.layers)):
        for got, want in ((caches[1].keys[i], caches[0].keys[i]), (caches[1].values[i], caches[0].values[i])):
            torch.testing.assert_close(got[:, :, :n], want[:, :, :n], rtol=1e-4, atol=1e-4)  # fused rounding
