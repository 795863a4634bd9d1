"""Load a local DiffusionGemma checkpoint folder (offline, safetensors only) with clear errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .denoise import SamplerSettings
from .dgemma import DGemma

log = logging.getLogger(__name__)

MODEL_TYPE = "diffusion_gemma"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Any one of these is enough for AutoTokenizer to build a tokenizer offline.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DOWNLOAD_HINT = (
    "Point --model at a local copy of google/diffusiongemma-26B-A4B-it "
    "(config.json, *.safetensors, tokenizer files), e.g. made with "
    "`hf download google/diffusiongemma-26B-A4B-it --local-dir DIR`."
)


class ModelLoadError(Exception):
    """A checkpoint folder could not be loaded; the message says which file and what to do."""


@dataclass
class LoadedModel:
    model: DiffusionGemmaForBlockDiffusion | DGemma  # eval mode, no grad; DGemma: the fast backend
    tokenizer: PreTrainedTokenizerBase
    path: Path
    device: torch.device
    dtype: torch.dtype
    settings: SamplerSettings
    canvas_length: int
    vocab_size: int
    max_positions: int | None = None  # max_position_embeddings: small models are trained no longer

    @property
    def backend(self) -> str:
        return "fast" if isinstance(self.model, DGemma) else "reference"


def resolve_device(device: str | None) -> torch.device:
    """None or "auto": CUDA when available, else CPU. Anything else is parsed by torch ("cpu", "cuda:1")."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"Device {device!r} requested but CUDA is not available here; use --device cpu."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"Device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist."
            )
    return resolved


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{config_path} is missing: {path} is not a model checkpoint folder. {DOWNLOAD_HINT}"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}); re-download it.") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} must hold a JSON object; re-download it.")
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise ModelLoadError(
            f"{config_path} has model_type {model_type!r}, expected {MODEL_TYPE!r}: "
            f"dgemma-lsp only runs DiffusionGemma checkpoints. {DOWNLOAD_HINT}"
        )
    try:  # here, or the tokenizer's loader (which reads it too) is blamed for a bad field
        DiffusionGemmaConfig.from_dict(config)
    except Exception as exc:
        raise ModelLoadError(f"{config_path} is not a valid DiffusionGemma config: {exc}") from exc
    return config


