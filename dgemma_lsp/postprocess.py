"""From the model's raw middle to the suggestion we show. No torch here: strings, the FimContext, tree-sitter.

`finish` runs the filters users notice when they are missing (EDITOR-ANCHORS.md section 3): cut to the
scope from the context step, cut where the middle runs into the code after the cursor or stops being
valid UTF-8, reject what only repeats it, reject whitespace and degenerate repetition, replace auto-closed
brackets and quotes instead of duplicating them, and re-indent to the document's style.
`adds_syntax_errors` tells a suggestion that breaks the document (the engine drops it); `rank` puts such
candidates last.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from dgemma_lsp.context import (
    TAB_WIDTH,
    FimContext,
    SyntaxDocument,
    count_errors,
    indent_width,
    without_line_comment,
)

_CLOSING = {"(": ")", "[": "]", "{": "}"}
# What an auto-pair plugin leaves right of the cursor: closing brackets/quotes, maybe `;`, `,` or `:`.
_AUTO_CLOSED_TAIL = re.compile(r"[)\]}\"'`;,:\s]*")
# A unit of 1-12 characters repeated 10+ times in a row: the sampler got stuck (`foo(foo(foo(...`, `aaaa...`).
_STUCK = re.compile(r"(.{1,12}?)\1{9,}", re.DOTALL)
_LINE_REPEATS = 3  # this many identical lines in a row are a loop, not code
_CASE_LABEL = re.compile(r"(case\b|default\s*:)")
_QUOTES = "\"'`"
_STRING_PREFIXES = {"b", "r", "u", "f", "rb", "br", "fr", "rf", "t", "tr", "rt"}  # Python's


@dataclass(frozen=True)
class Indentation:
    """How the document indents: tabs, or `size` spaces per level."""

    insert_spaces: bool = True
    size: int = 4


@dataclass(frozen=True)
class Suggestion:
    """`text` goes at the cursor, over the first `replace` UTF-16 units after it (auto-closed characters)."""

    text: str
    replace: int = 0


def finish(
    raw: str, ctx: FimContext, *, indentation: Indentation | None = None, max_lines: int | None = None
) -> Suggestion | None:
    """The suggestion for one raw middle, or None when nothing useful is left.

    `indentation` defaults to what the context's text uses; `max_lines` caps block middles.
    """
    text = re.sub(r"\r\n?", "\n", raw)
    if "\ufffd" not in ctx.prefix and "\ufffd" not in ctx.suffix:
        # Byte tokens that make no character decode to U+FFFD: the middle is only good up to there.
        text = text.partition("\ufffd")[0]
    eol = _line_ending(ctx.prefix + ctx.suffix)
    if ctx.scope == "line":
        first, newline, _ = text.partition("\n")
        found = _finish_line(first, ctx)
        if found and newline and not found.replace and not ctx.line_prefix.strip():
            # The cursor is at the start of a line in front of code, and the model wrote a whole line:
            # it goes in as a new line above, and the existing line keeps its indentation.
            return Suggestion(found.text + eol + ctx.line_prefix)
        return found
    lines = _cut_block(_dedent_past_cursor(text.split("\n"), ctx), ctx)
    if max_lines is not None:
        lines = lines[:max_lines]
    lines = _drop_repeated_lines(lines)
    ends_line = len(lines) > 1 and not lines[-1].strip()
    text = "\n".join(lines)
    if not ctx.line_suffix.strip() or ends_line:  # else its last line runs on into code: keep its spaces
        text = text.rstrip()
    if not text.strip() or _is_stuck(text):
        return None
    text = reindent(text, indentation or detect_indentation(ctx.prefix + ctx.suffix), ctx.line_prefix)
    if ctx.line_suffix.strip():
        # Code after the cursor (a benchmark's multi-line middle, in front of its next line): whole lines
        # go in above it, which keeps its indentation.
        return Suggestion(text.replace("\n", eol) + (eol + ctx.line_prefix if ends_line else ""))
    # The blank line's whitespace after the cursor would trail the middle's last line: replace it.
    return Suggestion(text.replace("\n", eol), replace=len(ctx.line_suffix))


def _line_ending(text: str) -> str:
    """The document's line ending: \\r\\n, a lone \\r (old Mac files), else \\n."""
    if "\r\n" in text:
        return "\r\n"
    return "\r" if "\r" in text and "\n" not in text else "\n"


