"""The denoiser against transformers' generate() (token parity), the sampler pieces, and the Infiller."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from dgemma_lsp.model import sampler
from dgemma_lsp.model.checkpoint import LoadedModel, load_checkpoint
from dgemma_lsp.model.denoise import Cancelled, DenoiseResult, SamplerSettings, denoise
from dgemma_lsp.model.infill import Fill, Infiller
from dgemma_lsp.model.prompt import build_prompt
from tests.tiny_checkpoint import write_tiny_checkpoint

SHORT_PROMPT = [2, 10, 11, 12, 13]
LONG_PROMPT = [2, *range(40, 140)]  # 101 tokens: far past the sliding window (16) of the tiny model


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedModel:
    return load_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def damped(tiny_checkpoint: Path) -> DiffusionGemmaForBlockDiffusion:
    """The tiny model with its residual branches damped, so that at low temperature the argmax settles and the
    stable-and-confident stop fires after a data-dependent number of steps (random weights never settle)."""
    model = load_checkpoint(tiny_checkpoint, device="cpu").model
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.post_attention_layernorm.weight.mul_(0.3)
            layer.post_feedforward_layernorm.weight.mul_(0.3)
    return model


def reference_cut(ids: list[int], settings: SamplerSettings) -> list[int]:
    """generate()'s new tokens as denoise() reports them: up to the first EOS, trailing pad dropped."""
    for i, tok in enumerate(ids):
        if tok in settings.eos_token_ids:
            ids = ids[:i]
            break
    while ids and ids[-1] == settings.pad_token_id:
        ids = ids[:-1]
    return ids


def check_parity(
    model: DiffusionGemmaForBlockDiffusion,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplerSettings,
    seed: int,
) -> DenoiseResult:
    device = model.device
    torch.manual_seed(seed)  # seeds the CPU and every CUDA default generator
    out = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=max_new_tokens,
        max_denoising_steps=settings.max_denoising_steps,
        t_min=settings.t_min,
        t_max=settings.t_max,
        stability_threshold=settings.stability_threshold,
        confidence_threshold=settings.confidence_threshold,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=settings.entropy_bound),
        eos_token_id=list(settings.eos_token_ids),
        pad_token_id=settings.pad_token_id,
    )
    new = out.sequences[0, len(prompt) :].tolist()

    result = denoise(
        model,
        torch.tensor(prompt),
        max_new_tokens=max_new_tokens,
        settings=settings,
        generator=torch.Generator(device=device).manual_seed(seed),
    )
    assert result.tokens == reference_cut(new, settings)
    assert result.hit_eos == any(t in settings.eos_token_ids for t in new)
    assert result.blocks == len(new) // model.config.canvas_length
    # tokens_per_forward = non-pad new tokens / decoder passes: checks our step count.
    non_pad = sum(t != settings.pad_token_id for t in new)
    assert float(out.tokens_per_forward[0]) == pytest.approx(non_pad / result.steps)
    return result


def test_generator_stream_matches_global_seed() -> None:
    """generate() draws from the global RNG after torch.manual_seed; a fresh Generator with that seed gives
    the same randint / multinomial stream, which is what makes token parity possible."""
    probs = torch.rand(32, 1024).softmax(-1)
    own = torch.Generator().manual_seed(123)
    ours = [
        torch.randint(0, 1024, (1, 32), generator=own),
        torch.multinomial(probs, 1, generator=own),
        torch.randint(0, 1024, (1, 32), generator=own),
    ]
    torch.manual_seed(123)
    theirs = [torch.randint(0, 1024, (1, 32)), torch.multinomial(probs, 1), torch.randint(0, 1024, (1, 32))]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_all_steps(loaded: LoadedModel, seed: int) -> None:
    result = check_parity(loaded.model, SHORT_PROMPT, 32, SamplerSettings(), seed)
    assert result.steps == 48  # random weights never converge
    assert result.blocks == 1


