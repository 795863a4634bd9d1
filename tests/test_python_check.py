"""The syntax check's second test for Python: Python's own parser on the top-level unit that holds the cursor.

tree-sitter-python takes code that Python rejects (an unexpected indent, a dedent out of a function in front
of its code, `b = self.` at the end of a line, an unterminated string that swallows an error elsewhere);
`SyntaxSnapshot.adds_errors` parses the unit before and after the suggestion with `compile`.
"""

from __future__ import annotations

import warnings

import pytest

from dgemma_lsp import context as context_module
from dgemma_lsp.context import FimContext, SyntaxDocument
from dgemma_lsp.postprocess import Suggestion, adds_syntax_errors

CURSOR = "<|cursor|>"


def context(source: str, eol: str = "\n") -> FimContext:
    """The Python context at the cursor marker in `source` (its \\n line endings made `eol`)."""
    source = source.replace("\n", eol)
    offset = source.index(CURSOR)
    doc = SyntaxDocument(source.replace(CURSOR, ""), "python")
    position = doc.position_at(offset)
    return doc.context_at(position.line, position.character)


def drops(ctx: FimContext, text: str, replace: int = 0) -> bool:
    return adds_syntax_errors(Suggestion(text, replace), ctx)


# Not lone CRs: tree-sitter-python misreads a file of them on its own (see the test at the end).
EOLS = pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])


@EOLS
def test_an_unexpected_indent_is_dropped(eol: str) -> None:
    # After Enter the model often starts its block deeper than the cursor; tree-sitter sees no error.
    ctx = context("def f(x):\n    if x:\n        a = 1\n        <|cursor|>\n        return a\n", eol)
    assert drops(ctx, "    b = 2")
    assert drops(ctx, "b = 2" + eol + "            c = 3")
    assert not drops(ctx, "b = 2")
    assert not drops(ctx, "b = (1," + eol + "             2)")  # a continuation line may indent as it likes


@EOLS
def test_a_dedent_out_of_a_function_in_front_of_its_code_is_dropped(eol: str) -> None:
    body = context("def f(x):\n    y = x\n<|cursor|>    return y\n", eol)
    assert drops(body, "y = 2" + eol)
    assert not drops(body, "    y = 2" + eol)
    first = context("def f(x):\n<|cursor|>    return y\n", eol)  # the dedent leaves the def without a body
    assert drops(first, "y = 2" + eol)
    assert not drops(first, "    y = 2" + eol)
    # At the start of a top-level statement the unit takes the one above too: an indented line there
    # continues the function.
    below = context("def f():\n    pass\n<|cursor|>x = 1\n", eol)
    assert not drops(below, "    y = 2" + eol)
    assert drops(below, "        y = 2" + eol)


def test_a_dangling_attribute_is_dropped() -> None:
    ctx = context("class A:\n    def f(self):\n        a = 1\n        <|cursor|>\n        c = 2\n")
    assert drops(ctx, "b = self.")
    assert drops(ctx, "b = self." + "\n        self")
    assert not drops(ctx, "c = self.x")
    assert not drops(ctx, "b = self.x\n        d = b")


def test_an_unterminated_docstring_is_dropped_when_the_file_has_an_error_elsewhere() -> None:
    # The new string swallowed the half-typed line below (up to its quote): tree-sitter counted no more
    # errors, and none lay wholly on the suggestion's lines.
    greet = "def greet(name):\n    n = name\n    <|cursor|>\n\n\n"
    clean = greet + "def main():\n    s = 1\n    return s\n"
    typing = greet + "def main():\n    s = 'ab' + \n    return s\n"
    for source in (clean, typing):
        ctx = context(source)
        assert drops(ctx, "'''"), source
        assert drops(ctx, '"""'), source
        assert drops(ctx, '"""Greet someone.'), source
        assert not drops(ctx, '"""Greet someone."""'), source
        assert not drops(ctx, '"""Greet\n    someone.\n    """\n    return name'), source
        assert not drops(ctx, "return name"), source


def test_a_half_typed_line_elsewhere_in_the_function_keeps_good_suggestions() -> None:
    # Python tells its first error only: the unit does not parse before, and a suggestion is the one to
    # blame only for a new error on its lines (or the next line of code below them).
    below = context("def f(x):\n    y = x\n    <|cursor|>\n    if y\n        return y\n")
    assert not drops(below, "z = 1")
    assert not drops(below, "z = 1\n    w = z")  # the old error one line further down: the same
    assert not drops(below, "# note")
    assert drops(below, "    z = 1")
    assert drops(below, "z = y.")
    assert drops(below, '"""')
    above = context("def f(x):\n    if x\n        y = x\n        <|cursor|>\n        return y\n")
    assert not drops(above, "z = 1")
    assert not drops(above, "z = (1,\n             2)")