def after_indentation(middle: str, indent: str) -> str:
    """A middle written from the start of a line, from a cursor after `indent` on: without the indentation
    it repeats (its first line's whole indentation when that differs, as the cursor's level is the user's)."""
    if middle.startswith(indent):
        return middle[len(indent) :]
    first, newline, rest = middle.partition("\n")
    return first.lstrip(" \t") + newline + rest


def finish_middle(raw: str, ctx: FimContext) -> str:
    """The text `finish` would insert ('' for none), for callers that only insert at the cursor."""
    found = finish(raw, ctx)
    return found.text if found is not None else ""


# --- line scope --------------------------------------------------------------------------------------


def _finish_line(text: str, ctx: FimContext) -> Suggestion | None:
    tail = ctx.line_suffix
    text = _trim_end(text, tail)
    if not text.strip() or _is_stuck(text):
        return None
    replace = _auto_closed_overlap(ctx.line_prefix, text, tail, ctx.language)
    retyped = tail.strip()
    if replace is None and retyped and text.endswith(retyped) and _depth(text) == _depth(retyped):
        # The model re-typed the rest of the line (`, b)` in `f(a|, b)`): keep only what is new. Not
        # when the text closes its own brackets (`make(3)` before the `)` of a call opened above).
        text = _trim_end(text[: -len(retyped)], tail)
        if not text.strip():
            return None
    replace = replace or 0
    new = text.strip()
    below = _next_line(ctx)
    completed = (ctx.line_prefix + text).rstrip()
    if new in (tail[:replace].strip(), retyped, below.strip()) or (
        not retyped and completed == below.rstrip()
    ):
        return None  # only repeats what is already there (the line completed into the next one, too)
    return Suggestion(text, _utf16_len(tail[:replace]))


def _trim_end(text: str, tail: str) -> str:
    """`text` without trailing whitespace, unless code the user wrote follows the cursor: then the
    whitespace is the gap before it (`not ` before `ok:`, `) ` before `{`, `, ` before `"`)."""
    user_code = bool(tail[:1].strip()) and _AUTO_CLOSED_TAIL.fullmatch(tail) is None
    return text if user_code else text.rstrip()


def _depth(text: str) -> int:
    """Brackets `text` opens minus those it closes (text rule, strings not told apart)."""
    return sum(ch in "([{" for ch in text) - sum(ch in ")]}" for ch in text)


def _auto_closed_overlap(line_prefix: str, text: str, tail: str, language: str | None) -> int | None:
    """How many characters of `tail` the completed line closes itself; None when `tail` is not auto-closed.

    With `tail` made only of closing brackets/quotes (what auto-pair plugins insert), `text` may close
    some of them already: `def f(` + `a, b):` before `)`. The ones `text` closes are replaced rather
    than left to be doubled; those still owed stay. A comment after them (`)  # note`) stays as it is.
    """
    # Read from the line's start, so that a closing quote in `tail` is not taken to open a string.
    tail = without_line_comment(line_prefix + tail, language)[len(line_prefix) :].rstrip()
    if not tail.strip() or _AUTO_CLOSED_TAIL.fullmatch(tail) is None:
        return None
    owed, closers = _owed_closers(line_prefix, language), _closers_in(tail)
    if not owed.startswith(closers):
        return None  # not opened on this line (the `)` that ends a call over several lines): not auto-closed
    # How many of them `text` closes: what it leaves owed ends with the rest (after what it opens anew,
    # such as the `{` of a body to come).
    after = _owed_closers(line_prefix + text, language)
    closed = next(j for j in range(len(owed) + 1) if after.endswith(owed[j:]))
    for k in range(len(tail) + 1):
        if _closers_in(tail[k:]) == closers[closed:]:
            rest = tail[k:].strip()
            # What is left (`;`, `:`) may have been re-typed too: `foo(` + `x);` before `);`.
            return len(tail) if rest and not _closers_in(rest) and text.endswith(rest) else k
    return None  # the brackets do not add up (quotes in comments, say): treat the tail as ordinary text


def _owed_closers(line: str, language: str | None = None) -> str:
    """Closing brackets and quotes that `line` still needs, innermost first (text rule, no tree)."""
    stack: list[str] = []  # what closes each open bracket or string; a quote on top: inside a string
    escaped = False
    for i, ch in enumerate(line):
        quote = stack[-1] if stack and stack[-1] in _QUOTES else None
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                stack.pop()
            elif quote == "`" and ch == "{" and line[i - 1] == "$":
                stack.append("}")  # a template string's `${...}`: code until its `}`
        elif ch in '"`' or (ch == "'" and _opens_quote(line, i, language)):
            stack.append(ch)
        elif ch in _CLOSING:
            stack.append(_CLOSING[ch])
        elif ch in ")]}" and stack and stack[-1] == ch:
            stack.pop()
    return "".join(reversed(stack))


