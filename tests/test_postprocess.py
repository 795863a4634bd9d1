from __future__ import annotations

import pytest

from dgemma_lsp.context import FimContext, SyntaxDocument
from dgemma_lsp.postprocess import finish_middle

CURSOR = "<|cursor|>"


def context(source: str, language: str | None) -> FimContext:
    """The context at the cursor marker in `source`."""
    offset = source.index(CURSOR)
    doc = SyntaxDocument(source.replace(CURSOR, ""), language)
    position = doc.position_at(offset)
    return doc.context_at(position.line, position.character)


def test_line_scope_keeps_the_first_line_only() -> None:
    ctx = context("x = <|cursor|>\nprint(x)\n", "python")
    assert ctx.scope == "line"
    assert finish_middle("compute(1, 2)\nprint(x)\n", ctx) == "compute(1, 2)"


def test_line_scope_drops_a_retyped_line_suffix() -> None:
    ctx = context("print(<|cursor|>)\n", "python")
    assert finish_middle("total)", ctx) == "total"


def test_whitespace_only_middle_is_nothing() -> None:
    ctx = context("x = <|cursor|>\n", "python")
    assert finish_middle("   \n  total", ctx) == ""


PY_BODY = "def area(r):\n    <|cursor|>\n\n\ndef other():\n    return 2\n"


def test_python_block_stops_where_the_function_ends() -> None:
    ctx = context(PY_BODY, "python")
    assert ctx.scope == "block" and ctx.block_indent == 0
    raw = "pi = 3.14\n    return pi * r * r\n\ndef other():\n    return 3\n"
    assert finish_middle(raw, ctx) == "pi = 3.14\n    return pi * r * r"


C_BODY = "int add(int a, int b) {\n    <|cursor|>\n}\n\nint main(void) { return add(1, 2); }\n"


def test_brace_block_stops_before_the_closing_brace() -> None:
    ctx = context(C_BODY, "c")
    assert ctx.scope == "block"
    raw = "int s = a + b;\n    if (s > 9) {\n        s = 9;\n    }\n    return s;\n}\n\nint main(void) {"
    assert finish_middle(raw, ctx) == "int s = a + b;\n    if (s > 9) {\n        s = 9;\n    }\n    return s;"


def test_middle_that_runs_into_the_suffix_is_cut_there() -> None:
    source = "items = []\n<|cursor|>\nprint(items)\n"
    ctx = context(source, "python")
    assert finish_middle("items.append(1)\nitems.append(2)\nprint(items)\nprint(items)\n", ctx) == (
        "items.append(1)\nitems.append(2)"
    )


def test_crlf_documents_get_crlf_middles() -> None:
    ctx = context("def f():\r\n    <|cursor|>\r\n", "python")
    assert finish_middle("a = 1\n    return a\n", ctx) == "a = 1\r\n    return a"


@pytest.mark.parametrize("raw", ["", "\n\n", "   "])
def test_empty_block_middles_are_nothing(raw: str) -> None:
    assert finish_middle(raw, context(PY_BODY, "python")) == ""
