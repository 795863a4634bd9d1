"""The context step: windows, scope, positions and incremental trees (dgemma_lsp.context)."""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from lsprotocol import types

from dgemma_lsp import context
from dgemma_lsp.context import (
    ContextBudget,
    FimContext,
    SyntaxDocument,
    UnsupportedDocument,
    approx_token_count,
    indent_width,
    language_for,
)

DATA = Path(__file__).parent / "data" / "context"
MARK = "<|cursor|>"
EOL = re.compile(r"\r\n|\r|\n")


def split_marker(source: str) -> tuple[str, int]:
    """The text without the cursor marker, and the str index where it was."""
    assert source.count(MARK) == 1, "exactly one cursor marker"
    offset = source.index(MARK)
    return source[:offset] + source[offset + len(MARK) :], offset


def lsp_position(text: str, offset: int) -> tuple[int, int]:
    """Reference LSP position for a str index: lines split on any EOL, columns in UTF-16 code units."""
    before = text[:offset]
    breaks = list(EOL.finditer(before))
    line_start = breaks[-1].end() if breaks else 0
    return len(breaks), len(before[line_start:].encode("utf-16-le")) // 2


def ts_point(text: str, offset: int) -> tuple[int, int]:
    """Reference tree-sitter point for a str index: rows split on \\n, columns in UTF-8 bytes."""
    before = text[:offset].encode("utf-8")
    return before.count(b"\n"), len(before) - (before.rfind(b"\n") + 1)


def context_for(source: str, language: str | None, **kwargs: Any) -> tuple[str, int, FimContext]:
    text, offset = split_marker(source)
    line, character = lsp_position(text, offset)
    return text, offset, SyntaxDocument(text, language).context_at(line, character, **kwargs)


def has_grammar(language: str) -> bool:
    return context._parser_for(language) is not None


def lsp_range(start: tuple[int, int], end: tuple[int, int]) -> types.Range:
    return types.Range(
        start=types.Position(line=start[0], character=start[1]),
        end=types.Position(line=end[0], character=end[1]),
    )


# --- language_for and the token estimate --------------------------------------------------------------


@pytest.mark.parametrize(
    ("language_id", "uri", "expected"),
    [
        ("python", None, "python"),
        ("javascript", None, "javascript"),
        ("javascriptreact", None, "javascript"),
        ("typescript", None, "typescript"),
        ("typescriptreact", None, "tsx"),
        ("go", None, "go"),
        ("rust", None, "rust"),
        ("c", None, "c"),
        ("cpp", None, "cpp"),
        ("java", None, "java"),
        ("lua", None, "lua"),
        ("shellscript", None, "bash"),
        ("plaintext", "file:///x/notes.py", None),
        ("ruby", None, "ruby"),  # not in our table: the language pack knows it
        (None, "file:///home/u/app/main.py", "python"),
        (None, "file:///home/u/app/component.tsx", "tsx"),
        (None, "file:///home/u/app/lib.rs", "rust"),
        (None, "file:///home/u/app/ring.h", "c"),
        (None, "file:///home/u/app/shapes.hpp", "cpp"),
        (None, "file:///home/u/app/Main.java", "java"),
        (None, "file:///home/u/app/init.lua", "lua"),
        (None, "file:///home/u/app/index.mjs", "javascript"),
        ("", "file:///home/u/app/server.go", "go"),
        ("unknown-id", "file:///home/u/app/server.go", "go"),
        (None, "file:///home/u/notes.txt", None),
        (None, "file:///home/u/README", None),
        (None, "untitled:Untitled-1", None),
        (None, None, None),
    ],
)
def test_language_for(language_id: str | None, uri: str | None, expected: str | None) -> None:
    assert language_for(language_id, uri) == expected


def test_approx_token_count() -> None:
    assert approx_token_count("") == 0
    assert approx_token_count("a") == 1
    assert approx_token_count("abcdefg") == 2
    assert approx_token_count("x" * 350) == 100


def test_indent_width_counts_a_tab_as_four() -> None:
    assert indent_width("    x") == 4
    assert indent_width("\tx") == 4
    assert indent_width("\t  \tx") == 10
    assert indent_width("x\t") == 0
    assert indent_width("   ") == 3


# --- the sample files ---------------------------------------------------------------------------------

SAMPLES = [
    # file, scope, block_indent
    ("inventory.py", "block", 4),  # empty body right after `def restock(...) -> int:`
    ("cart.js", "line", None),  # mid-line, only `);` after the cursor
    ("queue.ts", "block", 2),  # empty method body after `{`
    ("cache.go", "block", 4),  # tab-indented `for ... {` body: one tab = 4 columns
    ("matrix.rs", "block", 4),  # blank column-0 line between statements of `fn transpose`
    ("ring.c", "line", None),  # inside `printf("%d\n", |);`
    ("shapes.cpp", "block", 4),  # empty method body in a class
    ("Greeter.java", "block", 4),  # empty method body, cursor at column 0
    ("config.lua", "block", 2),  # after `if ... then`
    ("notes.txt", "line", None),  # plain text, mid-line
]


