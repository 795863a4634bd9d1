"""Configuration through the real server: initializationOptions, didChangeConfiguration (pushed and pulled),
per-language enable, a model reload, and what post-processing does with the code below the cursor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from tests.e2e.test_completions import params, stats
from tests.e2e.test_server import RANDOM_WEIGHTS, SERVER, client_capabilities, open_doc, stop

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


def change_settings(client: LanguageClient, settings: Any) -> None:
    """workspace/didChangeConfiguration; replies come back as namedtuples, hence `_asdict()` below."""
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))


async def options_when(client: LanguageClient, ready: Any) -> Any:
    """The server's options once `ready(options)` holds (settings apply asynchronously)."""
    for _ in range(100):
        options = (await stats(client)).options
        if ready(options):
            return options
        await asyncio.sleep(0.05)
    pytest.fail(f"options never matched: {options}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tiny_checkpoint: Path):
    capabilities = client_capabilities()
    capabilities.workspace = types.WorkspaceClientCapabilities(configuration=True)
    client = await ClientServerConfig(server_command=SERVER).start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities,
            initialization_options={
                "modelPath": str(tiny_checkpoint),
                "seed": 5,
                "maxDenoisingSteps": 1,
                "maxLines": 5,
                "candidates": 9,
                "debounceMs": "soon",
                "enable": 3,
                **RANDOM_WEIGHTS,
            },
        )
    )
    yield client
    assert await stop(client) == 0


async def test_invalid_initialization_options_are_reported_and_defaulted(client) -> None:
    await asyncio.sleep(0.1)
    [warning] = [m.message for m in client.messages if m.type == types.MessageType.Warning]
    assert all(key in warning for key in ("candidates", "debounceMs", "enable")), warning
    options = (await stats(client)).options
    assert (options.candidates, options.debounceMs, options.enable._asdict()) == (3, None, {})
    assert (options.maxLines, options.seed) == (5, 5)  # the valid ones apply


async def test_invalid_settings_are_reported_and_defaulted(client) -> None:
    change_settings(client, {"dgemma": {"candidates": "many", "maxLines": 2, "debounceMs": 40}})
    options = await options_when(client, lambda o: o.maxLines == 2)
    assert (options.candidates, options.debounceMs, options.seed) == (3, 40, 5)
    assert any("candidates" in m.message and "settings" in m.message for m in client.messages)


async def test_pulled_settings_and_a_disabled_language(client) -> None:
    # settings: null -> the server asks for the `dgemma` section (workspace/configuration).
    client.set_configuration({"enable": {"python": False}, **RANDOM_WEIGHTS}, section="dgemma")
    change_settings(client, None)
    await options_when(client, lambda o: o.enable._asdict() == {"python": False})
    open_doc(client, "def f(x):\n    return \n", "file:///work/demo/off.py")
    open_doc(client, "local function f(x)\n  return \nend\n", "file:///work/demo/on.lua", "lua")
    before = await stats(client)
    off = await client.text_document_inline_completion_async(params("file:///work/demo/off.py", 1, 11))
    on = await client.text_document_inline_completion_async(params("file:///work/demo/on.lua", 1, 9))
    assert off.items == () and on.items
    assert (await stats(client)).completions - before.completions == 1  # python never reached the model


async def test_changing_the_prompt_form_reloads_the_model(client) -> None:
    tokens = set(client.progress_reports)
    change_settings(client, {"dgemma": {"infillingMode": "plain", **RANDOM_WEIGHTS}})
    for _ in range(300):
        new = set(client.progress_reports) - tokens
        if new and client.progress_reports[next(iter(new))][-1].kind == "end":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("no load progress after the change")
    [token] = new
    assert [r.kind for r in client.progress_reports[token]] == ["begin", "report", "end"]
    assert (await stats(client)).status.state == "ready"


