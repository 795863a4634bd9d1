"""The CLI contract later checks rely on: `complete --json`, `doctor`, `--version`, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dgemma_lsp import __version__, options
from dgemma_lsp.cli import main

SOURCE = 'def greet(name):\n    message = "Hello, " + \n    print(message)\n'


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "greet.py"
    path.write_text(SOURCE)
    return path


def test_version_runs_as_a_console_script() -> None:
    out = subprocess.run(["dgemma-lsp", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"dgemma-lsp {__version__}"


def test_complete_json_has_the_contract_fields(tiny_checkpoint: Path, source: Path, capsys) -> None:
    argv = ["complete", str(source), "--line", "1", "--character", "25", "--model", str(tiny_checkpoint)]
    assert main([*argv, "--seed", "3", "--max-denoising-steps", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"text", "range", "steps", "prefill_ms", "denoise_ms", "total_ms"} <= result.keys()
    assert result["range"] == {"start": {"line": 1, "character": 25}, "end": {"line": 1, "character": 25}}
    assert isinstance(result["text"], str) and "\n" not in result["text"]
    assert 1 <= result["steps"] <= 3 * 2  # at most 3 passes per canvas, two canvases for a 48-token line
    assert result["total_ms"] >= result["denoise_ms"] > 0
    # Same seed, same middle; the plain form prints just the text.
    assert main([*argv, "--seed", "3", "--max-denoising-steps", "3"]) == 0
    assert capsys.readouterr().out == result["text"] + "\n"


def test_complete_says_why_there_is_no_suggestion(tiny_checkpoint: Path, source: Path, capsys) -> None:
    """A middle the syntax check drops: the plain form prints an empty line and says why on stderr, --json
    gives the model's middle and `broke_syntax`, and --no-syntax-check shows it."""
    argv = ["complete", str(source), "--line", "1", "--character", "25", "--model", str(tiny_checkpoint)]
    argv += ["--max-denoising-steps", "3"]
    for seed in map(str, range(16)):  # random weights: most middles break the code
        assert main([*argv, "--seed", seed, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        if result["broke_syntax"]:
            break
    else:
        pytest.fail("no seed broke the code")
    assert result["text"] == "" and result["raw"].strip()
    assert main([*argv, "--seed", seed]) == 0
    out, err = capsys.readouterr()
    assert out == "\n" and "would break the code" in err
    assert main([*argv, "--seed", seed, "--no-syntax-check"]) == 0
    assert capsys.readouterr().out.strip()


def test_complete_takes_the_servers_canvas_modes(tiny_checkpoint: Path, source: Path, capsys) -> None:
    argv = ["complete", str(source), "--line", "1", "--character", "25", "--model", str(tiny_checkpoint)]
    for backend, mode, used in [("fast", "clamped", "clamped"), ("reference", "clamped", "plain")]:
        assert main([*argv, "--backend", backend, "--canvas-mode", mode, "--seed", "1", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["canvas_mode"] == used and result["steps"] >= 1


def test_complete_defaults_to_the_bundled_model(source: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    assert main(["complete", str(source), "--line", "1", "--character", "11", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(options.BUNDLED_MODEL) and result["steps"] >= 1
    # A package whose bundled model was removed: say how to get one.
    monkeypatch.setattr(options, "BUNDLED_MODEL", tmp_path / "removed")
    assert main(["complete", str(source), "--line", "0", "--character", "0"]) == 2
    assert "--model" in capsys.readouterr().err


def test_complete_rejects_a_negative_position(source: Path, capsys) -> None:
    # The server answers a negative line with InvalidParams; it used to be read as line 0.
    with pytest.raises(SystemExit) as exit_:
        main(["complete", str(source), "--line", "-3", "--character", "0"])
    assert exit_.value.code == 2 and "--line: must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "tasks.jsonl", "--every", "0"],
        ["eval", "tasks.jsonl", "--limit", "-1"],
        ["bench", "--prompt-tokens", "0"],
    ],
)
def test_counts_below_one_are_usage_errors(argv: list[str], capsys) -> None:
    # --every 0 raised ValueError from a slice, --limit -1 dropped the last task, 0 prompt tokens crashed.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_complete_rejects_binary_files(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    blob = tmp_path / "blob.py"
    blob.write_bytes(b"\x00\x01\x02binary\n")
    assert (
        main(["complete", str(blob), "--line", "0", "--character", "1", "--model", str(tiny_checkpoint)]) == 2
    )
    assert "binary" in capsys.readouterr().err.lower()


def test_complete_reports_a_corrupt_checkpoint(
    tiny_checkpoint: Path, source: Path, tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["complete", str(source), "--line", "0", "--character", "0", "--model", str(broken)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_doctor_checks_everything(tiny_checkpoint: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    assert main(["doctor", "--model", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "[ok] model" in out and "[ok] tree-sitter" in out and "[ok] torch" in out
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"[ok] model: {options.BUNDLED_MODEL}" in out and "trained on python only" in out
    monkeypatch.setattr(options, "BUNDLED_MODEL", tmp_path / "removed")
    assert main(["doctor"]) == 1
    assert "[FAIL] model" in capsys.readouterr().out


def test_server_prints_nothing_but_protocol_on_stdout() -> None:
    """An `exit` with no session: the server must leave stdout empty (logs go to stderr)."""
    body = json.dumps({"jsonrpc": "2.0", "method": "exit"}).encode()
    message = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    out = subprocess.run(
        [sys.executable, "-m", "dgemma_lsp", "--stdio", "-vv"], input=message, capture_output=True, timeout=60
    )
    assert out.stdout == b""
    assert out.returncode == 1  # exit without shutdown is an error exit, as the LSP spec says


def test_a_triton_that_does_not_import_falls_back_to_the_torch_kernels(
    tiny_checkpoint: Path, source: Path, tmp_path: Path
) -> None:
    # Installed (found) but broken, as with a missing libtriton: the completion crashed on its first step.
    broken = tmp_path / "site" / "triton"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libtriton.so: cannot open shared object file')\n")
    root = Path(__file__).resolve().parents[1]
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": f"{broken.parent}:{root}",
        "TRITON_INTERPRET": "1",
    }
    argv = ["complete", str(source), "--line", "1", "--character", "25", "--model", str(tiny_checkpoint)]
    out = subprocess.run(
        [sys.executable, "-m", "dgemma_lsp", *argv, "--kernels", "triton", "--max-denoising-steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Triton does not import (ImportError: libtriton.so" in out.stderr
    assert "using the torch kernels" in out.stderr
