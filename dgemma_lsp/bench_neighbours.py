"""Do the open-file snippets (`neighbours.OpenFiles`) hold the names a line needs that its own file lacks?

    python -m dgemma_lsp.bench_neighbours [--tokens 512] [--seed 0]

Cursors at random lines of the Python standard library's packages, each package's other files open. For
each line, the names it uses that the 400 lines above and 120 below it lack are what snippets could
supply: the share the snippets hold, against as many random windows of the same files. No model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sysconfig
import time
from pathlib import Path

from .context import approx_token_count
from .neighbours import WINDOW_LINES, OpenDocument, OpenFiles, identifiers, render

SKIPPED = {"test", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo"}


def packages() -> list[list[Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder in sorted(p for p in stdlib.iterdir() if p.is_dir() and p.name not in SKIPPED):
        files = [
            f
            for f in sorted(folder.rglob("*.py"))
            if "test" not in f.parts and 2_000 < f.stat().st_size < 200_000
        ]
        if 3 <= len(files) <= 40:
            found.append(files)
    return found


def random_windows(others: list[OpenDocument], count: int, tokens: int, rng: random.Random) -> list[str]:
    pool = [
        render(d.name, "\n".join(lines[s : s + WINDOW_LINES]), "#")
        for d in others
        for lines in [d.text.split("\n")]
        for s in range(0, max(1, len(lines) - WINDOW_LINES // 2), WINDOW_LINES // 2)
    ]
    picked: list[str] = []
    for window in rng.sample(pool, len(pool)):
        if len(picked) < count and sum(map(approx_token_count, [*picked, window])) <= tokens:
            picked.append(window)
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cursors = found = found_randomly = missing = offered = 0
    ms: list[float] = []
    for files in packages():
        texts = {f: f.read_text(errors="replace") for f in files}
        open_files = OpenFiles()
        for path in rng.sample(files, min(4, len(files))):
            lines = texts[path].split("\n")
            for i in rng.sample([i for i, line in enumerate(lines) if len(line.strip()) >= 8 and i > 5], 10):
                line = lines[i]
                indent = line[: len(line) - len(line.lstrip())]
                prefix = "\n".join(lines[max(0, i - 400) : i]) + "\n" + indent
                suffix = "\n" + "\n".join(lines[i + 1 : i + 120])
                needed = identifiers(line) - identifiers(prefix) - identifiers(suffix)
                others = [OpenDocument(str(f), f.name, "python", texts[f]) for f in files if f != path]
                start = time.perf_counter()
                snippets = open_files.snippets(prefix, "python", others, args.tokens)
                ms.append((time.perf_counter() - start) * 1000)
                baseline = random_windows(others, max(1, len(snippets)), args.tokens, rng)
                cursors += 1
                offered += len(snippets)
                missing += len(needed)
                found += len(needed & identifiers("\n".join(snippets)))
                found_randomly += len(needed & identifiers("\n".join(baseline)))
    ms.sort()
    print(f"{cursors} cursors, {offered / cursors:.2f} snippets each; {missing} names a line lacks locally")
    print(f"held by the snippets: {100 * found / missing:.1f} %", end="; ")
    print(f"by random windows: {100 * found_randomly / missing:.1f} %")
    p50, p95 = statistics.median(ms), ms[int(0.95 * len(ms))]
    print(f"ms per request: p50 {p50:.2f}, p95 {p95:.2f}, max {ms[-1]:.1f}")


if __name__ == "__main__":
    main()
