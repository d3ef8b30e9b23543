"""Anatomy of a decoder-only model: module tree, parameter counts per component, the config explained.

Works from a config alone: the model is built on PyTorch's ``meta`` device (shapes without memory),
so Llama 3.2 1B's anatomy needs neither the Hub nor 5 GB of RAM.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch
from torch import nn

# One line per config field of GPT-2 and Llama-family configs (transformers' names).
CONFIG_FIELDS: dict[str, str] = {
    # sizes
    "vocab_size": "tokens in the vocabulary: rows of the embedding, columns of the unembedding",
    "hidden_size": "d_model: width of the residual stream",
    "n_embd": "d_model: width of the residual stream",
    "num_hidden_layers": "transformer blocks (attention + MLP each)",
    "n_layer": "transformer blocks (attention + MLP each)",
    "num_attention_heads": "query heads per attention layer",
    "n_head": "attention heads per layer (queries, keys and values alike)",
    "num_key_value_heads": "key/value heads: fewer than query heads = grouped-query attention (each K/V head serves several query heads)",
    "head_dim": "d_head: width of each head's queries, keys and values",
    "intermediate_size": "d_mlp: hidden width of the MLP (gate and up projections)",
    "n_inner": "d_mlp: hidden width of the MLP (None = 4 x d_model)",
    "max_position_embeddings": "longest context the model was trained for",
    "n_positions": "longest context: rows of the learned position embedding",
    # architecture choices
    "hidden_act": "MLP non-linearity (silu = x * sigmoid(x), in a gated MLP: down(silu(gate x) * up x))",
    "activation_function": "MLP non-linearity (gelu_new: the tanh approximation of GELU)",
    "rms_norm_eps": "epsilon of RMSNorm (normalises by the root mean square; no mean subtraction, no bias)",
    "layer_norm_epsilon": "epsilon of LayerNorm (subtracts the mean, divides by the standard deviation)",
    "rope_parameters": "rotary position embedding: base frequency theta and scaling of the rotations",
    "rope_theta": "rotary position embedding base frequency",
    "rope_scaling": "how rotary frequencies are stretched for longer contexts",
    "attention_bias": "whether the Q, K, V and O projections have biases",
    "mlp_bias": "whether the MLP projections have biases",
    "tie_word_embeddings": "unembedding = embedding transposed (one matrix, counted once)",
    "scale_attn_weights": "divide attention scores by sqrt(d_head)",
    "scale_attn_by_inverse_layer_idx": "also divide attention scores by the layer index (off in GPT-2)",
    "reorder_and_upcast_attn": "compute attention scores in fp32 (numerical stability; off in GPT-2)",
    "pretraining_tp": "tensor-parallel degree used in pre-training (only matters to reproduce its exact numerics)",
    "add_cross_attention": "cross-attention to an encoder (False: decoder-only)",
    # training-time settings
    "attention_dropout": "dropout on attention weights during training (0 at inference)",
    "attn_pdrop": "dropout on attention weights during training",
    "embd_pdrop": "dropout on the embeddings during training",
    "resid_pdrop": "dropout on each block's output during training",
    "initializer_range": "standard deviation of the random initialisation",
    # special tokens and generation
    "bos_token_id": "beginning-of-sequence token id",
    "eos_token_id": "end-of-sequence token id: generation stops there",
    "pad_token_id": "padding token id (None: no padding token)",
    "use_cache": "keep keys and values of past tokens while generating (the KV cache)",
    # bookkeeping
    "model_type": "architecture family in transformers (gpt2, llama, ...)",
    "transformers_version": "transformers version that wrote the config",
    "architectures": "model classes the weights belong to",
    "torch_dtype": "dtype the weights were saved in",
    "dtype": "dtype the weights were saved in",
    # GPT-2's sequence-classification head (unused by a language model)
    "summary_type": "sequence-classification head: which position summarises the sequence (unused for LM)",
    "summary_use_proj": "sequence-classification head: add a projection (unused for LM)",
    "summary_activation": "sequence-classification head: activation (unused for LM)",
    "summary_proj_to_labels": "sequence-classification head: project to labels (unused for LM)",
    "summary_first_dropout": "sequence-classification head: dropout (unused for LM)",
}


def explain_config(config: Any) -> list[dict]:
    """Every field that the config sets (``to_diff_dict``): ``{"field", "value", "meaning"}``."""
    rows = []
    for name, value in sorted(config.to_diff_dict().items()):
        rows.append({"field": name, "value": value, "meaning": CONFIG_FIELDS.get(name, "(not described here)")})
    return rows


def meta_model(config: Any) -> nn.Module:
    """The causal LM of ``config`` with parameters on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


_COMPONENT = [
    (r"(wte|embed_tokens)\.", "token embedding"),
    (r"wpe\.", "position embedding"),
    (r"(attn|self_attn)\.", "attention"),
    (r"mlp\.", "MLP"),
    (r"(ln_1|ln_2|input_layernorm|post_attention_layernorm)\.", "block norms"),
    (r"(ln_f|model\.norm)\.", "final norm"),
    (r"lm_head\.", "unembedding"),
]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per component (a tied unembedding is the embedding: counted once, under the embedding)."""
    counts: Counter = Counter()
    for name, param in model.named_parameters():  # shared tensors appear once
        component = next((c for pattern, c in _COMPONENT if re.search(pattern, name)), "other")
        counts[component] += param.numel()
    counts["total"] = sum(counts.values())
    return dict(counts)


def module_tree(model: nn.Module, collapse: bool = True) -> str:
    """The module tree, one line per module with its class; repeated blocks shown once with ``x N``."""
    lines = []
    owner: dict[int, str] = {}  # parameter id -> first module that holds it (tied weights)

    def walk(module: nn.Module, name: str, depth: int) -> None:
        children = list(module.named_children())
        own = list(module.parameters(recurse=False))
        tied = [owner[id(p)] for p in own if id(p) in owner]
        for p in own:
            owner.setdefault(id(p), name)
        params = sum(p.numel() for p in own)
        extra = f"  [tied to {tied[0]}]" if tied else f"  [{params:,} params]" if params else ""
        lines.append(f"{'  ' * depth}{name or type(module).__name__}: {type(module).__name__}{extra}")
        if collapse and isinstance(module, nn.ModuleList) and len(children) > 1:
            walk(children[0][1], f"({children[0][0]}) x {len(children)}", depth + 1)
            return
        for child_name, child in children:
            walk(child, child_name, depth + 1)

    walk(model, "", 0)
    return "\n".join(lines)


def anatomy(model_or_config: Any) -> dict:
    """Module tree, parameter counts and explained config of a model (bridge or ``transformers``) or config.

    The model is rebuilt from its config on the meta device: TransformerLens's bridge wraps every
    module in hook points (and gives the unembedding a zero bias), which would bury the architecture.
    """
    config = getattr(getattr(model_or_config, "original_model", model_or_config), "config", model_or_config)
    model = meta_model(config)
    return {"tree": module_tree(model), "parameters": parameter_counts(model), "config": explain_config(config)}
