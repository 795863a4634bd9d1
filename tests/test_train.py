"""The bundled-model recipe end to end at toy size: corpus, tokenizer, training, resume, HF export."""

from __future__ import annotations

import gzip
import importlib.metadata as metadata
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgemma_lsp.model.checkpoint import load_checkpoint, read_languages
from dgemma_lsp.model.infill import Infiller
from dgemma_lsp.model.prompt import has_fim_tokens
from dgemma_lsp.model.train import (
    BANNED_PATH_PARTS,
    SIZES,
    Batch,
    Batches,
    Examples,
    _spread,
    collect_corpus,
    corpus_from_file,
    diffusion_loss,
    distribution_licence,
    heldout_tasks,
    main,
    make_config,
    permissive,
    split_heldout,
    train_tokenizer,
)


def test_corpus_is_permissive_deduplicated_and_split() -> None:
    corpus, manifest = collect_corpus(2_000_000)
    texts = [text for _, text in corpus]
    # A sample of the whole standard library (in path order it stopped in encodings/ at its cap).
    stdlib = [name.removeprefix("python-stdlib/") for name, _ in corpus if name.startswith("python-stdlib/")]
    assert sum(name > "f" for name in stdlib) > len(stdlib) / 2
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
        # Names are whole words, "and"/"or" in any case, parentheses nest or belong to a name.
        ("Unlicensed", False),
        ("Proprietary - all rights reserved, redistribution not permitted", False),  # "mit" in "permitted"
        ("Proprietary; see DISCLAIMER", False),  # "isc"
        ("LicenseRef-Commercial-Limited", False),
        ("MIT and GNU General Public License v2", False),
        ("Python Software Foundation License; GNU General Public License", False),
        ("Apache-2.0 AND (MIT OR GPL-2.0)", True),
        ("ISC License (ISCL)", True),
        ("Historical Permission Notice and Disclaimer (HPND)", True),
        ("MIT)", False),
    ],
)
def test_licence_filter(licence: str, allowed: bool) -> None:
    assert permissive(licence) is allowed


def distribution(folder: Path, *fields: str) -> metadata.Distribution:
    info = folder / "demo-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "\n".join(["Metadata-Version: 2.4", "Name: demo", "Version: 1.0", *fields])
    )
    return metadata.PathDistribution(info)


def test_a_distributions_licence_expression_decides_else_every_licence_it_names_must_be_permissive(
    tmp_path: Path,
) -> None:
    mit = "Classifier: License :: OSI Approved :: MIT License"
    gpl = "Classifier: License :: OSI Approved :: GNU General Public License v2 (GPLv2)"
    assert distribution_licence(distribution(tmp_path / "a", "License-Expression: GPL-3.0-only", mit)) is None
    assert distribution_licence(distribution(tmp_path / "b", mit, gpl)) is None
    assert distribution_licence(distribution(tmp_path / "c", "License: MIT", mit)) == "MIT"
    assert distribution_licence(distribution(tmp_path / "d", "License: UNKNOWN", mit)) == "MIT License"
    assert (
        distribution_licence(distribution(tmp_path / "e", "License-Expression: MIT OR GPL-2.0", gpl))
        == "MIT OR GPL-2.0"
    )


IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<|fim_prefix|>": 3, "<|fim_suffix|>": 4, "<|fim_middle|>": 5}
CODE = "".join(
    f"def f{i}(x):\n    if x > {i}:\n        return x - {i}\n    return {i}\n\n" for i in range(40)
)


