"""Sparse autoencoders: metrics on hand-built SAEs, the spliced loss against the HF model, training
all three architectures on a real activation dataset, saving, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechdemo.data import ActivationDataset, ExtractConfig, extract, from_uint16
from mechdemo.errors import MechdemoError
from mechdemo.sae import (
    SAETrainConfig,
    evaluate_sae,
    heldout_sequences,
    load_sae,
    reconstruction_metrics,
    save_sae,
    spliced_loss,
    spliced_losses,
    top_activations,
    train_sae,
)
from mechdemo.tokens import bos_token_id

LAYER = 6


def _signed_identity_sae(d: int):
    """A ReLU SAE with features +e_i and -e_i: ``relu(x) - relu(-x) = x``, an exact reconstruction."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, dtype="float32", device="cpu"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_metrics_of_an_exact_sae_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.0], [3.0, 4.0, 0.0], [-1.0, 1.0, 0.0], [2.0, -1.0, 0.0]])
    m = reconstruction_metrics(_signed_identity_sae(3), x, dense_threshold=0.4)
    # active features: one per non-zero coordinate
    assert m["l0"] == pytest.approx(2.0)
    assert m["explained_variance"] == pytest.approx(1.0) and m["fvu"] == pytest.approx(0.0, abs=1e-7)
    # features +e2 and -e2 never fire (third coordinate always 0): 2 of 6 dead
    assert m["dead_fraction"] == pytest.approx(2 / 6)
    # +e0 fires on 3 of 4 tokens, -e0 on 1, +e1 on 2, -e1 on 2: dense (> 40%): +e0, +e1, -e1
    assert m["dense_fraction"] == pytest.approx(3 / 6)


def test_explained_variance_of_the_mean_is_zero():
    from sae_lens import StandardSAE, StandardSAEConfig

    x = torch.randn(500, 8) + 3.0
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu"))
    with torch.no_grad():  # every feature off: the reconstruction is b_dec, the mean of x
        sae.b_enc.fill_(-1e6)
        sae.b_dec.copy_(x.mean(0))
    m = reconstruction_metrics(sae, x)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-5) and m["l0"] == 0 and m["dead_fraction"] == 1


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory) -> ActivationDataset:
    """~12k tokens of the offline corpus at layer 6, in 4 shards (the last one held out)."""
    out = tmp_path_factory.mktemp("acts")
    cfg = ExtractConfig(model="smollm2-135m", layer=LAYER, corpus="python-docs", seq_len=128, batch_size=16,
                        shard_size=3_000, max_tokens=12_000)
    extract(cfg, out, model=model, progress=False)
    return ActivationDataset(out)


def _hf_loss(model, tokens, zero_mlp_layer: int | None = None, replace=None) -> float:
    """Mean next-token loss from the Hugging Face model itself, optionally with the output of MLP
    ``LAYER`` zeroed (``zero_mlp_layer``) or replaced by ``replace(output)``."""
    hf = model.original_model
    handle = None
    if zero_mlp_layer is not None:
        handle = hf.model.layers[zero_mlp_layer].mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    elif replace is not None:
        handle = hf.model.layers[LAYER].mlp.register_forward_hook(lambda m, i, o: replace(o))
    try:
        with torch.no_grad():
            return float(hf(tokens, labels=tokens).loss)
    finally:
        if handle:
            handle.remove()


def test_spliced_loss_against_the_hf_model(model, dataset):
    tokens = heldout_sequences(dataset, len(dataset.shards) - 1, 64, bos_token_id(model), max_sequences=4)
    assert tokens.shape == (4, 64) and (tokens[:, 0] == bos_token_id(model)).all()
    exact = _signed_identity_sae(model.cfg.d_model)
    out = spliced_loss(exact, model, tokens, LAYER)
    # an exact reconstruction changes nothing; zero-ablation equals deleting the MLP in HF
    assert out["delta_ce"] == pytest.approx(0.0, abs=1e-4)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert out["ce_clean"] == pytest.approx(_hf_loss(model, tokens), rel=1e-4)
    assert out["ce_zero_ablation"] == pytest.approx(_hf_loss(model, tokens, zero_mlp_layer=LAYER), rel=1e-4)
    assert out["ce_zero_ablation"] > out["ce_clean"]
    with pytest.raises(MechdemoError, match="0..29"):
        spliced_loss(exact, model, tokens, 30)


def test_heldout_sequences_are_the_stored_text(model, dataset):
    shard = len(dataset.shards) - 1
    tokens = heldout_sequences(dataset, shard, 32, bos_token_id(model), max_sequences=2)
    table = dataset.table(shard)
    # the first sequence is the shard's first 31 tokens (one document's run)
    assert tokens[0, 1:].tolist() == table.column("token_id").to_numpy()[:31].tolist()


