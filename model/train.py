"""Train the bundled small DiffusionGemma code model, from a clean checkout, offline.

    python -m dgemma_lsp.model.train --out build/bundled --minutes 30            # CPU
    python -m dgemma_lsp.model.train --out build/bundled --minutes 8 --device cuda

Steps: corpus (the Python standard library plus installed packages whose licence allows redistributing
derived weights; deduplicated; whole files held out) -> byte-level BPE tokenizer with FIM sentinels ->
a small DiffusionGemma (transformers' own class, so every DiffusionGemma loader reads it) trained with the
DiffusionGemma objective -> a Hugging Face folder (bf16 safetensors, tokenizer, generation config,
corpus manifest). Training checkpoints are safetensors + JSON; --resume carries on from the last one,
its learning-rate schedule where it stopped.

Objective (docs/DIFFUSIONGEMMA.md §4): the canvas follows a causal prompt; each canvas position is
replaced by a uniform random token with probability t ~ U(0.001, 1); cross-entropy on the canvas;
self-conditioning on half the examples (a first pass without it, its logits detached and fed back);
plus the encoder's autoregressive loss on the prompt. Examples are plain continuations and FIM
(suffix, then prefix in the prompt with sentinels; the middle, then EOS, on the canvas), a quarter of
the FIM ones with the suffix clamped into the canvas after the middle (clean, not scored).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import importlib.metadata as metadata
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dgemma_lsp.model.config import TINY_VISION
from dgemma_lsp.model.prompt import clamped_suffix_tokens

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
# Licences that allow redistributing weights derived from the code (whole words, any case), and words that
# rule a term out: copyleft, or no licence to redistribute at all.
PERMISSIVE = re.compile(
    r"\b(MIT|0?BSD|BSL-1\.0|Boost|Apache|PSF|Python Software Foundation|CNRI-Python|ISC|Unlicense|CC0|Zlib"
    r"|HPND)\b",
    re.IGNORECASE,
)
REFUSED = re.compile(
    r"GPL|General Public|MPL|Mozilla|EPL|Eclipse|CDDL|EUPL|OSL|CC-BY-SA|Affero|Proprietary|Commercial"
    r"|LicenseRef|rights reserved|not permitted",
    re.IGNORECASE,
)
# Never train on evaluation data, or anything derived from it.
BANNED_PATH_PARTS = ("humaneval", "human_eval", "mbpp", "santacoder", "apps_eval", "codecontests")
MAX_FILE_BYTES = 200_000
MAX_PACKAGE_BYTES = 3_000_000  # so one big package does not dominate
MAX_STDLIB_BYTES = 12_000_000  # the standard library is the Python every user writes against


@dataclass(frozen=True)
class Size:
    """Model shape. `small` is the bundled model (sized to train on a CPU in hours and to fill a line in
    well under 150 ms on two cores); `medium` the largest measured to fill a line within 150 ms; `toy` is
    for smoke tests."""

    vocab: int = 4096
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    experts: int = 4
    expert_width: int = 128
    mlp_width: int = 256
    window: int = 64
    canvas: int = 32
    prompt: int = 192
    positions: int = 256  # max_position_embeddings: the prompt is cut to fit one canvas after it


SIZES = {
    "small": Size(),
    # 5.7 M parameters: 17 ms a denoising step on two CPU cores (the small one: 11 ms), so a line in the
    # bundled sampler's 4-7 steps still fits 150 ms. Too slow to train on a CPU; for a GPU run.
    "medium": Size(hidden=192, layers=6, heads=6, expert_width=192, mlp_width=384),
    "toy": Size(
        vocab=512,
        hidden=32,
        layers=2,
        heads=2,
        head_dim=16,
        experts=2,
        expert_width=32,
        mlp_width=64,
        window=16,
        canvas=16,
        prompt=64,
        positions=96,
    ),  # fmt: skip
}


# --- corpus ---------------------------------------------------------------------------------------------


def permissive(licence: str) -> bool:
    """A licence name or SPDX expression that lets us redistribute derived weights: AND needs both sides
    permissive, OR either (so "MPL-2.0 AND MIT" is refused, "MIT OR GPL-2.0" taken); a name is permissive
    when it names a permissive licence as a whole word and nothing refused ("Unlicensed", "redistribution
    not permitted" are not)."""
    if len(licence) >= 200:  # a licence's full text, not a name
        return False
    # The one licence name with "and" in it (a classifier's): not two terms.
    licence = re.sub(r"Historical Permission Notice and Disclaimer", "HPND", licence, flags=re.IGNORECASE)
    words = re.findall(r"[()]|[^()\s]+", licence)

    def joined(operator: str, operand: Callable[[], bool], combine: Callable[[list[bool]], bool]) -> bool:
        values = [operand()]
        while words and words[0].upper() == operator:
            words.pop(0)
            values.append(operand())
        return combine(values)

    def expression() -> bool:  # terms joined by OR, each of terms joined by AND
        return joined("OR", lambda: joined("AND", term, all), any)

    def term() -> bool:
        if words and words[0] == "(":
            words.pop(0)
            inner = expression()
            if words and words[0] == ")":
                words.pop(0)
            return inner
        name = []
        while words and words[0] != ")" and words[0].upper() not in ("AND", "OR"):
            if words[0] == "(":  # a name's own parentheses: "ISC License (ISCL)"
                if not name or ")" not in words:
                    break
                while (word := words.pop(0)) != ")":
                    name.append(word)
                continue
            name.append(words.pop(0))
        text = " ".join(name)
        return bool(PERMISSIVE.search(text)) and not REFUSED.search(text)

    allowed = expression()
    return allowed and not words  # an unbalanced ")" leaves words over: not an expression we read


def distribution_licence(dist: metadata.Distribution) -> str | None:
    """The distribution's licence when it is permissive, else None. License-Expression is authoritative
    when present; otherwise the License field (when it is a name) and every licence classifier must be."""
    meta = dist.metadata
    if expression := (meta.get("License-Expression") or "").strip():
        return expression if permissive(expression) else None
    field = (meta.get("License") or "").strip()
    names = [field] if field and field.upper() != "UNKNOWN" and len(field) < 200 else []
    names += [
        c.split("::")[-1].strip()
        for c in meta.get_all("Classifier") or []
        if c.startswith("License ::") and c.count("::") > 1  # "License :: OSI Approved" names none
    ]
    if not names or not all(map(permissive, names)):
        return None
    return field if names[0] == field else "; ".join(dict.fromkeys(names))


def collect_corpus(max_bytes: int) -> tuple[list[tuple[str, str]], list[dict[str, object]]]:
    """[(source name, text)] deduplicated by content, and the manifest (package, version, licence, files)."""
    sources: list[tuple[str, str, str, list[Path]]] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    stdlib_files = [p for p in stdlib.rglob("*.py") if not {"site-packages", "test", "tests"} & set(p.parts)]
    sources.append(("python-stdlib", sys.version.split()[0], "PSF-2.0", _spread(stdlib_files, stdlib)))
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = dist.metadata["Name"]
        licence = distribution_licence(dist)
        if not name or licence is None or name.replace("_", "-") == "dgemma-lsp":
            continue
        files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".py")]
        sources.append((name, dist.version, licence, _spread(files, Path(dist.locate_file("")))))

    seen: set[str] = set()
    corpus: list[tuple[str, str]] = []
    manifest: list[dict[str, object]] = []
    total = 0
    for name, version, licence, files in sources:
        count = used = 0
        for path in files:
            if any(part in str(path).lower() for part in BANNED_PATH_PARTS):
                continue
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            digest = hashlib.sha1(text.strip().encode()).hexdigest()
            cap = MAX_STDLIB_BYTES if name == "python-stdlib" else MAX_PACKAGE_BYTES
            if len(text) < 200 or digest in seen or used > cap or total > max_bytes:
                continue
            seen.add(digest)
            corpus.append((f"{name}/{path.name}", text))
            count += 1
            used += len(text)
            total += len(text)
        if count:
            manifest.append({"package": name, "version": version, "licence": licence, "files": count})
    return corpus, manifest


