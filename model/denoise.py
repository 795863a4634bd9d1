"""Block-diffusion denoiser: our own step loop over transformers' DiffusionGemma encoder and decoder modules.

Semantics follow ``DiffusionGemmaGenerationMixin.generate`` exactly (docs/DIFFUSIONGEMMA.md section 3), so
with the same seed the tokens match ``generate()``; the loop exists so we can cancel between passes, report
progress, time prefill and denoising separately, and later swap in faster kernels.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import torch
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

from . import sampler
from .prompt import FimOrder

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler knobs and the FIM prompt order; the defaults are the released
    google/diffusiongemma-26B-A4B-it generation config (which has no FIM order: PSM)."""

    max_denoising_steps: int = 48
    t_min: float = 0.4
    t_max: float = 0.8
    entropy_bound: float = 0.1
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    eos_token_ids: tuple[int, ...] = (1,)
    pad_token_id: int = 0
    fim_order: FimOrder = "psm"

    def __post_init__(self) -> None:
        if self.fim_order not in get_args(FimOrder):
            raise ValueError(f"fim_order must be one of {get_args(FimOrder)}, got {self.fim_order!r}")
        if self.max_denoising_steps < 1:
            raise ValueError(f"max_denoising_steps must be >= 1, got {self.max_denoising_steps}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.entropy_bound <= 0:
            raise ValueError(f"entropy_bound must be > 0, got {self.entropy_bound}")
        if self.stability_threshold < 0:
            raise ValueError(f"stability_threshold must be >= 0, got {self.stability_threshold}")
        if self.confidence_threshold <= 0:
            raise ValueError(f"confidence_threshold must be > 0, got {self.confidence_threshold}")

    @classmethod
    def from_generation_config(cls, folder: Path) -> SamplerSettings:
        """Read ``generation_config.json`` in ``folder``; missing fields (or file) keep the defaults.

        EOS/pad fall back to the text config in ``config.json`` when the generation config does not name them;
        the FIM order is ``fim_order`` in ``config.json``.
        Raises ValueError (naming the file) for unreadable JSON or bad values.
        """
        folder = Path(folder)
        gen = _read_json_object(folder / GENERATION_CONFIG)
        fields: dict[str, Any] = {}
        for name, kind in (
            ("max_denoising_steps", int),
            ("t_min", float),
            ("t_max", float),
            ("stability_threshold", int),
            ("confidence_threshold", float),
        ):
            if gen.get(name) is not None:
                fields[name] = _number(folder / GENERATION_CONFIG, name, gen[name], kind)
        sampler_config = gen.get("sampler_config")
        if isinstance(sampler_config, dict) and sampler_config.get("entropy_bound") is not None:
            bound = sampler_config["entropy_bound"]
            fields["entropy_bound"] = _number(folder / GENERATION_CONFIG, "entropy_bound", bound, float)

        model_config = _read_json_object(folder / "config.json")
        if model_config.get("fim_order") is not None:  # in config.json: transformers refuses it in the other
            fields["fim_order"] = model_config["fim_order"]
        eos, pad = gen.get("eos_token_id"), gen.get("pad_token_id")
        if eos is None or pad is None:
            text_config = model_config.get("text_config") or {}
            eos = (
                eos if eos is not None else text_config.get("eos_token_id", model_config.get("eos_token_id"))
            )
            pad = (
                pad if pad is not None else text_config.get("pad_token_id", model_config.get("pad_token_id"))
            )
        where = folder / GENERATION_CONFIG
        if eos is not None:
            ids = eos if isinstance(eos, list) else [eos]
            fields["eos_token_ids"] = tuple(_number(where, "eos_token_id", i, int) for i in ids)
        if pad is not None:
            fields["pad_token_id"] = _number(where, "pad_token_id", pad, int)
        if gen:  # transformers' own check too, so both backends take the same files (`entropy_bound: 1`)
            try:
                DiffusionGemmaGenerationConfig.from_pretrained(folder, local_files_only=True)
            except Exception as exc:  # its validators raise ValueError, its loaders other types
                raise ValueError(f"{where}: {exc}") from exc
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc


def _number(path: Path, name: str, value: Any, kind: type[int] | type[float]) -> Any:
    """`value` as `kind`; ValueError naming the file and field for anything else (a list, 2.9 steps)."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not integral):
        wanted = "an integer" if kind is int else "a number"
        raise ValueError(f"{path}: `{name}` must be {wanted}, got {value!r}")
    return kind(value)


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


class Cancelled(Exception):
    """Raised by denoise() when ``cancelled()`` returns True before a decoder pass."""


@dataclass
class DenoiseResult:
    tokens: list[int]  # generated ids, cut before the first EOS; trailing pad removed
    hit_eos: bool
    steps: int  # decoder passes over all blocks (commit passes not counted)
    blocks: int
    prefill_ms: float  # prompt encoder pass
    denoise_ms: float  # decoder passes, sampling and commit passes


def _model_of(
    loaded_or_model: LoadedModel | DiffusionGemmaForBlockDiffusion,
) -> DiffusionGemmaForBlockDiffusion:
    # Check the class first: the transformers model also has a `.model` attribute (its DiffusionGemmaModel).
    if isinstance(loaded_or_model, DiffusionGemmaForBlockDiffusion):
        return loaded_or_model
    model = getattr(loaded_or_model, "model", None)
    if not isinstance(model, DiffusionGemmaForBlockDiffusion):
        raise TypeError(
            f"expected LoadedModel or DiffusionGemmaForBlockDiffusion, got {type(loaded_or_model)}"
        )
    return model


def _clock(device: torch.device) -> float:
    # CUDA runs asynchronously: wait for queued kernels so the timers measure work, not launches.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cut_at_eos(ids: list[int], eos_token_ids: tuple[int, ...], pad_token_id: int) -> tuple[list[int], bool]:
    """Ids before the first EOS with trailing pad removed, and whether an EOS was found."""
    eos = set(eos_token_ids)
    hit = False
    for i, tok in enumerate(ids):
        if tok in eos:
            ids, hit = ids[:i], True
            break
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_token_id:
        end -= 1
    return ids[:end], hit


def append_block(generated: list[int], argmax: torch.Tensor, settings: SamplerSettings) -> bool:
    """Append a finished canvas (its argmax, batch row 0); True when it holds an EOS and generation stops."""
    block_ids = argmax[0].tolist()
    generated.extend(block_ids)
    return any(tok in settings.eos_token_ids for tok in block_ids)


def denoise(
    loaded_or_model: LoadedModel | DiffusionGemmaForBlockDiffusion,
    prompt_ids: torch.LongTensor,
    *,
    max_new_tokens: int,
    settings: SamplerSettings,
    generator: torch.Generator,
    cancelled: Callable[[], bool] = lambda: False,
    on_step: Callable[[int], None] | None = None,
) -> DenoiseResult:
    """Generate after ``prompt_ids`` (shape [P] or [1, P]) with block diffusion, batch 1.

    ``max_new_tokens`` rounds up to whole canvases and the output is not truncated to it (as in the
    reference). Random draws, all from ``generator`` and in the reference's order: per block one ``randint``
    canvas, then per step one ``multinomial`` and one renoise ``randint``. ``cancelled()`` is polled before
    every decoder pass (raises Cancelled); ``on_step(n)`` is called after each decoder pass with the total
    number of passes so far.
    """
    model = _model_of(loaded_or_model)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model.device
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device}, model on {device}: create it on the model's device"
        )
    input_ids = prompt_ids.to(device=device, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(
            f"prompt_ids must be a non-empty [P] or [1, P] tensor, got shape {tuple(prompt_ids.shape)}"
        )

    config = model.config
    text_config = config.get_text_config(decoder=True)
    vocab_size = int(config.text_config.vocab_size)
    canvas_length = int(config.canvas_length)
    n_blocks = math.ceil(max_new_tokens / canvas_length)
    embed_dtype = model.model.decoder.embed_tokens.weight.dtype
    encoder = model.model.encoder
    decoder = model.model.decoder
    softcap = model.final_logit_softcapping

    # Temperatures depend only on the step index: build them once, as 0-dim tensors like the reference.
    temps = {t: sampler.temperature(t, settings, device) for t in range(1, settings.max_denoising_steps + 1)}

    generated: list[int] = []
    hit_eos = False
    steps = 0
    blocks = 0
    with torch.inference_mode():
        t0 = _clock(device)
        cache = DynamicCache(config=text_config)
        prompt_len = input_ids.shape[1]
        _encode(model, encoder, input_ids, cache, start=0, attended=prompt_len)
        t1 = _clock(device)

        cur_len = prompt_len
        argmax: torch.Tensor | None = None
        for block in range(n_blocks):
            if block > 0:
                # Commit the previous block's argmax canvas into the KV cache (causal encoder pass).
                assert argmax is not None
                _encode(model, encoder, argmax, cache, start=cur_len, attended=cur_len + canvas_length)
                cur_len += canvas_length

            positions = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device)
            positions = positions.unsqueeze(0)
            canvas = sampler.random_canvas((1, canvas_length), vocab_size, generator, device)
            # All-ones mask over a dynamic cache gives {layer_type: None}: full bidirectional SDPA.
            mask_mapping = decoder.create_diffusion_decoder_attention_mask(
                config=config,
                inputs_embeds=canvas.unsqueeze(-1),
                cache=cache,
                decoder_attention_mask=torch.ones(
                    (1, cur_len + canvas_length), dtype=torch.bool, device=device
                ),
            )
            self_cond: torch.Tensor | None = None
            history = sampler.new_history(settings.stability_threshold, canvas)
            for t in range(settings.max_denoising_steps, 0, -1):
                if cancelled():
                    raise Cancelled()
                hidden = decoder(
                    decoder_input_ids=canvas,
                    cache=cache,
                    self_conditioning_logits=self_cond,
                    decoder_attention_mask=mask_mapping,
                    decoder_position_ids=positions,
                ).last_hidden_state
                logits = model.lm_head(hidden).to(torch.float32)
                logits = torch.tanh(logits / softcap) * softcap
                z = sampler.scale_logits(logits, temps[t])

                sampled = sampler.sample(z, generator)
                argmax = torch.argmax(z, dim=-1)
                token_entropy = sampler.entropy(z)
                accepted = sampler.accept_mask(token_entropy, settings.entropy_bound)
                canvas = sampler.renoise(sampled, accepted, vocab_size, generator)
                stop, history = sampler.stop_test(
                    argmax, history, token_entropy, settings.confidence_threshold
                )
                self_cond = z.to(embed_dtype)
                steps += 1
                if on_step is not None:
                    on_step(steps)
                if bool(stop.item()):  # the one host sync per step: whether to run another pass
                    break

            assert argmax is not None
            blocks += 1
            if append_block(generated, argmax, settings):
                hit_eos = True
                break
        t2 = _clock(device)

    tokens, _ = cut_at_eos(generated, settings.eos_token_ids, settings.pad_token_id)
    return DenoiseResult(
        tokens=tokens,
        hit_eos=hit_eos,
        steps=steps,
        blocks=blocks,
        prefill_ms=(t1 - t0) * 1000.0,
        denoise_ms=(t2 - t1) * 1000.0,
    )


def _encode(
    model: DiffusionGemmaForBlockDiffusion,
    encoder: torch.nn.Module,
    ids: torch.Tensor,
    cache: DynamicCache,
    *,
    start: int,
    attended: int,
) -> None:
    """Causal encoder pass over ``ids`` at positions start.., appending their K/V to ``cache`` (no logits)."""
    device = ids.device
    positions = torch.arange(start, start + ids.shape[1], dtype=torch.int32, device=device).unsqueeze(0)
    # Build the mask mapping the way generate() does (vision-aware masks with no image tokens = plain causal).
    mask_mapping = encoder.create_masks_for_generate(
        config=model.config,
        inputs_embeds=torch.empty((1, ids.shape[1], 0), dtype=model.dtype, device=device),
        attention_mask=torch.ones((1, attended), dtype=torch.bool, device=device),
        cache=cache,
        position_ids=positions,
    )
    encoder(input_ids=ids.contiguous(), attention_mask=mask_mapping, cache=cache, position_ids=positions)
