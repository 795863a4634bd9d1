"""The suggestion cache: exact hits, typing through a suggestion, bounded size."""

from __future__ import annotations

from dgemma_lsp.cache import SuggestionCache
from dgemma_lsp.postprocess import Suggestion

PREFIX = "def greet(name):\n    message = "
SUFFIX = "\n    print(message)\n"


def test_exact_hit_and_miss() -> None:
    cache = SuggestionCache()
    cache.put(PREFIX, SUFFIX, [Suggestion('"Hello, " + name')])
    hit = cache.get(PREFIX, SUFFIX)
    assert hit is not None and hit.typed == 0 and hit.suggestions == [Suggestion('"Hello, " + name')]
    assert cache.get(PREFIX, SUFFIX + "x") is None
    assert cache.get(PREFIX + "z", SUFFIX) is None


def test_typing_through_serves_the_rest() -> None:
    cache = SuggestionCache()
    cache.put(PREFIX, SUFFIX, [Suggestion('"Hello, " + name'), Suggestion("f(name)"), Suggestion('"Hi"')])
    hit = cache.get(PREFIX + '"H', SUFFIX)
    assert hit is not None and hit.typed == 2
    assert hit.suggestions == [Suggestion('ello, " + name'), Suggestion('i"')]
    # The rest is cached under the new spot too, so typing on keeps hitting.
    again = cache.get(PREFIX + '"Hello', SUFFIX)
    assert again is not None and again.suggestions == [Suggestion(', " + name')]


def test_typing_something_else_misses() -> None:
    cache = SuggestionCache()
    cache.put(PREFIX, SUFFIX, [Suggestion('"Hello, " + name')])
    assert cache.get(PREFIX + "'", SUFFIX) is None
    assert cache.get(PREFIX + '"Hello, " + name', SUFFIX) is None  # typed all of it: nothing left


def test_typing_through_keeps_the_replace_range() -> None:
    cache = SuggestionCache()
    cache.put("print(", ")\n", [Suggestion("total)", 1)])
    hit = cache.get("print(tot", ")\n")
    assert hit is not None and hit.suggestions == [Suggestion("al)", 1)]


def test_the_key_looks_only_near_the_cursor() -> None:
    cache = SuggestionCache(window=64)
    far = "# a long file\n" * 50
    cache.put(far + PREFIX, SUFFIX + far, [Suggestion("x")])
    # A context window that starts or ends elsewhere still finds it.
    assert cache.get(far[100:] + PREFIX, SUFFIX + far[:100]) is not None


def test_least_recently_used_entries_go_first() -> None:
    cache = SuggestionCache(capacity=3)
    for i in range(3):
        cache.put(f"p{i}", "", [Suggestion(str(i))])
    assert cache.get("p0", "") is not None  # p0 is now the most recent
    cache.put("p3", "", [Suggestion("3")])
    assert len(cache) == 3
    assert cache.get("p1", "") is None
    assert all(cache.get(f"p{i}", "") is not None for i in (0, 2, 3))


def test_speculative_entries_say_so() -> None:
    cache = SuggestionCache()
    cache.put(PREFIX, SUFFIX, [Suggestion("name")], speculative=True)
    hit = cache.get(PREFIX + "na", SUFFIX)
    assert hit is not None and hit.speculative and hit.suggestions == [Suggestion("me")]