def _spread(files: list[Path], root: Path) -> list[Path]:
    """`files` in the order of a hash of their path under `root`: a source cut at its cap is a sample of
    all of it (in path order the standard library stopped at `encodings/`), the same on every machine."""
    return sorted(files, key=lambda p: hashlib.sha1(os.path.relpath(p, root).encode()).hexdigest())


def corpus_from_file(path: Path, max_bytes: int) -> tuple[list[tuple[str, str]], list[dict[str, object]]]:
    """The corpus saved at ``path`` (gzipped JSON), built from this machine's packages and saved there first
    when the file does not exist: another machine then trains on the same files, holding out the same ones."""
    if not path.exists():
        corpus, manifest = collect_corpus(max_bytes)
        path.write_bytes(gzip.compress(json.dumps({"files": corpus, "packages": manifest}).encode()))
    saved = json.loads(gzip.decompress(path.read_bytes()))
    return [(name, text) for name, text in saved["files"]], saved["packages"]


def split_heldout(corpus: list[tuple[str, str]], every: int = 50) -> tuple[list[str], list[str]]:
    """Whole files by a hash of their content: the same split on every machine."""
    train, heldout = [], []
    for _, text in corpus:
        bucket = int(hashlib.sha1(text.encode()).hexdigest(), 16) % every
        (heldout if bucket == 0 else train).append(text)
    return train, heldout


