"""From the model's raw middle to the text we insert: cut at the scope end and where it repeats the suffix.

No torch here; everything works on strings and the FimContext from the context step.
"""

from __future__ import annotations

from dgemma_lsp.context import FimContext, indent_width


def _first_suffix_line(ctx: FimContext) -> str | None:
    """The first non-blank line after the cursor line: where a repeated suffix would start."""
    for line in ctx.suffix.splitlines()[1:]:
        if line.strip():
            return line.rstrip()
    return None


def finish_middle(raw: str, ctx: FimContext) -> str:
    """Trim the raw middle to what belongs between prefix and suffix; '' when nothing useful is left."""
    text = raw.replace("\r\n", "\n")
    if ctx.scope == "line":
        text = text.split("\n", 1)[0]
        # The model often re-types what is already right of the cursor (`)`, `):` ...).
        tail = ctx.line_suffix.strip()
        if tail and text.rstrip().endswith(tail):
            text = text.rstrip()[: -len(tail)]
        return text.rstrip() if text.strip() else ""

    lines = text.split("\n")
    repeated = _first_suffix_line(ctx)
    kept: list[str] = [lines[0]]
    for line in lines[1:]:
        if line.strip():
            if ctx.block_indent is not None and indent_width(line) <= ctx.block_indent:
                break  # dedented past the block that holds the cursor: its scope has ended
            if repeated is not None and line.rstrip() == repeated:
                break  # the code after the cursor starts here
        kept.append(line)
    text = "\n".join(kept).rstrip()
    if not text.strip():
        return ""
    if "\r\n" in ctx.prefix or "\r\n" in ctx.suffix:
        text = text.replace("\n", "\r\n")
    return text
