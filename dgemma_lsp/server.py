"""The language server: thin LSP handlers over the context step, the policy, the cache and the engine.

One request, from the top: the latest request per document and method wins (older ones are answered
with RequestCancelled, -32800); the context step gives the prefix/suffix; the cache answers at once when
it can (also when the user typed into a shown suggestion); otherwise an automatic request waits out the
adaptive debounce and the engine runs the model (several seeds for an invoked one). Once a suggestion is
shown and the engine is idle, the server precomputes what follows its acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from cattrs import transform_error
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.uris import to_fs_path

from dgemma_lsp import __version__
from dgemma_lsp.cache import SuggestionCache
from dgemma_lsp.context import ContextBudget, FimContext, SyntaxDocument, UnsupportedDocument, language_for
from dgemma_lsp.edits import FILL_COMMAND, fill_context, fill_span, find_holes
from dgemma_lsp.engine import Cancelled, Completion, Engine, EngineState, complete
from dgemma_lsp.log import attach_client_logging, detach_client_logging
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.neighbours import OpenDocument, OpenFiles
from dgemma_lsp.options import (
    MODEL_ENV,
    OPEN_FILES_TOKENS,
    SMALL_MODEL_POSITIONS,
    Options,
    parse_options,
    resolve_model_path,
)
from dgemma_lsp.policy import Debouncer, candidate_seeds, language_enabled
from dgemma_lsp.postprocess import Suggestion, rank
from dgemma_lsp.stats import Stats

log = logging.getLogger(__name__)

STATUS = "dgemma/status"
STATS = "dgemma/stats"
SETTINGS_SECTION = "dgemma"
MAX_HOLE_LINES = 200  # lines of a code action's range searched for holes

NO_MODEL_HELP = (
    "dgemma-lsp has no model, so it offers no completions. Download a DiffusionGemma checkpoint "
    "(e.g. `hf download google/diffusiongemma-26B-A4B-it --local-dir ~/models/diffusiongemma`) and point "
    f"the server at it with `--model DIR`, ${MODEL_ENV}, or the `modelPath` initialization option."
)


_HANDLED = object()  # a message dealt with while it was being read
_ONCE = (types.INITIALIZE, types.INITIALIZED)  # LSP: sent once per session


class DgemmaProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcInvalidParams as exc:
            if "method" not in data:  # a client's answer that does not fit our request's result type
                log.warning("the answer to request %s does not fit its type: %.200s", data.get("id"), data)
                future = self._request_futures.pop(data.get("id"), None)
                if future is not None:  # pygls would leave it waiting forever and pop up "Invalid Params"
                    future.set_exception(exc)
                return _HANDLED
            # pygls would drop the message and pop up "Invalid Params" in the editor, naming nothing; a
            # request's client would wait forever. JSON-RPC answers a request with InvalidParams.
            where = _invalid_fields(exc.__cause__)
            if "id" not in data:  # a notification: nothing to answer, the client's log says what was wrong
                log.warning("%s notification ignored, invalid params: %s", data["method"], where)
                return _HANDLED
            log.warning("%s request %s has invalid params: %s", data["method"], data["id"], where)
            error = JsonRpcInvalidParams(f"Invalid params for {data['method']}: {where}")
            self._send_response(data["id"], error=error.to_response_error())
            return _HANDLED
        except JsonRpcInternalError:
            if "method" in data and "params" not in data:
                # JSON-RPC lets a message leave params out; pygls's type for our own methods does not.
                return self.structure_message({**data, "params": None})
            if "method" in data and "id" in data:
                self._refuse(data["id"], JsonRpcInvalidRequest(f"Invalid Request: {data['method']}"))
            else:  # a response with neither result nor error, say: nothing to answer
                log.warning("ignored a message of no JSON-RPC kind: %.200s", json.dumps(data))
            return _HANDLED

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.once_seen: set[str] = set()  # of _ONCE

    def handle_message(self, message: Any) -> None:
        # pygls serves requests before `initialize`, serves a second `initialize` (a second model load
        # followed), drops requests after `shutdown` unanswered (the client waits forever) and pops up an
        # AttributeError for JSON that is no JSON-RPC message; LSP and JSON-RPC say how each is answered.
        if message is _HANDLED:
            return
        if not hasattr(message, "jsonrpc"):  # a batch, a number, an object without "jsonrpc"
            self._refuse(None, JsonRpcInvalidRequest("Invalid Request: not a JSON-RPC 2.0 message"))
            return
        method = getattr(message, "method", None)
        request = method is not None and hasattr(message, "id")
        if method not in (None, types.INITIALIZE, types.EXIT) and types.INITIALIZE not in self.once_seen:
            if request:
                self._refuse(message.id, JsonRpcServerNotInitialized(f"{method} before initialize"))
            else:
                log.warning("%s notification before initialize ignored", method)
            return
        if method in _ONCE:
            if method in self.once_seen:
                if request:
                    self._refuse(message.id, JsonRpcInvalidRequest(f"{method} may only be sent once"))
                else:
                    log.warning("second %s notification ignored", method)
                return
            self.once_seen.add(method)
        if self._shutdown and request and method != types.EXIT:
            self._refuse(message.id, JsonRpcInvalidRequest(f"{method} after shutdown"))
            return
        super().handle_message(message)

    def _refuse(self, msg_id: Any, error: JsonRpcException) -> None:
        log.warning("answered %s", error)
        # A plain dict: the converter would leave out a null id, which JSON-RPC requires.
        response_error = self._converter.unstructure(error.to_response_error())
        self._send_data({"jsonrpc": self.VERSION, "id": msg_id, "error": response_error})

    # The server keeps each document once, as a SyntaxDocument. pygls's own copy (its workspace) went unused
    # and cost a split of the whole text per keystroke (39 ms in a 2.7 MB file), so it is not kept.
    def _only_ours(self, method: str, params: Any) -> Any:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        return (yield from self._only_ours(types.TEXT_DOCUMENT_DID_OPEN, params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        return (yield from self._only_ours(types.TEXT_DOCUMENT_DID_CHANGE, params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        return (yield from self._only_ours(types.TEXT_DOCUMENT_DID_CLOSE, params))

    @lsp_method(types.SHUTDOWN)
    def lsp_shutdown(self, *args: Any) -> Any:
        # pygls cancels the requests still pending while iterating over their dict, and cancelling one
        # can change it (a fill waiting on the client's workspace/applyEdit): shutdown failed with
        # "dictionary changed size during iteration". Cancel them from a copy first.
        for msg_id, future in list(self._request_futures.items()):
            if msg_id != self.msg_id:
                future.cancel()
        return (yield from super().lsp_shutdown(*args))

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams) -> Any:
        # Without `arguments` (LSP lets them be left out) pygls called the command with none: a TypeError
        # answered as an internal error. As an empty list they are checked: a missing one is InvalidParams.
        params.arguments = params.arguments or []
        try:
            return (yield from super().lsp_workspace__execute_command(params))
        except JsonRpcInvalidParams as exc:  # "While structuring Range (1 sub-exception)": which field?
            if exc.__context__ is None:
                raise
            where = _invalid_fields(exc.__context__)
            raise JsonRpcInvalidParams(f"Invalid arguments for {params.command}: {where}") from None

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Any:
        # Our document model counts columns in UTF-16 (the LSP default); without this pygls would
        # agree to UTF-8 with clients such as Neovim that offer it first.
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = None
        return (yield from super().lsp_initialize(params))


def _invalid_fields(error: BaseException | None) -> str:
    """What cattrs found wrong, by field, in LSP's names (`$.textDocument.uri: ...`)."""
    where = "; ".join(transform_error(error, path="$")) if error is not None else ""
    return re.sub(r"_([a-z])", lambda m: m[1].upper(), where)  # lsprotocol's snake_case names


