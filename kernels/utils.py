"""Launch helpers shared by the kernels: capability probes, block sizes, contiguity."""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton

    HAVE_TRITON = True
except ImportError:  # kernels fall back to their torch reference
    triton = None  # type: ignore[assignment]
    HAVE_TRITON = False


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (slowly); read when kernels are defined."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of ``device``: CUDA with Triton, or the interpreter."""
    if not HAVE_TRITON:
        return False
    return interpreting() if device.type == "cpu" else device.type == "cuda"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_size(n: int, limit: int, minimum: int = 16) -> int:
    """The power of two >= n (at least ``minimum``, so tl.dot accepts it); ValueError past ``limit``."""
    size = max(minimum, next_power_of_2(n))
    if size > limit:
        raise ValueError(f"dimension {n} needs a block of {size} > {limit}; split it")
    return size


def contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Kernels index with plain row-major strides: copy only what is not already laid out that way."""
    return tuple(t if t.is_contiguous() else t.contiguous() for t in tensors)


@functools.cache
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (Triton interpreter)" if interpreting() else "cpu"
