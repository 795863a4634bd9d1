"""Checkpoint loading (dgemma_lsp.model.checkpoint) and sampler settings from generation_config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dgemma_lsp.model.checkpoint import ModelLoadError, load_checkpoint, read_languages, resolve_device
from dgemma_lsp.model.denoise import SamplerSettings
from dgemma_lsp.model.load import load_fast
from dgemma_lsp.options import BUNDLED_MODEL


@pytest.fixture
def copy_of(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint, to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def test_loads_tiny_checkpoint(tiny_checkpoint: Path) -> None:
    loaded = load_checkpoint(tiny_checkpoint, device="cpu")
    assert loaded.path == tiny_checkpoint.resolve()
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.canvas_length == 32
    assert loaded.vocab_size == 1024 == len(loaded.tokenizer)
    assert loaded.settings == SamplerSettings()  # the released defaults, read from generation_config.json
    assert (loaded.tokenizer.pad_token_id, loaded.tokenizer.eos_token_id, loaded.tokenizer.bos_token_id) == (
        0,
        1,
        2,
    )


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device(None)
    assert auto == resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="Unknown device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    assert "hf download" in str(err.value)


def test_file_instead_of_folder(copy_of: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a file"):
        load_checkpoint(copy_of / "config.json")


def test_no_config(copy_of: Path) -> None:
    (copy_of / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        load_checkpoint(copy_of)


def test_bad_config_json(copy_of: Path) -> None:
    (copy_of / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_checkpoint(copy_of)


def test_wrong_model_type(copy_of: Path) -> None:
    config = json.loads((copy_of / "config.json").read_text())
    config["model_type"] = "gemma3"
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="model_type 'gemma3', expected 'diffusion_gemma'"):
        load_checkpoint(copy_of)


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers"])
def test_an_ill_typed_config_field_names_config_json(copy_of: Path, field: str) -> None:
    # It was reported as "Could not load the tokenizer" (the tokenizer's loader reads config.json too).
    config = json.loads((copy_of / "config.json").read_text())
    config["text_config"][field] = "x"
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=rf"config.json is not a valid DiffusionGemma config.*{field}"):
        load_checkpoint(copy_of)


def test_languages_from_config(copy_of: Path) -> None:
    """A model trained on some languages names them in config.json; the server completes no others."""
    assert read_languages(copy_of) is None
    config = json.loads((copy_of / "config.json").read_text())
    (copy_of / "config.json").write_text(json.dumps({**config, "languages": ["python", "cython"]}))
    assert read_languages(copy_of) == ("python", "cython")
    assert read_languages(BUNDLED_MODEL) == ("python",)
    (copy_of / "config.json").write_text(json.dumps({**config, "languages": "python"}))
    with pytest.raises(ModelLoadError, match="`languages` must be a list of LSP languageIds"):
        load_checkpoint(copy_of)


def test_pickle_only_weights_refused(copy_of: Path) -> None:
    (copy_of / "model.safetensors").rename(copy_of / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights") as err:
        load_checkpoint(copy_of)
    assert "pytorch_model.bin" in str(err.value)


def test_no_weights(copy_of: Path) -> None:
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        load_checkpoint(copy_of)


def test_truncated_safetensors(copy_of: Path) -> None:
    weights = copy_of / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load_checkpoint(copy_of)
    assert str(weights) in str(err.value)
    assert "re-download" in str(err.value)


def test_garbage_safetensors(copy_of: Path) -> None:
    (copy_of / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a json header")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_checkpoint(copy_of)


@pytest.mark.parametrize("offsets", [[0, None], [0, "8"]])
def test_malformed_tensor_offsets(copy_of: Path, offsets: list) -> None:
    # A raw TypeError/ValueError traceback before.
    weights = copy_of / "model.safetensors"
    data = weights.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = offsets
    encoded = json.dumps(header).encode()
    weights.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + size :])
    with pytest.raises(ModelLoadError, match="malformed entry"):
        load_checkpoint(copy_of)


def test_weights_that_do_not_fit_the_config_are_refused(copy_of: Path) -> None:
    # transformers fills missing tensors with random values: the model loaded and wrote garbage.
    from safetensors.torch import load_file, save_file

    weights = copy_of / "model.safetensors"
    tensors = load_file(weights)
    renamed = {k.replace("layers.0.", "layers.99."): v for k, v in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="do not fit its config.json.*missing keys"):
        load_checkpoint(copy_of)


def test_missing_shard(copy_of: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (copy_of / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="missing 1 weight shard") as err:
        load_checkpoint(copy_of)
    assert "model-00002-of-00002.safetensors" in str(err.value)


def test_no_tokenizer(copy_of: Path) -> None:
    (copy_of / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_checkpoint(copy_of)


def test_corrupt_tokenizer(copy_of: Path) -> None:
    (copy_of / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="Could not load the tokenizer"):
        load_checkpoint(copy_of)


def test_bad_generation_config(copy_of: Path) -> None:
    (copy_of / "generation_config.json").write_text("[1, 2")
    with pytest.raises(ModelLoadError, match="generation_config.json"):
        load_checkpoint(copy_of)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"max_denoising_steps": [48]}, "max_denoising_steps"),
        ({"max_denoising_steps": 2.9}, "max_denoising_steps"),
        ({"pad_token_id": [0]}, "pad_token_id"),
        ({"sampler_config": {"entropy_bound": [1]}}, "entropy_bound"),
        ({"eos_token_id": ["1"]}, "eos_token_id"),
    ],
)
def test_ill_typed_generation_config_values_are_named(copy_of: Path, values: dict, field: str) -> None:
    # A TypeError traceback before (only ValueError was caught), and 2.9 steps silently became 2.
    path = copy_of / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | values))
    with pytest.raises(ModelLoadError, match=f"generation_config.json: `{field}` must be"):
        load_checkpoint(copy_of)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_generation_config_refused_by_transformers_is_refused_by_both(copy_of: Path, backend: str) -> None:
    # An integer entropy bound loaded on the fast backend, and on the reference one failed as
    # "Could not load the weights": transformers' generation config refuses it.
    path = copy_of / "generation_config.json"
    values = json.loads(path.read_text())
    values["sampler_config"]["entropy_bound"] = 1
    path.write_text(json.dumps(values))
    load = load_checkpoint if backend == "reference" else load_fast
    with pytest.raises(ModelLoadError, match=r"Bad sampler settings: .*json: `entropy_bound` must be a"):
        load(copy_of)


def test_settings_from_generation_config(tmp_path: Path) -> None:
    assert SamplerSettings.from_generation_config(tmp_path) == SamplerSettings()  # no files: defaults
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "max_denoising_steps": 12,
                "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.3},
                "t_min": 0.2,
                "t_max": 0.9,
                "stability_threshold": 2,
                "confidence_threshold": 0.01,
                "eos_token_id": [1, 106, 50],
                "pad_token_id": 0,
            }
        )
    )
    (tmp_path / "config.json").write_text(json.dumps({"fim_order": "spm"}))
    assert SamplerSettings.from_generation_config(tmp_path) == SamplerSettings(
        max_denoising_steps=12,
        t_min=0.2,
        t_max=0.9,
        entropy_bound=0.3,
        stability_threshold=2,
        confidence_threshold=0.01,
        eos_token_ids=(1, 106, 50),
        pad_token_id=0,
        fim_order="spm",
    )


def test_settings_eos_int_and_config_fallback(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": 9, "pad_token_id": 3}}))
    settings = SamplerSettings.from_generation_config(tmp_path)
    assert settings.eos_token_ids == (7,)
    assert settings.pad_token_id == 3  # not in generation_config.json: taken from the text config


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SamplerSettings(max_denoising_steps=0)
    with pytest.raises(ValueError):
        SamplerSettings(t_min=0.8, t_max=0.4)
    with pytest.raises(ValueError):
        SamplerSettings(entropy_bound=0.0)
    with pytest.raises(ValueError, match="fim_order"):
        SamplerSettings(fim_order="mps")  # type: ignore[arg-type]
