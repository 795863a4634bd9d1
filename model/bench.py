"""`dgemma-lsp bench`: the reference and the fast backend (torch kernels, Triton kernels and, on CUDA, Triton
kernels replayed as CUDA graphs) on the same weights, in one process.

Per backend: prefill (encoder over the prompt), ms per denoising step (decoder + sampler), commit (encoder
over one canvas), one whole single-canvas completion, and tokens per forward. Repeats are interleaved
across backends so that a busy machine slows both alike; medians are reported.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from .checkpoint import load_checkpoint, resolve_device
from .config import named_config
from .denoise import SamplerSettings, _encode, denoise
from .dgemma import DGemma
from .fast import Layout, denoise_fast, encode, model_dtype, prefill
from .kv_cache import KVCache
from .load import from_hf_model, load_fast, quantize_experts, random_hf_model

BACKENDS = ("reference", "fast")
TRITON = "fast-triton"  # the fast model with the Triton kernels (the same module, switched per run)
GRAPHS = "fast-graph"  # the Triton kernels with each denoising step replayed as a CUDA graph (CUDA only)
INDUCTOR = "fast-inductor"  # the torch path compiled by torch.compile (compiled.py; for the CPU)


@dataclass
class Setup:
    models: dict[str, Any]  # backend -> transformers' model or DGemma
    settings: SamplerSettings
    vocab_size: int
    canvas_length: int
    device: torch.device
    source: str  # checkpoint folder or "random:<config>"
    # Per fast backend, the document cache its completions run on, as a server's document slot: the
    # step graphs captured in it on the warm-up run are replayed by the measured ones.
    caches: dict[str, KVCache] = field(default_factory=dict)
    compile_s: float | None = None  # the inductor backend's compile time (its warm-up)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    start = _clock(device)
    out = fn()
    return (_clock(device) - start) * 1000.0, out


def setup(
    model: str | None,
    *,
    device: str | None,
    backends: tuple[str, ...],
    random_weights: bool,
    config: str,
    layers: int | None,
    fp8_experts: bool = False,
) -> Setup:
    resolved = resolve_device(device)
    dtype = torch.bfloat16 if resolved.type == "cuda" else torch.float32
    if random_weights:
        hf = random_hf_model(named_config(config, layers), resolved, dtype)
        # The fast model shares the weight tensors (only its fused projections are copies).
        models: dict[str, Any] = {"reference": hf, "fast": from_hf_model(hf)}
        models[TRITON] = models[GRAPHS] = models["fast"]
        if fp8_experts:
            quantize_experts(models["fast"])
        text = hf.config.text_config
        return Setup(
            {b: models[b] for b in backends},
            SamplerSettings(),
            text.vocab_size,
            hf.config.canvas_length,
            resolved,
            f"random:{config}" + (f" ({layers} layers)" if layers else ""),
        )
    if model is None:
        raise ValueError("pass --model DIR, or --random-weights --config NAME")
    models = {}
    if "reference" in backends:
        models["reference"] = load_checkpoint(model, device).model
    fast = load_fast(model, device, fp8_experts=fp8_experts)
    for name in ("fast", TRITON, GRAPHS, INDUCTOR):
        if name in backends:
            models[name] = fast.model
    s = Setup(models, fast.settings, fast.vocab_size, fast.canvas_length, resolved, str(fast.path))
    if INDUCTOR in backends:  # compiled now, for plain canvases and batches of three (the lengths layout)
        fast.model.use_kernels(False, inductor=True)
        s.compile_s = fast.model.compiled_steps.warm_up(rows=(1, 3), settings=fast.settings)
    return s


def _measure_once(
    backend: str, model: Any, s: Setup, prompt: torch.Tensor, settings: SamplerSettings, seed: int
) -> dict[str, float]:
    device, canvas = s.device, s.canvas_length
    block = torch.randint(
        0, s.vocab_size, (1, canvas), device=device, generator=torch.Generator(device).manual_seed(seed)
    )
    run = dict(max_new_tokens=canvas, settings=settings, generator=torch.Generator(device).manual_seed(seed))
    if isinstance(model, DGemma):
        model.use_kernels(
            backend in (TRITON, GRAPHS), step_graphs=backend == GRAPHS, inductor=backend == INDUCTOR
        )
        if backend not in s.caches:
            s.caches[backend] = KVCache(
                model.args, prompt.numel() + canvas, device=device, dtype=model_dtype(model)
            )
        document = s.caches[backend]
        document.truncate(0)  # a cold prefill, in the same buffers
        prefill_ms, _ = _timed(device, lambda: prefill(model, document, prompt))
        commit_ms, _ = _timed(device, lambda: encode(model, block, document, prompt.numel()))
        edited = prompt.clone()
        edited[-2] = (edited[-2] + 1) % s.vocab_size  # a keystroke near the cursor
        reprefill_ms, _ = _timed(device, lambda: prefill(model, document, edited))
        document.truncate(0)
        run["cache"] = document
        total_ms, result = _timed(device, lambda: denoise_fast(model, prompt, **run))
        extra = {"reprefill_ms": reprefill_ms}
        # The infilling layouts: 16 clamped suffix tokens after one middle, or after three middle lengths.
        clamped = tuple(block[0, :16].tolist())
        middle = canvas - len(clamped)
        for name, layout in (
            ("clamped", Layout((middle,), clamped)),
            ("lengths", Layout((middle // 4, middle // 2, middle), clamped)),
        ):
            run["generator"] = torch.Generator(device).manual_seed(seed)
            _, out = _timed(device, lambda layout=layout: denoise_fast(model, prompt, layout=layout, **run))
            extra[f"{name}_step_ms"] = out.denoise_ms / out.steps
    else:
        text_config = model.config.get_text_config(decoder=True)
        with torch.inference_mode():
            cache = DynamicCache(config=text_config)
            encoder = model.model.encoder
            n = prompt.numel()
            prefill_ms, _ = _timed(
                device, lambda: _encode(model, encoder, prompt[None], cache, start=0, attended=n)
            )
            commit_ms, _ = _timed(
                device, lambda: _encode(model, encoder, block, cache, start=n, attended=n + canvas)
            )
        total_ms, result = _timed(device, lambda: denoise(model, prompt, **run))
        extra = {}
    return {
        "prefill_ms": prefill_ms,
        "step_ms": result.denoise_ms / result.steps,
        "commit_ms": commit_ms,
        "completion_ms": total_ms,
        "steps": result.steps,
        "tokens_per_forward": len(result.tokens) / result.steps,
        **extra,
    }


def measure(
    s: Setup, *, prompt_tokens: int, steps: int | None, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """Medians over ``repeats`` interleaved runs, per backend, plus the fast/reference ratios."""
    settings = s.settings if steps is None else dataclasses.replace(s.settings, max_denoising_steps=steps)
    gen = torch.Generator(s.device).manual_seed(seed)
    prompt = torch.randint(0, s.vocab_size, (prompt_tokens,), device=s.device, generator=gen)
    warm = dataclasses.replace(settings, max_denoising_steps=2)
    for backend, model in s.models.items():  # first calls pay allocation and kernel selection
        _measure_once(backend, model, s, prompt, warm, seed)
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in s.models}
    for r in range(repeats):
        for backend, model in s.models.items():
            runs[backend].append(_measure_once(backend, model, s, prompt, settings, seed + r))
    results = {b: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for b, rs in runs.items()}
    report: dict[str, Any] = {
        "source": s.source,
        "device": device_description(s.device),
        "device_type": s.device.type,
        "dtype": str(
            model_dtype(s.models["fast"]) if "fast" in s.models else next(iter(s.models.values())).dtype
        ),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prompt_tokens": prompt_tokens,
        "canvas_length": s.canvas_length,
        "max_denoising_steps": settings.max_denoising_steps,
        "repeats": repeats,
        "results": results,
    }
    if s.compile_s is not None:
        report["inductor_compile_s"] = s.compile_s
    keys = ("prefill_ms", "step_ms", "commit_ms", "completion_ms")
    report["speedup"] = {  # reference over each fast variant, and torch over Triton kernels
        f"{slow}/{fast}": {k: results[slow][k] / results[fast][k] for k in keys}
        for slow, fast in (
            ("reference", "fast"),
            ("reference", TRITON),
            ("fast", TRITON),
            ("reference", GRAPHS),
            (TRITON, GRAPHS),
            ("reference", INDUCTOR),
            ("fast", INDUCTOR),
        )
        if slow in results and fast in results
    }
    return report


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count: what a measurement ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def format_report(report: dict[str, Any]) -> str:
    keys = (
        "prefill_ms",
        "step_ms",
        "commit_ms",
        "completion_ms",
        "steps",
        "tokens_per_forward",
        "reprefill_ms",
        "clamped_step_ms",
        "lengths_step_ms",
    )
    names = list(report["results"])
    # Columns as wide as the longest name (fast-inductor, reference/fast-inductor) plus a space.
    width = max([12, *(len(n) + 1 for n in names)])
    ratio_width = max([20, *(len(p) + 1 for p in report["speedup"])])
    lines = [
        f"{report['source']} on {report['device']} ({report['dtype']}, {report['threads']} threads, torch "
        f"{report['torch']}): prompt {report['prompt_tokens']} tokens, canvas {report['canvas_length']}, "
        f"{report['max_denoising_steps']} steps, median of {report['repeats']}",
        f"{'':20}"
        + "".join(f"{n:>{width}}" for n in names)
        + "".join(f"{p:>{ratio_width}}" for p in report["speedup"]),
    ]
    for key in keys:
        values = [report["results"][n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        row = f"{key:20}" + "".join(f"{v:{width}.2f}" if v is not None else f"{'-':>{width}}" for v in values)
        row += "".join(
            f"{ratios[key]:{ratio_width - 1}.2f}x" for ratios in report["speedup"].values() if key in ratios
        )
        lines.append(row)
    if "inductor_compile_s" in report:
        lines.append(
            f"{INDUCTOR} compiled in {report['inductor_compile_s']:.1f} s (its warm-up, before the runs)"
        )
    return "\n".join(lines)