def test_parity_early_stop_every_step(loaded: LoadedModel) -> None:
    # No stability requirement and "confident" always true: each block stops after its first pass.
    settings = SamplerSettings(stability_threshold=0, confidence_threshold=100.0)
    result = check_parity(loaded.model, SHORT_PROMPT, 3 * 32, settings, seed=4)
    assert result.steps == result.blocks == 3


def test_parity_confident_but_never_stable(loaded: LoadedModel) -> None:
    # With stability 1 the argmax of random weights never repeats, so a huge threshold does not stop early.
    settings = SamplerSettings(max_denoising_steps=6, stability_threshold=2, confidence_threshold=100.0)
    result = check_parity(loaded.model, SHORT_PROMPT, 32, settings, seed=5)
    assert result.steps == 6


@pytest.mark.parametrize("seed", [1, 2])
def test_parity_converges(damped: DiffusionGemmaForBlockDiffusion, seed: int) -> None:
    # Low temperature, accept everything: the argmax settles, then stable + confident (0.005) stops.
    settings = SamplerSettings(t_min=0.02, t_max=0.05, entropy_bound=1000.0)
    result = check_parity(damped, [2, 10, 11], 2 * 32, settings, seed)
    assert result.blocks == 2
    assert 2 * 2 <= result.steps < 2 * 48


def test_parity_multi_block_rounds_up(loaded: LoadedModel) -> None:
    # 65 tokens -> 3 canvases (the reference rounds up and does not truncate); two commit passes.
    settings = SamplerSettings(max_denoising_steps=6, entropy_bound=0.5)
    result = check_parity(loaded.model, SHORT_PROMPT, 2 * 32 + 1, settings, seed=3)
    assert result.blocks == 3
    assert result.steps == 18
    assert len(result.tokens) > 64 or result.hit_eos


def test_parity_long_prompt(loaded: LoadedModel) -> None:
    # Sliding layers' DynamicCache keeps W-1 prefix tokens: the decoder must read the same truncated cache.
    settings = SamplerSettings(max_denoising_steps=8)
    result = check_parity(loaded.model, LONG_PROMPT, 64, settings, seed=6)
    assert result.blocks == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parity_cuda_bf16(tiny_checkpoint: Path) -> None:
    # bf16 weights, CUDA generator: the same kernels in the same order should give the same tokens, unless a
    # kernel (e.g. an atomic MoE scatter) is nondeterministic, which this test would expose.
    cuda = load_checkpoint(tiny_checkpoint, device="cuda")
    assert cuda.dtype == torch.bfloat16 and cuda.device.type == "cuda"
    for seed in range(3):
        check_parity(cuda.model, LONG_PROMPT, 64, SamplerSettings(max_denoising_steps=12), seed)


def _eos_candidates(loaded: LoadedModel, settings: SamplerSettings, seed: int) -> list[int]:
    result = denoise(
        loaded,
        torch.tensor(SHORT_PROMPT),
        max_new_tokens=64,
        settings=settings,
        generator=torch.Generator().manual_seed(seed),
    )
    assert not result.hit_eos, "pick another seed: this one hits the real EOS"
    return result.tokens


def test_parity_eos_in_first_block(loaded: LoadedModel) -> None:
    # EOS only changes what happens after a block, so declare a token this seed produces at index >= 8 an EOS.
    base = SamplerSettings(max_denoising_steps=6)
    tokens = _eos_candidates(loaded, base, seed=7)
    eos = next(t for i, t in enumerate(tokens[:32]) if i >= 8 and t not in tokens[:i] and t != 0)
    settings = dataclasses.replace(base, eos_token_ids=(1, eos))
    result = check_parity(loaded.model, SHORT_PROMPT, 64, settings, seed=7)
    assert result.hit_eos
    assert result.blocks == 1  # stopped although a second canvas was allowed
    assert result.tokens == tokens[: tokens.index(eos)]


