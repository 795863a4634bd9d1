"""The real `dgemma-lsp --stdio` subprocess under a real LSP client (pytest-lsp over pygls)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

from dgemma_lsp import options
from dgemma_lsp.context import SyntaxDocument
from dgemma_lsp.edits import FILL_COMMAND
from dgemma_lsp.postprocess import syntax_errors

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SERVER = [sys.executable, "-m", "dgemma_lsp", "--stdio"]
SOURCE = '''import os


def read_config(path):
    """Return the parsed config file."""
    with open(path) as f:
        data = f.read()
    return data


def greet(name):
    message = "Hello, " + 
    print(message)
'''
URI = "file:///work/demo/config.py"
HOLE = types.Position(line=11, character=26)  # the end of `    message = "Hello, " + `
SEED = 7
# The tiny checkpoint's random weights seldom write code that parses: sessions that need items from it
# keep what the syntax check would drop (tests/test_postprocess.py and test_engine.py test the check).
RANDOM_WEIGHTS = {"syntaxCheck": False}


def client_capabilities(utf8_first: bool = True) -> types.ClientCapabilities:
    """What Neovim 0.12 sends, in the parts that matter here (it offers utf-8 first)."""
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(
            position_encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]
            if utf8_first
            else None
        ),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            synchronization=types.TextDocumentSyncClientCapabilities(),
        ),
        window=types.WindowClientCapabilities(work_done_progress=True),
    )


async def start(init_options: dict | None, *args: str) -> tuple[LanguageClient, types.InitializeResult]:
    client = await ClientServerConfig(server_command=[*SERVER, *args]).start()
    result = await client.initialize_session(
        types.InitializeParams(capabilities=client_capabilities(), initialization_options=init_options)
    )
    return client, result


async def stop(client: LanguageClient) -> int | None:
    await client.shutdown_session()
    await client.stop()
    return client._server.returncode if client._server else None


def open_doc(client: LanguageClient, text: str = SOURCE, uri: str = URI, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
        )
    )


def inline_params(position: types.Position, uri: str = URI) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


def cli_complete(model: Path, text: str, position: types.Position, tmp_path: Path) -> dict:
    """The same completion through `dgemma-lsp complete --json`: the server must agree with it."""
    source = tmp_path / "config.py"
    source.write_bytes(text.encode())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dgemma_lsp",
            "complete",
            str(source),
            "--line",
            str(position.line),
            "--character",
            str(position.character),
            "--model",
            str(model),
            "--seed",
            str(SEED),
            "--no-syntax-check",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session(tiny_checkpoint: Path):
    # One candidate per invoked request, as `dgemma-lsp complete` computes one; no speculative work
    # competing with the CLI runs (tests/e2e/test_completions.py covers speculation). Random weights
    # write code that seldom parses: no syntax check (RANDOM_WEIGHTS), here and in the CLI.
    options = {"modelPath": str(tiny_checkpoint), "seed": SEED, "candidates": 1, "speculate": False}
    client, result = await start(options | RANDOM_WEIGHTS)
    open_doc(client)
    yield client, result
    assert await stop(client) == 0


async def test_capabilities(session) -> None:
    _, result = session
    caps = result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    # UTF-16 even though the client offered UTF-8 first.
    assert caps.position_encoding in (None, types.PositionEncodingKind.Utf16)
    assert result.server_info.name == "dgemma-lsp"


async def test_inline_completion_matches_cli(session, tiny_checkpoint: Path, tmp_path: Path) -> None:
    client, _ = session
    result = await client.text_document_inline_completion_async(inline_params(HOLE))
    expected = cli_complete(tiny_checkpoint, SOURCE, HOLE, tmp_path)
    assert expected["text"], "pick a seed whose middle survives post-processing"
    assert [item.insert_text for item in result.items] == [expected["text"]]
    item = result.items[0]
    assert item.range == types.Range(start=HOLE, end=HOLE)
    assert "\n" not in item.insert_text  # mid-line cursor: the middle is the rest of the line


async def test_a_column_past_the_line_end_is_the_line_end(session) -> None:
    # The LSP spec: a character value past the line's length defaults back to the line's length.
    client, _ = session
    end = types.Position(line=12, character=len(SOURCE.splitlines()[12]))
    past = await client.text_document_inline_completion_async(
        inline_params(types.Position(line=12, character=99))
    )
    at_end = await client.text_document_inline_completion_async(inline_params(end))
    assert past.items, "pick a seed whose middle survives post-processing"
    assert [(i.insert_text, i.range) for i in past.items] == [(i.insert_text, i.range) for i in at_end.items]
    assert past.items[0].range.start == end


async def test_completion_fallback_has_the_same_middle(session) -> None:
    client, _ = session
    inline = await client.text_document_inline_completion_async(inline_params(HOLE))
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=URI), position=HOLE)
    )
    assert len(result.items) == 1
    assert result.items[0].text_edit.new_text == inline.items[0].insert_text


async def test_incremental_change_then_complete(session, tiny_checkpoint: Path, tmp_path: Path) -> None:
    client, _ = session
    # Type a non-ASCII string literal before the hole, then a second edit on another line.
    edits = [
        (types.Range(start=HOLE, end=HOLE), '"wörld 🌍" + '),
        (
            types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=9)),
            "import sys",
        ),
    ]
    for version, (where, text) in enumerate(edits, start=2):
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                content_changes=[types.TextDocumentContentChangePartial(range=where, text=text)],
            )
        )
    lines = SOURCE.split("\n")
    lines[0] = "import sys"
    lines[11] += '"wörld 🌍" + '
    edited = "\n".join(lines)
    hole = types.Position(line=11, character=26 + len('"wörld 🌍" + '.encode("utf-16-le")) // 2)
    result = await client.text_document_inline_completion_async(inline_params(hole))
    expected = cli_complete(tiny_checkpoint, edited, hole, tmp_path)
    assert [item.insert_text for item in result.items] == ([expected["text"]] if expected["text"] else [])


async def test_cancel_request_answers_request_cancelled(session) -> None:
    client, _ = session
    pending = asyncio.ensure_future(
        client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(HOLE), msg_id="to-cancel"
        )
    )
    await asyncio.sleep(0.3)  # let the denoiser get going
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="to-cancel"))
    with pytest.raises(JsonRpcRequestCancelled):
        await pending
    # The server is still fine afterwards.
    assert (await client.text_document_inline_completion_async(inline_params(HOLE))).items


async def test_newer_request_supersedes_older_one(session) -> None:
    client, _ = session
    spot = types.Position(line=7, character=4)  # not asked for before: the cache does not answer it
    older = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(spot)))
    await asyncio.sleep(0.3)
    newer = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(spot)))
    with pytest.raises(JsonRpcRequestCancelled):
        await older
    assert (await newer).items


async def test_binary_document_gets_no_items_and_a_message(session) -> None:
    client, _ = session
    uri = "file:///work/demo/blob.py"
    open_doc(client, text="abc\x00\x01\x02def\n", uri=uri)
    result = await client.text_document_inline_completion_async(
        inline_params(types.Position(line=0, character=3), uri)
    )
    assert result.items == ()
    for version in (2, 3):  # typing on in it: told once, not on every keystroke
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=f"abc\x00{version}\n")],
            )
        )
        again = await client.text_document_inline_completion_async(
            inline_params(types.Position(line=0, character=3), uri)
        )
        assert again.items == ()
    await asyncio.sleep(0.1)
    assert len([m for m in client.messages if "binary" in m.message.lower()]) == 1


async def raw_session(messages: list[dict | bytes]) -> tuple[list[dict], subprocess.CompletedProcess]:
    """The server fed these JSON-RPC messages (bytes: a body as it is), then the end of its input: its
    replies, and how it ended."""
    bodies = [m if isinstance(m, bytes) else json.dumps({"jsonrpc": "2.0", **m}).encode() for m in messages]
    stdin = b"".join(b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies)
    out = await asyncio.to_thread(subprocess.run, SERVER, input=stdin, capture_output=True, timeout=120)
    headers = rb"Content-Length: \d+\r\n(?:.+\r\n)*\r\n"
    return [json.loads(body) for body in re.split(headers, out.stdout)[1:]], out


def initialize(options: dict | None = None) -> list[dict]:
    params = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}
    return [{"id": 1, "method": "initialize", "params": params}, {"method": "initialized", "params": {}}]


async def test_client_mistakes_get_answers_not_error_popups() -> None:
    """Raw JSON-RPC, as a conforming client cannot send it: a negative line gets InvalidParams naming the
    field (pygls alone would drop the request and pop up "Invalid Params"); a notification that doesn't fit
    its type is ignored and the client's log names the field; a change to a document never opened is
    ignored (pygls's copy of the documents popped up a KeyError); the server stays up."""
    position = {"line": -1, "character": 0}
    replies, out = await raw_session([
        *initialize(),
        {"id": 2, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION, "params": {
            "textDocument": {"uri": URI}, "position": position, "context": {"triggerKind": 1}}},
        {"method": types.TEXT_DOCUMENT_DID_OPEN, "params": {"textDocument": {"uri": URI, "text": "x = 1"}}},
        {"method": types.TEXT_DOCUMENT_DID_CHANGE, "params": {
            "textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": "x = 1"}]}},
        {"id": 4, "method": "dgemma/stats"},  # no params: JSON-RPC allows it, pygls's own type did not
        {"id": 3, "method": "shutdown"},
        {"method": "exit"},
    ])  # fmt: skip
    answers = {r["id"]: r for r in replies if "id" in r}
    assert answers[2]["error"]["code"] == -32602
    assert "invalid value @ $.params.position" in answers[2]["error"]["message"]
    assert answers[3]["result"] is None and out.returncode == 0
    assert answers[4]["result"]["requests"] == 0  # the malformed request never reached the model
    popups = [r["params"] for r in replies if r.get("method") == "window/showMessage"]
    assert not [p for p in popups if p["type"] == types.MessageType.Error], popups
    logged = [r["params"]["message"] for r in replies if r.get("method") == "window/logMessage"]
    assert any("didOpen notification ignored" in m and "languageId" in m for m in logged), logged