def test_examples_have_fixed_shapes_and_fim_layout() -> None:
    import random

    size = SIZES["toy"]
    encode = lambda text: [ord(c) for c in text]  # noqa: E731 -- one token per character, all above the ids
    examples, rng = Examples([CODE], size, IDS, encode), random.Random(0)
    rows = [examples.one(rng) for _ in range(400)]
    batch = examples.batch(256, torch.device("cpu"), rng)
    assert batch.prompt.shape == (256, size.prompt) and batch.canvas.shape == (256, size.canvas)
    fim = [(p, c, s) for p, c, s in rows if 5 in p]
    assert fim and len(fim) < len(rows)  # both FIM and plain continuation examples
    # A suffix cut short by the file's end leaves its room to the prefix, as the server's prompt does.
    assert not any(0 in p for p, _, _ in fim)
    text = lambda ids: "".join(map(chr, ids))  # noqa: E731
    kinds = set()
    for prompt, canvas, scored in fim:
        assert len(prompt) == size.prompt and len(canvas) == len(scored) == size.canvas
        suffix_at, prefix_at, middle_at = prompt.index(4), prompt.index(3), prompt.index(5)
        assert suffix_at < prefix_at < middle_at  # suffix first (SPM)
        if middle_at < size.prompt - 1:
            kinds.add("later block")
            continue
        prefix, suffix = text(prompt[prefix_at + 1 : middle_at]), text(prompt[suffix_at + 1 : prefix_at])
        if 1 not in canvas:  # the first block of a longer middle
            kinds.add("first block")
            assert prefix + text(canvas) in CODE
            continue
        # A middle in one block ends in EOS, and prefix + middle + suffix is the file's text.
        middle = text(canvas[: canvas.index(1)])
        assert prefix + middle + suffix in CODE
        if not all(scored):
            kinds.add("clamped")
            assert text(canvas[-scored.count(False) :]) == suffix[: scored.count(False)]
        if middle and "\n" not in middle and suffix.startswith("\n"):
            kinds.add("rest of line")
        if prefix.endswith("\n") and middle.startswith("    ") and middle.endswith("\n"):
            kinds.add("whole indented lines")
    assert kinds == {"first block", "later block", "clamped", "rest of line", "whole indented lines"}


def test_draws_noise_each_canvas_again_for_one_encoding_of_its_prompt() -> None:
    """`draws` K is K copies of each example in the batch, their prompts encoded once."""
    import random

    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(make_config(SIZES["toy"]))
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    batch = Examples([CODE], SIZES["toy"], IDS, encode).batch(3, torch.device("cpu"), random.Random(0))
    copies = Batch(*(x.repeat_interleave(2, 0) for x in (batch.prompt, batch.canvas, batch.scored)))
    drawn = diffusion_loss(model, batch, torch.Generator().manual_seed(1), draws=2)
    torch.testing.assert_close(drawn, diffusion_loss(model, copies, torch.Generator().manual_seed(1)))
    assert not torch.equal(drawn, diffusion_loss(model, batch, torch.Generator().manual_seed(1)))


def test_each_steps_batch_is_the_same_made_in_line_or_by_worker_processes() -> None:
    """Batch i comes from a random stream of its own: the workers' count and the order steps are asked
    for in change nothing, and a --resume at step i gets the batch the whole run had there."""
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    examples = Examples([CODE], SIZES["toy"], IDS, encode)
    cpu = torch.device("cpu")
    in_line, ahead = Batches(examples, 8, 7, workers=0), Batches(examples, 8, 7, workers=2)
    try:
        for step in (5, 6, 7, 3, 9):
            a, b = in_line.get(step, cpu), ahead.get(step, cpu)
            assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    finally:
        ahead.close()
    assert not torch.equal(in_line.get(5, cpu).prompt, in_line.get(6, cpu).prompt)
    assert not torch.equal(in_line.get(5, cpu).prompt, Batches(examples, 8, 8, workers=0).get(5, cpu).prompt)


