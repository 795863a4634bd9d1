"""The latency replay drives the real server through a typing script for two configurations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dgemma_lsp.cli import main
from dgemma_lsp.replay import script

pytestmark = pytest.mark.e2e
SOURCE = Path(__file__).parents[1] / "data" / "context" / "inventory.py"


def test_script_types_back_what_it_erased() -> None:
    import random

    text = SOURCE.read_text()
    lines = text.split("\n")
    events = script(text, sites=3, rng=random.Random(1))
    for event in events:  # apply the events to the text: the file must come back unchanged
        line = lines[event.line]
        start = len(line.encode("utf-16-le")[: 2 * event.start].decode("utf-16-le"))
        end = len(line.encode("utf-16-le")[: 2 * event.end].decode("utf-16-le"))
        lines[event.line] = line[:start] + event.text + line[end:]
    assert "\n".join(lines) == text
    assert sum(e.invoke for e in events) == 3 and sum(e.jump for e in events) == 3


def test_replay_reports_both_configurations(tiny_checkpoint: Path, capsys) -> None:
    argv = ["replay", str(SOURCE), "--model", str(tiny_checkpoint), "--sites", "1", "--json"]
    configs = ["--config", 'a={"maxDenoisingSteps": 2}', "--config", 'b={"maxDenoisingSteps": 4}']
    assert main([*argv, *configs]) == 0
    report = json.loads(capsys.readouterr().out)
    a, b = report["configs"]
    assert (a["name"], b["name"]) == ("a", "b")
    for run in (a, b):
        assert run["requests"] >= 1 and run["errors"] == 0
        assert run["ready_s"] >= 0  # typing began once the model was loaded
        assert run["options"]["maxDenoisingSteps"] in (2, 4)
        assert run["invoked_p50_ms"] is None or run["invoked_p50_ms"] > 0
        assert run["server_stats"]["requests"] >= run["requests"]  # the server's own count, keys intact
        assert "stepsPerCompletion" in run["server_stats"] and "cache" in run["server_stats"]
    assert set(report["latency_ratio"]) == {"p50", "p95"}


def test_each_configuration_runs_its_own_model(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    other = shutil.copytree(tiny_checkpoint, tmp_path / "other")
    argv = ["replay", str(SOURCE), "--sites", "1", "--json"]
    configs = ["--config", f"a={json.dumps({'modelPath': str(tiny_checkpoint)})}"]
    configs += ["--config", f"b={json.dumps({'modelPath': str(other)})}"]
    assert main([*argv, *configs]) == 0
    a, b = json.loads(capsys.readouterr().out)["configs"]
    assert a["server_stats"]["status"]["model"] == str(tiny_checkpoint.resolve())
    assert b["server_stats"]["status"]["model"] == str(other.resolve())


def test_server_flags_reach_the_servers(tiny_checkpoint: Path, capsys) -> None:
    argv = ["replay", str(SOURCE), "--model", str(tiny_checkpoint), "--sites", "1", "--json"]
    configs = ["--config", 'a={"device": "cpu"}', "--config", "b={}"]
    assert main([*argv, *configs, "--device", "nonsense"]) == 0
    for run in json.loads(capsys.readouterr().out)["configs"]:  # the command line won over `device`
        status = run["server_stats"]["status"]
        assert status["state"] == "error" and "nonsense" in status["message"]
