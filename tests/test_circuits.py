"""QK/OV circuits: GQA mapping against the real forward pass, folding against real scores,
composition and eigenvalue scores against TransformerLens / independent computations."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities.matrix import composition_scores

from mechdemo.weight_circuits import (
    check_head,
    copying_scores,
    effective_embedding,
    full_ov_circuit,
    head_weights,
    k_composition_scores,
    kv_head,
    mean_score_by_offset,
    ov_circuit,
    ov_eigenvalue_scores,
    positional_qk,
    qk_circuit,
    unembedding,
)
from mechdemo.errors import OutOfRangeError
from mechdemo.heads import standard_head_scores, top_heads
from mechdemo.tokens import repeated_random_tokens, word_token_ids

ARCHS = ["gpt2", "meta-llama/Llama-3.2-1B"]


@pytest.mark.parametrize("which", ["default", *ARCHS])
def test_kv_head_mapping_reproduces_the_forward_pass(which, model, random_bridge):
    """z of query head h = pattern_h @ v of kv_head(h): checked against the model's own hook_z."""
    bridge = model if which == "default" else random_bridge(which)
    tokens = bridge.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    for layer in range(min(2, bridge.cfg.n_layers)):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, q, k]
        v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [k, kv_head, d_head]
        z = cache[f"blocks.{layer}.attn.hook_z"][0]  # [q, head, d_head]
        for h in range(bridge.cfg.n_heads):
            torch.testing.assert_close(pattern[h] @ v[:, kv_head(bridge, h)], z[:, h], atol=1e-5, rtol=1e-4)
    if which == "meta-llama/Llama-3.2-1B":
        assert [kv_head(bridge, h) for h in (0, 3, 4, 31)] == [0, 0, 1, 7]


@pytest.mark.parametrize("name", ARCHS)
def test_unfolded_circuits_equal_transformer_lens(name, random_bridge):
    bridge = random_bridge(name)
    ours_qk, ours_ov = qk_circuit(bridge, fold_norms=False), ov_circuit(bridge, fold_norms=False)
    for layer, head in [(0, 0), (1, 5), (1, bridge.cfg.n_heads - 1)]:  # d_model x d_model each: a few heads
        torch.testing.assert_close(ours_qk[layer, head].AB, bridge.QK[layer, head].AB.float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours_ov[layer, head].AB, bridge.OV[layer, head].AB.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [pytest.param(a, marks=[pytest.mark.full] if "Llama" in a else []) for a in ARCHS])
def test_fast_k_composition_equals_transformer_lens(name, random_bridge):  # TL's Llama version: 30 s, `make check`
    bridge = random_bridge(name)
    theirs = bridge.all_composition_scores("K").scores
    torch.testing.assert_close(k_composition_scores(bridge, fold_norms=False), theirs.float(), atol=1e-6, rtol=1e-4)
    folded = composition_scores(ov_circuit(bridge), qk_circuit(bridge).T)
    earlier = torch.arange(2)[:, None, None, None] < torch.arange(2)[None, None, :, None]
    torch.testing.assert_close(k_composition_scores(bridge), torch.where(earlier, folded, 0.0), atol=1e-6, rtol=1e-4)


def test_folded_qk_reproduces_gpt2_attention_scores(random_bridge):
    """With norm weights folded in, (norm-scaled x) W_QK x^T / sqrt(d_head) are the model's scores."""
    bridge = random_bridge("gpt2")
    ln = bridge.blocks[0].ln1.original_component
    attn = bridge.original_model.transformer.h[0].attn
    saved = (ln.weight.data.clone(), ln.bias.data.clone(), attn.c_attn.bias.data.clone())
    try:
        torch.manual_seed(1)
        ln.weight.data = torch.rand_like(ln.weight) + 0.5  # a non-trivial gamma
        ln.bias.data.zero_()
        attn.c_attn.bias.data.zero_()  # the circuit ignores biases
        tokens = bridge.to_tokens("The cat sat on the mat.")
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens)
        x = cache["blocks.0.hook_resid_pre"][0]
        x_hat = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        qk = qk_circuit(bridge)
        scores = cache["blocks.0.attn.hook_attn_scores"][0]
        n = x.shape[0]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        for h in (0, 5, 11):
            expected = (x_hat @ qk[0, h].AB @ x_hat.T) / bridge.cfg.d_head**0.5
            torch.testing.assert_close(scores[h][causal], expected[causal], atol=1e-4, rtol=1e-4)
    finally:
        ln.weight.data, ln.bias.data, attn.c_attn.bias.data = saved


