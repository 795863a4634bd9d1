"""From an open document and a cursor to what the model sees: prefix/suffix windows and the middle's scope.

No torch here. Each open document is a `SyntaxDocument`: its text plus a tree-sitter tree that is kept in
sync with LSP didChange events (`tree.edit` + incremental reparse). The tree is optional everywhere: plain
text, a language whose grammar cannot be loaded, binary or oversized text all fall back to text rules.
"""

from __future__ import annotations

import ast
import gc
import logging
import re
import threading
import time
import warnings
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate
from typing import Any, Literal, NamedTuple

import tree_sitter
import tree_sitter_language_pack
from lsprotocol import types

log = logging.getLogger(__name__)

TAB_WIDTH = 4  # a tab counts as 4 columns of indentation (flat, not tab stops); postprocess uses the same
# How many lines a window edge may move inward to start/end at a top-level syntax node.
SNAP_LINES = 8
MAX_TOKEN_CHARS = 8  # a cursor line is cut at 8 characters a token of budget, more than code averages
# Upper bound on how far back the text rule looks for the line that opens the enclosing block.
OPENER_SCAN_LINES = 4000

_MAX_PARSE_CHARS = 4_000_000  # like ContextBudget.max_document_chars: no tree for text we would refuse
# A syntax check's reparse that takes more CPU time is abandoned and the suggestion kept: it took 0.25-5 ms
# in files up to 120 KB and 10-18 ms at 1 MB, but 200-370 ms in a 3.5 MB file where the typed line's error
# had swallowed much of the tree. The thread's CPU time, so that a busy machine does not flip the outcome.
CHECK_BUDGET_S = 0.025
_EOL = re.compile(r"\r\n|\r|\n")
_READ_CHUNK = 1 << 16  # bytes handed to tree-sitter per read when it parses from a function
# Python's own parser checks a Python suggestion on the top-level unit that holds the cursor when the unit
# (before or after the suggestion) is at most this long: it parsed 0.1-0.5 ms per KB here (building the
# AST), so a unit this size costs at most about CHECK_BUDGET_S; a bigger one keeps tree-sitter's verdict.
PYTHON_UNIT_MAX_CHARS = 50_000
_PYTHON_PARSE_LOCK = threading.Lock()  # warnings.catch_warnings swaps the process's filters
# A top-level line that continues the compound statement above it (tree-sitter splits them around an error).
_CONTINUATION = re.compile(rb"(?:else|elif|except|finally)\b")
_INDENTED_BLOCK = re.compile(r"expected an indented block after .* on line (\d+)")
_CLOSER_LINE = re.compile(r"^(?:[)\]}'\"`;,\s]+|end[)\]}\s;,]*)$")  # `}`, `});`, Lua's `end)` ...
_TRAILING_BLOCK_COMMENT = re.compile(r"/\*(?:(?!\*/).)*\*/\s*$")  # `if (x) { /* why */`
_LUA_FUNCTION_HEAD = re.compile(r"\bfunction\b[^()]*\([^()]*\)$")
_WORD_OPENERS: dict[str, tuple[str, ...]] = {
    "lua": ("then", "do", "else", "repeat"),
    "ruby": ("then", "do", "else", "begin"),
    "bash": ("then", "do", "else"),
    "elixir": ("do", "else", "->"),
}
_LINE_COMMENT: dict[str, str] = {
    "python": "#",
    "ruby": "#",
    "bash": "#",
    "elixir": "#",
    "lua": "--",
}  # everything else with a tree uses `//`; plain text strips no comments


@dataclass(frozen=True)
class ContextBudget:
    prefix_tokens: int = 1536
    suffix_tokens: int = 512
    line_middle_tokens: int = 48  # max middle tokens when scope == "line"
    block_middle_tokens: int = 256  # max middle tokens when scope == "block"
    max_document_chars: int = 4_000_000  # bigger documents are refused (UnsupportedDocument)


def approx_token_count(text: str) -> int:
    """Cheap token estimate without a tokenizer: ceil(len / 3.5), so at least 1 for non-empty text."""
    return (2 * len(text) + 6) // 7


class UnsupportedDocument(Exception):
    """The document cannot be completed (binary content or too large); the message is meant for the user."""