@pytest.mark.parametrize(("name", "scope", "block_indent"), SAMPLES)
def test_sample_files(name: str, scope: str, block_indent: int | None) -> None:
    text, offset = split_marker((DATA / name).read_text())
    language = language_for(None, name)
    line, character = lsp_position(text, offset)
    doc = SyntaxDocument(text, language)
    ctx = doc.context_at(line, character)

    assert ctx.prefix + ctx.suffix == text
    assert ctx.prefix == text[:offset]
    assert not ctx.prefix_truncated and not ctx.suffix_truncated
    assert (ctx.scope, ctx.block_indent) == (scope, block_indent)
    assert ctx.max_middle_tokens == (256 if scope == "block" else 48)
    assert ctx.language == language
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    assert ctx.line_prefix == text[line_start:offset]
    assert ctx.line_suffix == text[offset : line_end if line_end >= 0 else len(text)]


def test_sample_languages_cover_the_brief() -> None:
    languages = {language_for(None, name) for name, _, _ in SAMPLES}
    assert languages == {"python", "javascript", "typescript", "go", "rust", "c", "cpp", "java", "lua", None}


# --- scope rules --------------------------------------------------------------------------------------

SCOPES = [
    # language, source, scope, block_indent
    ("python", "def f(x):\n    <|cursor|>\n", "block", 0),
    ("python", "def f(x):  # why not\n<|cursor|>", "block", 0),  # trailing comment, column 0, end of file
    (
        "python",
        "class A:\n    def f(self):\n        <|cursor|>\n\n    def g(self):\n        pass\n",
        "block",
        4,
    ),
    ("python", "def f():\n    a = 1\n\n<|cursor|>\n    return a\n", "block", 0),  # blank line mid-body
    ("python", "def f():\n    if a:\n        b()\n        <|cursor|>\n    return\n", "block", 4),
    ("python", "import os\n\n<|cursor|>\n\ndef main():\n    pass\n", "block", None),  # top level
    ("python", "def f():\n    return 1\n<|cursor|>\n", "block", None),  # dedented to top level at EOF
    ("python", "def f():\n    retu<|cursor|>\n", "line", None),
    ("python", "def f():\n    <|cursor|>return 1\n", "line", None),  # text after the cursor
    ("python", "print(<|cursor|>)\n", "line", None),  # only closers after the cursor
    ("python", "x = f('<|cursor|>')\n", "line", None),
    ("javascript", "function f() {\n  <|cursor|>\n}\n", "block", 0),
    ("javascript", "function f() {\n<|cursor|>\n}\n", "block", 0),  # empty body, column 0
    ("javascript", "items.forEach((item) =>\n  <|cursor|>\n);\n", "block", 0),
    ("javascript", "if (ok) {\n  run();\n\n  <|cursor|>\n  stop();\n}\n", "block", 0),
    ("javascript", "const x = {<|cursor|>};\n", "line", None),
    ("javascript", "  <|cursor|>});\n", "line", None),  # closers only after a blank start: still line
    ("typescript", "class A {\n  m(): void {\n    <|cursor|>\n  }\n}\n", "block", 2),
    ("go", "func main() {\n\tfor {\n\t\t<|cursor|>\n\t}\n}\n", "block", 4),
    ("rust", "fn main() {\n    let v = vec![\n        <|cursor|>\n    ];\n}\n", "block", 4),
    ("c", "int main(void) {\n    switch (x) {\n    case 1:\n        <|cursor|>\n    }\n}\n", "block", 4),
    ("java", "class A {\n    void f() {\n        g(); // {\n        <|cursor|>\n    }\n}\n", "block", 4),
    ("lua", "for i = 1, 3 do\n  <|cursor|>\nend\n", "block", 0),
    ("lua", "local function f(a, b)\n  <|cursor|>\nend\n", "block", 0),
    ("lua", "if x then\n  y()\nelse\n  <|cursor|>\nend\n", "block", 0),
    # A header continued over several lines opens the block at the indentation of its first line.
    (
        "python",
        'class W:\n    def __init__(self, width=70,\n                 indent=""):\n        <|cursor|>\n',
        "block",
        4,
    ),
    (
        "python",
        "def f(a, b):\n    if (a and\n            b):\n        <|cursor|>\n    return a\n",
        "block",
        4,
    ),
    ("python", "def f(\n    a,\n):\n    <|cursor|>\n", "block", 0),
    ("javascript", "function f(a, b) {\n  if (a &&\n      b) {\n    <|cursor|>\n  }\n}\n", "block", 2),
    # `.then(` starts inside no bracket that opened above it: its own line opens the block.
    ("javascript", "fetch(url)\n  .then((r) => {\n    <|cursor|>\n  });\n", "block", 2),
    (
        "go",
        "func (c *C) Do(ctx Context,\n\treq *Request) (*Response, error) {\n\t<|cursor|>\n}\n",
        "block",
        0,
    ),
    ("rust", "fn build(\n    rows: usize,\n) -> Matrix {\n    <|cursor|>\n}\n", "block", 0),
    # A `:` or `{` ending a line inside a string or comment opens nothing.
    ("python", 'def f(doc):\n    """Errors have these fields:\n    <|cursor|>\n    """\n', "block", 0),
    ("javascript", "function f() {\n  /* Steps:\n  <|cursor|>\n   */\n  run();\n}\n", "block", 0),
    (None, "Shopping list:\n<|cursor|>\n", "block", None),  # no tree: a `:` in prose opens no block
    (None, "Dear Ana,\n\n<|cursor|>\n\nBest, Bo\n", "block", None),
    (None, "Dear Ana,\n\nThanks for the <|cursor|>\n", "line", None),
    (None, "<|cursor|>", "block", None),  # empty document
]


