"""The denoising step, decoder plus fused vocabulary head, replayed as one CUDA graph.

At batch 1 a step is hundreds of small kernels, and launching them from Python left the GPU idle most of
the time (H200 profile: busy 180 of 474 ms of a completion). A ``CanvasStep`` serves one document's
KVCache and one canvas shape: its first call warms up (compiling the kernels) and captures the graph;
every call copies its inputs into the graph's static buffers and replays it. The canvas's start position
is read on the device, so the graph keeps serving the document as its prefix changes.

The encoder is graphed the same way for short inputs (an ``EncodeStep``): re-encoding the few tokens an
edit changed, or committing a canvas, is all launch overhead when run eagerly.

Bounded memory: masked canvases (the infilling layouts, whose width varies per request) are padded to a
power-of-two width with hidden key positions, and encoder inputs to a power-of-two length, so a few graphs
cover every size; a model keeps at most ``MAX_STEPS`` of them (least recently used dropped), all sharing
one CUDA memory pool and one noise buffer. Sharing is safe because steps never run concurrently and each
step's outputs are read before another graph replays (a later capture may reuse an earlier graph's freed
intermediates, never its live outputs). Off CUDA the same code runs eagerly, which the CPU tests exercise.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from dgemma_lsp.kernels.reference import VocabHead
from dgemma_lsp.kernels.utils import next_power_of_2

from .dgemma import DGemma
from .kv_cache import KVCache

MAX_STEPS = 16  # graphs per model; each holds only its small static buffers beside the shared pool


class CanvasStep:
    """One denoising step for canvases of one shape on one document cache: its static inputs, its graph
    (made on the first call) and the graph's outputs."""

    def __init__(
        self, model: DGemma, rows: int, width: int, masked: bool, noise: torch.Tensor, pool: Any = None
    ) -> None:
        """``noise``: a shared fp32 buffer of at least rows * width * vocab elements; ``pool``: the CUDA
        memory pool to capture into."""
        device, dtype = noise.device, model.embed_tokens.weight.dtype
        vocab = model.args.vocab_size
        self.model, self.pool = model, pool
        self.canvas = torch.zeros(rows, width, dtype=torch.long, device=device)
        self.soft = torch.zeros(rows, width, model.args.dim, dtype=dtype, device=device)
        self.keys = torch.zeros(rows, width, dtype=torch.bool, device=device) if masked else None
        self.temp = torch.ones((), device=device)
        self.noise = noise[: rows * width * vocab].view(rows, width, vocab)
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, VocabHead] | None = None

    def _forward(self, cache: KVCache) -> tuple[torch.Tensor, VocabHead]:
        from dgemma_lsp.kernels.vocab_head import vocab_head

        model = self.model
        hidden = model.decode_hidden(self.canvas, cache, self.soft, self.keys, start=self.start)
        weight = model.embed_tokens.weight
        return hidden, vocab_head(hidden, weight, self.temp, softcap=model.args.softcap, noise=self.noise)

    def __call__(
        self,
        cache: KVCache,
        canvas: torch.Tensor,
        soft: torch.Tensor | None,
        keys: torch.Tensor | None,
        temp: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, VocabHead]:
        """The final hidden states and the head's statistics for ``canvas`` [B, W] after the cache's valid
        entries (the cache must have room for this step's width: see StepGraphs.get).

        ``soft`` None (the first step) is fed as zeros: the self-conditioning MLP of zeros is exactly zero.
        The noise is drawn from ``generator`` as the eager head draws it, for the W real positions only.
        The hidden states and the soft embedding are views of the graph's buffers, valid until the next
        call; the rest are copies.
        """
        width = canvas.shape[1]
        padded = width < self.canvas.shape[1]
        self.canvas[:, :width].copy_(canvas)
        if soft is None:
            self.soft.zero_()
        else:
            self.soft[:, :width].copy_(soft)
        if self.keys is not None:
            self.keys[:, :width].copy_(keys)
            self.keys[:, width:].fill_(False)  # padding: no query sees it
        self.temp.copy_(temp)
        self.start.fill_(cache.length)
        if padded:  # drawn as a [B, W, V] tensor, so the generator's stream matches the eager head's
            noise = torch.empty(canvas.shape + self.noise.shape[-1:], device=canvas.device)
            self.noise[:, :width].copy_(noise.exponential_(generator=generator))
        else:
            self.noise.exponential_(generator=generator)
        if self.canvas.device.type != "cuda":
            hidden, out = self._forward(cache)
        else:
            if self.graph is None:
                self.graph, self.outputs = _capture(lambda: self._forward(cache), self.pool)
            assert self.outputs is not None
            self.graph.replay()
            hidden, out = self.outputs
        # The small per-position results are copied: the next replay overwrites the graph's own.
        lse, entropy, argmax, sample = (t[:, :width].clone() for t in out[:4])
        soft_out = None if out.soft is None else out.soft[:, :width]
        return hidden[:, :width], VocabHead(lse, entropy, argmax, sample, soft_out)


