"""Capturing MLP outputs: the hook records what the block's own weights compute, and always goes away."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechdemo.activations import describe, mlp_outputs, pca_2d, record, tsne_2d
from mechdemo.errors import OutOfRangeError


def _param(module, name: str) -> torch.Tensor:
    """A parameter of an HF module wrapped by the bridge (``c_fc.weight`` -> ``c_fc._original_component.weight``)."""
    params = dict(module.named_parameters())
    if name in params:
        return params[name].detach()
    head, _, leaf = name.rpartition(".")
    return params[f"{head}._original_component.{leaf}"].detach()


def mlp_by_hand(model, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
    """The MLP sublayer's output from ``resid_mid``, computed from the block's weights with plain torch."""
    ln = model.blocks[layer].ln2.original_component
    mlp = model.blocks[layer].mlp.original_component
    x = resid_mid.double()
    if model.cfg.normalization_type == "LN" or hasattr(ln, "bias"):  # GPT-2: LayerNorm, Conv1D, gelu_new
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        x = x * ln.weight.double() + ln.bias.double()
        hidden = F.gelu(x @ _param(mlp, "c_fc.weight").double() + _param(mlp, "c_fc.bias").double(), approximate="tanh")
        return hidden @ _param(mlp, "c_proj.weight").double() + _param(mlp, "c_proj.bias").double()
    # Llama: RMSNorm, SiLU-gated MLP, nn.Linear weights [out, in]
    x = x / (x.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon).sqrt() * ln.weight.double()
    gate = x @ _param(mlp, "gate_proj.weight").double().T
    up = x @ _param(mlp, "up_proj.weight").double().T
    return (F.silu(gate) * up) @ _param(mlp, "down_proj.weight").double().T


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_hook_equals_mlp_from_weights_random_architectures(random_bridge, name):
    model = random_bridge(name)
    tokens = torch.randint(1, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with record(model, layers=[1], hook_points=["blocks.1.hook_resid_mid"]) as store, torch.no_grad():
        model(tokens)
    expected = mlp_by_hand(model, 1, store["blocks.1.hook_resid_mid"])
    assert store["mlp.1"].shape == (2, 9, model.cfg.d_model)
    torch.testing.assert_close(store["mlp.1"].double(), expected, rtol=1e-4, atol=1e-4)


def test_hook_equals_mlp_from_weights_offline_model(model):
    tokens = model.to_tokens("The capital of France is Paris, and the capital of Spain is Madrid.")
    layer = 8
    with record(model, layers=[layer], hook_points=[f"blocks.{layer}.hook_resid_mid"]) as store, torch.no_grad():
        model(tokens, stop_at_layer=layer + 1)
    expected = mlp_by_hand(model, layer, store[f"blocks.{layer}.hook_resid_mid"])
    torch.testing.assert_close(store[f"mlp.{layer}"].double(), expected, rtol=1e-4, atol=1e-3)
    # the stopped forward pass records the same values as the full one
    full = mlp_outputs(model, tokens, [layer])[layer]
    with record(model, layers=[layer]) as again, torch.no_grad():
        model(tokens)
    torch.testing.assert_close(full, again[f"mlp.{layer}"])


def test_mlp_output_plus_resid_mid_is_resid_post(model):
    """The recorded MLP output is exactly what the block adds to the residual stream."""
    tokens = model.to_tokens("Induction heads copy what came next last time.")
    with record(model, layers=[3], hook_points=["blocks.3.hook_resid_mid", "blocks.3.hook_resid_post"]) as s, \
            torch.no_grad():
        model(tokens, stop_at_layer=4)
    torch.testing.assert_close(s["blocks.3.hook_resid_mid"] + s["mlp.3"], s["blocks.3.hook_resid_post"])


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_removed_after_exception(model):
    before = _n_hooks(model)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with record(model, layers=[0, 5], hook_points=["blocks.2.hook_resid_pre"]):
            assert _n_hooks(model) == before + 3
            raise Boom
    assert _n_hooks(model) == before
    # an error inside the forward pass itself (bad input) also leaves no hook behind
    with pytest.raises(Exception):
        mlp_outputs(model, torch.tensor([[10**9]]), [1])
    assert _n_hooks(model) == before


@pytest.mark.parametrize("layer", [-1, 30, 100])
def test_layer_out_of_range(model, layer):
    with pytest.raises(OutOfRangeError, match=r"layers 0\.\.29"):
        with record(model, layers=[layer]):
            pass


def test_unknown_hook_point(model):
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre"):
        with record(model, hook_points=["blocks.0.hook_nonsense"]):
            pass


def test_describe_against_numpy_and_scipy():
    from scipy.stats import kurtosis

    rng = np.random.default_rng(0)
    x = rng.standard_t(df=5, size=(400, 16))
    x[:, 3] *= 20  # an outlier dimension
    stats = describe(torch.from_numpy(x))
    assert stats["mean"] == pytest.approx(x.mean())
    assert stats["var"] == pytest.approx(x.var(ddof=1))
    # ours uses the sample std in the denominator; scipy's biased kurtosis uses the population one
    n = x.size
    assert stats["excess_kurtosis"] == pytest.approx((kurtosis(x.ravel()) + 3) * ((n - 1) / n) ** 2 - 3, rel=1e-9)
    assert stats["outlier_dims"][0] == 3
    gaussian = describe(torch.from_numpy(rng.standard_normal((20_000, 8))))
    assert abs(gaussian["excess_kurtosis"]) < 0.1


def test_pca_and_tsne_shapes_and_variance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 60)) * np.linspace(5, 0.1, 60)  # decreasing variance per dimension
    points, explained = pca_2d(torch.from_numpy(x))
    assert points.shape == (120, 2)
    assert explained[0] > explained[1] > 0
    from sklearn.decomposition import PCA

    np.testing.assert_allclose(explained, PCA(2).fit(x).explained_variance_ratio_, rtol=1e-6)
    embedding = tsne_2d(torch.from_numpy(x), perplexity=10)
    assert embedding.shape == (120, 2) and np.isfinite(embedding).all()
