"""Edits that fill a span: where the holes are, and the context for filling a span. No torch.

A hole is a placeholder a programmer leaves for code to come: `...`, `pass  # TODO`, `/* TODO */`,
`todo!()`. Filling a span (a hole, or any selection) puts the cursor where the span was and the model's
middle in its place.
"""

from __future__ import annotations

import dataclasses
import re

from dgemma_lsp.context import ContextBudget, FimContext, SyntaxDocument

FILL_COMMAND = "dgemma.fillRange"

# Holes that fill their whole line (the placeholder is the statement) ...
_HOLE_LINES = [
    re.compile(r"\.\.\.\s*(?:#.*)?"),  # Python's Ellipsis body, TypeScript/Go pseudo-code
    re.compile(r"pass\s*#\s*(?:TODO|FIXME)\b.*", re.IGNORECASE),
]
# ... and holes inside a line.
_HOLE_SPANS = [
    re.compile(r"/\*\s*(?:TODO|FIXME)\b.*?\*/", re.IGNORECASE),
    re.compile(r"\b(?:todo|unimplemented)!\((?:\s*\"(?:[^\"\\]|\\.)*\"\s*)?\)"),  # Rust
]


def find_holes(line: str) -> list[tuple[int, int]]:
    """The holes in one line, as (start, end) str indices."""
    body = line.lstrip()
    start = len(line) - len(body)
    if any(p.fullmatch(body.rstrip()) for p in _HOLE_LINES):
        return [(start, len(line.rstrip()))]
    return [m.span() for p in _HOLE_SPANS for m in p.finditer(line)]


def fill_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The span to fill for the selection text[start:end] (either way round). A selection of whole lines
    ends at the start of the line after them: its last line break is left out, so the fill ends where the
    last selected line did and the line after keeps its own start (else the block middle, which never
    ends in a line break, ran into it)."""
    start, end = min(start, end), max(start, end)
    if text.endswith("\n", start, end):
        end -= 1
    if text.endswith("\r", start, end):
        end -= 1
    return start, end


def fill_context(doc: SyntaxDocument, start: int, end: int, budget: ContextBudget) -> FimContext:
    """The context for replacing doc.text[start:end]: the document without the span, cursor at its start.

    A span that held a line break gets a block middle even when its line keeps code around it.
    """
    without = SyntaxDocument(doc.text[:start] + doc.text[end:], doc.language)
    cursor = without.position_at(start)
    ctx = without.context_at(cursor.line, cursor.character, budget)
    if ctx.scope == "line" and re.search(r"[\r\n]", doc.text[start:end]):  # a lone CR ends a line too
        ctx = dataclasses.replace(ctx, scope="block", max_middle_tokens=budget.block_middle_tokens)
    return ctx
