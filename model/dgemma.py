"""DiffusionGemma's text model for inference: token ids and positions in, K/V or logits out.

One set of weights, two modes (docs/DIFFUSIONGEMMA.md section 2):
* ``encode``: causal (sliding layers: a window of W keys), writes K/V into a KVCache, no logits;
* ``decode``: a bidirectional canvas over the cached prefix (sliding layers: its last W-1 tokens); it reads
  the cache, never writes it, and returns soft-capped fp32 logits.

Submodule names follow transformers' checkpoint keys, so loading strips a prefix (load.py) and load hooks
stack q/k/v, gate/up and the head norms into the fused parameters used here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import FULL, SLIDING, ModelArgs
from .kv_cache import KVCache


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A no-op cast still costs a dispatch; in fp32 there are ~30 per layer.
    return x if x.dtype == dtype else x.to(dtype)


@torch.compiler.assume_constant_result  # a constant to a compiled step, not a graph break
def _rounded(value: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=torch.float32).to(dtype))


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in fp32. The weight is used as is, not as 1 + w."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) in fp32, before the weight: shared when several norms read the same input."""
        return F.rms_norm(_cast(x, torch.float32), (x.shape[-1],), None, self.eps)

    def scale(self, normed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return _cast(normed if self.weight is None else normed * _cast(self.weight, torch.float32), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.normed(x), x.dtype)


class Rotary(nn.Module):
    """Rotate-half RoPE. Proportional RoPE rotates only the first ``fraction`` of the frequencies of a
    full-width RoPE (the denominator stays head_dim); the other dims get frequency 0 (cos 1, sin 0)."""

    def __init__(self, head_dim: int, theta: float, fraction: float = 1.0) -> None:
        super().__init__()
        rotated = int(fraction * head_dim // 2)
        # Built on the CPU even under a meta-device build: it is derived from the config, not loaded.
        exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.int64, device="cpu").float() / head_dim
        inv_freq = torch.cat([1.0 / (theta**exponents), torch.zeros(head_dim // 2 - rotated, device="cpu")])
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self._last: tuple[tuple[int, int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, start: int, seq: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and a sign-folded sin, [1, seq, 1, head_dim], for positions start..start+seq-1."""
        if torch.compiler.is_compiling():  # a compiled step computes its tables in its own loops
            return self.tables(torch.arange(start, start + seq, device=self.inv_freq.device), dtype)
        key = (start, seq, dtype)
        if self._last is None or self._last[0] != key:  # every step of a canvas asks for the same positions
            positions = torch.arange(start, start + seq, device=self.inv_freq.device)
            self._last = key, self.tables(positions, dtype)
        return self._last[1]

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables for positions [seq] held on the device (no host values: a CUDA graph can replay it)."""
        freqs = positions[:, None].float() * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        # rotate_half(x) * sin == roll(x, half) * [-sin, sin]: the sign moves into the table.
        tables = torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)
        return tables[0][None, :, None, :].to(dtype), tables[1][None, :, None, :].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with grouped K/V heads, scale 1. Above head dim 256 no fused kernel takes ``enable_gqa`` (with a
    mask, none does), so torch falls back to its fp32 math path (on an H200, 11 % of a 2k-prompt completion's
    GPU time); repeated K/V heads let the memory-efficient kernel take head dim 512."""
    if torch.compiler.is_compiling() and q.shape[0] > 1:
        # Written out: inductor's SDPA lowering fails on the strides of a batch of canvases (torch 2.13).
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-1, -2)
        return torch.softmax(scores if mask is None else scores.masked_fill(~mask, -math.inf), -1) @ v
    grouped = k.shape[1] != q.shape[1]
    if grouped and q.shape[-1] > 256:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        grouped = False  # the flag alone keeps the fused kernels out
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=grouped)


def _fuse_on_load(module: nn.Module, fused: str, parts: list[str]) -> None:
    """Load checkpoint tensors ``parts`` concatenated (dim 0) into our ``fused`` parameter."""

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        if all(prefix + p in state_dict for p in parts):
            state_dict[prefix + fused] = torch.cat([state_dict.pop(prefix + p) for p in parts])

    module.register_load_state_dict_pre_hook(hook)


class Attention(nn.Module):
    """q/k/v norms, scaling 1.0, GQA. Full layers are k_eq_v: V = v_norm(raw k), no v_proj.

    One projection for q, k (and v), one RMSNorm over all their heads (the per-head weights stacked, ones
    for v), one RoPE over the q and k heads: a third of the ops of doing each separately.
    """

    def __init__(self, args: ModelArgs, layer_type: str) -> None:
        super().__init__()
        self.head_dim = hd = args.head_dim(layer_type)
        self.n_heads, kv = args.n_heads, args.kv_heads(layer_type)
        self.k_eq_v = layer_type == FULL
        self.window = args.sliding_window if layer_type == SLIDING else 0  # the encoder's, for the kernel
        self.qk_heads = self.n_heads + kv
        self.triton = False  # set by DGemma.use_kernels
        heads = self.qk_heads if self.k_eq_v else self.qk_heads + kv
        self.qkv_proj = nn.Linear(args.dim, heads * hd, bias=False)
        self.o_proj = nn.Linear(args.n_heads * hd, args.dim, bias=False)
        self.norm = RMSNorm(hd, args.rms_norm_eps, with_scale=False)
        self.head_norm = nn.Parameter(torch.ones(heads, hd))
        parts = ["q_proj.weight", "k_proj.weight"] + ([] if self.k_eq_v else ["v_proj.weight"])
        _fuse_on_load(self, "qkv_proj.weight", parts)

        def stack_norms(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
            q, k = (prefix + "q_norm.weight", prefix + "k_norm.weight")
            if q in state_dict and k in state_dict:
                q_w, k_w = state_dict.pop(q), state_dict.pop(k)
                rows = [q_w.expand(self.n_heads, hd), k_w.expand(kv, hd)]
                if not self.k_eq_v:
                    rows.append(torch.ones_like(k_w).expand(kv, hd))
                state_dict[prefix + "head_norm"] = torch.cat(rows)

        self.register_load_state_dict_pre_hook(stack_norms)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        window: tuple[int, int],
        mask: torch.Tensor | None,
        encode: bool,
    ) -> torch.Tensor:
        """``window`` = (lo, start): cached keys [lo, start) are read; x sits at positions start.."""
        batch, seq, _ = x.shape
        if self.triton:
            return self._forward_triton(x, rope, cache_k, cache_v, window, mask, encode)
        normed = self.norm.normed(self.qkv_proj(x).view(batch, seq, -1, self.head_dim))
        heads = _cast(normed * _cast(self.head_norm, torch.float32), x.dtype)
        qk = apply_rope(heads[:, :, : self.qk_heads], *rope)
        q, k = qk[:, :, : self.n_heads], qk[:, :, self.n_heads :]
        # k_eq_v: V is the raw k normalised without a weight.
        v = _cast(normed[:, :, self.n_heads :], x.dtype) if self.k_eq_v else heads[:, :, self.qk_heads :]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        lo, start = window
        if encode or batch == 1:
            # One canvas writes its K/V right after the valid entries as scratch (the cache's length does
            # not grow), so attention reads one slice instead of copying the prefix every step.
            # narrow, not slices: a slice may be clipped at the end, which a compiled step must guard on.
            cache_k.narrow(2, start, seq).copy_(k)
            cache_v.narrow(2, start, seq).copy_(v)
            k, v = cache_k.narrow(2, lo, start + seq - lo), cache_v.narrow(2, lo, start + seq - lo)
        else:
            prefix = (batch, -1, -1, -1)
            k = torch.cat([cache_k.narrow(2, lo, start - lo).expand(prefix), k], dim=2)
            v = torch.cat([cache_v.narrow(2, lo, start - lo).expand(prefix), v], dim=2)
        out = attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))

    def _forward_triton(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        window: tuple[int, int],
        mask: torch.Tensor | None,
        encode: bool,
    ) -> torch.Tensor:
        """The same attention with kernels: head norm + RoPE (+ cache write when encoding) in one pass, and
        canvas attention reading the prefix straight from the cache (``mask``: canvas key mask [B, C])."""
        from dgemma_lsp.kernels import attention, norms

        batch, seq, _ = x.shape
        lo, start = window
        qkv = self.qkv_proj(x).view(batch, seq, -1, self.head_dim)
        cos, sin = (t.view(seq, self.head_dim) for t in rope)
        kv = self.qk_heads - self.n_heads
        cache = (cache_k, cache_v, start) if encode else None
        q, k, v = norms.head_norm_rope(
            qkv, self.head_norm, cos, sin, self.n_heads, kv, self.norm.eps, cache=cache
        )
        if encode and isinstance(start, torch.Tensor):  # a graphed re-encode: the causal kernel
            out = attention.canvas_attention(
                q, cache_k, cache_v, lo, start, k, v, causal=True, window=self.window
            )
        elif encode:  # causal prefill: torch's attention over the cache slice just written
            keys, values = cache_k[:, :, lo : start + seq], cache_v[:, :, lo : start + seq]
            out = attend(q, keys, values, mask)
        else:
            out = attention.canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """Gated GELU-tanh MLP; gate and up projections loaded into one matrix (gate first)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        _fuse_on_load(self, "gate_up_proj.weight", ["gate_proj.weight", "up_proj.weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Router(nn.Module):
    """softmax over all experts (fp32) -> top-k -> renormalise -> per-expert scale."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.top_k = args.top_k
        self.root_size = args.dim**-0.5
        self.proj = nn.Linear(args.dim, args.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(args.dim))
        self.per_expert_scale = nn.Parameter(torch.ones(args.num_experts))

    def forward(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and expert indices [T, top_k] for inputs already RMS-normalised (without a weight)."""
        probs = F.softmax(self.proj(normed * self.scale * self.root_size), dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probs, k=self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[index], index


def _grouped_linear(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of x sorted by expert times w[e]^T per group; ``offsets`` = cumulative row counts, on device."""
    if hasattr(F, "grouped_mm"):
        try:
            return F.grouped_mm(x, w.transpose(1, 2), offs=offsets)
        except RuntimeError:  # a GPU or dtype without grouped GEMM kernels: loop below
            pass
    # One GEMM per expert (one host sync for the group sizes).
    ends = offsets.tolist()
    starts = [0, *ends[:-1]]
    return torch.cat([x[s:e] @ w[i].T for i, (s, e) in enumerate(zip(starts, ends, strict=True))])


class Experts(nn.Module):
    """Routed experts as one grouped GEMM per projection: assignments sorted by expert, no per-expert loop.

    Optional FP8 storage (see load.quantize_experts): e4m3 weights with one fp32 scale per output channel.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        e, d, i = args.num_experts, args.dim, args.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))  # first half: gate
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        self.gate_up_scale: torch.Tensor | None = None
        self.down_scale: torch.Tensor | None = None

    def _weight(self, w: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        # FP8: dequantised per layer here; a fused kernel would read the e4m3 bytes directly.
        return w if scale is None else w.to(dtype) * scale.to(dtype)[..., None]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._every_expert(x, weights, index)
        tokens, k = index.shape
        flat = index.flatten()
        order = flat.argsort(stable=True)
        offsets = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).cumsum(0).to(torch.int32)
        rows = x[order // k]  # [tokens * k, d], grouped by expert
        gate_up = _grouped_linear(rows, self._weight(self.gate_up_proj, self.gate_up_scale, x.dtype), offsets)
        gate, up = gate_up.chunk(2, dim=-1)
        down = self._weight(self.down_proj, self.down_scale, x.dtype)
        out = _grouped_linear(F.gelu(gate, approximate="tanh") * up, down, offsets)
        # Back to (token, k) order and a plain sum over k: deterministic, unlike an atomic scatter-add.
        unsorted = torch.empty_like(out).index_copy_(0, order, out).view(tokens, k, -1)
        return _cast((unsorted * weights[..., None]).sum(dim=1), x.dtype)

    def _every_expert(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Compiled steps (compiled.py): every expert on every token, weighted by a routing matrix that is
        zero off each token's top k. No sort and no grouped GEMM (whose fp32 CPU path the compiler cannot
        trace), and fixed shapes; for a few experts (the bundled model: top 2 of 4) the extra work is
        cheaper than the ops it replaces."""
        mix = torch.zeros(x.shape[0], self.gate_up_proj.shape[0], device=x.device, dtype=weights.dtype)
        mix = mix.scatter(1, index, weights)
        gate_up = torch.einsum("td,efd->etf", x, self._weight(self.gate_up_proj, self.gate_up_scale, x.dtype))
        gate, up = gate_up.chunk(2, dim=-1)
        down = self._weight(self.down_proj, self.down_scale, x.dtype)
        out = torch.einsum("eti,edi->etd", F.gelu(gate, approximate="tanh") * up, down)
        return _cast(torch.einsum("etd,te->td", out.float(), mix), x.dtype)


class Layer(nn.Module):
    """Sandwich norms; the dense MLP and the routed experts run in parallel on the attention output."""

    def __init__(self, args: ModelArgs, layer_type: str) -> None:
        super().__init__()
        d, eps = args.dim, args.rms_norm_eps
        self.layer_type = layer_type
        self.self_attn = Attention(args, layer_type)
        self.mlp = MLP(d, args.intermediate_size)
        self.router = Router(args)
        self.experts = Experts(args)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm_1 = RMSNorm(d, eps)
        self.pre_feedforward_layernorm_2 = RMSNorm(d, eps)
        self.post_feedforward_layernorm_2 = RMSNorm(d, eps)
        # The checkpoint stores one layer_scalar per mode; they need not be equal.
        self.encoder_scalar = nn.Buffer(torch.ones(1))
        self.decoder_scalar = nn.Buffer(torch.ones(1))
        self.triton = False  # set by DGemma.use_kernels

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache,
        index: int,
        window: tuple[int, int],
        mask: torch.Tensor | None,
        encode: bool,
    ) -> torch.Tensor:
        if self.triton:
            return self._forward_triton(x, rope, cache, index, window, mask, encode)
        attn = self.self_attn(
            self.input_layernorm(x), rope, cache.keys[index], cache.values[index], window, mask, encode
        )
        h = x + self.post_attention_layernorm(attn)
        # The dense MLP's and the experts' pre-norms and the router all normalise h: do it once.
        normed = self.pre_feedforward_layernorm.normed(h).view(-1, h.shape[-1])
        dense = self.mlp(self.pre_feedforward_layernorm.scale(normed, h.dtype))
        routing = self.router(_cast(normed, h.dtype))
        routed = self.experts(self.pre_feedforward_layernorm_2.scale(normed, h.dtype), *routing)
        dense, routed = self.post_feedforward_layernorm_1(dense), self.post_feedforward_layernorm_2(routed)
        out = h + self.post_feedforward_layernorm(dense + routed).view(h.shape)
        return out * (self.encoder_scalar if encode else self.decoder_scalar)

    def _forward_triton(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache,
        index: int,
        window: tuple[int, int],
        mask: torch.Tensor | None,
        encode: bool,
    ) -> torch.Tensor:
        """The same layer with kernels: each norm fused with its residual add, router and experts fused."""
        from dgemma_lsp.kernels import moe, norms

        eps, shape = self.input_layernorm.eps, x.shape
        attn = self.self_attn(
            norms.rms_norm(x, self.input_layernorm.weight, eps),
            rope, cache.keys[index], cache.values[index], window, mask, encode,
        )  # fmt: skip
        h = norms.rms_norm(attn, self.post_attention_layernorm.weight, eps, residual=x).view(-1, shape[-1])
        dense = self.mlp(norms.rms_norm(h, self.pre_feedforward_layernorm.weight, eps))
        router = self.router
        scaled = norms.rms_norm(h, None, eps) * router.scale * router.root_size  # as Router.forward rounds
        logits = router.proj(scaled).float()
        weights, experts = moe.route(logits, router.per_expert_scale, router.top_k)
        e = self.experts
        routed = moe.expert_mlp(
            norms.rms_norm(h, self.pre_feedforward_layernorm_2.weight, eps),
            weights, experts, e.gate_up_proj, e.down_proj, e.gate_up_scale, e.down_scale,
        )  # fmt: skip
        dense = norms.rms_norm(dense, self.post_feedforward_layernorm_1.weight, eps)
        mixed = norms.rms_norm(routed, self.post_feedforward_layernorm_2.weight, eps, residual=dense)
        out = norms.rms_norm(mixed, self.post_feedforward_layernorm.weight, eps, residual=h)
        return out.view(shape) * (self.encoder_scalar if encode else self.decoder_scalar)


class SelfConditioning(MLP):
    """Adds an MLP of the previous step's soft embedding to the canvas embedding, then normalises."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args.dim, args.intermediate_size)
        self.pre_norm = RMSNorm(args.dim, args.rms_norm_eps)
        self.post_norm = RMSNorm(args.dim, args.rms_norm_eps, with_scale=False)

    def forward(self, embeds: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        # With no signal (first step) the MLP of a zero input is exactly zero: skip it.
        return self.post_norm(embeds if soft is None else embeds + super().forward(self.pre_norm(soft)))


class DGemma(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.triton = False
        self._graphs: Any = None  # graphs.StepGraphs, made by use_kernels
        self._inductor: Any = None  # compiled.InductorSteps, made by use_kernels
        self._compiled_on: Any = None  # the one of them in use
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)  # also the LM head (tied)
        self.layers = nn.ModuleList(Layer(args, t) for t in args.layer_types)
        self.norm = RMSNorm(args.dim, args.rms_norm_eps)
        self.self_conditioning = SelfConditioning(args)
        self.rotary = nn.ModuleDict(
            {
                SLIDING: Rotary(args.sliding_head_dim, args.sliding_rope_theta),
                FULL: Rotary(args.full_head_dim, args.full_rope_theta, args.full_rotary_fraction),
            }
        )

    @property
    def embed_scale(self) -> float:
        # sqrt(d) rounded to the weight dtype, as the reference does (bf16: 53.0 for d = 2816).
        return _rounded(self.args.dim**0.5, self.embed_tokens.weight.dtype)

    def _window(self, layer_type: str, start: int) -> tuple[int, int]:
        # Sliding layers read the last W-1 cached keys (the encoder then adds the query itself: W). Compiled
        # steps start at W or later (compiled.py), so they skip the max: on their symbolic start it would be
        # a guard on which side wins, and so a second compile.
        if layer_type != SLIDING:
            return (0, start)
        lo = start - self.args.sliding_window + 1
        return (lo if torch.compiler.is_compiling() else max(0, lo), start)

    def _run(
        self, x: torch.Tensor, cache: KVCache, start: int | torch.Tensor, masks: dict, encode: bool
    ) -> torch.Tensor:
        """``start``: an int, or a one-element device tensor (Triton kernels only: see encode)."""
        seq = x.shape[1]
        if isinstance(start, torch.Tensor):
            positions = start + torch.arange(seq, device=x.device)
            ropes = {t: rotary.tables(positions, x.dtype) for t, rotary in self.rotary.items()}
            lo = (start - (self.args.sliding_window - 1)).clamp(min=0)
            windows = {SLIDING: (lo, start), FULL: (torch.zeros_like(start), start)}
        else:
            ropes = {t: rotary(start, seq, x.dtype) for t, rotary in self.rotary.items()}
            windows = {t: self._window(t, start) for t in self.rotary}
        for i, layer in enumerate(self.layers):
            t = layer.layer_type
            x = layer(x, ropes[t], cache, i, windows[t], masks.get(t), encode)
        return x

    def _need_triton_for_device_start(self) -> None:
        if not self.triton:
            raise ValueError("a device-held start needs the Triton kernels (the torch path slices the cache)")

    @torch.inference_mode()
    def encode(self, ids: torch.Tensor, cache: KVCache, start: int | torch.Tensor) -> None:
        """Causal pass over ``ids`` [1, S] at positions start..start+S-1, writing their K/V into ``cache``.

        ``start`` may be a one-element device int tensor, read on the device, so that a CUDA graph of this
        call serves any position (Triton kernels only; the caller reserves the cache).
        """
        if isinstance(start, torch.Tensor):
            self._need_triton_for_device_start()
            self._run(self.embed_tokens(ids) * self.embed_scale, cache, start, {}, encode=True)
            return
        cache.reserve(start + ids.shape[1])
        self.encode_into(ids, cache, start)

    def encode_into(self, ids: torch.Tensor, cache: KVCache, start: int) -> None:
        """``encode`` into a cache that already has room (what compiled.py compiles)."""
        seq = ids.shape[1]
        query = torch.arange(start, start + seq, device=ids.device)[:, None]
        masks = {}
        for t in self.rotary:
            lo = self._window(t, start)[0]
            key = torch.arange(lo, start + seq, device=ids.device)[None, :]
            allowed = key <= query
            if t == SLIDING:
                allowed &= key > query - self.args.sliding_window
            masks[t] = allowed
        self._run(self.embed_tokens(ids) * self.embed_scale, cache, start, masks, encode=True)

    @torch.inference_mode()
    def decode(
        self,
        canvas: torch.Tensor,
        cache: KVCache,
        prev_probs: torch.Tensor | None = None,
        canvas_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, C, V] (fp32, soft-capped) for canvases [B, C] right after the cache's valid entries.

        ``prev_probs``: self-conditioning, softmax of the previous step's temperature-scaled logits [B, C, V]
        in the weight dtype. ``canvas_keys``: optional bool [B, C], False for canvas positions no query may
        attend to (unused positions of a batch row).
        """
        soft = None if prev_probs is None else prev_probs @ self.embed_tokens.weight
        return self.head(self.decode_hidden(canvas, cache, soft, canvas_keys))

    @torch.inference_mode()
    def decode_hidden(
        self,
        canvas: torch.Tensor,
        cache: KVCache,
        soft: torch.Tensor | None = None,
        canvas_keys: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states [B, C, d] before the vocabulary head.

        ``soft``: the self-conditioning soft embedding, softmax(previous z) @ E [B, C, d] (weight dtype).
        ``start``: the canvas's first position as a one-element device int tensor, read on the device, so a
        CUDA graph of this call serves every prefix length (Triton kernels only; the caller reserves the
        cache). Default: the cache's length.
        """
        if start is None:
            start = cache.length
            cache.reserve(start + canvas.shape[1])
        else:
            self._need_triton_for_device_start()
        return self.decode_into(canvas, cache, soft, canvas_keys, start)

    def decode_into(
        self,
        canvas: torch.Tensor,
        cache: KVCache,
        soft: torch.Tensor | None,
        canvas_keys: torch.Tensor | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """``decode_hidden`` at ``start`` in a cache that already has room (what compiled.py compiles)."""
        x = self.embed_tokens(canvas) * self.embed_scale
        x = self.self_conditioning(x, None if soft is None else soft * self.embed_scale)
        masks = {}
        if canvas_keys is not None:
            for t in self.rotary:
                if self.triton:  # the kernel takes the canvas key mask; the prefix is always visible
                    masks[t] = canvas_keys
                    continue
                lo = self._window(t, start)[0]
                prefix = canvas_keys.new_ones(canvas.shape[0], start - lo)
                masks[t] = torch.cat([prefix, canvas_keys], dim=1)[:, None, None, :]
        return self.norm(self._run(x, cache, start, masks, encode=False))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """softcap(hidden @ E^T) in fp32, the GEMM rounded to the weight dtype as the reference does."""
        logits = _cast(F.linear(hidden, self.embed_tokens.weight), torch.float32)
        cap = self.args.softcap
        return torch.tanh(logits / cap) * cap

    def use_kernels(self, triton: bool, step_graphs: bool = False, inductor: bool = False) -> None:
        """Run layers with the Triton kernels (dgemma_lsp.kernels) or plain torch; the fast step loop reads
        ``self.triton`` for the fused vocabulary head, and ``self.compiled_steps`` to run each denoising
        step compiled: replayed as a CUDA graph (``step_graphs``: graphs.StepGraphs; Triton kernels only,
        eager off CUDA) or compiled by torch.compile (``inductor``: compiled.InductorSteps; the torch path,
        for the CPU). Compiled steps are kept while switched off and on (the benchmark alternates); they
        hold the weights, so weights must be final (dtype, device) before the first step."""
        if step_graphs and not triton:
            raise ValueError("step graphs need the Triton kernels")
        if inductor and triton:
            raise ValueError("inductor compiles the torch path, not the Triton kernels")
        # Imported here: both build on this module.
        from .compiled import InductorSteps
        from .graphs import StepGraphs

        self.triton = triton
        for layer in self.layers:
            layer.triton = layer.self_attn.triton = triton
        if step_graphs and self._graphs is None:
            self._graphs = StepGraphs(self)
        if inductor and self._inductor is None:
            self._inductor = InductorSteps(self)
        self._compiled_on = self._graphs if step_graphs else self._inductor if inductor else None

    @property
    def compiled_steps(self) -> Any:
        """What the fast step loop runs instead of the eager model, or None when off: graphs.StepGraphs
        (``run`` for one step, ``encode``) or compiled.InductorSteps (``denoise_canvas`` for a whole
        canvas, ``encode``)."""
        return self._compiled_on
