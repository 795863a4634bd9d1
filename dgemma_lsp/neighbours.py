"""Code from the other open documents for the prompt: the "neighbouring tabs" every completion tool sends.

The lines above the cursor are compared with windows of each other open document of the same language by
the identifiers they share (Jaccard similarity, as Copilot ranks its neighbouring tabs). The best windows
go into the prompt in front of the prefix, commented out under their file's name, so that the prompt
still reads as one file. Only what the editor has open is read, never the disk. No torch.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
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
    **dict.fromkeys("python ruby bash r perl make toml yaml dockerfile".split(), "#"),
    **dict.fromkeys("javascript typescript tsx c cpp cuda objc csharp java go rust".split(), "//"),
    **dict.fromkeys("kotlin swift scala php dart zig".split(), "//"),
    **dict.fromkeys("lua sql haskell elm".split(), "--"),
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


@dataclass(frozen=True)
class _Index:
    """A document's windows and, per name, the windows that hold it: a request scores only the windows
    that share a name with it (scoring every window of 20 large files took 100 ms a request)."""

    text: str  # the text it was made from
    windows: list[_Window]
    holding: dict[str, list[int]]
    lines: set[str]  # its code lines (`_code_lines`)


class OpenFiles:
    """Picks snippets for a cursor. Keeps each document's windows until its text changes."""

    def __init__(self) -> None:
        self._indexes: dict[str, _Index] = {}

    def forget(self, uri: str) -> None:
        self._indexes.pop(uri, None)

    def snippets(
        self,
        prefix: str,
        language: str | None,
        others: Iterable[OpenDocument],
        max_tokens: int,
    ) -> list[str]:
        """Commented-out windows of `others` most like the lines above the cursor, at most `max_tokens`
        (estimated) in all, the most similar last (nearest the code it is like). A document that holds half
        the lines above the cursor (another copy of this file, a diff's other side) is left out: the model
        would repeat it."""
        comment = LINE_COMMENTS.get(language or "")
        if comment is None or max_tokens < 1:
            return []
        # The lines above the cursor line: the choice stays the same while a line is typed, so the
        # model's cache of the prompt holds.
        above = "\n".join(prefix[: prefix.rfind("\n") + 1].splitlines()[-WINDOW_LINES:])
        names, near = identifiers(above), _code_lines(above)
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
            index = self._index_of(doc)
            if len(near) >= 5 and len(near & index.lines) >= 0.8 * len(near):
                continue
            shared: Counter[int] = Counter()
            for name in names:
                shared.update(index.holding.get(name, ()))
            for i, count in shared.items():
                window = index.windows[i]
                score = count / (len(names) + len(window.names) - count)  # Jaccard
                if MIN_SIMILARITY <= score <= MAX_SIMILARITY:
                    scored.append((score, doc, window))
        scored.sort(key=lambda s: -s[0])
        chosen: list[str] = []
        taken: dict[str, list[int]] = {}
        used = 0
        for _, doc, window in scored:
            if len(chosen) == MAX_SNIPPETS:
                break
            if any(abs(window.start - start) < WINDOW_LINES for start in taken.get(doc.uri, [])):
                continue  # overlaps a window of the same file already chosen
            snippet = render(doc.name, window.text, comment)
            cost = approx_token_count(snippet)
            if used + cost > max_tokens:
                continue
            used += cost
            chosen.append(snippet)
            taken.setdefault(doc.uri, []).append(window.start)
        return chosen[::-1]

    def _index_of(self, doc: OpenDocument) -> _Index:
        cached = self._indexes.get(doc.uri)
        if cached is not None and cached.text is doc.text:
            return cached
        lines = [] if "\x00" in doc.text else doc.text.splitlines()  # binary: nothing to offer
        step = WINDOW_LINES // 2
        windows: list[_Window] = []
        holding: dict[str, list[int]] = {}
        for start in range(0, max(1, len(lines) - step), step):
            text = "\n".join(lines[start : start + WINDOW_LINES]).strip("\n")
            if text.strip():
                window = _Window(start, text, identifiers(text))
                for name in window.names:
                    holding.setdefault(name, []).append(len(windows))
                windows.append(window)
        index = self._indexes[doc.uri] = _Index(doc.text, windows, holding, _code_lines(doc.text))
        return index


def _code_lines(text: str) -> set[str]:
    """The lines of `text` long enough to tell one piece of code from another, stripped."""
    return {stripped for line in text.splitlines() if len(stripped := line.strip()) >= 8}


def render(name: str, text: str, comment: str) -> str:
    """`text` as line comments under a header naming its file, ending in a line break."""
    lines = [f"{comment} {line}".rstrip() for line in text.split("\n")]
    return "\n".join([f"{comment} Compare this snippet from {name}:", *lines]) + "\n"
