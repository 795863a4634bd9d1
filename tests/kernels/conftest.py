"""Kernel tests run on CUDA when present, else on the CPU through Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from dgemma_lsp.kernels.utils import triton_usable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# atol, rtol per dtype: the kernels accumulate in fp32 but round where the reference rounds.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (3e-3, 3e-3)}


@pytest.fixture(autouse=True)
def _seeded_and_runnable() -> None:
    if not triton_usable(DEVICE):
        pytest.skip("Triton cannot run here (no CUDA and TRITON_INTERPRET is not 1)")
    torch.manual_seed(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """allclose with the dtype's tolerance, reporting how many elements differ and where."""
    atol, rtol = TOLERANCE[dtype or expected.dtype]
    actual, expected = actual.float(), expected.float()
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        diff = (actual - expected).abs()[bad].max().item()
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements differ (max |diff| {diff:.3g}); first at {where}"
        )