@dataclass(frozen=True, eq=False)
class SyntaxSnapshot:
    """The whole document and its tree as they were when the cursor's context was taken.

    Whether a suggestion breaks the code is told on the whole document: the model's windows may cut
    through a string or a bracket, and then even the true middle can add errors to them.
    """

    text: str
    offset: int  # str index of the cursor
    language: str
    tree: tree_sitter.Tree

    @cached_property
    def errors(self) -> int:
        return count_errors(self.tree.root_node)

    @cached_property
    def source(self) -> bytes:
        """The document in UTF-8, encoded once however many suggestions are checked."""
        return self.text.encode("utf-8", "surrogatepass")

    @cached_property
    def cursor(self) -> tuple[int, tuple[int, int]]:
        """The cursor's byte offset and tree-sitter point, found once however many suggestions are checked."""
        return _tree_position(self.text, self.offset)

    def adds_errors(self, middle: str, replaced: int = 0) -> bool:
        """Whether `middle` put in at the cursor, over the `replaced` characters after it, leaves more
        ERROR and MISSING nodes than the document has without it, or one on the lines it ends up on
        (reparsed incrementally).

        The lines' own test is for a cursor in a line being typed: its tree is already broken there, and
        a wrong completion (`items[i` + `]] = x`) often leaves fewer nodes than the half-typed line did.
        """
        found = _parser_for(self.language)
        if found is None:
            return False
        parser, lock = found
        end = self.offset + replaced
        edit = _edit_at(self.cursor, self.text[self.offset : end], middle)
        start_byte, old_end_byte, new_end_byte = (edit[f"{k}_byte"] for k in ("start", "old_end", "new_end"))
        edited = self.tree.copy()
        edited.edit(**edit)
        source, inserted = self.source, middle.encode("utf-8", "surrogatepass")

        def read(byte: int, point: tuple[int, int]) -> bytes:
            # The edited document read from its three parts, never joined into one copy.
            if byte < start_byte:
                return source[byte : min(byte + _READ_CHUNK, start_byte)]
            if byte < new_end_byte:
                return inserted[byte - start_byte :]
            after = byte - new_end_byte + old_end_byte
            return source[after : after + _READ_CHUNK]

        deadline = time.thread_time() + CHECK_BUDGET_S
        with lock:
            try:
                # progress_callback needs a reader function, not bytes
                tree = parser.parse(read, edited, progress_callback=lambda *_: time.thread_time() > deadline)
            except Exception as exc:  # over budget (ValueError), or a grammar bug: never cost a suggestion
                parser.reset()  # else the document's next parse would resume this one
                if time.thread_time() > deadline:
                    log.info("syntax check skipped: the reparse took over %.0f ms", CHECK_BUDGET_S * 1000)
                else:
                    log.warning("tree-sitter parse failed (%s): %s", self.language, exc)
                return False
        # The bytes of the lines the middle ends up on (whatever their line endings).
        line_start, line_end = _line_start(self.text, self.offset), _line_end(self.text, end)
        first_byte = start_byte - _utf8_len(self.text[line_start : self.offset])
        last_byte = new_end_byte + _utf8_len(self.text[end:line_end])
        root = tree.root_node
        if count_errors(root) > self.errors or has_error_within(root, first_byte, last_byte):
            return True
        # An error that starts on the middle's lines where none started before: a half-typed line whose
        # error tree-sitter put on the next line (Go's `y := ` before `return`), which a wrong middle moves
        # onto its own lines (`y := x + (1`) without adding a node.
        before_last = start_byte + _utf8_len(self.text[self.offset : line_end])
        if has_error_within(root, first_byte, last_byte, starting=True) and not has_error_within(
            self.tree.root_node, first_byte, before_last, starting=True
        ):
            return True
        # Lines wholly the middle's: from the cursor line when only indentation precedes the cursor, else
        # from the middle's second line. A block opener there must get its body (`if x:` + a line below).
        newline = middle.find("\n")
        written = (
            first_byte
            if not self.text[line_start : self.offset].strip()
            else start_byte + _utf8_len(middle[: newline + 1])
            if newline >= 0
            else None
        )
        if written is not None and has_empty_block_within(root, written, last_byte):
            return True
        return self.language == "python" and self._breaks_python(middle, end)

    @cached_property
    def _python_unit(self) -> tuple[int, int] | None:
        """str offsets of the whole lines of the top-level statements that hold the cursor (None when over
        PYTHON_UNIT_MAX_CHARS): the module's child that holds the cursor (a class for a cursor in a method,
        a decorated definition as one), else the ones before and after it (a cursor on a blank line, or at
        the start of a statement, may continue the one above). Statements that do not start a line of their
        own, or start with `else`/`except`..., join the one above, as when an error splits a function."""
        children = self.tree.root_node.children
        cursor_byte = self.cursor[0]
        inside = next((i for i, c in enumerate(children) if c.start_byte < cursor_byte <= c.end_byte), None)
        if inside is not None:
            first = last = inside
        else:
            after = next((i for i, c in enumerate(children) if c.start_byte >= cursor_byte), len(children))
            first, last = max(after - 1, 0), min(after, len(children) - 1)

        def joins_above(node: tree_sitter.Node) -> bool:
            start = node.start_byte
            return not (start == 0 or self.source[start - 1] in b"\r\n") or bool(
                _CONTINUATION.match(self.source, start)
            )

        while first > 0 and joins_above(children[first]):
            first -= 1
        while last + 1 < len(children) and joins_above(children[last + 1]):
            last += 1
        start = end = self.offset
        if children:
            first_byte, last_byte = children[first].start_byte, children[last].end_byte
            if last_byte - first_byte > 4 * PYTHON_UNIT_MAX_CHARS:
                return None
            start = min(start, self._str_index(first_byte))
            end = max(end, self._str_index(last_byte))
        while end > start and self.text[end - 1] in "\r\n":  # a trailing line break: not the next line
            end -= 1
        start, end = _line_start(self.text, start), _line_end(self.text, max(end, self.offset))
        return None if end - start > PYTHON_UNIT_MAX_CHARS else (start, end)

    @cached_property
    def _python_parsed(self) -> dict[tuple[int, int], PythonError | bool]:
        """The unit's own parse (`_parse_python`) per unit, made once however many suggestions are checked."""
        return {}

    def _str_index(self, byte: int) -> int:
        """str index of a node boundary's byte offset (decoding only the bytes between it and the cursor)."""
        cursor_byte = self.cursor[0]
        if byte <= cursor_byte:
            return self.offset - len(self.source[byte:cursor_byte].decode("utf-8", "surrogatepass"))
        return self.offset + len(self.source[cursor_byte:byte].decode("utf-8", "surrogatepass"))

    def _breaks_python(self, middle: str, end: int) -> bool:
        """Whether Python's parser rejects the top-level unit that holds the cursor once `middle` replaces
        text[offset:end] and it did not reject it before, or rejects it anew on the middle's lines.

        tree-sitter-python takes things Python does not: an unexpected indent, a dedent out of a function
        in front of its indented code, `b = self.` at the end of a line; and an unterminated string can
        swallow an error elsewhere so that the count of error nodes does not grow. Parsed alone, the unit
        is told apart from the rest of the file (an error there, syntax newer than this Python)."""
        unit = self._python_unit
        if unit is None:
            return False
        start, stop = unit[0], max(unit[1], _line_end(self.text, end))
        if stop - start + len(middle) > PYTHON_UNIT_MAX_CHARS:
            return False
        before_text = self.text[start:stop]
        before = self._python_parsed.get((start, stop))
        if before is None:
            before = self._python_parsed[start, stop] = _parse_python(before_text)
        if before is True:  # cannot tell
            return False
        cursor, removed = self.offset - start, end - self.offset
        after_text = before_text[:cursor] + middle + before_text[cursor + removed :]
        after = _parse_python(after_text)
        if not isinstance(after, PythonError):
            return False
        if before is False:  # parsed before, not after
            return True
        # Broken before as well: the middle's when Python's (first) error is new and on the middle's lines.
        was = _shifted(_error_at(before, before_text), cursor, removed, len(middle))
        if _error_at(after, after_text) == was and _error_message(after) == _error_message(before):
            return False
        cursor_line = _line_number(after_text, cursor)
        end_line = _line_number(after_text, cursor + len(middle))
        opener = _INDENTED_BLOCK.match(after.msg)
        if opener:  # a block without its body: the middle's when it wrote the opener's line wholly
            own_line = not after_text[_line_start(after_text, cursor) : cursor].strip()
            last_line = _line_number(after_text, cursor + len(middle) - 1) if middle else cursor_line
            return cursor_line + (not own_line) <= int(opener.group(1)) <= last_line
        # The middle's lines, and the next line of code below them (an indent that does not fit, or
        # `b = self.` told at the line it runs into).
        lines = _EOL.split(after_text)  # not str.splitlines: Python ends lines at these only
        code = (i + 1 for i in range(end_line, len(lines)) if lines[i].strip()[:1] not in ("", "#"))
        below = next(code, end_line)
        return after.lineno <= below and cursor_line <= max(after.end_lineno, after.lineno)


