"""The CPU's counterpart of the step graphs: the torch path's denoising step and encoder pass compiled.

A small model on the CPU is bound by per-op overhead, not arithmetic: a step of the tiny test checkpoint is
hundreds of tensor ops of a few microseconds each. torch.compile (inductor's C++ backend) fuses them into a
few loops. An ``InductorSteps`` compiles two functions of the model: one whole denoising step (decoder,
vocabulary head as fast._head_torch computes it, the sample and the sampler's update) and one encoder pass.
Shapes are dynamic, so one compile serves every prefix length, document cache, canvas width and prompt
length. What would make dynamo compile again is kept from it: a plain canvas is passed as a masked one with
every position free, a one-token re-encode is padded to two, a document's first positions run eagerly
(``first``), a cache keeps a position to spare (``_ROOM``), sliding windows are sliced without a max
(DGemma._window). A batch of canvases (several middle lengths) is the one other compile. ``warm_up`` makes
them before the first request.

The generator's draws are inputs: each step's are made a step ahead on a worker thread (fast.Draws), in the
order the eager path draws them, so a seed gives the eager torch path's tokens up to the fused loops'
rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch

from . import sampler
from .denoise import Cancelled, SamplerSettings
from .dgemma import DGemma
from .fast import CanvasResult, CanvasState, Draws, Layout, advance, fed_back, softmax_entropy, start_canvas
from .kv_cache import KVCache

log = logging.getLogger(__name__)


# The cache always keeps a position to spare after what a call writes: a cache filled to its end is
# contiguous up to there where a longer one is not, and compiled code would guard on (and recompile for) it.
_ROOM = 1


class InductorSteps:
    """A model's compiled step and encoder pass: the fast step loop hands a canvas to ``denoise_canvas`` and
    encoder passes to ``encode`` when the model has them (DGemma.compiled_steps)."""

    def __init__(self, model: DGemma) -> None:
        self.model = model  # made by DGemma.use_kernels
        # Calls at earlier positions (a document's head) run eagerly, so that a sliding window never reaches
        # past position 0 (DGemma._window) and dynamo never meets the starts 0 and 1 it compiles apart.
        self.first = max(2, model.args.sliding_window)
        # Sizes equal to a weight's (the canvas width and a head dimension, say) must not share its
        # static size: one compile serves all widths.
        torch.fx.experimental._config.use_duck_shape = False
        # Guards on the model's modules (their weights and attributes) are skipped: the weights are final
        # before a step is compiled (DGemma.use_kernels), and checking them took a fifth of a tiny step.
        options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        self._step = torch.compile(self._forward, dynamic=True, options=options)
        self._encode = torch.compile(model.encode_into, dynamic=True, options=options)

    def _forward(
        self,
        state: CanvasState,
        soft: torch.Tensor,
        keys: torch.Tensor,
        temp: torch.Tensor,
        draws: tuple[torch.Tensor, torch.Tensor],
        masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        limits: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache,
        start: int,
    ) -> tuple[CanvasState, torch.Tensor]:
        """One whole denoising step: decoder, vocabulary head (fast._head_torch's ops), sample, and the
        sampler's update (fast.advance, the layout's masks applied); returns the next state and the next
        step's soft embedding."""
        model = self.model
        hidden = model.decode_into(state.canvas, cache, soft, keys, start)
        z = sampler.scale_logits(model.head(hidden), temp)
        probs, token_entropy = softmax_entropy(z)
        noise, fresh = draws
        sampled = (probs / noise).argmax(-1)
        _, fixed, fixed_ids = masks
        clamped = z.gather(-1, fixed_ids[..., None])[..., 0] - z.logsumexp(-1)
        suffix_logprob = (clamped * fixed).sum(-1) / fixed.sum(-1).clamp(min=1)
        weight = model.embed_tokens.weight
        soft_next = fed_back(z, probs, weight.dtype) @ weight
        state = advance(
            state, token_entropy, sampled, z.argmax(-1), suffix_logprob, fresh, masks, *limits, plain=False
        )
        return state, soft_next

    @torch.inference_mode()
    def denoise_canvas(
        self,
        cache: KVCache,
        layout: Layout,
        settings: SamplerSettings,
        generator: torch.Generator,
        temps: dict[int, torch.Tensor],
        cancelled: Callable[[], bool],
        on_step: Callable[[], None],
    ) -> CanvasResult:
        """fast._denoise_canvas with each step compiled whole. A plain canvas runs as a masked one with every
        position free (one compile for both); the first step's soft embedding is zeros, whose
        self-conditioning MLP is exactly zero. The draws are made a step ahead (fast.Draws), in the eager
        path's order, so a seed gives its tokens up to the fused loops' rounding."""
        model, start = self.model, cache.length
        args, device = model.args, cache.device
        state, masks = start_canvas(layout, settings, args.vocab_size, generator, device)
        free, fixed, _ = masks
        width = free.shape[1]
        cache.reserve(start + width + _ROOM)  # see _ROOM
        soft = torch.zeros(*free.shape, args.dim, dtype=model.embed_tokens.weight.dtype, device=device)
        # The thresholds as tensors: as Python floats they would be guarded on and compiled into the step.
        limits = (torch.tensor(settings.entropy_bound), torch.tensor(settings.confidence_threshold))
        step = self._step if start >= self.first else self._forward
        draws = Draws(tuple(free.shape), args.vocab_size, generator)
        keys = free | fixed
        steps = 0
        try:
            for t in range(settings.max_denoising_steps, 0, -1):
                if cancelled():
                    raise Cancelled()
                temp = _inference(temps[t])
                state, soft = step(state, soft, keys, temp, draws.next(), masks, limits, cache, start)
                steps += 1
                on_step()
                if bool(state.done.all()):  # the one host sync per step
                    break
        finally:
            draws.close()
        return CanvasResult(state.final, state.mean_entropy, state.suffix_logprob, steps)

    @torch.inference_mode()
    def encode(self, ids: torch.Tensor, cache: KVCache, start: int) -> None:
        """``model.encode(ids, cache, start)``: positions before ``first`` eagerly, the rest compiled. A
        single token is encoded with a copy after it, so that its length is not the size 1 that dynamo
        compiles apart: causal attention hides the copy from the real token, and its K/V land past the
        valid entries, where nothing reads them."""
        cache.reserve(start + ids.shape[1] + 1 + _ROOM)  # see _ROOM (and the padding)
        if start < self.first:
            head = min(ids.shape[1], self.first - start)
            self.model.encode_into(ids[:, :head], cache, start)
            ids, start = ids[:, head:], start + head
            if ids.shape[1] == 0:
                return
        # A fresh tensor: compiled code guards on strides and storage offsets too.
        ids = torch.cat([ids, ids], dim=1) if ids.shape[1] == 1 else ids.clone()
        self._encode(_inference(ids), cache, start)

    @torch.inference_mode()
    def warm_up(self, rows: tuple[int, ...] = (1,), *, settings: SamplerSettings) -> float:
        """Compile the encoder and the step for canvases of each number of ``rows`` (1: plain and clamped
        canvases; more: several middle lengths) on a scratch cache; returns the seconds it took.
        ``settings``: the checkpoint's (its stability threshold shapes the step's inputs)."""
        model, began = self.model, time.perf_counter()
        args, device = model.args, model.embed_tokens.weight.device
        width, dtype = args.canvas_length, model.embed_tokens.weight.dtype
        settings = dataclasses.replace(settings, max_denoising_steps=2)
        prompt = torch.zeros(1, self.first + 2, dtype=torch.long, device=device)
        cache = KVCache(args, prompt.shape[1] + width, device=device, dtype=dtype)
        self.encode(prompt, cache, 0)  # eager up to ``first``, then compiled
        cache.extend(prompt[0])
        generator = torch.Generator(device).manual_seed(0)
        temps = {t: torch.ones((), device=device) for t in (1, 2)}
        for n in rows:
            layout = Layout(tuple(width - i for i in range(n)))
            self.denoise_canvas(cache, layout, settings, generator, temps, lambda: False, lambda: None)
        seconds = time.perf_counter() - began
        log.info("compiled the denoising step and the encoder (inductor) in %.1f s", seconds)
        return seconds


def _inference(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as an inference tensor: compiled code guards on the kind of tensor it was compiled for."""
    if t is None or t.is_inference():
        return t
    with torch.inference_mode():
        return t.clone()
