"""Canvas attention over the prefix KV cache: one flash-attention pass per (query block, query head).

Replaces, in decode mode, ``Attention.forward``'s ``torch.cat`` of the cached prefix with the canvas K/V
(per batch row) followed by ``F.scaled_dot_product_attention(..., enable_gqa=True)``. The kernel reads the
cache slice [lo, start) in place and the canvas K/V from their own tensors, so it saves:

* the concatenation: at batch B it writes and re-reads B copies of the prefix K and V (full layer, 32k keys,
  head_dim 512, 2 kv heads, bf16: 128 MB per row per layer), and at batch 1 the model's scratch write;
* the [B, Hq, C, K] score and probability tensors of the math fallback (no fused kernel takes head_dim 512
  with GQA 8:1), and the broadcast key mask [B, 1, 1, K];
* the launches of cat, mask, softmax and the two matmuls: one launch per layer instead.

Softmax is online in fp32 (running max m, sum l, accumulator acc); the probabilities are rounded to the value
dtype before the PV product, as the reference does. Scale 1.0 (DiffusionGemma normalises q and k instead).
Strides are passed to the kernel, so views such as the model's ``q.transpose(1, 2)`` or a cache slice need no
copy (only a non-unit stride along head_dim forces one). With ``causal`` and ``window`` the same kernel is the
encoder's attention over new tokens, which a CUDA graph of a short re-encode needs (torch's attention slices
the cache by a host-side position). ``lo`` and ``start`` may live on the device for the same reason.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dgemma_lsp.kernels import reference
from dgemma_lsp.kernels.utils import block_size, interpreting, next_power_of_2, triton_usable

MAX_HEAD_DIM = 512
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): exp2 is the fast hardware path


@triton.jit
def _attend_keys(
    acc,  # [BLOCK_M, BLOCK_D] fp32
    m_i,  # [BLOCK_M] fp32, running max of the log2-scaled scores
    l_i,  # [BLOCK_M] fp32, running sum of exp2(score - m_i)
    q,  # [BLOCK_M, BLOCK_D], q's dtype, zero past head_dim
    k_base,  # pointer to key 0 of this kv head: keys [n_keys, HEAD_DIM] with row stride stride_kn
    v_base,  # pointer to value 0, row stride stride_vn
    stride_kn,
    stride_vn,
    n_keys,
    mask_base,  # pointer to uint8 [n_keys] (0 = hidden); read only when HAS_MASK
    q_pos,  # [BLOCK_M] the queries' positions; read only when CAUSAL or HAS_WINDOW
    key_pos0,  # the position of key 0
    window,  # HAS_WINDOW: a key at p is visible to the query at t only if t - p < window
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for n0 in range(0, n_keys, BLOCK_N):
        cols = n0 + offs_n  # [BLOCK_N]
        n_ok = cols < n_keys
        kt = tl.load(  # [BLOCK_D, BLOCK_N]: K transposed for q @ K^T
            k_base + cols[None, :] * stride_kn + offs_d[:, None],
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * LOG2E  # [BLOCK_M, BLOCK_N] fp32
        visible = n_ok
        if HAS_MASK:
            visible = visible & (tl.load(mask_base + cols, mask=n_ok, other=0) != 0)
        s = tl.where(visible[None, :], s, float("-inf"))
        if CAUSAL:
            s = tl.where(key_pos0 + cols[None, :] <= q_pos[:, None], s, float("-inf"))
        if HAS_WINDOW:
            s = tl.where(q_pos[:, None] - (key_pos0 + cols[None, :]) < window, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen no visible key m_new is -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)  # [BLOCK_M]: rescales what was accumulated under the old max
        p = tl.math.exp2(s - m_safe[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, 1)
        vb = tl.load(  # [BLOCK_N, BLOCK_D]
            v_base + cols[:, None] * stride_vn + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        p = p.to(vb.dtype)  # probabilities rounded to the value dtype, as the reference
        if DOT_F32:
            p, vb = p.to(tl.float32), vb.to(tl.float32)
        acc = tl.dot(p, vb, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _canvas_attention_kernel(
    q_ptr,  # [B, Hq, C, D]
    ck_ptr,  # [1, Hkv, capacity, D] cached keys (batch-shared)
    cv_ptr,  # [1, Hkv, capacity, D] cached values
    k_ptr,  # [B, Hkv, C, D] canvas keys
    v_ptr,  # [B, Hkv, C, D] canvas values
    mask_ptr,  # [B, C] uint8 key mask (only read when HAS_MASK)
    out_ptr,  # [B, Hq, C, D] contiguous
    stride_qb,
    stride_qh,
    stride_qm,
    stride_ckh,
    stride_ckn,
    stride_cvh,
    stride_cvn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_mb,
    lo,  # first cached key read (or a pointer to it, with BOUNDS_IN_MEMORY)
    start,  # the canvas's first position: cached keys [lo, start) are read
    n_canvas,  # C
    window,  # sliding window for HAS_WINDOW
    HQ: tl.constexpr,
    GROUP: tl.constexpr,  # Hq // Hkv
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,  # the encoder: canvas key j visible to query i only if j <= i
    HAS_WINDOW: tl.constexpr,
    BOUNDS_IN_MEMORY: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,  # interpreter only: its tl.dot multiplies bf16/fp16 as raw integer bits
):
    if BOUNDS_IN_MEMORY:  # read on the device, so one CUDA graph serves every prefix length
        lo = tl.load(lo).to(tl.int64)
        start = tl.load(start).to(tl.int64)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    kvh = (h // GROUP).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < n_canvas
    d_ok = offs_d < HEAD_DIM
    q = tl.load(  # [BLOCK_M, BLOCK_D]
        q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)  # exact: fp32 products of values already rounded to q's dtype
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Prefix keys [lo, start): always visible, read in place from the shared cache.
    acc, m_i, l_i = _attend_keys(
        acc,
        m_i,
        l_i,
        q,
        ck_ptr + kvh * stride_ckh + lo * stride_ckn,
        cv_ptr + kvh * stride_cvh + lo * stride_cvn,
        stride_ckn,
        stride_cvn,
        start - lo,
        mask_ptr,
        start + offs_m,
        lo,
        window,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        False,
        False,  # prefix keys all precede the queries
        HAS_WINDOW,
        PRECISION,
        DOT_F32,
    )
    # The canvas's own keys, under the per-row key mask.
    acc, m_i, l_i = _attend_keys(
        acc,
        m_i,
        l_i,
        q,
        k_ptr + b * stride_kb + kvh * stride_kh,
        v_ptr + b * stride_vb + kvh * stride_vh,
        stride_kn,
        stride_vn,
        n_canvas,
        mask_ptr + b * stride_mb,
        start + offs_m,
        start,
        window,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        HAS_MASK,
        CAUSAL,
        HAS_WINDOW,
        PRECISION,
        DOT_F32,
    )
    # A query that saw no key (l = 0, acc = 0) returns zeros, as scaled_dot_product_attention does.
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_offs = (pid_bh.to(tl.int64) * n_canvas + offs_m[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _launch_config(head_dim: int, n_canvas: int) -> tuple[int, int, int, int]:
    """BLOCK_M, BLOCK_N, num_warps, num_stages. Head dims 256 and 512: the best of a sweep on an H200 at the
    26B's shapes (kernels/results/h200/attn_sweep.json): 16-row query blocks, so that a 256-token canvas
    makes 16 x heads programs, more than one per SM."""
    if head_dim > 256:
        block_m, block_n, warps, stages = 16, 32, 4, 2
    elif head_dim > 128:
        block_m, block_n, warps, stages = 16, 64, 4, 2
    else:
        block_m, block_n, warps, stages = 64, 64, 4, 3
    # Short canvases (the tests, small batches of FIM hypotheses) need no more query rows than they have.
    return min(block_m, max(16, next_power_of_2(n_canvas))), block_n, warps, stages


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernel takes any outer strides but reads head_dim as consecutive elements.
    return t if t.stride(-1) == 1 else t.contiguous()


def canvas_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    lo: int | torch.Tensor,
    start: int | torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    launch: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Non-causal canvas attention: q [B, Hq, C, D] over cache_k/cache_v [1, Hkv, capacity, D] at [lo, start)
    (shared by every row) then the canvas's k, v [B, Hkv, C, D]; ``key_mask`` [B, C] bool hides canvas keys
    (False) from every query of its row. Scale 1.0, GQA (query head h reads kv head h // (Hq // Hkv)).
    Returns [B, Hq, C, D] in q's dtype. Falls back to the torch reference where Triton cannot run.

    ``lo`` and ``start`` may be one-element int tensors on q's device instead: the kernel reads them there,
    so a CUDA graph of the call serves any window. They are then not range-checked (that would sync).
    ``causal`` and ``window`` make it the encoder's attention over new tokens (see the reference), which
    a CUDA graph of a short re-encode uses. ``launch`` = (BLOCK_M, BLOCK_N, num_warps, num_stages) replaces
    the launch configuration (tune_attention.py).
    """
    if q.dim() != 4:
        raise ValueError(f"q must be [B, Hq, C, D], got shape {tuple(q.shape)}")
    batch, n_heads, n_canvas, head_dim = q.shape
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [B, Hkv, C, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    kv_heads = k.shape[1]
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, n_canvas, head_dim):
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch, canvas or head_dim")
    if n_heads % kv_heads:
        raise ValueError(f"query heads {n_heads} are not a multiple of kv heads {kv_heads}")
    if cache_k.dim() != 4 or cache_k.shape != cache_v.shape:
        raise ValueError(
            f"cache_k and cache_v must both be [1, Hkv, capacity, D], got {tuple(cache_k.shape)} "
            f"and {tuple(cache_v.shape)}"
        )
    if (cache_k.shape[0], cache_k.shape[1], cache_k.shape[3]) != (1, kv_heads, head_dim):
        raise ValueError(f"cache {tuple(cache_k.shape)} must be [1, {kv_heads}, capacity, {head_dim}]")
    bounds_in_memory = isinstance(lo, torch.Tensor)
    if bounds_in_memory != isinstance(start, torch.Tensor):
        raise ValueError("lo and start must both be ints or both be tensors")
    if bounds_in_memory:
        if any(t.numel() != 1 or t.is_floating_point() or t.device != q.device for t in (lo, start)):
            raise ValueError("tensor lo and start must be one-element int tensors on q's device")
    elif not 0 <= lo <= start <= cache_k.shape[2]:
        raise ValueError(f"need 0 <= lo <= start <= capacity, got lo={lo}, start={start}, {cache_k.shape[2]}")
    dtypes = {t.dtype for t in (q, k, v, cache_k, cache_v)}
    if len(dtypes) != 1 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q, k, v and the cache must share one float dtype, got {sorted(map(str, dtypes))}")
    if len({t.device for t in (q, k, v, cache_k, cache_v)}) != 1:
        raise ValueError("q, k, v and the cache must be on one device")
    if key_mask is not None:
        if key_mask.dtype != torch.bool or key_mask.shape != (batch, n_canvas):
            raise ValueError(
                f"key_mask must be bool [{batch}, {n_canvas}], got {key_mask.dtype} {tuple(key_mask.shape)}"
            )
        if key_mask.device != q.device:
            raise ValueError("key_mask must be on q's device")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} > {MAX_HEAD_DIM}: one padded block per row is the design")
    if not triton_usable(q.device):
        if bounds_in_memory:
            lo, start = int(lo), int(start)
        return reference.canvas_attention(q, cache_k, cache_v, lo, start, k, v, key_mask, causal, window)

    q, k, v, cache_k, cache_v = (_inner_contiguous(t) for t in (q, k, v, cache_k, cache_v))
    out = torch.empty(batch, n_heads, n_canvas, head_dim, device=q.device, dtype=q.dtype)  # [B, Hq, C, D]
    if out.numel() == 0:
        return out
    # uint8 view of the bool mask (same bytes); a dummy pointer when there is none (never read).
    mask = key_mask.contiguous().view(torch.uint8) if key_mask is not None else out
    block_d = block_size(head_dim, MAX_HEAD_DIM)
    block_m, block_n, warps, stages = launch or _launch_config(head_dim, n_canvas)
    grid = (triton.cdiv(n_canvas, block_m), batch * n_heads)
    _canvas_attention_kernel[grid](
        q,
        cache_k,
        cache_v,
        k,
        v,
        mask,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        cache_k.stride(1),
        cache_k.stride(2),
        cache_v.stride(1),
        cache_v.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        mask.stride(0) if key_mask is not None else 0,
        lo,
        start,
        n_canvas,
        window,
        HQ=n_heads,
        GROUP=n_heads // kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        HAS_MASK=key_mask is not None,
        CAUSAL=causal,
        HAS_WINDOW=window > 0,
        BOUNDS_IN_MEMORY=bounds_in_memory,
        # fp32 operands: full-precision products (tf32 would miss the fp32 tolerance); others ignore it.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        # Triton 3.9's interpreter multiplies 16-bit float dot operands as their raw bits: upcast there.
        DOT_F32=interpreting() and q.dtype != torch.float32,
        num_warps=warps,
        num_stages=stages,
    )
    return out