def test_fim_middles_are_cut_at_characters_not_at_the_files_tokens() -> None:
    """With a real BPE, "\n" and the next line's indentation are one token of the file; a cursor at the
    start of an indented line still gets a prompt ending in a lone "\n", as the server builds it."""
    import random

    tokenizer = train_tokenizer([CODE] * 4, SIZES["toy"].vocab)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    assert "\n   " in {tokenizer.decode([i]) for i in encode(CODE)}  # a merge the old cut could not undo
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDS}
    examples, rng = Examples([CODE], SIZES["toy"], ids, encode), random.Random(0)
    newline = encode("\n")
    line_starts = 0
    for _ in range(300):
        prompt, canvas, _ = examples.one(rng)
        if prompt[-1] == ids["<|fim_middle|>"] and prompt[-2:-1] == newline:
            line_starts += tokenizer.decode(canvas[:1]).startswith(" ")
    assert line_starts > 10


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
    assert read_languages(out) == ("python",)  # a corpus of Python files: the server completes no other
    fill = Infiller(loaded).fill("def f(x):\n    return ", "\n", max_new_tokens=8, seed=0)
    assert fill.steps >= 1
    # Continuing from the exported model: its tokenizer and weights, the earlier run kept in the manifest.
    further = tmp_path / "further"
    assert main([*common[2:], "--out", str(further), "--steps", "1", "--init", str(out), "--draws", "2"]) == 0
    info = json.loads((further / "corpus_manifest.json").read_text())
    assert info["training"]["continued_from"]["training"]["steps"] == 3 and info["training"]["draws"] == 2
    assert (further / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    # Resumed, it still names the model it continued from (the manifest of a --resume had lost it).
    assert main([*common[2:], "--out", str(further), "--steps", "2", "--resume"]) == 0
    info = json.loads((further / "corpus_manifest.json").read_text())
    assert info["training"]["steps"] == 2 and info["training"]["continued_from"]["training"]["steps"] == 3
    # A fresh run in that folder, then resumed: it continued from nothing, whatever ran there before.
    assert main([*common[2:], "--out", str(further), "--steps", "1"]) == 0
    assert main([*common[2:], "--out", str(further), "--steps", "2", "--resume"]) == 0
    assert "continued_from" not in json.loads((further / "corpus_manifest.json").read_text())["training"]


def test_a_source_is_sampled_by_its_paths_wherever_its_files_lie(tmp_path: Path) -> None:
    root = tmp_path / "site-packages"
    files = [root / "pkg" / f"m{i}.py" for i in range(20)] + [
        root / ".." / "bin" / "x.py",
        Path("/opt/x/y.py"),
    ]
    spread = _spread(files, root)  # RECORD may name files outside the package's folder, even absolute ones
    assert (
        sorted(spread) == sorted(files) and spread != files and _spread(list(reversed(files)), root) == spread
    )


def test_a_resumed_run_trains_as_an_uninterrupted_one_even_after_a_save_was_cut(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.json.gz"
    common = ["--size", "toy", "--corpus-mb", "0.5", "--corpus", str(corpus), "--batch", "2"]
    common += ["--checkpoint-every", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*common, "--out", str(whole), "--steps", "4"]) == 0
    assert main([*common, "--out", str(parts), "--steps", "2"]) == 0
    # Killed while saving the next checkpoint: the old one renamed away, the new one half written.
    work = tmp_path / "parts.work"
    (work / "checkpoint").rename(work / "checkpoint.old")
    shutil.copytree(work / "checkpoint.old", work / "checkpoint.tmp")
    (work / "checkpoint.tmp" / "model.safetensors").write_bytes(b"\0" * 100)
    # Its batches made by worker processes now: the same batches as the whole run's, made in line.
    assert main([*common, "--out", str(parts), "--steps", "4", "--resume", "--workers", "2"]) == 0
    a = load_file(tmp_path / "whole.work" / "checkpoint" / "model.safetensors")
    b = load_file(work / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (work / "checkpoint.old").exists() and not (work / "checkpoint.tmp").exists()


def test_bad_arguments_are_usage_errors_before_the_corpus_is_built(tmp_path: Path, capsys) -> None:
    garbage = tmp_path / "corpus.json.gz"
    garbage.write_bytes(b"not a corpus")
    (tmp_path / "file").write_text("")
    cases = [
        (["--corpus", str(garbage)], "cannot read or write it as a corpus file"),
        (["--out", str(tmp_path / "file" / "model")], "cannot write"),
        (["--device", "cdua"], "--device cdua"),
        (["--workers", "-1"], "--workers -1"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(tmp_path / "model"), "--size", "toy", *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, args


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path: Path, capsys) -> None:
    # It built the corpus and the tokenizer first, then raised FileNotFoundError.
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "model"), "--size", "toy", "--resume"])
    assert exit_.value.code == 2 and "holds no training checkpoint" in capsys.readouterr().err


def test_a_resumed_time_boxed_run_finishes_its_schedule(tmp_path: Path) -> None:
    """--minutes counts the training before --resume, so a run whose time is spent takes no more steps
    (and one interrupted halfway continues its learning-rate schedule from halfway, not from the top)."""
    out = tmp_path / "model"
    args = ["--out", str(out), "--size", "toy", "--corpus-mb", "1", "--batch", "2", "--minutes", "0.001"]
    assert main(args) == 0
    first = json.loads((out / "corpus_manifest.json").read_text())["training"]
    assert first["steps"] >= 1  # a toy step takes longer than the 0.06 s allowed
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((out / "corpus_manifest.json").read_text())["training"]
    assert resumed["steps"] == first["steps"]


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
