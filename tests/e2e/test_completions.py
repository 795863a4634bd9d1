"""Completions users keep, through the real server: latest-wins bursts, typing-through, speculation,
candidates, auto-closed brackets, status, stats and load progress.

The tiny checkpoint has random weights: its middles are gibberish, so the tests check what the server does
with them (which requests are answered how, what comes from the cache, how ranges are shaped).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any, Union

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

from dgemma_lsp.context import SyntaxDocument
from tests.e2e.test_server import RANDOM_WEIGHTS, SERVER, client_capabilities, open_doc, stop

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SEED = 18
CANDIDATES = 5


def params(uri: str, line: int, character: int, invoked: bool = False) -> types.InlineCompletionParams:
    kind = (
        types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    )
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=kind),
    )


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def insert(
    client: LanguageClient, uri: str, version: int, at: types.Position, text: str, replace: int = 0
) -> None:
    end = types.Position(line=at.line, character=at.character + replace)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(start=at, end=end), text=text)
            ],
        )
    )


async def stats(client: LanguageClient) -> Any:
    return await client.protocol.send_request_async("dgemma/stats", None)


async def start_recording(
    init_options: dict[str, Any],
) -> tuple[LanguageClient, list[Any], list[types.ApplyWorkspaceEditParams]]:
    """A started session that keeps the `dgemma/status` notifications and applies (and keeps) edits."""
    client = await ClientServerConfig(server_command=SERVER).start()
    statuses: list[Any] = []
    edits: list[types.ApplyWorkspaceEditParams] = []

    @client.feature("dgemma/status")
    def on_status(params: Any) -> None:
        statuses.append(params)

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        edits.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    # lsprotocol 2025.0.0 decodes any object with a `command` key as a Command, a CodeAction's included.
    converter = client.protocol._converter
    converter.register_structure_hook(
        Union[types.Command, types.CodeAction],  # noqa: UP007 (the hook is keyed by this exact type)
        lambda obj, _: converter.structure(
            obj, types.Command if isinstance(obj.get("command"), str) else types.CodeAction
        ),
    )
    await client.initialize_session(
        types.InitializeParams(capabilities=client_capabilities(), initialization_options=init_options)
    )
    return client, statuses, edits


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session(tiny_checkpoint: Path):
    options = {
        "modelPath": str(tiny_checkpoint),
        "seed": SEED,
        "maxDenoisingSteps": 1,
        "candidates": CANDIDATES,
        **RANDOM_WEIGHTS,
    }
    client, statuses, edits = await start_recording(options)
    yield client, statuses, edits
    assert await stop(client) == 0


async def test_load_progress_and_status(session, tiny_checkpoint: Path) -> None:
    client, statuses, _ = session
    # The first request waits for the model: afterwards loading and warm-up are over.
    open_doc(client, "x = \n", "file:///work/demo/status.py")
    await client.text_document_inline_completion_async(params("file:///work/demo/status.py", 0, 4))
    [(token, reports)] = client.progress_reports.items()
    assert [r.kind for r in reports] == ["begin", "report", "end"]
    assert (
        "Loading" in reports[0].message
        and "Warming up" in reports[1].message
        and "ready" in reports[2].message
    )
    states = [s.state for s in statuses]
    assert states[0] == "loading" and "busy" in states and states[-1] == "ready"
    assert statuses[-1].device == "cpu" and Path(statuses[-1].model) == tiny_checkpoint
    assert statuses[-1].lastLatencyMs > 0
    report = await stats(client)
    assert report.status.state == "ready" and report.requests >= 1 and report.stepsPerCompletion == 2


async def test_burst_of_automatic_requests_serves_only_the_last(session) -> None:
    client, _, _ = session
    uri = "file:///work/demo/burst.py"
    open_doc(client, "def f(first, second):\n    return \n", uri)
    before = await stats(client)
    typed = "first * second + first - 1 + 2"
    assert len(typed) == 30
    pending = []
    for i, ch in enumerate(typed):
        insert(client, uri, i + 2, types.Position(line=1, character=11 + i), ch)
        pending.append(
            asyncio.ensure_future(client.text_document_inline_completion_async(params(uri, 1, 12 + i)))
        )
        await asyncio.sleep(0.01)  # a fast typist
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, JsonRpcRequestCancelled) for r in results[:-1]), results
    assert isinstance(results[-1], types.InlineCompletionList)
    after = await stats(client)
    assert after.requests - before.requests == 30
    assert after.cancelled - before.cancelled == 29
    # The debounce kept most of the burst away from the model.
    assert after.completions - before.completions < 10


async def test_typing_through_a_suggestion_is_served_from_the_cache(session) -> None:
    client, _, _ = session
    uri = "file:///work/demo/area.py"
    open_doc(client, "def area(radius):\n    value = \n    return value\n", uri)
    first = await client.text_document_inline_completion_async(params(uri, 1, 12))
    shown = first.items[0].insert_text
    typed = shown[: next((i for i, ch in enumerate(shown) if ch in "\r\n"), len(shown))][:20]
    assert len(typed) >= 5, f"pick a seed whose first middle has a longer first line than {shown!r}"
    before = await stats(client)
    latencies = []
    for i, ch in enumerate(typed[:-1]):
        insert(client, uri, i + 2, types.Position(line=1, character=12 + utf16(typed[:i])), ch)
        start_time = time.perf_counter()
        result = await client.text_document_inline_completion_async(
            params(uri, 1, 12 + utf16(typed[: i + 1]))
        )
        latencies.append((time.perf_counter() - start_time) * 1000)
        assert [item.insert_text for item in result.items][:1] == [shown[i + 1 :]]
    after = await stats(client)
    assert after.cache.typingThroughHits - before.cache.typingThroughHits == len(typed) - 1
    assert after.completions == before.completions  # the model was not asked again
    assert after.cachedLatencyMs.p50 < 50
    print(
        f"\ntyping-through: {len(latencies)} keystrokes, round trip p50 {statistics.median(latencies):.1f}"
        f" ms, max {max(latencies):.1f} ms; server p50 {after.cachedLatencyMs.p50} ms"
    )


async def test_accepting_a_suggestion_hits_the_speculative_precompute(session) -> None:
    client, _, _ = session
    uri = "file:///work/demo/scale.py"
    text = "def scale(x):\n    factor = \n    return x * factor\n"
    open_doc(client, text, uri)
    before = await stats(client)
    result = await client.text_document_inline_completion_async(params(uri, 1, 13))
    item = result.items[0]
    for _ in range(300):  # the server precomputes while the engine is idle
        spec = (await stats(client)).speculative
        if spec.started > before.speculative.started and spec.started == spec.finished + spec.cancelled:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the speculative completion did not finish")
    # Accept: the item replaces its range; the cursor ends after the inserted text.
    doc = SyntaxDocument(text, None)
    cursor = doc.offset_at(1, 13)
    accepted = SyntaxDocument(
        text[:cursor] + item.insert_text + text[cursor + item.range.end.character - 13 :], None
    )
    insert(
        client,
        uri,
        2,
        item.range.start,
        item.insert_text,
        item.range.end.character - item.range.start.character,
    )
    end = accepted.position_at(cursor + len(item.insert_text))
    await client.text_document_inline_completion_async(params(uri, end.line, end.character))
    after = await stats(client)
    assert after.cache.speculativeHits - before.cache.speculativeHits == 1
    assert after.completions - before.completions == 1  # only the first request ran the model


async def test_invoked_requests_get_distinct_candidates_automatic_ones_one(session) -> None:
    client, _, _ = session
    uri = "file:///work/demo/candidates.py"
    open_doc(client, "def mean(values):\n    total = \n    count = \n", uri)
    invoked = await client.text_document_inline_completion_async(params(uri, 1, 12, invoked=True))
    texts = [item.insert_text for item in invoked.items]
    assert len(texts) == CANDIDATES and len(set(texts)) == CANDIDATES
    automatic = await client.text_document_inline_completion_async(params(uri, 2, 12))
    assert len(automatic.items) == 1


async def test_code_from_other_open_files_like_the_lines_above_goes_to_the_model(session) -> None:
    client, _, _ = session
    prices = "def apply_discount(price, discount_rate):\n    return round(price * (1 - discount_rate), 2)\n"
    open_doc(client, prices, "file:///work/demo/prices.py")
    open_doc(client, prices, "file:///work/demo/prices.js", language="javascript")  # another language
    uri = "file:///work/demo/cart.py"
    cart = "price = item.price\ndiscount_rate = customer.discount_rate\ntotal = \nitems = []\n"
    open_doc(client, cart, uri)
    before = await stats(client)
    await client.text_document_inline_completion_async(params(uri, 2, 8))
    assert (await stats(client)).openFileSnippets - before.openFileSnippets == 1  # prices.py's
    await client.text_document_inline_completion_async(params(uri, 0, 0))  # no lines above: nothing to match
    assert (await stats(client)).openFileSnippets - before.openFileSnippets == 1


async def test_with_the_suggest_widget_open_items_extend_its_selected_item(session) -> None:
    # LSP: "the inline completions must extend the text of the selected item and use the same range,
    # otherwise they are not shown" (VS Code filters them out); they ignored it.
    client, _, _ = session
    uri = "file:///work/demo/selected.py"
    open_doc(client, "import os\n\n\ndef home(user):\n    return os.pa\n", uri)
    request = params(uri, 4, 16)
    item_range = types.Range(
        start=types.Position(line=4, character=14), end=types.Position(line=4, character=16)
    )
    request.context.selected_completion_info = types.SelectedCompletionInfo(range=item_range, text="path")
    result = await client.text_document_inline_completion_async(request)
    assert result.items, "pick a seed whose middle survives post-processing"
    for item in result.items:
        assert item.insert_text.startswith("path") and item.range.start == item_range.start
        assert item.range.end.line == 4 and item.range.end.character >= 16
    # What the server suggests once `path` is typed, after it.
    typed = "file:///work/demo/typed.py"
    open_doc(client, "import os\n\n\ndef home(user):\n    return os.path\n", typed)
    after_typing = await client.text_document_inline_completion_async(params(typed, 4, 18))
    assert [i.insert_text for i in result.items] == ["path" + i.insert_text for i in after_typing.items]
    # An item on another line than the cursor's: none can extend it.
    elsewhere = params(uri, 4, 16)
    moved = types.Range(start=types.Position(line=3, character=0), end=types.Position(line=3, character=3))
    elsewhere.context.selected_completion_info = types.SelectedCompletionInfo(range=moved, text="def")
    assert (await client.text_document_inline_completion_async(elsewhere)).items == ()


def leaves_paren_open(line: str) -> bool:
    """Test oracle for lines without quotes or other brackets: is an opened `(` still unclosed?"""
    depth = 0
    for ch in line:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
    return depth > 0


async def test_an_auto_closed_bracket_is_replaced_not_duplicated(session) -> None:
    client, _, _ = session
    replaced = 0
    for n, call in enumerate(["print(", "items.append(", "total = max(", "assert check("]):
        uri = f"file:///work/demo/brackets{n}.py"
        line = f"    {call})"  # an auto-pair plugin typed the `)`
        open_doc(client, f"def f(a, b):\n{line}\n", uri)
        cursor = len(line) - 1
        result = await client.text_document_inline_completion_async(params(uri, 1, cursor, invoked=True))
        for item in result.items:
            assert item.range.start == types.Position(line=1, character=cursor)
            replace = item.range.end.character - cursor
            assert replace in (0, 1)
            if any(ch in item.insert_text for ch in "\"'`[]{}\r\n"):
                continue  # the oracle only knows parentheses
            accepted = line[:cursor] + item.insert_text + line[cursor + replace :]
            written = line[:cursor] + item.insert_text  # what the model wrote, without the plugin's `)`
            assert accepted == written + (")" if leaves_paren_open(written) else ""), item
            replaced += replace
        if replaced:
            break
    assert replaced, "pick a seed with a middle that closes the bracket"


async def code_actions(client: LanguageClient, uri: str, where: types.Range) -> list[types.CodeAction]:
    return await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=where,
            context=types.CodeActionContext(diagnostics=[]),
        )
    )


def span(line: int, start: int, end: int) -> types.Range:
    return types.Range(
        start=types.Position(line=line, character=start), end=types.Position(line=line, character=end)
    )


async def fill(client: LanguageClient, action: types.CodeAction) -> Any:
    uri, where = action.command.arguments
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=action.command.command, arguments=[uri, where])
    )


async def test_fill_hole_code_action_applies_an_edit(session) -> None:
    client, _, edits = session
    uri = "file:///work/demo/hole.py"
    open_doc(client, "def area(r):\n    pass  # TODO\n\n\ndef other():\n    return 2\n", uri)
    [action] = await code_actions(client, uri, span(1, 6, 6))
    assert action.title == "Fill hole with DiffusionGemma"
    assert action.command.arguments[0] == uri
    result = await fill(client, action)
    assert result["applied"] and result["text"]
    [(edit_uri, [edit])] = edits.pop().edit.changes.items()
    assert (edit_uri, edit.range, edit.new_text) == (uri, span(1, 4, 16), result["text"])


async def test_fill_selection_code_action(session) -> None:
    client, _, edits = session
    uri = "file:///work/demo/selection.js"
    open_doc(
        client, "function mean(xs) {\n  const total = xs.reduce((a, b) => a + b);\n}\n", uri, "javascript"
    )
    selection = span(1, 16, 42)
    actions = await code_actions(client, uri, selection)
    assert [a.title for a in actions] == ["Fill selection with DiffusionGemma"]
    result = await fill(client, actions[0])
    [(_, [edit])] = edits.pop().edit.changes.items()
    assert edit.range.start == selection.start and edit.range.end.line == 1
    # 43 when the middle typed the `;` after the selection itself.
    assert edit.range.end.character in (42, 43)
    assert edit.new_text == result["text"]


async def test_fill_rejects_bad_arguments_and_stays_up(session) -> None:
    client, _, _ = session
    for arguments in (
        ["file:///work/demo/not-open.py", span(0, 0, 0)],
        ["file:///work/demo/hole.py"],
        [1, 2],
    ):
        with pytest.raises(JsonRpcInvalidParams):
            await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="dgemma.fillRange", arguments=arguments)
            )
    bad_range = {"start": {"line": 1, "character": 4}, "end": {"line": 1}}
    with pytest.raises(JsonRpcInvalidParams, match=r"\$\.end\.character"):  # names the field
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(
                command="dgemma.fillRange", arguments=["file:///work/demo/hole.py", bad_range]
            )
        )
    assert (await stats(client)).status.state != "error"  # still up and answering


async def test_fills_of_two_holes_at_once_are_both_applied(session) -> None:
    # Each span is its own job: the second fill superseded the first, answered with an internal error.
    client, _, edits = session
    uri = "file:///work/demo/two_holes.py"
    open_doc(client, "def f(x):\n    ...\n\n\ndef g(y):\n    ...\n", uri)
    edits.clear()
    command = "dgemma.fillRange"
    first, second = await asyncio.gather(
        *(
            client.workspace_execute_command_async(
                types.ExecuteCommandParams(command=command, arguments=[uri, span(line, 4, 7)])
            )
            for line in (1, 5)
        )
    )
    assert first["applied"] and second["applied"]
    assert sorted(e.edit.changes[uri][0].range.start.line for e in edits) == [1, 5]
    edits.clear()


async def test_a_request_waiting_out_its_debounce_is_cancelled_when_its_document_closes(
    tiny_checkpoint: Path,
) -> None:
    options = {"modelPath": str(tiny_checkpoint), "debounceMs": 3000, "maxDenoisingSteps": 1}
    client, _, _ = await start_recording(options | RANDOM_WEIGHTS)
    uri = "file:///work/demo/closing.py"
    open_doc(client, "def f(x):\n    return \n", uri)
    pending = asyncio.ensure_future(client.text_document_inline_completion_async(params(uri, 1, 11)))
    await asyncio.sleep(0.3)
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    with pytest.raises(JsonRpcRequestCancelled):  # at once, not after the debounce
        await asyncio.wait_for(pending, 2)
    assert (await stats(client)).completions == 0  # the model never ran for it
    assert await stop(client) == 0


async def test_a_request_whose_document_changes_during_its_debounce_does_not_run_the_model(
    tiny_checkpoint: Path,
) -> None:
    """Its position names text that is gone (it answered a range on a deleted line). And completion
    requests are debounced and get one item whatever their trigger kind: the clients that use them send
    Invoked on every keystroke (it ran `candidates` models at once)."""
    options = {"modelPath": str(tiny_checkpoint), "debounceMs": 400, "maxDenoisingSteps": 1, "candidates": 3}
    client, _, _ = await start_recording(options | RANDOM_WEIGHTS)
    uri = "file:///work/demo/stale.py"
    open_doc(client, "import os\n\n\ndef f(x):\n    os.\n    return x\n", uri)
    await client.text_document_inline_completion_async(params(uri, 5, 4))  # waits for the model to load
    before = await stats(client)
    pending = asyncio.ensure_future(client.text_document_inline_completion_async(params(uri, 4, 7)))
    await asyncio.sleep(0.05)
    span = types.Range(start=types.Position(line=4, character=0), end=types.Position(line=5, character=0))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(range=span, text="")],
        )
    )
    assert (await pending).items == ()
    # Opened again with other text while one waits (a client that re-sends the document): as outdated.
    insert(client, uri, 3, types.Position(line=4, character=4), "r")  # a keystroke: the debounce starts
    pending = asyncio.ensure_future(client.text_document_inline_completion_async(params(uri, 4, 5)))
    await asyncio.sleep(0.05)
    open_doc(client, "x = 1\n", uri)
    assert (await pending).items == ()
    after = await stats(client)
    assert after.outdated - before.outdated == 2 and after.completions == before.completions

    invoked = types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)
    listed = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=3, character=9),
            context=invoked,
        )
    )
    # One model run (three as an invoked request)
    assert len(listed.items) <= 1 and (await stats(client)).completions - after.completions == 1
    assert await stop(client) == 0


async def test_fill_gives_up_when_the_document_changes_meanwhile(session) -> None:
    client, _, edits = session
    uri = "file:///work/demo/moving.py"
    open_doc(client, "def f(x):\n    ...\n", uri)
    [action] = await code_actions(client, uri, span(1, 4, 4))
    pending = asyncio.ensure_future(fill(client, action))
    await asyncio.sleep(0.01)
    insert(client, uri, 2, types.Position(line=0, character=0), "# moved\n")
    result = await pending
    assert not result["applied"] and not edits


async def test_shutdown_while_a_fill_waits_on_the_client(tiny_checkpoint: Path) -> None:
    """A fill still waiting for the client's answer to workspace/applyEdit is cancelled at shutdown, and
    shutdown succeeds (it failed with "dictionary changed size during iteration")."""
    client = await ClientServerConfig(server_command=SERVER).start()
    asked, shut_down = asyncio.Event(), asyncio.Event()

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    async def answer_late(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        asked.set()
        await shut_down.wait()
        return types.ApplyWorkspaceEditResult(applied=False)

    options = {"modelPath": str(tiny_checkpoint), "seed": SEED, "maxDenoisingSteps": 1, "candidates": 1}
    options |= RANDOM_WEIGHTS
    await client.initialize_session(
        types.InitializeParams(capabilities=client_capabilities(), initialization_options=options)
    )
    uri = "file:///work/demo/waiting.py"
    open_doc(client, "def f(x):\n    ...\n", uri)
    command = types.ExecuteCommandParams(command="dgemma.fillRange", arguments=[uri, span(1, 4, 7)])
    pending = asyncio.ensure_future(client.workspace_execute_command_async(command))
    await asyncio.wait_for(asked.wait(), 60)
    assert await client.shutdown_async(None) is None  # raises on an error answer
    with pytest.raises(JsonRpcRequestCancelled):
        await pending
    shut_down.set()  # the late answer goes out before the exit: pygls's client fails on a running handler
    for _ in range(500):
        if not client.protocol._request_futures:
            break
        await asyncio.sleep(0.01)
    client.exit(None)
    await client.stop()
    assert client._server.returncode == 0
