"""Write a tiny random-weight DiffusionGemma checkpoint (config, weights, tokenizer, generation config).

Used by the unit tests and the end-to-end tests; also runnable: ``python -m tests.tiny_checkpoint OUTDIR``.
Deterministic for a given seed and Python installation (the tokenizer is trained on standard-library sources).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from dgemma_lsp.model.config import NAMED_CONFIGS, TINY_VISION

VOCAB_SIZE = 1024
PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
TURN_TOKENS = ["<|turn>", "<turn|>"]

# Gemma-4-like turn markers, kept tiny; enough to exercise the chat-template prompt path.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] | trim }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

# Standard-library sources used as the BPE training corpus (read from disk, so nothing is downloaded).
CORPUS_FILES = ["textwrap.py", "string.py", "bisect.py", "heapq.py", "functools.py", "shlex.py", "fnmatch.py"]
FALLBACK_CORPUS = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"

RELEASED_GENERATION_CONFIG = {
    "max_denoising_steps": 48,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "max_new_tokens": 256,
    "bos_token_id": 2,
    "eos_token_id": [1],
    "pad_token_id": 0,
}


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (stdlib / name).read_text(encoding="utf-8") for name in CORPUS_FILES if (stdlib / name).is_file()
    ]
    return texts or [FALLBACK_CORPUS]


def build_tokenizer(*, fim: bool = True, chat_template: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE with exactly VOCAB_SIZE ids; <pad>=0, <eos>=1, <bos>=2, then FIM / turn markers."""
    extra = (FIM_TOKENS if fim else []) + (TURN_TOKENS if chat_template else [])
    specials = [PAD, EOS, BOS, *extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    # A small corpus may stop short of the target: pad with unused specials so every model id decodes.
    filler = [f"<unused{i}>" for i in range(VOCAB_SIZE - tok.get_vocab_size())]
    if filler:
        tok.add_special_tokens(filler)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, extra_special_tokens=extra
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    assert len(fast) == VOCAB_SIZE, len(fast)
    assert (fast.pad_token_id, fast.eos_token_id, fast.bos_token_id) == (0, 1, 2)
    return fast


def tiny_config(canvas_length: int = 32) -> DiffusionGemmaConfig:
    """The CPU toy config of docs/DIFFUSIONGEMMA.md section 7 (5 sliding + 1 full), tiny vision tower."""
    text_config = {
        **NAMED_CONFIGS["tiny"]["text_config"],
        "vocab_size": VOCAB_SIZE,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    return DiffusionGemmaConfig(
        text_config=text_config, vision_config=dict(TINY_VISION), canvas_length=canvas_length
    )


def write_tiny_checkpoint(
    folder: Path, *, seed: int = 0, canvas_length: int = 32, fim: bool = True, chat_template: bool = False
) -> Path:
    """Write the checkpoint into ``folder`` (created if needed) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(fim=fim, chat_template=chat_template).save_pretrained(folder)

    # Seed a private RNG scope so writing a checkpoint does not disturb the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length)).eval()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep test and e2e logs free of tqdm bars
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    (folder / "generation_config.json").write_text(json.dumps(RELEASED_GENERATION_CONFIG, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.tiny_checkpoint OUTDIR", file=sys.stderr)
        return 2
    print(write_tiny_checkpoint(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