async def test_messages_out_of_turn_or_not_json_rpc_are_answered_as_the_specs_say() -> None:
    """A request before initialize gets ServerNotInitialized and one after shutdown InvalidRequest (pygls
    served the first and left the second unanswered); a second initialize gets InvalidRequest and a second
    initialized is ignored (pygls served both, and the model was loaded twice); a body that is no JSON gets
    Parse error and JSON that is no JSON-RPC message Invalid Request, both with a null id (pygls popped up
    "Error in server" and wrote tracebacks on stderr); a command left without arguments gets InvalidParams
    (pygls called it with none: an internal error); an answered error is a line on stderr, not a traceback."""
    inline = {
        "textDocument": {"uri": URI},
        "position": {"line": 0, "character": 0},
        "context": {"triggerKind": 1},
    }
    replies, out = await raw_session([
        {"id": 1, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION, "params": inline},
        *[{**m, "id": 2} if "id" in m else m for m in initialize()],
        *[{**m, "id": 7} if "id" in m else m for m in initialize()],
        b'{"jsonrpc": "2.0", "id": 3, "method": ',
        b"[1, 2]",
        {"id": 6, "method": "workspace/executeCommand", "params": {"command": FILL_COMMAND}},
        {"id": 4, "method": "shutdown"},
        {"id": 5, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION, "params": inline},
        {"method": "exit"},
    ])  # fmt: skip
    errors = [(r.get("id"), r["error"]["code"]) for r in replies if "error" in r]
    expected = [(1, -32002), (7, -32600), (None, -32700), (None, -32600), (6, -32602), (5, -32600)]
    assert errors == expected, replies
    logged = [r["params"]["message"] for r in replies if r.get("method") == "window/logMessage"]
    assert len([m for m in logged if m.startswith("Loading model")]) == 1, logged
    assert [r["result"] for r in replies if r.get("id") == 4] == [None] and out.returncode == 0
    assert not [r for r in replies if r.get("method") == "window/showMessage" and r["params"]["type"] == 1]
    assert b"Traceback" not in out.stderr, out.stderr.decode()[-3000:]


