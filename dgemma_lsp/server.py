"""The language server: thin LSP handlers over the context step, the engine and post-processing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from dgemma_lsp import __version__
from dgemma_lsp.context import ContextBudget, SyntaxDocument, UnsupportedDocument, language_for
from dgemma_lsp.engine import Cancelled, Completion, Engine, EngineState
from dgemma_lsp.log import attach_client_logging
from dgemma_lsp.options import MODEL_ENV, Options, parse_options, resolve_model_path

log = logging.getLogger(__name__)

NO_MODEL_HELP = (
    "dgemma-lsp has no model, so it offers no completions. Download a DiffusionGemma checkpoint "
    "(e.g. `hf download google/diffusiongemma-26B-A4B-it --local-dir ~/models/diffusiongemma`) and point "
    f"the server at it with `--model DIR`, ${MODEL_ENV}, or the `modelPath` initialization option."
)


class DgemmaProtocol(LanguageServerProtocol):
    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Any:
        # Our document model counts columns in UTF-16 (the LSP default); without this pygls would
        # agree to UTF-8 with clients such as Neovim that offer it first.
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = None
        return (yield from super().lsp_initialize(params))


class DgemmaServer(LanguageServer):
    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        super().__init__("dgemma-lsp", __version__, protocol_cls=DgemmaProtocol)
        self.cli_model = model
        self.cli_device = device
        self.options = Options()
        self.engine = Engine()
        self.documents: dict[str, SyntaxDocument] = {}
        self.refused: set[str] = set()  # documents we already told the user we can't complete

    @property
    def budget(self) -> ContextBudget:
        o = self.options
        return ContextBudget(
            prefix_tokens=o.prefix_tokens,
            suffix_tokens=o.suffix_tokens,
            line_middle_tokens=o.line_middle_tokens,
            block_middle_tokens=o.block_middle_tokens,
        )

    def show(self, message: str, kind: types.MessageType) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def start_engine(self) -> None:
        loop = asyncio.get_running_loop()

        def on_state(state: EngineState, message: str) -> None:
            loop.call_soon_threadsafe(self._report_state, state, message)

        path = resolve_model_path(self.cli_model, self.options)
        self.engine.start(
            path,
            device=self.cli_device or self.options.device,
            max_denoising_steps=self.options.max_denoising_steps,
            on_state=on_state,
        )

    def _report_state(self, state: EngineState, message: str) -> None:
        if state is EngineState.NO_MODEL:
            log.warning(NO_MODEL_HELP)
            self.show(NO_MODEL_HELP, types.MessageType.Warning)
        elif state is EngineState.ERROR:
            log.error(message)
            self.show(f"dgemma-lsp: {message}", types.MessageType.Error)
        else:
            log.info(message)

    async def suggest(self, uri: str, position: types.Position) -> tuple[Completion, types.Range] | None:
        """The post-processed middle at `position`, or None when there is nothing to offer."""
        doc = self.documents.get(uri)
        if doc is None or not self.engine.accepting:
            return None
        try:
            ctx = doc.context_at(position.line, position.character, self.budget)
        except UnsupportedDocument as exc:
            if uri not in self.refused:
                self.refused.add(uri)
                log.warning("%s: %s", uri, exc)
                self.show(f"dgemma-lsp: {exc}", types.MessageType.Warning)
            return None
        try:
            completion = await self.engine.fill(uri, ctx, seed=self.options.seed)
        except Cancelled:
            # Superseded by a newer request for this document: the task ends as cancelled,
            # which pygls answers with RequestCancelled (-32800).
            raise asyncio.CancelledError("superseded by a newer request") from None
        log.info(
            "completion at %s:%d:%d: %d chars, %d steps, %.0f ms",
            uri,
            position.line,
            position.character,
            len(completion.text),
            completion.steps,
            completion.total_ms,
        )
        if not completion.text:
            return None
        return completion, types.Range(start=position, end=position)


def initialize(ls: DgemmaServer, params: types.InitializeParams) -> None:
    ls.options, problem = parse_options(params.initialization_options)
    attach_client_logging(ls)
    if problem:
        log.warning(problem)
        ls.show(f"dgemma-lsp: {problem}", types.MessageType.Warning)


def initialized(ls: DgemmaServer, params: types.InitializedParams) -> None:
    ls.start_engine()


def did_open(ls: DgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents[item.uri] = SyntaxDocument(item.text, language_for(item.language_id, item.uri))


def did_change(ls: DgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = ls.documents.get(params.text_document.uri)
    if doc is None:
        return
    for change in params.content_changes:
        doc.apply_change(change.text, getattr(change, "range", None))
    ls.refused.discard(params.text_document.uri)


def did_close(ls: DgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.documents.pop(params.text_document.uri, None)
    ls.refused.discard(params.text_document.uri)


async def inline_completion(
    ls: DgemmaServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    found = await ls.suggest(params.text_document.uri, params.position)
    if found is None:
        return types.InlineCompletionList(items=[])
    completion, where = found
    return types.InlineCompletionList(
        items=[types.InlineCompletionItem(insert_text=completion.text, range=where)]
    )


async def completion(ls: DgemmaServer, params: types.CompletionParams) -> types.CompletionList:
    """For clients without inline completion: one item holding the whole (multi-line) middle."""
    found = await ls.suggest(params.text_document.uri, params.position)
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    completion, where = found
    first_line = completion.text.strip().splitlines()[0]
    item = types.CompletionItem(
        label=first_line if len(first_line) <= 60 else first_line[:57] + "...",
        kind=types.CompletionItemKind.Snippet,
        detail="DiffusionGemma",
        documentation=completion.text,
        text_edit=types.TextEdit(range=where, new_text=completion.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        filter_text=completion.text,
        sort_text="0",
    )
    # Incomplete: typing more must ask again rather than filter this one suggestion.
    return types.CompletionList(is_incomplete=True, items=[item])


def shutdown(ls: DgemmaServer, params: Any) -> None:
    ls.engine.close()


def create_server(model: str | None = None, device: str | None = None) -> DgemmaServer:
    """A server with every handler registered; `model`/`device` come from the command line."""
    ls = DgemmaServer(model, device)
    ls.feature(types.INITIALIZE)(initialize)
    ls.feature(types.INITIALIZED)(initialized)
    ls.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    # pygls leaves inlineCompletionProvider out of the capabilities unless given options.
    ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)
    ls.feature(types.SHUTDOWN)(shutdown)
    return ls
