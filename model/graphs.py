"""The denoising step, decoder plus fused vocabulary head, replayed as one CUDA graph.

At batch 1 a step is hundreds of small kernels, and launching them from Python left the GPU idle most of
the time (H200 profile: busy 180 of 474 ms of a completion). A ``CanvasStep`` belongs to one document's
KVCache and one canvas shape: its first call warms up (compiling the kernels) and captures the graph;
every call copies its inputs into the graph's static buffers and replays it. The canvas's start position
is read on the device, so the graph keeps serving the document as its prefix changes, until the cache is
reallocated (KVCache then drops its steps). Off CUDA it runs the same code eagerly, which the CPU tests use.
"""

from __future__ import annotations

import torch

from dgemma_lsp.kernels.reference import VocabHead

from .dgemma import DGemma
from .kv_cache import KVCache


class CanvasStep:
    def __init__(self, model: DGemma, cache: KVCache, rows: int, width: int, masked: bool) -> None:
        if not model.triton:
            raise ValueError("CanvasStep runs the Triton kernels: call model.use_kernels(True) first")
        device, dtype = cache.device, model.embed_tokens.weight.dtype
        self.model, self.cache = model, cache
        self.canvas = torch.zeros(rows, width, dtype=torch.long, device=device)
        self.soft = torch.zeros(rows, width, model.args.dim, dtype=dtype, device=device)
        self.keys = torch.ones(rows, width, dtype=torch.bool, device=device) if masked else None
        self.temp = torch.ones((), device=device)
        self.noise = torch.empty(rows, width, model.args.vocab_size, device=device)
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, VocabHead] | None = None

    def _forward(self) -> tuple[torch.Tensor, VocabHead]:
        from dgemma_lsp.kernels.vocab_head import vocab_head

        model = self.model
        hidden = model.decode_hidden(self.canvas, self.cache, self.soft, self.keys, start=self.start)
        weight = model.embed_tokens.weight
        return hidden, vocab_head(hidden, weight, self.temp, softcap=model.args.softcap, noise=self.noise)

    def __call__(
        self,
        canvas: torch.Tensor,
        soft: torch.Tensor | None,
        keys: torch.Tensor | None,
        temp: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, VocabHead]:
        """The final hidden states and the head's statistics for ``canvas`` after the cache's valid entries.

        ``soft`` None (the first step) is fed as zeros: the self-conditioning MLP of zeros is exactly zero.
        The noise is drawn from ``generator`` as the eager head draws it. The hidden states and the soft
        embedding are the graph's buffers, valid until the next call; the rest are copies.
        """
        self.canvas.copy_(canvas)
        if soft is None:
            self.soft.zero_()
        else:
            self.soft.copy_(soft)
        if self.keys is not None and keys is not None:
            self.keys.copy_(keys)
        self.temp.copy_(temp)
        self.start.fill_(self.cache.length)
        self.noise.exponential_(generator=generator)
        if self.canvas.device.type != "cuda":
            hidden, out = self._forward()
        else:
            if self.graph is None:
                self._capture()
            assert self.graph is not None and self.outputs is not None
            self.graph.replay()
            hidden, out = self.outputs
        # The small per-position results are copied: the next replay overwrites the graph's own.
        lse, entropy, argmax, sample = (t.clone() for t in out[:4])
        return hidden, VocabHead(lse, entropy, argmax, sample, out.soft)

    def _capture(self) -> None:
        # Warm up on a side stream first, as torch's CUDA graph notes ask: it compiles the kernels and sets
        # up library workspaces outside the capture. It draws nothing from the generator (the noise is in).
        side = torch.cuda.Stream(self.canvas.device)
        side.wait_stream(torch.cuda.current_stream(self.canvas.device))
        with torch.cuda.stream(side):
            self._forward()
        torch.cuda.current_stream(self.canvas.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self._forward()
        self.graph = graph


def canvas_step(model: DGemma, cache: KVCache, rows: int, width: int, masked: bool) -> CanvasStep:
    """The cache's step for this canvas shape, made on first use; the cache is grown first if it must be,
    since growing it drops the steps (their graphs point at the old buffers)."""
    cache.reserve(cache.length + width)
    key = (rows, width, masked)
    if key not in cache.steps:
        cache.steps[key] = CanvasStep(model, cache, rows, width, masked)
    return cache.steps[key]