class EncodeStep:
    """The encoder's pass over up to ``width`` new tokens at a device-held position, as one CUDA graph.

    Fewer tokens are padded after the real ones with token 0: causal attention keeps them from the real
    tokens, and their K/V land past the cache's valid entries, where nothing reads them.
    """

    def __init__(self, model: DGemma, width: int, device: torch.device, pool: Any = None) -> None:
        self.model, self.pool = model, pool
        self.ids = torch.zeros(1, width, dtype=torch.long, device=device)
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, cache: KVCache, ids: torch.Tensor, start: int) -> None:
        """Write the K/V of ``ids`` [1, S] at positions start.. (the cache has room: StepGraphs.encode)."""
        self.ids[:, : ids.shape[1]].copy_(ids)
        self.ids[:, ids.shape[1] :].zero_()
        self.start.fill_(start)
        if self.ids.device.type != "cuda":
            self.model.encode(self.ids, cache, self.start)
            return
        if self.graph is None:
            self.graph, _ = _capture(lambda: self.model.encode(self.ids, cache, self.start), self.pool)
        self.graph.replay()


def _capture(forward: Callable[[], Any], pool: Any) -> tuple[torch.cuda.CUDAGraph, Any]:
    """A CUDA graph of ``forward`` and its outputs (the graph's static buffers)."""
    # Warm up on a side stream first, as torch's CUDA graph notes ask: it compiles the kernels and sets up
    # library workspaces outside the capture. Nothing in it draws from a generator (the noise is an input).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = forward()
    return graph, outputs


class StepGraphs:
    """A model's graphed steps: CanvasSteps keyed by (cache, rows, padded width, masked) and EncodeSteps by
    (cache, width), least recently used dropped."""

    def __init__(self, model: DGemma) -> None:
        self.model = model  # made by DGemma.use_kernels
        self.steps: OrderedDict[tuple, CanvasStep | EncodeStep] = OrderedDict()
        self.noise: torch.Tensor | None = None
        self.pool: Any = None  # torch.cuda.graph_pool_handle(), made on first use

    def get(self, cache: KVCache, rows: int, width: int, masked: bool) -> CanvasStep:
        """The step for canvases [rows, width] on ``cache``; makes room in the cache for it first."""
        if masked:  # padding is hidden by the key mask: round the width up to share graphs
            width = max(16, next_power_of_2(width))
        cache.reserve(cache.length + width)
        key = (cache.uid, rows, width, masked)  # uid: a new one whenever the cache's buffers change
        step = self._lookup(key, cache.device)
        if not isinstance(step, CanvasStep):
            needed = rows * width * self.model.args.vocab_size
            if self.noise is None or self.noise.numel() < needed:
                # Canvas steps read the old buffer: drop them.
                self.steps = OrderedDict((k, v) for k, v in self.steps.items() if isinstance(v, EncodeStep))
                self.noise = torch.ones(needed, device=cache.device)
            step = self.steps[key] = CanvasStep(self.model, rows, width, masked, self.noise, self.pool)
        return step

    def _lookup(self, key: tuple, device: torch.device) -> CanvasStep | EncodeStep | None:
        """The step under ``key``, now the most recently used; else None, with room made for a new one."""
        if key in self.steps:
            self.steps.move_to_end(key)
            return self.steps[key]
        while len(self.steps) >= MAX_STEPS:
            self.steps.popitem(last=False)
        if self.pool is None and device.type == "cuda":
            self.pool = torch.cuda.graph_pool_handle()
        return None

    def encode(self, ids: torch.Tensor, cache: KVCache, start: int) -> None:
        """``model.encode(ids, cache, start)``, graphed when ``ids`` [1, S] is at most a canvas long (a
        re-encode after an edit, a committed canvas); longer prompts run eagerly."""
        if ids.shape[1] > self.model.args.canvas_length:
            self.model.encode(ids, cache, start)
            return
        width = max(16, next_power_of_2(ids.shape[1]))
        cache.reserve(start + width)
        key = (cache.uid, width)
        step = self._lookup(key, cache.device)
        if not isinstance(step, EncodeStep):
            step = self.steps[key] = EncodeStep(self.model, width, cache.device, self.pool)
        step(cache, ids, start)

    def run(
        self,
        cache: KVCache,
        canvas: torch.Tensor,
        soft: torch.Tensor | None,
        keys: torch.Tensor | None,
        temp: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, VocabHead]:
        """One denoising step: ``CanvasStep.__call__`` of the step for this canvas's shape."""
        step = self.get(cache, canvas.shape[0], canvas.shape[1], keys is not None)
        return step(cache, canvas, soft, keys, temp, generator)