def heldout_tasks(texts: list[str], n: int, seed: int = 0) -> list[dict[str, str]]:
    """FIM tasks (SantaCoder-FIM jsonl rows, scored by `dgemma-lsp eval`) cut from held-out files: a third
    the rest of a line from a point inside it, a third one whole line, a third 2-4 whole lines."""
    rng = random.Random(seed)
    tasks: list[dict[str, str]] = []
    for _ in range(50 * n):
        if len(tasks) == n:
            break
        text = rng.choice(texts)
        lines = text.splitlines(keepends=True)
        at = rng.randrange(len(lines))
        kind = len(tasks) % 3
        count = 1 if kind < 2 else rng.randint(2, 4)
        chosen = lines[at : at + count]
        if len(chosen) < count or any(len(line.strip()) < 6 for line in chosen):
            continue
        start = sum(map(len, lines[:at]))
        end = start + sum(map(len, chosen))
        if kind == 0:  # the cursor inside the line: after its indentation and at least one character
            line = chosen[0].rstrip("\n")
            indent = len(line) - len(line.lstrip())
            start += rng.randrange(indent + 1, len(line) - 1)
            end = start + len(line) - (start - sum(map(len, lines[:at])))
        tasks.append({
            "task_id": f"heldout/{len(tasks)}",
            "language": "python",
            "prompt": text[:start],  # the whole file, so that the canonical fill parses as the file does
            "suffix": text[end:],
            "canonical_solution": text[start:end],
        })  # fmt: skip
    return tasks


# --- tokenizer and model --------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    specials = [PAD, EOS, BOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    filler = [f"<unused{i}>" for i in range(vocab - tok.get_vocab_size())]
    if filler:  # every id the canvas can hold must decode
        tok.add_special_tokens(filler)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE],
    )  # fmt: skip


