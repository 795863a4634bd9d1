"""The fast backend's denoiser: our DGemma, a static per-document KV cache, and diffusion-native infilling.

The step is the reference algorithm (docs/DIFFUSIONGEMMA.md section 3): the reference backend's acceptance,
renoise and stop-test functions, one softmax shared by the sample, the entropy and self-conditioning, and the
same generator drawn in the same order, so a plain canvas gives the reference backend's tokens for the same
seed. Inside a step nothing waits for the device except the stop test.

Infilling modes (a canvas ``Layout``):
* plain: one canvas of ``canvas_length`` free positions; the suffix, if any, is in the prompt;
* clamped suffix: [m free positions | the suffix's first k tokens]; the clamped tokens are written back
  after every renoise and left out of acceptance, entropy and stability;
* several middle lengths m as one batch (rows padded with positions nobody attends to); the caller picks
  a row by its scores.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from dgemma_lsp.kernels.reference import VocabHead

from . import sampler
from .denoise import Cancelled, DenoiseResult, SamplerSettings, append_block, cut_at_eos
from .dgemma import DGemma
from .kv_cache import KVCache


@dataclass(frozen=True)
class Layout:
    """One canvas row per middle length: [middle free positions | clamped ids | unused padding]."""

    middles: tuple[int, ...]
    clamped: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.middles or min(self.middles) < 1:
            raise ValueError(f"middle lengths must be >= 1, got {self.middles}")

    @property
    def width(self) -> int:
        return max(self.middles) + len(self.clamped)

    @property
    def plain(self) -> bool:
        return len(self.middles) == 1 and not self.clamped

    def masks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """free [B, W], fixed [B, W] (clamped positions) and the ids to clamp there [B, W]."""
        column = torch.arange(self.width, device=device)[None, :]
        middle = torch.tensor(self.middles, device=device)[:, None]
        free = column < middle
        fixed = (column >= middle) & (column < middle + len(self.clamped))
        ids = torch.tensor([*self.clamped, 0], device=device)  # the 0 pads rows past their suffix
        fixed_ids = torch.where(fixed, ids[(column - middle).clamp(0, len(self.clamped))], 0)
        return free, fixed, fixed_ids


class CanvasState(NamedTuple):
    """What the step loop carries from one step to the next (tensors only: compiled steps take it whole)."""

    canvas: torch.Tensor  # [B, W] the ids the next step denoises
    history: torch.Tensor  # the last steps' argmaxes, for the stability test
    done: torch.Tensor  # [B] rows that passed the stop test
    final: torch.Tensor  # [B, W] each row's argmax at the step it stopped (or the last step)
    mean_entropy: torch.Tensor  # [B] over the free positions, at that step
    suffix_logprob: torch.Tensor  # [B] mean log-probability of the clamped ids (0 without any)


@dataclass
class CanvasResult:
    argmax: torch.Tensor  # [B, W] each row's argmax at the step it stopped (or the last step)
    mean_entropy: torch.Tensor  # [B] over the free positions, at that step
    suffix_logprob: torch.Tensor  # [B] mean log-probability of the clamped ids (0 without any)
    steps: int


@dataclass
class FastResult(DenoiseResult):
    reused_tokens: int = 0  # prompt tokens whose K/V came from the document's cache
    candidates: list[Candidate] = field(default_factory=list)  # one per middle length, best first


@dataclass
class Candidate:
    tokens: list[int]  # the middle, cut at EOS, trailing pad/EOS removed
    middle_length: int
    mean_entropy: float
    suffix_logprob: float


class Noise:
    """One step's sampling noise, Exp(1) [..., V] from the shared generator, drawn while the forward pass
    runs: on the CPU the draw (one op, an eighth of a small model's step) runs on a worker thread, beside
    the forward, which needs nothing from it; ``get`` waits for it. The step's later draws (the renoise)
    come after ``get``, so the generator is consumed in the inline order and a seed gives the same tokens.
    """

    _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgemma-noise")

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> None:
        self.tensor = torch.empty(shape, device=device)
        self._pending = None
        if device.type == "cpu":
            self._pending = self._worker.submit(self._draw, self.tensor, generator)
        else:  # queued on the device's stream: already asynchronous
            self._draw(self.tensor, generator)

    @staticmethod
    def _draw(tensor: torch.Tensor, generator: torch.Generator) -> None:
        with torch.inference_mode():  # the mode is per thread
            tensor.exponential_(generator=generator)

    def get(self) -> torch.Tensor:
        if self._pending is not None:
            self._pending.result()
        return self.tensor


class Draws:
    """Each step's draws from the shared (CPU) generator, in the reference's order (Exp(1) noise [B, W, V]
    for the sample, then uniform ids [B, W] for the renoise), made one step ahead on the worker thread, so
    that a compiled step can take them as inputs while the next step's are drawn beside it. The loop's last
    prefetch goes unused: ``close`` rolls the generator back to before it, so the generator ends where the
    inline draws leave it and the next canvas starts from the same state."""

    def __init__(self, shape: tuple[int, int], vocab: int, generator: torch.Generator) -> None:
        self.shape, self.vocab, self.generator = shape, vocab, generator
        self._submit()

    def _submit(self) -> None:
        self._before = self.generator.get_state()  # the worker is idle: nothing is drawing
        self._pending = Noise._worker.submit(self._draw)

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():  # the mode is per thread
            noise = torch.empty(*self.shape, self.vocab).exponential_(generator=self.generator)
            return noise, sampler.random_canvas(self.shape, self.vocab, self.generator, noise.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (noise, fresh ids); the next step's start drawing."""
        drawn = self._pending.result()
        self._submit()
        return drawn

    def close(self) -> None:
        self._pending.result()
        self.generator.set_state(self._before)


def softmax_entropy(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(z) and its entropy per position, sharing one log-softmax."""
    log_p = z - z.logsumexp(dim=-1, keepdim=True)
    probs = log_p.exp()
    return probs, -(probs * log_p).sum(-1)


def fed_back(z: torch.Tensor, probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The softmax fed back for self-conditioning: the reference computes it in the weight dtype (bf16 on
    CUDA); ``probs`` = softmax(z) when that is z's."""
    return probs if z.dtype == dtype else torch.softmax(z.to(dtype), -1, dtype=torch.float32).to(dtype)


def step_statistics(z: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """softmax(z), its entropy and one sample per position, given Exp(1) ``noise`` shaped like z.

    The sample is ``torch.multinomial(softmax(z), 1)`` op for op (exponential noise, p / q, argmax), so with
    the noise drawn from the generator it consumes it exactly like the reference, minus multinomial's
    validity check, which syncs.
    """
    probs, token_entropy = softmax_entropy(z)
    return probs, token_entropy, (probs / noise).argmax(dim=-1)


def accept_free(token_entropy: torch.Tensor, free: torch.Tensor, bound: float) -> torch.Tensor:
    """Entropy-bound acceptance among the free positions only; the clamped ones sort last, never taken."""
    return sampler.accept_mask(token_entropy.masked_fill(~free, math.inf), bound) & free


def stop_free(
    argmax: torch.Tensor,
    history: torch.Tensor,
    token_entropy: torch.Tensor,
    free: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stop test over the free positions (their argmax stable, their mean entropy below ``threshold``).

    Returns (stop per row, new history, mean entropy of the free positions per row).
    """
    mean = (token_entropy * free).sum(-1) / free.sum(-1)
    stop, history = sampler.stop_test(argmax.masked_fill(~free, 0), history, mean[:, None], threshold)
    return stop, history, mean


def start_canvas(
    layout: Layout, settings: SamplerSettings, vocab: int, generator: torch.Generator, device: torch.device
) -> tuple[CanvasState, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first step's state (a uniform random canvas, the clamped ids written in) and the layout's masks."""
    masks = free, fixed, fixed_ids = layout.masks(device)
    canvas = sampler.random_canvas(tuple(free.shape), vocab, generator, device)
    if not layout.plain:
        canvas = torch.where(fixed, fixed_ids, canvas)
    rows = free.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    history = sampler.new_history(settings.stability_threshold, canvas)
    # No tensor twice, nor views of one: compiled code guards on aliasing and storage offsets, and later
    # steps' states have neither.
    mean_entropy, suffix_logprob = (torch.zeros(rows, device=device) for _ in range(2))
    return CanvasState(canvas, history, done, canvas.clone(), mean_entropy, suffix_logprob), masks


def advance(
    state: CanvasState,
    token_entropy: torch.Tensor,
    sampled: torch.Tensor,
    argmax: torch.Tensor,
    suffix_logprob: torch.Tensor | None,
    fresh: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bound: float | torch.Tensor,
    threshold: float | torch.Tensor,
    plain: bool,
) -> CanvasState:
    """The sampler's update after one step: accept by the entropy bound, renoise the rest with the ``fresh``
    uniform ids, run the stop test; rows that stopped before keep their result. ``plain``: one canvas of
    free positions, tested exactly as the reference backend does; else the layout's masks apply."""
    free, fixed, fixed_ids = masks
    if plain:
        accepted = sampler.accept_mask(token_entropy, bound)
        canvas = torch.where(accepted, sampled, fresh)
        stop, history = sampler.stop_test(argmax, state.history, token_entropy, threshold)
        step_entropy = token_entropy.mean(-1)
    else:
        accepted = accept_free(token_entropy, free, bound)
        canvas = torch.where(fixed, fixed_ids, torch.where(accepted, sampled, fresh))
        stop, history, step_entropy = stop_free(argmax, state.history, token_entropy, free, threshold)
    done = state.done
    final = torch.where(done[:, None], state.final, argmax)
    mean_entropy = torch.where(done, state.mean_entropy, step_entropy)
    if suffix_logprob is not None:
        suffix_logprob = torch.where(done, state.suffix_logprob, suffix_logprob)
    else:
        suffix_logprob = state.suffix_logprob
    return CanvasState(canvas, history, done | stop, final, mean_entropy, suffix_logprob)


def encode(model: DGemma, ids: torch.Tensor, cache: KVCache, start: int) -> None:
    """``model.encode``, compiled when the model's steps are."""
    if model.compiled_steps is not None:
        model.compiled_steps.encode(ids, cache, start)
    else:
        model.encode(ids, cache, start)


def prefill(model: DGemma, cache: KVCache, ids: torch.Tensor) -> int:
    """Make ``cache`` hold the K/V of prompt ``ids`` [P], re-encoding only from the first changed token.

    Returns how many leading tokens were reused. The cache never claims entries that were not written, so a
    failed or interrupted encode leaves it valid (just shorter).
    """
    reused = cache.reusable(ids)
    cache.truncate(reused)
    if reused < ids.numel():
        encode(model, ids[None, reused:], cache, reused)
        cache.extend(ids[reused:])
    return reused


def _denoise_canvas(
    model: DGemma,
    cache: KVCache,
    layout: Layout,
    settings: SamplerSettings,
    generator: torch.Generator,
    temps: dict[int, torch.Tensor],
    cancelled: Callable[[], bool],
    on_step: Callable[[], None],
) -> CanvasResult:
    from .compiled import InductorSteps  # (it builds on this module)

    compiled = model.compiled_steps
    if isinstance(compiled, InductorSteps):  # the whole step compiled, sampler included
        return compiled.denoise_canvas(cache, layout, settings, generator, temps, cancelled, on_step)
    device = cache.device
    vocab = model.args.vocab_size
    state, masks = start_canvas(layout, settings, vocab, generator, device)
    free, fixed, fixed_ids = masks
    keys = None if layout.plain else free | fixed
    soft: Callable[[], torch.Tensor] | None = None  # self-conditioning: softmax of the last step's z, times E
    steps = 0
    for t in range(settings.max_denoising_steps, 0, -1):
        if cancelled():
            raise Cancelled()
        prev = None if soft is None else soft()
        if compiled is not None:  # decoder and head as one CUDA graph
            hidden, out = compiled.run(cache, state.canvas, prev, keys, temps[t], generator)
            token_entropy, sampled, argmax, soft, log_z = _head_out(model, hidden, out, temps[t])
        else:
            noise = Noise((*free.shape, vocab), generator, device)
            hidden = model.decode_hidden(state.canvas, cache, prev, keys)
            head = _head_triton if model.triton else _head_torch
            token_entropy, sampled, argmax, soft, log_z = head(model, hidden, temps[t], noise)
        fresh = sampler.random_canvas(tuple(free.shape), vocab, generator, device)  # the renoise draw
        logprob = (log_z(fixed_ids) * fixed).sum(-1) / fixed.sum(-1) if layout.clamped else None
        state = advance(
            state,
            token_entropy,
            sampled,
            argmax,
            logprob,
            fresh,
            masks,
            settings.entropy_bound,
            settings.confidence_threshold,
            plain=layout.plain,
        )
        steps += 1
        on_step()
        if bool(state.done.all()):  # the one host sync per step
            break
    return CanvasResult(state.final, state.mean_entropy, state.suffix_logprob, steps)


# A step's vocabulary statistics from the final hidden states: token entropy [B, W], sample and argmax ids,
# the next step's soft embedding [B, W, d] (asked for only if there is a next step), and log softmax(z) at
# given ids (for the clamped suffix).
HeadOut = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    Callable[[], torch.Tensor],
    Callable[[torch.Tensor], torch.Tensor],
]


def _head_torch(model: DGemma, hidden: torch.Tensor, temp: torch.Tensor, noise: Noise) -> HeadOut:
    z = sampler.scale_logits(model.head(hidden), temp)
    probs, token_entropy, sampled = step_statistics(z, noise.get())
    probs = fed_back(z, probs, model_dtype(model))

    def log_z(ids: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, dim=-1).gather(-1, ids[..., None])[..., 0]

    return token_entropy, sampled, torch.argmax(z, dim=-1), lambda: probs @ model.embed_tokens.weight, log_z


def _head_triton(model: DGemma, hidden: torch.Tensor, temp: torch.Tensor, noise: Noise) -> HeadOut:
    """The fused vocabulary head, on the same noise as the torch head: a seed gives the same completion
    with either head."""
    from dgemma_lsp.kernels.vocab_head import vocab_head

    weight = model.embed_tokens.weight
    out = vocab_head(hidden, weight, temp, softcap=model.args.softcap, noise=noise.get())
    return _head_out(model, hidden, out, temp)


def _head_out(model: DGemma, hidden: torch.Tensor, out: VocabHead, temp: torch.Tensor) -> HeadOut:
    weight = model.embed_tokens.weight

    def log_z(ids: torch.Tensor) -> torch.Tensor:  # only the clamped ids' logits: one row of E each
        logits = (hidden.float() * weight[ids].float()).sum(-1).to(weight.dtype).float()
        cap = model.args.softcap
        return sampler.scale_logits(torch.tanh(logits / cap) * cap, temp) - out.lse

    return out.entropy, out.sample, out.argmax, lambda: out.soft, log_z


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def denoise_fast(
    model: DGemma,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    settings: SamplerSettings,
    generator: torch.Generator,
    cache: KVCache | None = None,
    layout: Layout | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    on_step: Callable[[int], None] | None = None,
) -> FastResult:
    """Generate after ``prompt_ids`` [P] like ``denoise.denoise`` (same seed, same tokens), on our model.

    ``cache``: the document's KVCache, reused from the first changed token (a fresh one when None).
    ``layout``: an infilling layout (one canvas; ``max_new_tokens`` is then ignored). Without it, plain
    canvases of ``canvas_length`` are denoised and committed until EOS or ``max_new_tokens``.
    """
    args = model.args
    device = model.embed_tokens.weight.device
    ids = prompt_ids.to(device=device, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("prompt_ids must not be empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, model on {device}: create it on {device.type}")
    n_blocks = 1 if layout is not None else math.ceil(max_new_tokens / args.canvas_length)
    if cache is None:
        cache = KVCache(
            args, ids.numel() + n_blocks * args.canvas_length, device=device, dtype=model_dtype(model)
        )
    temps = {t: sampler.temperature(t, settings, device) for t in range(1, settings.max_denoising_steps + 1)}
    steps = 0

    def count() -> None:
        nonlocal steps
        steps += 1
        if on_step is not None:
            on_step(steps)

    with torch.inference_mode():
        t0 = _clock(device)
        reused = prefill(model, cache, ids)
        t1 = _clock(device)
        if layout is not None:
            out = _denoise_canvas(model, cache, layout, settings, generator, temps, cancelled, count)
            candidates = []
            for row, middle in enumerate(layout.middles):
                tokens, _ = cut_at_eos(out.argmax[row, :middle].tolist(), settings.eos_token_ids, -1)
                while tokens and tokens[-1] in (settings.pad_token_id, *settings.eos_token_ids):
                    tokens.pop()
                entropy, logprob = float(out.mean_entropy[row]), float(out.suffix_logprob[row])
                candidates.append(Candidate(tokens, middle, entropy, logprob))
            candidates.sort(key=rank, reverse=True)
            best = candidates[0]
            return FastResult(
                tokens=best.tokens,
                hit_eos=len(best.tokens) < best.middle_length,
                steps=steps,
                blocks=1,
                prefill_ms=(t1 - t0) * 1000.0,
                denoise_ms=(_clock(device) - t1) * 1000.0,
                reused_tokens=reused,
                candidates=candidates,
            )

        generated: list[int] = []
        hit_eos = False
        blocks = 0
        argmax = torch.empty(0)
        plain = Layout((args.canvas_length,))
        for block in range(n_blocks):
            if block > 0:  # commit the previous canvas (causal encoder pass)
                encode(model, argmax, cache, cache.length)
                cache.extend(argmax[0])
            argmax = _denoise_canvas(model, cache, plain, settings, generator, temps, cancelled, count).argmax
            blocks += 1
            if append_block(generated, argmax, settings):
                hit_eos = True
                break
        t2 = _clock(device)
    tokens, _ = cut_at_eos(generated, settings.eos_token_ids, settings.pad_token_id)
    return FastResult(
        tokens=tokens,
        hit_eos=hit_eos,
        steps=steps,
        blocks=blocks,
        prefill_ms=(t1 - t0) * 1000.0,
        denoise_ms=(t2 - t1) * 1000.0,
        reused_tokens=reused,
    )


def rank(candidate: Candidate) -> tuple[float, float]:
    """Higher is better: how well the middle leads into the clamped suffix, then how sure the model is."""
    return (candidate.suffix_logprob, -candidate.mean_entropy)


def model_dtype(model: DGemma) -> torch.dtype:
    return model.embed_tokens.weight.dtype


class CacheSlots:
    """One KVCache per open document (least recently used dropped beyond ``max_slots``)."""

    def __init__(self, model: DGemma, max_slots: int = 4, capacity: int = 1024) -> None:
        self.model, self.max_slots, self.capacity = model, max_slots, capacity
        self._slots: OrderedDict[str, KVCache] = OrderedDict()

    def get(self, key: str) -> KVCache:
        if key in self._slots:
            self._slots.move_to_end(key)
            return self._slots[key]
        while len(self._slots) >= self.max_slots:
            self._slots.popitem(last=False)
        device = self.model.embed_tokens.weight.device
        cache = KVCache(self.model.args, self.capacity, device=device, dtype=model_dtype(self.model))
        self._slots[key] = cache
        return cache

    def drop(self, key: str) -> None:
        self._slots.pop(key, None)