def _answered_in_a_line(record: logging.LogRecord) -> bool:
    """pygls logs a traceback on stderr (the editor's LSP log) for each error the client is answered with,
    and for each message DgemmaProtocol answers and logs itself: a line is enough, and none for those."""
    exc = record.exc_info[1] if record.exc_info else None
    if str(record.msg).startswith("Unable to deserialize message"):
        return False
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return False
    if isinstance(exc, JsonRpcException):
        record.msg, record.args = f"{record.getMessage()}: answered {exc}", ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


logging.getLogger("pygls.protocol.json_rpc").addFilter(_answered_in_a_line)
logging.getLogger("pygls.server").addFilter(_answered_in_a_line)


class DgemmaServer(LanguageServer):
    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        backend: str | None = None,
        kernels: str | None = None,
    ) -> None:
        super().__init__("dgemma-lsp", __version__, protocol_cls=DgemmaProtocol)
        self.cli_model = model
        self.cli_device = device
        self.cli_backend = backend
        self.cli_kernels = kernels
        self.init_options: dict[str, Any] = {}  # what didChangeConfiguration settings are laid over
        self.options = Options()
        self.engine = Engine()
        self.started_with: dict[str, Any] = {}  # engine_settings() when the engine was started
        self.restarting = asyncio.Lock()
        self.documents: dict[str, SyntaxDocument] = {}  # the most recently opened or changed last
        self.open_files = OpenFiles()  # snippets of the other documents for a prompt
        self.changes: Counter[str] = Counter()  # didChange notifications per document
        self.language_ids: dict[str, str] = {}  # uri -> LSP languageId, for per-language enable
        self.refused: set[str] = set()  # documents we told the user we can't complete, until we can
        self.untrained: set[str | None] = set()  # languageIds we told the user the model doesn't know
        self.cache = SuggestionCache()
        self.debouncer = Debouncer()
        self.stats = Stats()
        self.pending: dict[tuple[str, str], asyncio.Task[Any]] = {}  # latest request per (uri, method)
        self.speculating: set[bytes] = set()  # cache keys being precomputed
        self.speculated: dict[str, str] = {}  # uri -> the accepted text last precomputed for
        self.busy = 0  # foreground model runs in flight
        self.last_latency_ms: float | None = None
        self._status: dict[str, Any] | None = None
        self._progress: tuple[str, asyncio.Future[Any]] | None = None  # token, its creation

    @property
    def budget(self) -> ContextBudget:
        o = self.options
        return ContextBudget(
            prefix_tokens=o.prefix_tokens,
            suffix_tokens=o.suffix_tokens,
            line_middle_tokens=o.line_middle_tokens,
            block_middle_tokens=o.block_middle_tokens,
        )

    def report_server_error(self, error: Exception, source: Any) -> None:
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            # A body that is no JSON (or no UTF-8): JSON-RPC answers Parse error with a null id; pygls
            # popped up "Error in server: Expecting value ..." in the editor instead.
            self.protocol._refuse(None, JsonRpcParseError(f"Parse error: {error}"))
            return
        super().report_server_error(error, source)

    def show(self, message: str, kind: types.MessageType) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    # -- the engine, its state and progress

    def engine_settings(self) -> dict[str, Any]:
        """What the engine is started with: the options in effect, the command line's winning."""
        o = self.options
        return {
            "model_path": resolve_model_path(self.cli_model, o),
            "device": self.cli_device or o.device,
            "max_denoising_steps": o.max_denoising_steps,
            "prompt_mode": o.infilling_mode,
            "backend": self.cli_backend or o.backend,
            "canvas_mode": o.canvas_mode,
            "kernels": self.cli_kernels or o.kernels,
        }

    def start_engine(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine

        def on_state(state: EngineState, message: str) -> None:
            if engine is self.engine:  # a replaced engine's last words are not news
                with contextlib.suppress(RuntimeError):  # the loop has closed: the client is gone
                    loop.call_soon_threadsafe(self._report_state, state, message)

        self.started_with = self.engine_settings()
        engine.start(**self.started_with, on_state=on_state)  # argparse and the options checked the values

    async def restart_engine(self) -> None:
        """A new engine when the model settings in effect changed; the old one drops its model first (one
        model in memory). One restart at a time: a second started while the first waited for the old
        model would have started the same engine twice."""
        async with self.restarting:
            if self.engine_settings() == self.started_with:
                return
            old, self.engine = self.engine, Engine()
            old.close()
            await asyncio.to_thread(old.join)
            self.cache.clear()
            self.untrained.clear()
            self.start_engine()

    def _report_state(self, state: EngineState, message: str) -> None:
        if state is EngineState.NO_MODEL:
            log.warning(NO_MODEL_HELP)
            self.show(NO_MODEL_HELP, types.MessageType.Warning)
        elif state is EngineState.ERROR:
            log.error(message)
            self.show(f"dgemma-lsp: {message}", types.MessageType.Error)
        else:
            log.info(message)
        self._report_progress(state, message)
        self.publish_status()

    def _report_progress(self, state: EngineState, message: str) -> None:
        """Work-done progress from the first LOADING state to READY/ERROR, when the client shows progress."""
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return
        if self._progress is None:
            if state is not EngineState.LOADING:
                return
            token = f"dgemma-load-{uuid.uuid4()}"
            created = asyncio.ensure_future(self.work_done_progress.create_async(token))
            self._progress = token, created
            value: Any = types.WorkDoneProgressBegin(title="DiffusionGemma", message=message)
        elif state is EngineState.LOADING:
            value = types.WorkDoneProgressReport(message=message)
        else:
            value = types.WorkDoneProgressEnd(message=message)
        token, created = self._progress
        if isinstance(value, types.WorkDoneProgressEnd):
            self._progress = None
        asyncio.ensure_future(self._send_progress(token, created, value))

    async def _send_progress(self, token: str, created: asyncio.Future[Any], value: Any) -> None:
        try:
            await asyncio.shield(created)  # every part waits for the token; they resume in order
        except Exception:
            return  # the client refused the token: no progress then
        if isinstance(value, types.WorkDoneProgressBegin):
            self.work_done_progress.begin(token, value)
        elif isinstance(value, types.WorkDoneProgressReport):
            self.work_done_progress.report(token, value)
        else:
            self.work_done_progress.end(token, value)

    def status(self) -> dict[str, Any]:
        engine = self.engine
        state = {
            EngineState.LOADING: "loading",
            EngineState.READY: "busy" if self.busy else "ready",
        }.get(engine.state, "error")
        loaded = engine.loaded
        return {
            "state": state,
            "message": NO_MODEL_HELP if engine.state is EngineState.NO_MODEL else engine.message,
            "device": str(loaded.device) if loaded is not None else None,
            "model": str(loaded.path) if loaded is not None else None,
            "lastLatencyMs": self.last_latency_ms,
        }

    def publish_status(self) -> None:
        """Send `dgemma/status` when it says something new."""
        status = self.status()
        if status != self._status:
            self._status = status
            self.protocol.notify(STATUS, status)

    # -- configuration

    async def apply_settings(self, settings: Any) -> None:
        """New options from didChangeConfiguration, laid over the initializationOptions."""
        _, problem = parse_options(settings, f"`{SETTINGS_SECTION}` settings")
        if problem:
            log.warning(problem)
            self.show(f"dgemma-lsp: {problem}", types.MessageType.Warning)
        layered = {**self.init_options, **settings} if isinstance(settings, dict) else self.init_options
        self.options, _ = parse_options(layered)
        self.debouncer.fixed_ms = self.options.debounce_ms
        self.cache.clear()  # cached suggestions were shaped by the old options
        self.speculated.clear()
        await self.restart_engine()

    # -- requests

    @contextlib.contextmanager
    def latest(self, key: tuple[str, str]) -> Iterator[None]:
        """Make the running request the latest for `key`, cancelling the one it supersedes."""
        task = asyncio.current_task()
        assert task is not None
        older = self.pending.get(key)
        if older is not None and not older.done():
            older.cancel()
        self.pending[key] = task
        try:
            yield
        finally:
            if self.pending.get(key) is task:
                del self.pending[key]

    def position_in(self, uri: str, position: types.Position) -> types.Position:
        """`position` where the document has it: a column past its line's end (or a line past the last)
        is the end, as the LSP spec says for columns, so the items' ranges name real positions."""
        doc = self.documents.get(uri)
        return position if doc is None else doc.position_at(doc.offset_at(position.line, position.character))

    def completes(self, uri: str) -> bool:
        """Whether the model may run for this document: it is (being) loaded and the language is on."""
        if not self.engine.accepting:
            return False
        language, trained = self.language_ids.get(uri), self.engine.languages
        if language_enabled(self.options.enable, language, trained):
            return True
        if trained is not None and language not in trained and language not in self.untrained:
            self.untrained.add(language)  # say why once per language, not per request
            self.show(
                f"dgemma-lsp: this model was trained on {', '.join(trained)} code only, so it suggests "
                f"nothing in {language} documents. Point `modelPath` at a DiffusionGemma checkpoint, or "
                f'set the `enable` option (VS Code: `dgemma.enable`) to {{"{language}": true}} to try it.',
                types.MessageType.Info,
            )
        return False

    async def suggest(
        self,
        uri: str,
        position: types.Position,
        *,
        invoked: bool,
        method: str,
        selected: types.SelectedCompletionInfo | None = None,
    ) -> list[Suggestion]:
        """Post-processed suggestions at `position`, best first; [] when there is nothing to offer.

        With `selected` (the completion widget's item), they follow its text put in over its range, the
        cursor after it: what the user sees.
        """
        received = time.perf_counter()
        self.stats.count("requests")
        doc = self.documents.get(uri)
        if doc is None or not self.completes(uri):
            return []
        if selected is not None:
            doc, position = doc.with_change(selected.text, selected.range)
        with self.latest((uri, method)):
            try:
                suggestions = await self._suggest(uri, doc, position, invoked, method)
            except (asyncio.CancelledError, Cancelled):
                # Superseded or cancelled: the task ends as cancelled, which pygls answers with
                # RequestCancelled (-32800).
                self.stats.count("cancelled")
                raise asyncio.CancelledError("superseded by a newer request") from None
            except Exception:  # a failed model run (a CUDA error, say): no items this time, stay up
                log.exception("completion at %s:%d:%d failed", uri, position.line, position.character)
                self.stats.count("failed")
                return []
        self.stats.count("served" if suggestions else "empty")
        self.stats.latency_ms.append((time.perf_counter() - received) * 1000)
        return suggestions

    async def _suggest(
        self, uri: str, doc: SyntaxDocument, position: types.Position, invoked: bool, method: str
    ) -> list[Suggestion]:
        received = time.perf_counter()
        try:
            ctx = doc.context_at(position.line, position.character, self.budget)
        except UnsupportedDocument as exc:
            if uri not in self.refused:  # once, not on every keystroke
                self.refused.add(uri)
                log.warning("%s: %s", uri, exc)
                self.show(f"dgemma-lsp: {exc}", types.MessageType.Warning)
            return []
        self.refused.discard(uri)
        want = self.options.candidates if invoked else 1
        hit = self.cache.get(ctx.prefix, ctx.suffix)
        if hit is not None and (hit.typed or not invoked or len(hit.suggestions) >= want):
            self.stats.count("typingThroughHits" if hit.typed else "cacheHits")
            if hit.speculative:
                self.stats.count("speculativeHits")
            self.stats.cached_latency_ms.append((time.perf_counter() - received) * 1000)
            self._after_shown(uri, doc, position, hit.suggestions)
            return hit.suggestions[:want]
        self.stats.count("cacheMisses")

        changes = self.changes[uri]
        await asyncio.sleep(self.debouncer.delay(uri, invoked))
        if self.changes[uri] != changes:
            # Typed on meanwhile: the position is gone, and the editor asks again for the new text.
            self.stats.count("outdated")
            return []
        _, suggestions = await self.run_model(f"{method} {uri}", uri, ctx, want)
        self.cache.put(ctx.prefix, ctx.suffix, suggestions)
        self._after_shown(uri, doc, position, suggestions)
        return suggestions

    async def run_model(
        self, job: str, uri: str, ctx: FimContext, count: int
    ) -> tuple[list[Completion], list[Suggestion]]:
        """`count` model completions for `ctx` as a foreground engine job, and the distinct suggestions
        among them, best first."""
        self.busy += 1
        self.publish_status()
        try:
            snippets = self.snippets_for(uri, ctx)
            self.stats.count("openFileSnippets", len(snippets))
            completions, suggestions = await self.engine.run(
                job, self._model_work(uri, ctx, snippets, candidate_seeds(count, self.options.seed))
            )
            self._record(completions)
        finally:
            self.busy -= 1
            self.publish_status()
        log.info(
            "%s: %d item(s), %d steps, %.0f ms",
            job,
            len(suggestions),
            sum(c.steps for c in completions),
            sum(c.total_ms for c in completions),
        )
        return completions, suggestions

    def snippets_for(self, uri: str, ctx: FimContext) -> list[str]:
        """Code from the other open documents like the lines above the cursor, for the prompt (made here,
        on the event loop, where the documents change)."""
        others = (
            OpenDocument(other, self.display_name(other), doc.language, doc.text)
            for other, doc in reversed(self.documents.items())
            if other != uri
        )
        return self.open_files.snippets(ctx.prefix, ctx.language, others, self.open_files_tokens())

    def open_files_tokens(self) -> int:
        """The `openFilesTokens` in effect (its default depends on the model's size)."""
        if self.options.open_files_tokens is not None:
            return self.options.open_files_tokens
        loaded = self.engine.loaded
        if loaded is None:  # still loading: its size is not known yet
            return 0
        small = loaded.max_positions is not None and loaded.max_positions <= SMALL_MODEL_POSITIONS
        return 0 if small else OPEN_FILES_TOKENS

    def display_name(self, uri: str) -> str:
        """How a prompt names a document: its path in the workspace, else its file name."""
        path = to_fs_path(uri)
        if path is None:
            return uri.rsplit("/", 1)[-1]
        root = self.workspace.root_path
        if root and Path(path).is_relative_to(root):
            return Path(path).relative_to(root).as_posix()
        return Path(path).name

    def _model_work(self, uri: str, ctx: FimContext, snippets: list[str], seeds: list[int]) -> Any:
        """What the engine's thread runs: one completion per seed, then the distinct ones ranked."""
        options, max_prompt_tokens = self.options, self.engine.max_prompt_tokens

        def work(infiller: Infiller, cancelled: Any) -> tuple[list[Completion], list[Suggestion]]:
            completions = [
                complete(
                    infiller,
                    ctx,
                    seed=seed,
                    cancelled=cancelled,
                    max_prompt_tokens=max_prompt_tokens,
                    max_lines=options.max_lines,
                    key=uri,
                    syntax_check=options.syntax_check,
                    context=snippets,
                )
                for seed in seeds
            ]
            found = [Suggestion(c.text, c.replace) for c in completions if c.text]
            return completions, rank(found, ctx, by_syntax=not options.syntax_check)

        return work

    def _record(self, completions: list[Completion]) -> None:
        for c in completions:
            self.stats.count("completions")
            self.stats.count("brokeSyntax", c.broke_syntax)
            self.stats.model_ms.append(c.total_ms)
            self.stats.steps.append(c.steps)
        if completions:
            self.last_latency_ms = round(sum(c.total_ms for c in completions), 1)

    # -- speculation

    def _after_shown(
        self, uri: str, doc: SyntaxDocument, position: types.Position, suggestions: list[Suggestion]
    ) -> None:
        """Start precomputing what follows the top suggestion, on the text as it is now."""
        if not suggestions or not self.options.speculate:
            return
        shown = suggestions[0]
        start = doc.offset_at(position.line, position.character)
        end = doc.offset_at(position.line, position.character + shown.replace)
        accepted = doc.text[:start] + shown.text + doc.text[end:]
        if self.speculated.get(uri) == accepted:
            return  # typing through the same suggestion: its acceptance is computed or under way
        self.speculated[uri] = accepted
        asyncio.ensure_future(self._speculate(uri, accepted, doc.language, start + len(shown.text)))

    async def _speculate(self, uri: str, accepted: str, language: str | None, cursor: int) -> None:
        """Precompute the suggestion at `cursor` in `accepted` (the text once a suggestion is accepted)."""
        await asyncio.sleep(0)  # let the answer that showed the suggestion go out first
        if not self.engine.idle or uri not in self.documents:
            self.speculated.pop(uri, None)
            return
        after = SyntaxDocument(accepted, language)
        position = after.position_at(cursor)
        try:
            ctx = after.context_at(position.line, position.character, self.budget)
        except UnsupportedDocument:
            return
        key = self.cache.key(ctx.prefix, ctx.suffix)
        if (ctx.prefix, ctx.suffix) in self.cache or key in self.speculating:
            return
        self.speculating.add(key)
        self.stats.count("speculativeStarted")
        try:
            _, suggestions = await self.engine.run(
                f"speculative {uri}",
                self._model_work(
                    uri, ctx, self.snippets_for(uri, ctx), candidate_seeds(1, self.options.seed)
                ),
                background=True,
            )
        except (Cancelled, RuntimeError):
            self.stats.count("speculativeCancelled")
            self.speculated.pop(uri, None)  # may be tried again
            return  # a real request came first, or the engine went away
        finally:
            self.speculating.discard(key)
        self.stats.count("speculativeFinished")
        self.cache.put(ctx.prefix, ctx.suffix, suggestions, speculative=True)


# --- handlers ----------------------------------------------------------------------------------------


def initialize(ls: DgemmaServer, params: types.InitializeParams) -> None:
    raw = params.initialization_options
    ls.init_options = raw if isinstance(raw, dict) else {}
    ls.options, problem = parse_options(raw)
    ls.debouncer.fixed_ms = ls.options.debounce_ms
    attach_client_logging(ls)
    if problem:
        log.warning(problem)
        ls.show(f"dgemma-lsp: {problem}", types.MessageType.Warning)


def initialized(ls: DgemmaServer, params: types.InitializedParams) -> None:
    if not ls.started_with:  # else settings sent before `initialized` started it already
        ls.start_engine()


async def did_change_configuration(ls: DgemmaServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    if isinstance(settings, dict) and SETTINGS_SECTION in settings:
        settings = settings[SETTINGS_SECTION]
    elif settings is None:
        workspace = ls.client_capabilities.workspace
        if workspace is None or not workspace.configuration:
            return
        try:
            pulled = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SETTINGS_SECTION)])
            )
        except Exception as exc:  # the client's failure: keep the options in effect, no pop-up
            log.warning("workspace/configuration failed (%s); the settings stay as they were", exc)
            return
        settings = pulled[0] if pulled else None
    await ls.apply_settings(settings or {})


