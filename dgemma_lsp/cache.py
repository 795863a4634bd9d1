"""Suggestions by the text around the cursor, with typing-through: bounded LRU, no torch.

A key is a digest of the last `window` characters before the cursor and the first `window` after it, so
the same spot gives the same key whatever the context windows were, and memory per entry is small.
Typing through a shown suggestion moves the cursor into it: the text before the cursor then ends with
the first characters of a cached suggestion whose key is `typed` characters earlier.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace

from dgemma_lsp.postprocess import Suggestion


@dataclass(frozen=True)
class Hit:
    suggestions: list[Suggestion]
    typed: int  # characters of the cached suggestions the user has typed since (0: an exact hit)
    speculative: bool  # the entry was precomputed for an accepted suggestion


class SuggestionCache:
    def __init__(self, capacity: int = 256, window: int = 1024, max_typed: int = 128) -> None:
        self.capacity = capacity
        self.window = window
        self.max_typed = max_typed
        self._entries: OrderedDict[bytes, tuple[list[Suggestion], bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, prefix: str, suffix: str) -> bytes:
        around = prefix[-self.window :] + "\x00" + suffix[: self.window]
        return hashlib.blake2b(around.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def put(self, prefix: str, suffix: str, suggestions: list[Suggestion], speculative: bool = False) -> None:
        key = self.key(prefix, suffix)
        self._entries[key] = (suggestions, speculative)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __contains__(self, around: tuple[str, str]) -> bool:
        return self.key(*around) in self._entries

    def get(self, prefix: str, suffix: str) -> Hit | None:
        """The suggestions for this spot, or what is left of them after the user typed their start."""
        tail = prefix[-(self.window + self.max_typed) :]  # all that the keys below look at
        for typed in range(min(self.max_typed, len(prefix)) + 1):
            entry = self._entries.get(self.key(tail[: len(tail) - typed], suffix))
            if entry is None:
                continue
            suggestions, speculative = entry
            if typed == 0:
                self._entries.move_to_end(self.key(prefix, suffix))
                return Hit(suggestions, 0, speculative)
            chars = tail[len(tail) - typed :]
            rest = [replace(s, text=s.text[typed:]) for s in suggestions if s.text.startswith(chars)]
            rest = [s for s in rest if s.text.strip()]
            if rest:
                self.put(prefix, suffix, rest, speculative)
                return Hit(rest, typed, speculative)
        return None

    def clear(self) -> None:
        self._entries.clear()
