"""IOI: the dataset, the metric on the offline model, DLA, user prompt files, ablation, the circuit."""

from __future__ import annotations

import json

import pytest
import torch

from mechdemo.mean_ablation import logit_diff_with_ablation, mean_ablation_faithfulness, mean_head_outputs
from mechdemo.cli import main
from mechdemo.dla import direct_logit_attribution
from mechdemo.errors import MechdemoError
from mechdemo.models import offline_vocab_size, random_model
from mechdemo.ioi.circuit import ROLES
from mechdemo.ioi import (
    TEMPLATES,
    ioi_batch,
    ioi_batches,
    load_prompts,
    logit_diff_of,
)


@pytest.fixture(scope="module")
def batch(model):
    return ioi_batch(model, 0, 8)


def test_batches_are_aligned_and_single_token(model):
    for b in ioi_batches(model, 6):
        assert b.tokens.shape == b.corrupted_tokens.shape
        rows = torch.arange(len(b))
        assert (b.tokens[rows, b.positions["IO"]] == b.correct).all()
        assert (b.tokens[rows, b.positions["S1"]] == b.incorrect).all()
        assert (b.tokens[rows, b.positions["S2"]] == b.incorrect).all()
        # the corruption changes S2 and nothing else
        differs = (b.tokens != b.corrupted_tokens)
        assert differs.sum(1).eq(1).all() and differs[rows, b.positions["S2"]].all()
        assert set(b.orders) == {"ABBA", "BABA"}
    s1 = ioi_batch(model, 0, 6, corrupt="S1")
    assert s1.prompts == ioi_batch(model, 0, 6).prompts
    assert (s1.tokens != s1.corrupted_tokens)[torch.arange(6), s1.positions["S1"]].all()


def test_offline_model_does_ioi(model):
    diffs = torch.cat([logit_diff_of(model, b.tokens, b) for b in ioi_batches(model, 8)])
    assert diffs.mean() > 2.0 and (diffs > 0).float().mean() > 0.9
    corrupted = torch.cat([logit_diff_of(model, b.corrupted_tokens, b) for b in ioi_batches(model, 8)])
    assert corrupted.mean().abs() < 0.3 * diffs.mean()  # no repeated name, no preference


@pytest.mark.parametrize("which", ["default", "gpt2", "meta-llama/Llama-3.2-1B"])
def test_dla_parts_sum_to_the_logit_difference(which, model, random_bridge, batch):
    bridge = model if which == "default" else random_bridge(which)
    if which == "gpt2":  # a GPT-2 of its own with every bias and LayerNorm offset non-zero: the constant term must carry them
        bridge = random_model("gpt2", n_layers=2, seed=1, vocab_size=offline_vocab_size())
        torch.manual_seed(0)
        for p in bridge.original_model.parameters():
            if p.ndim == 1:
                p.data.add_(torch.randn_like(p) * 0.05)
    dla = direct_logit_attribution(bridge, batch.tokens, batch.correct, batch.incorrect)
    torch.testing.assert_close(dla.parts_sum(), dla.total, atol=1e-3, rtol=1e-4)
    assert dla.heads.shape == (len(batch), bridge.cfg.n_layers, bridge.cfg.n_heads)
    if which == "gpt2":
        assert dla.constant.abs().max() > 0 and dla.attn_bias.abs().max() > 0


def test_final_norm_scale_from_the_cache_is_the_rms(model, batch):
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names_filter=["ln_final.hook_in", "ln_final.hook_scale"])
    x = cache["ln_final.hook_in"]
    eps = model.ln_final.original_component.variance_epsilon
    torch.testing.assert_close(cache["ln_final.hook_scale"], (x.pow(2).mean(-1, keepdim=True) + eps).sqrt(), rtol=1e-5, atol=0)


def test_name_mover_heads_lead_the_dla(model, batch):
    dla = direct_logit_attribution(model, batch.tokens, batch.correct, batch.incorrect)
    heads = dla.heads.mean(0)
    assert heads.max() > 0.3 * dla.total.mean()  # a few heads write most of the answer


def _write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(l) if isinstance(l, dict) else l for l in lines) + "\n")
    return path


GOOD = {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}