def did_open(ls: DgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents.pop(item.uri, None)  # opened again: the most recent now
    language = language_for(item.language_id, item.uri)
    ls.documents[item.uri] = SyntaxDocument(item.text, language)
    # No languageId (some clients send ""): the language its name gives, for the per-language switches.
    ls.language_ids[item.uri] = item.language_id or language or ""
    ls.changes[item.uri] += 1  # its text is new: a request waiting out its debounce is outdated


def did_change(ls: DgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.documents.get(uri)
    if doc is None:
        return
    for change in params.content_changes:
        doc.apply_change(change.text, getattr(change, "range", None))
    ls.documents[uri] = ls.documents.pop(uri)  # the most recently changed last
    ls.changes[uri] += 1
    ls.debouncer.typed(uri)


def did_close(ls: DgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.documents.pop(uri, None)
    ls.open_files.forget(uri)
    ls.language_ids.pop(uri, None)
    ls.changes.pop(uri, None)
    ls.speculated.pop(uri, None)
    ls.refused.discard(uri)
    ls.debouncer.forget(uri)
    ls.engine.forget(uri)
    for (pending_uri, _), task in list(ls.pending.items()):
        if pending_uri == uri:
            task.cancel()  # a request still waiting out its debounce, or the model's: no one wants it now


def _range(position: types.Position, suggestion: Suggestion) -> types.Range:
    end = types.Position(line=position.line, character=position.character + suggestion.replace)
    return types.Range(start=position, end=end)


async def inline_completion(
    ls: DgemmaServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    uri = params.text_document.uri
    position = ls.position_in(uri, params.position)
    selected = params.context.selected_completion_info
    if selected is None:
        found = await ls.suggest(uri, position, invoked=invoked, method=types.TEXT_DOCUMENT_INLINE_COMPLETION)
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=s.text, range=_range(position, s)) for s in found]
        )
    # The spec: items extend the selected item's text over its range (VS Code shows no other while its
    # suggest widget is open). Only for an item on the cursor line, around the cursor.
    start, end = ls.position_in(uri, selected.range.start), ls.position_in(uri, selected.range.end)
    if (
        not start.line == position.line == end.line
        or not start.character <= position.character <= end.character
    ):
        return types.InlineCompletionList(items=[])
    found = await ls.suggest(
        uri, position, invoked=invoked, method=types.TEXT_DOCUMENT_INLINE_COMPLETION, selected=selected
    )
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=selected.text + s.text,
                range=types.Range(
                    start=start, end=types.Position(line=end.line, character=end.character + s.replace)
                ),
            )
            for s in found
        ]
    )


