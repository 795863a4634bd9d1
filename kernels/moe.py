"""Mixture of experts: the router's softmax -> top-k -> renormalise -> scale, and the routed expert MLP.

Replaces model/dgemma.py ``Router.forward`` (after its projection), ``Experts.forward``, ``_grouped_linear``.

* ``route``: one launch instead of ~6 (softmax, topk, sum, divide, gather, multiply); the [T, E] fp32
  probabilities never go back to memory.
* ``expert_mlp``: at the real shapes (256 tokens x top-8 over 128 experts) every expert gets ~16 rows, so
  the layer streams all 761 M expert weights (1.5 GB bf16, 0.76 GB FP8) and the GEMMs are bandwidth-bound
  (docs/DIFFUSIONGEMMA.md section 5). Against the torch path the kernels
  - read FP8 e4m3 weights as they are stored and apply the per-channel scale in the epilogue, where torch
    first writes and re-reads a dequantised bf16 copy of every expert (3x the weight bytes, 4 launches);
  - gather token rows by index inside the first GEMM (no [T*k, d] copy of x);
  - fuse GELU-tanh(gate) * up into the first GEMM's epilogue (no [T*k, 2I] gate_up tensor, no 2 elementwise
    launches) and the routing weight into the second's;
  - build the tile schedule on the device: no host sync (the torch path syncs in bincount, and in its
    per-expert fallback loop).
  The second GEMM stores its rows back in (token, slot) order; the sum over k is torch's: deterministic,
  no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import block_size, contiguous, interpreting

FP8 = torch.float8_e4m3fn
# Tiles of the grouped GEMMs: rows of one expert (at most), output channels, reduction chunk.
MAX_BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64
ROUTE_ELEMENTS = 4096  # logits held per router program: BLOCK_T * BLOCK_E


# ---------------------------------------------------------------------------------------------- router


@triton.jit
def _route_kernel(
    logits_ptr,  # [T, E] any float dtype, read as fp32
    scale_ptr,  # [E] per_expert_scale
    weights_ptr,  # [T, TOP_K] fp32 out
    index_ptr,  # [T, TOP_K] int64 out
    T,
    E,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    cols = tl.arange(0, BLOCK_E)  # [BLOCK_E] expert ids
    row_ok = rows < T
    col_ok = cols < E
    logits = tl.load(
        logits_ptr + rows[:, None] * E + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
    ).to(tl.float32)
    # Padding columns get -inf (probability 0); padding rows stay finite so no NaN is ever formed.
    logits = tl.where(col_ok[None, :], logits, float("-inf"))
    shifted = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    probs = shifted / tl.sum(shifted, axis=1)[:, None]  # [BLOCK_T, BLOCK_E] softmax over all experts

    # top-k as k rounds of max + mask; ties go to the lower expert index. torch.topk (the spec's) makes no
    # such promise, and on the CPU it breaks exact ties otherwise: the two may route a tied token apart.
    candidates = tl.where(col_ok[None, :], probs, -1.0)
    slots = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    top_w = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(candidates, axis=1)  # [BLOCK_T]
        arg = tl.min(tl.where(candidates == best[:, None], cols[None, :], BLOCK_E), axis=1)
        top_w = tl.where(slots[None, :] == j, best[:, None], top_w)
        top_i = tl.where(slots[None, :] == j, arg[:, None], top_i)
        candidates = tl.where(cols[None, :] == arg[:, None], -2.0, candidates)  # below every probability

    out_ok = row_ok[:, None] & (slots[None, :] < TOP_K)
    # NaN logits select no column (arg == BLOCK_E): keep the gather in bounds; the result is undefined then.
    scale = tl.load(scale_ptr + top_i, mask=out_ok & (top_i < E), other=0.0).to(tl.float32)
    weights = top_w / tl.sum(top_w, axis=1)[:, None] * scale
    offsets = rows[:, None] * TOP_K + slots[None, :]
    tl.store(weights_ptr + offsets, weights, mask=out_ok)
    tl.store(index_ptr + offsets, top_i.to(tl.int64), mask=out_ok)


def route(
    logits: torch.Tensor, per_expert_scale: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights [T, top_k] fp32 and expert indices [T, top_k] int64 from router logits [T, E].

    softmax over all E experts in fp32 -> top-k (largest first; ties to the lower index) -> renormalise to
    sum 1 -> times ``per_expert_scale[index]``. Equal to ``reference.route`` and model ``Router.forward``
    except where two probabilities tie exactly at the k-th place (torch.topk may take the other).
    """
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float [T, E] tensor, got {tuple(logits.shape)} {logits.dtype}")
    tokens, experts = logits.shape
    if per_expert_scale.shape != (experts,):
        raise ValueError(
            f"per_expert_scale must have shape ({experts},), got {tuple(per_expert_scale.shape)}"
        )
    if per_expert_scale.device != logits.device:
        raise ValueError(f"per_expert_scale is on {per_expert_scale.device}, logits on {logits.device}")
    if not 1 <= top_k <= experts:
        raise ValueError(f"top_k must be in [1, {experts}], got {top_k}")
    weights = torch.empty(tokens, top_k, dtype=torch.float32, device=logits.device)
    index = torch.empty(tokens, top_k, dtype=torch.int64, device=logits.device)
    if tokens == 0:
        return weights, index
    logits, per_expert_scale = contiguous(logits, per_expert_scale)
    block_e = block_size(experts, 1024)
    block_t = min(max(1, ROUTE_ELEMENTS // block_e), block_size(tokens, 1 << 30, minimum=1))
    _route_kernel[(triton.cdiv(tokens, block_t),)](
        logits,
        per_expert_scale,
        weights,
        index,
        tokens,
        experts,
        TOP_K=top_k,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_K=block_size(top_k, 1024, minimum=1),
    )
    return weights, index


# ------------------------------------------------------------------------------------------ expert MLP


@triton.jit
def _gelu_tanh(x):
    # 0.5 x (1 + tanh(y)) == x * sigmoid(2y): tl has no tanh outside libdevice.
    return x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton 3.9's interpreter multiplies bf16 operands as their raw uint16 bits
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, d] activations
    w_ptr,  # [E, 2I, d] gate_up (rows 0..I-1 gate, I..2I-1 up), activation dtype or e4m3
    w_scale_ptr,  # [E, 2I] fp32, read only with HAS_SCALE
    order_ptr,  # [T*k] sorted row -> flat (token, slot) assignment
    tile_expert_ptr,  # [slots] int32; E marks an unused slot
    tile_start_ptr,  # [slots] int32 first sorted row
    tile_end_ptr,  # [slots] int32 end of the expert's rows
    h_ptr,  # [T*k, I] out, activation dtype: gelu_tanh(gate) * up per sorted row
    dim,
    inter,
    E,
    TOP_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert >= E:
        return
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    rows = start + tl.arange(0, BLOCK_M)  # [BLOCK_M] sorted rows
    row_ok = rows < end
    tokens = tl.load(order_ptr + rows, mask=row_ok, other=0) // TOP_K  # gather x rows here, not in torch
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] gate channels; up at inter + cols
    col_ok = cols < inter
    ks = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + tokens.to(tl.int64)[:, None] * dim + ks[None, :]  # [BLOCK_M, BLOCK_K]
    expert_w = expert.to(tl.int64) * 2 * inter * dim  # int64: E * 2I * d passes 2^31 for larger models
    gate_ptrs = w_ptr + expert_w + cols[None, :] * dim + ks[:, None]  # [BLOCK_K, BLOCK_N] = gate[e]^T
    up_ptrs = gate_ptrs + inter * dim
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        k_ok = ks < dim - k0
        x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & col_ok[None, :]
        # e4m3 -> activation dtype is exact; the scale waits for the epilogue.
        gate = tl.load(gate_ptrs, mask=w_ok, other=0.0).to(x.dtype)
        up = tl.load(up_ptrs, mask=w_ok, other=0.0).to(x.dtype)
        acc_gate = _dot(x, gate, acc_gate, PRECISION, UPCAST)
        acc_up = _dot(x, up, acc_up, PRECISION, UPCAST)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
        up_ptrs += BLOCK_K

    if HAS_SCALE:
        scale_ptrs = w_scale_ptr + expert.to(tl.int64) * 2 * inter + cols
        acc_gate *= tl.load(scale_ptrs, mask=col_ok, other=0.0)[None, :]
        acc_up *= tl.load(scale_ptrs + inter, mask=col_ok, other=0.0)[None, :]
    h = _gelu_tanh(acc_gate) * acc_up
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * inter + cols[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    h_ptr,  # [T*k, I] sorted rows, activation dtype
    w_ptr,  # [E, d, I] down, activation dtype or e4m3
    w_scale_ptr,  # [E, d] fp32, read only with HAS_SCALE
    order_ptr,  # [T*k] sorted row -> flat (token, slot) assignment
    route_ptr,  # [T*k] routing weights in flat (token, slot) order
    tile_expert_ptr,
    tile_start_ptr,
    tile_end_ptr,
    out_ptr,  # [T*k, d] fp32 out in flat (token, slot) order, routing weight applied
    dim,
    inter,
    E,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert >= E:
        return
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    rows = start + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    row_ok = rows < end
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] of d
    col_ok = cols < dim
    ks = tl.arange(0, BLOCK_K)

    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * inter + ks[None, :]  # [BLOCK_M, BLOCK_K]
    expert_w = expert.to(tl.int64) * dim * inter
    w_ptrs = w_ptr + expert_w + cols[None, :] * inter + ks[:, None]  # [BLOCK_K, BLOCK_N] = down[e]^T
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k_ok = ks < inter - k0
        h = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(h.dtype)
        acc = _dot(h, w, acc, PRECISION, UPCAST)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    if HAS_SCALE:
        acc *= tl.load(w_scale_ptr + expert.to(tl.int64) * dim + cols, mask=col_ok, other=0.0)[None, :]
    flat = tl.load(order_ptr + rows, mask=row_ok, other=0)
    acc *= tl.load(route_ptr + flat, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + flat.to(tl.int64)[:, None] * dim + cols[None, :]  # unsorted on the way out
    tl.store(out_ptrs, acc, mask=row_ok[:, None] & col_ok[None, :])


def _tile_schedule(
    sorted_experts: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expert, first row, end row) per tile of <= block_m sorted rows of one expert, built on the device.

    Sized without a host sync: sum_e ceil(c_e / M) <= floor(T*k / M) + min(E, T*k). Unused slots get
    expert E, and their programs return at once.
    """
    n = sorted_experts.numel()
    experts = torch.arange(num_experts, device=sorted_experts.device, dtype=sorted_experts.dtype)
    starts = torch.searchsorted(sorted_experts, experts)  # [E] first sorted row of each expert
    ends = torch.searchsorted(sorted_experts, experts, right=True)  # [E]
    tiles = (ends - starts + block_m - 1) // block_m  # [E]
    tile_ends = tiles.cumsum(0)  # [E]
    slot = torch.arange(n // block_m + min(num_experts, n), device=sorted_experts.device)  # [slots]
    tile_expert = torch.searchsorted(tile_ends, slot, right=True)  # [slots]; E past the last tile
    e = tile_expert.clamp(max=num_experts - 1)
    tile_start = starts[e] + (slot - (tile_ends[e] - tiles[e])) * block_m
    return tile_expert.to(torch.int32), tile_start.to(torch.int32), ends[e].to(torch.int32)


def _check_expert_args(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None,
    down_scale: torch.Tensor | None,
) -> None:
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"x must be a float32/bfloat16/float16 [T, d] tensor, got {tuple(x.shape)} {x.dtype}"
        )
    if index.dim() != 2 or index.shape[0] != x.shape[0] or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"index must be an int [T={x.shape[0]}, k] tensor, got {tuple(index.shape)} {index.dtype}"
        )
    if weights.shape != index.shape or not weights.is_floating_point():
        raise ValueError(
            f"weights must be a float tensor of index's shape {tuple(index.shape)}, got "
            f"{tuple(weights.shape)} {weights.dtype}"
        )
    if gate_up.dim() != 3 or gate_up.shape[1] % 2 or gate_up.shape[2] != x.shape[1]:
        raise ValueError(f"gate_up must be [E, 2I, d={x.shape[1]}], got {tuple(gate_up.shape)}")
    experts, two_i, dim = gate_up.shape
    if down.shape != (experts, dim, two_i // 2):
        raise ValueError(f"down must be [E, d, I] = {(experts, dim, two_i // 2)}, got {tuple(down.shape)}")
    if gate_up.dtype != down.dtype:
        raise ValueError(f"gate_up and down must share a dtype, got {gate_up.dtype} and {down.dtype}")
    if gate_up.dtype == FP8:
        for name, scale, shape in (
            ("gate_up_scale", gate_up_scale, (experts, two_i)),
            ("down_scale", down_scale, (experts, dim)),
        ):
            if scale is None or scale.shape != shape or scale.dtype != torch.float32:
                got = None if scale is None else (tuple(scale.shape), scale.dtype)
                raise ValueError(f"FP8 experts need an fp32 {name} of shape {shape}, got {got}")
    elif gate_up.dtype != x.dtype:
        raise ValueError(f"expert weights ({gate_up.dtype}) must be x's dtype ({x.dtype}) or float8_e4m3fn")
    elif gate_up_scale is not None or down_scale is not None:
        raise ValueError("scales are only for float8_e4m3fn expert weights")
    tensors = [x, weights, index, gate_up, down, gate_up_scale, down_scale]
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _expert_mlp(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None,
    down_scale: torch.Tensor | None,
    block_m: int | None = None,
    block_n: int = BLOCK_N,
    block_k: int = BLOCK_K,
) -> torch.Tensor:
    """``expert_mlp`` with open tile sizes: tests force several tiles and K steps on small shapes."""
    _check_expert_args(x, weights, index, gate_up, down, gate_up_scale, down_scale)
    tokens, top_k = index.shape
    experts, two_i, dim = gate_up.shape
    inter = two_i // 2
    assignments = tokens * top_k
    if assignments == 0:
        return x.new_zeros(tokens, dim)
    x, weights, index, gate_up, down = contiguous(x, weights, index, gate_up, down)
    if block_m is None:  # about one tile per expert at the average load; more rows take more tiles
        block_m = min(MAX_BLOCK_M, block_size(triton.cdiv(assignments, experts), 1 << 30))

    # Assignments sorted by expert: flat (token, slot) ids in sorted order. Indices must lie in [0, E).
    # Byte keys when they fit: the GPU's radix sort then makes one pass over 8 bits, not eight over 64.
    keys = index.reshape(-1).to(torch.uint8 if experts <= 256 else torch.int32)
    sorted_experts, order = torch.sort(keys, stable=True)  # [T*k], [T*k]
    tile_expert, tile_start, tile_end = _tile_schedule(sorted_experts, experts, block_m)
    slots = tile_expert.numel()
    fp8 = gate_up.dtype == FP8
    precision = "ieee" if x.dtype == torch.float32 else None  # fp32 stays fp32 (no TF32) on the GPU
    upcast = interpreting() and x.dtype == torch.bfloat16
    meta = dict(
        HAS_SCALE=fp8, PRECISION=precision, UPCAST=upcast, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=4
    )

    h = torch.empty(assignments, inter, dtype=x.dtype, device=x.device)  # [T*k, I] sorted rows
    _gate_up_kernel[(slots, triton.cdiv(inter, block_n))](
        x, gate_up, gate_up_scale if fp8 else gate_up, order, tile_expert, tile_start, tile_end, h,
        dim, inter, experts, TOP_K=top_k, BLOCK_N=block_n, **meta,
    )  # fmt: skip
    out = torch.empty(assignments, dim, dtype=torch.float32, device=x.device)  # [T*k, d] (token, slot)
    _down_kernel[(slots, triton.cdiv(dim, block_n))](
        h, down, down_scale if fp8 else down, order, weights.reshape(-1), tile_expert, tile_start, tile_end,
        out, dim, inter, experts, BLOCK_N=block_n, **meta,
    )  # fmt: skip
    # A plain sum over k: deterministic, unlike an atomic scatter-add.
    return out.view(tokens, top_k, dim).sum(dim=1).to(x.dtype)


def expert_mlp(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routed experts [T, d]: out[t] = sum_j weights[t, j] * down_e(gelu_tanh(gate_e(x_t)) * up_e(x_t)).

    x [T, d]; weights, index [T, k] from ``route``; gate_up [E, 2I, d]; down [E, d, I], both x's dtype or
    float8_e4m3fn with fp32 per-output-channel scales gate_up_scale [E, 2I] and down_scale [E, d]
    (dequantised = w.float() * scale, as model/load.py quantize_experts makes them). Indices must lie in
    [0, E): they are not checked (that would need a host sync). No host sync inside.
    """
    return _expert_mlp(x, weights, index, gate_up, down, gate_up_scale, down_scale)
