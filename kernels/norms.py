"""RMSNorm with the residual add, and the attention's q/k/v head norm + RoPE + KV-cache write, each one pass.

In torch (model/dgemma.py) a sandwich norm plus its residual is ~6 launches (cast, rms_norm, weight multiply,
cast, add), and the head path is norm, weight, RoPE (roll, two multiplies, add), transposes and two cache
copies. Each reads and writes the activation again; here each row is read once and written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import block_size, contiguous


@triton.jit
def _rms_norm_kernel(
    x_ptr, w_ptr, res_ptr, out_ptr, n_cols, eps,
    HAS_WEIGHT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # Round where torch rounds: the normed value to the output dtype, then the sum.
    y = y.to(out_ptr.dtype.element_ty)
    if HAS_RESIDUAL:
        residual = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        y = (residual + y.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * n_cols + cols, y, mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``residual + x / rms(x) * weight`` over the last dimension (fp32 inside, x's dtype out)."""
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match x's last dimension {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} != x {tuple(x.shape)}")
    n = x.shape[-1]
    (flat,) = contiguous(x.reshape(-1, n))  # [rows, n]
    if weight is not None:
        (weight,) = contiguous(weight)
    out = torch.empty_like(flat)
    res = contiguous(residual.reshape(-1, n))[0] if residual is not None else flat
    _rms_norm_kernel[(flat.shape[0],)](
        flat, weight if weight is not None else flat, res, out, n, eps,
        HAS_WEIGHT=weight is not None, HAS_RESIDUAL=residual is not None, BLOCK=block_size(n, 65536, 1),
    )  # fmt: skip
    return out.view(x.shape)


@triton.jit
def _head_norm_rope_kernel(
    qkv_ptr, norm_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr,
    seq, heads, n_heads, kv_heads, head_dim, capacity, start, eps,
    K_EQ_V: tl.constexpr, WRITE_CACHE: tl.constexpr, START_IN_MEMORY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    if START_IN_MEMORY:  # read on the device: a CUDA graph of the call serves any position
        start = tl.load(start)
    token = tl.program_id(0)  # b * seq + s
    head = tl.program_id(1)
    b, s = token // seq, token % seq
    cols = tl.arange(0, BLOCK)
    mask = cols < head_dim
    src = qkv_ptr + (token * heads + head) * head_dim
    x = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / head_dim + eps)
    out_ty = q_ptr.dtype.element_ty
    y = (x * inv_rms * tl.load(norm_ptr + head * head_dim + cols, mask=mask, other=0.0)).to(out_ty)
    qk_heads = n_heads + kv_heads
    if head < qk_heads:
        # rotate-half RoPE: y * cos + roll(y, D/2) * signed_sin; the roll reads the other half of the head.
        half = head_dim // 2
        partner = tl.where(cols < half, cols + half, cols - half)
        xp = tl.load(src + partner, mask=mask, other=0.0).to(tl.float32)
        yp = (xp * inv_rms * tl.load(norm_ptr + head * head_dim + partner, mask=mask, other=0.0)).to(out_ty)
        # Round where torch rounds (the tables, each product and the sum in the activation dtype), so that
        # this kernel's q and k are the torch path's bit for bit, not one ulp off in a third of them.
        cos = tl.load(cos_ptr + s * head_dim + cols, mask=mask, other=0.0).to(out_ty).to(tl.float32)
        sin = tl.load(sin_ptr + s * head_dim + cols, mask=mask, other=0.0).to(out_ty).to(tl.float32)
        rotated = (y.to(tl.float32) * cos).to(out_ty).to(tl.float32)
        y = (rotated + (yp.to(tl.float32) * sin).to(out_ty).to(tl.float32)).to(out_ty)
    if head < n_heads:
        tl.store(q_ptr + ((b * n_heads + head) * seq + s) * head_dim + cols, y, mask=mask)
    elif head < qk_heads:
        kv = head - n_heads
        row = ((b * kv_heads + kv) * seq + s) * head_dim
        tl.store(k_ptr + row + cols, y, mask=mask)
        if WRITE_CACHE:
            tl.store(cache_k_ptr + (kv * capacity + start + s) * head_dim + cols, y, mask=mask)
        if K_EQ_V:  # V is the raw k, normalised without a weight and not rotated
            v = (x * inv_rms).to(out_ty)
            tl.store(v_ptr + row + cols, v, mask=mask)
            if WRITE_CACHE:
                tl.store(cache_v_ptr + (kv * capacity + start + s) * head_dim + cols, v, mask=mask)
    else:
        kv = head - qk_heads
        tl.store(v_ptr + ((b * kv_heads + kv) * seq + s) * head_dim + cols, y, mask=mask)
        if WRITE_CACHE:
            tl.store(cache_v_ptr + (kv * capacity + start + s) * head_dim + cols, y, mask=mask)


def head_norm_rope(
    qkv: torch.Tensor,
    head_norm: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    n_heads: int,
    kv_heads: int,
    eps: float,
    *,
    cache: tuple[torch.Tensor, torch.Tensor, int | torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, Hq, S, D], k and v [B, Hkv, S, D] from the projected heads ``qkv`` [B, S, heads, D].

    Per head: RMS-normalise, times ``head_norm`` [heads, D]; RoPE (cos, signed_sin: [S, D]) on the q and k
    heads. heads == Hq + Hkv means k_eq_v (V = the raw k, normalised without a weight, not rotated); else
    Hq + 2 Hkv with V last. ``cache`` = (cache_k, cache_v [1, Hkv, capacity, D], start): with batch 1, k and v
    are also written at positions start .. start + S; ``start`` may be a one-element int tensor on the
    device, read there (not checked against the capacity: that would sync).
    """
    batch, seq, heads, dim = qkv.shape
    k_eq_v = heads == n_heads + kv_heads
    if not k_eq_v and heads != n_heads + 2 * kv_heads:
        raise ValueError(f"{heads} heads is neither q+k ({n_heads}+{kv_heads}) nor q+k+v")
    if head_norm.shape != (heads, dim) or cos.shape != (seq, dim) or signed_sin.shape != (seq, dim):
        raise ValueError("head_norm must be [heads, D] and the RoPE tables [S, D]")
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {dim}")
    qkv, head_norm, cos, signed_sin = contiguous(qkv, head_norm, cos, signed_sin)
    q = qkv.new_empty(batch, n_heads, seq, dim)
    k = qkv.new_empty(batch, kv_heads, seq, dim)
    v = qkv.new_empty(batch, kv_heads, seq, dim)
    if cache is not None:
        cache_k, cache_v, start = cache
        if batch != 1 or not (cache_k.is_contiguous() and cache_v.is_contiguous()):
            raise ValueError("the cache is written for batch 1 into contiguous buffers only")
        capacity = cache_k.shape[2]
        if not isinstance(start, torch.Tensor) and start + seq > capacity:
            raise ValueError(f"positions {start}..{start + seq} past the cache capacity {capacity}")
    else:
        cache_k, cache_v, start, capacity = k, v, 0, 0
    _head_norm_rope_kernel[(batch * seq, heads)](
        qkv, head_norm, cos, signed_sin, q, k, v, cache_k, cache_v,
        seq, heads, n_heads, kv_heads, dim, capacity, start, eps,
        K_EQ_V=k_eq_v, WRITE_CACHE=cache is not None, START_IN_MEMORY=isinstance(start, torch.Tensor),
        BLOCK=block_size(dim, 1024, 1),
    )  # fmt: skip
    return q, k, v