@EOLS
def test_an_error_on_the_line_below_the_suggestion_is_told_apart_from_one_that_was_there(eol: str) -> None:
    # In a function broken further down, the suggestion's dedent makes the next line an unexpected indent:
    # its error, though not on its lines.
    broken = context("def f(x):\n    y = x\n<|cursor|>    return y\n    if y\n", eol)
    assert drops(broken, "y = 2" + eol)
    assert not drops(broken, "    y = 2" + eol)
    # The next line's own error (the user's, before the suggestion) is not the suggestion's.
    theirs = context("def f(x):\n    y = x\n<|cursor|>    if y\n        return y\n", eol)
    assert not drops(theirs, "    z = 2" + eol)
    assert not drops(theirs, "    z = 2" + eol + "    w = 3" + eol)
    assert drops(theirs, "z = 2" + eol + "  " + eol + "    z." + eol)
    # A block the user opens on their own line gets its body from them, on the next line.
    opened = context("def f(x):\n    if x<|cursor|>\n    return 1\n", eol)
    assert not drops(opened, ":")


def test_newer_syntax_in_another_unit_does_not_drop_good_suggestions() -> None:
    # Python 3.12's `type` statement and PEP 695 generics do not parse on an older Python: only the unit
    # that holds the cursor is parsed.
    source = (
        "type Pair = tuple[int, int]\n\n\n"
        "def first[T](xs: list[T]) -> T:\n    return xs[0]\n\n\n"
        "def total(xs):\n    s = 0\n    <|cursor|>\n    return s\n\n\n"
        "class Box[T]:\n    def get(self) -> T:\n        return self.v\n"
    )
    ctx = context(source)
    assert not drops(ctx, "for x in xs:\n        s += x")
    assert not drops(ctx, "s = sum(xs)")
    assert drops(ctx, "    s = sum(xs)")
    assert drops(ctx, "s = xs.")


def test_a_cursor_in_a_method_checks_its_class() -> None:
    source = (
        "import os\n\n\n"
        "class Store:\n"
        "    def __init__(self, root):\n        self.root = root\n\n"
        "    def path(self, name):\n        name = name.strip('/')\n        <|cursor|>\n\n"
        "    def size(self, name):\n        return os.path.getsize(self.path(name))\n\n\n"
        "store = Store('.')\n"
    )
    ctx = context(source)
    assert not drops(ctx, "return os.path.join(self.root, name)")
    # A new method after the body: fine in the class, whatever comes after it in the file.
    assert not drops(ctx, "return name\n\n    def exists(self, name):\n        return True")
    assert drops(ctx, "    return name")
    assert drops(ctx, "return name\n\n  def exists(self, name):\n        return True")  # no such level
    assert drops(ctx, "return os.path.join(self.")


def test_a_big_file_parses_only_the_unit(monkeypatch) -> None:
    monkeypatch.setattr(context_module, "CHECK_BUDGET_S", 60.0)  # an abandoned check would prove nothing
    parsed: list[str] = []
    parse = context_module._parse_python
    monkeypatch.setattr(context_module, "_parse_python", lambda text: parsed.append(text) or parse(text))
    functions = [f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n\n" for i in range(3000)]
    functions[2000] = "def f2000(x):\n    y = x + 2000\n    <|cursor|>\n    return y * 2\n\n\n"
    functions[10] = "def broken(x:\n    return x\n\n\n"  # an error far away
    source = "".join(functions)
    assert len(source) > 100_000
    ctx = context(source)
    assert not drops(ctx, "y += 1")
    assert drops(ctx, "    y += 1")
    assert not drops(ctx, "y += 1\n\n\ndef extra(z):\n    return z")  # a new top-level function below
    assert drops(ctx, "y += 1\n\n\ndef extra(z):\n    return z.")
    assert parsed and all("def f2000(x):" in text and len(text) < 200 for text in parsed)
    # The unit is parsed once for a snapshot, whatever the number of suggestions checked.
    assert sum("y += 1" not in text for text in parsed) == 1
    # A unit over the limit keeps tree-sitter's verdict.
    monkeypatch.setattr(context_module, "PYTHON_UNIT_MAX_CHARS", 50)
    assert not drops(context(source), "    y += 1")


def test_the_parse_never_costs_a_suggestion_nor_prints(monkeypatch) -> None:
    ctx = context("import re\n\n\ndef digits(s):\n    <|cursor|>\n    return re.findall('\\d+', s)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid escape's warning would be an error, or be printed
        assert not drops(ctx, "s = s.strip()")
        assert not drops(ctx, "s = re.sub('\\s', '', s)")
        assert drops(ctx, "    s = s.strip()")
    for error in (ValueError("source code cannot contain null bytes"), RecursionError(), MemoryError()):

        def failing(*args, error: Exception = error, **kwargs):
            raise error

        monkeypatch.setattr(context_module, "compile", failing, raising=False)
        assert not drops(context("def f(x):\n    y = x\n    <|cursor|>\n    return y\n"), "    z = 1")


def test_python_counts_lines_as_the_document_does_with_lone_crs() -> None:
    # Python's parser alone (tree-sitter-python misreads lone-CR files): its lines are the document's.
    syntax = context("def f(x):\n    y = x\n<|cursor|>    return y\n    if y\n", "\r").syntax
    assert syntax is not None
    assert syntax._breaks_python("y = 2\r", syntax.offset)
    assert not syntax._breaks_python("    y = 2\r", syntax.offset)
    syntax = context("def f(x):\n    y = x\n<|cursor|>    if y\n        return y\n", "\r").syntax
    assert syntax is not None
    assert not syntax._breaks_python("    z = 2\r    w = 3\r", syntax.offset)
    assert syntax._breaks_python("    z = 2\r        w = 3\r", syntax.offset)