async def test_a_suggestion_never_repeats_the_code_below(client) -> None:
    # The plain prompt (set above) is the prefix alone, so the same seeds give the same middles with any
    # code below the cursor. Put one of them below the cursor: that one must go, the others stay.
    head = "def total(values):\n    result = "
    open_doc(client, head + "\n", "file:///work/demo/above.py")
    above = await client.text_document_inline_completion_async(
        params("file:///work/demo/above.py", 1, 13, invoked=True)
    )
    texts = [item.insert_text for item in above.items]
    repeated = next((t for t in texts if t.strip() and t.isprintable()), None)
    assert repeated is not None and len(texts) > 1, f"pick a seed with printable middles: {texts}"
    # Closed, so that the second prompt is the first one's code alone (an open file can lend snippets).
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri="file:///work/demo/above.py")
        )
    )
    open_doc(client, f"{head}\n    {repeated.strip()}\n", "file:///work/demo/below.py")
    below = await client.text_document_inline_completion_async(
        params("file:///work/demo/below.py", 1, 13, invoked=True)
    )
    assert sorted(item.insert_text for item in below.items) == sorted(
        t for t in texts if t.strip() != repeated.strip()
    )


async def test_a_fill_that_would_break_the_code_is_not_applied_and_says_why(client) -> None:
    settings = {"infillingMode": "plain", "seed": 5, "candidates": 1, "syntaxCheck": True}  # no reload
    change_settings(client, {"dgemma": settings})
    await options_when(client, lambda o: o.syntaxCheck and o.seed == 5)
    uri = "file:///work/demo/fill.py"
    open_doc(client, "def area(r):\n    return 3.14159 * r * r\n", uri)
    before = await stats(client)
    where = types.Range(start=types.Position(line=1, character=11), end=types.Position(line=1, character=26))
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="dgemma.fillRange", arguments=[uri, where])
    )
    after = await stats(client)
    # The tiny checkpoint's random weights write a fill here that does not parse (seed 5).
    assert result == {"applied": False}
    assert after.completions - before.completions == 1 and after.brokeSyntax - before.brokeSyntax == 1
    told = [m.message for m in client.messages if "would break the code" in m.message]
    assert told == ["dgemma-lsp: each fill the model wrote would break the code (syntaxCheck)."]


async def test_settings_changed_twice_while_the_model_loads_load_it_once(tiny_checkpoint: Path) -> None:
    # The first reload waited for the loading model while the second swapped engines: the second's engine
    # was then started twice (two worker threads, two models).
    client = await ClientServerConfig(server_command=SERVER).start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities(), initialization_options={"modelPath": str(tiny_checkpoint)}
        )
    )
    for steps in (2, 3):  # while the first model still loads (its imports alone take seconds)
        change_settings(client, {"modelPath": str(tiny_checkpoint), "maxDenoisingSteps": steps})
    await options_when(client, lambda o: o.maxDenoisingSteps == 3)
    for _ in range(300):
        if (await stats(client)).status.state == "ready":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a second start of the same engine would say so by now
    loads = [m.message for m in client.log_messages if m.message.startswith("Loading model from")]
    assert len(loads) == 2, loads  # the first model, then the last settings' once
    assert (await stats(client)).status.state == "ready"
    assert await stop(client) == 0


async def test_a_failed_settings_pull_keeps_the_options_and_pops_nothing_up(tiny_checkpoint: Path) -> None:
    capabilities = client_capabilities()
    capabilities.workspace = types.WorkspaceClientCapabilities(configuration=True)
    client = await ClientServerConfig(server_command=SERVER).start()
    answers: list[Any] = [RuntimeError("no settings here"), None]  # an error, then a null result

    client.protocol.fm.features.pop(types.WORKSPACE_CONFIGURATION)  # pytest-lsp's own answers it

    @client.feature(types.WORKSPACE_CONFIGURATION)
    def configuration(params: types.ConfigurationParams) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    options = {"modelPath": str(tiny_checkpoint), "maxLines": 7, **RANDOM_WEIGHTS}
    await client.initialize_session(
        types.InitializeParams(capabilities=capabilities, initialization_options=options)
    )
    for pulls in (1, 2):
        change_settings(client, None)
        for _ in range(100):
            failed = [m for m in client.log_messages if m.message.startswith("workspace/configuration fail")]
            if len(failed) == pulls:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"pull {pulls} was not answered: {[m.message for m in client.log_messages]}")
    await asyncio.sleep(0.2)
    assert [m.message for m in client.messages if m.type == types.MessageType.Error] == []
    assert (await stats(client)).options.maxLines == 7
    assert await stop(client) == 0
