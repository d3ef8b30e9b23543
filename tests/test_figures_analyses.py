"""Half of `make test`'s small-scale run of every figure function (the other half, and why two:
tests/test_figures.py): the attention, circuit and IOI analyses."""

from __future__ import annotations

import pytest

ANALYSES = ("attention", "induction", "circuits", "ioi")


def test_analysis_figures_run_end_to_end_at_small_scale(small_figure_run):
    r = small_figure_run(ANALYSES)
    # invariants of the analyses, whatever the scale
    assert r["dla"]["max_sum_error"] < 1e-3  # DLA's parts add up to the logit difference
    faith = r["path-patching"]["circuit"]["faithfulness"]
    assert faith["faithfulness"] == pytest.approx(faith["logit_diff_circuit"] / faith["logit_diff_full"], abs=2e-3)
