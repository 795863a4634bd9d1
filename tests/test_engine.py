"""The engine's worker thread on the tiny checkpoint: states, latest-wins, cancellation, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dgemma_lsp.context import FimContext, SyntaxDocument, count_errors, has_error_within
from dgemma_lsp.engine import Cancelled, Completion, Engine, EngineState, complete, load_model
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.options import BUNDLED_MODEL
from dgemma_lsp.postprocess import after_indentation, syntax_errors

SOURCE = "def add(a, b):\n    return a + \n"


def hole() -> FimContext:
    return SyntaxDocument(SOURCE, "python").context_at(1, 15)


def started(path: str | None, **kwargs: object) -> tuple[Engine, list[EngineState], threading.Event]:
    engine, states, settled = Engine(), [], threading.Event()

    def on_state(state: EngineState, message: str) -> None:
        states.append(state)
        if state is not EngineState.LOADING:
            settled.set()

    engine.start(path, on_state=on_state, **kwargs)
    assert settled.wait(60)
    return engine, states, settled


async def test_fill_matches_the_shared_completion_path(tiny_checkpoint: Path) -> None:
    engine, states, _ = started(str(tiny_checkpoint), max_denoising_steps=4)
    assert states == [EngineState.LOADING, EngineState.LOADING, EngineState.READY]  # load, warm up, ready
    result = await engine.fill("a.py", hole(), seed=3)
    direct = complete(Infiller(load_model(str(tiny_checkpoint), max_denoising_steps=4)), hole(), seed=3)
    assert isinstance(result, Completion)
    assert (result.text, result.raw, result.steps) == (direct.text, direct.raw, direct.steps)
    assert result.steps <= 4 * 2  # a line middle of 48 tokens takes two canvases of 32
    engine.close()


def test_a_cursor_after_indentation_gets_the_middle_written_from_the_line_start(
    tiny_checkpoint: Path,
) -> None:
    # The model is shown the prompt that ends at the line start; the indentation it writes is dropped.
    infiller = Infiller(load_model(str(tiny_checkpoint), max_denoising_steps=4))
    source = "def add(a, b):\n    \n"
    at_indent = SyntaxDocument(source, "python").context_at(1, 4)
    line_start = SyntaxDocument(source, "python").context_at(1, 0).prefix
    for seed in range(3):
        fill = infiller.fill(
            line_start, at_indent.suffix, max_new_tokens=at_indent.max_middle_tokens, seed=seed
        )
        assert complete(infiller, at_indent, seed=seed).raw == after_indentation(fill.text, "    ")


def test_snippets_of_other_files_reach_the_prompt_where_there_is_room(tiny_checkpoint: Path) -> None:
    infiller = Infiller(load_model(str(tiny_checkpoint), max_denoising_steps=1))
    snippet = "# Compare this snippet from shapes.py:\n# def area(w, h):\n#     return w * h\n"
    size = len(infiller.loaded.tokenizer.encode(snippet, add_special_tokens=False))

    def prompt_tokens(prefix: str, context: list[str]) -> int:
        fill = infiller.fill(prefix, "\n", max_new_tokens=4, seed=0, context=context, max_prompt_tokens=200)
        return fill.prompt_tokens

    assert prompt_tokens(SOURCE, [snippet]) == prompt_tokens(SOURCE, []) + size
    # A prefix that fills the room leaves none: the snippet goes, the code stays.
    long = "".join(f"value_{i} = {i}\n" for i in range(100))
    assert prompt_tokens(long, [snippet]) == prompt_tokens(long, []) == 200


def test_the_bundled_model_does_not_indent_a_fresh_line_twice() -> None:
    # The cursor where an editor puts it after Enter in a function body. Shown a prompt that ended in the
    # indentation, this model typed it again in most suggestions (6 of these 8).
    infiller = Infiller(load_model(str(BUNDLED_MODEL)))
    source = "def mean(values):\n    total = sum(values)\n    \n"
    ctx = SyntaxDocument(source, "python").context_at(2, 4)
    # Unchecked: a doubled indentation is a syntax error, and the check would drop it.
    texts = [complete(infiller, ctx, seed=seed, syntax_check=False).text for seed in range(8)]
    assert sum(text.startswith((" ", "\t")) for text in texts) <= 2, texts


def test_a_suggestion_that_adds_syntax_errors_is_dropped(tiny_checkpoint: Path) -> None:
    infiller = Infiller(load_model(str(tiny_checkpoint), max_denoising_steps=4))
    ctx = hole()
    dropped = 0
    for seed in range(8):
        checked = complete(infiller, ctx, seed=seed)
        unchecked = complete(infiller, ctx, seed=seed, syntax_check=False)
        assert checked.raw == unchecked.raw and not unchecked.broke_syntax
        text = ctx.prefix + unchecked.text + ctx.suffix
        filled = SyntaxDocument(text, "python").tree
        assert filled is not None and text.isascii()  # str indices are bytes
        line_start = ctx.prefix.rfind("\n") + 1
        line_end = text.find("\n", len(ctx.prefix) + len(unchecked.text))
        on_its_lines = has_error_within(
            filled.root_node, line_start, line_end if line_end >= 0 else len(text)
        )
        more = count_errors(filled.root_node) > syntax_errors(ctx.prefix + ctx.suffix, "python")
        broken = bool(unchecked.text) and (more or on_its_lines)
        assert checked.broke_syntax == broken
        assert checked.text == ("" if broken else unchecked.text)
        dropped += broken
    assert 0 < dropped < 8  # random weights: some of each


async def test_newer_fill_for_the_same_document_supersedes_the_older(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint))
    older = asyncio.ensure_future(engine.fill("a.py", hole(), seed=1))
    other = asyncio.ensure_future(engine.fill("b.py", hole(), seed=1))  # another document: not affected
    await asyncio.sleep(0.05)
    newer = asyncio.ensure_future(engine.fill("a.py", hole(), seed=2))
    with pytest.raises(Cancelled):
        await older
    assert isinstance(await newer, Completion)
    assert isinstance(await other, Completion)
    engine.close()


async def test_cancelling_the_caller_stops_the_job(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint))
    task = asyncio.ensure_future(engine.fill("a.py", hole(), seed=1))
    await asyncio.sleep(0.1)
    job = engine._latest["a.py"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.cancel.is_set()  # the denoiser sees this before its next decoder pass
    with pytest.raises(Cancelled):
        job.future.result(timeout=30)
    engine.close()


async def test_forget_drops_a_closed_documents_cache(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint), max_denoising_steps=2)
    await engine.fill("a.py", hole(), seed=1)

    assert await engine.run("a.py", lambda infiller, c: "a.py" in infiller._slots._slots)
    engine.forget("a.py")
    assert not await engine.run("a.py", lambda infiller, c: "a.py" in infiller._slots._slots)


def test_without_a_model_the_engine_refuses_politely() -> None:
    engine, states, _ = started(None)
    assert states == [EngineState.NO_MODEL] and not engine.accepting
    with pytest.raises(RuntimeError, match="No model"):
        asyncio.run(engine.fill("a.py", hole()))


def test_a_broken_checkpoint_puts_the_engine_in_error(tmp_path: Path) -> None:
    engine, states, _ = started(str(tmp_path / "missing"))
    assert states[-1] is EngineState.ERROR and str(tmp_path / "missing") in engine.message
    assert not engine.accepting


async def test_a_foreground_job_cancels_background_work(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint))
    speculative = asyncio.ensure_future(
        engine.run(
            "a.py",
            lambda infiller, cancelled: complete(infiller, hole(), cancelled=cancelled),
            background=True,
        )
    )
    await asyncio.sleep(0.1)
    assert engine.idle  # background work does not count as busy
    foreground = asyncio.ensure_future(engine.fill("b.py", hole(), seed=1))
    await asyncio.sleep(0)  # let it queue
    assert not engine.idle
    with pytest.raises(Cancelled):
        await speculative
    assert isinstance(await foreground, Completion)
    assert engine.idle
    engine.close()


async def test_background_work_supersedes_nothing(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint), max_denoising_steps=2)
    foreground = asyncio.ensure_future(engine.fill("a.py", hole(), seed=1))
    await asyncio.sleep(0.05)
    background = asyncio.ensure_future(
        engine.run("a.py", lambda infiller, cancelled: complete(infiller, hole(), seed=2), background=True)
    )
    assert isinstance(await foreground, Completion)
    assert isinstance(await background, Completion)
    engine.close()


def test_join_lets_go_of_the_model(tiny_checkpoint: Path) -> None:
    engine, _, _ = started(str(tiny_checkpoint))
    assert engine.loaded is not None
    engine.close()
    engine.join(timeout=30)
    assert engine.loaded is None and not engine._thread.is_alive()
