"""Load the fast model straight from a checkpoint's safetensors.

Build on the meta device (no random init), memory-map the files, rename the keys once, assign the tensors
(no second copy when dtype and device already match), then cast: bf16 on CUDA, fp32 on CPU. The vision
tower's weights are never read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

from dgemma_lsp.kernels import Kernels, use_triton

from .checkpoint import LoadedModel, ModelLoadError, open_checkpoint, read_safetensors_header
from .config import ModelArgs
from .denoise import SamplerSettings
from .dgemma import DGemma

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Text weights are tied between encoder and decoder; the decoder copy is the one transformers saves.
PREFIXES = {"model.decoder.": "decoder_scalar", "model.encoder.language_model.": "encoder_scalar"}
FP8_MAX = 448.0  # largest finite float8 e4m3fn


def mmap_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file as views of a private memory map (pages load on first touch)."""
    header_len, header = read_safetensors_header(file)
    storage = torch.UntypedStorage.from_file(str(file), shared=False, nbytes=file.stat().st_size)
    data = torch.empty(0, dtype=torch.uint8).set_(storage)
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in SAFETENSORS_DTYPES:
            raise ModelLoadError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        if (base + begin) % dtype.itemsize:
            raw = raw.clone()  # unaligned (not written by safetensors itself): copy this one tensor
        tensors[name] = raw.view(dtype).view(info["shape"])
    return tensors


def checkpoint_keys(names: list[str]) -> dict[str, str]:
    """Our state-dict key -> the checkpoint key holding it (decoder copy first, encoder copy otherwise)."""
    found: dict[str, str] = {}
    for prefix, scalar in PREFIXES.items():
        for name in names:
            if name.startswith(prefix):
                key = name[len(prefix) :]
                if key.endswith(".layer_scalar"):
                    key = key.removesuffix("layer_scalar") + scalar
                found.setdefault(key, name)
    if "lm_head.weight" in names:
        found.setdefault("embed_tokens.weight", "lm_head.weight")
    return found


def build(
    args: ModelArgs, tensors: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> DGemma:
    """The model on ``device`` with the checkpoint's text tensors assigned; ValueError names missing keys."""
    with torch.device("meta"):
        model = DGemma(args)
    state = {
        key: tensors[name].to(device=device, dtype=dtype)
        for key, name in checkpoint_keys(list(tensors)).items()
    }
    result = model.load_state_dict(state, strict=False, assign=True)  # load hooks fuse q/k/v and gate/up
    problems = [
        f"{len(keys)} {kind}, e.g. {', '.join(keys[:3])}"
        for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
        if keys
    ]
    if problems:
        raise ValueError(f"the checkpoint does not match the model: {'; '.join(problems)}")
    return model.to(device).eval().requires_grad_(False)


def from_hf_model(hf: DiffusionGemmaForBlockDiffusion) -> DGemma:
    """Our model over transformers' model's weight tensors (only the fused projections are copies)."""
    args = ModelArgs.from_hf(hf.config)
    return build(args, hf.state_dict(), hf.device, hf.dtype)


def random_hf_model(
    config: DiffusionGemmaConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> DiffusionGemmaForBlockDiffusion:
    """transformers' model with its own random init, built directly on ``device`` in ``dtype``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)  # in a forked RNG scope: the caller's global stream is left alone
        model = DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def quantize_experts(model: DGemma) -> None:
    """Hold the routed experts in float8 e4m3 with one fp32 scale per output channel (absmax / 448).

    The torch path dequantises per layer (no faster, ~half the resident memory); it is the storage format
    for a fused FP8 MoE kernel.
    """
    for layer in model.layers:
        experts = layer.experts
        for name in ("gate_up", "down"):
            weight = getattr(experts, f"{name}_proj").detach()
            scale = weight.abs().amax(dim=-1).float().clamp(min=1e-12) / FP8_MAX
            fp8 = (weight.float() / scale[..., None]).to(torch.float8_e4m3fn)
            setattr(experts, f"{name}_proj", torch.nn.Parameter(fp8, requires_grad=False))
            setattr(experts, f"{name}_scale", scale)


GRAPHS_ENV = "DGEMMA_CUDA_GRAPHS"  # "0": the Triton kernels launched one by one, no step graphs


def use_step_graphs(triton: bool, device: torch.device) -> bool:
    """Step graphs (graphs.py) go with the Triton kernels on CUDA, unless $DGEMMA_CUDA_GRAPHS is 0."""
    return triton and device.type == "cuda" and os.environ.get(GRAPHS_ENV, "1") != "0"


def compile_steps(model: DGemma, device: torch.device, settings: SamplerSettings) -> None:
    """kernels=inductor: compile the torch path's step and encoder (compiled.py) now, before the first
    request; where that fails (no C++ compiler, say) the torch path runs uncompiled, with a warning."""
    if device.type != "cpu":
        log.warning("kernels=inductor is for the CPU, not %s: using the torch kernels", device.type)
        return
    model.use_kernels(False, inductor=True)
    try:
        model.compiled_steps.warm_up(settings=settings)
    except Exception as exc:
        log.warning("could not compile the denoising step (%s): using the torch kernels", exc)
        model.use_kernels(False)


def load_fast(
    path: str | os.PathLike[str],
    device: str | None = None,
    *,
    fp8_experts: bool = False,
    kernels: Kernels = "auto",
) -> LoadedModel:
    """The fast backend's model from a local checkpoint folder; ModelLoadError for anything wrong."""
    checked = open_checkpoint(path, device)
    folder = checked.path
    try:
        config = DiffusionGemmaConfig.from_dict(checked.config)
        args = ModelArgs.from_hf(config)
    except Exception as exc:
        raise ModelLoadError(f"{folder / 'config.json'}: {exc}") from exc
    try:
        tensors: dict[str, torch.Tensor] = {}
        for file in checked.weights:
            tensors.update(mmap_safetensors(file))
        model = build(args, tensors, checked.device, checked.dtype)
        if fp8_experts:
            quantize_experts(model)
        triton = use_triton(kernels, checked.device)
        model.use_kernels(triton, step_graphs=use_step_graphs(triton, checked.device))
        if kernels == "inductor":
            compile_steps(model, checked.device, checked.settings)
    except ModelLoadError:
        raise
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(f"Out of memory loading {folder} onto {checked.device}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"Could not load the weights in {folder}: {exc}") from exc
    log.info(
        "loaded %s on %s (%s%s, fast backend, %s kernels): %d layers, vocab %d, canvas %d",
        folder,
        checked.device,
        checked.dtype,
        ", fp8 experts" if fp8_experts else "",
        "triton" if model.triton else "inductor" if model.compiled_steps else "torch",
        args.n_layers,
        args.vocab_size,
        args.canvas_length,
    )
    return LoadedModel(
        model=model,
        tokenizer=checked.tokenizer,
        path=folder,
        device=checked.device,
        dtype=checked.dtype,
        settings=checked.settings,
        canvas_length=args.canvas_length,
        vocab_size=args.vocab_size,
        max_positions=config.text_config.max_position_embeddings,
    )
