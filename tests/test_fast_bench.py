"""`dgemma-lsp bench` and the backend switch: CLI, options and the engine's load path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dgemma_lsp import options
from dgemma_lsp.cli import main
from dgemma_lsp.engine import complete, load_model
from dgemma_lsp.model.dgemma import DGemma
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.model.prompt import clamped_suffix_tokens
from dgemma_lsp.options import Options, parse_options

KEYS = {"prefill_ms", "step_ms", "commit_ms", "completion_ms", "steps", "tokens_per_forward"}


def test_bench_compares_both_backends_on_a_checkpoint(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--model",
        str(tiny_checkpoint),
        "--prompt-tokens",
        "40",
        "--steps",
        "3",
        "--repeats",
        "1",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"reference", "fast"}
    for backend, result in report["results"].items():
        assert KEYS <= result.keys() and result["steps"] == 3, backend
        assert all(result[key] > 0 for key in KEYS), backend
    assert report["results"]["fast"]["reprefill_ms"] > 0  # one edited token re-encoded, not the prompt
    assert report["speedup"]["reference/fast"]["step_ms"] == pytest.approx(
        report["results"]["reference"]["step_ms"] / report["results"]["fast"]["step_ms"]
    )
    assert (report["canvas_length"], report["prompt_tokens"], report["device_type"]) == (32, 40, "cpu")
    printed = capsys.readouterr().out
    assert "step_ms" in printed and "reference/fast" in printed


def test_bench_with_random_weights_needs_no_checkpoint(capsys) -> None:
    argv = ["bench", "--random-weights", "--config", "tiny", "--layers", "2", "--backend", "fast"]
    assert main([*argv, "--prompt-tokens", "20", "--steps", "2", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "random:tiny (2 layers)" in printed and "reference" not in printed


def test_bench_without_a_model_says_what_to_pass(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    monkeypatch.setattr(options, "BUNDLED_MODEL", tmp_path / "removed")
    assert main(["bench"]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_backend_option() -> None:
    assert Options().backend == "fast" and Options().canvas_mode == "plain"
    options, problem = parse_options({"backend": "reference", "canvasMode": "lengths"})
    assert problem is None and (options.backend, options.canvas_mode) == ("reference", "lengths")
    options, problem = parse_options({"backend": "vllm"})
    assert options.backend == "fast" and problem is not None and "backend" in problem


def test_load_model_picks_the_backend(tiny_checkpoint: Path) -> None:
    fast = load_model(str(tiny_checkpoint), "cpu", max_denoising_steps=3)
    reference = load_model(str(tiny_checkpoint), "cpu", max_denoising_steps=3, backend="reference")
    assert isinstance(fast.model, DGemma) and fast.backend == "fast"
    assert reference.backend == "reference" and reference.settings == fast.settings
    # Same seed, same middle from either backend.
    from dgemma_lsp.context import SyntaxDocument

    ctx = SyntaxDocument("def add(a, b):\n    return a + \n", "python").context_at(1, 15)
    assert complete(Infiller(fast), ctx, seed=4).raw == complete(Infiller(reference), ctx, seed=4).raw


@pytest.mark.parametrize("mode", ["clamped", "lengths"])
def test_canvas_modes_fill_through_the_infiller(tiny_checkpoint: Path, mode: str) -> None:
    loaded = load_model(str(tiny_checkpoint), "cpu", max_denoising_steps=3)
    infiller = Infiller(loaded, canvas_mode=mode)
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    fill = infiller.fill(prefix, suffix, max_new_tokens=48, seed=2, language="python", key="a.py")
    suffix_tokens = len(loaded.tokenizer.encode(suffix, add_special_tokens=False))
    clamped = min(clamped_suffix_tokens(loaded.canvas_length), suffix_tokens)
    assert fill.steps == 3 and fill.tokens <= 32 - clamped  # the middle sits in front of the clamped suffix
    again = infiller.fill(prefix, suffix, max_new_tokens=48, seed=2, language="python", key="a.py")
    assert again.text == fill.text and again.reused_tokens == fill.prompt_tokens


def test_canvas_modes_need_the_fast_backend(tiny_checkpoint: Path) -> None:
    reference = load_model(str(tiny_checkpoint), "cpu", backend="reference")
    assert Infiller(reference, canvas_mode="lengths").canvas_mode == "plain"  # warned, not failed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(tiny_checkpoint), "--device", "cuda", "--steps", "4", "--repeats", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["dtype"] == "torch.bfloat16"
