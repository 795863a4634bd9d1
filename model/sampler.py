"""Pure tensor pieces of the DiffusionGemma entropy-bound sampler.

Each function mirrors one piece of transformers' ``generation_diffusion_gemma.py`` op for op (same dtypes,
same reductions, same random calls) so that the denoiser reproduces ``generate()`` token for token under the
same seed.
All functions work on the last dimension and keep any leading batch dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .denoise import SamplerSettings


def temperature(
    step_remaining: int, settings: SamplerSettings, device: torch.device | None = None
) -> torch.Tensor:
    """Linear schedule T = t_min + (t_max - t_min) * t / N, with t the number of steps remaining (N .. 1).

    Returned as a 0-dim float32 tensor: the reference computes it from an int32 step tensor, and a
    Python-float temperature can differ from it in the last bit.
    """
    step = torch.tensor(step_remaining, dtype=torch.int32, device=device)
    return settings.t_min + ((settings.t_max - settings.t_min) * (step / settings.max_denoising_steps))


def scale_logits(logits: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """Temperature-scaled logits z; the sample, entropy, stop test and self-conditioning all use z."""
    return logits / temp


def entropy(z: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(z) per position, computed exactly as ``torch.distributions.Categorical``."""
    log_p = z - z.logsumexp(dim=-1, keepdim=True)
    p = torch.softmax(log_p, dim=-1)
    log_p = torch.clamp(log_p, min=torch.finfo(log_p.dtype).min)
    return -(log_p * p).sum(-1)


def sample(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One categorical draw per position from softmax(z) (one ``multinomial`` call, like the reference)."""
    probs = torch.softmax(z, dim=-1, dtype=torch.float32)
    flat = torch.multinomial(probs.view(-1, probs.shape[-1]), num_samples=1, generator=generator)
    return flat.view(probs.shape[:-1])


def accept_mask(token_entropy: torch.Tensor, entropy_bound: float) -> torch.Tensor:
    """Entropy-bound acceptance: the lowest-entropy positions whose entropy sum minus the largest is <= bound.

    The first sorted position always passes (0 <= bound), so at least one position is accepted per step.
    """
    sorted_h, order = torch.sort(token_entropy, dim=-1, descending=False)
    cumulative = torch.cumsum(sorted_h, dim=-1)
    # In ascending order sorted_h is the running maximum, so this is "sum - max <= bound".
    sorted_accept = cumulative - sorted_h <= entropy_bound
    if torch.compiler.is_compiling():
        # The same mask through the inverse permutation: inductor (torch 2.13, CPU) miscompiles this
        # scatter inside a whole compiled step with a batch of canvases.
        return sorted_accept.gather(-1, order.argsort(dim=-1))
    return torch.scatter(input=torch.zeros_like(sorted_accept), dim=-1, index=order, src=sorted_accept)


def random_canvas(
    shape: tuple[int, ...], vocab_size: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform ids over the whole vocabulary: there is no mask token in uniform-state diffusion."""
    return torch.randint(low=0, high=vocab_size, size=shape, generator=generator, device=device)


def renoise(
    sampled: torch.Tensor, accepted: torch.Tensor, vocab_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Keep the accepted samples; every other position (even one accepted earlier) gets a fresh uniform id."""
    fresh = random_canvas(tuple(sampled.shape), vocab_size, generator, sampled.device)
    return torch.where(accepted, sampled, fresh)


def new_history(stability_threshold: int, argmax: torch.Tensor) -> torch.Tensor:
    """Argmax history for the stability test; -1 never equals an id, so a block takes at least 2 steps."""
    return torch.full((stability_threshold, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device)


def stop_test(
    argmax: torch.Tensor, history: torch.Tensor, token_entropy: torch.Tensor, confidence_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable (argmax equal to each of the last ``len(history)`` argmaxes) and confident (mean entropy below
    the threshold).

    Returns (stop flag per leading batch index, updated history). An empty history means "always stable".
    """
    if history.shape[0] == 0:
        stable = torch.ones(argmax.shape[:-1], dtype=torch.bool, device=argmax.device)
    else:
        stable = (history == argmax.unsqueeze(0)).all(dim=-1).all(dim=0)
        history = torch.cat([history[1:], argmax.unsqueeze(0)], dim=0)
    confident = token_entropy.mean(dim=-1) < confidence_threshold
    return stable & confident, history
