"""The bundled-model recipe end to end at toy size: corpus, tokenizer, training, resume, HF export."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from dgemma_lsp.model.checkpoint import load_checkpoint
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.model.prompt import has_fim_tokens
from dgemma_lsp.model.train import (
    BANNED_PATH_PARTS,
    SIZES,
    Examples,
    collect_corpus,
    corpus_from_file,
    heldout_tasks,
    main,
    permissive,
    split_heldout,
)


def test_corpus_is_permissive_deduplicated_and_split() -> None:
    corpus, manifest = collect_corpus(2_000_000)
    texts = [text for _, text in corpus]
    assert len(set(texts)) == len(texts)
    assert manifest[0]["package"] == "python-stdlib"
    assert all(permissive(str(m["licence"])) for m in manifest)
    assert not any(part in name.lower() for name, _ in corpus for part in BANNED_PATH_PARTS)
    train, heldout = split_heldout(corpus)
    assert heldout and train and not set(train) & set(heldout)


def test_corpus_file_is_built_once_then_read(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json.gz"
    built = corpus_from_file(path, 300_000)
    assert path.exists() and built == collect_corpus(300_000)
    # Another machine reads the file, whatever it has installed: here, a corpus edited in the file.
    path.write_bytes(gzip.compress(json.dumps({"files": [["a/b.py", "x = 1\n"]], "packages": []}).encode()))
    assert corpus_from_file(path, 300_000) == ([("a/b.py", "x = 1\n")], [])


@pytest.mark.parametrize(
    ("licence", "allowed"),
    [
        ("MIT", True),
        ("BSD License", True),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("MIT OR GPL-2.0-only", True),  # we may take the MIT alternative
        ("(Apache-2.0 OR BSD-3-Clause) AND MIT", True),
        ("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", True),  # numpy's
        ("Apache-2.0 AND CNRI-Python", True),
        ("MPL-2.0 AND MIT", False),  # both apply, and MPL is copyleft
        ("GNU General Public License v3 (GPLv3)", False),
        ("LGPL-2.1-or-later", False),
        ("(MIT OR Apache-2.0) AND EPL-2.0", False),
        ("Proprietary", False),
        ("", False),
    ],
)
def test_licence_filter(licence: str, allowed: bool) -> None:
    assert permissive(licence) is allowed


def test_examples_have_fixed_shapes_and_fim_layout() -> None:
    import random

    size = SIZES["toy"]
    ids = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<|fim_prefix|>": 3, "<|fim_suffix|>": 4, "<|fim_middle|>": 5}
    newline = 6  # every 7th token ends a line
    tokens = [newline if i % 7 == 0 else i for i in range(7, 400)]
    examples = Examples([tokens], size, ids, {newline}, random.Random(0))
    batch = examples.batch(256, torch.device("cpu"))
    assert batch.prompt.shape == (256, size.prompt) and batch.canvas.shape == (256, size.canvas)
    fim = (batch.prompt == 5).any(dim=1)
    assert fim.any() and (~fim).any()  # both FIM and plain continuation examples
    middle_at = (batch.prompt[fim] == 5).int().argmax(dim=1)
    assert (batch.prompt[fim] == 5).sum(dim=1).eq(1).all()
    suffix_at, prefix_at = ((batch.prompt[fim] == s).int().argmax(dim=1) for s in (4, 3))
    assert (suffix_at < prefix_at).all() and (prefix_at < middle_at).all()  # suffix first (SPM)
    # One-block middles: the prompt's last code token is the one just before the middle in the file.
    last, first = batch.prompt[fim][:, -2], batch.canvas[fim][:, 0]
    one_block = (middle_at == size.prompt - 1) & (first > newline) & (last > newline)
    assert one_block.any() and (last[one_block] == first[one_block] - 1).all()
    assert (middle_at == size.prompt - 1).any() and (middle_at < size.prompt - 1).any()  # later blocks
    assert (batch.canvas[fim] == 1).any(dim=1).any()  # middles end in EOS
    assert (~batch.scored).any()  # some canvases carry a clamped suffix that is not scored
    # A rest-of-line middle stops right before a newline token: some FIM canvases hold no newline.
    line_ends = batch.canvas[fim] == newline
    assert (~line_ends.any(dim=1)).any() and line_ends.any(dim=1).any()


def test_train_resume_and_load(tmp_path: Path) -> None:
    out = tmp_path / "model"
    common = [
        "--out",
        str(out),
        "--size",
        "toy",
        "--corpus-mb",
        "1",
        "--batch",
        "2",
        "--checkpoint-every",
        "2",
    ]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "3", "--resume"]) == 0
    info = json.loads((out / "corpus_manifest.json").read_text())
    assert info["training"]["steps"] == 3 and info["packages"]
    loaded = load_checkpoint(out)  # the same loader the server uses
    assert loaded.canvas_length == SIZES["toy"].canvas and has_fim_tokens(loaded.tokenizer)
    fill = Infiller(loaded).fill("def f(x):\n    return ", "\n", max_new_tokens=8, seed=0)
    assert fill.steps >= 1
    # Continuing from the exported model: its tokenizer and weights, the earlier run kept in the manifest.
    further = tmp_path / "further"
    assert main([*common[2:], "--out", str(further), "--steps", "1", "--init", str(out)]) == 0
    info = json.loads((further / "corpus_manifest.json").read_text())
    assert info["training"]["continued_from"]["training"]["steps"] == 3
    assert (further / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_heldout_tasks_cut_lines_out_of_whole_files() -> None:
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(40))
    tasks = heldout_tasks([text], 30, seed=1)
    assert len(tasks) == 30
    for task in tasks:
        assert task["prompt"] + task["canonical_solution"] + task["suffix"] == text
    middles = [t["canonical_solution"] for t in tasks]
    assert any("\n" not in m for m in middles)  # the rest of a line
    assert any(m.count("\n") >= 2 for m in middles)  # several whole lines
    assert all(m.strip() for m in middles)
