"""LSP latency replay: realistic typing against the real server, for two configurations in one run.

The client behaves like Neovim's built-in inline completion (the harder case for a server: it never
cancels superseded requests): every keystroke is a didChange, an automatic request follows each pause
longer than the debounce, an invoked request ends each edit site, half of the non-empty invoked
suggestions are accepted, some keystrokes are typos fixed with backspace, and the cursor jumps between
sites. Each configuration is a set of initializationOptions; the script is the same for both (seeded).
Typing starts once the server says its model is loaded (`dgemma/status`), so that a configuration that
loads slowly (compiling, say) is timed apart (`ready_s`) instead of inside its first requests.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled
from pygls.lsp.client import LanguageClient

from dgemma_lsp.context import language_for
from dgemma_lsp.server import STATUS

DEBOUNCE_S = 0.2  # Neovim's fixed inline-completion debounce
READY_TIMEOUT_S = 600.0  # the longest a model may take to load (a cold compile, a large checkpoint)


@dataclass
class Keystroke:
    """One editor event: replace `start..end` (UTF-16 columns on `line`) with `text`, then wait `pause`."""

    line: int
    start: int
    end: int
    text: str
    pause: float
    invoke: bool = False  # an explicit trigger (Invoked) after this event
    jump: bool = False  # the cursor arrived here from elsewhere


@dataclass
class Sample:
    kind: str  # "automatic" | "invoked"
    ms: float
    outcome: str  # "items" | "empty" | "cancelled" | "error"


@dataclass
class RunReport:
    name: str
    options: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    accepted: int = 0
    stats: dict[str, Any] | None = None  # the server's dgemma/stats, when it has that request
    ready_s: float | None = None  # from initialize until the server left the loading state

    def summary(self) -> dict[str, Any]:
        n = len(self.samples)

        def pct(q: float, kind: str | None = None) -> float | None:
            answered = [
                s.ms for s in self.samples if s.outcome in ("items", "empty") and kind in (None, s.kind)
            ]
            # inclusive: between the samples (the default extrapolates: [100, 200] had a p95 of 285)
            cuts = statistics.quantiles(answered, n=100, method="inclusive") if len(answered) > 1 else None
            return cuts[round(q * 100) - 1] if cuts else None

        return {
            "name": self.name,
            "options": self.options,
            "ready_s": self.ready_s,
            "requests": n,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            # Invoked requests skip the debounce: the model's own latency as the editor sees it.
            "invoked_p50_ms": pct(0.50, "invoked"),
            "automatic_p50_ms": pct(0.50, "automatic"),
            "cancelled_fraction": sum(s.outcome == "cancelled" for s in self.samples) / n if n else None,
            "empty_fraction": sum(s.outcome == "empty" for s in self.samples) / n if n else None,
            "errors": sum(s.outcome == "error" for s in self.samples),
            "accepted": self.accepted,
            "cache_hit_rate": (self.stats or {}).get("cache", {}).get("hitRate"),
            "steps_per_completion": (self.stats or {}).get("stepsPerCompletion"),
            "server_stats": self.stats,
        }


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def script(text: str, *, sites: int, rng: random.Random, typo_rate: float = 0.05) -> list[Keystroke]:
    """Edit sites: erase the end of a code line, then retype it with pauses, typos and a final trigger."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if len(line.strip()) >= 8]
    events: list[Keystroke] = []
    for number in sorted(rng.sample(candidates, min(sites, len(candidates)))):
        line = lines[number]
        indent = len(line) - len(line.lstrip())
        cut = rng.randint(indent + 1, len(line) - 1)
        rest = line[cut:]
        col = utf16(line[:cut])
        events.append(Keystroke(number, col, col + utf16(rest), "", pause=0.3, jump=True))
        for ch in rest:
            if rng.random() < typo_rate:  # a wrong key, noticed, erased
                events.append(Keystroke(number, col, col, "#", pause=rng.uniform(0.05, 0.15)))
                events.append(Keystroke(number, col, col + 1, "", pause=rng.uniform(0.05, 0.15)))
            thinking = ch in " (.,=:" and rng.random() < 0.3
            pause = rng.uniform(0.3, 0.8) if thinking else rng.uniform(0.04, 0.12)
            events.append(Keystroke(number, col, col, ch, pause=pause))
            col += utf16(ch)
        events[-1].invoke = True
    return events