def test_user_prompts(model, tmp_path, capsys):
    path = _write(tmp_path, [GOOD, {"prompt": "When Tom and Anna went to the park, Anna gave a ball to",
                                    "correct": " Tom", "incorrect": " Anna"}])
    batches = load_prompts(model, path)  # one token length: one batch
    assert len(batches) == 1 and batches[0].tokens.shape[0] == 2 and batches[0].rows == [0, 1]
    assert main(["ioi", "--prompts", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_prompts"] == 2 and len(out["logit_diff_per_prompt"]) == 2
    assert out["accuracy"] == 1.0 and len(out["dla_heads"]) == 30 and len(out["dla_heads"][0]) == 9
    assert abs(sum(map(sum, out["dla_heads"])) + sum(out["dla_mlp"]) + out["dla_embed"]
               + sum(out["dla_attn_bias"]) + out["dla_constant"] - out["logit_diff_mean"]) < 1e-2


@pytest.mark.parametrize("lines, message", [
    ([GOOD, {**GOOD, "correct": " Maryxyzzy"}], r"prompts.jsonl:2: correct answer ' Maryxyzzy' is 3 tokens"),
    ([GOOD, "{not json"], r"prompts.jsonl:2: not valid JSON"),
    ([{"prompt": "x"}], r"prompts.jsonl:1: expected"),
])
def test_bad_prompt_files_name_the_line(model, tmp_path, lines, message):
    with pytest.raises(MechdemoError, match=message):
        load_prompts(model, _write(tmp_path, lines))


def test_cli_ioi_templates(capsys):
    assert main(["ioi", "--n", "4", "--template", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_prompts"] == 4 and out["logit_diff_mean"] > 1 and "corrupted_logit_diff_mean" in out
    assert {"logit_diff_mean", "logit_diff_per_prompt", "accuracy", "dla_heads", "dla_mlp", "dla_embed"} <= set(out)


def test_mean_ablation(model, batch):
    means = mean_head_outputs(model, batch.corrupted_tokens)
    none = logit_diff_with_ablation(model, batch.tokens, batch.correct, batch.incorrect, means, [])
    torch.testing.assert_close(none, logit_diff_of(model, batch.tokens, batch), atol=1e-4, rtol=0)
    everything = [(l, h) for l in range(30) for h in range(9)]
    f = mean_ablation_faithfulness(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, everything)
    assert f["faithfulness"] == pytest.approx(1.0, abs=1e-3)  # the whole model is its own circuit
    assert abs(f["logit_diff_all_heads_ablated"]) < 0.5 * f["logit_diff_full"]
    empty = mean_ablation_faithfulness(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, [])
    assert empty["faithfulness"] == 0.0  # the empty circuit is the 0 of the scale, whatever LD it keeps
    assert empty["logit_diff_ratio"] == pytest.approx(empty["logit_diff_all_heads_ablated"] / empty["logit_diff_full"],
                                                      abs=1e-3)


def test_the_committed_circuit_has_the_structure_of_wang_et_al():
    """The circuit the deck shows: found by `make figures` (find_ioi_circuit on the offline model,
    the path-patching figure), recorded in img/manifest.json, and reproduced from scratch by `make
    check`'s full regeneration (test_committed_figures_are_reproduced). Here: that it has the
    structure the deck claims, read from that record (no second four-scan search in the suite)."""
    from pathlib import Path

    from mechdemo.figures.registry import read_manifest

    img = Path(__file__).resolve().parent.parent / "img"
    circuit = read_manifest(img)["figures"]["path-patching"]["results"]["circuit"]
    roles = circuit["roles"]
    assert set(roles) == set(ROLES)
    assert roles["name_mover"], "no name movers found"
    for h in roles["name_mover"]:
        assert h["effect"] > 0 and h["attention_end_to_IO"] >= 0.2
    assert roles["s_inhibition"] and roles["induction"] and roles["previous_token"]
    nm_layers = min(h["layer"] for h in roles["name_mover"])
    assert all(h["layer"] < nm_layers for h in roles["s_inhibition"])
    induction_layers = min(h["layer"] for h in roles["induction"])
    assert all(h["layer"] < induction_layers for h in roles["previous_token"])
    faith = circuit["faithfulness"]
    assert faith["faithfulness"] > 0.2
    # the deck states the formula: (LD circuit - LD no head) / (LD model - LD no head), 0 = no head, 1 = the model
    assert faith["faithfulness"] == pytest.approx(
        (faith["logit_diff_circuit"] - faith["logit_diff_all_heads_ablated"])
        / (faith["logit_diff_full"] - faith["logit_diff_all_heads_ablated"]), abs=2e-4)
    heads = {(h["layer"], h["head"]) for r in roles.values() for h in r}
    assert faith["n_heads_in_circuit"] == len(heads) == len(circuit["heads"])
    assert len(TEMPLATES) >= 4