async def completion(ls: DgemmaServer, params: types.CompletionParams) -> types.CompletionList:
    """For clients without inline completion: one item per suggestion, each holding the whole middle."""
    # Always as typed: clients that open the completion list while typing send Invoked on every keystroke
    # (LSP's Invoked covers "typing an identifier"), and a list needs no candidates to cycle through.
    position = ls.position_in(params.text_document.uri, params.position)
    found = await ls.suggest(
        params.text_document.uri, position, invoked=False, method=types.TEXT_DOCUMENT_COMPLETION
    )
    items = []
    for rank_, s in enumerate(found):
        first_line = s.text.strip().splitlines()[0]
        items.append(
            types.CompletionItem(
                label=first_line if len(first_line) <= 60 else first_line[:57] + "...",
                kind=types.CompletionItemKind.Snippet,
                detail="DiffusionGemma",
                documentation=s.text,
                text_edit=types.TextEdit(range=_range(position, s), new_text=s.text),
                insert_text_format=types.InsertTextFormat.PlainText,
                filter_text=s.text,
                sort_text=str(rank_),
            )
        )
    # Incomplete: typing more must ask again rather than filter these suggestions.
    return types.CompletionList(is_incomplete=True, items=items)


def code_action(ls: DgemmaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    """Fill the selection when there is one, and each hole marker in the requested lines."""
    uri, where = params.text_document.uri, params.range
    doc = ls.documents.get(uri)
    if doc is None or not ls.completes(uri):
        return []
    actions = []
    if where.start != where.end:
        actions.append(_fill_action("Fill selection with DiffusionGemma", uri, where))
    for line in range(where.start.line, min(where.end.line, where.start.line + MAX_HOLE_LINES) + 1):
        start = doc.offset_at(line, 0)
        for a, b in find_holes(doc.text[start : doc.offset_at(line, 2**31)]):
            hole = types.Range(start=doc.position_at(start + a), end=doc.position_at(start + b))
            actions.append(_fill_action("Fill hole with DiffusionGemma", uri, hole))
    return actions


def _fill_action(title: str, uri: str, span: types.Range) -> types.CodeAction:
    return types.CodeAction(
        title=title,
        kind=types.CodeActionKind.RefactorRewrite,
        command=types.Command(title=title, command=FILL_COMMAND, arguments=[uri, span]),
    )


async def fill_range(ls: DgemmaServer, uri: str, span: types.Range) -> dict[str, Any]:
    """Replace `span` with the model's best middle through workspace/applyEdit."""
    doc = ls.documents.get(uri)
    if doc is None:
        raise JsonRpcInvalidParams(f"{FILL_COMMAND}: {uri} is not open")
    if not ls.engine.accepting:
        ls.show(f"dgemma-lsp: {ls.status()['message']}", types.MessageType.Warning)
        return {"applied": False}
    start, end = fill_span(
        doc.text,
        doc.offset_at(span.start.line, span.start.character),
        doc.offset_at(span.end.line, span.end.character),
    )
    before = doc.text
    try:
        ctx = fill_context(doc, start, end, ls.budget)
    except UnsupportedDocument as exc:
        raise JsonRpcInvalidParams(f"{FILL_COMMAND}: {exc}") from None
    try:  # a job per span: a fill supersedes an older one of the same span only
        completions, found = await ls.run_model(f"fill {uri} {start}:{end}", uri, ctx, ls.options.candidates)
    except Cancelled:  # a result, not an error: editors show a failed command's error as a failure
        ls.stats.count("cancelled")
        ls.show(
            "dgemma-lsp: the fill was cancelled (filled again, or the model reloaded).",
            types.MessageType.Info,
        )
        return {"applied": False}
    if ls.documents.get(uri) is not doc or doc.text != before:
        ls.show(
            "dgemma-lsp: the document changed while filling; nothing was replaced.", types.MessageType.Info
        )
        return {"applied": False}
    if not found:
        if any(c.broke_syntax for c in completions):
            why = "each fill the model wrote would break the code (syntaxCheck)"
        else:
            why = "the model had nothing to fill in"
        ls.show(f"dgemma-lsp: {why}.", types.MessageType.Info)
        return {"applied": False}
    best = found[0]
    last = doc.position_at(end)
    edit = types.TextEdit(
        range=types.Range(
            start=doc.position_at(start),
            end=types.Position(line=last.line, character=last.character + best.replace),
        ),
        new_text=best.text,
    )
    result = await ls.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(
            label="Fill with DiffusionGemma", edit=types.WorkspaceEdit(changes={uri: [edit]})
        )
    )
    return {"applied": result.applied, "text": best.text}