async def test_a_client_gone_while_the_model_loads_ends_the_server_quietly(tiny_checkpoint: Path) -> None:
    """The input ends (the editor quit) before the model has loaded: exit 1, as without a shutdown, and
    no traceback from the engine telling a closed event loop it is ready."""
    _, out = await raw_session(initialize({"modelPath": str(tiny_checkpoint)}))
    assert out.returncode == 1
    assert b"Traceback" not in out.stderr, out.stderr.decode()[-2000:]


async def test_an_exit_while_the_model_loads_is_quiet(tiny_checkpoint: Path) -> None:
    """Shutdown and exit before the model has loaded (an editor opened and closed at once): exit 0, and no
    traceback from logging the load to a client whose pipe pygls has closed."""
    replies, out = await raw_session([
        *initialize({"modelPath": str(tiny_checkpoint)}), {"id": 2, "method": "shutdown"}, {"method": "exit"}
    ])  # fmt: skip
    assert [r["result"] for r in replies if r.get("id") == 2] == [None] and out.returncode == 0
    assert b"Traceback" not in out.stderr, out.stderr.decode()[:3000]


async def test_without_a_configured_model_the_bundled_one_completes(monkeypatch) -> None:
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    client, result = await start({"seed": SEED})
    assert result.capabilities.inline_completion_provider is not None
    # Code like the lines above the cursor in another open file: this model completes worse with such
    # snippets in its prompt, so it is shown none unless `openFilesTokens` asks.
    other = (
        "def greet_all(names, path):\n    for name in names:\n        greet(name)\n        log(name, path)\n"
    )
    open_doc(client, other, "file:///work/demo/greetings.py")
    open_doc(client)
    completion = await client.text_document_inline_completion_async(inline_params(HOLE))
    report = await client.protocol.send_request_async("dgemma/stats", None)
    assert report.status.state == "ready" and Path(report.status.model) == options.BUNDLED_MODEL
    assert report.openFileSnippets == 0
    assert report.requests == 1 and report.served + report.empty == 1 and report.failed == 0
    # Three candidates (invoked); those that broke the code are not offered.
    assert report.completions == 3 and 0 < report.brokeSyntax < 3
    assert len(completion.items) <= 3 - report.brokeSyntax
    cursor = SyntaxDocument(SOURCE, "python").offset_at(HOLE.line, HOLE.character)
    for item in completion.items:
        filled = SOURCE[:cursor] + item.insert_text + SOURCE[cursor:]
        assert syntax_errors(filled, "python") <= syntax_errors(SOURCE, "python"), item.insert_text
    assert not [m.message for m in client.messages if m.type == types.MessageType.Error]
    assert await stop(client) == 0


