"""Every kernel benchmark and the whole denoising step, in one run: the script to run on a GPU machine.

    python -m dgemma_lsp.kernels.bench_all --out DIR [--layers N] [--prompt-tokens 2048]   # CUDA, < 8 min
    TRITON_INTERPRET=1 python -m dgemma_lsp.kernels.bench_all --out DIR --small             # CPU smoke run

Writes DIR/bench_all.json: per op (bench_<op>.run at the real 26B-A4B shapes), then `dgemma-lsp bench`'s
whole-step comparison on random weights of the real config (batch 1, canvas 256): transformers' reference,
the fast backend with torch kernels, with Triton kernels and (CUDA) with the step replayed as a CUDA graph,
with the step time against the weight-streaming floor (every weight read once per step at the measured copy
bandwidth); and DIR/profile_step.txt, the profiler's op table of the steps of one fast completion. A part
that fails is recorded with its error; the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from . import bench_attention, bench_moe, bench_norms, bench_vocab_head
from .utils import device_name, peak_copy_gbps

OPS = {"norms": bench_norms, "attention": bench_attention, "moe": bench_moe, "vocab_head": bench_vocab_head}


@functools.cache
def random_setup(device: torch.device, small: bool, layers: int | None) -> Any:
    """Every backend over one set of random weights of the real (or tiny) config: built once, for the whole
    step and the profile."""
    from dgemma_lsp.model.bench import BACKENDS, GRAPHS, TRITON, setup

    config = "tiny" if small else "diffusiongemma-26b-a4b"
    graphs = (GRAPHS,) if device.type == "cuda" else ()
    return setup(
        None, device=str(device), backends=(*BACKENDS, TRITON, *graphs), random_weights=True, config=config,
        layers=1 if small else layers,
    )  # fmt: skip


def whole_step(device: torch.device, small: bool, layers: int | None, prompt_tokens: int) -> dict[str, Any]:
    from dgemma_lsp.model.bench import measure

    s = random_setup(device, small, layers)
    # Medians of 3: a single repeat once measured a graphed step at 59 ms whose profile summed to 22 ms.
    shape = (
        {"prompt_tokens": 16, "steps": 1, "repeats": 1}
        if small
        else {"prompt_tokens": prompt_tokens, "steps": 4, "repeats": 3}
    )
    report = measure(s, **shape)
    fast = s.models["fast"]
    weight_bytes = sum(p.numel() * p.element_size() for p in fast.parameters())
    # The embedding is read twice per step (LM head and self-conditioning), as docs section 5 counts it.
    weight_bytes += fast.embed_tokens.weight.numel() * fast.embed_tokens.weight.element_size()
    peak = peak_copy_gbps(device, small)
    floor_ms = weight_bytes / peak / 1e6
    report["weight_bytes_per_step"] = weight_bytes
    report["copy_peak_gbps"] = peak
    report["floor_ms"] = floor_ms
    report["step_over_floor"] = {name: r["step_ms"] / floor_ms for name, r in report["results"].items()}
    return report


def profile(
    device: torch.device, small: bool, layers: int | None, prompt_tokens: int, out: Path
) -> dict[str, Any]:
    """Where the steps of one fast completion spend their time (Triton kernels, step graphs on CUDA; 4 steps;
    the prompt already cached, so no prefill): the profiler's op table in out."""
    from dgemma_lsp.model.fast import denoise_fast, model_dtype
    from dgemma_lsp.model.kv_cache import KVCache

    s = random_setup(device, small, layers)
    model = s.models["fast"]
    model.use_kernels(True, step_graphs=device.type == "cuda")
    prompt = torch.randint(0, s.vocab_size, (16 if small else prompt_tokens,), device=device)
    settings = dataclasses.replace(s.settings, max_denoising_steps=4)
    size = prompt.numel() + s.canvas_length
    document = KVCache(model.args, size, device=device, dtype=model_dtype(model))  # keeps the graph

    def complete() -> None:
        generator = torch.Generator(device).manual_seed(0)
        denoise_fast(
            model,
            prompt,
            max_new_tokens=s.canvas_length,
            settings=settings,
            generator=generator,
            cache=document,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    complete()  # encodes the prompt, compiles the kernels, captures the step graph
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        complete()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    (out / "profile_step.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=45))
    return {"table": str(out / "profile_step.txt")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_all.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke run (the CPU default)")
    parser.add_argument("--layers", type=int, help="whole step: only the first N layers (memory)")
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = args.small or device.type == "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__, "small": small}
    parts: dict[str, Any] = {name: (lambda m=module: m.run(device, small)) for name, module in OPS.items()}
    parts["whole_step"] = lambda: whole_step(device, small, args.layers, args.prompt_tokens)
    parts["profile"] = lambda: profile(device, small, args.layers, args.prompt_tokens, args.out)
    for name, part in parts.items():
        start = time.perf_counter()
        try:
            report[name] = part()
        except Exception as exc:  # keep the other parts' numbers
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {report[name]['seconds']} s{' (failed)' if 'error' in report[name] else ''}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        (args.out / "bench_all.json").write_text(json.dumps(report, indent=2, default=str))
    return 1 if any("error" in report[name] for name in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
