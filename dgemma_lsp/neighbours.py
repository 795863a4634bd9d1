"""Code from the other open documents for the prompt: the "neighbouring tabs" every completion tool sends.

The lines above the cursor are compared with windows of each other open document of the same language by
the identifiers they share (Jaccard similarity, as Copilot ranks its neighbouring tabs). The best windows
go into the prompt in front of the prefix, commented out under their file's name, so that the prompt
still reads as one file. Only what the editor has open is read, never the disk. No torch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .context import approx_token_count

WINDOW_LINES = 20  # lines per candidate window (and of the cursor's window), windows overlap by half
MAX_SNIPPETS = 4
MIN_SIMILARITY = 0.05  # below this a window shares little more than common names
# Above this a window is a near copy of the code above the cursor (another version of the same file, say),
# which makes the model repeat that code (llama.vim drops such chunks for that reason).
MAX_SIMILARITY = 0.5
MAX_DOCUMENT_CHARS = 1_000_000  # larger documents (generated, minified) are not searched
MAX_DOCUMENTS = 20  # of the language's, the most recently opened or edited

# Line comments by tree-sitter language: a snippet is commented out so that the prompt stays one valid
# file. A language missing here gets no snippets.
LINE_COMMENTS = {
    **dict.fromkeys(("python", "ruby", "bash", "r", "perl", "make", "toml", "yaml", "dockerfile"), "#"),
    **dict.fromkeys(
        (
            "javascript",
            "typescript",
            "tsx",
            "c",
            "cpp",
            "cuda",
            "objc",
            "csharp",
            "java",
            "go",
            "rust",
            "kotlin",
            "swift",
            "scala",
            "php",
            "dart",
            "zig",
        ),
        "//",
    ),  # fmt: skip
    **dict.fromkeys(("lua", "sql", "haskell", "elm"), "--"),
}
# Languages whose files use each other's code.
_FAMILIES = {"typescript": "javascript", "tsx": "javascript", "cpp": "c", "cuda": "c", "objc": "c"}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
# Words every file of a language shares: they make any two windows look alike.
_COMMON = frozenset(
    "and as assert async await break case catch class const continue def default del do elif else enum "
    "except export extends false finally fn for from func function if impl import in int interface is "
    "let match mut new nil none not null or package pass pub raise return self static str string struct "
    "super switch this throw true try type use var void while with yield".split()
)


def identifiers(text: str) -> frozenset[str]:
    """The names in `text` that say what it is about (keywords and one-letter names left out)."""
    return frozenset(w for w in _IDENTIFIER.findall(text) if w.lower() not in _COMMON)


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class OpenDocument:
    uri: str
    name: str  # how the snippet's header names it: the path in the workspace, else the file name
    language: str | None
    text: str


@dataclass(frozen=True)
class _Window:
    start: int  # first line
    text: str
    names: frozenset[str]


class OpenFiles:
    """Picks snippets for a cursor. Keeps each document's windows until its text changes."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[str, list[_Window]]] = {}

    def forget(self, uri: str) -> None:
        self._windows.pop(uri, None)

    def snippets(
        self, prefix: str, language: str | None, others: Iterable[OpenDocument], max_tokens: int
    ) -> list[str]:
        """Commented-out windows of `others` most like the lines above the cursor, at most `max_tokens`
        (estimated) in all, the most similar last (nearest the code it is like)."""
        comment = LINE_COMMENTS.get(language or "")
        if comment is None or max_tokens < 1:
            return []
        # The lines above the cursor line: the choice stays the same while a line is typed, so the
        # model's cache of the prompt holds.
        above = prefix[: prefix.rfind("\n") + 1].splitlines()[-WINDOW_LINES:]
        names = identifiers("\n".join(above))
        if not names:
            return []
        family = _FAMILIES.get(language or "", language)
        searched = (
            doc
            for doc in others
            if _FAMILIES.get(doc.language or "", doc.language) == family
            and len(doc.text) <= MAX_DOCUMENT_CHARS
        )
        scored = []
        for doc in itertools.islice(searched, MAX_DOCUMENTS):
            for window in self._windows_of(doc):
                score = similarity(names, window.names)
                if MIN_SIMILARITY <= score <= MAX_SIMILARITY:
                    scored.append((score, doc.name, window))
        scored.sort(key=lambda s: -s[0])
        chosen: list[str] = []
        taken: dict[str, list[int]] = {}
        used = 0
        for _, name, window in scored:
            if len(chosen) == MAX_SNIPPETS:
                break
            if any(abs(window.start - start) < WINDOW_LINES for start in taken.get(name, [])):
                continue  # overlaps a window of the same file already chosen
            snippet = render(name, window.text, comment)
            cost = approx_token_count(snippet)
            if used + cost > max_tokens:
                continue
            used += cost
            chosen.append(snippet)
            taken.setdefault(name, []).append(window.start)
        return chosen[::-1]

    def _windows_of(self, doc: OpenDocument) -> list[_Window]:
        cached = self._windows.get(doc.uri)
        if cached is not None and cached[0] is doc.text:
            return cached[1]
        lines = [] if "\x00" in doc.text else doc.text.splitlines()  # binary: nothing to offer
        step = WINDOW_LINES // 2
        windows = []
        for start in range(0, max(1, len(lines) - step), step):
            text = "\n".join(lines[start : start + WINDOW_LINES]).strip("\n")
            if text.strip():
                windows.append(_Window(start, text, identifiers(text)))
        self._windows[doc.uri] = (doc.text, windows)
        return windows


def render(name: str, text: str, comment: str) -> str:
    """`text` as line comments under a header naming its file, ending in a line break."""
    lines = [f"{comment} {line}".rstrip() for line in text.split("\n")]
    return "\n".join([f"{comment} Compare this snippet from {name}:", *lines]) + "\n"
