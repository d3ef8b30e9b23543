"""Half of `make test`'s small-scale run of every figure function (the other half, and why two:
tests/test_figures.py): the attention, circuit, IOI and circuit-discovery analyses."""

from __future__ import annotations

import pytest

ANALYSES = ("attention", "induction", "weight_circuits", "ioi", "patching", "path_patching", "circuit_discovery")  # the IOI ones share runs


def test_analysis_figures_run_end_to_end_at_small_scale(small_figure_run):
    r = small_figure_run(ANALYSES)
    # invariants of the analyses, whatever the scale
    assert r["dla"]["max_sum_error"] < 1e-3  # DLA's parts add up to the logit difference
    faith = r["path-patching"]["circuit"]["faithfulness"]
    base = faith["logit_diff_all_heads_ablated"]
    assert faith["faithfulness"] == pytest.approx(
        (faith["logit_diff_circuit"] - base) / (faith["logit_diff_full"] - base), abs=2e-3)
    assert faith["logit_diff_ratio"] == pytest.approx(faith["logit_diff_circuit"] / faith["logit_diff_full"], abs=2e-3)
    curves = r["circuit-discovery-curve"]["curves"]
    assert {p["faithfulness"] for c in curves.values() for p in c[-1:]} == {1.0}  # the whole graph is the model
    target = r["circuit-discovery-curve"]["at_target"]
    assert target["reached"] and target["faithfulness"] >= target["target"]
    assert r["circuit-discovery-graph"]["n_shown"] <= r["circuit-discovery-graph"]["circuit_edges"]