class PythonError(NamedTuple):
    """Where and why Python's parser rejected a text (a SyntaxError, IndentationError or TabError's fields:
    kept rather than the exception, whose traceback would hold the checking frames and their trees)."""

    msg: str
    lineno: int
    offset: int
    end_lineno: int


def _parse_python(source: str) -> PythonError | bool:
    """False when Python's parser takes `source` (parse only: `return` outside a function is no error
    here), its error when not, True when it cannot tell (null bytes, lone surrogates, nesting too deep)."""
    try:
        with _PYTHON_PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning / DeprecationWarning for `'\d'`, `x is 1`
            collecting = gc.isenabled()
            gc.disable()  # the AST's objects (no cycles, freed at once) would set off collections of the heap
            try:
                compile(source, "<unit>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
            finally:
                if collecting:
                    gc.enable()
    except SyntaxError as exc:
        if not exc.lineno:  # 3.11.4+ tells null bytes as a SyntaxError without a line
            return True
        return PythonError(str(exc.msg or ""), exc.lineno, exc.offset or 1, exc.end_lineno or exc.lineno)
    except Exception:  # ValueError (null bytes, surrogates), RecursionError, MemoryError
        return True
    return False


def _error_message(error: PythonError) -> str:
    """The message without its line numbers (`... (detected at line 12)`, `... on line 3`)."""
    return re.sub(r"\d+", "", error.msg)


def _error_at(error: PythonError, source: str) -> int:
    """str index in `source` where Python puts `error` (its offset is 1-based, in characters)."""
    starts = [0] + [m.end() for m in _EOL.finditer(source)]
    line = min(max(error.lineno - 1, 0), len(starts) - 1)
    return min(starts[line] + max(error.offset - 1, 0), _line_end(source, starts[line]))


def _shifted(index: int, cursor: int, removed: int, inserted: int) -> int | None:
    """Where str index `index` of the text before an edit at `cursor` is after it (None inside it)."""
    if index < cursor:
        return index
    if index >= cursor + removed:
        return index + inserted - removed
    return None


def _line_number(text: str, index: int) -> int:
    """1-based line of str index `index` (\n, \r\n and a lone \r all end a line, as for Python)."""
    return 1 + len(_EOL.findall(text, 0, max(index, 0)))


def _line_start(text: str, index: int) -> int:
    return max(text.rfind("\n", 0, index), text.rfind("\r", 0, index)) + 1


def _line_end(text: str, index: int) -> int:
    eol = _EOL.search(text, index)
    return eol.start() if eol else len(text)


def count_errors(root: tree_sitter.Node) -> int:
    """ERROR and MISSING nodes under `root` (only subtrees that hold an error are walked)."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    return count


def has_error_within(root: tree_sitter.Node, start_byte: int, end_byte: int, starting: bool = False) -> bool:
    """Whether an ERROR or MISSING node lies wholly in bytes `start_byte`..`end_byte` (some lines: an
    error that reaches beyond them is not theirs, such as an unclosed bracket above or a block whose body
    is still to come); with `starting`, one that starts there."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.end_byte < start_byte or node.start_byte > end_byte:
            continue
        within = start_byte <= node.start_byte and (starting or node.end_byte <= end_byte)
        if within and (node.is_error or node.is_missing):
            return True
        if node.has_error:
            stack.extend(node.children)
    return False


def has_empty_block_within(root: tree_sitter.Node, start_byte: int, end_byte: int) -> bool:
    """Whether a block with no statements starts in bytes `start_byte`..`end_byte`. Python's grammar
    accepts `if x:` with no body, without an error node: an empty `block` at the end of the `if` line
    (a body-less block is an IndentationError to Python)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "block" and node.start_byte == node.end_byte and start_byte <= node.start_byte:
            return True
        # A cursor, as Node.next_sibling skips zero-width nodes such as that block.
        cursor = node.walk()
        if cursor.goto_first_child_for_byte(start_byte) is None:
            continue
        stack.append(cursor.node)
        while cursor.goto_next_sibling() and cursor.node.start_byte <= end_byte:
            stack.append(cursor.node)
    return False


@dataclass(frozen=True)
class FimContext:
    """What the model sees for one cursor.

    prefix + suffix are whole-line windows around the cursor (prefix ends and suffix starts exactly at
    the cursor; line endings are kept as they are in the document), except that a cursor line far longer
    than the budget (minified code) is cut around the cursor. When nothing is truncated,
    prefix + suffix is the whole document.

    scope is "line" when the cursor line has any non-whitespace text (before or after the cursor,
    including a tail of only closing brackets/quotes such as `)` or `");`): the middle is the rest of
    one line. It is "block" when the cursor line is blank: the middle may span several lines.

    block_indent (scope "block" only, else None) is the indentation width, in columns with a tab counted
    as 4 columns (see `indent_width`), of the line that opens the block holding the cursor, e.g. the
    `def f():` or `if (x) {` line. The middle ends before its first later non-blank line indented
    <= block_indent. None with scope "block" means the cursor is at top level: no indentation cut,
    only max_middle_tokens limits the middle.
    """

    prefix: str
    suffix: str
    scope: Literal["line", "block"]
    block_indent: int | None
    max_middle_tokens: int
    language: str | None  # tree-sitter language name, None for plain text
    line_prefix: str  # text of the cursor line before the cursor (a minified line's: the window's part)
    line_suffix: str  # text of the cursor line after the cursor (without the line ending; likewise)
    prefix_truncated: bool
    suffix_truncated: bool
    syntax: SyntaxSnapshot | None = field(default=None, compare=False, repr=False)  # None without a tree

    @property
    def indent_at_cursor(self) -> str:
        """The cursor line's text before the cursor when that is only indentation, else ''."""
        return "" if self.line_prefix.strip() else self.line_prefix


def indent_width(line: str) -> int:
    """Leading indentation in columns: a space is 1, a tab is 4 (flat, not tab stops)."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += TAB_WIDTH
        else:
            break
    return width


# --- languages and parsers ---------------------------------------------------------------------------

# Grammars of prose: every line of a paragraph or list is unindented, so indentation ends nothing.
PROSE_LANGUAGES = frozenset({"markdown", "markdown_inline", "rst", "org"})

_LANGUAGE_IDS: dict[str, str | None] = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",  # the javascript grammar parses JSX
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "go": "go",
    "rust": "rust",
    "c": "c",
    "cpp": "cpp",
    "cuda-cpp": "cuda",
    "java": "java",
    "lua": "lua",
    "csharp": "csharp",
    "ruby": "ruby",
    "php": "php",
    "shellscript": "bash",
    "sh": "bash",
    "kotlin": "kotlin",
    "swift": "swift",
    "scala": "scala",
    "objective-c": "objc",
    "objective-cpp": "cpp",
    "makefile": "make",
    "jsonc": "json",
    "dockerfile": "dockerfile",
    "plaintext": None,
    "text": None,
}

_EXTENSIONS: dict[str, str | None] = {
    "py": "python",
    "pyi": "python",
    "js": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "ts": "typescript",
    "mts": "typescript",
    "cts": "typescript",
    "tsx": "tsx",
    "go": "go",
    "rs": "rust",
    "c": "c",
    "h": "c",
    "cpp": "cpp",
    "cc": "cpp",
    "cxx": "cpp",
    "hpp": "cpp",
    "hh": "cpp",
    "hxx": "cpp",
    "java": "java",
    "lua": "lua",
    # The language pack maps these to grammars that do not fit ordinary text files (e.g. .txt -> vimdoc).
    "txt": None,
    "text": None,
    "log": None,
}


def _extension(uri: str) -> str | None:
    name = uri.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if "." not in name.lstrip("."):
        return None
    return name.rsplit(".", 1)[-1].lower()


def language_for(language_id: str | None, uri: str | None) -> str | None:
    """Tree-sitter language name for an LSP languageId, else from the uri's extension; None = plain text."""
    if language_id:
        key = language_id.lower()
        if key in _LANGUAGE_IDS:
            return _LANGUAGE_IDS[key]
        try:
            if tree_sitter_language_pack.has_language(key):
                return key
        except Exception:  # the pack is a native extension: never let a lookup break document opening
            log.debug("has_language(%r) failed", key, exc_info=True)
    if uri:
        ext = _extension(uri)
        if ext is None:
            return None
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
        try:
            return tree_sitter_language_pack.detect_language_from_extension(ext)
        except Exception:
            log.debug("detect_language_from_extension(%r) failed", ext, exc_info=True)
    return None


_parsers: dict[str, tuple[tree_sitter.Parser, threading.Lock] | None] = {}
_parsers_lock = threading.Lock()


def _load_parser(language: str) -> tree_sitter.Parser | None:
    try:
        return tree_sitter_language_pack.get_parser(language)  # type: ignore[arg-type]
    except Exception as exc:
        log.warning("no tree-sitter grammar for %s (%s); using text rules only", language, exc)
        return None


def _parser_for(language: str) -> tuple[tree_sitter.Parser, threading.Lock] | None:
    """One parser per language per process; a failed load is remembered so it is not retried per keystroke."""
    with _parsers_lock:
        if language not in _parsers:
            parser = _load_parser(language)
            _parsers[language] = (parser, threading.Lock()) if parser is not None else None
        return _parsers[language]


# --- offsets -----------------------------------------------------------------------------------------


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # lone surrogates from a broken client must not raise


def _utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _utf16_to_index(line: str, column: int) -> int:
    """str index in `line` for a UTF-16 column; a column inside a surrogate pair rounds down."""
    if column <= 0:
        return 0
    if line.isascii() or _utf16_len(line) == len(line):
        return min(column, len(line))
    units = 0
    for i, ch in enumerate(line):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > column:
            return i
        units += width
    return len(line)


def _point_after(start: tuple[int, int], inserted: str) -> tuple[int, int]:
    """Tree-sitter point (row, byte column; rows split on \\n only) after `inserted` placed at `start`."""
    newlines = inserted.count("\n")
    if newlines == 0:
        return start[0], start[1] + _utf8_len(inserted)
    return start[0] + newlines, _utf8_len(inserted[inserted.rfind("\n") + 1 :])


def _is_string_or_comment(node: tree_sitter.Node) -> bool:
    """A node whose text is no code (any grammar's string or comment node types)."""
    return "string" in node.type or "comment" in node.type


def _tree_position(text: str, index: int) -> tuple[int, tuple[int, int]]:
    """Byte offset and tree-sitter point (row, byte column; rows split on \\n only) of str index `index`."""
    row_start = text.rfind("\n", 0, index) + 1
    return _utf8_len(text[:index]), (text.count("\n", 0, index), _utf8_len(text[row_start:index]))


def _input_edit(old: str, start: int, end: int, new_text: str) -> dict[str, Any]:
    """Arguments for `Tree.edit` when old[start:end] (str indices) is replaced by new_text."""
    return _edit_at(_tree_position(old, start), old[start:end], new_text)


def _edit_at(at: tuple[int, tuple[int, int]], removed: str, new_text: str) -> dict[str, Any]:
    """Arguments for `Tree.edit` when `removed` at byte offset and point `at` is replaced by new_text."""
    start_byte, start_point = at
    return {
        "start_byte": start_byte,
        "old_end_byte": start_byte + _utf8_len(removed),
        "new_end_byte": start_byte + _utf8_len(new_text),
        "start_point": start_point,
        "old_end_point": _point_after(start_point, removed),
        "new_end_point": _point_after(start_point, new_text),
    }


def _line_starts(text: str) -> list[int]:
    """str index of every LSP line start (\\n, \\r\\n and a lone \\r all end a line)."""
    if "\r" not in text:
        eol = "\n"
    elif text.count("\r") == text.count("\r\n") == text.count("\n"):
        eol = "\r\n"
    else:  # lone CRs or mixed endings
        return [0] + [m.end() for m in _EOL.finditer(text)]
    # str.split + accumulate is several times faster than a regex scan on big documents.
    return list(accumulate((len(part) + len(eol) for part in text.split(eol)[:-1]), initial=0))


def _patch_line_starts(starts: list[int], text: str, start: int, end: int, inserted: int) -> list[int]:
    """Line starts after old[start:end] became `inserted` chars of `text`, rescanning only near the edit.

    The rescan begins one line before the edit (an inserted \\n may join a \\r before it) and ends
    two lines after it, at a line start whose surrounding characters the edit did not touch.
    """
    first = max(0, bisect_right(starts, start) - 2)
    last = bisect_right(starts, end) + 1  # index of the first line start kept as is (shifted)
    delta = inserted - (end - start)
    if last < len(starts):
        stop = starts[last] + delta
        middle = [m.end() for m in _EOL.finditer(text, starts[first], stop)]
        return starts[: first + 1] + middle + [s + delta for s in starts[last + 1 :]]
    middle = [m.end() for m in _EOL.finditer(text, starts[first])]
    return starts[: first + 1] + middle


# --- text rules --------------------------------------------------------------------------------------


def _strip_line_comment(line: str, marker: str, quotes: str) -> str:
    """Drop a trailing line comment, ignoring markers inside simple quoted strings."""
    quote: str | None = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote is not None:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in quotes:
            quote = ch
        elif line.startswith(marker, i):
            return line[:i]
        i += 1
    return line


def without_line_comment(line: str, language: str | None) -> str:
    """`line` without a trailing line comment of `language` (plain text: as it is)."""
    if language is None:
        return line
    quotes = '"' if language == "rust" else "'\"`"  # Rust's 'a lifetimes are not quotes
    return _strip_line_comment(line, _LINE_COMMENT.get(language, "//"), quotes)


def _block_opener_end(line: str, language: str) -> int | None:
    """Column where this line's block opener (`:`, `{`, `(`, `[`, `=>`, Lua's `then`, ...) ends, else None."""
    line = without_line_comment(line, language)
    if language not in _LINE_COMMENT:
        line = _TRAILING_BLOCK_COMMENT.sub("", line)
    text = line.rstrip()
    if not text:
        return None
    words = _WORD_OPENERS.get(language, ())
    if (
        text[-1] in "{([:"
        or text.endswith("=>")
        or any(text == w or text.endswith((" " + w, "\t" + w, ")" + w)) for w in words)
        or (language == "lua" and _LUA_FUNCTION_HEAD.search(text) is not None)
    ):
        return len(text)
    return None


# --- the document ------------------------------------------------------------------------------------


class SyntaxDocument:
    """Text and tree-sitter tree of one open document, kept in sync incrementally.

    Edits are applied to the tree at once (`tree.edit`); the incremental reparse happens when `tree` is
    next read, so a burst of didChange events costs one reparse.
    """

    text: str
    language: str | None

    def __init__(self, text: str, language: str | None) -> None:
        self.language = language
        self._parser: tuple[tree_sitter.Parser, threading.Lock] | None = None
        self._parser_loaded = language is None  # loaded on the first read of `tree`, not at didOpen
        self._tree: tree_sitter.Tree | None = None
        self._stale = True  # text changed since _tree was parsed
        self._set_text(text)

    # -- text bookkeeping

    def _set_text(self, text: str) -> None:
        self.text = text
        self._starts: list[int] | None = None
        self._bytes: bytes | None = None
        self._byte_mark = (0, 0)  # (str index, utf-8 offset) of the last byte-offset lookup

    def _line_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = _line_starts(self.text)
        return self._starts

    def _line_end(self, line: int) -> int:
        """str index where `line`'s content ends (before its line ending)."""
        starts = self._line_starts()
        if line + 1 >= len(starts):
            return len(self.text)
        nxt = starts[line + 1]
        if self.text[nxt - 1] == "\n" and nxt - 2 >= starts[line] and self.text[nxt - 2] == "\r":
            return nxt - 2
        return nxt - 1

    def _line_text(self, line: int) -> str:
        return self.text[self._line_starts()[line] : self._line_end(line)]

    def _line_bound(self, line: int) -> int:
        """Start of `line`, or the end of the text for the line after the last."""
        starts = self._line_starts()
        return starts[line] if line < len(starts) else len(self.text)

    def _source(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.text.encode("utf-8", "surrogatepass")
        return self._bytes

    def _byte_offset(self, index: int) -> int:
        # Lookups cluster around the cursor: measure from the previous one, not from the start.
        mark_index, mark_byte = self._byte_mark
        if index >= mark_index:
            byte = mark_byte + _utf8_len(self.text[mark_index:index])
        elif index > mark_index // 2:
            byte = mark_byte - _utf8_len(self.text[index:mark_index])
        else:
            byte = _utf8_len(self.text[:index])
        self._byte_mark = (index, byte)
        return byte

    def _parseable(self) -> bool:
        return len(self.text) <= _MAX_PARSE_CHARS and "\x00" not in self.text

    # -- the tree

    @property
    def tree(self) -> tree_sitter.Tree | None:
        """The tree for the current text (None for plain text, no grammar, binary/oversized text)."""
        if not self._parser_loaded:
            self._parser_loaded = True
            self._parser = _parser_for(self.language) if self.language else None
        if self._parser is None:
            return None
        if self._stale:
            self._stale = False
            if not self._parseable():
                self._tree = None
                return None
            parser, lock = self._parser
            try:
                with lock:
                    if self._tree is None:
                        self._tree = parser.parse(self._source())
                    else:
                        self._tree = parser.parse(self._source(), self._tree)
            except Exception:  # a grammar bug must cost the tree, never the server
                log.warning("tree-sitter parse failed (%s)", self.language, exc_info=True)
                self._tree = None
        return self._tree

    def apply_change(self, text: str, range: types.Range | None = None) -> None:
        """Apply one LSP TextDocumentContentChangeEvent (range None = full replacement; UTF-16 positions)."""
        if range is None:
            self._tree = None  # no edit to describe: the next read parses from scratch
            self._stale = True
            self._set_text(text)
            return
        start = self.offset_at(range.start.line, range.start.character)
        end = self.offset_at(range.end.line, range.end.character)
        if end < start:
            start, end = end, start
        old = self.text
        if self._tree is not None:
            try:
                self._tree.edit(**_input_edit(old, start, end, text))
            except Exception:
                log.warning("tree-sitter edit failed; reparsing from scratch", exc_info=True)
                self._tree = None
        self._stale = True
        starts = self._starts
        self._set_text(old[:start] + text + old[end:])
        if starts is not None:
            self._starts = _patch_line_starts(starts, self.text, start, end, len(text))

    def with_change(self, text: str, range: types.Range) -> tuple[SyntaxDocument, types.Position]:
        """A copy with `text` put in over `range`, and the position after it; this document stays as it
        is. The copy starts from this document's tree, so its first read reparses incrementally."""
        copy = SyntaxDocument(self.text, self.language)
        tree = self.tree
        copy._parser, copy._parser_loaded = self._parser, True
        copy._tree, copy._stale = (tree.copy() if tree is not None else None), tree is None
        copy._starts = self._starts
        start = self.offset_at(range.start.line, range.start.character)
        copy.apply_change(text, range)
        return copy, copy.position_at(start + len(text))

    # -- positions

    def offset_at(self, line: int, character: int) -> int:
        """str index for an LSP position (UTF-16 columns); past-end lines/columns clamp to the end."""
        starts = self._line_starts()
        if line < 0:
            return 0
        if line >= len(starts):
            return len(self.text)
        start = starts[line]
        return start + _utf16_to_index(self.text[start : self._line_end(line)], character)

    def position_at(self, offset: int) -> types.Position:
        """LSP position (UTF-16 columns) for a str index; inside a line ending it maps to the line end."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect_right(self._line_starts(), offset) - 1
        start = self._line_starts()[line]
        end = min(offset, self._line_end(line))
        return types.Position(line=line, character=_utf16_len(self.text[start:end]))

    # -- context

    def context_at(
        self,
        line: int,
        character: int,
        budget: ContextBudget = ContextBudget(),
        count_tokens: Callable[[str], int] = approx_token_count,
    ) -> FimContext:
        """Prefix/suffix windows and middle scope for the cursor; raises UnsupportedDocument."""
        if len(self.text) > budget.max_document_chars:
            raise UnsupportedDocument(
                f"Document too large for completion: {len(self.text):,} characters "
                f"(limit {budget.max_document_chars:,})."
            )
        if "\x00" in self.text:
            raise UnsupportedDocument("Document looks binary (it contains NUL bytes); no completion offered.")

        def count(segment: str) -> int:
            return count_tokens(segment) if segment else 0

        offset = self.offset_at(line, character)
        starts = self._line_starts()
        cur = bisect_right(starts, offset) - 1
        # A cursor line too long for the budget (minified code) is cut around the cursor: tokenizing
        # megabytes for a prompt that keeps a few thousand tokens took seconds a request, and so did
        # post-processing's scans of the whole line.
        line_bound = self._line_bound(cur + 1)
        prefix_start = max(starts[cur], offset - budget.prefix_tokens * MAX_TOKEN_CHARS)
        suffix_end = min(line_bound, offset + budget.suffix_tokens * MAX_TOKEN_CHARS)
        line_prefix = self.text[prefix_start:offset]
        line_suffix = self.text[offset : min(self._line_end(cur), suffix_end)]

        # Prefix: the cursor line's text before the cursor, then whole lines upward while they fit.
        if prefix_start == starts[cur]:
            used = count(line_prefix)
            first = cur
            while first > 0:
                cost = count(self.text[starts[first - 1] : starts[first]])
                if used + cost > budget.prefix_tokens:
                    break
                used += cost
                first -= 1
            if first > 0:
                # Start at a top-level node if one begins just inside the cut (never grow past the budget).
                snap = range(first, min(first + SNAP_LINES, cur) + 1)
                first = next((k for k in snap if self._is_boundary(k)), first)
            prefix_start = starts[first]

        # Suffix: the rest of the cursor line with its line ending, then whole lines downward while they fit.
        if suffix_end == line_bound:
            used = count(self.text[offset:line_bound])
            stop = cur + 1  # the suffix ends where line `stop` starts
            while stop < len(starts):
                cost = count(self.text[starts[stop] : self._line_bound(stop + 1)])
                if used + cost > budget.suffix_tokens:
                    break
                used += cost
                stop += 1
            if stop < len(starts):
                # End just before a top-level node if one begins at or shortly before the cut.
                snap = range(stop, max(cur + 1, stop - SNAP_LINES) - 1, -1)
                stop = next((j for j in snap if self._is_boundary(j)), stop)
            suffix_end = self._line_bound(stop)

        scope: Literal["line", "block"] = "line"
        block_indent: int | None = None
        if not (line_prefix + line_suffix).strip():
            scope = "block"
            block_indent = self._block_indent(cur, offset, line_prefix)
        syntax = None
        if (tree := self.tree) is not None and self.language:
            # A copy: the document's own tree is edited in place as the user types on.
            syntax = SyntaxSnapshot(self.text, offset, self.language, tree.copy())
        return FimContext(
            prefix=self.text[prefix_start:offset],
            suffix=self.text[offset:suffix_end],
            scope=scope,
            block_indent=block_indent,
            max_middle_tokens=budget.block_middle_tokens if scope == "block" else budget.line_middle_tokens,
            language=self.language,
            line_prefix=line_prefix,
            line_suffix=line_suffix,
            prefix_truncated=prefix_start > 0,
            suffix_truncated=suffix_end < len(self.text),
            syntax=syntax,
        )

    def _is_boundary(self, line: int) -> bool:
        """Does `line` start a top-level syntax node (text rule without a tree: unindented code line)?"""
        if line >= len(self._line_starts()):
            return True  # the end of the document is the best place to end a suffix
        content = self._line_text(line)
        stripped = content.lstrip()
        if not stripped:
            return False
        tree = self.tree
        if tree is None:
            return stripped == content and stripped[0] not in ")]}"
        byte = self._byte_offset(self._line_starts()[line] + len(content) - len(stripped))
        child = tree.root_node.first_child_for_byte(byte)
        return child is not None and child.start_byte == byte

    def _block_indent(self, cur: int, offset: int, line_prefix: str) -> int | None:
        """block_indent for a blank cursor line: see FimContext. Text rules, tightened by the tree."""
        if self.language in PROSE_LANGUAGES:  # sections and paragraphs are no blocks to end a middle at
            return None
        prev = next((i for i in range(cur - 1, -1, -1) if self._line_text(i).strip()), None)
        if prev is not None and (opener := self._opener_indent(prev)) is not None:
            return opener
        nxt = next((i for i in range(cur + 1, len(self._line_starts())) if self._line_text(i).strip()), None)

        # Text rule: the body's indentation is the cursor's when the editor indented the blank line,
        # else the shallower of its neighbours; the opener is the nearest earlier line indented less.
        body = indent_width(line_prefix)
        if body == 0:
            body = min(
                indent_width(self._line_text(prev)) if prev is not None else 0,
                indent_width(self._line_text(nxt)) if nxt is not None else 0,
            )
        by_text: int | None = None
        if body > 0 and prev is not None:
            for i in range(prev, max(-1, prev - OPENER_SCAN_LINES), -1):
                content = self._line_text(i)
                if content.strip() and not _CLOSER_LINE.match(content.strip()):
                    width = indent_width(content)
                    if width < body:
                        by_text = width
                        break

        by_tree = self._tree_block_indent(offset)
        found = [x for x in (by_text, by_tree) if x is not None]
        return max(found) if found else None  # the deeper (inner) of the two blocks

    def _opener_indent(self, line: int) -> int | None:
        """Indentation of the statement that `line` ends by opening a block, None when it opens none.

        Only with a tree: in plain text, strings and comments a trailing `:` or `{` opens nothing.
        """
        tree = self.tree
        if tree is None or self.language is None:
            return None
        end = _block_opener_end(self._line_text(line), self.language)
        if end is None:
            return None
        opener = self._byte_offset(self._line_starts()[line] + end) - 1
        node: tree_sitter.Node | None = tree.root_node.descendant_for_byte_range(opener, opener + 1)
        while node is not None:
            if _is_string_or_comment(node):
                return None
            node = node.parent
        # A header continued over several lines (`def f(a,\n      b):`) starts where its brackets open.
        while (above := self._bracket_opened_above(tree.root_node, line, opener)) is not None:
            line = above
        return indent_width(self._line_text(line))

    def _bracket_opened_above(self, root: tree_sitter.Node, line: int, opener: int) -> int | None:
        """The line of a bracket that opens above `line`'s first character and closes before byte `opener`."""
        content = self._line_text(line)
        line_start = self._line_starts()[line]
        first = self._byte_offset(line_start + len(content) - len(content.lstrip()))
        line_byte = self._byte_offset(line_start)
        source = self._source()
        node: tree_sitter.Node | None = root.descendant_for_byte_range(first, first + 1)
        while node is not None and node.end_byte <= opener:
            bracket = source[node.start_byte : node.start_byte + 1] in (b"(", b"[", b"{")
            if bracket and node.start_byte < line_byte:
                chars_between = len(source[node.start_byte : line_byte].decode("utf-8", "surrogatepass"))
                return bisect_right(self._line_starts(), line_start - chars_between) - 1
            node = node.parent
        return None

    def _tree_block_indent(self, offset: int) -> int | None:
        """Indentation of the line opening the innermost multi-line node that spans the cursor line."""
        tree = self.tree
        if tree is None:
            return None
        source = self._source()
        cursor_byte = self._byte_offset(offset)
        row = self.text.count("\n", 0, offset)
        root = tree.root_node
        node: tree_sitter.Node | None = root.descendant_for_byte_range(cursor_byte, cursor_byte)
        while node is not None and node.parent is not None:
            spans = node.start_point.row < row < node.end_point.row
            if spans and not node.is_error and not _is_string_or_comment(node):
                opener = node
                # A body without its own bracket (Python's `block`, Lua's body) opens on its parent's line.
                parent = node.parent
                if (
                    source[node.start_byte : node.start_byte + 1] not in (b"{", b"(", b"[")
                    and parent.parent is not None
                    and parent.start_point.row < node.start_point.row
                ):
                    opener = parent
                line_start = source.rfind(b"\n", 0, opener.start_byte) + 1
                return indent_width(source[line_start : opener.start_byte].decode("utf-8", "replace"))
            node = node.parent
        return None