def test_parity_eos_in_second_block(loaded: LoadedModel) -> None:
    base = SamplerSettings(max_denoising_steps=6)
    tokens = _eos_candidates(loaded, base, seed=8)
    eos = next(t for t in tokens[32:] if t not in tokens[:32] and t != 0)
    settings = dataclasses.replace(base, eos_token_ids=(eos,))
    result = check_parity(loaded.model, SHORT_PROMPT, 96, settings, seed=8)
    assert result.hit_eos
    assert result.blocks == 2
    assert result.tokens == tokens[: tokens.index(eos)]


def test_denoise_uses_only_its_generator(loaded: LoadedModel) -> None:
    state = torch.random.get_rng_state()
    settings = SamplerSettings(max_denoising_steps=3)
    runs = [
        denoise(
            loaded,
            torch.tensor([SHORT_PROMPT]),
            max_new_tokens=8,
            settings=settings,
            generator=torch.Generator().manual_seed(11),
        )
        for _ in range(2)
    ]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].prefill_ms > 0 and runs[0].denoise_ms > 0


def test_cancel_before_a_decoder_pass(loaded: LoadedModel) -> None:
    seen: list[int] = []
    with pytest.raises(Cancelled):
        denoise(
            loaded,
            torch.tensor(SHORT_PROMPT),
            max_new_tokens=32,
            settings=SamplerSettings(),
            generator=torch.Generator().manual_seed(0),
            cancelled=lambda: len(seen) >= 3,
            on_step=seen.append,
        )
    assert seen == [1, 2, 3]


def test_on_step_counts_across_blocks(loaded: LoadedModel) -> None:
    seen: list[int] = []
    settings = SamplerSettings(max_denoising_steps=2, eos_token_ids=(-1,))
    result = denoise(
        loaded,
        torch.tensor(SHORT_PROMPT),
        max_new_tokens=64,
        settings=settings,
        generator=torch.Generator().manual_seed(0),
        on_step=seen.append,
    )
    assert seen == [1, 2, 3, 4] and result.steps == 4 and result.blocks == 2


def test_denoise_rejects_bad_input(loaded: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="non-empty"):
        denoise(
            loaded,
            torch.tensor([], dtype=torch.long),
            max_new_tokens=8,
            settings=SamplerSettings(),
            generator=gen,
        )
    with pytest.raises(ValueError, match="max_new_tokens"):
        denoise(loaded, torch.tensor([2]), max_new_tokens=0, settings=SamplerSettings(), generator=gen)
    with pytest.raises(TypeError):
        denoise(object(), torch.tensor([2]), max_new_tokens=8, settings=SamplerSettings(), generator=gen)  # type: ignore[arg-type]


# --- sampler pieces ---------------------------------------------------------------------------------------


def test_temperature_schedule() -> None:
    settings = SamplerSettings()
    assert float(sampler.temperature(48, settings)) == pytest.approx(0.8)
    assert float(sampler.temperature(1, settings)) == pytest.approx(0.4 + 0.4 / 48)
    assert sampler.temperature(24, settings).dtype == torch.float32


def test_entropy_matches_categorical() -> None:
    z = torch.randn(2, 7, 50) * 4
    z[0, 0] = -torch.inf
    z[0, 0, 3] = 1.0  # one-hot: zero entropy, no NaN
    h = sampler.entropy(z)
    assert torch.equal(h, torch.distributions.Categorical(logits=z).entropy())
    assert h[0, 0] == 0
    uniform = sampler.entropy(torch.zeros(1, 1024))
    assert float(uniform) == pytest.approx(torch.log(torch.tensor(1024.0)).item())


def test_accept_mask_bound() -> None:
    h = torch.tensor([[0.5, 0.01, 0.02, 0.3, 0.05]])
    # Sorted 0.01 0.02 0.05 0.3 0.5; cumsum minus current: 0 0.01 0.03 0.08 0.38 -> all but 0.5 are <= 0.1.
    assert sampler.accept_mask(h, 0.1).tolist() == [[False, True, True, True, True]]
    assert sampler.accept_mask(h, 0.02).tolist() == [[False, True, True, False, False]]
    assert sampler.accept_mask(h, 10.0).all()


