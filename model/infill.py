"""Infiller: prompt -> block-diffusion denoise -> decoded middle text, cut at the prompt form's stop markers.

Suffix-repeat and scope trimming are the server's post-processing, not done here.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import tree_sitter_language_pack

from .checkpoint import LoadedModel
from .denoise import DenoiseResult, denoise
from .dgemma import DGemma
from .fast import CacheSlots, Layout, denoise_fast
from .prompt import (
    FENCE,
    PromptMode,
    _encode,
    build_prompt_parts,
    clamped_suffix_tokens,
    stop_strings,
    stop_token_ids,
)

log = logging.getLogger(__name__)

# "plain": the suffix is only in the prompt; "clamped": its first tokens are also held fixed in the canvas
# right after the middle; "lengths": clamped, with several middle lengths denoised as one batch.
CanvasMode = Literal["plain", "clamped", "lengths"]


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
    reused_tokens: int = 0  # prompt tokens whose encoding the fast backend kept from the last request


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
    """Fills middles with the loaded backend. The fast backend keeps one KV cache per document ``key``
    (re-encoding only what changed) and can put the suffix into the canvas (``canvas_mode``)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        prompt_mode: PromptMode = "auto",
        canvas_mode: CanvasMode = "plain",
        documents: int = 4,
    ) -> None:
        self.loaded = loaded
        self.prompt_mode = prompt_mode
        tokenizer = loaded.tokenizer
        self._stop_strings = stop_strings(tokenizer, prompt_mode)
        self._stop_ids = stop_token_ids(tokenizer)
        # Ids the tokenizer cannot decode (model vocab larger than the tokenizer's) are dropped before decode.
        self._decodable = len(tokenizer)
        self._slots = CacheSlots(loaded.model, documents) if isinstance(loaded.model, DGemma) else None
        if canvas_mode != "plain" and self._slots is None:
            log.warning("canvas mode %r needs the fast backend; using plain canvases", canvas_mode)
            canvas_mode = "plain"
        self.canvas_mode = canvas_mode
        self._parsers: dict[str, Any] = {}

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
        key: str = "",
        context: Sequence[str] = (),
    ) -> Fill:
        """Fill the gap between ``prefix`` and ``suffix``; raises denoise.Cancelled if ``cancelled()``.

        ``key`` names the document (its URI), so the fast backend reuses that document's encoded prefix.
        ``context``: snippets of other files for the prompt, in the room the document's code leaves.
        """
        loaded = self.loaded
        parts = build_prompt_parts(
            loaded.tokenizer,
            prefix,
            suffix,
            language=language,
            mode=self.prompt_mode,
            fim_order=loaded.settings.fim_order,
            context=context,
        )
        if loaded.max_positions is not None:  # a small model: keep the prompt and one canvas in range
            fits = max(1, loaded.max_positions - loaded.canvas_length)
            max_prompt_tokens = min(max_prompt_tokens or fits, fits)
        prompt = parts.truncated(max_prompt_tokens)
        if seed is None:
            seed = secrets.randbits(63)
        generator = torch.Generator(device=loaded.device).manual_seed(seed)
        args: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, settings=loaded.settings, generator=generator, cancelled=cancelled
        )
        if self._slots is None:
            result: DenoiseResult = denoise(loaded, torch.tensor(prompt, dtype=torch.long), **args)
            middles = [result.tokens]
        else:
            layout = self._layout(parts.suffix, suffix, max_new_tokens)
            assert isinstance(loaded.model, DGemma)
            fast = denoise_fast(
                loaded.model, torch.tensor(prompt), cache=self._slots.get(key), layout=layout, **args
            )
            result, middles = fast, [c.tokens for c in fast.candidates] or [fast.tokens]
        texts = [self._text(tokens, prefix, suffix) for tokens in middles]
        text, tokens = texts[0]
        if len(texts) > 1:  # candidates come best-scored first: take the first whose filled file parses
            text, tokens = next(
                (t for t in texts if self._parses(language, prefix + t[0] + suffix)), texts[0]
            )
        return Fill(
            text=text,
            tokens=tokens,
            steps=result.steps,
            blocks=result.blocks,
            hit_eos=result.hit_eos or tokens < len(result.tokens),
            prefill_ms=result.prefill_ms,
            denoise_ms=result.denoise_ms,
            prompt_tokens=len(prompt),
            seed=seed,
            reused_tokens=getattr(result, "reused_tokens", 0),
        )

    def forget(self, key: str) -> None:
        """Drop a closed document's KV cache."""
        if self._slots is not None:
            self._slots.drop(key)

    def _layout(self, suffix_ids: list[int], suffix: str, max_new_tokens: int) -> Layout | None:
        if self.canvas_mode == "plain":
            return None
        # The plain prompt form leaves the suffix out of the prompt: tokenize it for the canvas alone.
        suffix_ids = suffix_ids or _encode(self.loaded.tokenizer, suffix, code=True)
        clamped = tuple(suffix_ids[: clamped_suffix_tokens(self.loaded.canvas_length)])
        middle = max(1, min(max_new_tokens, self.loaded.canvas_length - len(clamped)))
        if self.canvas_mode == "clamped":
            return Layout((middle,), clamped)
        return Layout(tuple(sorted({max(1, middle // 4), max(1, middle // 2), middle})), clamped)

    def _text(self, tokens: list[int], prefix: str, suffix: str) -> tuple[str, int]:
        """The middle's text, cut at stop tokens and the prompt form's stop markers; and its token count."""
        for i, tok in enumerate(tokens):
            if tok in self._stop_ids:
                tokens = tokens[:i]
                break
        decodable = [t for t in tokens if 0 <= t < self._decodable]
        text = self.loaded.tokenizer.decode(
            decodable, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return cut_at_stop(text, self._stop_strings, prefix=prefix, suffix=suffix), len(tokens)

    def _parses(self, language: str | None, text: str) -> bool:
        """Whether tree-sitter parses ``text`` without errors (True when there is no grammar to ask)."""
        if not language:
            return True
        if language not in self._parsers:
            try:
                self._parsers[language] = tree_sitter_language_pack.get_parser(language)  # type: ignore[arg-type]
            except Exception:
                self._parsers[language] = None
        parser = self._parsers[language]
        return parser is None or not parser.parse(text.encode("utf-8")).root_node.has_error