def make_config(size: Size) -> DiffusionGemmaConfig:
    text_config = {
        "vocab_size": size.vocab,
        "hidden_size": size.hidden,
        "intermediate_size": size.mlp_width,
        "num_hidden_layers": size.layers,
        "layer_types": ["sliding_attention"] * (size.layers - 1) + ["full_attention"],
        "num_attention_heads": size.heads,
        "num_key_value_heads": max(1, size.heads // 2),
        "head_dim": size.head_dim,
        "global_head_dim": 2 * size.head_dim,
        "num_global_key_value_heads": 1,
        "num_experts": size.experts,
        "top_k_experts": 2,
        "moe_intermediate_size": size.expert_width,
        "sliding_window": size.window,
        "max_position_embeddings": size.positions,
        "use_bidirectional_attention": "vision",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    # The vision tower is never used for code, but the class builds one: keep it minute.
    return DiffusionGemmaConfig(
        text_config=text_config, vision_config=dict(TINY_VISION), canvas_length=size.canvas
    )


# --- examples -------------------------------------------------------------------------------------------


@dataclass
class Batch:
    prompt: torch.Tensor  # [B, P] causal context (encoder)
    canvas: torch.Tensor  # [B, C] clean targets
    scored: torch.Tensor  # [B, C] bool: positions in the loss (clamped suffix positions are not)


class Examples:
    """Fixed-shape examples cut from the training files (no padding in the prompt).

    FIM middles are cut at characters, where an editor's cursor falls, and prefix, middle and suffix are
    tokenized apart, as the server tokenizes them: cut out of a whole file's tokens, a middle would always
    start on a token boundary of the file (after "\n   ", say), so the model would never see the prompt of
    a cursor at the start of an indented line, which ends in a lone "\n".
    Middles are the rest of a line, whole lines or random spans, up to three canvases long. A middle
    longer than one canvas is trained one block at a time, the blocks before it written after
    <|fim_middle|> in the prompt, as block diffusion sees them at inference.
    """

    def __init__(
        self,
        texts: list[str],
        size: Size,
        ids: dict[str, int],
        encode: Callable[[str], list[int]],
        tokens: list[list[int]] | None = None,  # the texts' tokens, when encoded already (in one batch)
    ) -> None:
        tokens = tokens or [encode(t) for t in texts]
        long_enough = [i for i, f in enumerate(tokens) if len(f) > size.prompt + size.canvas]
        if not long_enough:
            raise ValueError("no training file is long enough for one example")
        self.texts = [texts[i] for i in long_enough]
        self.files = [tokens[i] for i in long_enough]
        self.size, self.ids, self.encode = size, ids, encode

    def _middle(self, text: str, rng: random.Random) -> tuple[int, int, list[int]]:
        """[start, end) characters of a middle and its tokens: the rest of a line, whole lines or a span."""
        longest = min(3 * self.size.canvas, self.size.prompt // 2) - 1
        start = rng.randrange(1, len(text))
        line_end = text.find("\n", start) % (len(text) + 1)  # the end of the text when no newline follows
        kind = rng.random()
        if kind < 0.35:  # from the cursor to the end of its line (possibly nothing)
            end = line_end
        elif kind < 0.6 and line_end < len(text):  # whole lines: from a line's start through a later newline
            start = end = line_end + 1
            for _ in range(rng.randint(1, 4)):
                end = text.find("\n", end) % (len(text) + 1) + 1
        else:
            end = start + rng.choice([rng.randint(1, 24), rng.randint(1, 96), rng.randint(1, 320)])
        middle = self.encode(text[start:end])
        if len(middle) > longest:  # too long for three canvases: a short span instead
            end = start + rng.randint(1, 16)
            middle = self.encode(text[start:end])
        return start, end, middle

    def one(self, rng: random.Random) -> tuple[list[int], list[int], list[bool]]:
        s, ids = self.size, self.ids
        index = rng.randrange(len(self.files))
        if rng.random() < 0.25:  # plain continuation: prompt, then the next canvas of tokens
            tokens = self.files[index]
            start = rng.randrange(len(tokens) - s.prompt - s.canvas)
            window = tokens[start : start + s.prompt + s.canvas]
            return window[: s.prompt], window[s.prompt :], [True] * s.canvas
        text = self.texts[index]
        start, end, middle = self._middle(text, rng)
        middle = [*middle, ids[EOS]]
        block = rng.randrange((len(middle) + s.canvas - 1) // s.canvas)
        done, canvas = middle[: block * s.canvas], middle[block * s.canvas : (block + 1) * s.canvas]
        budget = s.prompt - 4 - len(done)
        reach = 8 * budget  # characters: enough for a budget of tokens
        before = self.encode(text[max(0, start - reach) : start])
        keep = min(len(before), rng.randint(budget // 4, budget))
        suffix = self.encode(text[end : end + reach])[: budget - keep]
        # A suffix shorter than its room leaves it to the prefix, as the server's prompt does: pad only
        # when the whole file is short (it padded 7 % of the examples, in front of a cut prefix).
        prefix = before[max(0, len(before) - (budget - len(suffix))) :]
        pad = [ids[PAD]] * (budget - len(prefix) - len(suffix))
        # Suffix first (SPM), so the code just before the cursor sits next to the canvas, in the sliding
        # layers' window.
        prompt = [*pad, ids[BOS], ids[FIM_SUFFIX], *suffix, ids[FIM_PREFIX], *prefix, ids[FIM_MIDDLE], *done]
        clamp: list[int] = []
        if canvas[-1] == ids[EOS] and rng.random() < 0.25:  # the suffix clamped at the canvas end, as
            clamp = suffix[: clamped_suffix_tokens(s.canvas)]  # infill.py lays it out; clean, not scored
            if len(canvas) > s.canvas - len(clamp):
                clamp = []
        canvas = canvas + [ids[PAD]] * (s.canvas - len(canvas) - len(clamp)) + clamp
        scored = [True] * (s.canvas - len(clamp)) + [False] * len(clamp)
        return prompt, canvas, scored

    def batch(self, n: int, device: torch.device, rng: random.Random) -> Batch:
        rows = [self.one(rng) for _ in range(n)]
        return Batch(
            prompt=torch.tensor([r[0] for r in rows], device=device),
            canvas=torch.tensor([r[1] for r in rows], device=device),
            scored=torch.tensor([r[2] for r in rows], device=device),
        )


_EXAMPLES: Examples | None = None  # a worker process's copy, inherited through fork


def _step_batch(n: int, seed: int, step: int, examples: Examples) -> Batch:
    """Step ``step``'s batch, from a random stream of its own: the same for any number of workers, and a
    --resume takes up the examples where the run left them."""
    return examples.batch(n, torch.device("cpu"), random.Random(f"{seed}/{step}"))


def _worker_batch(n: int, seed: int, step: int) -> tuple[np.ndarray, ...]:
    """In a worker: the batch as numpy arrays, which pickle by value (tensors would go through shared
    memory, which a container may not have)."""
    batch = _step_batch(n, seed, step, _EXAMPLES)
    return batch.prompt.numpy(), batch.canvas.numpy(), batch.scored.numpy()


class Batches:
    """The training batches, made by ``workers`` processes a few steps ahead of the one that takes them (no
    workers: in line). Tokenizing the prefixes and suffixes of 256 examples takes a CPU core about 0.2 s,
    about as long as a whole step took in the last GPU run."""

    def __init__(self, examples: Examples, n: int, seed: int, workers: int) -> None:
        global _EXAMPLES
        self.examples, self.n, self.seed, self.depth = examples, n, seed, 2 * workers
        self.pending: dict[int, concurrent.futures.Future[tuple[np.ndarray, ...]]] = {}
        self.pool = None
        self.waited = 0.0  # seconds the trainer spent waiting for batches: what more workers could save
        if workers > 0:
            _EXAMPLES = examples
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked children tokenize one by one
            # Forked, the workers share the corpus instead of unpickling it; they never touch CUDA.
            context = multiprocessing.get_context("fork")
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)

    def get(self, step: int, device: torch.device) -> Batch:
        asked = time.perf_counter()
        if self.pool is None:
            batch = _step_batch(self.n, self.seed, step, self.examples)
            parts = (batch.prompt, batch.canvas, batch.scored)
        else:
            for ahead in range(step, step + self.depth):
                if ahead not in self.pending:
                    self.pending[ahead] = self.pool.submit(_worker_batch, self.n, self.seed, ahead)
            parts = map(torch.from_numpy, self.pending.pop(step).result())
        self.waited += time.perf_counter() - asked
        return Batch(*(x.to(device) for x in parts))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# --- training -------------------------------------------------------------------------------------------


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """Cross-entropy of the soft-capped vocabulary head."""
    logits = softcap(F.linear(hidden, weight).float(), cap)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


HEAD_LOSS = torch.compile(head_loss, dynamic=False)


def diffusion_loss(
    model: DiffusionGemmaForBlockDiffusion, batch: Batch, generator: torch.Generator, draws: int = 1
) -> torch.Tensor:
    canvas, scored = batch.canvas.repeat_interleave(draws, 0), batch.scored.repeat_interleave(draws, 0)
    vocab = model.config.text_config.vocab_size
    b, c = canvas.shape
    t = torch.rand(b, 1, generator=generator, device=canvas.device) * 0.999 + 0.001
    noise = torch.randint(0, vocab, canvas.shape, generator=generator, device=canvas.device)
    noised = (torch.rand(b, c, generator=generator, device=canvas.device) < t) & scored
    noisy = torch.where(noised, noise, canvas)
    self_cond = torch.rand(b, generator=generator, device=canvas.device) < 0.5
    # The prompt is encoded once: every decoder pass reads the same cache (the decoder never writes it).
    encoded = model.model.encoder(input_ids=batch.prompt)
    if draws > 1:
        encoded.cache.batch_repeat_interleave(draws)

    def canvas_logits(sc_logits: torch.Tensor | None) -> torch.Tensor:
        hidden = model.model.decoder(
            decoder_input_ids=noisy,
            cache=encoded.cache,
            self_conditioning_logits=sc_logits,
            self_conditioning_mask=self_cond if sc_logits is not None else None,
        ).last_hidden_state
        return softcap(model.lm_head(hidden).float(), model.final_logit_softcapping)

    sc_logits = None
    if self_cond.any():  # first pass without self-conditioning; its logits condition the second
        with torch.no_grad():
            sc_logits = canvas_logits(None)
    logits = canvas_logits(sc_logits)
    canvas_loss = F.cross_entropy(logits[scored], canvas[scored])
    # The encoder's own next-token loss on the prompt (the reference trains it too).
    ar_loss = HEAD_LOSS(
        encoded.last_hidden_state[:, :-1],
        model.lm_head.weight,
        batch.prompt[:, 1:],
        model.final_logit_softcapping,
    )
    return canvas_loss + 0.5 * ar_loss


def save_training_state(
    folder: Path,
    model: torch.nn.Module,
    optim: torch.optim.Optimizer,
    step: int,
    minutes: float,
    generator: torch.Generator,
) -> None:
    """Weights, optimizer and the noise's random stream at `step`, written beside `folder` and then
    swapped in: a run killed while saving keeps its last whole checkpoint."""
    fresh, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    save_model(model, str(fresh / "model.safetensors"))  # handles the tied encoder/decoder weights
    names = {id(p): n for n, p in model.named_parameters()}
    state = {
        f"{names[id(p)]}::{k}": v for p, s in optim.state.items() for k, v in s.items() if torch.is_tensor(v)
    }
    save_file({k: v.contiguous() for k, v in state.items()}, fresh / "optimizer.safetensors")
    save_file({"noise": generator.get_state()}, fresh / "generator.safetensors")
    # Last: a folder with state.json is whole. The examples need no state: each step's has its own seed.
    (fresh / "state.json").write_text(json.dumps({"step": step, "minutes": minutes}))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(work: Path) -> Path | None:
    """WORK/checkpoint, or the one it replaces when a save stopped between its two renames."""
    return next(
        (f for f in (work / "checkpoint", work / "checkpoint.old") if (f / "state.json").is_file()), None
    )


def load_training_state(
    folder: Path,
    model: torch.nn.Module,
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, float]:
    """Restores the weights, optimizer and the noise's random stream; returns the steps and minutes of
    training behind them. The stream carries on where it was and each step's examples have their own seed,
    so a resumed run trains as an uninterrupted one."""
    load_model(model, str(folder / "model.safetensors"))
    params = dict(model.named_parameters())
    for key, value in load_file(folder / "optimizer.safetensors").items():
        name, field = key.split("::")
        optim.state[params[name]][field] = value.to(params[name].device)
    state = json.loads((folder / "state.json").read_text())
    step = int(state["step"])
    saved = folder / "generator.safetensors"
    noise = load_file(saved)["noise"] if saved.is_file() else None
    if noise is not None and noise.shape == generator.get_state().shape:  # a CUDA state is no CPU one
        generator.set_state(noise)
    else:  # not saved, or saved on another kind of device: a new stream, not the first run's again
        generator.manual_seed(generator.initial_seed() + step)
    return step, float(state.get("minutes", 0.0))


def progress(step: int, done: float, loss: float, started: float) -> None:
    """One line, rewritten in place: ``done`` is the fraction of the run behind us (steps or time)."""
    eta = (time.perf_counter() - started) / max(done, 1e-9) * (1 - done)
    bar = "#" * int(30 * done)
    print(
        f"\r[{bar:<30}] {done:4.0%} step {step} loss {loss:.3f} eta {eta / 60:.1f} min",
        end="",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dgemma_lsp.model.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="final Hugging Face folder")
    parser.add_argument(
        "--work", type=Path, help="tokenizer, corpus manifest and checkpoints (default: OUT.work)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=100_000, help="stop after this many steps ...")
    parser.add_argument(
        "--minutes", type=float, help="... or after this much training time (counting before a --resume)"
    )
    parser.add_argument(
        "--batch", type=int, help="examples per step (default 32 on a CPU, 256 on a GPU, which 32 would idle)"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--corpus-mb", type=float, default=60.0)
    parser.add_argument(
        "--corpus", type=Path, help="corpus file (.json.gz): read it, or build this machine's corpus into it"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from WORK/checkpoint")
    parser.add_argument(
        "--init", type=Path, help="start from this exported model (e.g. model/bundled) and its tokenizer"
    )
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument(
        "--draws", type=int, default=1, help="noised copies of each canvas per encoded prompt"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes making batches ahead (default: none on a CPU, up to 16 on a GPU)",
    )
    args = parser.parse_args(argv)

    size = SIZES[args.size]
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device}: {exc}")
    batch = args.batch or (256 if device.type == "cuda" else 32)
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs that have it; no effect on a CPU
    work = args.work or args.out.with_name(args.out.name + ".work")
    resume_from = last_checkpoint(work) if args.resume else None
    if args.resume and resume_from is None:
        parser.error(f"--resume: {work / 'checkpoint'} holds no training checkpoint (see --work)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch has no CUDA device")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers {args.workers}: a count of processes, 0 for none")
    for folder in (work, args.out):  # before the slow steps, not when the trained model is written
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"cannot write {folder}: {exc}")
    torch.manual_seed(args.seed)

    max_bytes = int(args.corpus_mb * 1e6)
    if args.corpus:
        try:
            corpus, manifest = corpus_from_file(args.corpus, max_bytes)
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:  # gzip's and json's errors too
            parser.error(f"--corpus {args.corpus}: cannot read or write it as a corpus file ({exc!r})")
    else:
        corpus, manifest = collect_corpus(max_bytes)
    train_texts, heldout = split_heldout(corpus)
    (work / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in heldout))
    tasks = heldout_tasks(heldout, 300, args.seed) if heldout else []
    (work / "heldout_tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    print(
        f"corpus: {len(corpus)} files from {len(manifest)} packages; {len(heldout)} held out", file=sys.stderr
    )
    tokenizer_dir = work / "tokenizer"
    if args.init is not None:  # the vocabulary the weights were trained with
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.init)
        tokenizer.save_pretrained(tokenizer_dir)
    elif args.resume and (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(train_texts, size.vocab)
        tokenizer.save_pretrained(tokenizer_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, BOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    # Code is data: a sentinel spelled out in a file is text, as the server tokenizes it.
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)  # noqa: E731
    # One batch call, which the tokenizer spreads over the cores (2 cores: 13 s against 21 s one by one).
    tokens = tokenizer(train_texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    examples = Examples(train_texts, size, ids, encode, tokens)

    if args.init is not None:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.init, dtype=torch.float32)
        text = model.config.text_config
        shape = (text.vocab_size, text.hidden_size, text.num_hidden_layers, model.config.canvas_length)
        if shape != (size.vocab, size.hidden, size.layers, size.canvas):
            raise SystemExit(f"{args.init} is not a --size {args.size} model")
        earlier = json.loads((args.init / "corpus_manifest.json").read_text())
        (work / "init_manifest.json").write_text(json.dumps(earlier))  # for a --resume of this run
    else:
        model = DiffusionGemmaForBlockDiffusion(make_config(size))
        kept = work / "init_manifest.json"
        if not args.resume:  # a fresh run in this work folder: an earlier run's --init is not this one's
            kept.unlink(missing_ok=True)
        earlier = json.loads(kept.read_text()) if kept.is_file() else None
    model = model.to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    step, minutes = 0, 0.0
    if resume_from is not None:
        step, minutes = load_training_state(resume_from, model, optim, generator)
    # The clock counts the training before a --resume, so a resumed run finishes the schedule it was in.
    warmup, started, deadline = 100, time.perf_counter() - 60 * minutes, None
    if args.minutes is not None:
        deadline = started + 60 * args.minutes
    total = args.steps
    losses: list[float] = []
    workers = args.workers
    if workers is None:  # a GPU trains while the workers tokenize; a CPU's cores are busy training
        workers = max(0, min(16, (os.cpu_count() or 2) - 2)) if device.type == "cuda" else 0
    batches = Batches(examples, batch, args.seed, workers)

    def trained_minutes() -> float:
        return (time.perf_counter() - started) / 60

    def done() -> float:  # the fraction of the run behind us: by steps, or by time when time-boxed
        if deadline is None:
            return step / total
        return min(1.0, (time.perf_counter() - started) / (deadline - started))

    try:
        while step < total and (deadline is None or time.perf_counter() < deadline):
            lr_scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * done()))
            for group in optim.param_groups:
                group["lr"] = args.lr * max(lr_scale, 0.05)
            loss = diffusion_loss(model, batches.get(step, device), generator, args.draws)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            step += 1
            losses.append(loss.item())
            progress(step, done(), sum(losses[-50:]) / len(losses[-50:]), started)
            if step % args.checkpoint_every == 0:
                save_training_state(work / "checkpoint", model, optim, step, trained_minutes(), generator)
    finally:
        batches.close()
    print(file=sys.stderr)
    save_training_state(work / "checkpoint", model, optim, step, trained_minutes(), generator)
    recent = losses[-50:] or [float("nan")]
    export(model, tokenizer, args.out, manifest, {
        "steps": step, "batch": batch, "draws": args.draws, "device": str(device), "size": args.size,
        "minutes": round(trained_minutes(), 1), "final_loss": sum(recent) / len(recent),
        "waited_for_batches_minutes": round(batches.waited / 60, 2),
        **({"continued_from": earlier} if earlier else {}),
    })  # fmt: skip
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def export(
    model: DiffusionGemmaForBlockDiffusion,
    tokenizer: PreTrainedTokenizerFast,
    out: Path,
    manifest: list[dict[str, object]],
    training: dict[str, object],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.config.fim_order = "spm"  # the order Examples lays prompts out in: suffix first
    model.config.languages = ["python"]  # the corpus is Python files only: the server completes no other
    model.eval().to("cpu", torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    generation = {
        # The bundled model's held-out sweeps: 8 steps keep a line under 150 ms; a small model is rarely sure
        # of a token, so the released bound (0.1) accepts about one a step and the rest stays noise: a looser
        # bound and cooler temperatures parse more often in fewer steps.
        "max_denoising_steps": 8,
        "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.5},
        "t_min": 0.2, "t_max": 0.4, "stability_threshold": 1, "confidence_threshold": 0.005,
        "max_new_tokens": model.config.canvas_length,
        "bos_token_id": 2, "eos_token_id": [1], "pad_token_id": 0,
    }  # fmt: skip
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (out / "corpus_manifest.json").write_text(
        json.dumps({"packages": manifest, "training": training}, indent=2)
    )


if __name__ == "__main__":
    sys.exit(main())