# --- training ---------------------------------------------------------------------------------

SMALL = dict(expansion=2, training_tokens=30_000, batch_size=512, seed=0)
JUMPRELU = SAETrainConfig(architecture="jumprelu", l0_coefficient=2.0, **{**SMALL, "batch_size": 256})


@pytest.fixture(scope="module")
def trained(dataset) -> dict:
    """One SAE per architecture, briefly trained."""
    return {
        "topk": train_sae(dataset, SAETrainConfig(architecture="topk", k=16, **SMALL), progress=False),
        "relu": train_sae(dataset, SAETrainConfig(architecture="relu", l1_coefficient=1.0, **SMALL), progress=False),
        "jumprelu": train_sae(dataset, JUMPRELU, progress=False),
    }


def test_every_architecture_learns_a_sparse_reconstruction(dataset, trained):
    heldout = from_uint16(dataset.shard_bits(len(dataset.shards) - 1)).float()
    d_sae = 2 * dataset.d_model
    for name, sae in trained.items():
        m = reconstruction_metrics(sae, heldout)
        # raw activations in (the normalisation is folded into the weights); after 30k samples at least
        # half the variance is explained (an untrained SAE explains none)
        assert m["explained_variance"] > 0.5, (name, m)
        assert m["l0"] < d_sae / 6, (name, m)  # most features off on every token
    assert reconstruction_metrics(trained["topk"], heldout)["l0"] <= 16 + 1e-6


def test_delta_ce_of_a_trained_sae_equals_the_hf_loss_difference(model, dataset, trained):
    tokens = heldout_sequences(dataset, len(dataset.shards) - 1, 64, bos_token_id(model), max_sequences=4)
    sae = trained["topk"]
    out = spliced_loss(sae, model, tokens, LAYER)
    with torch.no_grad():
        reference = _hf_loss(model, tokens, replace=lambda o: sae.decode(sae.encode(o))) - _hf_loss(model, tokens)
    assert abs(reference) > 1e-3  # the splice changes the loss (either way, on 4 sequences)
    assert out["delta_ce"] == pytest.approx(reference, rel=1e-3, abs=1e-5)


def test_spliced_losses_of_several_saes_equal_saelens_one_by_one(model, dataset, trained):
    """The shared clean/zero runs and the spliced runs started at the layer give what SAELens's
    get_recons_loss (three full forward passes per SAE) gives for each SAE alone."""
    tokens = heldout_sequences(dataset, len(dataset.shards) - 1, 32, bos_token_id(model), max_sequences=3)
    saes = [trained["topk"], trained["jumprelu"], _signed_identity_sae(model.cfg.d_model)]
    together = spliced_losses(saes, model, tokens, LAYER, batch_size=2)  # batches of 2 and 1 sequences
    for sae, ours in zip(saes, together):
        alone = spliced_loss(sae, model, tokens, LAYER)
        assert set(alone) <= set(ours)
        for key, value in alone.items():
            assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert len({round(r["ce_spliced"], 4) for r in together}) == 3  # three different SAEs, three losses


def test_loss_standard_errors_are_those_of_the_sequence_means():
    """The bootstrap over sequences gives the standard error of a mean of per-sequence values: for equal-length
    sequences, std(per-sequence ΔCE) / sqrt(n) (the textbook formula, an independent reference)."""
    import numpy as np

    from mechdemo.sae.evaluation import loss_summaries

    rng = np.random.default_rng(1)
    n, per = 40, 127
    clean = rng.normal(3.4, 0.3, n) * per
    sums = np.stack([clean, clean + rng.normal(0.19, 0.08, n) * per, clean + rng.normal(0.035, 0.03, n) * per], 1)
    out = loss_summaries(sums, n * per)[0]
    deltas = (sums[:, 2] - sums[:, 0]) / per
    assert out["delta_ce"] == pytest.approx(deltas.mean())
    assert out["delta_ce_se"] == pytest.approx(deltas.std(ddof=1) / n**0.5, rel=0.1)
    assert out["gap"] == pytest.approx(((sums[:, 1] - sums[:, 0]) / per).mean())
    assert out["loss_recovered"] == pytest.approx(1 - out["delta_ce"] / out["gap"])
    assert 0 < out["loss_recovered_se"] < 0.2 and out["ce_sequences"] == n


