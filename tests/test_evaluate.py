"""`dgemma-lsp eval` on small task files written for the purpose (the repository ships no benchmark data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from dgemma_lsp.cli import main
from dgemma_lsp.evaluate import (
    Task,
    after_enter,
    edit_similarity,
    exact_match,
    fold_replaced,
    program,
    read_tasks,
    task_context,
)
from dgemma_lsp.postprocess import after_indentation, finish

DATA = Path(__file__).parent / "data" / "eval"
HUMANEVAL = DATA / "humaneval_infilling_demo.jsonl"
FIM = DATA / "santacoder_fim_demo.jsonl"
SINGLE_LINE = DATA / "single_line_tasks.jsonl"


def completions_file(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"task_id": k, "completion": v}) + "\n" for k, v in rows.items()))
    return path


def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path: Path, capsys) -> None:
    tasks = read_tasks(HUMANEVAL)
    right = completions_file(tmp_path / "right.jsonl", {t.task_id: t.canonical_solution for t in tasks})
    assert main(["eval", str(HUMANEVAL), "--from-completions", str(right), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 4 and summary["pass@1"] == 1.0 and summary["exact_match"] == 1.0
    assert summary["parses"] == 1.0

    wrong = {t.task_id: "" for t in tasks} | {"Demo/3": "s == s"}  # empty middles and a wrong one
    wrong_file = completions_file(tmp_path / "wrong.jsonl", wrong)
    out = tmp_path / "results.jsonl"
    assert (
        main(["eval", str(HUMANEVAL), "--from-completions", str(wrong_file), "--json", "--out", str(out)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["pass@1"] < 1.0
    results = {r["task_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert results["Demo/3"]["passed"] is False and "AssertionError" in results["Demo/3"]["sandbox"]
    assert summary["parses"] < 1.0  # an empty function body does not parse
    assert set(summary["by_length"]) == {"single-line", "2-4 lines"}


def test_single_line_tasks_are_current_and_each_line_is_needed(tmp_path: Path, capsys) -> None:
    """The project's own single-line tasks: the file is what its script writes, every cut line passes with
    its canonical line in place, and almost none without it (the floor an empty middle sets)."""
    import runpy

    rows = runpy.run_path(str(DATA / "single_line_tasks.py"))["tasks"]()
    assert [json.loads(line) for line in SINGLE_LINE.read_text().splitlines()] == rows
    assert len(rows) > 100 and all(r["canonical_solution"].count("\n") == 1 for r in rows)
    tasks = read_tasks(SINGLE_LINE)
    right = completions_file(tmp_path / "right.jsonl", {t.task_id: t.canonical_solution for t in tasks})
    assert main(["eval", str(SINGLE_LINE), "--from-completions", str(right), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pass@1"] == 1.0
    empty = completions_file(tmp_path / "empty.jsonl", {t.task_id: "" for t in tasks})
    assert main(["eval", str(SINGLE_LINE), "--from-completions", str(empty), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pass@1"] < 0.02


def test_after_enter_puts_the_cursor_on_a_line_of_its_own_after_the_indentation(
    tmp_path: Path, capsys
) -> None:
    tasks = read_tasks(SINGLE_LINE)
    for task, moved in zip(tasks, map(after_enter, tasks), strict=True):
        assert moved is not None and moved.suffix == "\n" + task.suffix
        indent = moved.prompt.removeprefix(task.prompt)
        assert indent.strip(" ") == "" and indent + moved.canonical_solution + "\n" == task.canonical_solution
        assert program(moved, moved.canonical_solution) == program(task, task.canonical_solution)
    assert [after_enter(task) for task in read_tasks(FIM)] == [None, None]  # middles inside a line
    right = completions_file(
        tmp_path / "right.jsonl", {t.task_id: t.canonical_solution.strip() for t in tasks}
    )
    assert main(["eval", str(SINGLE_LINE), "--after-enter", "--from-completions", str(right), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == len(tasks) and summary["pass@1"] == 1.0


def test_gzip_task_files_and_limit_every(tmp_path: Path, capsys) -> None:
    packed = tmp_path / "tasks.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(HUMANEVAL.read_text())
    tasks = read_tasks(packed)
    right = completions_file(tmp_path / "right.jsonl", {t.task_id: t.canonical_solution for t in tasks})
    assert (
        main(
            ["eval", str(packed), "--from-completions", str(right), "--every", "2", "--limit", "1", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tasks"] == 1


def test_generated_middles_go_through_the_server_path(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    argv = ["eval", str(HUMANEVAL), str(FIM), "--model", str(tiny_checkpoint), "--max-denoising-steps", "2"]
    assert main([*argv, "--limit", "3", "--json", "--out", str(out), "--canvas-mode", "clamped"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 3
    assert summary["latency_ms"]["p50"] > 0 and summary["steps_per_completion"] >= 1
    assert summary["pass@1"] == 0.0  # random weights write gibberish; the sandbox must not pass it
    assert all(r["steps"] >= 1 for r in map(json.loads, out.read_text().splitlines()))
    generated = summary["generated"]  # what produced these numbers
    assert generated["model"] == str(tiny_checkpoint) and generated["backend"] == "fast"
    assert generated["canvas_mode"] == "clamped" and generated["sampler"]["max_denoising_steps"] == 2
    # The same middles scored again from the written file give the same numbers.
    again = completions_file(tmp_path / "again.jsonl", {
        r["task_id"]: r["completion"] for r in map(json.loads, out.read_text().splitlines())
    })  # fmt: skip
    assert (
        main(["eval", str(HUMANEVAL), str(FIM), "--limit", "3", "--from-completions", str(again), "--json"])
        == 0
    )
    rescored = json.loads(capsys.readouterr().out)
    assert (rescored["exact_match"], rescored["pass@1"]) == (summary["exact_match"], summary["pass@1"])


def test_the_backend_asked_for_generates(tiny_checkpoint: Path, capsys) -> None:
    argv = ["eval", str(FIM), "--model", str(tiny_checkpoint), "--max-denoising-steps", "2", "--limit", "1"]
    assert main([*argv, "--canvas-mode", "clamped", "--backend", "reference"]) == 0
    out, err = capsys.readouterr()
    # The clamped canvas needs the fast backend: the reference backend says so and fills plain canvases.
    assert "needs the fast backend" in err
    assert "reference backend, plain canvas, seed 0" in out.splitlines()[-1]


def test_exact_match_and_edit_similarity() -> None:
    assert exact_match("  a + b;\n", "a + b;")
    assert not exact_match("if x:\ny = 1", "if x:\n    y = 1")  # inner indentation counts, as in bigcode's
    assert not exact_match("a - b;", "a + b;")
    assert edit_similarity("abc", "abc") == 1.0 and 0 < edit_similarity("abd", "abc") < 1


def test_bad_task_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    assert main(["eval", str(bad), "--from-completions", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_santacoder_language_codes_name_their_grammar(tmp_path: Path) -> None:
    # bigcode/santacoder-fim-task writes "py" and "js": they were read as plain text (no tree-sitter).
    rows = [
        {"prompt": "x = ", "suffix": "\n", "canonical_solution": "1", "language": code}
        for code in ("py", "js")
    ]
    path = tmp_path / "santacoder.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [task.language for task in read_tasks(path)] == ["python", "javascript"]


def test_sample_files_may_be_gzipped_and_bad_lines_are_named(tmp_path: Path, capsys) -> None:
    right = {t.task_id: t.canonical_solution for t in read_tasks(HUMANEVAL)}
    samples = tmp_path / "samples.jsonl.gz"
    with gzip.open(samples, "wt") as f:
        f.write("".join(json.dumps({"task_id": k, "completion": v}) + "\n" for k, v in right.items()))
    assert main(["eval", str(HUMANEVAL), "--from-completions", str(samples), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pass@1"] == 1.0
    for bad in ('{"task_id": "Demo/0"}', "[1, 2]"):  # no completion; not an object
        (tmp_path / "bad.jsonl").write_text(bad + "\n")
        assert main(["eval", str(HUMANEVAL), "--from-completions", str(tmp_path / "bad.jsonl")]) == 2
        assert "bad.jsonl:1: not a sample line" in capsys.readouterr().err


def test_scoring_completions_refuses_a_file_missing_some_tasks(tmp_path: Path, capsys) -> None:
    # pass@1 over the tasks that happen to have a completion: one right answer out of four scored 100 %.
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        json.dumps({"task_id": "Demo/0", "completion": "    if value > high:\n        return high\n"})
    )
    assert main(["eval", str(HUMANEVAL), "--from-completions", str(samples)]) == 2
    assert "have no completion" in capsys.readouterr().err


def test_a_model_that_does_not_load_is_a_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(HUMANEVAL), "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_item_over_auto_closed_brackets_is_scored_as_the_file_it_makes(tmp_path: Path, capsys) -> None:
    """An item that goes in over the auto-closed `))` after the cursor is scored on the file accepting it
    makes (as a plain insertion it would double them), as a fixed-suffix middle when one makes that file."""
    task = {
        "task_id": "Closers/0",
        "prompt": "def total(a, b):\n    return sum((",
        "suffix": "))\n",
        "canonical_solution": "a, b",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "total",
    }
    assert fold_replaced("a, b))", 2, task["suffix"]) == ("a, b", 0)
    assert fold_replaced("a, b)),", 2, task["suffix"]) == ("a, b)),", 2)  # no middle makes that file
    assert fold_replaced("a, b", 0, task["suffix"]) == ("a, b", 0)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(task) + "\n")
    results = tmp_path / "results.jsonl"
    rows = [{"task_id": "Closers/0", "completion": "a, b))", "replaced": 2}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(tasks), "--from-completions", str(results), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["pass@1"], summary["parses"]) == (1.0, 1.0)
    plain = completions_file(tmp_path / "plain.jsonl", {"Closers/0": "a, b))"})  # the same text inserted
    assert main(["eval", str(tasks), "--from-completions", str(plain), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["pass@1"], summary["parses"]) == (0.0, 0.0)


FUNCTION = """def running_totals(numbers):
    totals, total = [], 0
    for n in numbers:
        total += n
        totals.append(total)
    return totals
