"""Model loading: the offline default against plain transformers, and the GPT-2 / Llama code paths
built offline from their published configs with random weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mechdemo.architecture import architecture_of
from mechdemo.models import MODELS, get_spec

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "import numpy as np\nx = np.",
]


def test_default_model_completes_paris_offline(model):
    assert model.cfg.model_name == "smollm2-135m"
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        next_id = model(tokens)[0, -1].argmax().item()
    assert model.tokenizer.decode([next_id]) == " Paris"


@pytest.mark.full  # transformers dequantizes the GGUF itself (30 s)
def test_logits_equal_plain_transformers_from_the_gguf(model, gguf_path):
    """The reference is transformers reading the GGUF file itself (not our cache), eager attention.

    Tolerance: the bridge runs the very same HF modules on the same float32 weights (our cache
    stores the dequantized tensors bit for bit), so the logits agree exactly; we allow 1e-5
    absolute (logits here are O(10)) only for kernel scheduling differences across platforms.
    """
    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            ours = model(tokens)
            theirs = ref(tokens).logits
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_published_config_matches_the_gguf(model):
    assert get_spec("smollm2-135m").architecture == architecture_of(model.original_model.config)


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_formula(name):
    """Architecture.n_params (used in figures and `mechdemo models`) counts what the HF model holds."""
    config = get_spec(name).published_config()
    with torch.device("meta"):  # full-size model, no memory
        hf = AutoModelForCausalLM.from_config(config)
    assert architecture_of(config).n_params == sum(p.numel() for p in hf.parameters())


def test_published_sizes():
    gpt2 = get_spec("gpt2").architecture
    assert (gpt2.n_layers, gpt2.d_model, gpt2.n_heads, gpt2.d_mlp, gpt2.d_vocab) == (12, 768, 12, 3072, 50257)
    llama = get_spec("llama-3.2-1b").architecture
    assert (llama.n_layers, llama.d_model, llama.n_heads, llama.n_kv_heads, llama.d_mlp) == (16, 2048, 32, 8, 8192)
    assert llama.d_vocab == 128256 and round(llama.n_params / 1e9, 2) == 1.24
    assert round(gpt2.n_params / 1e6) == 124


@pytest.fixture(params=["gpt2", "meta-llama/Llama-3.2-1B"])
def named_random_bridge(request, random_bridge):
    return request.param, random_bridge(request.param)


def test_random_model_forward_equals_hf(named_random_bridge):
    name, bridge = named_random_bridge
    tokens = bridge.to_tokens(PROMPTS[1])
    with torch.no_grad():
        ours = bridge(tokens)
        theirs = bridge.original_model(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_random_model_hooks_and_shapes(named_random_bridge):
    name, bridge = named_random_bridge
    arch = get_spec(name).architecture
    tokens = bridge.to_tokens(PROMPTS[0])
    n_pos = tokens.shape[1]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    assert bridge.cfg.n_layers == 2
    for layer in range(2):
        assert cache[f"blocks.{layer}.hook_resid_pre"].shape == (1, n_pos, arch.d_model)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (1, arch.n_heads, n_pos, n_pos)
        assert cache[f"blocks.{layer}.attn.hook_q"].shape == (1, n_pos, arch.n_heads, arch.d_head)
        # GQA: keys and values have n_kv_heads (8 for Llama 3.2 1B, 12 = n_heads for GPT-2)
        assert cache[f"blocks.{layer}.attn.hook_k"].shape == (1, n_pos, arch.n_kv_heads, arch.d_head)
        assert cache[f"blocks.{layer}.attn.hook_v"].shape == (1, n_pos, arch.n_kv_heads, arch.d_head)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (1, n_pos, arch.n_heads, arch.d_head)
        assert cache[f"blocks.{layer}.hook_mlp_out"].shape == (1, n_pos, arch.d_model)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        assert torch.all(pattern.triu(1) == 0)  # causal
    assert bridge.W_K.shape == (2, arch.n_kv_heads, arch.d_model, arch.d_head)
    assert bridge.W_Q.shape == (2, arch.n_heads, arch.d_model, arch.d_head)
    if name == "gpt2":
        assert "hook_pos_embed" in cache and "blocks.0.attn.hook_rot_q" not in cache
        assert not arch.is_gqa and bridge.cfg.normalization_type == "LN"
        normalized = cache["blocks.0.ln1.hook_normalized"]
        # LayerNorm centres each vector: mean 0 (RMSNorm does not)
        torch.testing.assert_close(normalized.mean(-1), torch.zeros_like(normalized.mean(-1)), atol=1e-5, rtol=0)
    else:
        assert "hook_pos_embed" not in cache and "blocks.0.attn.hook_rot_q" in cache
        assert arch.n_heads == 32 and arch.n_kv_heads == 8 and bridge.cfg.n_key_value_heads == 8
        assert bridge.cfg.normalization_type == "RMS" and bridge.cfg.positional_embedding_type == "rotary"
        x = cache["blocks.0.hook_resid_pre"]
        normalized = cache["blocks.0.ln1.hook_normalized"]
        # RMSNorm: x / rms(x), no centring
        expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + arch.norm_eps)
        torch.testing.assert_close(normalized, expected, atol=1e-5, rtol=1e-5)


def test_per_model_analysis_choices_live_in_the_registry():
    """The MLP layer of the activation figures and the SAE layer come from ModelSpec: Llama 3.2 1B's
    course choice (8), the middle layer otherwise, clamped for a few-layer random test model."""
    llama, gpt2, smol = get_spec("meta-llama/Llama-3.2-1B"), get_spec("gpt2"), get_spec("smollm2-135m")
    assert (llama.activation_layer(16), llama.default_sae_layer(16)) == (8, 8)
    assert (gpt2.activation_layer(12), gpt2.default_sae_layer(12)) == (6, 6)
    assert (smol.activation_layer(30), smol.default_sae_layer(30)) == (8, 15)
    assert llama.activation_layer(2) == 1 and gpt2.activation_layer(2) == 1


def test_figure_code_does_not_compare_model_names():
    """Per-model choices belong in the registry: no figure module names a registered model."""
    from pathlib import Path

    from mechdemo.models import MODELS

    names = {n for spec in MODELS.values() for n in (spec.name, *spec.aliases)}
    figures = Path(__file__).resolve().parents[1] / "mechdemo" / "figures"
    for module in figures.glob("*.py"):
        code = module.read_text(encoding="utf-8")
        for name in names:
            assert f'"{name}"' not in code and f"'{name}'" not in code, f"{module.name} names the model {name!r}"
