"""The model's worker thread: loads the checkpoint, then runs one job at a time.

Handlers on the asyncio loop `await engine.fill(...)` (or `run` for any work on the model). Each job
carries a cancel flag that the denoiser checks before every decoder pass; a newer job for the same
document sets the older job's flag (latest-wins: Neovim never cancels superseded requests itself).
Background jobs (speculative completions) give way to every foreground job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from dgemma_lsp.context import FimContext
from dgemma_lsp.kernels import Kernels
from dgemma_lsp.model.checkpoint import LoadedModel, ModelLoadError, load_checkpoint, read_languages
from dgemma_lsp.model.compiled import InductorSteps
from dgemma_lsp.model.denoise import Cancelled
from dgemma_lsp.model.infill import CanvasMode, Infiller
from dgemma_lsp.model.load import load_fast
from dgemma_lsp.model.prompt import PromptMode
from dgemma_lsp.postprocess import Indentation, adds_syntax_errors, after_indentation, finish

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "Completion", "Engine", "EngineState", "complete", "load_model"]


WARMUP_STEPS = 2  # decoder passes of the warm-up fill: enough to touch every kernel once

Work = Callable[[Infiller, Callable[[], bool]], Any]  # (infiller, cancelled) -> result, on the worker thread
Backend = Literal["fast", "reference"]  # our compact denoiser, or transformers' model


class EngineState(enum.StrEnum):
    NO_MODEL = "no-model"
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


@dataclass
class Completion:
    text: str  # what to insert at the cursor; '' when the model had nothing useful
    raw: str  # the model's middle from the cursor on, before post-processing
    steps: int
    prefill_ms: float
    denoise_ms: float
    total_ms: float
    replace: int = 0  # UTF-16 units right of the cursor that `text` replaces (auto-closed brackets/quotes)
    seed: int = 0
    broke_syntax: bool = False  # a suggestion was dropped (text '') as it added syntax errors


def complete(
    infiller: Infiller,
    ctx: FimContext,
    *,
    seed: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    max_prompt_tokens: int | None = None,
    indentation: Indentation | None = None,
    max_lines: int | None = None,
    key: str = "",
    syntax_check: bool = True,
    context: Sequence[str] = (),
) -> Completion:
    """One middle for one cursor context: the path shared by the server and `dgemma-lsp complete`.

    `key` names the document, so the fast backend can reuse what it encoded for it last time. With
    `syntax_check`, a suggestion that adds tree-sitter errors to the document is dropped. `context`:
    snippets of other open files for the prompt (`neighbours.OpenFiles`).
    """
    start = time.perf_counter()
    seed = random.randrange(2**31) if seed is None else seed
    # After a line's indentation the model is shown the line start and writes the indentation itself (as
    # llama.vim does): a prompt ending in it splits "\n    return" where the file's tokens don't ("\n   ",
    # " return"), and the bundled model typed the indentation again, doubling it, in most suggestions.
    indent = ctx.indent_at_cursor
    fill = infiller.fill(
        ctx.prefix.removesuffix(indent),
        ctx.suffix,
        max_new_tokens=ctx.max_middle_tokens,
        seed=seed,
        language=ctx.language,
        cancelled=cancelled,
        max_prompt_tokens=max_prompt_tokens,
        key=key,
        context=context,
    )
    raw = after_indentation(fill.text, indent)
    found = finish(raw, ctx, indentation=indentation, max_lines=max_lines)
    broke_syntax = found is not None and syntax_check and adds_syntax_errors(found, ctx)
    if broke_syntax:
        found = None
    return Completion(
        text=found.text if found is not None else "",
        raw=raw,
        steps=fill.steps,
        prefill_ms=fill.prefill_ms,
        denoise_ms=fill.denoise_ms,
        total_ms=(time.perf_counter() - start) * 1000,
        replace=found.replace if found is not None else 0,
        seed=seed,
        broke_syntax=broke_syntax,
    )


def load_model(
    path: str,
    device: str | None = None,
    max_denoising_steps: int | None = None,
    backend: Backend = "fast",
    kernels: Kernels = "auto",
) -> LoadedModel:
    """The checkpoint at `path` for `backend`, with the step budget overridden when one is given."""
    if backend == "fast":
        loaded = load_fast(path, device=device, kernels=kernels)
    else:
        loaded = load_checkpoint(path, device=device)
    if max_denoising_steps is not None:
        loaded.settings = dataclasses.replace(loaded.settings, max_denoising_steps=max_denoising_steps)
    return loaded


@dataclass(eq=False)  # jobs are compared and hashed by identity
class _Job:
    key: str
    work: Work
    background: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] = field(default_factory=Future)


class Engine:
    """Owns the model; `start` loads it on the worker thread, `fill` queues a completion."""

    def __init__(self, max_prompt_tokens: int | None = None) -> None:
        self.state = EngineState.NO_MODEL
        self.message = "No model configured."
        self.loaded: LoadedModel | None = None
        self.languages: tuple[str, ...] | None = None  # what the model was trained on, if it says
        self.max_prompt_tokens = max_prompt_tokens
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._latest: dict[str, _Job] = {}
        self._background: set[_Job] = set()
        self._thread: threading.Thread | None = None
        self._on_state: Callable[[EngineState, str], None] = lambda state, message: None
        self._prompt_mode: PromptMode = "auto"
        self._backend: Backend = "fast"
        self._canvas_mode: CanvasMode = "plain"
        self._kernels: Kernels = "auto"

    def start(
        self,
        model_path: str | None,
        device: str | None = None,
        max_denoising_steps: int | None = None,
        on_state: Callable[[EngineState, str], None] | None = None,
        prompt_mode: PromptMode = "auto",
        backend: Backend = "fast",
        canvas_mode: CanvasMode = "plain",
        kernels: Kernels = "auto",
    ) -> None:
        """Begin loading `model_path` in the background; with no path, stay in NO_MODEL. Once only."""
        if self._thread is not None:
            raise RuntimeError("the engine was started already")
        if on_state is not None:
            self._on_state = on_state
        self._prompt_mode = prompt_mode
        self._backend, self._canvas_mode, self._kernels = backend, canvas_mode, kernels
        if model_path is None:
            self._set_state(EngineState.NO_MODEL, self.message)
            return
        with contextlib.suppress(ModelLoadError):  # known before the load, which reports a bad folder
            self.languages = read_languages(model_path)
        self._set_state(EngineState.LOADING, f"Loading model from {model_path} ...")
        self._thread = threading.Thread(
            target=self._work,
            args=(model_path, device, max_denoising_steps),
            name="dgemma-engine",
            daemon=True,
        )
        self._thread.start()

    @property
    def accepting(self) -> bool:
        """Whether completions can be served now or once loading finishes."""
        return self.state in (EngineState.LOADING, EngineState.READY)

    def forget(self, key: str) -> None:
        """Drop what the model keeps for a closed document (the fast backend's KV cache), on the worker."""
        if self.accepting:  # queued directly: no later job supersedes it
            self._jobs.put(_Job(key, lambda infiller, cancelled: infiller.forget(key), background=True))

    async def fill(self, key: str, ctx: FimContext, seed: int | None = None) -> Completion:
        """Queue a completion for document `key`, superseding that document's older one.

        Raises Cancelled when superseded; cancelling the awaiting task stops the job at its next step.
        """
        return await self.run(
            key,
            lambda infiller, cancelled: complete(
                infiller,
                ctx,
                seed=seed,
                cancelled=cancelled,
                max_prompt_tokens=self.max_prompt_tokens,
                key=key,
            ),
        )

    async def run(self, key: str, work: Work, *, background: bool = False) -> Any:
        """Queue `work(infiller, cancelled)` for document `key` and await its result.

        A foreground job supersedes the older foreground job of the same document and every background
        job. A background job supersedes nothing. Raises Cancelled when superseded.
        """
        if not self.accepting:
            raise RuntimeError(self.message)
        job = _Job(key, work, background)
        if background:
            self._background.add(job)
        else:
            for stale in [self._latest.get(key), *self._background]:
                if stale is not None:
                    stale.cancel.set()
            self._latest[key] = job
        self._jobs.put(job)
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            job.cancel.set()  # no-op when finished; stops the worker when our caller was cancelled
            self._background.discard(job)
            if self._latest.get(key) is job:
                del self._latest[key]

    @property
    def idle(self) -> bool:
        """No foreground job queued or running."""
        return not self._latest

    def close(self) -> None:
        for job in [*self._latest.values(), *self._background]:
            job.cancel.set()
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        """After `close`: wait for the worker thread to end, then let go of the model."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.loaded = None

    def _set_state(self, state: EngineState, message: str) -> None:
        self.state, self.message = state, message
        self._on_state(state, message)

    def _work(self, model_path: str, device: str | None, max_denoising_steps: int | None) -> None:
        infiller = self._load(model_path, device, max_denoising_steps)
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller went away before it started
            try:
                if infiller is None:
                    raise RuntimeError(self.message)
                if job.cancel.is_set():
                    raise Cancelled()
                result = job.work(infiller, job.cancel.is_set)
            except Cancelled as exc:
                job.future.set_exception(exc)
            except Exception as exc:
                log.exception("completion failed")
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

    def _load(self, model_path: str, device: str | None, max_denoising_steps: int | None) -> Infiller | None:
        start = time.perf_counter()
        try:
            self.loaded = load_model(model_path, device, max_denoising_steps, self._backend, self._kernels)
            infiller = Infiller(self.loaded, prompt_mode=self._prompt_mode, canvas_mode=self._canvas_mode)
        except ModelLoadError as exc:
            self._set_state(EngineState.ERROR, str(exc))
            return None
        except Exception as exc:  # anything else from torch/transformers: report it, stay up
            log.exception("loading the model failed")
            self._set_state(EngineState.ERROR, f"Could not load the model from {model_path}: {exc}")
            return None
        self._set_state(
            EngineState.LOADING, f"Warming up {self.loaded.path.name} on {self.loaded.device} ..."
        )
        try:
            _warm_up(infiller)
        except Exception as exc:  # the model loaded but cannot run: same as a failed load
            log.exception("warming up the model failed")
            self._set_state(EngineState.ERROR, f"The model from {model_path} fails to run: {exc}")
            return None
        self._set_state(
            EngineState.READY,
            f"Model {self.loaded.path.name} ready on {self.loaded.device} "
            f"({time.perf_counter() - start:.1f} s to load).",
        )
        return infiller


def _warm_up(infiller: Infiller) -> None:
    """One short fill cut after a few decoder passes, so the first real request pays no first-call costs."""
    compiled = getattr(infiller.loaded.model, "compiled_steps", None)
    if isinstance(compiled, InductorSteps) and infiller.canvas_mode == "lengths":
        # A batch of canvases compiles apart from one (load_fast compiled that).
        compiled.warm_up(rows=(3,), settings=infiller.loaded.settings)
    passes = 0

    def enough() -> bool:
        nonlocal passes
        passes += 1
        return passes > WARMUP_STEPS

    try:
        infiller.fill("def add(a, b):\n    return ", "\n", max_new_tokens=8, seed=0, cancelled=enough)
    except Cancelled:
        pass
