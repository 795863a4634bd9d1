"""ModelArgs: the shapes of the text model, read from a checkpoint's config or from a named config.

transformers' config classes interpret config.json (layer types, per-layer head sizes, RoPE defaults), so
we read the checkpoint through them once and keep only the numbers the fast model needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import DiffusionGemmaConfig

SLIDING, FULL = "sliding_attention", "full_attention"

# A tiny vision tower: building a named config must not allocate transformers' 167M-parameter default.
TINY_VISION = {
    "model_type": "gemma4_vision",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "position_embedding_size": 64,
}

# Text configs by name: the released model (docs/DIFFUSIONGEMMA.md section 1) and a CPU toy with its shapes.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "diffusiongemma-26b-a4b": {
        "canvas_length": 256,
        "text_config": {
            "vocab_size": 262_144,
            "hidden_size": 2816,
            "intermediate_size": 2112,
            "num_hidden_layers": 30,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 256,
            "global_head_dim": 512,
            "num_global_key_value_heads": 2,
            "num_experts": 128,
            "top_k_experts": 8,
            "moe_intermediate_size": 704,
            "sliding_window": 1024,
            "max_position_embeddings": 262_144,
            "use_bidirectional_attention": "vision",
        },
    },
    "tiny": {
        "canvas_length": 32,
        "text_config": {
            "vocab_size": 1024,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "global_head_dim": 32,
            "num_global_key_value_heads": 1,
            "num_experts": 4,
            "top_k_experts": 2,
            "moe_intermediate_size": 32,
            "sliding_window": 16,
            "use_bidirectional_attention": "vision",
        },
    },
}


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_heads: int
    intermediate_size: int  # dense MLP and self-conditioning MLP
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    layer_types: tuple[str, ...]
    sliding_window: int
    sliding_head_dim: int
    sliding_kv_heads: int
    sliding_rope_theta: float
    full_head_dim: int
    full_kv_heads: int
    full_rope_theta: float
    full_rotary_fraction: float  # proportional RoPE: the rotated share of the head
    canvas_length: int
    rms_norm_eps: float = 1e-6
    softcap: float = 30.0

    @property
    def n_layers(self) -> int:
        return len(self.layer_types)

    def head_dim(self, layer_type: str) -> int:
        return self.sliding_head_dim if layer_type == SLIDING else self.full_head_dim

    def kv_heads(self, layer_type: str) -> int:
        return self.sliding_kv_heads if layer_type == SLIDING else self.full_kv_heads

    @classmethod
    def from_hf(cls, config: DiffusionGemmaConfig) -> ModelArgs:
        """The text model's shapes; ValueError for variants this model does not implement."""
        text = config.text_config
        layer_types = tuple(text.layer_types)
        if set(layer_types) - {SLIDING, FULL}:
            raise ValueError(f"unknown layer types {sorted(set(layer_types) - {SLIDING, FULL})}")
        if text.use_bidirectional_attention == "all":
            raise ValueError("use_bidirectional_attention='all' (a bidirectional encoder) is not supported")
        if text.hidden_activation != "gelu_pytorch_tanh" or text.attention_bias:
            raise ValueError("only gelu_pytorch_tanh MLPs and bias-free attention are supported")
        if not (text.num_experts and text.top_k_experts and text.moe_intermediate_size):
            raise ValueError("the text config has no mixture of experts (num_experts / top_k_experts)")
        if not (getattr(config, "tie_word_embeddings", True) and getattr(text, "tie_word_embeddings", True)):
            raise ValueError("untied word embeddings (a separate lm_head) are not supported")
        rope = text.rope_parameters
        sliding_rope, full_rope = rope.get(SLIDING) or {}, rope.get(FULL) or {}
        if (
            sliding_rope.get("rope_type", "default") != "default"
            or full_rope.get("rope_type") != "proportional"
            or float(full_rope.get("factor", 1.0)) != 1.0  # transformers divides the frequencies by it
        ):
            raise ValueError(f"unsupported RoPE parameters {rope}")
        full = text.per_layer_config[FULL]
        sliding = text.per_layer_config[SLIDING] if SLIDING in layer_types else full  # unused then
        return cls(
            vocab_size=text.vocab_size,
            dim=text.hidden_size,
            n_heads=text.num_attention_heads,
            intermediate_size=text.intermediate_size,
            num_experts=text.num_experts,
            top_k=text.top_k_experts,
            moe_intermediate_size=text.moe_intermediate_size,
            layer_types=layer_types,
            sliding_window=text.sliding_window,
            sliding_head_dim=sliding.head_dim,
            sliding_kv_heads=sliding.num_key_value_heads,
            sliding_rope_theta=float(sliding_rope.get("rope_theta", 10_000.0)),
            full_head_dim=full.head_dim,
            full_kv_heads=full.num_key_value_heads,
            full_rope_theta=float(full_rope["rope_theta"]),
            full_rotary_fraction=float(full_rope.get("partial_rotary_factor", 1.0)),
            canvas_length=int(config.canvas_length),
            rms_norm_eps=text.rms_norm_eps,
            softcap=float(text.final_logit_softcapping),
        )


def named_config(name: str, layers: int | None = None) -> DiffusionGemmaConfig:
    """A transformers config for a named model, optionally cut to ``layers`` layers (the last is full)."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(NAMED_CONFIGS)}")
    spec = NAMED_CONFIGS[name]
    text = dict(spec["text_config"])
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        text["num_hidden_layers"] = layers
        # transformers derives the 5:1 pattern and forces the last layer to full attention; say so once here.
        text["layer_types"] = [
            FULL if (i + 1) % 6 == 0 or i == layers - 1 else SLIDING for i in range(layers)
        ]
    return DiffusionGemmaConfig(
        text_config=text, vision_config=dict(TINY_VISION), canvas_length=spec["canvas_length"]
    )
