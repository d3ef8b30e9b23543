"""Circuit discovery (#18): circuits from edge scores, their measurement, the CLI, and IOI prompts of
mixed token lengths. The methods themselves (edge patching, EAP, EAP-IG) are checked against
independent references in test_edge_patching.py."""

from __future__ import annotations

import json

import pytest
import torch

from mechdemo import circuit_discovery as ep
from mechdemo.circuit_discovery import curve_sizes, heads_in, node_circuit, smallest_circuit
from mechdemo.cli import main
from mechdemo.errors import MechdemoError
from mechdemo.ioi import load_prompts, logit_diff_of
from mechdemo.metrics import LogitDifference

PROMPTS = [  # different sentence frames and name lengths: several token lengths
    {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"},
    {"prompt": "Then, Alice and Bob went to the park. Bob gave a ball to", "correct": " Alice", "incorrect": " Bob"},
    {"prompt": "After Sarah and Tom had lunch at the old restaurant downtown, Tom handed the bill to",
     "correct": " Sarah", "incorrect": " Tom"},
    {"prompt": "Kate and Paul met. Paul gave a book to", "correct": " Kate", "incorrect": " Paul"},
    {"prompt": "When Emma and David went to the beach, David gave a snack to", "correct": " Emma", "incorrect": " David",
     "corrupted": "When Emma and David went to the beach, Peter gave a snack to"},
]


def _write(tmp_path, records) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def test_curve_sizes_are_log_spaced_up_to_the_whole_graph():
    assert curve_sizes(70651, per_decade=2) == [10, 32, 100, 316, 1000, 3162, 10000, 31623, 70651]
    assert curve_sizes(5, per_decade=2) == [5]


def test_a_node_circuit_holds_exactly_the_edges_among_its_nodes():
    graph = ep.ComputeGraph(n_layers=3, n_heads=4, n_kv_heads=2)
    circuit = node_circuit(graph, [(0, 1), (2, 3)])
    on = lambda s, r: bool(circuit[s, r])  # noqa: E731
    assert on(graph.head(0, 1), graph.q(2).start + 3)  # a circuit head into a circuit head's query
    assert on(graph.head(0, 1), graph.k(2).start + 1)  # ... into the K/V head that head 3 shares with head 2
    assert not on(graph.head(0, 0), graph.q(2).start + 3)  # from a head outside
    assert not on(graph.head(0, 1), graph.q(2).start + 2)  # into a head outside (its own query)
    assert on(graph.mlp(1), graph.logits) and on(0, graph.mlp_in(0)) and on(graph.head(2, 3), graph.mlp_in(2))
    assert heads_in(graph, circuit) == [(0, 1), (2, 3)]
    assert bool((circuit <= graph.edges).all())


def test_the_smallest_circuit_is_measured_and_reaches_the_target(random_bridge):
    model = random_bridge("gpt2")
    graph = ep.ComputeGraph.of(model)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(100, 5000, (4, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = torch.randint(100, 5000, (4,), generator=g)
    pairs = [ep.PromptPairs(clean, corrupted, LogitDifference(clean[:, 1], clean[:, 2]))]
    base = ep.baselines(model, graph, pairs)
    scores = ep.random_scores(graph, seed=2)
    found = smallest_circuit(model, graph, base, scores, 0.5)
    assert found["reached"] and found["faithfulness"] >= 0.5
    assert found["faithfulness"] == pytest.approx(ep.edge_patching_faithfulness(model, graph, base, found["circuit"]))
    assert found["edges"] == int(found["circuit"].sum()) <= found["top"]
    assert not smallest_circuit(model, graph, base, scores, 1.5)["reached"]


def test_prompts_of_any_length_give_each_prompt_its_own_result(model, tmp_path, capsys):
    """Grouped by token length, every result equals the prompt's run alone, in file order."""
    path = _write(tmp_path, PROMPTS)
    batches = load_prompts(model, path)
    assert len({b.tokens.shape[1] for b in batches}) == len(batches) >= 3
    assert sorted(r for b in batches for r in b.rows) == list(range(len(PROMPTS)))
    assert main(["ioi", "--prompts", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_prompts"] == len(PROMPTS) and "corrupted_logit_diff_mean" in out
    for i, record in enumerate(PROMPTS):
        alone = load_prompts(model, _write(tmp_path, [record]))[0]
        expected = logit_diff_of(model, alone.tokens, alone).item()
        assert out["logit_diff_per_prompt"][i] == pytest.approx(expected, abs=1e-3), record["prompt"]
    # the corruption: the file's own, or S2 replaced by another name of the same token length
    by_row = {r: (b, j) for b in batches for j, r in enumerate(b.rows)}
    b, j = by_row[4]
    assert model.to_string(b.corrupted_tokens[j]).endswith(PROMPTS[4]["corrupted"])
    b, j = by_row[0]
    differs = (b.tokens[j] != b.corrupted_tokens[j]).nonzero().flatten().tolist()
    assert len(differs) == 1 and b.tokens[j][differs[0]] == b.incorrect[j]  # the second John, S2


@pytest.mark.parametrize("records, message", [
    ([{**PROMPTS[0], "corrupted": "When Mary and John went to the store, Christopherson gave a drink to"}],
     r"prompts.jsonl:1: the corrupted prompt is \d+ tokens and the prompt \d+"),
    ([{**PROMPTS[0], "corrupted": 3}], r'prompts.jsonl:1: "corrupted" must be a string'),
    ([], r"holds no prompts"),
])
def test_bad_prompt_files_name_the_line_and_the_fix(model, tmp_path, records, message):
    with pytest.raises(MechdemoError, match=message):
        load_prompts(model, _write(tmp_path, records))


def test_circuit_cli_finds_and_measures_a_circuit(model, monkeypatch, capsys, tmp_path):
    from mechdemo import models

    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    assert main(["circuit", "--method", "eap", "--edges", "300", "--n", "1", "--top", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"model", "method", "n_edges", "top_edges", "circuit", "circuit_edges", "prompts"} <= set(out)
    assert out["n_edges"] == ep.ComputeGraph.of(model).n_edges == 70651
    assert len(out["top_edges"]) == 5 and out["circuit"]["edges"] == len(out["circuit_edges"]) <= 300
    scores = [abs(e["score"]) for e in out["top_edges"]]
    assert scores == sorted(scores, reverse=True)
    assert -0.5 < out["circuit"]["faithfulness"] < 1.5 and out["n_prompts"] == {"discovery": 4, "evaluation": 4}
    # a user's prompts without a corruption the tool can build: the line is named
    path = _write(tmp_path, [PROMPTS[0], {"prompt": "Mary and John talked. Then someone thanked", "correct": " Mary",
                                          "incorrect": " Bob"}])
    assert main(["circuit", "--prompts", path, "--edges", "10"]) == 2
    assert "prompts.jsonl:2: no corrupted prompt" in capsys.readouterr().err
