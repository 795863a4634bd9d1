from __future__ import annotations

from pathlib import Path

import pytest

from dgemma_lsp import options as options_module
from dgemma_lsp.options import MODEL_ENV, Options, parse_options, resolve_model_path


def test_camel_case_options_map_onto_fields() -> None:
    options, problem = parse_options({"modelPath": "/m", "seed": 0, "maxDenoisingSteps": 12, "unknownKey": 1})
    assert problem is None
    assert (options.model_path, options.seed, options.max_denoising_steps) == ("/m", 0, 12)


@pytest.mark.parametrize(
    "raw, mentions",
    [
        ({"prefixTokens": "many"}, "prefixTokens"),
        ({"lineMiddleTokens": 0}, "lineMiddleTokens"),
        ([1, 2], "object"),
    ],
)
def test_invalid_options_fall_back_to_defaults_and_say_why(raw: object, mentions: str) -> None:
    options, problem = parse_options(raw)
    assert options == Options()
    assert problem is not None and mentions in problem


def test_one_bad_key_does_not_lose_the_others() -> None:
    options, problem = parse_options({"modelPath": "/m", "seed": "x", "suffixTokens": 64})
    assert (options.model_path, options.seed, options.suffix_tokens) == ("/m", None, 64)
    assert problem is not None and "seed" in problem


def test_model_path_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MODEL_ENV, "/env")
    assert resolve_model_path("/cli", Options(model_path="/init")) == "/cli"
    assert resolve_model_path(None, Options(model_path="/init")) == "/init"
    assert resolve_model_path(None, Options()) == "/env"
    monkeypatch.delenv(MODEL_ENV)
    assert resolve_model_path(None, Options()) == str(options_module.BUNDLED_MODEL)  # shipped in the package
    assert (options_module.BUNDLED_MODEL / "model.safetensors").is_file()
    monkeypatch.setattr(options_module, "BUNDLED_MODEL", tmp_path / "removed")
    assert resolve_model_path(None, Options()) is None


def test_completion_options() -> None:
    options, problem = parse_options(
        {"enable": {"*": False, "python": True}, "maxLines": 5, "debounceMs": 0, "candidates": 5}
    )
    assert problem is None
    assert (options.enable, options.max_lines, options.debounce_ms, options.candidates) == (
        {"*": False, "python": True},
        5,
        0,
        5,
    )
    assert Options().enable == {} and Options().candidates == 3 and Options().debounce_ms is None


@pytest.mark.parametrize(
    "raw, mentions",
    [
        ({"candidates": 6}, "candidates"),
        ({"candidates": 0}, "candidates"),
        ({"debounceMs": -1}, "debounceMs"),
        ({"enable": {"python": "yes"}}, "enable"),
        ({"infillingMode": "magic"}, "infillingMode"),
        ({"maxLines": 0}, "maxLines"),
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
    ],
)
def test_invalid_completion_options(raw: dict, mentions: str) -> None:
    options, problem = parse_options(raw, "settings")
    assert options == Options()
    assert problem is not None and mentions in problem and "settings" in problem
