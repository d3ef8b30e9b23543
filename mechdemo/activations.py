"""MLP activations: record them with a hook, describe their distribution, project them to 2-D.

The course's guide hooks the output of the n-th MLP of Llama 3.2 1B with
``model.model.layers[n].mlp.register_forward_hook`` and studies it. :func:`record` does the same
on any supported model, at the site ``mlp_out`` of layer n (the MLP's output, for GPT-2 and Llama
alike) or at any other site (:mod:`mechdemo.interventions`), and always removes its hooks, also
when the forward pass raises. :func:`mlp_outputs` is the one-call version.

Statistics (:func:`describe`) are per layer over all tokens and dimensions: mean, standard
deviation, excess kurtosis (0 for a Gaussian; large when a few values are huge) and the
*outlier dimensions*, the residual-stream coordinates with the largest mean magnitude. Transformer
activations are famously heavy-tailed with a few such dimensions (Dettmers et al. 2022; Sun et
al. 2024, "massive activations"). PCA and t-SNE come from scikit-learn.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo import interventions
from mechdemo.errors import OutOfRangeError
from mechdemo.interventions import recorder, site

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# The course compares four prompts from different domains (AI in education, biology, mathematics,
# art). These are its four sentences, in English (the offline model's language) and grown into short
# paragraphs so that each domain contributes enough tokens for PCA and t-SNE.
DOMAIN_TEXTS: dict[str, str] = {
    "AI & education": (
        "Artificial intelligence is transforming education. Tutoring systems adapt every exercise to the "
        "level of each student, and teachers use language models to prepare lessons, write quizzes and give "
        "feedback on essays in minutes instead of days. Schools now debate how students should cite a chatbot "
        "and how to grade work that a machine helped to write."
    ),
    "biology": (
        "Biology studies living beings and their environment. Inside every cell, DNA is copied into RNA and "
        "translated into proteins that fold into precise shapes. Plants capture sunlight through "
        "photosynthesis, animals compete for food and water, and whole ecosystems shift when a single "
        "species of bee or wolf disappears from the forest."
    ),
    "mathematics": (
        "Mathematics is the language of the universe. A prime number has exactly two divisors, the square "
        "root of two is irrational, and every continuous function on a closed interval attains its maximum. "
        "Euclid proved that there are infinitely many primes, and the derivative of the sine function is "
        "the cosine."
    ),
    "art": (
        "Art is a form of human expression. Painters mix pigments on canvas, sculptors carve marble and "
        "bronze, and composers write melodies that move an audience to tears. In the museum, a portrait by "
        "Rembrandt hangs next to a landscape by Monet, and visitors argue about which painting uses light "
        "more beautifully."
    ),
}


def check_layer(model: "TransformerBridge", layer: int) -> None:
    n = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise OutOfRangeError(f"layer {layer} is out of range: {model.cfg.model_name} has layers 0..{n - 1}")


@contextlib.contextmanager
def record(
    model: "TransformerBridge", layers: Sequence[int] = (), hook_points: Sequence[str] = ()
) -> Iterator[dict[str, Tensor]]:
    """Record MLP outputs of ``layers`` (keys ``mlp.{n}``) and any ``hook_points`` (site names, see
    :mod:`mechdemo.interventions`) while in the block.

    The values are detached tensors of the last forward pass. Hooks are removed on exit, whatever happens.
    """
    for layer in layers:
        check_layer(model, layer)
    unknown = [name for name in hook_points if name not in model.hook_dict]
    if unknown:
        raise KeyError(f"unknown hook point(s) {unknown}; e.g. {site('resid_pre', 0)}, {site('pattern', 0)}")
    store: dict[str, Tensor] = {}
    keep = [recorder(store, site("mlp_out", layer), key=f"mlp.{layer}") for layer in layers]
    with interventions.hooks(model, keep + [recorder(store, name) for name in hook_points]):
        yield store


def mlp_outputs(
    model: "TransformerBridge", tokens: Int[Tensor, "batch pos"], layers: Sequence[int]
) -> dict[int, Float[Tensor, "batch pos d_model"]]:
    """MLP outputs of ``layers`` on ``tokens`` (one forward pass, stopped after the last needed layer)."""
    for layer in layers:
        check_layer(model, layer)
    names = {layer: site("mlp_out", layer) for layer in layers}
    with torch.no_grad():
        _, store = interventions.run(model, tokens, names=list(names.values()), stop_at_layer=max(layers) + 1)
    return {layer: store[name] for layer, name in names.items()}


def describe(x: Float[Tensor, "n d"], n_outliers: int = 5) -> dict:
    """Distribution statistics of activations ``x`` (rows: tokens, columns: dimensions)."""
    x = x.double()
    flat = x.flatten()
    mean, std = flat.mean(), flat.std()
    kurtosis = (((flat - mean) / std) ** 4).mean() - 3
    magnitude = x.abs().mean(0)
    top = magnitude.topk(min(n_outliers, x.shape[1]))
    return {
        "mean": mean.item(),
        "std": std.item(),
        "var": (std**2).item(),
        "excess_kurtosis": kurtosis.item(),
        "min": flat.min().item(),
        "max": flat.max().item(),
        "norm_mean": x.norm(dim=1).mean().item(),
        "outlier_dims": top.indices.tolist(),
        "outlier_mean_abs": top.values.tolist(),
        "median_dim_mean_abs": magnitude.median().item(),
    }


def pca_2d(x: Float[Tensor, "n d"], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA projection of ``x`` and the fraction of variance each component explains."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    return pca.fit_transform(x.float().cpu().numpy()), pca.explained_variance_ratio_


def tsne_2d(x: Float[Tensor, "n d"], seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding of ``x`` (after a 50-component PCA, the usual preprocessing).

    Computed on one thread (OpenMP and BLAS): summed over another number of threads, the gradients
    differ in the last bits, and t-SNE's iterations amplify that into another map. One thread, the
    same map on every machine for a seed.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    data = x.float().cpu().numpy()
    with threadpool_limits(limits=1):
        if data.shape[1] > 50:
            data = PCA(n_components=50, random_state=seed).fit_transform(data)
        perplexity = min(perplexity, (len(data) - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)
