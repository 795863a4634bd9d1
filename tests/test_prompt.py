"""Prompt construction (dgemma_lsp.model.prompt) on the tiny byte-level BPE tokenizers."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from dgemma_lsp.model.infill import cut_at_stop
from dgemma_lsp.model.prompt import (
    CURSOR,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    build_prompt,
    build_prompt_parts,
    has_fim_tokens,
    stop_strings,
    stop_token_ids,
)
from tests.tiny_checkpoint import build_tokenizer

PREFIX = "import os\n\ndef area(w, h):\n    return "
SUFFIX = "\n\nprint(area(2, 3))\n"


@pytest.fixture(scope="module")
def fim_tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(fim=True)


@pytest.fixture(scope="module")
def chat_tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(fim=False, chat_template=True)


@pytest.fixture(scope="module")
def plain_tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(fim=False, chat_template=False)


def enc(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False, split_special_tokens=True)


def test_has_fim_tokens(fim_tok, chat_tok, plain_tok) -> None:
    assert has_fim_tokens(fim_tok)
    assert not has_fim_tokens(chat_tok)
    assert not has_fim_tokens(plain_tok)


def test_fim_layout_exact_ids(fim_tok) -> None:
    fp, fs, fm = (fim_tok.convert_tokens_to_ids(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    assert (fp, fs, fm) == (3, 4, 5)
    ids = build_prompt(fim_tok, PREFIX, SUFFIX)
    assert ids == [2, fp, *enc(fim_tok, PREFIX), fs, *enc(fim_tok, SUFFIX), fm]
    assert fim_tok.decode(ids) == f"<bos>{FIM_PREFIX}{PREFIX}{FIM_SUFFIX}{SUFFIX}{FIM_MIDDLE}"


def test_fim_suffix_first(fim_tok) -> None:
    fp, fs, fm = (fim_tok.convert_tokens_to_ids(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    ids = build_prompt(fim_tok, PREFIX, SUFFIX, fim_order="spm")
    assert ids == [2, fs, *enc(fim_tok, SUFFIX), fp, *enc(fim_tok, PREFIX), fm]


def test_fim_empty_suffix(fim_tok) -> None:
    ids = build_prompt(fim_tok, "x = ", "")
    assert ids[-2:] == [4, 5]


def test_code_cannot_inject_special_tokens(fim_tok) -> None:
    ids = build_prompt(fim_tok, f"s = '{FIM_MIDDLE}<bos>'", "")
    assert ids.count(5) == 1  # only the real <|fim_middle|> at the end
    assert ids.count(2) == 1  # only the leading <bos>


@pytest.mark.parametrize("mode", ["fim", "chat"])
def test_a_lone_surrogate_is_encoded_as_a_replacement_character(mode, fim_tok, chat_tok) -> None:
    # A client's broken UTF-16 ("\\ud800" in its JSON) reaches the prompt; the tokenizer raised on it.
    tokenizer = fim_tok if mode == "fim" else chat_tok
    ids = build_prompt(tokenizer, "s = '\ud800", "\udfff'\n", mode=mode)
    assert ids == build_prompt(tokenizer, "s = '\ufffd", "\ufffd'\n", mode=mode)


def test_chat_fallback(chat_tok) -> None:
    ids = build_prompt(chat_tok, PREFIX, SUFFIX, language="python")
    text = chat_tok.decode(ids)
    assert text.startswith("<bos><|turn>user\n")
    assert ids[0] == chat_tok.bos_token_id
    assert f"Fill in the missing code at {CURSOR}" in text
    assert f"```python\n{PREFIX}{CURSOR}{SUFFIX}\n```<turn|>\n" in text
    # The model turn is prefilled with the opening fence and the cursor line up to the cursor.
    assert text.endswith("<|turn>model\n```python\n    return ")
    assert ids[-len(enc(chat_tok, "```python\n    return ")) :] == enc(chat_tok, "```python\n    return ")


def test_chat_without_language(chat_tok) -> None:
    text = chat_tok.decode(build_prompt(chat_tok, "x = ", ""))
    assert text.endswith("<|turn>model\n```\nx = ")


def test_chat_language_fence_tag(chat_tok) -> None:
    text = chat_tok.decode(build_prompt(chat_tok, "const a = ", ";", language="typescriptreact"))
    assert text.endswith("```tsx\nconst a = ")


def test_plain_fallback(plain_tok) -> None:
    assert build_prompt(plain_tok, PREFIX, SUFFIX) == [2, *enc(plain_tok, PREFIX)]


def test_forced_modes(fim_tok, plain_tok) -> None:
    assert build_prompt(fim_tok, PREFIX, SUFFIX, mode="plain") == [2, *enc(fim_tok, PREFIX)]
    with pytest.raises(ValueError, match="fim"):
        build_prompt(plain_tok, PREFIX, SUFFIX, mode="fim")
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(plain_tok, PREFIX, SUFFIX, mode="chat")


@pytest.mark.parametrize("kind", ["fim", "spm", "chat"])
def test_truncation_drops_oldest_prefix_tokens(kind, fim_tok, chat_tok) -> None:
    tok = chat_tok if kind == "chat" else fim_tok
    long_prefix = "".join(f"value_{i} = {i}\n" for i in range(200)) + PREFIX
    order = "spm" if kind == "spm" else "psm"
    parts = build_prompt_parts(tok, long_prefix, SUFFIX, language="python", fim_order=order)
    full = parts.ids()
    limit = len(full) - 50
    cut = parts.truncated(limit)
    assert len(cut) == limit
    assert cut[: len(parts.head)] == parts.head  # bos, sentinels, instruction kept
    assert cut[-len(parts.tail) :] == parts.tail  # prompt end (and chat prefill) kept
    assert cut == parts.joined(parts.prefix[50:], parts.suffix)  # the short suffix is whole
    assert parts.truncated(None) == full
    assert parts.truncated(len(full) + 10) == full


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_truncation_keeps_the_prefix_near_the_cursor(order, fim_tok) -> None:
    """A long suffix gets a quarter of the room; the prefix, which matters more, keeps the rest."""
    prefix = "".join(f"before_{i} = {i}\n" for i in range(100))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(100))
    parts = build_prompt_parts(fim_tok, prefix, suffix, fim_order=order)
    fixed = len(parts.head) + len(parts.middle) + len(parts.tail)
    cut = parts.truncated(fixed + 100)
    assert cut == parts.joined(parts.prefix[-75:], parts.suffix[:25])


def test_truncation_gives_a_short_prefix_room_to_the_suffix(fim_tok) -> None:
    parts = build_prompt_parts(fim_tok, "a = 1\n", "b = 2\nc = 3\n" * 20)
    fixed = len(parts.head) + len(parts.middle) + len(parts.tail)
    cut = parts.truncated(fixed + len(parts.prefix) + 30)
    assert cut == [*parts.head, *parts.prefix, *parts.middle, *parts.suffix[:30], *parts.tail]


def test_stop_strings(fim_tok, chat_tok, plain_tok) -> None:
    assert stop_strings(fim_tok) == []
    assert stop_strings(plain_tok) == []
    markers = stop_strings(chat_tok)
    assert markers[:2] == ["\n```", "```"]
    assert "<turn|>" in markers


def test_stop_token_ids(fim_tok, chat_tok) -> None:
    assert stop_token_ids(fim_tok) == {1, 3, 4, 5}  # eos and the FIM sentinels
    assert chat_tok.convert_tokens_to_ids("<turn|>") in stop_token_ids(chat_tok)


def test_cut_at_stop() -> None:
    markers = ["\n```", "```", "<turn|>"]
    # Cursor mid-line: the newline before the closing fence belongs to the fence.
    assert cut_at_stop("w * h\n```\nmore", markers, prefix=PREFIX, suffix=SUFFIX) == "w * h"
    assert cut_at_stop("w * h```", markers, prefix=PREFIX, suffix=SUFFIX) == "w * h"
    assert cut_at_stop("w * h<turn|>x", markers, prefix=PREFIX, suffix=SUFFIX) == "w * h"
    assert cut_at_stop("no marker", markers, prefix=PREFIX, suffix=SUFFIX) == "no marker"
    # Cursor at a line start before existing code: whole inserted lines keep their newline.
    assert cut_at_stop("    x = 1\n```", markers, prefix="def f():\n", suffix="    y = 2\n") == "    x = 1\n"
    assert cut_at_stop("anything", [], prefix="", suffix="") == "anything"


SNIPPETS = [
    "# Compare this snippet from a.py:\n# def area(w, h):\n",
    "# Compare this snippet from b.py:\n# x = 1\n",
]


@pytest.mark.parametrize("kind", ["psm", "spm", "chat", "plain"])
def test_snippets_of_other_files_go_just_before_the_prefix(kind, fim_tok, chat_tok, plain_tok) -> None:
    tok = {"chat": chat_tok, "plain": plain_tok}.get(kind, fim_tok)
    order = "spm" if kind == "spm" else "psm"
    ids = build_prompt_parts(tok, PREFIX, SUFFIX, language="python", fim_order=order, context=SNIPPETS).ids()
    text = tok.decode(ids)
    assert f"{SNIPPETS[0]}{SNIPPETS[1]}{PREFIX}" in text
    if kind == "chat":  # inside the code block, after the instruction
        assert f"```python\n{SNIPPETS[0]}" in text
    without = build_prompt_parts(tok, PREFIX, SUFFIX, language="python", fim_order=order).ids()
    assert len(ids) == len(without) + sum(len(enc(tok, s)) for s in SNIPPETS)


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_snippets_get_only_the_room_the_documents_code_leaves(order, fim_tok) -> None:
    parts = build_prompt_parts(fim_tok, PREFIX, SUFFIX, fim_order=order, context=SNIPPETS)
    first, second = (enc(fim_tok, s) for s in SNIPPETS)
    full = len(parts.ids())
    assert parts.truncated(full) == parts.ids()
    # One token short: the first (least similar) snippet goes whole, the code stays whole.
    assert parts.truncated(full - 1) == parts.joined(parts.prefix, parts.suffix, [second])
    assert parts.truncated(full - len(first)) == parts.joined(parts.prefix, parts.suffix, [second])
    assert parts.truncated(full - len(first) - 1) == parts.joined(parts.prefix, parts.suffix)
    # Shorter still: the code is cut as it is without snippets.
    plain = build_prompt_parts(fim_tok, PREFIX, SUFFIX, fim_order=order)
    code = full - len(first) - len(second)
    assert parts.truncated(code - 5) == plain.truncated(code - 5) != plain.ids()
