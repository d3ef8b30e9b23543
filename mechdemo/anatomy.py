"""Anatomy of a decoder-only model: module tree, parameter counts per component, the config and the
block's projections explained.

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
    "original_max_position_embeddings": "context of pre-training, before any RoPE scaling stretched it (Phi-3)",
    "sliding_window": "each position attends to at most this many earlier positions (local attention; Phi-3: 2047)",
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


# The projections of one block, by the module's name in transformers ({...}: sizes from the config).
MODULE_ROLES: dict[str, str] = {
    "c_attn": "W_Q, W_K and W_V of every head fused in one matrix (with bias): {q} + {kv} + {kv} outputs",
    "c_proj": "output projection W_O (attention) or down projection (MLP) back to d_model, with bias",
    "c_fc": "MLP up projection to d_mlp = {m}, then GELU",
    "q_proj": "W_Q: {q} outputs = {h} query heads x d_head {dh}",
    "k_proj": "W_K: {kv} outputs = {kvh} K/V heads x d_head {dh}",
    "v_proj": "W_V: {kv} outputs = {kvh} K/V heads x d_head {dh}",
    "qkv_proj": "W_Q, W_K and W_V fused in one matrix: output rows 0-{q_end} are the {h} query heads, then {kv} "
                "rows of keys and {kv} of values ({kvh} K/V heads x d_head {dh}); TransformerLens splits it into "
                "W_Q, W_K, W_V and hooks q, k, v as for Llama",
    "o_proj": "W_O: the {h} heads' outputs ({q}) back to d_model",
    "gate_proj": "gated MLP, gate: d_model -> d_mlp {m}, through SiLU",
    "up_proj": "gated MLP, up: d_model -> d_mlp {m}, multiplied by the gate",
    "gate_up_proj": "gated MLP, gate and up fused in one matrix: output rows 0-{m_end} are the gate (through SiLU), "
                    "rows {m}-{m2_end} the up projection they multiply: down(SiLU(gate x) * up x), as in Llama",
    "down_proj": "gated MLP, down: d_mlp {m} -> d_model",
}


def explain_modules(model: nn.Module) -> list[dict]:
    """The linear layers of the model's first block, ``{"module", "shape", "meaning"}`` (shape:
    ``[out, in]``), with what each computes (fused matrices: which rows are what)."""
    from mechdemo.architecture import architecture_of

    a = architecture_of(model.config)
    sizes = {"q": a.n_heads * a.d_head, "kv": a.n_kv_heads * a.d_head, "h": a.n_heads, "kvh": a.n_kv_heads,
             "dh": a.d_head, "m": a.d_mlp, "q_end": a.n_heads * a.d_head - 1, "m_end": a.d_mlp - 1,
             "m2_end": 2 * a.d_mlp - 1}
    block = next(m for m in model.modules() if isinstance(m, nn.ModuleList))[0]
    rows = []
    for name, module in block.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)
        if leaf in MODULE_ROLES and weight is not None and weight.dim() == 2:
            shape = list(weight.shape) if not type(module).__name__ == "Conv1D" else list(weight.shape[::-1])
            rows.append({"module": name, "shape": shape, "meaning": MODULE_ROLES[leaf].format(**sizes)})
    return rows


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
    """Module tree, parameter counts, explained config and explained block projections (``modules``,
    :func:`explain_modules`) of a model (bridge or ``transformers``) or config.

    The model is rebuilt from its config on the meta device: TransformerLens's bridge wraps every
    module in hook points (and gives the unembedding a zero bias), which would bury the architecture.
    """
    config = getattr(getattr(model_or_config, "original_model", model_or_config), "config", model_or_config)
    model = meta_model(config)
    return {"tree": module_tree(model), "parameters": parameter_counts(model), "config": explain_config(config),
            "modules": explain_modules(model)}
