"""Decisions around each request, no torch: whether to complete, how long to wait, how many candidates."""

from __future__ import annotations

import random
import statistics
import time
from collections import deque

# Adaptive debounce (automatic triggers): wait about twice the user's recent time between keystrokes,
# counted from the last keystroke, so a client that already debounced (Neovim: 200 ms) waits little more.
DEBOUNCE_MIN_MS = 30
DEBOUNCE_MAX_MS = 600
DEBOUNCE_IDLE_MS = 150  # no typing rate known yet
TYPING_WINDOW = 8  # keystrokes remembered per document
PAUSE_S = 1.5  # a longer gap between keystrokes is a pause, not the typing rate


class Debouncer:
    """Per-document typing rate -> how long an automatic request waits before it asks the model."""

    def __init__(self, fixed_ms: int | None = None) -> None:
        self.fixed_ms = fixed_ms  # None: adaptive
        self._typed: dict[str, deque[float]] = {}

    def typed(self, uri: str, now: float | None = None) -> None:
        times = self._typed.setdefault(uri, deque(maxlen=TYPING_WINDOW))
        times.append(time.monotonic() if now is None else now)

    def forget(self, uri: str) -> None:
        self._typed.pop(uri, None)

    def delay(self, uri: str, invoked: bool, now: float | None = None) -> float:
        """Seconds to wait before asking the model; 0 for an invoked request."""
        if invoked:
            return 0.0
        now = time.monotonic() if now is None else now
        times = self._typed.get(uri, ())
        since = now - times[-1] if times else PAUSE_S
        if self.fixed_ms is not None:
            return max(0.0, self.fixed_ms / 1000 - since) if times else self.fixed_ms / 1000
        if since >= PAUSE_S:
            return DEBOUNCE_MIN_MS / 1000  # not typing: the cursor moved
        gaps = [b - a for a, b in zip(times, list(times)[1:], strict=False) if b - a < PAUSE_S]
        wait_ms = 2000 * statistics.median(gaps) if gaps else DEBOUNCE_IDLE_MS
        wait_ms = min(max(wait_ms, DEBOUNCE_MIN_MS), DEBOUNCE_MAX_MS)
        return max(DEBOUNCE_MIN_MS / 1000, wait_ms / 1000 - since)


def language_enabled(
    enable: dict[str, bool], language_id: str | None, trained: tuple[str, ...] | None = None
) -> bool:
    """Per-language switch: the languageId's own entry, else off for a language the model was not `trained`
    on (when it names them), else "*", else on. languageIds are compared in any case ("Python")."""
    language_id = language_id.lower() if language_id else None
    enable = {key.lower(): on for key, on in enable.items()}
    if language_id is not None and language_id in enable:
        return enable[language_id]
    if trained is not None and language_id not in trained:
        return False
    return enable.get("*", True)


def candidate_seeds(count: int, seed: int | None) -> list[int]:
    """Seeds for `count` candidates: consecutive from a fixed seed (reproducible), else fresh ones."""
    if seed is not None:
        return [seed + i for i in range(count)]
    return [random.randrange(2**31) for _ in range(count)]