@pytest.mark.parametrize(("language", "source", "scope", "block_indent"), SCOPES)
def test_scope(language: str | None, source: str, scope: str, block_indent: int | None) -> None:
    text, _, ctx = context_for(source, language)
    assert (ctx.scope, ctx.block_indent) == (scope, block_indent)
    assert ctx.prefix + ctx.suffix == text
    budget = ContextBudget()
    assert ctx.max_middle_tokens == (
        budget.block_middle_tokens if scope == "block" else budget.line_middle_tokens
    )


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_continued_header_with_wide_characters(eol: str) -> None:
    # The bracket's line is found from its byte offset: multi-byte characters and lone CRs must not shift it.
    lines = [
        "class A:",
        "    def f(self, s='😀😀😀😀😀😀😀😀😀😀é',",
        "            b=(1,",
        "               2)):",
    ]
    source = eol.join([*lines, "        <|cursor|>", ""])
    assert context_for(source, "python")[2].block_indent == 4


def test_middle_budget_comes_from_the_budget() -> None:
    budget = ContextBudget(line_middle_tokens=7, block_middle_tokens=99)
    assert context_for("x = <|cursor|>\n", None, budget=budget)[2].max_middle_tokens == 7
    assert context_for("x:\n<|cursor|>\n", None, budget=budget)[2].max_middle_tokens == 99


def test_tree_finds_the_enclosing_block_where_text_rules_cannot() -> None:
    # The closing brace is at column 0 and so is the cursor: indentation alone says "top level".
    source = "function f() {\n  a();\n<|cursor|>\n}\n"
    assert context_for(source, None)[2].block_indent is None
    if not has_grammar("javascript"):
        pytest.skip("no tree-sitter grammar for javascript in this environment")
    assert context_for(source, "javascript")[2].block_indent == 0


# --- windows and budgets ------------------------------------------------------------------------------


def long_python(functions: int) -> str:
    parts = ['"""Generated module."""\n', "\n"]
    for i in range(functions):
        parts.append(f"def func_{i}(x):\n    y = x + {i}\n    z = y * 2\n    return z\n\n")
    return "".join(parts)


