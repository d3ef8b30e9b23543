"""Head scores: hand-computed cases, TransformerLens's head detector, and real induction heads."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import head_detector

from mechdemo.cli import main
from mechdemo.errors import MechdemoError
from mechdemo.heads import (
    HEAD_TYPES,
    head_scores,
    head_targets,
    induction_attention_at_offset,
    pattern_score,
    per_token_loss,
    standard_head_scores,
    top_heads,
)
from mechdemo.tokens import repeated_random_tokens


def uniform_causal(n: int) -> torch.Tensor:
    p = torch.tril(torch.ones(n, n))
    return (p / p.sum(-1, keepdim=True))[None, None]  # [batch 1, head 1, q, k]


def test_targets_by_hand():
    tokens = torch.tensor([[0, 5, 6, 5, 6]])
    assert head_targets(tokens, "previous_token")[0].nonzero().tolist() == [[1, 0], [2, 1], [3, 2], [4, 3]]
    assert head_targets(tokens, "duplicate_token")[0].nonzero().tolist() == [[3, 1], [4, 2]]
    # induction: query 3 (token 5) -> key 2 (after the earlier 5); query 4 (token 6) -> key 3
    assert head_targets(tokens, "induction")[0].nonzero().tolist() == [[3, 2], [4, 3]]
    assert head_targets(tokens, "first_token")[0].nonzero().tolist() == [[1, 0], [2, 0], [3, 0], [4, 0]]


def test_uniform_pattern_scores_by_hand():
    tokens = torch.tensor([[0, 5, 6, 5, 6]])
    p = uniform_causal(5)  # query q spreads 1/(q+1) over keys 0..q
    expected = {
        "previous_token": (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4,
        "current_token": (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4,
        "first_token": (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4,
        "duplicate_token": (1 / 4 + 1 / 5) / 2,
        "induction": (1 / 4 + 1 / 5) / 2,
    }
    for t, value in expected.items():
        assert pattern_score(p, head_targets(tokens, t)).item() == pytest.approx(value)


def test_perfect_heads_score_one():
    tokens = torch.tensor([[0, 7, 8, 9, 7, 8, 9]])
    for t in ("previous_token", "induction", "duplicate_token"):
        target = head_targets(tokens, t).float()
        has = target.sum(-1, keepdim=True)
        # attend uniformly over the rule's keys where there are any, else to BOS
        p = torch.where(has > 0, target / has.clamp_min(1), torch.nn.functional.one_hot(torch.zeros(7, dtype=torch.long), 7).float())
        assert pattern_score(p[:, None], head_targets(tokens, t)).item() == pytest.approx(1.0)
        other = "previous_token" if t != "previous_token" else "current_token"
        assert pattern_score(p[:, None], head_targets(tokens, other)).item() < 0.5


@pytest.mark.parametrize("kind", ["previous_token_head", "duplicate_token_head", "induction_head"])
def test_scores_equal_transformer_lens_head_detector(model, kind):
    text = "The cat sat on the mat. The cat sat on the mat, and the cat was happy."
    tokens = model.to_tokens(text)
    ours = head_scores(model, tokens, all_queries=True)[kind.removesuffix("_head")]
    theirs = head_detector.detect_head(model, text, kind, error_measure="mul")
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def repeated(model):
    return repeated_random_tokens(model, batch=8, seq_len=50, seed=0)


def test_repeated_sequence_second_half_is_learned_in_context(model, repeated):
    loss = per_token_loss(model, repeated)
    first, second = loss[:, 1:50].mean().item(), loss[:, 51:].mean().item()
    assert first > 9  # random tokens: no better than chance
    assert second < 0.4 * first


def test_top_induction_heads_attend_to_the_token_after_the_previous_occurrence(model, repeated):
    scores = head_scores(model, repeated)
    top = top_heads(scores["induction"], 3)
    layers = sorted({l for l, _, _ in top})
    with torch.no_grad():
        _, cache = model.run_with_cache(repeated, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in layers])
    for l, h, _ in top:
        assert induction_attention_at_offset(cache[f"blocks.{l}.attn.hook_pattern"][:, h : h + 1], 50).item() > 0.4
    median = scores["induction"].median().item()
    assert top[-1][2] > 10 * max(median, 1e-3)


def test_standard_scores_shapes_and_ranges(model):
    scores = standard_head_scores(model, batch=2, seq_len=20)
    for t in HEAD_TYPES:
        assert scores[t].shape == (model.cfg.n_layers, model.cfg.n_heads)
        assert scores[t].min() >= 0 and scores[t].max() <= 1 + 1e-6


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_head_scores_on_gpt2_and_llama_code_paths(name, random_bridge):
    bridge = random_bridge(name)
    tokens = repeated_random_tokens(bridge, batch=2, seq_len=10)
    scores = head_scores(bridge, tokens)
    n_heads = 12 if name == "gpt2" else 32
    assert all(s.shape == (2, n_heads) for s in scores.values())
    # a random model attends roughly uniformly: scores are small and no NaN
    assert all(torch.isfinite(s).all() and s.max() < 0.6 for s in scores.values())


def test_bad_sequence_length_is_explained(model):
    with pytest.raises(MechdemoError, match="--seq-len"):
        repeated_random_tokens(model, seq_len=10_000)


def test_cli_heads_json(capsys):
    assert main(["heads", "--json", "--batch", "2", "--seq-len", "20"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "smollm2-135m"
    assert set(data["scores"]) == set(HEAD_TYPES)
    for rows in data["scores"].values():
        assert len(rows) == 30 and all(len(r) == 9 for r in rows)
