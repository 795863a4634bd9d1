"""Infiller: prompt -> block-diffusion denoise -> decoded middle text, cut at the prompt form's stop markers.

Suffix-repeat and scope trimming are the server's post-processing, not done here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checkpoint import LoadedModel
from .denoise import denoise
from .prompt import FENCE, PromptMode, build_prompt_parts, stop_strings, stop_token_ids


@dataclass
class Fill:
    text: str
    tokens: int  # generated tokens before EOS / stop token
    steps: int
    blocks: int
    hit_eos: bool
    prefill_ms: float
    denoise_ms: float
    prompt_tokens: int
    seed: int = 0  # the seed actually used, so a fill can be reproduced


def cut_at_stop(text: str, markers: list[str], *, prefix: str, suffix: str) -> str:
    """Text before the earliest marker.

    A closing fence starts its own line, so the newline before it normally goes with it; it is kept when
    the cursor sits at the start of a line in front of existing code, where the middle is whole lines.
    """
    best = len(text)
    best_marker = ""
    for marker in markers:
        at = text.find(marker)
        if at != -1 and at < best:
            best, best_marker = at, marker
    cut = text[:best]
    if best_marker == f"\n{FENCE}":
        cursor_line = prefix.rsplit("\n", 1)[-1]
        suffix_line = suffix.split("\n", 1)[0]
        if not cursor_line.strip() and suffix_line.strip():
            cut += "\n"
    return cut


class Infiller:
    def __init__(self, loaded: LoadedModel, *, prompt_mode: PromptMode = "auto") -> None:
        self.loaded = loaded
        self.prompt_mode = prompt_mode
        tokenizer = loaded.tokenizer
        self._stop_strings = stop_strings(tokenizer, prompt_mode)
        self._stop_ids = stop_token_ids(tokenizer)
        # Ids the tokenizer cannot decode (model vocab larger than the tokenizer's) are dropped before decode.
        self._decodable = len(tokenizer)

    def fill(
        self,
        prefix: str,
        suffix: str,
        *,
        max_new_tokens: int,
        seed: int | None = None,
        language: str | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        max_prompt_tokens: int | None = None,
    ) -> Fill:
        """Fill the gap between ``prefix`` and ``suffix``; raises denoise.Cancelled if ``cancelled()``."""
        loaded = self.loaded
        parts = build_prompt_parts(loaded.tokenizer, prefix, suffix, language=language, mode=self.prompt_mode)
        prompt = parts.truncated(max_prompt_tokens)
        if seed is None:
            seed = secrets.randbits(63)
        generator = torch.Generator(device=loaded.device).manual_seed(seed)
        result = denoise(
            loaded,
            torch.tensor(prompt, dtype=torch.long),
            max_new_tokens=max_new_tokens,
            settings=loaded.settings,
            generator=generator,
            cancelled=cancelled,
        )
        tokens = result.tokens
        for i, tok in enumerate(tokens):
            if tok in self._stop_ids:
                tokens = tokens[:i]
                break
        decodable = [t for t in tokens if 0 <= t < self._decodable]
        text = loaded.tokenizer.decode(
            decodable, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        text = cut_at_stop(text, self._stop_strings, prefix=prefix, suffix=suffix)
        return Fill(
            text=text,
            tokens=len(tokens),
            steps=result.steps,
            blocks=result.blocks,
            hit_eos=result.hit_eos or len(tokens) < len(result.tokens),
            prefill_ms=result.prefill_ms,
            denoise_ms=result.denoise_ms,
            prompt_tokens=len(prompt),
            seed=seed,
        )
