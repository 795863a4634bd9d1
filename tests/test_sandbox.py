"""Hostile programs must all be contained by the eval sandbox."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dgemma_lsp.sandbox import Limits, isolation, run_python

QUICK = Limits(wall_s=5, cpu_s=3)


def test_a_good_program_passes_and_a_failing_assert_fails() -> None:
    assert run_python("assert 1 + 1 == 2\nprint('ok')").output == "ok\n"
    bad = run_python("assert 1 + 1 == 3")
    assert bad.status == "failed" and "AssertionError" in bad.output


@pytest.mark.parametrize(
    "ending",
    ["exit()", "quit()", "import sys; sys.exit(0)", "raise SystemExit", "import os; os._exit(0)"],
)
def test_a_program_that_exits_before_its_end_fails(ending: str) -> None:
    # As in HumanEval's harness: a middle of `exit()` ahead of the tests passed (exit status 0).
    outcome = run_python(f"print('start', flush=True)\n{ending}\nassert False\n")
    assert outcome.status == "failed" and outcome.output.startswith("start\n"), outcome


def test_the_program_runs_as_in_the_harness_not_as_main() -> None:
    # HumanEval's harness exec()s it in a fresh namespace: `if __name__ == "__main__":` blocks do not run.
    outcome = run_python("if __name__ == '__main__':\n    raise SystemExit(1)\nprint(__name__)\n")
    assert outcome.status == "passed" and outcome.output == "builtins\n"


def test_the_end_of_run_token_is_not_in_the_output() -> None:
    outcome = run_python("import sys\nsys.stdout.write('no newline')")
    assert outcome.status == "passed" and outcome.output == "no newline"


def test_infinite_loop_is_stopped() -> None:
    outcome = run_python("while True:\n    pass\n", QUICK)
    assert outcome.status in ("failed", "timeout")
    assert outcome.seconds < QUICK.wall_s + 3


def test_running_out_of_cpu_time_is_a_timeout() -> None:
    # It read as a failure ("unshare: sigprocmask unblock failed"), not as the timeout it is.
    outcome = run_python("while True:\n    pass\n", Limits(wall_s=30, cpu_s=1))
    assert outcome.status == "timeout" and outcome.seconds < 10, outcome


def test_fork_bomb_is_contained() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    outcome = run_python(bomb, QUICK)
    assert outcome.status != "passed"
    assert outcome.seconds < QUICK.wall_s + 3


def test_huge_output_is_capped() -> None:
    outcome = run_python("while True:\n    print('x' * 1000)\n", QUICK)
    assert outcome.status != "passed"
    assert len(outcome.output) <= QUICK.output_bytes


def test_memory_bomb_fails_cleanly() -> None:
    outcome = run_python("x = bytearray(8 * 1024 ** 3)\n", QUICK)
    assert outcome.status == "failed" and "MemoryError" in outcome.output


@pytest.mark.skipif(isolation() == "limits-only", reason="this kernel allows no namespaces here")
def test_no_network() -> None:
    program = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\n"
    outcome = run_python(program, QUICK)
    assert outcome.status == "failed" and "unreachable" in outcome.output.lower()


@pytest.mark.skipif(isolation() == "limits-only", reason="this kernel allows no namespaces here")
def test_writes_outside_the_scratch_directory_never_land(tmp_path: Path) -> None:
    marker = f"/tmp/dgemma-sandbox-{uuid.uuid4().hex}"
    lock = f"/run/lock/dgemma-sandbox-{uuid.uuid4().hex}"  # world-writable too: it survived the run
    target = tmp_path / "pwned"
    program = (
        f"open({marker!r}, 'w').write('x')\n"  # /tmp is a private tmpfs: allowed, but thrown away
        f"import os\nif os.path.isdir('/run/lock'):\n    open({lock!r}, 'w').write('x')\n"
        f"try:\n    open({str(target)!r}, 'w').write('x')\n"
        "except OSError as e:\n    print('blocked', e.errno)\n"
    )
    outcome = run_python(program, QUICK)
    assert not os.path.exists(marker) and not os.path.exists(lock)
    assert not target.exists()
    assert "blocked" in outcome.output or outcome.status == "failed"
