"""Shared fixtures: one tiny random-weight DiffusionGemma checkpoint per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run through the interpreter; it must be chosen before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Plain `pytest` (unlike `python -m pytest`) leaves the repository root off sys.path; tests import `tests.*`.
ROOT = Path(__file__).absolute().parents[1]  # not resolved: .ci/gpu-check runs a linked view of the tree
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny_checkpoint import write_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny FIM-capable checkpoint (canvas 32, vocab 1024), written once per session."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))