def read_languages(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """config.json's `languages`: the LSP languageIds a model trained on only some languages names."""
    config_path = Path(path).expanduser() / "config.json"
    languages = _read_config(config_path.parent).get("languages")
    if languages is None:
        return None
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise ModelLoadError(f"{config_path}: `languages` must be a list of LSP languageIds.")
    return tuple(languages)


def read_safetensors_header(file: Path) -> tuple[int, dict[str, Any]]:
    """Read only the header: catches truncated or non-safetensors files without loading any tensor.

    Returns the header's length in bytes and the header (tensor name -> dtype, shape, data_offsets).
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise ValueError(f"header claims {header_len} bytes but the file has {size}")
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{file} is not a readable safetensors file ({exc}); re-download it.") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file} has a malformed safetensors header; re-download it.")
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ModelLoadError(f"{file} has a malformed entry for tensor {name!r}; re-download it.")
        data_end = max(data_end, offsets[1])
    if 8 + header_len + data_end > size:
        raise ModelLoadError(
            f"{file} is truncated ({size} bytes, tensors need {8 + header_len + data_end}); "
            "the download was probably interrupted: re-download it."
        )
    return header_len, header


def _check_weights(path: Path) -> list[Path]:
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{path} has only pickle weights ({', '.join(pickles[:3])}); dgemma-lsp loads only "
                "*.safetensors, because pickle files can run arbitrary code. "
                "Download the safetensors version of the checkpoint."
            )
        raise ModelLoadError(f"{path} has no *.safetensors weight files. {DOWNLOAD_HINT}")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
        ) as exc:
            raise ModelLoadError(
                f"{index} is not a valid safetensors index ({exc}); re-download it."
            ) from exc
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelLoadError(
                f"{path} is missing {len(missing)} weight shard(s) listed in {index.name}, "
                f"e.g. {missing[0]}; "
                "the download is incomplete: re-download it."
            )
    for file in weights:
        read_safetensors_header(file)
    return weights


def _check_tokenizer(path: Path) -> None:
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return
    raise ModelLoadError(
        f"{path} has no tokenizer (expected tokenizer.json or tokenizer.model next to config.json). "
        f"{DOWNLOAD_HINT}"
    )


@dataclass
class CheckpointFolder:
    """A checked checkpoint folder: everything but the weights, which each backend loads its own way."""

    path: Path
    config: dict[str, Any]
    weights: list[Path]
    tokenizer: PreTrainedTokenizerBase
    settings: SamplerSettings
    device: torch.device
    dtype: torch.dtype  # bfloat16 on CUDA, float32 on CPU


def open_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> CheckpointFolder:
    """Check a local folder, load its tokenizer and sampler settings; ModelLoadError says what is wrong."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"Model folder {folder} does not exist. {DOWNLOAD_HINT}")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; pass the checkpoint folder that holds it. {DOWNLOAD_HINT}")
    folder = folder.resolve()
    config = _read_config(folder)
    read_languages(folder)  # a malformed list is an error at load, not a model that completes everything
    weights = _check_weights(folder)
    _check_tokenizer(folder)
    try:
        settings = SamplerSettings.from_generation_config(folder)
    except ValueError as exc:
        raise ModelLoadError(f"Bad sampler settings: {exc}. Fix or delete generation_config.json.") from exc

    resolved = resolve_device(device)
    dtype = torch.bfloat16 if resolved.type == "cuda" else torch.float32

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (
        Exception
    ) as exc:  # tokenizers/transformers raise many types; all mean "this folder's tokenizer is bad"
        raise ModelLoadError(f"Could not load the tokenizer from {folder}: {exc}") from exc
    return CheckpointFolder(folder, config, weights, tokenizer, settings, resolved, dtype)


def load_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> LoadedModel:
    """Load model, tokenizer and sampler settings from a local folder. Never touches the network.

    Weights: bfloat16 on CUDA, float32 on CPU. Every failure is raised as ModelLoadError naming the path.
    """
    checked = open_checkpoint(path, device)
    folder, config, tokenizer, settings = checked.path, checked.config, checked.tokenizer, checked.settings
    resolved, dtype = checked.device, checked.dtype

    load_kwargs: dict[str, Any] = {}
    # device_map streams weights straight to the GPU but needs accelerate; without it load on CPU, then move.
    if resolved.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
        load_kwargs["device_map"] = {"": resolved}
    # No tqdm bars: the server's stderr is the editor's log.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, info = DiffusionGemmaForBlockDiffusion.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
            **load_kwargs,
        )
        if "device_map" not in load_kwargs:
            model = model.to(resolved)
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(f"Out of memory loading {folder} onto {resolved}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"Could not load the weights in {folder}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        keys = sorted(str(k) for k in (info or {}).get(kind) or [])
        if not keys:
            continue
        what = f"{len(keys)} {kind.replace('_', ' ')}, e.g. {', '.join(keys[:5])}"
        if kind != "unexpected_keys":  # transformers fills those tensors with random values
            raise ModelLoadError(
                f"The weights in {folder} do not fit its config.json ({what}); re-download them."
            )
        log.warning("%s: %s", folder, what)

    model.eval()
    model.requires_grad_(False)
    text_config = config.get("text_config") or {}
    vocab_size = int(model.config.text_config.vocab_size)
    if len(tokenizer) > vocab_size:
        log.warning("%s: tokenizer has %d tokens but the model only %d", folder, len(tokenizer), vocab_size)
    log.info(
        "loaded %s on %s (%s): %d layers, vocab %d, canvas %d",
        folder,
        resolved,
        dtype,
        text_config.get("num_hidden_layers", -1),
        vocab_size,
        model.config.canvas_length,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=folder,
        device=model.device,
        dtype=dtype,
        settings=settings,
        canvas_length=int(model.config.canvas_length),
        vocab_size=vocab_size,
        max_positions=model.config.text_config.max_position_embeddings,
    )
