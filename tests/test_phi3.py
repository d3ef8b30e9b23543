"""Phi-3-mini-4k-instruct, the model of the course's generation guide, offline: its published config
(sizes, parameter count, anatomy with the fused projections) and a random-weight Phi-3 of that
config with fewer layers (bridge against HF, generation by hand against ``generate``, the KV-cache
figures). No PyPI package ships Phi-3's tokenizer (Llama 2's SentencePiece vocabulary + 11 added
tokens): the random model borrows the offline model's, and only prompts whose ids fit Phi-3's
32,064 rows are fed to it (checked)."""

from __future__ import annotations

import pytest
import torch

from mechdemo.models import get_spec, random_model

NAME = "microsoft/Phi-3-mini-4k-instruct"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def phi3():
    """2 layers of Phi-3's config at its real vocabulary (32,064), narrowed to d_model 192 (2 heads of 96)."""
    model = random_model(NAME, n_layers=2, d_model=192, seed=2)
    assert max(model.to_tokens(PROMPT)[0].tolist()) < 32064
    return model


def test_the_registry_entry_and_the_published_config():
    spec = get_spec("phi-3-mini")
    assert spec.name == NAME and get_spec("Phi-3-mini-4k-instruct") is spec and not spec.gated
    a = spec.architecture
    assert (a.family, a.n_layers, a.d_model, a.n_heads, a.n_kv_heads, a.d_head, a.d_mlp, a.d_vocab, a.n_ctx) == \
        ("phi3", 32, 3072, 32, 32, 96, 8192, 32064, 4096)
    assert (a.norm, a.positions, a.gated_mlp, a.tied_embeddings) == ("RMSNorm", "rotary", True, False)
    assert a.n_params == 3_821_079_552  # "3.8B" (Abdin et al. 2024); tests/test_models counts it on the HF model
    assert spec.accelerator_dtype == torch.bfloat16 and spec.packaged_tokenizer is None


def test_anatomy_explains_the_fused_projections_from_the_config_alone():
    from mechdemo.anatomy import anatomy

    a = anatomy(get_spec(NAME).published_config())
    assert "(0) x 32: Phi3DecoderLayer" in a["tree"] and "qkv_proj" in a["tree"] and "gate_up_proj" in a["tree"]
    assert not [row["field"] for row in a["config"] if row["meaning"].startswith("(not")]
    modules = {row["module"]: row for row in a["modules"]}
    assert modules["self_attn.qkv_proj"]["shape"] == [3 * 3072, 3072]
    assert "rows 0-3071 are the 32 query heads" in modules["self_attn.qkv_proj"]["meaning"]
    assert modules["mlp.gate_up_proj"]["shape"] == [2 * 8192, 3072]
    assert "rows 0-8191 are the gate" in modules["mlp.gate_up_proj"]["meaning"]


def test_the_bridge_runs_phis_modules_and_splits_the_fused_qkv(phi3):
    hf = phi3.original_model
    tokens = phi3.to_tokens(PROMPT)
    with torch.no_grad():
        torch.testing.assert_close(phi3(tokens), hf(tokens).logits, rtol=0, atol=1e-5)
        _, cache = phi3.run_with_cache(tokens)
    n, d, dh = tokens.shape[1], 192, 96
    assert cache["blocks.0.attn.hook_q"].shape == (1, n, 2, dh) and cache["blocks.0.mlp.hook_post"].shape == (1, n, 512)
    # hook_k is the key third of qkv_proj applied to the normalised input (before the rotation)
    layer = hf.model.layers[0]
    normed = layer.input_layernorm(cache["blocks.0.hook_resid_pre"])
    keys = normed @ layer.self_attn.qkv_proj.weight[d : 2 * d].T
    torch.testing.assert_close(cache["blocks.0.attn.hook_k"].flatten(-2), keys, rtol=1e-4, atol=1e-5)


def test_generation_by_hand_equals_transformers_generate(phi3):
    from mechdemo.generation import beam_search, generate

    ids = phi3.to_tokens(PROMPT)
    hf = phi3.original_model
    reference = hf.generate(ids, do_sample=False, max_new_tokens=6)[0, ids.shape[1]:].tolist()
    for use_cache in (True, False):
        assert generate(phi3, PROMPT, "greedy", 6, use_cache=use_cache).new_ids == reference
    beams = hf.generate(ids, do_sample=False, num_beams=3, max_new_tokens=5)[0, ids.shape[1]:].tolist()
    assert beam_search(phi3, PROMPT, 3, 5).new_ids == beams


def test_generation_stops_where_the_instruct_model_does(phi3, monkeypatch):
    """The Hub's generation_config.json of Phi-3-mini-4k-instruct ends at <|endoftext|> (32000),
    <|assistant|> (32001) and <|end|> (32007), not only at the tokenizer's EOS."""
    from mechdemo.generation import generate, stop_ids

    monkeypatch.setattr(phi3.original_model.generation_config, "eos_token_id", [32000, 32001, 32007])
    assert {32000, 32001, 32007} <= stop_ids(phi3)
    first = generate(phi3, PROMPT, "greedy", 3, stop_at_eos=False).new_ids[0]
    monkeypatch.setattr(phi3.original_model.generation_config, "eos_token_id", [first])
    assert generate(phi3, PROMPT, "greedy", 3).new_ids == [first]


def test_the_kv_cache_figures_on_phi3(phi3, tmp_path, monkeypatch):
    from mechdemo.figures.registry import run_figures
    from mechdemo.generation import kv_cache_bytes_of, measured_cache_bytes

    hf = phi3.original_model
    cache = hf(phi3.to_tokens(PROMPT), use_cache=True).past_key_values
    assert measured_cache_bytes(cache) == kv_cache_bytes_of(hf.config, phi3.to_tokens(PROMPT).shape[1])
    # the published model in bf16, 1,000 tokens: 2 x 32 layers x 32 K/V heads x 96 x 1000 x 2 bytes
    assert kv_cache_bytes_of(get_spec(NAME).published_config(), 1000, torch.bfloat16) == 393_216_000
    monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path / "cache"))
    names = ["kv_cache", "kv_cache_memory", "architecture_table"]
    entries = run_figures(names, model_name=NAME, out_dir=tmp_path / "img", progress=False, scale="small",
                          models={NAME: phi3})
    memory = entries["kv_cache_memory"]["results"]
    assert list(memory["kv_cache_mb_1000_tokens"]) == [NAME, "gpt2", "meta-llama/Llama-3.2-1B"]
    assert memory["loaded"]["query_head_overstatement"] == 1  # no GQA in Phi-3-mini
    assert entries["kv_cache"]["results"]["forward_passes"] == 6
