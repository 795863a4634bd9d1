"""Plain-torch versions of every kernel in this package: each is the kernel's spec and its CPU fallback.

Tests compare each Triton kernel with the function of the same name here, on odd shapes, per dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# --- norms ---


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``residual + x / rms(x) * weight`` over the last dim: fp32 inside, rounded to x's dtype, then added."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(x.dtype)
    return y if residual is None else residual + y


def head_norm_rope(
    qkv: torch.Tensor,
    head_norm: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    n_heads: int,
    kv_heads: int,
    eps: float,
    *,
    cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, Hq, S, D], k, v [B, Hkv, S, D] from projected heads [B, S, heads, D], as model/dgemma.py's
    Attention does: per-head RMSNorm x head_norm, rotate-half RoPE on q and k (cos, signed_sin [S, D]);
    k_eq_v (heads == Hq + Hkv): V = the raw k normalised without a weight. ``cache`` = (K, V, start): batch 1
    writes k and v at positions start .. start + S of [1, Hkv, capacity, D] buffers."""
    dtype, half = qkv.dtype, qkv.shape[-1] // 2
    normed = F.rms_norm(qkv.float(), (qkv.shape[-1],), None, eps)
    heads = (normed * head_norm.float()).to(dtype)
    qk = heads[:, :, : n_heads + kv_heads]
    qk = qk * cos[:, None].to(dtype) + qk.roll(half, dims=-1) * signed_sin[:, None].to(dtype)
    q, k = qk[:, :, :n_heads], qk[:, :, n_heads:]
    k_eq_v = qkv.shape[2] == n_heads + kv_heads
    v = normed[:, :, n_heads:].to(dtype) if k_eq_v else heads[:, :, n_heads + kv_heads :]
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    if cache is not None:
        cache_k, cache_v, start = cache
        cache_k[:, :, start : start + qkv.shape[1]] = k
        cache_v[:, :, start : start + qkv.shape[1]] = v
    return q, k, v


# --- canvas_attention ---


def canvas_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    lo: int,
    start: int,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int = 0,
) -> torch.Tensor:
    """Canvas queries q [B, Hq, C, D] over the cached keys [lo, start) of cache_k/cache_v [1, Hkv, cap, D]
    (shared by every row) and the canvas's own k, v [B, Hkv, C, D]: non-causal, scale 1.0, GQA (query head h
    reads kv head h // (Hq // Hkv)). ``key_mask`` [B, C] bool: False hides that canvas key from every query of
    the row; the prefix is always visible. Softmax in fp32, probabilities rounded to v's dtype before the PV
    product; a query that sees no key gets zeros (as scaled_dot_product_attention does).
    Output [B, Hq, C, D] in q's dtype.

    The encoder's attention over new tokens at positions start.. is the same call with ``causal`` (canvas key
    j visible to query i only if j <= i) and, for sliding layers, ``window`` W (a key at position p visible to
    the query at position t only if t - p < W; the prefix keys too).
    """
    batch, group = q.shape[0], q.shape[1] // k.shape[1]
    keys = torch.cat([cache_k[:, :, lo:start].expand(batch, -1, -1, -1), k], dim=2)  # [B, Hkv, K, D]
    values = torch.cat([cache_v[:, :, lo:start].expand(batch, -1, -1, -1), v], dim=2)
    # [B, Hq, K, D]: kv head j serves query heads j*group .. j*group + group-1
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = q.float() @ keys.float().transpose(-1, -2)  # [B, Hq, C, K]
    if key_mask is not None:
        visible = torch.cat([key_mask.new_ones(batch, start - lo), key_mask.bool()], dim=1)  # [B, K]
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    query_pos = torch.arange(start, start + q.shape[2], device=q.device)[:, None]  # [C, 1]
    key_pos = torch.arange(lo, start + k.shape[2], device=q.device)[None, :]  # [1, K]
    hidden = (key_pos > query_pos) if causal else torch.zeros_like(key_pos, dtype=torch.bool)
    if window:
        hidden = hidden | (query_pos - key_pos >= window)
    scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = probs.masked_fill(scores.isneginf().all(dim=-1, keepdim=True), 0.0)  # no visible key: NaN -> 0
    return (probs.to(values.dtype) @ values).to(q.dtype)


# --- vocab_head ---


class VocabHead(NamedTuple):
    """Per-row results of the vocabulary head; leading shape = hidden's without its last dimension."""

    lse: torch.Tensor  # [...] fp32, logsumexp(z)
    entropy: torch.Tensor  # [...] fp32, nats of softmax(z)
    argmax: torch.Tensor  # [...] int64
    sample: torch.Tensor  # [...] int64, one draw from softmax(z)
    soft: torch.Tensor | None  # [..., d] in the weight dtype: softmax(z) @ E, the self-conditioning input


def vocab_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    softcap: float | None = 30.0,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    soft: bool = True,
) -> VocabHead:
    """LM head + sampling statistics + soft embedding, as model/dgemma.py decode and model/fast.py do them.

    z = softcap(F.linear(hidden, weight) in the weight dtype, then fp32) / temperature. ``noise``: Exp(1)
    [..., V] fp32 for the sample argmax(softmax(z) / noise); None draws it from a generator seeded with
    ``seed`` (the Triton kernel draws its own, so only the distribution matches).
    """
    logits = F.linear(hidden, weight).float()  # [..., V], rounded to the weight dtype first
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    z = logits / temperature
    log_p = torch.log_softmax(z, dim=-1)
    probs = log_p.exp()
    if noise is None:
        generator = torch.Generator(device=z.device).manual_seed(seed)
        noise = torch.empty_like(z).exponential_(generator=generator)
    soft_embedding = None
    if soft:
        w = weight.dtype
        soft_embedding = torch.softmax(z.to(w), -1, dtype=torch.float32).to(w) @ weight
    return VocabHead(
        lse=torch.logsumexp(z, dim=-1),
        entropy=-(probs * log_p).sum(-1),
        argmax=z.argmax(dim=-1),
        sample=(probs / noise.view_as(z)).argmax(dim=-1),
        soft=soft_embedding,
    )


# --- moe ---


def route(
    logits: torch.Tensor, per_expert_scale: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router after its projection: softmax over all experts (fp32) -> top-k -> renormalise -> scale."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)  # [T, E]
    weights, index = torch.topk(probs, k=top_k, dim=-1)  # [T, k], largest first
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * per_expert_scale[index], index


def expert_mlp(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routed experts [T, d] as one loop over experts: sum_j weights[t, j] * down_e(gelu_tanh(gate_e) * up_e).

    x [T, d]; weights, index [T, k]; gate_up [E, 2I, d] (first I rows: gate); down [E, d, I]. FP8 weights
    are dequantised in x's dtype with their per-output-channel scales, as model Experts does.
    """
    dtype = x.dtype
    if gate_up_scale is not None:
        gate_up = gate_up.to(dtype) * gate_up_scale.to(dtype)[..., None]
    if down_scale is not None:
        down = down.to(dtype) * down_scale.to(dtype)[..., None]
    tokens, top_k = index.shape
    per_slot = torch.zeros(tokens, top_k, x.shape[1], dtype=torch.float32, device=x.device)  # [T, k, d]
    for e in range(gate_up.shape[0]):
        token, slot = (index == e).nonzero(as_tuple=True)
        gate, up = (x[token] @ gate_up[e].T).chunk(2, dim=-1)
        hidden = F.gelu(gate, approximate="tanh") * up
        per_slot[token, slot] = hidden @ down[e].T * weights[token, slot, None]
    return per_slot.sum(dim=1).to(dtype)
