"""Fill-in-the-middle prompts: FIM sentinels if the tokenizer has them, else a chat prompt, else plain prefix.

The chat form puts ``prefix<CURSOR>suffix`` in a fenced block and prefills the model turn with the opening
fence and the cursor line's text before the cursor, so that the canvas continues exactly at the cursor
(docs/DIFFUSIONGEMMA.md section 4, option 1). User code is tokenized with special-token parsing off, so code
that happens to contain text like ``<bos>`` cannot inject control tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
CURSOR = "<CURSOR>"
FENCE = "```"

PromptMode = Literal["auto", "fim", "chat", "plain"]
# Where a FIM prompt puts the two sides of the cursor: prefix first (PSM) or suffix first (SPM). A
# checkpoint's config.json says which it was trained with ("fim_order"); PSM when it does not.
FimOrder = Literal["psm", "spm"]


def clamped_suffix_tokens(canvas_length: int) -> int:
    """How many suffix tokens the clamped canvas modes hold fixed at the end of the canvas: the layout that
    training (model/train.py) and infilling (model/infill.py) share."""
    return min(16, canvas_length // 4)


# Markers that end a turn in common chat formats (Gemma 4 first); cut there if the model writes them as text.
END_OF_TURN_TEXTS = ("<turn|>", "<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")
# Single tokens that end the middle: end of turn, a new FIM document, end of file.
END_TOKEN_TEXTS = (
    *END_OF_TURN_TEXTS,
    FIM_PREFIX,
    FIM_SUFFIX,
    FIM_MIDDLE,
    "<|fim_pad|>",
    "<|file_separator|>",
)

# LSP languageId -> the tag code fences usually carry.
FENCE_TAGS = {
    "typescriptreact": "tsx",
    "javascriptreact": "jsx",
    "shellscript": "bash",
    "objective-c": "objc",
    "objective-cpp": "objcpp",
    "plaintext": "",
}

# Private-use characters: cannot occur in a chat template, so they locate the code inside the rendered prompt.
_PREFIX_MARK = "\ue000dgemma-prefix\ue000"
_SUFFIX_MARK = "\ue000dgemma-suffix\ue000"


def _single_token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """Id of ``text`` if the tokenizer treats it as one atomic token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        return None
    if tokenizer.convert_ids_to_tokens(token_id) != text:
        return None
    return token_id if tokenizer.encode(text, add_special_tokens=False) == [token_id] else None


def has_fim_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    return all(_single_token_id(tokenizer, t) is not None for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_mode(
    tokenizer: PreTrainedTokenizerBase, mode: PromptMode = "auto"
) -> Literal["fim", "chat", "plain"]:
    """The prompt form used for ``mode``: "auto" picks FIM, then chat template, then plain continuation."""
    if mode == "fim" and not has_fim_tokens(tokenizer):
        raise ValueError("prompt mode 'fim' needs <|fim_prefix|>, <|fim_suffix|> and <|fim_middle|> tokens")
    if mode == "chat" and not _has_chat_template(tokenizer):
        raise ValueError("prompt mode 'chat' needs a tokenizer with a chat template")
    if mode != "auto":
        return mode
    if has_fim_tokens(tokenizer):
        return "fim"
    return "chat" if _has_chat_template(tokenizer) else "plain"


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, *, code: bool) -> list[int]:
    if not text:
        return []
    # A lone surrogate (a client's broken UTF-16) makes the tokenizer raise: it becomes U+FFFD.
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    # split_special_tokens: user code is data, never control tokens.
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=code))