def test_a_stronger_penalty_gives_a_sparser_sae(dataset, trained):
    heldout = from_uint16(dataset.shard_bits(len(dataset.shards) - 1)).float()
    stronger = train_sae(dataset, SAETrainConfig(architecture="relu", l1_coefficient=4.0, **SMALL), progress=False)
    weak, strong = (reconstruction_metrics(s, heldout) for s in (trained["relu"], stronger))
    assert strong["l0"] < weak["l0"] and strong["explained_variance"] < weak["explained_variance"]


def test_training_is_deterministic(dataset, trained):
    again = train_sae(dataset, SAETrainConfig(architecture="topk", k=16, **SMALL), progress=False)
    torch.testing.assert_close(again.W_dec, trained["topk"].W_dec, rtol=0, atol=0)


def test_training_does_not_depend_on_the_callers_thread_count(dataset, monkeypatch):
    """Another machine runs torch on another number of threads (another reduction order): training
    pins its own count, so the same seed gives bit-identical weights either way."""
    from mechdemo.threads import fixed_threads

    monkeypatch.delenv("MECHDEMO_MAX_THREADS", raising=False)  # the xdist workers' cap: the real pinned count here

    cfg = SAETrainConfig(architecture="relu", l1_coefficient=1.0, expansion=2, training_tokens=8_192, batch_size=512)
    trained = []
    for threads in (1, 2):
        with fixed_threads(threads):
            trained.append(train_sae(dataset, cfg, progress=False))
            assert torch.get_num_threads() == threads  # and the caller's count is restored
    torch.testing.assert_close(trained[0].W_dec, trained[1].W_dec, rtol=0, atol=0)
    torch.testing.assert_close(trained[0].W_enc, trained[1].W_enc, rtol=0, atol=0)


def test_saved_sae_reloads_identically(dataset, trained, tmp_path):
    save_sae(trained["jumprelu"], tmp_path / "sae", JUMPRELU, {"l0": 1.0})
    loaded = load_sae(tmp_path / "sae")
    x = from_uint16(dataset.shard_bits(0)[:256]).float()
    torch.testing.assert_close(loaded.encode(x), trained["jumprelu"].encode(x))
    assert json.loads((tmp_path / "sae" / "mechdemo_sae.json").read_text())["train_config"]["architecture"] == "jumprelu"
    with pytest.raises(MechdemoError, match="not a saved SAE"):
        load_sae(tmp_path)


def test_top_activations_agree_with_a_full_encode(dataset, trained):
    sae = trained["topk"]
    x = from_uint16(dataset.shard_bits(0)[:3000]).float()
    values, rows, fired = top_activations(sae, x, k=5, batch_size=700)  # batches that split the data unevenly
    feats = sae.encode(x)
    ref_values = feats.T.topk(5, dim=1).values
    torch.testing.assert_close(values, ref_values)
    assert torch.equal(fired, (feats > 0).sum(0))
    # the rows hold those values (equal activations, e.g. of repeated text, may come in any order)
    torch.testing.assert_close(feats.gather(0, rows.T).T, ref_values)


def test_one_shard_is_refused(model, tmp_path):
    out = tmp_path / "one"
    extract(ExtractConfig(model="smollm2-135m", layer=LAYER, corpus="python-docs", seq_len=64, batch_size=4,
                          shard_size=10_000, max_tokens=500), out, model=model, progress=False)
    with pytest.raises(MechdemoError, match="held-out shard"):
        train_sae(ActivationDataset(out), SAETrainConfig(training_tokens=1024, batch_size=256), progress=False)


