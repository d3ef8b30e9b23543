"""Decoding by hand against ``transformers``' generate, the sampling filters, and the KV-cache size."""

from __future__ import annotations

import json

import pytest
import torch

from mechdemo.errors import MechdemoError
from mechdemo.generation import (
    beam_search,
    generate,
    kv_cache_bytes,
    kv_cache_bytes_of,
    measured_cache_bytes,
    top_k_filter,
    top_p_filter,
)
from mechdemo.models import get_spec

PROMPT = "The capital of France is"


def _hf_new_tokens(model, ids, **kwargs) -> list[int]:
    out = model.original_model.generate(ids, do_sample=False, **kwargs)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_transformers_generate(model, use_cache):
    ids = model.to_tokens(PROMPT)
    ours = generate(model, ids, "greedy", max_new_tokens=12, use_cache=use_cache)
    assert ours.new_ids == _hf_new_tokens(model, ids, max_new_tokens=12)
    assert ours.forward_passes == 12
    assert "Paris" in model.tokenizer.decode(ours.new_ids)


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_equals_transformers_generate(model, use_cache):
    ids = model.to_tokens("Once upon a time, in a small village,")
    ours = beam_search(model, ids, num_beams=4, max_new_tokens=10, use_cache=use_cache)
    assert ours.new_ids == _hf_new_tokens(model, ids, num_beams=4, max_new_tokens=10)


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_greedy_and_beam_on_random_weight_gpt2_and_llama(random_bridge, name):
    """Learned positions and LayerNorm (GPT-2) or rotary and RMSNorm with GQA (Llama), cache and no cache."""
    model = random_bridge(name)
    ids = torch.tensor([[1, 17, 300, 42, 9]])
    reference = _hf_new_tokens(model, ids, max_new_tokens=6)
    for use_cache in (True, False):
        assert generate(model, ids, "greedy", 6, use_cache=use_cache, stop_at_eos=False).new_ids == reference
    beams = _hf_new_tokens(model, ids, num_beams=3, max_new_tokens=5)
    assert beam_search(model, ids, 3, 5, stop_at_eos=False).new_ids == beams


def test_seeded_sampling_is_reproducible_and_the_cache_does_not_change_it(model):
    runs = [generate(model, PROMPT, "top-p", 10, seed=3, p=0.9, use_cache=c).new_ids for c in (True, True, False)]
    assert runs[0] == runs[1] == runs[2]
    assert generate(model, PROMPT, "sample", 10, seed=4).new_ids != generate(model, PROMPT, "sample", 10, seed=5).new_ids


def test_top_k_and_top_p_never_sample_outside_their_sets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, generator=g) * 3
    probs = logits.softmax(-1)
    allowed_k = set(logits.topk(5).indices.tolist())
    ranked = probs.argsort(descending=True)
    n_nucleus = int((probs[ranked].cumsum(0) < 0.7).sum()) + 1  # smallest prefix reaching 0.7
    allowed_p = set(ranked[:n_nucleus].tolist())
    k_filtered, p_filtered = top_k_filter(logits, 5), top_p_filter(logits, 0.7)
    assert set(torch.isfinite(k_filtered).nonzero().flatten().tolist()) == allowed_k
    assert set(torch.isfinite(p_filtered).nonzero().flatten().tolist()) == allowed_p
    draws_k = torch.multinomial(k_filtered.softmax(-1), 5000, replacement=True, generator=g)
    draws_p = torch.multinomial(p_filtered.softmax(-1), 5000, replacement=True, generator=g)
    assert set(draws_k.tolist()) == allowed_k and set(draws_p.tolist()) == allowed_p  # all used, none outside
    with pytest.raises(MechdemoError, match="top-p"):
        top_p_filter(logits, 0.0)


def test_kv_cache_formula_equals_the_measured_cache(model, random_bridge):
    ids = model.to_tokens(PROMPT + " and the capital of Spain is Madrid.")
    cache = model.original_model(ids, use_cache=True).past_key_values
    n = ids.shape[1]
    assert measured_cache_bytes(cache) == kv_cache_bytes_of(model.original_model.config, n, torch.float32)
    # SmolLM2: 30 layers x 3 K/V heads x 64 (not 9 query heads: that would be 3x too much)
    assert measured_cache_bytes(cache) == kv_cache_bytes(30, 3, 64, n, 4)
    for name in ("gpt2", "meta-llama/Llama-3.2-1B"):
        hf = random_bridge(name).original_model
        cache = hf(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), use_cache=True).past_key_values
        assert measured_cache_bytes(cache) == kv_cache_bytes_of(hf.config, 7, torch.float32)
    # the published Llama 3.2 1B, bf16, 1,000 tokens: 2 x 16 x 8 x 64 x 1000 x 2 bytes = 32.8 MB (not 131 MB)
    assert kv_cache_bytes_of(get_spec("meta-llama/Llama-3.2-1B").published_config(), 1000, torch.bfloat16) == 32_768_000


def test_cli_generate_json(model, monkeypatch, capsys):
    """In-process through the CLI's main (the console entry point itself is tested in test_cli), with
    the session's model lent instead of a second load."""
    from mechdemo import models
    from mechdemo.cli import main

    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    assert main(["generate", "--prompt", PROMPT, "--strategy", "greedy", "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "Paris" in out["text"] and out["forward_passes"] == 6 and len(out["steps"]) == 6
    assert out["steps"][0][0]["token"] == " Paris"



def test_cli_refuses_wrong_sampling_settings_before_loading_the_model(monkeypatch, capsys):
    from mechdemo import models
    from mechdemo.cli import main

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    # the flags' types refuse these in argparse (exit 2, the flag named), before anything runs
    for argv, expected in ((["--strategy", "top-p", "--p", "1.5"], "argument --p: must be at most 1"),
                           (["--strategy", "top-k", "--k", "0"], "argument --k: must be at least 1"),
                           (["--strategy", "sample", "--temperature", "0"], "argument --temperature: must be more than 0")):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--prompt", PROMPT, *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
