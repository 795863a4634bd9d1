"""The model's worker thread: loads the checkpoint, then runs one completion at a time.

Handlers on the asyncio loop `await engine.fill(...)`. Each job carries a cancel flag that the
denoiser checks before every decoder pass; a newer job for the same document sets the older
job's flag (latest-wins: Neovim never cancels superseded requests itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from dgemma_lsp.context import FimContext
from dgemma_lsp.model.checkpoint import LoadedModel, ModelLoadError, load_checkpoint
from dgemma_lsp.model.denoise import Cancelled
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.postprocess import finish_middle

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "Completion", "Engine", "EngineState", "complete", "load_model"]


class EngineState(enum.StrEnum):
    NO_MODEL = "no-model"
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


@dataclass
class Completion:
    text: str  # what to insert at the cursor; '' when the model had nothing useful
    raw: str  # the model's middle before post-processing
    steps: int
    prefill_ms: float
    denoise_ms: float
    total_ms: float


def complete(
    infiller: Infiller,
    ctx: FimContext,
    *,
    seed: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    max_prompt_tokens: int | None = None,
) -> Completion:
    """One middle for one cursor context: the path shared by the server and `dgemma-lsp complete`."""
    start = time.perf_counter()
    fill = infiller.fill(
        ctx.prefix,
        ctx.suffix,
        max_new_tokens=ctx.max_middle_tokens,
        seed=random.randrange(2**31) if seed is None else seed,
        language=ctx.language,
        cancelled=cancelled,
        max_prompt_tokens=max_prompt_tokens,
    )
    text = finish_middle(fill.text, ctx)
    return Completion(
        text=text,
        raw=fill.text,
        steps=fill.steps,
        prefill_ms=fill.prefill_ms,
        denoise_ms=fill.denoise_ms,
        total_ms=(time.perf_counter() - start) * 1000,
    )


def load_model(path: str, device: str | None = None, max_denoising_steps: int | None = None) -> LoadedModel:
    """The checkpoint at `path`, with the step budget overridden when one is given."""
    loaded = load_checkpoint(path, device=device)
    if max_denoising_steps is not None:
        loaded.settings = dataclasses.replace(loaded.settings, max_denoising_steps=max_denoising_steps)
    return loaded


@dataclass
class _Job:
    key: str
    ctx: FimContext
    seed: int | None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[Completion] = field(default_factory=Future)


class Engine:
    """Owns the model; `start` loads it on the worker thread, `fill` queues a completion."""

    def __init__(self, max_prompt_tokens: int | None = None) -> None:
        self.state = EngineState.NO_MODEL
        self.message = "No model configured."
        self.loaded: LoadedModel | None = None
        self.max_prompt_tokens = max_prompt_tokens
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._latest: dict[str, _Job] = {}
        self._thread: threading.Thread | None = None
        self._on_state: Callable[[EngineState, str], None] = lambda state, message: None

    def start(
        self,
        model_path: str | None,
        device: str | None = None,
        max_denoising_steps: int | None = None,
        on_state: Callable[[EngineState, str], None] | None = None,
    ) -> None:
        """Begin loading `model_path` in the background; with no path, stay in NO_MODEL."""
        if on_state is not None:
            self._on_state = on_state
        if model_path is None:
            self._set_state(EngineState.NO_MODEL, self.message)
            return
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

    async def fill(self, key: str, ctx: FimContext, seed: int | None = None) -> Completion:
        """Queue a completion for document `key`, superseding that document's older one.

        Raises Cancelled when superseded; cancelling the awaiting task stops the job at its next step.
        """
        if not self.accepting:
            raise RuntimeError(self.message)
        job = _Job(key, ctx, seed)
        previous = self._latest.get(key)
        if previous is not None:
            previous.cancel.set()
        self._latest[key] = job
        self._jobs.put(job)
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            job.cancel.set()  # no-op when finished; stops the worker when our caller was cancelled
            if self._latest.get(key) is job:
                del self._latest[key]

    def close(self) -> None:
        for job in list(self._latest.values()):
            job.cancel.set()
        self._jobs.put(None)

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
                result = complete(
                    infiller,
                    job.ctx,
                    seed=job.seed,
                    cancelled=job.cancel.is_set,
                    max_prompt_tokens=self.max_prompt_tokens,
                )
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
            self.loaded = load_model(model_path, device, max_denoising_steps)
            infiller = Infiller(self.loaded)
        except ModelLoadError as exc:
            self._set_state(EngineState.ERROR, str(exc))
            return None
        except Exception as exc:  # anything else from torch/transformers: report it, stay up
            log.exception("loading the model failed")
            self._set_state(EngineState.ERROR, f"Could not load the model from {model_path}: {exc}")
            return None
        self._set_state(
            EngineState.READY,
            f"Model {self.loaded.path.name} ready on {self.loaded.device} "
            f"({time.perf_counter() - start:.1f} s to load).",
        )
        return infiller