def test_unknown_architecture_is_refused():
    with pytest.raises(MechdemoError, match="relu, topk, jumprelu"):
        SAETrainConfig(architecture="gated")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_train_then_eval(model, dataset, tmp_path, capsys, monkeypatch):
    """In-process through the CLI's main (the console entry point itself is tested in test_cli),
    with the session's model lent to the CLI instead of two more loads."""
    from mechdemo import models
    from mechdemo.cli import main

    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    out = tmp_path / "sae"
    assert main(["sae", "train", "--data", str(dataset.path), "--out", str(out), "--architecture", "topk", "--k", "8",
                 "--expansion", "2", "--tokens", "8192", "--batch-size", "512", "--eval-sequences", "2",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    m = trained["metrics"]
    assert trained["train_config"]["k"] == 8 and m["l0"] <= 8 + 1e-6
    assert 0 < m["explained_variance"] < 1 and m["ce_spliced"] > m["ce_clean"] - 1e-3
    assert m["ce_zero_ablation"] > m["ce_clean"] and m["loss_recovered"] < 1
    assert main(["sae", "eval", "--sae", str(out), "--data", str(dataset.path), "--eval-sequences", "2", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    for key in ("l0", "explained_variance", "dead_fraction", "ce_clean", "ce_spliced", "ce_zero_ablation"):
        assert evaluated[key] == pytest.approx(m[key], rel=1e-5, abs=1e-6), key
    # an SAE on another layer's data: a clear error, exit 2
    other = Path(dataset.path).parent / "other-layer"
    if not other.exists():
        extract(ExtractConfig(model="smollm2-135m", layer=LAYER + 1, corpus="python-docs", seq_len=64, batch_size=4,
                              shard_size=300, max_tokens=900), other, model=model, progress=False)
    assert main(["sae", "eval", "--sae", str(out), "--data", str(other), "--json"]) == 2
    captured = capsys.readouterr()
    assert "same model and site" in captured.err and not captured.out


def test_token_hypotheses_by_brute_force(dataset, trained):
    """Precision (share of every firing on the token) and recall (share of the token's occurrences fired on),
    recomputed feature by feature with plain loops."""
    from collections import Counter

    from mechdemo.sae import token_hypotheses

    sae = trained["topk"]
    x = from_uint16(dataset.shard_bits(0)[:2000]).float()
    ids = dataset.table(0).column("token_id").to_numpy()[:2000]
    hyp = token_hypotheses(sae, x, ids, top_k=10, batch_size=600)
    acts = sae.encode(x).detach()
    checked = 0
    for f in range(0, sae.cfg.d_sae, 7):
        col = acts[:, f]
        top = [int(r) for v, r in zip(*col.topk(10)) if v > 0]
        if not top:
            assert hyp["token"][f] == -1
            continue
        counts = Counter(int(ids[r]) for r in top)
        best = max(counts.values())
        t = min(tok for tok, c in counts.items() if c == best)
        firing = [i for i in range(len(ids)) if col[i] > 0]
        hits = sum(1 for i in firing if ids[i] == t)
        assert hyp["token"][f] == t
        assert hyp["precision"][f] == pytest.approx(hits / len(firing))
        assert hyp["recall"][f] == pytest.approx(hits / int((ids == t).sum()))
        checked += 1
    assert checked > 10


def test_distinct_passages_skip_overlapping_and_repeated_text():
    import numpy as np

    from mechdemo.sae import distinct_passages

    # two documents; document 1 repeats document 0's text (a paragraph the documentation repeats)
    token_ids = np.array(list(range(100, 140)) + list(range(100, 140)))
    doc = np.array([0] * 40 + [1] * 40)
    pos = np.array(list(range(40)) * 2)
    rows = [30, 32, 70, 20, 5]  # 32 overlaps 30's window; 70 is 30's text again in document 1
    kept = distinct_passages(rows, doc, pos, token_ids, k=3, window=6)
    assert kept == [30, 20, 5]
    assert distinct_passages(rows, doc, pos, token_ids, k=1, window=6) == [30]


def test_feature_intervention_at_scale_one_changes_nothing_and_ablation_matches_a_hook(model, dataset, trained):
    """Scale 1 is the clean run (KL 0); scale 0 equals subtracting f·W_dec with a hand-written hook on a full
    forward pass, at the positions where the feature fires."""
    from mechdemo.interventions import run
    from mechdemo.sae import feature_intervention, heldout_sequences, hook_of

    sae = trained["topk"]
    tokens = heldout_sequences(dataset, 1, dataset.manifest["config"]["seq_len"], bos_token_id(model), 2)
    hook, _ = hook_of(dataset.site)
    _, cache = run(model, tokens, names=[hook])
    f_all = sae.encode(cache[hook].float().to(sae.W_dec.dtype)).detach().float()
    f_all[:, 0] = 0
    feature = int((f_all > 0).sum((0, 1)).argmax())
    out = feature_intervention(model, sae, tokens, feature, dataset.site, scales=(1.0, 0.0))
    assert out["positions"] == int((f_all[..., feature] > 0).sum()) > 0
    assert out["scales"]["1.0"]["kl"] == pytest.approx(0.0, abs=1e-6)
    w = sae.W_dec[feature].detach().float()
    f = f_all[..., feature]

    def ablate(act, hook):
        return act - (f[..., None] * w).to(act.dtype)

    clean = run(model, tokens)[0].float().log_softmax(-1)
    edited = run(model, tokens, [(hook, ablate)])[0].float().log_softmax(-1)
    fires = f > 0
    kl = (clean[fires].exp() * (clean[fires] - edited[fires])).sum(-1).mean()
    assert out["scales"]["0.0"]["kl"] == pytest.approx(float(kl), rel=1e-3, abs=1e-7)