def _opens_quote(line: str, i: int, language: str | None) -> bool:
    """Whether the `'` at line[i] opens a string or character literal."""
    if language == "rust":  # else a lifetime (`<'a>`, `&'a str`): a char literal closes at once
        return i == len(line) - 1 or line.startswith("\\", i + 1) or line.startswith("'", i + 2)
    word = re.search(r"\w*$", line[:i]).group()  # type: ignore[union-attr]  # matches any text
    # `don't` is no quote; a string prefix (`b'`, `rb'`, `f'`) is, and so is `'` after a non-word.
    return not word or word.lower() in _STRING_PREFIXES


def _closers_in(text: str) -> str:
    return "".join(ch for ch in text if ch in ")]}\"'`")


def _next_line(ctx: FimContext) -> str:
    """The first non-blank line after the cursor line ('' when there is none)."""
    return next((line for line in ctx.suffix.splitlines()[1:] if line.strip()), "")


# --- block scope -------------------------------------------------------------------------------------


def _cut_block(lines: list[str], ctx: FimContext) -> list[str]:
    """Lines up to where the block ends (a dedent past its opener) or the code after the cursor begins."""
    below = _next_line(ctx)
    after = [line.strip() for line in ctx.suffix.splitlines()[1:] if line.strip()]

    def runs_into_suffix(rest: list[str]) -> bool:
        # Two lines alike, or as many as are left: one alike (`try:` before `try:`) may be new code.
        ahead = [line.strip() for line in rest if line.strip()]
        alike = min(2, len(ahead), len(after))
        return alike > 0 and ahead[:alike] == after[:alike]

    if below and runs_into_suffix(lines):
        return []
    limit = ctx.block_indent
    if limit is None and indent_width(ctx.line_prefix + lines[0]) > 0:
        # At top level (the end of a file, say) a middle that starts indented continues the body above it.
        limit = indent_width(ctx.line_prefix + lines[0]) - 1
    kept = [lines[0]]
    for i, line in enumerate(lines[1:], 1):
        if line.strip():
            width, code = indent_width(line), line.strip()
            if limit is not None and width <= limit and not _still_inside(code, width == limit, kept):
                break  # dedented past the block that holds the cursor: its scope has ended
            if width == indent_width(below) and runs_into_suffix(lines[i:]):
                break  # the code after the cursor starts here
        kept.append(line)
    return kept


def _dedent_past_cursor(lines: list[str], ctx: FimContext) -> list[str]:
    """A first line indented past a cursor that already sits in the block's body (the editor indented the
    line) is the model doubling the indentation: it starts at the cursor, and later lines at least as
    deep lose the same. At the opener's own level (no auto-indent) one level deeper is the body's."""
    extra = lines[0][: len(lines[0]) - len(lines[0].lstrip(" \t"))]
    in_body = ctx.block_indent is not None and indent_width(ctx.line_prefix) > max(ctx.block_indent, 0)
    if not extra or not in_body or ctx.line_suffix.strip():  # (code after the cursor: eval's multi-line)
        return lines
    deep = ctx.line_prefix + extra
    return [lines[0][len(extra) :]] + [
        ctx.line_prefix + line[len(deep) :] if line.startswith(deep) else line for line in lines[1:]
    ]


def _still_inside(code: str, at_limit: bool, kept: list[str]) -> bool:
    """Whether a line as shallow as the block's opener still belongs to the middle: a `case` label at
    its switch's level (gofmt, kernel style), or the closer of a bracket the middle opened (an Allman
    `{` body)."""
    if at_limit and _CASE_LABEL.match(code):
        return True
    return code[:1] in ")]}" and _depth("".join(kept)) > 0


def _drop_repeated_lines(lines: list[str]) -> list[str]:
    """Cut at the first run of _LINE_REPEATS identical non-blank lines, keeping one of them."""
    for i in range(len(lines) - _LINE_REPEATS + 1):
        run = lines[i : i + _LINE_REPEATS]
        if run[0].strip() and all(line == run[0] for line in run):
            return lines[: i + 1]
    return lines


def _is_stuck(text: str) -> bool:
    """A short unit repeated over at least half of the text, with letters or digits in it."""
    for m in _STUCK.finditer(text):
        if 2 * len(m.group(0)) >= len(text.strip()) and any(ch.isalnum() for ch in m.group(1)):
            return True
    return False


# --- indentation -------------------------------------------------------------------------------------