class Replayer:
    def __init__(self, server: list[str], options: dict[str, Any]) -> None:
        self.server = server
        self.options = options
        self.client = LanguageClient("dgemma-replay", "1")
        self.pending: set[asyncio.Task[str]] = set()
        self.loaded = asyncio.Event()  # the server's state is past "loading" (ready, busy or error)
        self.client.feature(types.WINDOW_LOG_MESSAGE)(lambda params: None)
        self.client.feature(types.WINDOW_SHOW_MESSAGE)(lambda params: None)

        @self.client.feature(STATUS)
        def status(params: Any) -> None:
            if getattr(params, "state", None) != "loading":
                self.loaded.set()

    async def __aenter__(self) -> Replayer:
        await self.client.start_io(*self.server)
        if self.client._server is not None and self.client._server.stderr is not None:
            # The server logs to stderr; drain it so a full pipe never blocks the server.
            stderr = self.client._server.stderr
            self._drain = asyncio.ensure_future(_drain(stderr))
        await self.client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(
                    text_document=types.TextDocumentClientCapabilities(
                        inline_completion=types.InlineCompletionClientCapabilities()
                    )
                ),
                initialization_options=self.options,
            )
        )
        self.client.initialized(types.InitializedParams())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()

    async def request(self, report: RunReport, uri: str, position: types.Position, kind: str) -> str:
        trigger = types.InlineCompletionTriggerKind.Invoked if kind == "invoked" else (
            types.InlineCompletionTriggerKind.Automatic
        )  # fmt: skip
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=position,
            context=types.InlineCompletionContext(trigger_kind=trigger),
        )
        start = time.perf_counter()
        text = ""
        try:
            result = await self.client.text_document_inline_completion_async(params)
            items = getattr(result, "items", result) or []
            text = items[0].insert_text if items else ""
            outcome = "items" if text else "empty"
        except JsonRpcRequestCancelled:
            outcome = "cancelled"
        except JsonRpcException:
            outcome = "error"
        report.samples.append(Sample(kind, (time.perf_counter() - start) * 1000, outcome))
        return text if isinstance(text, str) else text.value

    def change(self, uri: str, version: int, where: types.Range, text: str) -> None:
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(range=where, text=text)],
            )
        )

    async def run(self, report: RunReport, files: list[Path], sites: int, seed: int) -> None:
        began = time.perf_counter()
        await asyncio.wait_for(self.loaded.wait(), READY_TIMEOUT_S)
        report.ready_s = time.perf_counter() - began
        rng = random.Random(seed)
        for path in files:
            text = path.read_text(encoding="utf-8")
            uri = path.resolve().as_uri()
            self.client.text_document_did_open(
                types.DidOpenTextDocumentParams(
                    text_document=types.TextDocumentItem(
                        uri=uri, language_id=language_for(None, uri) or "plaintext", version=1, text=text
                    )
                )
            )
            version = 1
            for key in script(text, sites=sites, rng=rng):
                version += 1
                self.change(uri, version, _range(key.line, key.start, key.end), key.text)
                cursor = types.Position(line=key.line, character=key.start + utf16(key.text))
                if key.invoke:
                    suggestion = await self.request(report, uri, cursor, "invoked")
                    accept = rng.random() < 0.5  # drawn either way: the next file's script stays the same
                    if suggestion and accept:  # accept, then put the file back (a jump follows)
                        report.accepted += 1
                        version += 1
                        self.change(
                            uri, version, _range(cursor.line, cursor.character, cursor.character), suggestion
                        )
                        version += 1
                        self.client.text_document_did_change(
                            types.DidChangeTextDocumentParams(
                                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                                content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                            )
                        )
                elif key.pause >= DEBOUNCE_S:  # the editor's debounce timer fires during this pause
                    task = asyncio.ensure_future(self.request(report, uri, cursor, "automatic"))
                    self.pending.add(task)
                    task.add_done_callback(self.pending.discard)
                await asyncio.sleep(key.pause)
            if self.pending:
                await asyncio.gather(*self.pending)
        try:
            report.stats = _plain(await self.client.protocol.send_request_async("dgemma/stats", {}))
        except JsonRpcException:
            report.stats = None  # a server without the stats request


def _plain(value: Any) -> Any:
    """pygls hands back results of custom requests as namedtuples; turn them back into JSON shapes."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def _range(line: int, start: int, end: int) -> types.Range:
    return types.Range(
        start=types.Position(line=line, character=start), end=types.Position(line=line, character=end)
    )


async def replay(
    configs: dict[str, dict[str, Any]], files: list[Path], *, server_flags: list[str], sites: int, seed: int
) -> list[dict[str, Any]]:
    """`server_flags` go on each server's command line (where they win over the configurations)."""
    server = [sys.executable, "-m", "dgemma_lsp", "--stdio", *server_flags]
    summaries = []
    for name, options in configs.items():
        report = RunReport(name, options)
        async with Replayer(server, options) as replayer:
            await replayer.run(report, files, sites, seed)
        summaries.append(report.summary())
    return summaries


def ratios(summaries: list[dict[str, Any]]) -> dict[str, float | None]:
    """Latency of the first configuration over the second: > 1 means the second is faster."""
    first, second = summaries[0], summaries[1]

    def ratio(key: str) -> float | None:
        a, b = first[key], second[key]
        return a / b if a and b else None

    return {"p50": ratio("p50_ms"), "p95": ratio("p95_ms")}
