"""Hole markers and the context for filling a span."""

from __future__ import annotations

import pytest

from dgemma_lsp.context import ContextBudget, SyntaxDocument
from dgemma_lsp.edits import fill_context, find_holes


@pytest.mark.parametrize(
    "line, holes",
    [
        ("    ...", ["..."]),
        ("    ...  # the body", ["...  # the body"]),
        ("    pass  # TODO: parse the header", ["pass  # TODO: parse the header"]),
        ("    pass # fixme", ["pass # fixme"]),
        ("    return todo!();", ["todo!()"]),
        ('    let x = todo!("later");', ['todo!("later")']),
        ("    unimplemented!()", ["unimplemented!()"]),
        ("int f(void) { /* TODO */ return 0; }", ["/* TODO */"]),
        ("call(/* todo: args */, /* TODO */)", ["/* todo: args */", "/* TODO */"]),
        ("    pass", []),
        ("    # TODO: a plain comment stays", []),
        ("const all = [...xs, ...ys];", []),
        ("    print('...')", []),
        ("", []),
    ],
)
def test_find_holes(line: str, holes: list[str]) -> None:
    assert [line[a:b] for a, b in find_holes(line)] == holes


def test_a_hole_on_its_own_line_is_filled_as_a_block() -> None:
    text = "def area(r):\n    pass  # TODO\n\n\ndef other():\n    return 2\n"
    doc = SyntaxDocument(text, "python")
    start = text.index("pass")
    ctx = fill_context(doc, start, start + len("pass  # TODO"), ContextBudget())
    assert ctx.scope == "block" and ctx.block_indent == 0
    assert ctx.prefix == "def area(r):\n    " and ctx.suffix.startswith("\n\n\ndef other():")


def test_a_span_inside_a_line_is_filled_as_the_rest_of_it() -> None:
    text = "int f(void) { return /* TODO */; }\n"
    doc = SyntaxDocument(text, "c")
    start = text.index("/*")
    ctx = fill_context(doc, start, start + len("/* TODO */"), ContextBudget(line_middle_tokens=20))
    assert (ctx.scope, ctx.line_prefix, ctx.line_suffix) == ("line", "int f(void) { return ", "; }")
    assert ctx.max_middle_tokens == 20


def test_a_selection_over_lines_gets_a_block_middle() -> None:
    text = "fn f() { let a = 1;\n    let b = 2; }\n"
    doc = SyntaxDocument(text, "rust")
    start, end = text.index("let a"), text.index(" }")
    ctx = fill_context(doc, start, end, ContextBudget(block_middle_tokens=99))
    assert (ctx.scope, ctx.line_prefix, ctx.line_suffix, ctx.max_middle_tokens) == (
        "block",
        "fn f() { ",
        " }",
        99,
    )