def test_truncated_windows_cut_on_line_boundaries() -> None:
    text = long_python(60)
    cursor = text.index("    z = y * 2", len(text) // 2)
    line, character = lsp_position(text, cursor)
    budget = ContextBudget(prefix_tokens=300, suffix_tokens=200)
    ctx = SyntaxDocument(text, "python").context_at(line, character, budget, count_tokens=len)

    assert ctx.prefix_truncated and ctx.suffix_truncated
    assert text[:cursor].endswith(ctx.prefix) and text[cursor:].startswith(ctx.suffix)
    start = cursor - len(ctx.prefix)
    end = cursor + len(ctx.suffix)
    assert text[start - 1] == "\n" and text[end - 1] == "\n"  # whole lines only
    assert len(ctx.prefix) <= 300 and len(ctx.suffix) <= 200
    # Both cuts land on a top-level `def`: the prefix starts with one, the suffix stops before one.
    assert ctx.prefix.startswith("def func_")
    assert text[end:].startswith("def func_")
    # Snapping only moves inward by a few lines.
    assert len(ctx.prefix) > 300 - 9 * 25 and len(ctx.suffix) > 200 - 9 * 25


def test_prefix_keeps_the_cursor_line_even_over_budget() -> None:
    text = "a = 1\nb = 2\n" + "c" * 100 + " = 3\nd = 4\n"
    line, character = 2, 100
    ctx = SyntaxDocument(text, None).context_at(
        line, character, ContextBudget(prefix_tokens=20, suffix_tokens=1), count_tokens=len
    )
    assert ctx.prefix == "c" * 100
    assert ctx.prefix_truncated
    assert ctx.suffix == " = 3\n"
    assert ctx.suffix_truncated


def test_a_minified_cursor_line_is_cut_around_the_cursor() -> None:
    line = "var a=[" + "1," * 500_000 + "];"
    budget = ContextBudget(prefix_tokens=100, suffix_tokens=50)
    ctx = SyntaxDocument(f"// x\n{line}\n// y\n", "javascript").context_at(1, 600_000, budget)
    assert ctx.prefix == line[600_000 - 800 : 600_000] and ctx.suffix == line[600_000 : 600_000 + 400]
    assert ctx.prefix_truncated and ctx.suffix_truncated
    # And so is what post-processing reads of the line: scanning all of it took a second a suggestion.
    assert ctx.line_prefix == ctx.prefix and ctx.line_suffix == ctx.suffix


def test_budget_uses_the_given_token_counter() -> None:
    text = "".join(f"line {i}\n" for i in range(20))
    calls: list[str] = []

    def lines_as_tokens(segment: str) -> int:
        calls.append(segment)
        return 1

    ctx = SyntaxDocument(text, None).context_at(
        10, 0, ContextBudget(prefix_tokens=3, suffix_tokens=2), count_tokens=lines_as_tokens
    )
    assert ctx.prefix == "line 7\nline 8\nline 9\n"
    assert ctx.suffix == "line 10\nline 11\n"
    assert "" not in calls


# --- positions: UTF-16, CRLF, tabs, ends of the document ----------------------------------------------


def test_utf16_columns_with_emoji_and_accents() -> None:
    text = "s = '😀é' + naïve\n# 👩‍💻 done\n"
    doc = SyntaxDocument(text, "python")
    plus = text.index("+")
    assert lsp_position(text, plus) == (0, 10)  # the emoji is 2 UTF-16 units, é is 1
    assert doc.offset_at(0, 10) == plus
    assert doc.position_at(plus) == types.Position(line=0, character=10)
    for offset in range(len(text) + 1):
        line, character = lsp_position(text, offset)
        assert doc.offset_at(line, character) == offset
        assert doc.position_at(offset) == types.Position(line=line, character=character)
    assert doc.offset_at(0, 6) == text.index("😀")  # inside the surrogate pair: rounds down
    ctx = doc.context_at(0, 10)
    assert ctx.line_prefix == "s = '😀é' "
    assert ctx.line_suffix == "+ naïve"
    assert ctx.prefix + ctx.suffix == text


def test_crlf_positions_and_windows() -> None:
    text = "def f():\r\n    x = 1\r\n\r\n    return x\r\n"
    doc = SyntaxDocument(text, "python")
    assert doc.offset_at(1, 4) == text.index("x = 1")
    assert doc.offset_at(1, 99) == text.index("\r\n", 10)  # past the end of the line: before its CRLF
    assert doc.position_at(text.index("\r\n", 10) + 1) == types.Position(line=1, character=9)
    assert doc.offset_at(4, 0) == len(text)
    ctx = doc.context_at(2, 0)
    assert ctx.prefix == "def f():\r\n    x = 1\r\n"
    assert ctx.suffix == "\r\n    return x\r\n"
    assert (ctx.scope, ctx.block_indent) == ("block", 0)
    ctx = doc.context_at(1, 9)
    assert ctx.line_prefix == "    x = 1" and ctx.line_suffix == ""
    assert ctx.suffix.startswith("\r\n")


def test_lone_cr_is_a_line_break() -> None:
    doc = SyntaxDocument("a\rb\nc", None)
    assert doc.offset_at(1, 0) == 2
    assert doc.offset_at(2, 1) == 5
    assert doc.position_at(3) == types.Position(line=1, character=1)


def test_tabs_in_block_indent() -> None:
    source = "func f() {\n\tif ok {\n\t\tx()\n\n\t\t<|cursor|>\n\t}\n}\n"
    assert context_for(source, "go")[2].block_indent == 4
    assert context_for(source, None)[2].block_indent == 4


def test_cursor_at_start_end_and_past_end() -> None:
    text = "x = 1\ny = 2\n"
    doc = SyntaxDocument(text, "python")
    ctx = doc.context_at(0, 0)
    assert (ctx.prefix, ctx.suffix, ctx.scope) == ("", text, "line")
    ctx = doc.context_at(2, 0)
    assert (ctx.prefix, ctx.suffix, ctx.scope, ctx.block_indent) == (text, "", "block", None)
    for line, character in [(2, 5), (7, 0), (99, 99)]:
        ctx = doc.context_at(line, character)
        assert (ctx.prefix, ctx.suffix) == (text, "")
    assert doc.offset_at(-1, 3) == 0
    assert doc.position_at(999) == types.Position(line=2, character=0)
    no_newline = SyntaxDocument("x = 1", "python").context_at(0, 50)
    assert (no_newline.prefix, no_newline.suffix, no_newline.line_prefix) == ("x = 1", "", "x = 1")


# --- refused documents --------------------------------------------------------------------------------


def test_binary_document_is_refused() -> None:
    doc = SyntaxDocument("PK\x03\x04\x00\x00binary", "python")
    with pytest.raises(UnsupportedDocument, match="binary"):
        doc.context_at(0, 0)
    assert doc.tree is None


def test_oversized_document_is_refused() -> None:
    doc = SyntaxDocument("x = 1\n" * 100, "python")
    with pytest.raises(UnsupportedDocument, match="too large"):
        doc.context_at(0, 0, ContextBudget(max_document_chars=500))
    doc.context_at(0, 0, ContextBudget(max_document_chars=600))


def test_lone_surrogates_do_not_crash() -> None:
    doc = SyntaxDocument("x = '\ud800'\n\n", "python")
    doc.apply_change("y", lsp_range((0, 5), (0, 5)))
    assert doc.text == "x = 'y\ud800'\n\n"
    assert doc.context_at(1, 0).scope == "block"


# --- incremental edits --------------------------------------------------------------------------------

# (range start, range end, new text) in LSP coordinates of the text at that point, applied in order.
EDITS: list[tuple[tuple[int, int], tuple[int, int], str]] = [
    ((0, 0), (0, 0), "# 🚀 start\n"),  # insert at the start, astral char
    ((2, 0), (2, 0), "    z = 'é'\n"),  # insert a line inside a body
    ((1, 4), (1, 5), "g"),  # rename a character
    ((2, 9), (3, 4), "ü'\n    w"),  # multi-line replace across a non-ASCII char
    ((1, 0), (2, 0), ""),  # delete a whole line
    ((99, 0), (99, 0), "\nclass C:\n    pass\n"),  # append past the end
    ((0, 2), (0, 4), "🎉🎉"),  # replace the emoji (2 UTF-16 units) with two more
]


def apply_reference(text: str, start: tuple[int, int], end: tuple[int, int], new: str) -> str:
    """The text after an LSP edit, computed independently of SyntaxDocument (past-end positions clamp)."""

    def index(position: tuple[int, int]) -> int:
        positions = [lsp_position(text, offset) for offset in range(len(text) + 1)]
        if position[0] > positions[-1][0]:
            return len(text)
        return max(o for o, (line, col) in enumerate(positions) if line == position[0] and col <= position[1])

    return text[: index(start)] + new + text[index(end) :]


class FakeTree:
    def __init__(self, source: bytes, old: FakeTree | None) -> None:
        self.source = source
        self.old = old
        self.edits: list[dict[str, Any]] = []

    def edit(self, **kwargs: Any) -> None:
        self.edits.append(kwargs)


class FakeParser:
    def __init__(self) -> None:
        self.calls = 0

    def parse(self, source: bytes, old_tree: FakeTree | None = None) -> FakeTree:
        self.calls += 1
        return FakeTree(source, old_tree)


def test_apply_change_describes_each_edit_to_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = FakeParser()
    monkeypatch.setattr(context, "_parser_for", lambda language: (parser, threading.Lock()))
    text = "def f():\n    x = 1\n    return x\n"
    doc = SyntaxDocument(text, "python")
    for start, end, new in EDITS:
        tree = doc.tree
        assert isinstance(tree, FakeTree) and tree.source == text.encode()
        old_text = text
        text = apply_reference(text, start, end, new)
        doc.apply_change(new, lsp_range(start, end))
        assert doc.text == text
        (edit,) = tree.edits
        begin = next(i for i in range(len(old_text) + 1) if len(old_text[:i].encode()) == edit["start_byte"])
        removed_end = next(
            i for i in range(len(old_text) + 1) if len(old_text[:i].encode()) == edit["old_end_byte"]
        )
        assert old_text[:begin] + new + old_text[removed_end:] == text
        assert edit["start_point"] == ts_point(old_text, begin)
        assert edit["old_end_point"] == ts_point(old_text, removed_end)
        assert edit["new_end_byte"] == len(text[: begin + len(new)].encode())
        assert edit["new_end_point"] == ts_point(text, begin + len(new))
    final = doc.tree
    assert isinstance(final, FakeTree) and final.old is not None and final.source == text.encode()
    calls = parser.calls
    doc.apply_change("a", lsp_range((0, 0), (0, 0)))
    doc.apply_change("b", lsp_range((0, 1), (0, 1)))
    assert parser.calls == calls  # no parse until the tree is read: a burst costs one reparse
    assert len(final.edits) == 2 and doc.tree is not final and parser.calls == calls + 1
    doc.apply_change("fresh = 1\n")
    fresh = doc.tree
    assert isinstance(fresh, FakeTree) and fresh.old is None and doc.text == "fresh = 1\n"


class FakeNode:
    """Just enough of tree_sitter.Node for the context rules, built from a span of str offsets."""

    def __init__(self, text: str, type: str, span: tuple[int, int], *children: FakeNode) -> None:
        self.type = type
        self.start_byte, self.end_byte = (len(text[:i].encode()) for i in span)
        self.start_point = FakePoint(*ts_point(text, span[0]))
        self.end_point = FakePoint(*ts_point(text, span[1]))
        self.children = list(children)
        self.parent: FakeNode | None = None
        self.is_error = type == "ERROR"
        for child in children:
            child.parent = self

    def descendant_for_byte_range(self, start: int, end: int) -> FakeNode:
        for child in self.children:
            if child.start_byte <= start and end <= child.end_byte:
                return child.descendant_for_byte_range(start, end)
        return self

    def first_child_for_byte(self, byte: int) -> FakeNode | None:
        return next((child for child in self.children if child.end_byte > byte), None)


class FakePoint(NamedTuple):
    row: int
    column: int


def with_fake_tree(monkeypatch: pytest.MonkeyPatch, text: str, build: Any) -> SyntaxDocument:
    """A document parsed into `build(span)`; span(a, b, n) runs from the n-th `a` through the next `b`."""

    def span(first: str, last: str, nth: int = 0) -> tuple[int, int]:
        start = -1
        for _ in range(nth + 1):
            start = text.index(first, start + 1)
        return start, text.index(last, start + len(first)) + len(last)

    root = FakeNode(text, "module", (0, len(text)), *build(span))

    class Parser:
        def parse(self, source: bytes, old_tree: Any = None) -> Any:
            return type("Tree", (), {"root_node": root, "copy": lambda tree: tree})()

    monkeypatch.setattr(context, "_parser_for", lambda language: (Parser(), threading.Lock()))
    return SyntaxDocument(text, "fake")


def test_byte_offsets_from_any_direction() -> None:
    text = "aé😀\n" * 50
    doc = SyntaxDocument(text, None)
    for index in [0, 7, 150, 3, 149, 200, 199, 80, 81, 10]:
        assert doc._byte_offset(index) == len(text[:index].encode())


def test_tree_block_indent_from_a_bracketed_node(monkeypatch: pytest.MonkeyPatch) -> None:
    # Text rules see a column-0 cursor next to a column-0 `]`: top level. The tree knows the list is open.
    source = "def f():\n    x = [\n        1,\n<|cursor|>\n]\n"
    text, offset = split_marker(source)
    assert context_for(source, None)[2].block_indent is None

    def build(span: Any) -> list[FakeNode]:
        lst = FakeNode(text, "list", span("[", "]"))
        assign = FakeNode(text, "assignment", span("x =", "]"), lst)
        body = FakeNode(text, "block", span("x =", "]"), assign)
        return [FakeNode(text, "function_definition", span("def", "]"), body)]

    doc = with_fake_tree(monkeypatch, text, build)
    ctx = doc.context_at(*lsp_position(text, offset))
    assert (ctx.scope, ctx.block_indent) == ("block", 4)


def test_tree_block_indent_from_a_body_without_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Python-like `block` starts at its first statement; the block opens on its parent's line.
    source = "if ok:\n    def f():\n        a()\n<|cursor|>\n    b()\n"
    text, offset = split_marker(source)
    assert context_for(source, None)[2].block_indent == 0  # text rules: the shallower neighbour wins

    def build(span: Any) -> list[FakeNode]:
        inner = FakeNode(text, "block", span("a(", ")"))
        func = FakeNode(text, "function_definition", span("def", "a()"), inner)
        outer = FakeNode(text, "block", span("def", "b()"), func)
        return [FakeNode(text, "if_statement", span("if", "b()"), outer)]

    doc = with_fake_tree(monkeypatch, text, build)
    assert doc.context_at(*lsp_position(text, offset)).block_indent == 0  # `if ok:` holds the cursor
    inside = "if ok:\n    def f():\n        a()\n\n        c()\n    b()\n"

    def build_inside(span: Any) -> list[FakeNode]:
        inner = FakeNode(inside, "block", span("a()", "c()"))
        func = FakeNode(inside, "function_definition", span("def", "c()"), inner)
        outer = FakeNode(inside, "block", span("def", "b()"), func)
        return [FakeNode(inside, "if_statement", span("if", "b()"), outer)]

    doc = with_fake_tree(monkeypatch, inside, build_inside)
    assert doc.context_at(3, 0).block_indent == 4  # `def f():` holds the cursor


def test_tree_skips_strings_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    text = 'x = """\nfirst\n\nsecond\n"""\n'

    def build(span: Any) -> list[FakeNode]:
        string = FakeNode(text, "string", span('"""', '"""'))
        return [
            FakeNode(
                text, "ERROR", (0, len(text) - 1), FakeNode(text, "assignment", (0, len(text) - 1), string)
            )
        ]

    doc = with_fake_tree(monkeypatch, text, build)
    assert doc.context_at(2, 0).block_indent == 0  # `assignment` is the first node that counts


def test_prefix_cut_snaps_to_a_top_level_node_from_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    text = 'a = "😀"\ns = """\nbödy\n"""\ndef g():\n    return s\ng()\n'
    budget = ContextBudget(prefix_tokens=31, suffix_tokens=100)
    plain = SyntaxDocument(text, None).context_at(6, 0, budget, count_tokens=len)
    assert plain.prefix.startswith("bödy\n")  # text rule: any unindented line

    def build(span: Any) -> list[FakeNode]:
        return [
            FakeNode(text, "expression_statement", span("a =", '😀"')),
            FakeNode(text, "expression_statement", span("s =", '\n"""')),
            FakeNode(text, "function_definition", span("def", "return s")),
            FakeNode(text, "expression_statement", span("g(", ")", 1)),
        ]

    ctx = with_fake_tree(monkeypatch, text, build).context_at(6, 0, budget, count_tokens=len)
    assert ctx.prefix == "def g():\n    return s\n"
    assert ctx.prefix_truncated


def test_apply_change_without_tree() -> None:
    text = "alpha\r\nbeta ✓\r\ngamma\r\n"
    doc = SyntaxDocument(text, None)
    for start, end, new in [((1, 5), (1, 6), "✔"), ((0, 5), (1, 0), " "), ((0, 0), (0, 0), "\r\n")]:
        text = apply_reference(text, start, end, new)
        doc.apply_change(new, lsp_range(start, end))
        assert doc.text == text
    assert doc.text == "\r\nalpha beta ✔\r\ngamma\r\n"
    assert doc.tree is None
    ctx = doc.context_at(1, 11)
    assert ctx.line_prefix == "alpha beta " and ctx.line_suffix == "✔"


def test_random_edits_keep_positions_right() -> None:
    rng = random.Random(7)
    pieces = ["a", "bc", " ", "\t", "é", "😀", "\n", "\r\n", "\r", "\n\n"]
    text = "".join(rng.choice(pieces) for _ in range(60))
    doc = SyntaxDocument(text, None)
    for step in range(300):
        if step % 50 == 0:
            doc.context_at(0, 0)  # line starts cached: later edits patch them instead of rescanning
        a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        start, end = lsp_position(text, a), lsp_position(text, b)
        new = "".join(rng.choice(pieces) for _ in range(rng.randrange(4)))
        text = apply_reference(text, start, end, new)
        doc.apply_change(new, lsp_range(start, end))
        assert doc.text == text
        assert doc._line_starts() == context._line_starts(text) == [0] + [m.end() for m in EOL.finditer(text)]
        offset = rng.randrange(len(text) + 1)
        line, character = lsp_position(text, offset)
        assert doc.offset_at(line, character) == offset or text[offset - 1 : offset + 1] == "\r\n"
    for sample in ["", "a", "a\n", "a\r\nb\r\n", "a\rb", "a\r\nb\nc", "\r\n\r\n"]:
        assert context._line_starts(sample) == [0] + [m.end() for m in EOL.finditer(sample)]


COMMENT = "// 🚀 start\n"
# Per language: a source and (old, new) edits, each replacing the first `old` in the current text ("" =
# insert at the start, END = append). Every step stays valid code so error recovery cannot differ.
END = "<end>"
TREE_EDITS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "python": (
        'def f():\n    x = 1\n    s = "hi"\n    return x\n',
        [
            ("", "# 🚀 start\n"),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ('    s = "héllo 😀"\n    return x\n', '    if x:\n        return "ü"\n    return x\n'),
            ("# 🚀 start\n", ""),
            (END, "\n\nclass C:\n    pass\n"),
        ],
    ),
    "javascript": (
        'function f() {\n  let x = 1;\n  const s = "hi";\n  return x;\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("  return x;\n", '  if (x) {\n    return "ü";\n  }\n  return x;\n'),
            (COMMENT, ""),
            (END, "\nconst g = () => f();\n"),
        ],
    ),
    "typescript": (
        'function f(): number {\n  let x = 1;\n  const s: string = "hi";\n  return x;\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("  return x;\n", '  if (x) {\n    return s.length + "ü".length;\n  }\n  return x;\n'),
            (COMMENT, ""),
            (END, "\nconst g = (): number => f();\n"),
        ],
    ),
    "tsx": (
        'const A = () => {\n  let x = 1;\n  const s = "hi";\n  return <div>{s}</div>;\n};\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("  return <div>", "  if (x) {\n    return <b>ü</b>;\n  }\n  return <div>"),
            (COMMENT, ""),
            (END, "\nexport default A;\n"),
        ],
    ),
    "go": (
        'package m\n\nfunc f() int {\n\tx := 1\n\ts := "hi"\n\t_ = s\n\treturn x\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x := 1", "x := 1 + 2"),
            ("\t_ = s\n", '\tif x > 0 {\n\t\treturn len("ü")\n\t}\n\t_ = s\n'),
            (COMMENT, ""),
            (END, "\nfunc g() int { return f() }\n"),
        ],
    ),
    "rust": (
        'fn f() -> i32 {\n    let x = 1;\n    let s = "hi";\n    x\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("    x\n}", '    if x > 0 {\n        return "ü".len() as i32;\n    }\n    x\n}'),
            (COMMENT, ""),
            (END, "\nfn g() -> i32 {\n    f()\n}\n"),
        ],
    ),
    "c": (
        'int f(void) {\n    int x = 1;\n    const char *s = "hi";\n    return x;\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("    return x;\n", '    if (x) {\n        return s[0] == "ü"[0];\n    }\n    return x;\n'),
            (COMMENT, ""),
            (END, "\nint g(void) { return f(); }\n"),
        ],
    ),
    "cpp": (
        'int f() {\n    auto x = 1;\n    const char *s = "hi";\n    return x;\n}\n',
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("    return x;\n", '    if (x) {\n        return s[0] == "ü"[0];\n    }\n    return x;\n'),
            (COMMENT, ""),
            (END, "\nint g() { return f(); }\n"),
        ],
    ),
    "java": (
        'class A {\n    int f() {\n        int x = 1;\n        String s = "hi";\n'
        "        return x;\n    }\n}\n",
        [
            ("", COMMENT),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            (
                "        return x;\n",
                '        if (x > 0) {\n            return "ü".length();\n        }\n        return x;\n',
            ),
            (COMMENT, ""),
            (END, "\nclass B {}\n"),
        ],
    ),
    "lua": (
        'local function f()\n  local x = 1\n  local s = "hi"\n  return x\nend\n',
        [
            ("", "-- 🚀 start\n"),
            ('"hi"', '"héllo 😀"'),
            ("x = 1", "x = 1 + 2"),
            ("  return x\n", '  if x > 0 then\n    return #"ü"\n  end\n  return x\n'),
            ("-- 🚀 start\n", ""),
            (END, "\nreturn f\n"),
        ],
    ),
}


