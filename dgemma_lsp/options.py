"""Server settings: initializationOptions and didChangeConfiguration (camelCase JSON) onto one struct.

Invalid options never stop the server: `parse_options` falls back to the defaults and returns
the problem so the server can tell the user (window/showMessage + log).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

import dgemma_lsp.model

MODEL_ENV = "DGEMMA_MODEL"
# The demonstration model trained by the project (model/train.py), shipped inside the package.
BUNDLED_MODEL = Path(dgemma_lsp.model.__path__[0]) / "bundled"
MAX_CANDIDATES = 5
OPEN_FILES_TOKENS = 512
# The bundled model (256 positions) completed worse with snippets: on the single-line tasks its pass@1
# fell from 2.4 to 0.8 % (seed 0) with four snippets of the other tasks' files in its prompts.
SMALL_MODEL_POSITIONS = 1024


class Options(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=False):
    """Every key is optional; see the README's configuration reference."""

    model_path: str | None = None
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    seed: int | None = None
    max_denoising_steps: int | None = None  # None: the checkpoint's generation_config.json
    prefix_tokens: int = 1536
    suffix_tokens: int = 512
    line_middle_tokens: int = 48
    block_middle_tokens: int = 256
    infilling_mode: Literal["auto", "fim", "chat", "plain"] = "auto"  # the prompt form
    backend: Literal["fast", "reference"] = "fast"  # our compact denoiser, or transformers' model
    canvas_mode: Literal["plain", "clamped", "lengths"] = "plain"  # the suffix in the canvas too (fast only)
    # fast backend; auto: Triton on CUDA, torch on CPU; inductor: the torch path compiled (CPU)
    kernels: Literal["auto", "triton", "torch", "inductor"] = "auto"
    enable: dict[str, bool] = msgspec.field(default_factory=dict)  # languageId (or "*") -> complete or not
    max_lines: int = 20  # longest block suggestion, in lines
    debounce_ms: int | None = None  # None: adaptive, from the typing rate
    candidates: int = 3  # items for an invoked request
    speculate: bool = True  # precompute what follows an accepted suggestion while idle
    syntax_check: bool = True  # drop a suggestion that adds tree-sitter errors to the document
    # Snippets of the other open documents in the prompt; 0: none; None: OPEN_FILES_TOKENS for a model of
    # more than SMALL_MODEL_POSITIONS positions, none for a smaller one.
    open_files_tokens: int | None = None

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.name in _POSITIVE and value is not None and value < 1:
                raise msgspec.ValidationError(f"`{field.encode_name}` must be >= 1, got {value}")
        if self.debounce_ms is not None and self.debounce_ms < 0:
            raise msgspec.ValidationError(f"`debounceMs` must be >= 0, got {self.debounce_ms}")
        if self.open_files_tokens is not None and self.open_files_tokens < 0:
            raise msgspec.ValidationError(f"`openFilesTokens` must be >= 0, got {self.open_files_tokens}")
        if self.candidates > MAX_CANDIDATES:
            raise msgspec.ValidationError(f"`candidates` must be <= {MAX_CANDIDATES}, got {self.candidates}")
        if not _DEVICE.fullmatch(self.device):
            raise msgspec.ValidationError(f"`device` must be auto, cpu, cuda or cuda:N, got {self.device!r}")


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_POSITIVE = {
    "max_denoising_steps",
    "prefix_tokens",
    "suffix_tokens",
    "line_middle_tokens",
    "block_middle_tokens",
    "max_lines",
    "candidates",
}


def parse_options(raw: Any, source: str = "initializationOptions") -> tuple[Options, str | None]:
    """Options from a settings object. Invalid keys are dropped (the rest still apply) and reported."""
    if raw is None:
        return Options(), None
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        return Options(), f"{source} must be an object, got {kind}; using the defaults."
    valid, problems = {}, []
    for key, value in raw.items():
        try:
            msgspec.convert({key: value}, Options)
        except (msgspec.ValidationError, TypeError) as exc:
            problems.append(str(exc))
        else:
            valid[key] = value
    problem = f"Ignored invalid {source}: {'; '.join(problems)}." if problems else None
    return msgspec.convert(valid, Options), problem


def resolve_model_path(cli_model: str | None, options: Options) -> str | None:
    """Where the model comes from: --model, then initializationOptions.modelPath, then $DGEMMA_MODEL, then
    the small model bundled with the package (None only if that was removed)."""
    bundled = BUNDLED_MODEL if (BUNDLED_MODEL / "config.json").is_file() else None
    return cli_model or options.model_path or os.environ.get(MODEL_ENV) or (bundled and str(bundled))
