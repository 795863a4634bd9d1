"""Server settings: initializationOptions (camelCase JSON) onto one typed struct.

Invalid options never stop the server: `parse_options` falls back to the defaults and returns
the problem so the server can tell the user (window/showMessage + log).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

MODEL_ENV = "DGEMMA_MODEL"


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

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.name in _POSITIVE and value is not None and value < 1:
                raise msgspec.ValidationError(f"`{field.encode_name}` must be >= 1, got {value}")


_POSITIVE = {
    "max_denoising_steps",
    "prefix_tokens",
    "suffix_tokens",
    "line_middle_tokens",
    "block_middle_tokens",
}


def parse_options(raw: Any) -> tuple[Options, str | None]:
    """Options from initializationOptions. Invalid keys are dropped (the rest still apply) and reported."""
    if raw is None:
        return Options(), None
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        return Options(), f"initializationOptions must be an object, got {kind}; using the defaults."
    valid, problems = {}, []
    for key, value in raw.items():
        try:
            msgspec.convert({key: value}, Options)
        except (msgspec.ValidationError, TypeError) as exc:
            problems.append(str(exc))
        else:
            valid[key] = value
    problem = f"Ignored invalid initializationOptions: {'; '.join(problems)}." if problems else None
    return msgspec.convert(valid, Options), problem


def resolve_model_path(cli_model: str | None, options: Options) -> str | None:
    """Where the model comes from: --model, then initializationOptions.modelPath, then $DGEMMA_MODEL."""
    return cli_model or options.model_path or os.environ.get(MODEL_ENV) or None