def test_accept_mask_always_accepts_one() -> None:
    h = torch.tensor([[5.0, 6.0, 4.0, 7.0], [9.0, 9.5, 8.0, 3.0]])
    mask = sampler.accept_mask(h, 0.1)
    assert mask.tolist() == [[False, False, True, False], [False, False, False, True]]
    assert (mask.sum(-1) >= 1).all()


def test_renoise_keeps_accepted_and_draws_the_rest() -> None:
    sampled = torch.arange(100, 108).unsqueeze(0)
    accepted = torch.tensor([[True, False, True, False, False, False, False, True]])
    out = sampler.renoise(sampled, accepted, 50, torch.Generator().manual_seed(3))
    fresh = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, torch.where(accepted, sampled, fresh))


def test_stop_test() -> None:
    argmax = torch.tensor([[4, 5, 6]])
    low = torch.full((1, 3), 0.001)
    history = sampler.new_history(1, argmax)
    stop, history = sampler.stop_test(argmax, history, low, 0.005)
    assert not stop.item()  # the -1 history never matches: at least two steps
    stop, history = sampler.stop_test(argmax, history, low, 0.005)
    assert stop.item()
    stop, _ = sampler.stop_test(argmax, history, torch.full((1, 3), 0.01), 0.005)
    assert not stop.item()  # stable but not confident
    stop, _ = sampler.stop_test(torch.tensor([[4, 5, 7]]), history, low, 0.005)
    assert not stop.item()  # confident but not stable
    stop, _ = sampler.stop_test(argmax, sampler.new_history(0, argmax), low, 0.005)
    assert stop.item()  # stability_threshold 0: confidence alone
    two = sampler.new_history(2, argmax)
    results = []
    for _ in range(3):
        stop, two = sampler.stop_test(argmax, two, low, 0.005)
        results.append(bool(stop.item()))
    assert results == [False, False, True]


# --- Infiller ---------------------------------------------------------------------------------------------


def test_infiller_fill(loaded: LoadedModel) -> None:
    quick = dataclasses.replace(loaded, settings=SamplerSettings(max_denoising_steps=4))
    infiller = Infiller(quick)
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    fill = infiller.fill(prefix, suffix, max_new_tokens=16, seed=5, language="python")
    assert isinstance(fill, Fill)
    assert isinstance(fill.text, str)
    assert fill.prompt_tokens == len(build_prompt(loaded.tokenizer, prefix, suffix))
    assert fill.blocks == 1 and fill.steps == 4 and fill.seed == 5
    assert fill.tokens <= 32
    assert infiller.fill(prefix, suffix, max_new_tokens=16, seed=5).text == fill.text  # seeded: reproducible

    cut = infiller.fill(prefix * 20, suffix, max_new_tokens=16, seed=5, max_prompt_tokens=40)
    assert cut.prompt_tokens == 40
    assert (
        infiller.fill(prefix, suffix, max_new_tokens=16).seed
        != infiller.fill(prefix, suffix, max_new_tokens=16).seed
    )
    with pytest.raises(Cancelled):
        infiller.fill(prefix, suffix, max_new_tokens=16, seed=1, cancelled=lambda: True)


def test_infiller_decodes_ids_beyond_the_tokenizer(loaded: LoadedModel) -> None:
    infiller = Infiller(loaded)
    infiller._decodable = 100  # pretend the model vocabulary is larger than the tokenizer's
    quick = dataclasses.replace(loaded, settings=SamplerSettings(max_denoising_steps=2))
    infiller.loaded = quick
    assert isinstance(infiller.fill("x = ", "", max_new_tokens=8, seed=0).text, str)


def test_infiller_chat_template_path(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "chat", fim=False, chat_template=True)
    chat = load_checkpoint(folder, device="cpu")
    chat = dataclasses.replace(chat, settings=SamplerSettings(max_denoising_steps=2))
    fill = Infiller(chat).fill("x = ", "\n", max_new_tokens=8, seed=0, language="python")
    assert "```" not in fill.text and "<turn|>" not in fill.text
    assert fill.prompt_tokens == len(build_prompt(chat.tokenizer, "x = ", "\n", language="python"))