def test_eigenvalue_score_equals_dense_computation(model):
    ids = word_token_ids(model, 48, seed=3)
    fast = ov_eigenvalue_scores(model, ids)
    E = effective_embedding(model, ids)
    E = E / E.pow(2).mean(-1, keepdim=True).sqrt()
    w = head_weights(model)
    U = unembedding(model)[:, ids]
    for layer, head in [(0, 0), (17, 3), (23, 0)]:
        dense = E @ w["W_V"][layer, head] @ w["W_O"][layer, head] @ U  # [48, 48], rank <= 48 < d_head
        lam = torch.linalg.eigvals(dense.double())
        expected = (lam.sum().real / lam.abs().sum()).item()
        assert fast[layer, head].item() == pytest.approx(expected, abs=1e-3)


def test_full_ov_circuit_diagonal_matches_copying_score(model):
    ids = word_token_ids(model, 200, seed=5)
    copy = copying_scores(model, ids)
    (l, h, score), = top_heads(copy, 1)
    circuit = full_ov_circuit(model, l, h, ids)
    assert (circuit.argmax(-1) == torch.arange(200)).float().mean().item() == pytest.approx(score)


def test_copying_heads_are_real(model, random_bridge):
    """The offline model has heads whose OV circuit copies; a random model of the same family does not."""
    ids = word_token_ids(model, 500, seed=0)
    trained = copying_scores(model, ids)
    assert trained.max() > 0.4
    random_llama = random_bridge("meta-llama/Llama-3.2-1B")
    assert copying_scores(random_llama, ids).max() < 0.05  # chance is 1/500


def test_previous_token_heads_k_compose_with_induction_heads(model):
    scores = standard_head_scores(model)
    (pl, ph, _), = top_heads(scores["previous_token"], 1)
    kcomp = k_composition_scores(model)
    later = torch.arange(model.cfg.n_layers)[:, None, None, None] < torch.arange(model.cfg.n_layers)[None, None, :, None]
    baseline = kcomp[later.expand_as(kcomp)].mean()
    induction = [(l, h) for l, h, _ in top_heads(scores["induction"], 4) if l > pl]
    assert induction, "the top induction heads come after the top previous-token head"
    for l, h in induction:
        assert kcomp[pl, ph, l, h] > 2 * baseline


def test_positional_circuits(model, random_bridge):
    gpt2 = random_bridge("gpt2")
    assert positional_qk(gpt2, 1, 3, n_pos=16).shape == (16, 16)
    with pytest.raises(ValueError, match="rotary"):
        positional_qk(model, 0, 0)
    tokens = repeated_random_tokens(model, 2, 30)[:, :31]
    by_offset = mean_score_by_offset(model, 16, 0, tokens, max_offset=6)
    assert by_offset.shape == (7,) and by_offset.argmax().item() == 1  # L16H0 is a previous-token head


def test_out_of_range_names_the_valid_range(model):
    with pytest.raises(OutOfRangeError, match=r"layers 0\.\.29"):
        check_head(model, 30, 0)
    with pytest.raises(OutOfRangeError, match=r"heads 0\.\.8"):
        full_ov_circuit(model, 3, 9, torch.tensor([1, 2]))
