"""The facts of a decoder-only architecture, read from a Hugging Face config.

GPT-2 and Llama name the same quantities differently (``n_embd`` vs ``hidden_size``, ``n_inner``
vs ``intermediate_size``; Phi-3 is a Llama with fused projections) and differ in four design choices that matter for interpretability:
the normalisation (LayerNorm vs RMSNorm), the positions (a learned ``W_pos`` added to the residual
stream vs rotary embeddings applied inside attention), the MLP (GELU vs gated SiLU) and the number
of key/value heads (multi-head vs grouped-query attention). :func:`architecture_of` maps either
config to one :class:`Architecture`, the one place where those differences are spelled out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """Sizes and design choices of a decoder-only transformer.

    ``n_params`` counts every distinct parameter tensor once (tied embedding and unembedding
    count once), as ``sum(p.numel() for p in model.parameters())`` does.
    """

    family: str  # "gpt2" | "llama" | "phi3"
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # == n_heads for multi-head attention; fewer for grouped-query attention
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    norm: str  # "LayerNorm" | "RMSNorm"
    positions: str  # "learned" | "rotary"
    activation: str  # e.g. "gelu_new", "silu"
    gated_mlp: bool
    tied_embeddings: bool
    attn_bias: bool
    mlp_bias: bool
    rope_theta: float | None
    norm_eps: float

    @property
    def is_gqa(self) -> bool:
        """Grouped-query attention: several query heads share one key/value head."""
        return self.n_kv_heads < self.n_heads

    @property
    def queries_per_kv_head(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def n_params(self) -> int:
        return sum(self.param_counts().values())

    def param_counts(self) -> dict[str, int]:
        """Parameters per component type, summed over layers."""
        d, h, kv, dh, m, L = (
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.d_head,
            self.d_mlp,
            self.n_layers,
        )
        # One norm has a weight (and a bias for LayerNorm) of size d_model.
        norm = d * (2 if self.norm == "LayerNorm" else 1)
        attn = d * h * dh + 2 * d * kv * dh + h * dh * d  # W_Q, W_K, W_V, W_O
        if self.attn_bias:
            attn += h * dh + 2 * kv * dh + d
        mlp = (3 if self.gated_mlp else 2) * d * m
        if self.mlp_bias:
            mlp += m + d if not self.gated_mlp else 2 * m + d
        counts = {
            "embedding W_E": self.d_vocab * d,
            "positions W_pos": self.n_ctx * d if self.positions == "learned" else 0,
            "attention": L * attn,
            "MLP": L * mlp,
            "norms": (2 * L + 1) * norm,
            "unembedding W_U": 0 if self.tied_embeddings else self.d_vocab * d,
        }
        return counts

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_params"] = self.n_params
        return out


def architecture_of(config: Any) -> Architecture:
    """Read an :class:`Architecture` from a ``GPT2Config`` or ``LlamaConfig`` (or a model's config)."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gpt2":
        d_model = config.n_embd
        return Architecture(
            family="gpt2",
            n_layers=config.n_layer,
            d_model=d_model,
            n_heads=config.n_head,
            n_kv_heads=config.n_head,
            d_head=d_model // config.n_head,
            d_mlp=config.n_inner if config.n_inner is not None else 4 * d_model,
            d_vocab=config.vocab_size,
            n_ctx=config.n_positions,
            norm="LayerNorm",
            positions="learned",
            activation=config.activation_function,
            gated_mlp=False,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            attn_bias=True,
            mlp_bias=True,
            rope_theta=None,
            norm_eps=config.layer_norm_epsilon,
        )
    if model_type in ("llama", "phi3"):
        # Phi-3's blocks are Llama's (RMSNorm, RoPE, gated SiLU MLP) with the Q, K, V projections
        # fused in one matrix (qkv_proj) and the MLP's gate and up in another (gate_up_proj): the
        # same parameters, counted the same way
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}
        rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
        return Architecture(
            family=model_type,
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            d_head=head_dim,
            d_mlp=config.intermediate_size,
            d_vocab=config.vocab_size,
            n_ctx=config.max_position_embeddings,
            norm="RMSNorm",
            positions="rotary",
            activation=config.hidden_act,
            gated_mlp=True,
            tied_embeddings=bool(config.tie_word_embeddings),
            attn_bias=bool(getattr(config, "attention_bias", False)),  # Phi-3: none, and no field
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            rope_theta=float(rope_theta) if rope_theta is not None else None,
            norm_eps=config.rms_norm_eps,
        )
    raise ValueError(
        f"mechdemo knows the GPT-2, Llama and Phi-3 families; got a config of model_type {model_type!r}. "
        "Add a branch to mechdemo.architecture.architecture_of for it."
    )
