"""Flash-vocab: the LM head, the step's sampling statistics and the self-conditioning soft embedding.

Replaces the tail of ``DGemma.decode`` (F.linear over the tied embedding E, softcap) and model/fast.py's
``step_statistics`` / ``_denoise_canvas`` (temperature, logsumexp, softmax, entropy, exponential noise,
p / noise argmax, argmax, softmax in the weight dtype @ E). At the real shapes (256 canvas rows, vocab 262144,
hidden 2816, bf16) torch materialises about eight [256, 262144] fp32 tensors (268 MB each: logits, capped,
z, log p, p, p * log p, noise, p / noise) plus the bf16 softmax copy, ~2-3 GB of elementwise traffic and a
dozen launches around the two 1.5 GB reads of E.

By default (``gemm`` "torch" in the launch configuration) the two GEMMs go to cuBLAS and Triton does the rest:

1. F.linear(hidden, E) writes the logits in the weight dtype (zbuf, 134 MB in bf16 at the real shapes): the
   reference's own GEMM, rounded as the reference rounds it.
2. ``_vocab_stats_kernel``, grid (row blocks, vocab splits): each program streams its vocabulary split of
   zbuf in tiles and keeps per-row online statistics (running max m, s = sum e^(z-m),
   t = sum e^(z-m) (z-m), argmax, the Gumbel-max sample, and max/sum of z rounded to the weight dtype for the
   soft embedding), writing z back over the logits. Per-split partials ([splits, R], a few KB) are merged in
   torch with the log-sum-exp rule.
3. ``_softmax_in_place_kernel``: z -> exp(z - lse) rounded to the weight dtype, in place.
4. zbuf @ E: the soft embedding, by cuBLAS.

``gemm`` "triton" (``fused_gemm_config``) is the single-pass design: kernel 2 computes each logits tile with
a K-loop over d (nothing vocabulary-sized but z is written) and ``_soft_embedding_kernel``, grid (row blocks,
d blocks, vocab splits), computes soft = exp(z - lse) @ E with fp32 partials [splits, R, d] summed in torch.
On an H200 its tensor-core tiles reached 29 % of the matmul peak, and the head took 3.85 ms against 1.94 ms
with cuBLAS (kernels/results/h200): it stays for GPUs and Triton versions where the balance differs, and as
the benches' comparison.

The row-block axis is the fastest-varying grid axis, so the programs that read the same tiles run together
and share them through L2. Sampling with in-kernel noise (``noise=None``) uses Philox ``tl.rand`` keyed on
(seed, row * V + column): pass a fresh seed per step, or every step draws the same noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dgemma_lsp.kernels import reference
from dgemma_lsp.kernels.reference import VocabHead
from dgemma_lsp.kernels.utils import block_size, contiguous, interpreting, triton_usable

NEG = tl.constexpr(-3.0e38)  # finite start for running maxima: (m - m_new) * 0 stays 0, unlike -inf * 0
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _tanh(x):
    # No tanh in tl.math; exp(-2|x|) lies in (0, 1], so this never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _round_w(x, w_ty: tl.constexpr, INTERPRETED: tl.constexpr):
    """fp32 x rounded to the weight dtype (nearest even, as torch's .to(w)), returned as fp32."""
    if INTERPRETED and w_ty == tl.bfloat16:
        # Triton 3.9's interpreter truncates fp32 -> bf16 casts: round on the bits (inf stays inf).
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        y = bits.to(tl.float32, bitcast=True)
    else:
        y = x.to(w_ty).to(tl.float32)
    return y


@triton.jit
def _vocab_stats_kernel(
    h_ptr, e_ptr, noise_ptr, temp_ptr, z_ptr,  # [R, d] w, [V, d] w, [R, V] fp32, [] fp32, [R, V] w
    m_ptr, s_ptr, t_ptr, mr_ptr, sr_ptr,  # [splits, R] fp32 each
    best_ptr, best_idx_ptr, draw_ptr, draw_idx_ptr,  # [splits, R] fp32 / int64
    n_rows, vocab, dim, tiles_per_split, temp_value, softcap, seed,
    HAS_CAP: tl.constexpr, TEMP_IN_MEMORY: tl.constexpr, NOISE_IN_MEMORY: tl.constexpr,
    LOGITS_IN_MEMORY: tl.constexpr, STORE_Z: tl.constexpr, ROUND_Z: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    split = tl.program_id(1)
    w_ty = e_ptr.dtype.element_ty
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    if TEMP_IN_MEMORY:
        temp = tl.load(temp_ptr)
    else:
        temp = temp_value
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, vocab)

    m = tl.full([BLOCK_R], NEG, tl.float32)  # running max of z
    s = tl.zeros([BLOCK_R], tl.float32)  # sum e^(z - m)
    t = tl.zeros([BLOCK_R], tl.float32)  # sum e^(z - m) (z - m): entropy = log s - t / s
    mr = tl.full([BLOCK_R], NEG, tl.float32)  # the same max and sum for z rounded to w (soft embedding)
    sr = tl.zeros([BLOCK_R], tl.float32)
    best = tl.full([BLOCK_R], -float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_R], tl.int32)
    draw = tl.full([BLOCK_R], -float("inf"), tl.float32)
    draw_idx = tl.zeros([BLOCK_R], tl.int32)

    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        offs = rows64[:, None] * vocab + cols64[None, :]  # [BLOCK_R, BLOCK_V]
        if LOGITS_IN_MEMORY:  # F.linear's output, already in w; z overwrites it below
            logits = tl.load(z_ptr + offs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        else:
            acc = tl.zeros([BLOCK_R, BLOCK_V], tl.float32)
            for k0 in range(0, dim, BLOCK_D):
                ks = k0 + tl.arange(0, BLOCK_D)
                k_ok = ks < dim
                h = tl.load(  # [BLOCK_R, BLOCK_D]
                    h_ptr + rows64[:, None] * dim + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                e = tl.load(  # [BLOCK_V, BLOCK_D]
                    e_ptr + cols64[:, None] * dim + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                if INTERPRETED:  # its tl.dot multiplies 16-bit floats as raw bits; fp32 products are exact
                    h, e = h.to(tl.float32), e.to(tl.float32)
                acc = tl.dot(h, tl.trans(e), acc, input_precision=PRECISION)
            # Round the GEMM output to w first, as F.linear in dtype w does, then cap and scale in fp32.
            logits = _round_w(acc, w_ty, INTERPRETED)  # [BLOCK_R, BLOCK_V]
        if HAS_CAP:
            logits = _tanh(logits / softcap) * softcap
        z = tl.where(col_ok[None, :], logits / temp, -float("inf"))

        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        shifted = z - m_new[:, None]  # -inf on padding columns
        p = tl.exp(shifted)
        t = alpha * (t + s * (m - m_new)) + tl.sum(p * tl.where(col_ok[None, :], shifted, 0.0), axis=1)
        s = alpha * s + tl.sum(p, axis=1)
        m = m_new

        # Strictly greater: an earlier tile keeps a tie, as torch.argmax returns the first maximum.
        tile_best, tile_idx = tl.max(z, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx + v0, best_idx)

        # argmax(softmax(z) / noise) = argmax(z - log noise), noise ~ Exp(1); in-kernel: -log(u), u ~ U[0, 1).
        if NOISE_IN_MEMORY:
            noise = tl.load(noise_ptr + offs, mask=row_ok[:, None] & col_ok[None, :], other=1.0)
        else:
            noise = -tl.log(tl.rand(seed, offs))
        tile_draw, tile_draw_idx = tl.max(z - tl.log(noise), axis=1, return_indices=True)
        better = tile_draw > draw
        draw = tl.where(better, tile_draw, draw)
        draw_idx = tl.where(better, tile_draw_idx + v0, draw_idx)

        if STORE_Z:
            zr = _round_w(z, w_ty, INTERPRETED)
            tl.store(z_ptr + offs, zr.to(w_ty), mask=row_ok[:, None] & col_ok[None, :])  # exact: zr is in w
            if ROUND_Z:
                mr_new = tl.maximum(mr, tl.max(zr, axis=1))
                sr = sr * tl.exp(mr - mr_new) + tl.sum(tl.exp(zr - mr_new[:, None]), axis=1)
                mr = mr_new

    out = split * n_rows + rows  # [BLOCK_R] into [splits, R]
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(t_ptr + out, t, mask=row_ok)
    tl.store(best_ptr + out, best, mask=row_ok)
    tl.store(best_idx_ptr + out, best_idx.to(tl.int64), mask=row_ok)
    tl.store(draw_ptr + out, draw, mask=row_ok)
    tl.store(draw_idx_ptr + out, draw_idx.to(tl.int64), mask=row_ok)
    if ROUND_Z:
        tl.store(mr_ptr + out, mr, mask=row_ok)
        tl.store(sr_ptr + out, sr, mask=row_ok)


@triton.jit
def _soft_embedding_kernel(
    z_ptr, lse_ptr, e_ptr, out_ptr,  # [R, V] w, [R] fp32, [V, d] w, [splits, R, d] fp32
    n_rows, vocab, dim, tiles_per_split,
    PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    split = tl.program_id(2)
    w_ty = e_ptr.dtype.element_ty
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_ok = dcols < dim
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)  # of z rounded to w
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, vocab)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        z = tl.load(  # [BLOCK_R, BLOCK_V]
            z_ptr + rows64[:, None] * vocab + cols64[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=-float("inf"),
        ).to(tl.float32)
        p = _round_w(
            tl.exp(z - lse[:, None]), w_ty, INTERPRETED
        )  # fp32 softmax rounded to w, as the reference
        e = tl.load(  # [BLOCK_V, BLOCK_D]
            e_ptr + cols64[:, None] * dim + dcols[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0
        )
        if INTERPRETED:
            e = e.to(tl.float32)
        else:
            p = p.to(w_ty)
        acc = tl.dot(p, e, acc, input_precision=PRECISION)
    out = (split * n_rows + rows64)[:, None] * dim + dcols[None, :]
    tl.store(out_ptr + out, acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _softmax_in_place_kernel(
    z_ptr, lse_ptr,  # [R, V] w, [R] fp32
    n_rows, vocab,
    INTERPRETED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """z -> exp(z - lse) rounded to w, in place: the left operand of the soft embedding's GEMM."""
    w_ty = z_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = (rows < n_rows)[:, None] & (cols < vocab)[None, :]
    offs = rows.to(tl.int64)[:, None] * vocab + cols[None, :]
    lse = tl.load(lse_ptr + rows, mask=rows < n_rows, other=0.0)
    z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(z_ptr + offs, _round_w(tl.exp(z - lse[:, None]), w_ty, INTERPRETED).to(w_ty), mask=ok)


def _splits(tiles: int, row_blocks: int, target_programs: int) -> tuple[int, int]:
    """(splits, tiles per split): row_blocks * splits near target_programs, and no split empty."""
    splits = max(1, min(tiles, math.ceil(target_programs / row_blocks)))
    per_split = math.ceil(tiles / splits)
    return math.ceil(tiles / per_split), per_split


def _launch_config(rows: int, dtype: torch.dtype, device: torch.device) -> dict[str, int | str]:
    """``gemm`` "torch": both GEMMs by F.linear / matmul (cuBLAS), the statistics and the softmax as passes
    over the logits in w; "triton": both GEMMs inside the kernels (``stats_d``, ``soft_d``: their K tiles)."""
    # CUDA: the best of a sweep on an H200 at the real shapes (kernels/results/h200/sweep_vocab_cublas.json),
    # 1.77 ms per call against 1.87 for the first guess (256 columns, 4 warps); the interpreter wants few,
    # small programs.
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return {
            "gemm": "torch",
            "block_r": block_size(min(rows, 16), 16),
            "stats_v": 128,
            "soft_v": 1024,
            "programs": 4 * sms,
            "warps": 8,
            "stages": 2,
        }
    block_r = block_size(min(rows, 32), 32)
    return {"gemm": "torch", "block_r": block_r, "stats_v": 64, "soft_v": 64, "programs": 4}


def fused_gemm_config(rows: int, dtype: torch.dtype, device: torch.device) -> dict[str, int | str]:
    """The launch configuration with both GEMMs inside the kernels. CUDA: the best of a sweep on an H200 at
    the real shapes (kernels/results/h200/sweep_vocab.json), 3.8 ms per call, 29 % of the measured
    matmul peak."""
    if device.type == "cuda":
        stages = 3 if dtype != torch.float32 else 2  # fp32 tiles take twice the shared memory
        tiles = {"block_r": block_size(min(rows, 128), 128), "stats_d": 128, "soft_d": 128, "stages": stages}
        return {
            **_launch_config(rows, dtype, device),
            **tiles,
            "gemm": "triton",
            "stats_v": 64,
            "soft_v": 64,
            "warps": 8,
        }
    return {**_launch_config(rows, dtype, device), "gemm": "triton", "stats_d": 32, "soft_d": 32}


def _check(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float | torch.Tensor,
    softcap: float | None,
    noise: torch.Tensor | None,
) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be [V, d], got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must end in d = {weight.shape[1]} (weight [V, d])")
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}; F.linear needs one dtype")
    if weight.dtype not in DTYPES:
        raise ValueError(f"weight dtype {weight.dtype} is not one of {DTYPES}")
    if hidden.device != weight.device:
        raise ValueError(f"hidden is on {hidden.device} but weight is on {weight.device}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    elif not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if softcap is not None and not softcap >= 0:
        raise ValueError(f"softcap must be None, 0 (off) or positive, got {softcap}")
    if noise is not None:
        expected = (*hidden.shape[:-1], weight.shape[0])
        if noise.shape != expected and noise.shape != (math.prod(hidden.shape[:-1]), weight.shape[0]):
            raise ValueError(f"noise {tuple(noise.shape)} must be {expected} (or flattened to [rows, V])")
        if noise.dtype != torch.float32 or noise.device != hidden.device:
            raise ValueError(f"noise must be float32 on {hidden.device}, got {noise.dtype} on {noise.device}")


def _merge_softmax(
    m: torch.Tensor, s: torch.Tensor, t: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Merge per-split (max, sum e^(z-m), sum e^(z-m)(z-m)) [splits, R] into lse [R] (and entropy [R])."""
    top = m.max(dim=0).values  # [R]
    scale = torch.exp(m - top)
    total = (s * scale).sum(0)
    lse = top + torch.log(total)
    if t is None:
        return (lse,)
    # Re-centre each split's t on the global max: sum e^(z-top)(z-top) = scale * (t + s (m - top)).
    centred = (scale * (t + s * (m - top))).sum(0)
    return lse, torch.log(total) - centred / total


def _pick(value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Index [R] of the best split per row; torch.argmax keeps the first (lowest-vocabulary) split on ties."""
    return index.gather(0, value.argmax(dim=0, keepdim=True))[0]


def vocab_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    softcap: float | None = 30.0,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    soft: bool = True,
    launch: dict[str, int] | None = None,
) -> VocabHead:
    """Fused LM head over the tied embedding; see ``reference.vocab_head`` for the exact spec.

    hidden [..., d] and weight [V, d] in one dtype w; temperature a positive float or a 0-dim tensor (read
    on the device, no sync). ``noise``: Exp(1) fp32 [..., V] for the sample; None draws Gumbel noise in
    the kernel from (seed, row * V + column): pass a new seed each step. Returns lse, entropy [...] fp32,
    argmax, sample [...] int64 and, with ``soft``, softmax(z) @ E [..., d] in w. Falls back to the torch
    reference where Triton cannot run. ``launch`` replaces the launch configuration (tune_vocab_head.py).
    """
    _check(hidden, weight, temperature, softcap, noise)
    if not triton_usable(hidden.device):
        return reference.vocab_head(
            hidden, weight, temperature, softcap=softcap, noise=noise, seed=seed, soft=soft
        )
    device, w = hidden.device, weight.dtype
    vocab, dim = weight.shape
    lead = hidden.shape[:-1]
    flat, weight = contiguous(hidden.reshape(-1, dim), weight)  # [R, d], [V, d]
    rows = flat.shape[0]
    if rows == 0:
        empty = torch.empty(lead, device=device)
        index = torch.empty(lead, dtype=torch.int64, device=device)
        return VocabHead(
            empty, empty.clone(), index, index.clone(), flat.new_empty(hidden.shape) if soft else None
        )

    cfg = launch or _launch_config(rows, w, device)
    in_memory = cfg["gemm"] == "torch"  # the logits GEMM by F.linear, the statistics a pass over its output
    block_r = cfg["block_r"]
    row_blocks = triton.cdiv(rows, block_r)
    splits, per_split = _splits(triton.cdiv(vocab, cfg["stats_v"]), row_blocks, cfg["programs"])
    launch = {"num_warps": cfg["warps"], "num_stages": cfg["stages"]} if "warps" in cfg else {}
    # tf32 applies only to fp32 operands; those must stay exact to match the reference.
    precision = "ieee" if w == torch.float32 else "tf32"

    temp_in_memory = isinstance(temperature, torch.Tensor)
    temp = temperature.to(device=device, dtype=torch.float32).reshape(()) if temp_in_memory else flat
    noise_flat = contiguous(noise.reshape(rows, vocab))[0] if noise is not None else flat
    round_z = soft and w != torch.float32  # in fp32, softmax(round_w(z)) is softmax(z): reuse m and s
    if in_memory:
        zbuf = F.linear(flat, weight)  # [R, V] in w, as the reference computes it
    else:
        zbuf = torch.empty(rows, vocab, dtype=w, device=device) if soft else flat  # [R, V]
    stats = torch.empty(7 if round_z else 5, splits, rows, device=device)  # m, s, t, best, draw[, mr, sr]
    indices = torch.empty(2, splits, rows, dtype=torch.int64, device=device)  # argmax, sample
    m, s, t, best, draw = stats[:5]
    mr, sr = (stats[5], stats[6]) if round_z else (m, s)
    _vocab_stats_kernel[(row_blocks, splits)](
        flat, weight, noise_flat, temp, zbuf,
        m, s, t, mr, sr, best, indices[0], draw, indices[1],
        rows, vocab, dim, per_split, 1.0 if temp_in_memory else float(temperature), float(softcap or 0.0),
        seed, HAS_CAP=bool(softcap), TEMP_IN_MEMORY=temp_in_memory, NOISE_IN_MEMORY=noise is not None,
        LOGITS_IN_MEMORY=in_memory, STORE_Z=soft, ROUND_Z=round_z, PRECISION=precision,
        INTERPRETED=interpreting(), BLOCK_R=block_r, BLOCK_V=cfg["stats_v"],
        BLOCK_D=cfg.get("stats_d", 16),  # the in-kernel GEMM's K tile; unused with logits in memory
        **launch,
    )  # fmt: skip
    lse, entropy = _merge_softmax(m, s, t)
    argmax, sample = _pick(best, indices[0]), _pick(draw, indices[1])

    soft_embedding = None
    if soft:
        (lse_w,) = _merge_softmax(mr, sr) if round_z else (lse,)
        if in_memory:
            _softmax_in_place_kernel[(row_blocks, triton.cdiv(vocab, cfg["soft_v"]))](
                zbuf, lse_w.contiguous(), rows, vocab,
                INTERPRETED=interpreting(), BLOCK_R=block_r, BLOCK_V=cfg["soft_v"], **launch,
            )  # fmt: skip
            soft_embedding = (zbuf @ weight).view(*lead, dim)
        else:
            d_blocks = triton.cdiv(dim, cfg["soft_d"])
            soft_splits, soft_per_split = _splits(
                triton.cdiv(vocab, cfg["soft_v"]), row_blocks * d_blocks, cfg["programs"]
            )
            partial = torch.empty(soft_splits, rows, dim, device=device)  # [splits, R, d] fp32
            _soft_embedding_kernel[(row_blocks, d_blocks, soft_splits)](
                zbuf, lse_w.contiguous(), weight, partial, rows, vocab, dim, soft_per_split,
                PRECISION=precision, INTERPRETED=interpreting(),
                BLOCK_R=block_r, BLOCK_V=cfg["soft_v"], BLOCK_D=cfg["soft_d"], **launch,
            )  # fmt: skip
            summed = partial[0] if soft_splits == 1 else partial.sum(0)
            soft_embedding = summed.to(w).view(*lead, dim)
    return VocabHead(lse.view(lead), entropy.view(lead), argmax.view(lead), sample.view(lead), soft_embedding)
