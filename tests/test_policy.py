"""Debounce from the typing rate, per-language enable, candidate seeds."""

from __future__ import annotations

import pytest

from dgemma_lsp.policy import (
    DEBOUNCE_IDLE_MS,
    DEBOUNCE_MAX_MS,
    DEBOUNCE_MIN_MS,
    Debouncer,
    candidate_seeds,
    language_enabled,
)


def typing(debouncer: Debouncer, interval: float, keys: int = 6, start: float = 100.0) -> float:
    """Type `keys` characters `interval` seconds apart; returns the time of the last one."""
    for i in range(keys):
        debouncer.typed("a.py", start + i * interval)
    return start + (keys - 1) * interval


def test_invoked_requests_never_wait() -> None:
    debouncer = Debouncer()
    last = typing(debouncer, 0.1)
    assert debouncer.delay("a.py", invoked=True, now=last) == 0


def test_fast_typing_waits_less_than_slow_typing() -> None:
    fast, slow = Debouncer(), Debouncer()
    t_fast, t_slow = typing(fast, 0.08), typing(slow, 0.25)
    d_fast = fast.delay("a.py", invoked=False, now=t_fast)
    d_slow = slow.delay("a.py", invoked=False, now=t_slow)
    assert d_fast == pytest.approx(0.16)  # about two keystrokes' time
    assert d_slow == pytest.approx(0.5)
    assert DEBOUNCE_MIN_MS / 1000 <= d_fast < d_slow <= DEBOUNCE_MAX_MS / 1000


def test_time_since_the_last_keystroke_counts() -> None:
    # Neovim sends the request 200 ms after the keystroke: only the rest of the wait is left.
    debouncer = Debouncer()
    last = typing(debouncer, 0.15)
    assert debouncer.delay("a.py", invoked=False, now=last + 0.2) == pytest.approx(0.1)
    assert debouncer.delay("a.py", invoked=False, now=last + 0.29) == DEBOUNCE_MIN_MS / 1000


def test_very_slow_typing_is_capped() -> None:
    debouncer = Debouncer()
    last = typing(debouncer, 1.0)
    assert debouncer.delay("a.py", invoked=False, now=last) == DEBOUNCE_MAX_MS / 1000


def test_a_pause_is_not_the_typing_rate() -> None:
    debouncer = Debouncer()
    typing(debouncer, 0.1, start=100.0)
    last = typing(debouncer, 0.1, keys=2, start=110.0)  # a 10 s pause, then two quick keys
    assert debouncer.delay("a.py", invoked=False, now=last) == pytest.approx(0.2)
    # Long after the last keystroke (the cursor moved), wait only the minimum.
    assert debouncer.delay("a.py", invoked=False, now=last + 5) == DEBOUNCE_MIN_MS / 1000


def test_no_typing_known() -> None:
    debouncer = Debouncer()
    assert debouncer.delay("b.py", invoked=False, now=1.0) == DEBOUNCE_MIN_MS / 1000
    debouncer.typed("b.py", 1.0)
    assert debouncer.delay("b.py", invoked=False, now=1.0) == DEBOUNCE_IDLE_MS / 1000


def test_fixed_debounce() -> None:
    debouncer = Debouncer(fixed_ms=250)
    assert debouncer.delay("a.py", invoked=False, now=1.0) == 0.25
    last = typing(debouncer, 0.05)
    assert debouncer.delay("a.py", invoked=False, now=last + 0.1) == pytest.approx(0.15)
    assert debouncer.delay("a.py", invoked=True, now=last) == 0


def test_documents_have_their_own_rate() -> None:
    debouncer = Debouncer()
    last = typing(debouncer, 0.1)
    debouncer.forget("a.py")
    assert debouncer.delay("a.py", invoked=False, now=last) == DEBOUNCE_MIN_MS / 1000


@pytest.mark.parametrize(
    "enable, language_id, trained, expected",
    [
        ({}, "python", None, True),
        ({"markdown": False}, "markdown", None, False),
        ({"markdown": False}, "python", None, True),
        ({"*": False, "python": True}, "python", None, True),
        ({"*": False, "python": True}, "go", None, False),
        ({"*": False}, None, None, False),
        # a model trained on Python only: off elsewhere unless the language is named
        ({}, "python", ("python",), True),
        ({}, "rust", ("python",), False),
        ({"*": True}, "rust", ("python",), False),
        ({"rust": True}, "rust", ("python",), True),
        ({"python": False}, "python", ("python",), False),
        # languageIds in any case: the grammar lookup takes "Python" as Python, so does the switch
        ({}, "Python", ("python",), True),
        ({"Rust": True}, "rust", ("python",), True),
    ],
)
def test_language_enabled(
    enable: dict[str, bool], language_id: str | None, trained: tuple[str, ...] | None, expected: bool
) -> None:
    assert language_enabled(enable, language_id, trained) is expected


def test_candidate_seeds() -> None:
    assert candidate_seeds(3, 7) == [7, 8, 9]
    fresh = candidate_seeds(3, None)
    assert len(fresh) == 3 and len(set(fresh)) == 3