def stats(ls: DgemmaServer, params: Any) -> dict[str, Any]:
    return {
        **ls.stats.report(len(ls.cache)),
        "status": ls.status(),
        "options": msgspec.to_builtins(ls.options),
    }


def shutdown(ls: DgemmaServer, params: Any) -> None:
    ls.engine.close()


def exit_(ls: DgemmaServer, params: Any) -> None:
    # pygls closes stdout next. A model still loading goes on logging, and each record sent to the closed
    # pipe made pygls report the failure by sending again: thousands of tracebacks on stderr.
    detach_client_logging()


def create_server(
    model: str | None = None,
    device: str | None = None,
    backend: str | None = None,
    kernels: str | None = None,
) -> DgemmaServer:
    """A server with every handler registered; `model`/`device`/`backend` come from the command line."""
    ls = DgemmaServer(model, device, backend, kernels)
    ls.feature(types.INITIALIZE)(initialize)
    ls.feature(types.INITIALIZED)(initialized)
    ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    ls.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    # pygls leaves inlineCompletionProvider out of the capabilities unless given options.
    ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)
    ls.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite]),
    )(code_action)
    ls.command(FILL_COMMAND)(fill_range)
    ls.feature(STATS)(stats)
    ls.feature(types.SHUTDOWN)(shutdown)
    ls.feature(types.EXIT)(exit_)
    return ls