async def test_the_bundled_model_suggests_only_in_python_unless_told(monkeypatch) -> None:
    """It was trained on Python files only (config.json's `languages`): in a Rust document it suggests
    nothing, without running, and says why once; `enable` naming the language asks it anyway."""
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    client, _ = await start(None)
    rust = "file:///tmp/main.rs"
    open_doc(client, "fn main() {\n    let v = vec![1, 2, 3];\n    \n}\n", rust, "rust")
    for _ in range(2):
        completion = await client.text_document_inline_completion_async(
            inline_params(types.Position(2, 4), rust)
        )
        assert completion.items == ()
    told = [m.message for m in client.messages if "trained on python code only" in m.message]
    assert len(told) == 1 and "rust documents" in told[0], told
    report = await client.protocol.send_request_async("dgemma/stats", None)
    assert report.requests == 2 and report.served + report.empty == 0
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {"enable": {"rust": True}}})
    )
    for _ in range(100):  # settings apply asynchronously
        report = await client.protocol.send_request_async("dgemma/stats", None)
        if getattr(report.options.enable, "rust", False):
            break
        await asyncio.sleep(0.05)
    await client.text_document_inline_completion_async(inline_params(types.Position(2, 4), rust))
    report = await client.protocol.send_request_async("dgemma/stats", None)
    assert report.served + report.empty == 1  # the model ran
    assert await stop(client) == 0


async def test_corrupt_checkpoint_and_bad_options_are_reported(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    client, _ = await start({"modelPath": str(broken), "prefixTokens": "many"})
    open_doc(client)
    for _ in range(100):  # the model loads on the worker thread
        if any(m.type == types.MessageType.Error for m in client.messages):
            break
        await asyncio.sleep(0.1)
    assert (await client.text_document_inline_completion_async(inline_params(HOLE))).items == ()
    texts = [m.message for m in client.messages]
    assert any("prefixTokens" in t for t in texts), texts
    assert any(str(broken) in t for t in texts), texts
    assert await stop(client) == 0


async def test_a_model_path_setting_does_not_reload_the_command_lines_model(tiny_checkpoint: Path) -> None:
    # --model wins over `modelPath`: changing the setting changes nothing in effect, so nothing reloads.
    client, _ = await start({"seed": 1}, "--model", str(tiny_checkpoint))
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"modelPath": "/elsewhere", "seed": 2})
    )
    for _ in range(100):
        report = await client.protocol.send_request_async("dgemma/stats", None)
        if report.options.seed == 2 and report.status.state == "ready":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    loads = [m.message for m in client.log_messages if m.message.startswith("Loading model from")]
    assert loads == [f"Loading model from {tiny_checkpoint} ..."]
    assert await stop(client) == 0