def detect_indentation(text: str) -> Indentation:
    """The indentation style of `text`: tabs if most indented lines start with one, else the common step."""
    tabs = spaces = 0
    steps: Counter[int] = Counter()
    previous = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t"):
            tabs += 1
        elif line.startswith(" "):
            spaces += 1
        width = indent_width(line)
        if line[:1] != "\t" and width > previous:
            steps[width - previous] += 1
        previous = width
    if tabs > spaces:
        return Indentation(insert_spaces=False, size=TAB_WIDTH)
    step = next((s for s, _ in steps.most_common() if 2 <= s <= 8), 4)
    return Indentation(insert_spaces=True, size=step)


def reindent(text: str, style: Indentation, line_prefix: str = "") -> str:
    """Lines after the first re-indented to `style`; the first continues the cursor line as it is, its own
    indentation re-indented too when the cursor is in the line's indentation.

    Tabs and spaces are swapped level for level. Space indentation deeper than the cursor line is
    rescaled from the middle's own step (its smallest) to the document's; other widths are kept.
    """
    lines = text.split("\n")
    base = indent_width(line_prefix + lines[0])
    spaced = [len(line) - len(line.lstrip(" ")) for line in lines[1:] if line.strip() and line[:1] != "\t"]
    deeper = [w - base for w in spaced if w > base]
    step = min(deeper) if deeper and 2 <= min(deeper) <= 8 else style.size
    first = lines[0]
    if not line_prefix.strip():  # a cursor in the indentation: the first line's own indentation is ours too
        body = first.lstrip(" \t")
        indent = line_prefix + first[: len(first) - len(body)]
        wanted = _by_levels(indent, style) if "\t" in indent else _indent(len(indent), style)
        if body and wanted != indent and wanted.startswith(line_prefix):
            first = wanted[len(line_prefix) :] + body
    out = [first]
    for line in lines[1:]:
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)]
        if not body:
            out.append("")
        elif "\t" in indent:
            out.append(_by_levels(indent, style) + body)
        else:
            width = len(indent)
            levels, extra = divmod(width - base, step)
            if width > base and extra == 0:
                width = base + levels * style.size
            out.append(_indent(width, style) + body)
    return "\n".join(out)


def _by_levels(indent: str, style: Indentation) -> str:
    """Indentation with tabs in it in `style`, a tab for a level (its spaces kept as they are)."""
    tabs = indent.count("\t")
    return (" " * (tabs * style.size) if style.insert_spaces else "\t" * tabs) + " " * (len(indent) - tabs)


def _indent(width: int, style: Indentation) -> str:
    if style.insert_spaces:
        return " " * width
    tabs, spaces = divmod(width, TAB_WIDTH)
    return "\t" * tabs + " " * spaces


# --- candidates --------------------------------------------------------------------------------------


def syntax_errors(text: str, language: str | None) -> int | None:
    """ERROR and MISSING nodes in `text`'s tree-sitter parse; None without a grammar."""
    tree = SyntaxDocument(text, language).tree if language else None
    return None if tree is None else count_errors(tree.root_node)


def adds_syntax_errors(s: Suggestion, ctx: FimContext) -> bool:
    """Whether the document with `s` accepted has more tree-sitter errors than without it, or one on the
    lines `s` ends up on (`SyntaxSnapshot.adds_errors`; False without a grammar). A suggestion that breaks
    the code is worse than none (HumanEval-Infilling: an empty middle passes 5 %); 60-70 % of the bundled
    model's single-line suggestions were such."""
    if ctx.syntax is None:
        return False
    return ctx.syntax.adds_errors(s.text, replaced_chars(ctx.suffix, s.replace))


def rank(suggestions: list[Suggestion], ctx: FimContext, by_syntax: bool = True) -> list[Suggestion]:
    """Distinct suggestions, those that add no syntax errors to the document first (`by_syntax`; pass
    False when the engine has dropped those already, so as not to reparse for nothing).

    The order is otherwise kept (it is the model's: first seed first).
    """
    first: dict[str, Suggestion] = {}
    for s in suggestions:
        first.setdefault(s.text, s)
    distinct = list(first.values())
    if len(distinct) < 2 or not by_syntax:
        return distinct
    return sorted(distinct, key=lambda s: adds_syntax_errors(s, ctx))


def replaced_chars(suffix: str, units: int) -> int:
    """How many characters of `suffix` its first `units` UTF-16 units (a suggestion's `replace`) are."""
    i = 0
    while units > 0 and i < len(suffix):
        units -= 2 if ord(suffix[i]) > 0xFFFF else 1
        i += 1
    return i


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2
