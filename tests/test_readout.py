"""The one readout (final norm + unembedding): every caller agrees with the model's own logits, or with
the exact linearised term, on a LayerNorm model with biases (GPT-2) and an RMSNorm one (Llama).

The LayerNorm case is the one that went wrong before the readout was shared: the SAE feature browser's
logit effects did not centre the decoder direction, so on GPT-2 they disagreed with DLA's convention.
A LayerNorm removes any constant shift of its input, so a direction of all ones has no effect at all;
the uncentred formula gave it ``γ · W_U``."""

from __future__ import annotations

import pytest
import torch

from mechdemo.weight_circuits import unembedding
from mechdemo.dla import direct_logit_attribution
from mechdemo.interventions import run, site
from mechdemo.metrics import LogitDifference
from mechdemo.models import offline_vocab_size, random_model, to_float64
from mechdemo.readout import direction_logits, final_norm, logits_from_resid, norm_bias
from mechdemo.sae import SAETrainConfig, logit_effects, make_sae

ARCHS = ["gpt2", "meta-llama/Llama-3.2-1B"]


@pytest.fixture(scope="module")
def models64():
    """Float64 random models (2 layers, narrow): finite differences need the precision."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = to_float64(random_model(name, n_layers=2, vocab_size=offline_vocab_size(), d_model=256))
        return built[name]

    return get


def _final(model, n=3, pos=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 1000, (n, pos), generator=g)
    with torch.no_grad():
        logits, cache = run(model, tokens, names=[site("final"), site("final_scale")])
    return tokens, logits, cache[site("final")], cache[site("final_scale")]


@pytest.mark.parametrize("name", ARCHS)
def test_logits_from_resid_are_the_models_logits(models64, name):
    model = models64(name)
    _, logits, resid, _ = _final(model)
    with torch.no_grad():
        torch.testing.assert_close(logits_from_resid(model, resid), logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ARCHS)
def test_logit_difference_from_resid_is_the_models(models64, name):
    model = models64(name)
    _, logits, resid, _ = _final(model)
    correct, incorrect = torch.tensor([5, 17, 300]), torch.tensor([9, 2, 41])
    metric = LogitDifference(correct, incorrect)
    with torch.no_grad():
        torch.testing.assert_close(metric.from_resid(model, resid[:, -1]), metric.on_logits(logits), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ARCHS)
def test_folded_unembedding_reads_the_logits_at_the_runs_scale(models64, name):
    """``logits = (x @ folded W_U) / scale + β W_U + b_U`` exactly: the circuits' unembedding is the readout."""
    model = models64(name)
    _, logits, resid, scale = _final(model)
    W_U = model.W_U.detach().double()
    beta = norm_bias(model.ln_final)
    constant = (beta.double() @ W_U if beta is not None else 0) + (model.b_U.detach().double()
                                                                  if getattr(model, "b_U", None) is not None else 0)
    folded = unembedding(model).double()
    torch.testing.assert_close((resid.double() @ folded) / scale.double() + constant, logits.double(),
                               rtol=1e-5, atol=1e-4)  # folded is float32


@pytest.mark.parametrize("name", ARCHS)
def test_direction_logits_are_the_derivative_of_the_models_logits(models64, name):
    """Adding ``ε d`` to the final residual stream changes the model's logits by ``ε direction_logits(d) / scale``
    to first order, for ``d`` orthogonal to the centred stream (the norm's scale is then stationary); on
    GPT-2 the all-ones direction changes nothing at all, and its direction logits are zero."""
    model = models64(name)
    _, _, resid, scale = _final(model, n=1, pos=3)
    x, s = resid[0, -1], scale[0, -1]
    centred = x - x.mean() if name == "gpt2" else x
    g = torch.Generator().manual_seed(1)
    d = torch.randn(model.cfg.d_model, generator=g, dtype=torch.float64) + 0.5  # a non-zero mean
    d = d - (d @ centred) / (centred @ centred) * centred
    eps = 1e-6
    with torch.no_grad():
        change = (logits_from_resid(model, x + eps * d) - logits_from_resid(model, x)) / eps * s
    torch.testing.assert_close(direction_logits(model, d[None])[0].double(), change, rtol=1e-4, atol=1e-4)
    if name == "gpt2":
        ones = torch.ones(model.cfg.d_model, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(final_norm(model, x + ones), final_norm(model, x))
        assert direction_logits(model, ones[None]).abs().max() < 1e-5


@pytest.mark.parametrize("name", ARCHS)
def test_sae_logit_effects_use_the_readout(models64, name):
    """The feature browser's promoted tokens are the direction logits of the decoder rows (centred on GPT-2)."""
    model = models64(name)
    sae = make_sae(SAETrainConfig(expansion=1), model.cfg.d_model)
    with torch.no_grad():
        sae.W_dec[0] = 1.0  # a constant row: no effect through a LayerNorm
    up_ids, up_v, _, _ = logit_effects(sae, model, k=5, batch=64)
    full = direction_logits(model, sae.W_dec.detach())
    torch.testing.assert_close(up_v, full.topk(5, dim=1).values)
    if name == "gpt2":
        assert up_v[0].abs().max() < 1e-4


@pytest.mark.parametrize("name", ARCHS)
def test_dla_total_is_the_models_logit_difference(models64, name):
    model = models64(name)
    tokens, logits, _, _ = _final(model)
    correct, incorrect = torch.tensor([5, 17, 300]), torch.tensor([9, 2, 41])
    dla = direct_logit_attribution(model, tokens, correct, incorrect)
    torch.testing.assert_close(dla.total.double(), LogitDifference(correct, incorrect).on_logits(logits), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(dla.parts_sum().double(), dla.total.double(), rtol=1e-4, atol=1e-4)