"""


def test_multi_line_and_random_span_middles_are_kept_whole() -> None:
    # The server's scope cut them: one line in front of code, a block at its dedent (a perfect model
    # scored 20 % on multi-line and 33 % on random-span tasks). Cut as HumanEval-Infilling names them.
    lines = FUNCTION.splitlines(keepends=True)
    cuts = {
        "MultiLineInfilling/HumanEval/0/L3_L5": (sum(map(len, lines[:3])), sum(map(len, lines[:6]))),
        "MultiLineInfilling/HumanEval/0/L1_L2": (sum(map(len, lines[:1])), sum(map(len, lines[:3]))),
        "RandomSpanInfilling/HumanEval/0/0": (FUNCTION.index("als, total"), FUNCTION.index("append")),
        "RandomSpanInfilling/HumanEval/0/1": (FUNCTION.index("n in"), FUNCTION.index("totals\n") + 1),
    }
    for task_id, (start, end) in cuts.items():
        task = Task(task_id, FUNCTION[:start], FUNCTION[end:], FUNCTION[start:end])
        ctx = task_context(task)
        # What the model writes when it is right: from the line start when the cursor is after indentation.
        raw = after_indentation(ctx.indent_at_cursor + task.canonical_solution, ctx.indent_at_cursor)
        found = finish(raw, ctx)
        assert found is not None, task_id
        # The file it fills is the function (a middle at the end of the file loses its last newline).
        assert (task.prompt + found.text + task.suffix).rstrip("\n") == FUNCTION.rstrip("\n"), task_id
    # A single-line task keeps the server's scope: the rest of the line.
    single = Task("SingleLineInfilling/HumanEval/0/L3", FUNCTION[:60], FUNCTION[60:], "")
    assert not single.multi_line and task_context(single).scope == "line"
