"""Counters and latency samples behind the `dgemma/stats` request; bounded, no torch."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from typing import Any

SAMPLES = 1000  # latest latencies kept per series


def percentiles(samples: deque[float]) -> dict[str, float | int]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": round(ordered[-1], 2),
    }


class Stats:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=SAMPLES)  # request in -> answer out, served requests
        self.cached_latency_ms: deque[float] = deque(maxlen=SAMPLES)  # the same, for cache hits only
        self.model_ms: deque[float] = deque(maxlen=SAMPLES)  # one model completion (prefill + denoise + post)
        self.steps: deque[int] = deque(maxlen=SAMPLES)  # decoder passes per model completion

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def report(self, cache_size: int) -> dict[str, Any]:
        c = self.counts
        lookups = c["cacheHits"] + c["typingThroughHits"] + c["cacheMisses"]
        return {
            "requests": c["requests"],
            "served": c["served"],
            "empty": c["empty"],
            "cancelled": c["cancelled"],
            "outdated": c["outdated"],  # the document changed while they waited out the debounce
            "failed": c["failed"],
            "completions": c["completions"],
            "brokeSyntax": c["brokeSyntax"],  # completions dropped as they added syntax errors
            "openFileSnippets": c["openFileSnippets"],  # snippets of other open documents given the model
            "cache": {
                "hits": c["cacheHits"],
                "typingThroughHits": c["typingThroughHits"],
                "speculativeHits": c["speculativeHits"],
                "misses": c["cacheMisses"],
                "hitRate": round((lookups - c["cacheMisses"]) / lookups, 3) if lookups else None,
                "size": cache_size,
            },
            "speculative": {
                "started": c["speculativeStarted"],
                "finished": c["speculativeFinished"],
                "cancelled": c["speculativeCancelled"],
            },
            "latencyMs": percentiles(self.latency_ms),
            "cachedLatencyMs": percentiles(self.cached_latency_ms),
            "modelMs": percentiles(self.model_ms),
            "stepsPerCompletion": round(statistics.fmean(self.steps), 2) if self.steps else None,
        }