@dataclass
class PromptParts:
    """A prompt as segments, so it can be shortened without re-tokenizing: prefix loses tokens from the left,
    suffix from the right, ``context`` (snippets of other files, just before the prefix) whole snippets from
    the front; the other segments are fixed. ``suffix_first`` lays it out head, suffix, middle, context,
    prefix, tail (SPM) instead of head, context, prefix, middle, suffix, tail."""

    mode: Literal["fim", "chat", "plain"]
    head: list[int] = field(default_factory=list)
    prefix: list[int] = field(default_factory=list)
    middle: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)
    suffix_first: bool = False
    context: list[list[int]] = field(default_factory=list)

    def ids(self) -> list[int]:
        return self.joined(self.prefix, self.suffix, self.context)

    def joined(self, prefix: list[int], suffix: list[int], context: Sequence[list[int]] = ()) -> list[int]:
        """The fixed segments around this ``prefix``, ``suffix`` and ``context``, in this prompt's order."""
        prefix = [token for snippet in context for token in snippet] + prefix
        first, second = (suffix, prefix) if self.suffix_first else (prefix, suffix)
        return [*self.head, *first, *self.middle, *second, *self.tail]

    def truncated(self, max_tokens: int | None) -> list[int]:
        """At most ``max_tokens`` ids. The suffix keeps the tokens nearest the cursor, up to a quarter of
        the room (more when the prefix is short); the prefix keeps its newest tokens in the rest. A suffix
        that could take the whole room would push out the code just before the cursor, which matters most.
        The context gets only what the document's code leaves: its last snippets that fit. As a last
        resort (the fixed segments alone are too long) keep only the last ``max_tokens`` ids."""
        ids = self.ids()
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
        if max_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_tokens}")
        room = max(0, max_tokens - len(self.head) - len(self.middle) - len(self.tail))
        keep_suffix = min(len(self.suffix), max(room // 4, room - len(self.prefix)))
        keep_prefix = min(len(self.prefix), room - keep_suffix)
        prefix = self.prefix[len(self.prefix) - keep_prefix :]
        context: list[list[int]] = []
        left = room - keep_suffix - keep_prefix
        for snippet in reversed(self.context):
            if len(snippet) > left:
                break
            context.insert(0, snippet)
            left -= len(snippet)
        return self.joined(prefix, self.suffix[:keep_suffix], context)[-max_tokens:]


def _fence_tag(language: str | None) -> str:
    if not language:
        return ""
    return FENCE_TAGS.get(language, language)


def _instruction(language: str | None) -> str:
    what = f"the {language} code" if language and language != "plaintext" else "the code"
    return (
        f"Fill in the missing code at {CURSOR} in {what} below. Reply with one code block that starts "
        f"with the text of the {CURSOR} line before {CURSOR}, then continues with only the code that "
        f"belongs at {CURSOR}, and ends where the code after {CURSOR} begins."
    )


def _render_chat(tokenizer: PreTrainedTokenizerBase, content: str) -> str:
    messages = [{"role": "user", "content": content}]
    # enable_thinking is a template variable (Gemma 4, Qwen); templates that do not use it ignore it.
    rendered: Any = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    if not isinstance(rendered, str):
        raise ValueError("the tokenizer's chat template did not render to text")
    return rendered


def build_prompt_parts(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    suffix: str,
    *,
    language: str | None = None,
    mode: PromptMode = "auto",
    fim_order: FimOrder = "psm",
    context: Sequence[str] = (),
) -> PromptParts:
    """The prompt for filling between ``prefix`` and ``suffix``, as truncatable segments; ``context`` is
    text put in front of the prefix (snippets of other files, commented out), snippet by snippet."""
    parts = _prompt_parts(tokenizer, prefix, suffix, language=language, mode=mode, fim_order=fim_order)
    # The chat form whose template rewrote the markers is one fixed block (no middle segment): no room.
    if parts.middle or parts.mode == "plain":
        parts.context = [_encode(tokenizer, snippet, code=True) for snippet in context if snippet]
    return parts


def _prompt_parts(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    suffix: str,
    *,
    language: str | None,
    mode: PromptMode,
    fim_order: FimOrder,
) -> PromptParts:
    resolved = resolve_mode(tokenizer, mode)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if resolved == "fim":
        # PSM: [bos] <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>
        # SPM: [bos] <|fim_suffix|> suffix <|fim_prefix|> prefix <|fim_middle|>
        fim_prefix, fim_suffix, fim_middle = (
            _single_token_id(tokenizer, t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
        )
        assert fim_prefix is not None and fim_suffix is not None and fim_middle is not None  # resolve_mode
        spm = fim_order == "spm"
        return PromptParts(
            mode="fim",
            head=[*bos, fim_suffix if spm else fim_prefix],
            prefix=_encode(tokenizer, prefix, code=True),
            middle=[fim_prefix if spm else fim_suffix],
            suffix=_encode(tokenizer, suffix, code=True),
            tail=[fim_middle],
            suffix_first=spm,
        )
    if resolved == "plain":
        return PromptParts(mode="plain", head=bos, prefix=_encode(tokenizer, prefix, code=True))

    tag = _fence_tag(language)
    cursor_line = prefix.rsplit("\n", 1)[-1]
    # The model turn starts inside the code block, at the cursor: the canvas continues the cursor line.
    prefill = f"{FENCE}{tag}\n{cursor_line}"
    content_head = f"{_instruction(language)}\n\n{FENCE}{tag}\n"
    content = f"{content_head}{_PREFIX_MARK}{CURSOR}{_SUFFIX_MARK}\n{FENCE}"
    rendered = _render_chat(tokenizer, content)
    if rendered.count(_PREFIX_MARK) == 1 and rendered.count(_SUFFIX_MARK) == 1:
        before, rest = rendered.split(_PREFIX_MARK)
        between, after = rest.split(_SUFFIX_MARK)
        return PromptParts(
            mode="chat",
            head=_encode(tokenizer, before, code=False),
            prefix=_encode(tokenizer, prefix, code=True),
            middle=_encode(tokenizer, between, code=False),
            suffix=_encode(tokenizer, suffix, code=True),
            tail=_encode(tokenizer, after, code=False) + _encode(tokenizer, prefill, code=True),
        )
    # The template rewrote the markers (escaping, say): render the real code as one fixed block instead.
    rendered = _render_chat(tokenizer, f"{content_head}{prefix}{CURSOR}{suffix}\n{FENCE}")
    return PromptParts(
        mode="chat", head=_encode(tokenizer, rendered, code=False) + _encode(tokenizer, prefill, code=True)
    )


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    suffix: str,
    *,
    language: str | None = None,
    mode: PromptMode = "auto",
    fim_order: FimOrder = "psm",
) -> list[int]:
    """Prompt ids: FIM if the tokenizer has the sentinels, else chat template, else plain prefix."""
    parts = build_prompt_parts(tokenizer, prefix, suffix, language=language, mode=mode, fim_order=fim_order)
    return parts.ids()


def stop_strings(tokenizer: PreTrainedTokenizerBase, mode: PromptMode = "auto") -> list[str]:
    """Text markers that end the middle. Only the chat form has any: the closing fence (with the newline that
    opens its line, listed first) and end-of-turn text; FIM and plain output run to EOS."""
    if resolve_mode(tokenizer, mode) != "chat":
        return []
    markers = [f"\n{FENCE}", FENCE, *END_OF_TURN_TEXTS]
    eos = tokenizer.eos_token
    if isinstance(eos, str) and eos and eos not in markers:
        markers.append(eos)
    return markers


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of single tokens that end the middle in any prompt form (EOS, end of turn, FIM sentinels)."""
    ids = {i for i in (_single_token_id(tokenizer, t) for t in END_TOKEN_TEXTS) if i is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
