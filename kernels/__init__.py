"""Triton kernels for the denoiser step (installed as ``dgemma_lsp.kernels``).

Each op lives in ``<op>.py`` (kernels + launcher) beside its plain-torch spec in ``reference.py``, with a
``bench_<op>.py``: ``norms`` (RMSNorm + residual; head norm + RoPE + KV write), ``attention`` (canvas over the
prefix cache), ``moe`` (router; grouped expert MLP, bf16 or FP8 weights) and ``vocab_head`` (LM head, sampling
statistics and the self-conditioning embedding: passes over the logits between two cuBLAS GEMMs).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from .utils import triton_import_error, triton_usable

log = logging.getLogger(__name__)

Kernels = Literal["auto", "triton", "torch", "inductor"]  # inductor: the torch path compiled


def use_triton(requested: Kernels, device: torch.device) -> bool:
    """Whether the fast backend runs the Triton kernels: ``auto`` on CUDA; ``triton`` wherever they can run
    (CUDA, or the CPU under TRITON_INTERPRET=1), falling back to torch, with a warning, where they cannot."""
    if requested in ("torch", "inductor") or (requested == "auto" and device.type != "cuda"):
        return False
    if not triton_usable(device):
        why = triton_import_error() or f"no Triton kernels on {device.type}"
        log.warning("kernels=%s: %s; using the torch kernels", requested, why)
        return False
    return True
