"""The fast denoiser: token parity with the reference backend, prefix reuse, and the infilling layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dgemma_lsp.model import sampler
from dgemma_lsp.model.checkpoint import LoadedModel, load_checkpoint
from dgemma_lsp.model.denoise import Cancelled, SamplerSettings, denoise
from dgemma_lsp.model.dgemma import DGemma
from dgemma_lsp.model.fast import (
    CacheSlots,
    Draws,
    Layout,
    accept_free,
    denoise_fast,
    prefill,
    step_statistics,
    stop_free,
)
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.model.kv_cache import KVCache
from dgemma_lsp.model.load import from_hf_model, load_fast
from dgemma_lsp.model.prompt import build_prompt

SHORT = [2, 10, 11, 12, 13]
LONG = [2, *range(40, 140)]  # 101 tokens: past the sliding window (16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> LoadedModel:
    return load_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def fast(tiny_checkpoint: Path) -> DGemma:
    return load_fast(tiny_checkpoint, device="cpu").model


@pytest.fixture(scope="module")
def damped(tiny_checkpoint: Path) -> tuple[LoadedModel, DGemma]:
    """Both backends on the tiny model with damped residual branches, so that at low temperature the argmax
    settles and the stop test fires after a data-dependent number of steps (as in test_denoise)."""
    loaded = load_checkpoint(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        for layer in loaded.model.model.decoder.layers:
            layer.post_attention_layernorm.weight.mul_(0.3)
            layer.post_feedforward_layernorm.weight.mul_(0.3)
    return loaded, from_hf_model(loaded.model)


def both(
    reference: LoadedModel,
    fast: DGemma,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplerSettings,
    seed: int,
):
    kwargs = dict(max_new_tokens=max_new_tokens, settings=settings)
    ref = denoise(reference, torch.tensor(prompt), generator=torch.Generator().manual_seed(seed), **kwargs)
    ours = denoise_fast(fast, torch.tensor(prompt), generator=torch.Generator().manual_seed(seed), **kwargs)
    assert (ours.tokens, ours.steps, ours.blocks, ours.hit_eos) == (
        ref.tokens,
        ref.steps,
        ref.blocks,
        ref.hit_eos,
    )
    return ours


@pytest.mark.parametrize("seed, steps", [(0, 48), (1, 12)])
def test_same_seed_same_tokens_all_steps(reference: LoadedModel, fast: DGemma, seed: int, steps: int) -> None:
    result = both(reference, fast, SHORT, 32, SamplerSettings(max_denoising_steps=steps), seed)
    assert result.steps == steps and len(result.tokens) > 0  # random weights never converge


def test_same_tokens_early_stop_every_block(reference: LoadedModel, fast: DGemma) -> None:
    settings = SamplerSettings(stability_threshold=0, confidence_threshold=100.0)
    assert both(reference, fast, SHORT, 3 * 32, settings, seed=4).blocks == 3


def test_same_tokens_multi_block_long_prompt(reference: LoadedModel, fast: DGemma) -> None:
    # Commits past the sliding window: the decoder's sliding layers read the last W-1 entries.
    settings = SamplerSettings(max_denoising_steps=6, entropy_bound=0.5)
    assert both(reference, fast, LONG, 2 * 32 + 1, settings, seed=5).blocks == 3


def test_same_tokens_when_converging(damped: tuple[LoadedModel, DGemma]) -> None:
    settings = SamplerSettings(t_min=0.02, t_max=0.05, entropy_bound=1000.0)
    result = both(*damped, [2, 10, 11], 2 * 32, settings, seed=1)
    assert 2 * 2 <= result.steps < 2 * 48


def test_same_tokens_with_eos(reference: LoadedModel, fast: DGemma) -> None:
    settings = SamplerSettings(max_denoising_steps=6)
    free = denoise_fast(
        fast,
        torch.tensor(SHORT),
        max_new_tokens=64,
        settings=settings,
        generator=torch.Generator().manual_seed(7),
    )
    eos = next(t for i, t in enumerate(free.tokens) if i >= 8 and t not in free.tokens[:i] and t != 0)
    result = both(reference, fast, SHORT, 64, dataclasses.replace(settings, eos_token_ids=(1, eos)), seed=7)
    assert result.hit_eos and result.blocks == 1 and result.tokens == free.tokens[: free.tokens.index(eos)]


def test_step_statistics_draw_like_multinomial() -> None:
    z = torch.randn(2, 32, 1024) * 5
    noise = torch.empty_like(z).exponential_(generator=torch.Generator().manual_seed(9))
    probs, token_entropy, sampled = step_statistics(z, noise)
    assert torch.equal(sampled, sampler.sample(z, torch.Generator().manual_seed(9)))
    torch.testing.assert_close(token_entropy, sampler.entropy(z))
    torch.testing.assert_close(probs, torch.softmax(z, -1))


@pytest.mark.parametrize("taken", [1, 3])
def test_draws_come_a_step_ahead_in_the_inline_order(taken: int) -> None:
    """The compiled step's draws: each step's noise then renoise ids, as the eager loop draws them; after
    ``close`` the generator stands where the inline draws of the steps taken leave it."""
    shape, vocab = (2, 8), 50
    inline, ahead = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    draws = Draws(shape, vocab, ahead)
    for _ in range(taken):
        noise, fresh = draws.next()
        assert torch.equal(noise, torch.empty(*shape, vocab).exponential_(generator=inline))
        assert torch.equal(fresh, sampler.random_canvas(shape, vocab, inline, torch.device("cpu")))
    draws.close()  # one step's draws were made ahead and never taken
    assert torch.equal(ahead.get_state(), inline.get_state())


def test_cancel_is_checked_before_every_pass(fast: DGemma) -> None:
    seen: list[int] = []
    with pytest.raises(Cancelled):
        denoise_fast(
            fast,
            torch.tensor(SHORT),
            max_new_tokens=32,
            settings=SamplerSettings(),
            generator=torch.Generator().manual_seed(0),
            cancelled=lambda: len(seen) >= 3,
            on_step=seen.append,
        )
    assert seen == [1, 2, 3]


def test_bad_input_is_refused(fast: DGemma) -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="empty"):
        denoise_fast(
            fast,
            torch.tensor([], dtype=torch.long),
            max_new_tokens=8,
            settings=SamplerSettings(),
            generator=gen,
        )
    with pytest.raises(ValueError, match="max_new_tokens"):
        denoise_fast(fast, torch.tensor([2]), max_new_tokens=0, settings=SamplerSettings(), generator=gen)
    with pytest.raises(ValueError, match="middle lengths"):
        Layout(())


# --- prefix reuse -----------------------------------------------------------------------------------------


def cold(model: DGemma, ids: list[int]) -> KVCache:
    cache = KVCache(model.args, 16, device=CPU, dtype=torch.float32)
    assert prefill(model, cache, torch.tensor(ids)) == 0
    return cache


def assert_same_cache(model: DGemma, warm: KVCache, reference: KVCache) -> None:
    assert torch.equal(warm.tokens, reference.tokens)
    n = reference.length
    for i in range(model.args.n_layers):
        torch.testing.assert_close(warm.keys[i][:, :, :n], reference.keys[i][:, :, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            warm.values[i][:, :, :n], reference.values[i][:, :, :n], rtol=1e-4, atol=1e-5
        )
    canvas = torch.randint(0, model.args.vocab_size, (1, 32), generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(
        model.decode(canvas, warm), model.decode(canvas, reference), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("at", [0, 1, 7, 15, 16, 17, 40, 85, 99, 100])
@pytest.mark.parametrize("edit", ["replace", "insert", "delete", "append"])
def test_reuse_after_an_edit_equals_a_cold_encode(fast: DGemma, at: int, edit: str) -> None:
    old = LONG
    new = {
        "replace": old[:at] + [7] + old[at + 1 :],
        "insert": old[:at] + [7, 8, 9] + old[at:],
        "delete": old[:at] + old[at + 3 :],
        "append": old + [7] * (at % 5 + 1),
    }[edit]
    warm = cold(fast, old)
    reused = prefill(fast, warm, torch.tensor(new))
    common = next(
        (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
    )
    assert reused == common
    assert_same_cache(fast, warm, cold(fast, new))


def test_reuse_after_commits_and_across_documents(fast: DGemma) -> None:
    slots = CacheSlots(fast, max_slots=2, capacity=8)
    settings = SamplerSettings(max_denoising_steps=3)
    first = denoise_fast(
        fast,
        torch.tensor(LONG),
        max_new_tokens=64,
        settings=settings,
        generator=torch.Generator().manual_seed(1),
        cache=slots.get("a"),
    )
    assert first.blocks == 2 and slots.get("a").length == len(LONG) + 32  # the first canvas was committed
    again = denoise_fast(
        fast,
        torch.tensor(LONG),
        max_new_tokens=64,
        settings=settings,
        generator=torch.Generator().manual_seed(1),
        cache=slots.get("a"),
    )
    assert again.reused_tokens == len(LONG) and again.tokens == first.tokens
    slots.get("b"), slots.get("c")  # two more documents evict the least recently used one
    assert slots.get("a").length == 0


def test_a_failed_encode_leaves_the_cache_usable(fast: DGemma) -> None:
    warm = cold(fast, LONG)
    bad = LONG[:50] + [fast.args.vocab_size + 5] + LONG[51:]  # an id the embedding does not have
    with pytest.raises(IndexError):
        prefill(fast, warm, torch.tensor(bad))
    assert warm.length == 50
    assert prefill(fast, warm, torch.tensor(LONG)) == 50
    assert_same_cache(fast, warm, cold(fast, LONG))


# --- infilling layouts ------------------------------------------------------------------------------------


def test_layout_masks() -> None:
    free, fixed, ids = Layout((2, 4), clamped=(7, 8)).masks(CPU)
    assert free.int().tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert fixed.int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
    assert ids.tolist() == [[0, 0, 7, 8, 0, 0], [0, 0, 0, 0, 7, 8]]
    assert Layout((32,)).plain and not Layout((30,), (1,)).plain and Layout((5, 9), (1, 2)).width == 11


def test_unused_positions_change_nothing(fast: DGemma) -> None:
    """A row padded to the batch width with positions nobody attends to gives the logits it has alone."""
    cache = cold(fast, LONG)
    short, full = (
        torch.randint(0, 1024, (1, n), generator=torch.Generator().manual_seed(n)) for n in (12, 32)
    )
    batch = torch.cat([torch.cat([short, torch.randint(0, 1024, (1, 20))], dim=1), full])
    keys = torch.arange(32)[None] < torch.tensor([[12], [32]])
    logits = fast.decode(batch, cache, canvas_keys=keys)
    torch.testing.assert_close(logits[:1, :12], fast.decode(short, cache), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[1:], fast.decode(full, cache), rtol=1e-4, atol=1e-5)


def test_clamped_suffix_is_held_and_never_returned(fast: DGemma) -> None:
    suffix = (5, 6, 7, 8)
    canvases: list[torch.Tensor] = []
    hook = fast.embed_tokens.register_forward_hook(lambda m, args, out: canvases.append(args[0].clone()))
    try:
        result = denoise_fast(
            fast,
            torch.tensor(LONG),
            max_new_tokens=32,
            settings=SamplerSettings(max_denoising_steps=5),
            generator=torch.Generator().manual_seed(3),
            layout=Layout((20,), clamped=suffix),
        )
    finally:
        hook.remove()
    decoded = [c for c in canvases if c.shape == (1, 24)]
    assert len(decoded) == result.steps == 5
    assert all(c[0, 20:].tolist() == list(suffix) for c in decoded)
    assert len(result.candidates) == 1 and len(result.tokens) <= 20


def test_clamped_positions_stay_out_of_acceptance_and_the_stop_test() -> None:
    free = torch.tensor([[True, True, True, False]])
    # Alone, the three free positions (0.02 nats each) fit the bound; the clamped 0.015 would push one out.
    h = torch.tensor([[0.02, 0.02, 0.02, 0.015]])
    assert sampler.accept_mask(h, 0.05)[0, :3].sum() == 2
    assert accept_free(h, free, 0.05).tolist() == [[True, True, True, False]]
    # Free positions settled and sure; the clamped one uncertain and flipping: the canvas still stops.
    sure = torch.tensor([[0.001, 0.001, 0.001, 5.0]])
    history = sampler.new_history(1, torch.zeros(1, 4, dtype=torch.long))
    stop, history, mean = stop_free(torch.tensor([[4, 5, 6, 7]]), history, sure, free, 0.005)
    assert not stop.item() and mean.item() == pytest.approx(0.001)
    stop, _, _ = stop_free(torch.tensor([[4, 5, 6, 9]]), history, sure, free, 0.005)
    assert stop.item()


def test_several_middle_lengths_in_one_batch(fast: DGemma) -> None:
    layout = Layout((6, 12, 24), clamped=(5, 6, 7, 8))
    result = denoise_fast(
        fast,
        torch.tensor(LONG),
        max_new_tokens=32,
        settings=SamplerSettings(max_denoising_steps=4),
        generator=torch.Generator().manual_seed(5),
        layout=layout,
    )
    assert sorted(c.middle_length for c in result.candidates) == [6, 12, 24]
    assert all(len(c.tokens) <= c.middle_length for c in result.candidates)
    scores = [(c.suffix_logprob, -c.mean_entropy) for c in result.candidates]
    assert scores == sorted(scores, reverse=True) and result.tokens == result.candidates[0].tokens
    assert all(c.suffix_logprob < 0 and c.mean_entropy > 0 for c in result.candidates)


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_infiller_lays_prompts_out_in_the_checkpoint_fim_order(order, tiny_checkpoint: Path) -> None:
    loaded = load_fast(tiny_checkpoint, device="cpu")
    loaded = dataclasses.replace(loaded, settings=SamplerSettings(max_denoising_steps=2, fim_order=order))
    infiller = Infiller(loaded)
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    infiller.fill(prefix, suffix, max_new_tokens=8, seed=0, key="doc")
    expected = build_prompt(loaded.tokenizer, prefix, suffix, fim_order=order)
    assert infiller._slots is not None
    assert infiller._slots.get("doc").tokens[: len(expected)].tolist() == expected  # what was encoded


def test_step_graphs_are_padded_bounded_and_tied_to_the_cache_buffers(tiny_checkpoint: Path) -> None:
    """Masked canvases share power-of-two widths, a model keeps at most MAX_STEPS steps (least recently
    used dropped), and a cache that grows gets new steps: graphs of its old buffers must not be replayed."""
    from dgemma_lsp.model import graphs

    model = load_fast(tiny_checkpoint, device="cpu", kernels="torch").model
    registry = graphs.StepGraphs(model)
    cache = KVCache(model.args, 8, device=torch.device("cpu"), dtype=torch.float32)
    first = registry.get(cache, 1, 9, masked=True)
    assert registry.get(cache, 1, 14, masked=True) is first and first.canvas.shape == (1, 16)
    assert registry.get(cache, 1, 9, masked=False).canvas.shape == (1, 9)  # unmasked: no padding to hide
    assert cache.capacity >= 16  # room for the padded canvas was made first
    uid = cache.uid
    cache.reserve(4 * cache.capacity)
    assert cache.uid != uid and registry.get(cache, 1, 9, masked=True) is not first
    largest = registry.get(cache, 1, 8 + graphs.MAX_STEPS, masked=False)  # smaller ones share its noise
    for width in range(8, 8 + graphs.MAX_STEPS):
        registry.get(cache, 1, width, masked=False)
    assert len(registry.steps) == graphs.MAX_STEPS and largest not in registry.steps.values()
    registry.get(cache, 3, 64, masked=True)  # needs more noise: the others read the old buffer, dropped
    assert len(registry.steps) == 1
