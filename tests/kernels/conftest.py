"""Kernel tests run on CUDA when present, else on the CPU through Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgemma_lsp.kernels.utils import interpreting, triton_usable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# atol, rtol per dtype: the kernels accumulate in fp32 but round where the reference rounds. bf16: 2.5 ulps
# on the interpreter's small shapes; CUDA runs the same tests at real sizes, whose longer sums, added in
# other orders, flip more roundings (3e-2 is what they passed at on an H200).
BF16_TOLERANCE = (1e-2, 1e-2) if interpreting() else (3e-2, 3e-2)
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: BF16_TOLERANCE, torch.float16: (3e-3, 3e-3)}


def _interpreter_rounds_bf16_to_nearest_even() -> None:
    """Triton 3.9's interpreter truncates fp32 -> bf16 casts, where a GPU (and torch) rounds to nearest even:
    under it a bf16 test could not tell where a kernel rounds. Round here as the GPU does."""
    import triton.language as tl
    from triton.runtime import interpreter

    truncating = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):  # type: ignore[no-untyped-def]
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            values = np.ascontiguousarray(src.data, dtype=np.float32)
            bits = values.view(np.uint32)
            nearest_even = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16  # inf stays inf
            nearest_even = np.where(np.isnan(values), 0x7FC0, nearest_even)  # a NaN's payload could carry
            return interpreter.TensorHandle(nearest_even.astype(np.uint16), tl.bfloat16)
        return truncating(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


if interpreting():
    _interpreter_rounds_bf16_to_nearest_even()


@pytest.fixture(autouse=True)
def _seeded_and_runnable() -> None:
    if not triton_usable(DEVICE):
        pytest.skip("Triton cannot run here (no CUDA and TRITON_INTERPRET is not 1)")
    torch.manual_seed(0)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    tolerance: tuple[float, float] | None = None,
) -> None:
    """allclose with the dtype's tolerance (or atol, rtol), reporting how many elements differ and where."""
    atol, rtol = tolerance or TOLERANCE[dtype or expected.dtype]
    actual, expected = actual.float(), expected.float()
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        diff = (actual - expected).abs()[bad].max().item()
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements differ (max |diff| {diff:.3g}); first at {where}"
        )
