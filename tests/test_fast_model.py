"""Our DiffusionGemma model against transformers': per-layer outputs and logits, and loading."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache

from dgemma_lsp.model.checkpoint import ModelLoadError, load_checkpoint
from dgemma_lsp.model.config import FULL, SLIDING, ModelArgs, named_config
from dgemma_lsp.model.dgemma import DGemma, attend
from dgemma_lsp.model.kv_cache import KVCache
from dgemma_lsp.model.load import from_hf_model, load_fast, quantize_experts, random_hf_model

SHORT = [2, 10, 11, 12, 13]
LONG = [2, *range(40, 140)]  # 101 tokens, past the sliding window (16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair(tiny_checkpoint: Path) -> tuple[DiffusionGemmaForBlockDiffusion, DGemma]:
    """transformers' model and ours, each loaded from the tiny checkpoint its own way."""
    return load_checkpoint(tiny_checkpoint, device="cpu").model, load_fast(
        tiny_checkpoint, device="cpu"
    ).model


def record(layers: torch.nn.ModuleList) -> tuple[list[torch.Tensor], list]:
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: outputs.append(out)) for layer in layers]
    return outputs, hooks


def reference_run(
    hf: DiffusionGemmaForBlockDiffusion,
    prompt: list[int],
    canvas: torch.Tensor,
    self_cond: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """transformers: encoder layer outputs over the prompt, decoder layer outputs, soft-capped logits."""
    encoded, hooks = record(hf.model.encoder.language_model.layers)
    decoded, more = record(hf.model.decoder.layers)
    positions = torch.arange(len(prompt), len(prompt) + canvas.shape[1])[None].expand(canvas.shape[0], -1)
    with torch.no_grad():
        cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
        # One prompt under several canvases: the reference wants the prompt once per row.
        hf.model.encoder(input_ids=torch.tensor([prompt] * canvas.shape[0]), cache=cache)
        logits = hf(
            cache=cache,
            decoder_input_ids=canvas,
            self_conditioning_logits=self_cond,
            decoder_position_ids=positions,
        ).logits
    for hook in hooks + more:
        hook.remove()
    return encoded, decoded, logits


def our_run(
    model: DGemma, prompt: list[int], canvas: torch.Tensor, self_cond: torch.Tensor | None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    cache = KVCache(model.args, 8, device=CPU, dtype=torch.float32)  # grows as needed
    encoded, hooks = record(model.layers)
    model.encode(torch.tensor([prompt]), cache, 0)
    cache.extend(torch.tensor(prompt))
    for hook in hooks:
        hook.remove()
    decoded, hooks = record(model.layers)
    probs = None if self_cond is None else torch.softmax(self_cond, -1)
    logits = model.decode(canvas, cache, probs)
    for hook in hooks:
        hook.remove()
    return encoded, decoded, logits


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["short", "past-window"])
@pytest.mark.parametrize("self_conditioning", [False, True], ids=["no-sc", "sc"])
def test_layers_and_logits_match_transformers(
    pair: tuple[DiffusionGemmaForBlockDiffusion, DGemma], prompt: list[int], self_conditioning: bool
) -> None:
    hf, ours = pair
    gen = torch.Generator().manual_seed(len(prompt) + self_conditioning)
    canvas = torch.randint(0, ours.args.vocab_size, (1, ours.args.canvas_length), generator=gen)
    self_cond = torch.randn(1, 32, ours.args.vocab_size, generator=gen) * 4 if self_conditioning else None
    ref_enc, ref_dec, ref_logits = reference_run(hf, prompt, canvas, self_cond)
    enc, dec, logits = our_run(ours, prompt, canvas, self_cond)
    assert len(enc) == len(ref_enc) == len(dec) == len(ref_dec) == 6
    assert {layer.layer_type for layer in ours.layers} == {SLIDING, FULL}
    for i in range(6):
        assert_close(enc[i], ref_enc[i], f"encoder layer {i}")
        assert_close(dec[i], ref_dec[i], f"decoder layer {i}")
    assert_close(logits, ref_logits, "logits")
    assert logits.dtype == torch.float32 and logits.abs().max() <= 30.0


def test_several_experts_canvases_and_layer_scalars() -> None:
    """8 experts, top 2 (so some experts get no token), two canvases over one prompt, encoder and decoder
    layer scalars that differ; our model built over transformers' weight tensors, nothing copied."""
    config = named_config("tiny")
    config.text_config.num_experts = 8
    hf = random_hf_model(config, CPU, torch.float32, seed=3)
    hf.model.encoder.language_model.layers[2].layer_scalar.fill_(0.5)
    hf.model.decoder.layers[3].layer_scalar.fill_(1.5)
    ours = from_hf_model(hf)
    assert (
        ours.layers[0].experts.gate_up_proj.data_ptr()
        == hf.model.decoder.layers[0].experts.gate_up_proj.data_ptr()
    )
    gen = torch.Generator().manual_seed(0)
    canvas = torch.randint(0, 1024, (2, 32), generator=gen)
    self_cond = torch.randn(2, 32, 1024, generator=gen) * 4
    _, ref_dec, ref_logits = reference_run(hf, LONG, canvas, self_cond)
    _, dec, logits = our_run(ours, LONG, canvas, self_cond)
    for i in range(6):
        assert_close(dec[i], ref_dec[i], f"decoder layer {i}")
    assert_close(logits, ref_logits, "logits")


@pytest.mark.parametrize("head_dim", [64, 512])  # above 256 the K/V heads are repeated instead
def test_attention_over_grouped_heads_matches_sdpa_gqa(head_dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 5, head_dim, generator=g)
    k, v = (torch.randn(1, 2, 7, head_dim, generator=g) for _ in range(2))
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[:, 0] = True  # every query sees a key
    want = torch.cat(
        [torch.softmax(q[:, h] @ k[:, h // 2].mT + (~mask) * -1e9, -1) @ v[:, h // 2] for h in range(4)]
    )
    torch.testing.assert_close(attend(q, k, v, mask)[0], want, atol=1e-5, rtol=1e-5)


def test_model_args_from_the_released_config() -> None:
    args = ModelArgs.from_hf(named_config("diffusiongemma-26b-a4b"))
    assert (args.dim, args.n_layers, args.num_experts, args.top_k, args.vocab_size) == (
        2816,
        30,
        128,
        8,
        262_144,
    )
    assert [i for i, t in enumerate(args.layer_types) if t == FULL] == [5, 11, 17, 23, 29]
    assert (args.sliding_head_dim, args.sliding_kv_heads, args.full_head_dim, args.full_kv_heads) == (
        256,
        8,
        512,
        2,
    )
    assert ModelArgs.from_hf(named_config("diffusiongemma-26b-a4b", layers=4)).layer_types == (
        SLIDING,
        SLIDING,
        SLIDING,
        FULL,
    )
    with pytest.raises(ValueError, match="unknown config"):
        named_config("gemma-7b")


def test_proportional_rope_rotates_a_quarter_of_a_full_width_rope(pair: tuple) -> None:
    _, ours = pair
    inv_freq = ours.rotary[FULL].inv_freq  # head_dim 32, fraction 0.25: 4 rotated frequencies of 16
    assert torch.equal(inv_freq[4:], torch.zeros(12))
    assert torch.allclose(inv_freq[:4], 1.0 / 1e6 ** (torch.arange(0, 8, 2) / 32))


def test_loading_maps_the_file_without_copying(tiny_checkpoint: Path) -> None:
    loaded = load_fast(tiny_checkpoint, device="cpu")
    assert loaded.backend == "fast" and loaded.dtype == torch.float32 and loaded.canvas_length == 32
    file_bytes = (tiny_checkpoint / "model.safetensors").stat().st_size
    # fp32 on CPU: embedding and experts are views into the memory-mapped file, not copies.
    for tensor in (loaded.model.embed_tokens.weight, loaded.model.layers[3].experts.down_proj):
        assert tensor.untyped_storage().nbytes() == file_bytes
    assert not any(p.requires_grad for p in loaded.model.parameters())


def _rewrite(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file(edit(tensors), dst / "model.safetensors")
    return dst


def test_tied_weights_may_sit_under_the_encoder_names(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def to_encoder(tensors: dict) -> dict:
        out = {}
        for name, t in tensors.items():
            if (
                name.startswith("model.decoder.")
                and not name.endswith("layer_scalar")
                and "self_cond" not in name
            ):
                name = name.replace("model.decoder.", "model.encoder.language_model.")
            out[name] = t
        out["lm_head.weight"] = out.pop("model.encoder.language_model.embed_tokens.weight")
        return out

    moved = load_fast(_rewrite(tiny_checkpoint, tmp_path / "moved", to_encoder), device="cpu").model
    ours = load_fast(tiny_checkpoint, device="cpu").model
    assert all(
        torch.equal(a, b)
        for a, b in zip(moved.state_dict().values(), ours.state_dict().values(), strict=True)
    )


def test_encoder_and_decoder_scalars_load_separately(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def scale(tensors: dict) -> dict:
        tensors["model.encoder.language_model.layers.2.layer_scalar"] = torch.tensor([0.5])
        return tensors

    model = load_fast(_rewrite(tiny_checkpoint, tmp_path / "scaled", scale), device="cpu").model
    assert float(model.layers[2].encoder_scalar) == 0.5 and float(model.layers[2].decoder_scalar) == 1.0


def test_missing_weights_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def drop(tensors: dict) -> dict:
        del tensors["model.decoder.layers.4.router.proj.weight"]
        return tensors

    folder = _rewrite(tiny_checkpoint, tmp_path / "broken", drop)
    with pytest.raises(ModelLoadError, match=r"layers\.4\.router\.proj\.weight"):
        load_fast(folder, device="cpu")


def _with_config(tiny_checkpoint: Path, folder: Path, change: Callable[[dict], None]) -> Path:
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_unsupported_config_is_reported(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _with_config(
        tiny_checkpoint,
        tmp_path / "all",
        lambda c: c["text_config"].update(use_bidirectional_attention="all"),
    )
    with pytest.raises(ModelLoadError, match="config.json.*bidirectional"):
        load_fast(folder, device="cpu")


def test_config_values_this_model_would_ignore_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # It read neither: untied embeddings ran the encoder on the decoder's weights (0 % argmax agreement
    # with transformers), and a RoPE `factor` moved every full layer's positions.
    untied = _with_config(tiny_checkpoint, tmp_path / "untied", lambda c: c.update(tie_word_embeddings=False))
    with pytest.raises(ModelLoadError, match="untied"):
        load_fast(untied, device="cpu")

    def scale(config: dict) -> None:
        config["text_config"]["rope_parameters"]["full_attention"]["factor"] = 8.0

    with pytest.raises(ModelLoadError, match="RoPE"):
        load_fast(_with_config(tiny_checkpoint, tmp_path / "factor", scale), device="cpu")


def test_a_folder_without_safetensors_is_refused_like_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_fast(tmp_path / "nowhere")


def test_fp8_experts_stay_close(tiny_checkpoint: Path) -> None:
    """The FP8 storage path (meant for CUDA kernels) runs anywhere: e4m3 weights with per-channel scales."""
    model = load_fast(tiny_checkpoint, device="cpu").model
    experts = model.layers[0].experts
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    weights, index = torch.full((32, 2), 0.5), torch.randint(0, 4, (32, 2), generator=torch.Generator())
    before = experts(x, weights, index)
    canvas = torch.randint(0, 1024, (1, 32), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model.args, 64, device=CPU, dtype=torch.float32)
    model.encode(torch.tensor([LONG]), cache, 0)
    cache.extend(torch.tensor(LONG))
    logits = model.decode(canvas, cache)
    quantize_experts(model)
    assert experts.gate_up_proj.dtype == torch.float8_e4m3fn and experts.gate_up_scale.shape == (4, 64)
    after = experts(x, weights, index)
    # e4m3 keeps 3 mantissa bits: a few percent per weight, less after summing over 64 inputs.
    assert 0 < (after - before).norm() / before.norm() < 0.05
    cosine = torch.nn.functional.cosine_similarity(
        model.decode(canvas, cache).flatten(), logits.flatten(), dim=0
    )
    assert cosine > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_logits_close_to_transformers(tiny_checkpoint: Path) -> None:
    hf = load_checkpoint(tiny_checkpoint, device="cuda").model
    ours = load_fast(tiny_checkpoint, device="cuda").model
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    canvas = torch.randint(0, 1024, (1, 32), device="cuda")
    positions = torch.arange(len(LONG), len(LONG) + 32, device="cuda")[None]
    with torch.no_grad():
        cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
        hf.model.encoder(input_ids=torch.tensor([LONG], device="cuda"), cache=cache)
        theirs = hf(cache=cache, decoder_input_ids=canvas, decoder_position_ids=positions).logits
    kv = KVCache(ours.args, 128, device=torch.device("cuda"), dtype=torch.bfloat16)
    ours.encode(torch.tensor([LONG], device="cuda"), kv, 0)
    kv.extend(torch.tensor(LONG))
    torch.testing.assert_close(ours.decode(canvas, kv), theirs, atol=0.05, rtol=0.05)


def test_step_graphs_go_with_triton_on_cuda_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from dgemma_lsp.model.load import GRAPHS_ENV, use_step_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert use_step_graphs(True, cuda) and not use_step_graphs(False, cuda) and not use_step_graphs(True, cpu)
    monkeypatch.setenv(GRAPHS_ENV, "0")
    assert not use_step_graphs(True, cuda)