def node_ranges(node: Any) -> list[tuple[str, int, int, tuple[int, int], tuple[int, int]]]:
    """Every node with its byte range and points: str(root) alone would not show misplaced nodes."""
    out = [(node.type, node.start_byte, node.end_byte, tuple(node.start_point), tuple(node.end_point))]
    for child in node.children:
        out.extend(node_ranges(child))
    return out


@pytest.mark.parametrize("language", sorted(TREE_EDITS))
def test_incremental_tree_matches_a_fresh_parse(language: str) -> None:
    if not has_grammar(language):
        pytest.skip(f"no tree-sitter grammar for {language} in this environment")
    text, edits = TREE_EDITS[language]
    doc = SyntaxDocument(text, language)
    assert doc.tree is not None and not doc.tree.root_node.has_error
    for old, new in edits:
        start = len(text) if old == END else text.index(old)
        end = start if old == END else start + len(old)
        doc.apply_change(new, lsp_range(lsp_position(text, start), lsp_position(text, end)))
        text = text[:start] + new + text[end:]
        assert doc.text == text
        incremental, fresh = doc.tree, SyntaxDocument(text, language).tree
        assert incremental is not None and fresh is not None
        assert not fresh.root_node.has_error, "the edit sequence must keep the code valid"
        assert str(incremental.root_node) == str(fresh.root_node)
        assert node_ranges(incremental.root_node) == node_ranges(fresh.root_node)


@pytest.mark.parametrize("name", [name for name, _, _ in SAMPLES if not name.endswith(".txt")])
def test_sample_trees_and_garbage_parse(name: str) -> None:
    language = language_for(None, name)
    assert language is not None
    if not has_grammar(language):
        pytest.skip(f"no tree-sitter grammar for {language} in this environment")
    text, _ = split_marker((DATA / name).read_text())
    doc = SyntaxDocument(text, language)
    assert doc.tree is not None and doc.tree.root_node.end_byte == len(text.encode())
    garbage = SyntaxDocument("}{)(\x7f\u2028 '''\"\"\" /* -- \\\n" * 50, language)
    assert garbage.tree is not None
    garbage.context_at(3, 4)
