"""The CPU's counterpart of the step graphs: the torch path's denoising step and encoder pass compiled.

A small model on the CPU is bound by per-op overhead, not arithmetic: a step of the tiny test checkpoint is
hundreds of tensor ops of a few microseconds each. torch.compile (inductor's C++ backend) fuses them into a
few loops. An ``InductorSteps`` compiles two functions of the model: one denoising step (decoder, vocabulary
head and the step's statistics, as fast._head_torch computes them) and one encoder pass. Shapes are dynamic,
so one compile serves every prefix length, document cache, canvas width and prompt length. What would make
dynamo compile again is kept from it: a plain canvas is passed as a masked one with every key visible, a
one-token re-encode is padded to two, a document's first positions run eagerly (``first``), a cache keeps a
position to spare (``_ROOM``), sliding windows are sliced without a max (DGemma._window). A batch of
canvases (several middle lengths) is the one other compile. ``warm_up`` makes them before the first request.

The generator's draws stay outside: the sampling noise is drawn on a worker thread while the compiled step
runs (fast.Noise), the sample taken after it, the renoise after that, so a seed gives the eager torch path's
tokens up to the fused loops' rounding.
"""

from __future__ import annotations

import logging
import time

import torch

from dgemma_lsp.kernels.reference import VocabHead

from . import sampler
from .dgemma import DGemma
from .fast import Noise, fed_back, softmax_entropy
from .kv_cache import KVCache

log = logging.getLogger(__name__)


# The cache always keeps a position to spare after what a call writes: a cache filled to its end is
# contiguous up to there where a longer one is not, and compiled code would guard on (and recompile for) it.
_ROOM = 1


class InductorSteps:
    """A model's compiled step and encoder pass, with the interface of graphs.StepGraphs (``run``,
    ``encode``), which the fast step loop calls instead of the eager model when the model has them."""

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
        canvas: torch.Tensor,
        soft: torch.Tensor,
        keys: torch.Tensor | None,
        temp: torch.Tensor,
        cache: KVCache,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor, VocabHead]:
        """The hidden states, softmax(z) and the head's statistics but the sample (fast._head_torch's ops;
        the sample needs the noise, drawn meanwhile)."""
        model = self.model
        hidden = model.decode_into(canvas, cache, soft, keys, start)
        z = sampler.scale_logits(model.head(hidden), temp)
        probs, token_entropy = softmax_entropy(z)
        weight = model.embed_tokens.weight
        soft_next = fed_back(z, probs, weight.dtype) @ weight
        head = VocabHead(z.logsumexp(-1), token_entropy, z.argmax(-1), None, soft_next)
        return hidden, probs, head

    @torch.inference_mode()
    def run(
        self,
        cache: KVCache,
        canvas: torch.Tensor,
        soft: torch.Tensor | None,
        keys: torch.Tensor | None,
        temp: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, VocabHead]:
        """One denoising step for ``canvas`` [B, W] after the cache's valid entries: the final hidden states
        and the head's statistics. ``soft`` None (the first step) is fed as zeros, whose self-conditioning
        MLP is exactly zero: one compile serves both."""
        model, start = self.model, cache.length
        cache.reserve(start + canvas.shape[1] + _ROOM)  # see _ROOM
        if keys is None:  # a plain canvas as a masked one with every key visible: one compile for both
            keys = torch.ones(canvas.shape, dtype=torch.bool, device=canvas.device)
        if soft is None:
            soft = torch.zeros(
                *canvas.shape, model.args.dim, dtype=model.embed_tokens.weight.dtype, device=canvas.device
            )
        noise = Noise((*canvas.shape, model.args.vocab_size), generator, canvas.device)
        step = self._step if start >= self.first else self._forward
        hidden, probs, head = step(*map(_inference, (canvas, soft, keys, temp)), cache, start)
        return hidden, head._replace(sample=(probs / noise.get()).argmax(-1))

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
    def warm_up(self, rows: tuple[int, ...] = (1,)) -> float:
        """Compile the encoder and the step for canvases of each number of ``rows`` (1: plain and clamped
        canvases; more: several middle lengths) on a scratch cache; returns the seconds it took."""
        model, began = self.model, time.perf_counter()
        args, device = model.args, model.embed_tokens.weight.device
        width, dtype = args.canvas_length, model.embed_tokens.weight.dtype
        prompt = torch.zeros(1, self.first + 2, dtype=torch.long, device=device)
        cache = KVCache(args, prompt.shape[1] + width, device=device, dtype=dtype)
        self.encode(prompt, cache, 0)  # eager up to ``first``, then compiled
        cache.extend(prompt[0])
        generator = torch.Generator(device).manual_seed(0)
        for n in rows:
            canvas = torch.zeros(n, width, dtype=torch.long, device=device)
            self.run(cache, canvas, None, None, torch.ones((), device=device), generator)
        seconds = time.perf_counter() - began
        log.info("compiled the denoising step and the encoder (inductor) in %.1f s", seconds)
        return seconds


def _inference(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as an inference tensor: compiled code guards on the kind of tensor it was compiled for."""
    if t is None or t.is_inference():
        return t
    with torch.inference_mode():
        return t.clone()
