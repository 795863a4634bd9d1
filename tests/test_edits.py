"""Hole markers and the context for filling a span."""

from __future__ import annotations

import pytest

from dgemma_lsp.context import ContextBudget, SyntaxDocument
from dgemma_lsp.edits import fill_context, fill_span, find_holes
from dgemma_lsp.postprocess import adds_syntax_errors, after_indentation, finish


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


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_a_selection_over_lines_gets_a_block_middle(eol: str) -> None:
    text = f"fn f() {{ let a = 1;{eol}    let b = 2; }}{eol}"
    doc = SyntaxDocument(text, "rust")
    start, end = text.index("let a"), text.index(" }")
    ctx = fill_context(doc, start, end, ContextBudget(block_middle_tokens=99))
    assert (ctx.scope, ctx.line_prefix, ctx.line_suffix, ctx.max_middle_tokens) == (
        "block",
        "fn f() { ",
        " }",
        99,
    )


@pytest.mark.parametrize(
    "text, language, first, last",
    [
        ("def total(items):\n    s = 0\n    for x in items:\n        s += x\n    return s\n", "python", 2, 4),
        (
            "func Sum(xs []int) int {\r\n\ts := 0\r\n\tfor _, x := range xs {\r\n"
            "\t\ts += x\r\n\t}\r\n\treturn s\r\n}\r\n",
            "go",
            2,
            5,
        ),
    ],
)
def test_whole_lines_selected_and_filled_with_what_they_held_give_the_file_back(
    text: str, language: str, first: int, last: int
) -> None:
    # Selected from the start of line `first` to the start of line `last`, as selecting lines does. The
    # block middle never ends in a line break: with the selection's own kept, the fill ran into `last`.
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    start, end = fill_span(text, starts[last], starts[first])  # selected upwards
    assert (start, text[end:].startswith(("\n", "\r\n"))) == (starts[first], True)
    doc = SyntaxDocument(text, language)
    ctx = fill_context(doc, start, end, ContextBudget())
    found = finish(after_indentation(ctx.indent_at_cursor + text[start:end], ctx.indent_at_cursor), ctx)
    assert found is not None and not adds_syntax_errors(found, ctx)
    assert text[:start] + found.text + text[end:] == text
