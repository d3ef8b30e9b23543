"""MLP activations: mlp_activations.png, mlp_pca_tsne.png and mlp_layers.png.

The course's first guide hooks the output of MLP ``n`` of Llama 3.2 1B and looks at it: histogram,
mean and variance, PCA, t-SNE, and four prompts from different domains. These figures do that on
the offline model with :mod:`mechdemo.activations`, on the same four domains.

The first position (BOS) is left out of the statistics and projections and reported apart: models
write a few "massive" activations there (Sun et al. 2024), which would dominate every histogram
and principal component while saying nothing about the text.
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.activations import DOMAIN_TEXTS, describe, mlp_outputs, pca_2d, tsne_2d
from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

LAYER = 8  # the course's layer (Llama 3.2 1B has 16 layers; the offline model has 30)
DOMAIN_COLORS = [style.BLUE, style.GREEN, style.ORANGE, style.PURPLE]


def domain_activations(ctx: FigureContext) -> dict:
    """MLP outputs of every layer for each domain text: ``{"layers": {domain: [n_layers, pos, d]}, ...}``."""

    def compute() -> dict:
        model = ctx.model
        layers = list(range(model.cfg.n_layers))
        acts, tokens = {}, {}
        for domain, text in DOMAIN_TEXTS.items():
            ids = model.to_tokens(text)  # [1, pos], BOS first
            outs = mlp_outputs(model, ids, layers)
            acts[domain] = torch.stack([outs[layer][0] for layer in layers]).float().cpu()
            tokens[domain] = ids[0].tolist()
        return {"acts": acts, "tokens": tokens}

    return ctx.computed("mlp.domain_activations", compute)


def _layer_rows(data: dict, layer: int) -> tuple[torch.Tensor, np.ndarray]:
    """Rows (tokens after BOS) of all domains at ``layer`` and the domain index of each row."""
    rows = [data["acts"][d][layer, 1:] for d in DOMAIN_TEXTS]
    labels = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    return torch.cat(rows), labels


def _round(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if k == "outlier_mean_abs" else v)
            for k, v in d.items()}


@figure("mlp_activations", description="Distribution of one layer's MLP output: histogram vs a Gaussian, outlier "
        "dimensions, and the four domain texts compared")
def mlp_activations(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    data = domain_activations(ctx)
    x, labels = _layer_rows(data, LAYER)
    stats = describe(x)
    bos_norm = float(np.mean([data["acts"][d][LAYER, 0].norm().item() for d in DOMAIN_TEXTS]))
    values = x.flatten().numpy()

    fig, (ax_hist, ax_dims, ax_dom) = plt.subplots(1, 3, figsize=(20, 7.5), gridspec_kw={"width_ratios": [1.1, 1.3, 1]})
    lim = np.abs(values).max()
    bins = np.linspace(-lim, lim, 161)
    density, _, _ = ax_hist.hist(values, bins=bins, density=True, color=style.BLUE, alpha=0.75,
                                 label="MLP output values")
    grid = np.linspace(-lim, lim, 600)
    ax_hist.plot(grid, norm.pdf(grid, stats["mean"], stats["std"]), color=style.RED, lw=2.5, ls="--",
                 label="Gaussian, same mean & std")
    ax_hist.set_yscale("log")
    ax_hist.set_ylim(1e-6, density.max() * 1e4)  # headroom for the legend and the statistics
    ax_hist.set_xlabel("activation value")
    ax_hist.set_ylabel("density (log scale)")
    ax_hist.set_title("All values")
    ax_hist.legend(loc="upper right", fontsize=12)
    ax_hist.text(0.03, 0.80, f"mean {stats['mean']:+.3f}\nvariance {stats['var']:.2f}\n"
                 f"excess kurtosis {stats['excess_kurtosis']:.0f}\n(Gaussian: 0)", transform=ax_hist.transAxes,
                 va="top", fontsize=14, bbox={"fc": "white", "ec": style.GREY, "alpha": 0.9})

    magnitude = x.abs().mean(0).numpy()
    dims = np.arange(len(magnitude))
    ax_dims.bar(dims, magnitude, width=1.0, color=style.GREY)
    for dim, value in zip(stats["outlier_dims"][:3], stats["outlier_mean_abs"][:3]):
        ax_dims.bar(dim, value, width=3, color=style.RED)
        ax_dims.annotate(f"dim {dim}", (dim, value), xytext=(6, 2), textcoords="offset points", color=style.RED,
                         fontsize=14, weight="bold")
    ax_dims.axhline(stats["median_dim_mean_abs"], color=style.BLUE, ls=":", lw=2,
                    label=f"median dimension {stats['median_dim_mean_abs']:.2f}")
    ax_dims.set_xlabel("residual-stream dimension")
    ax_dims.set_ylabel("mean |activation| over tokens")
    ax_dims.set_title("Outlier dimensions")
    ax_dims.legend(loc="upper left", fontsize=12)
    ax_dims.set_xlim(-5, len(magnitude) + 5)

    centre = np.linspace(-4, 4, 81)
    peak = 0.0
    for i, (domain, colour) in enumerate(zip(DOMAIN_TEXTS, DOMAIN_COLORS)):
        counts, _, _ = ax_dom.hist(x[labels == i].flatten().numpy(), bins=centre, density=True, histtype="step", lw=2.5,
                    color=colour, label=domain)
        peak = max(peak, counts.max())
    ax_dom.set_ylim(0, peak * 1.6)
    ax_dom.set_xlabel("activation value (central range)")
    ax_dom.set_ylabel("density")
    ax_dom.set_title("Four domains")
    ax_dom.legend(loc="upper left", fontsize=12, ncol=2)

    n_tokens = len(x)
    style.suptitle(fig, f"MLP output of layer {LAYER}", ctx.model_label,
                   subtitle=f"{n_tokens} tokens of four short texts (BOS excluded: its MLP output has norm "
                            f"{bos_norm:.0f}, vs {stats['norm_mean']:.0f} on average), {x.shape[1]} dimensions each")
    fig.subplots_adjust(top=0.83, wspace=0.28)
    return FigureOutput(fig, results={"layer": LAYER, "tokens": n_tokens, "bos_norm_mean": round(bos_norm, 3),
                                      **_round(stats)})


@figure("mlp_pca_tsne", description="One layer's MLP outputs projected to 2-D with PCA and t-SNE, coloured by "
        "the domain of the text")
def mlp_pca_tsne(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt
    from sklearn.metrics import silhouette_score

    data = domain_activations(ctx)
    x, labels = _layer_rows(data, LAYER)
    pca, explained = pca_2d(x, seed=ctx.seed)
    tsne = tsne_2d(x, seed=ctx.seed, perplexity=20)
    silhouette = float(silhouette_score(x.numpy(), labels))

    fig, (ax_pca, ax_tsne) = plt.subplots(1, 2, figsize=(18, 8))
    for ax, points in ((ax_pca, pca), (ax_tsne, tsne)):
        for i, (domain, colour) in enumerate(zip(DOMAIN_TEXTS, DOMAIN_COLORS)):
            mask = labels == i
            ax.scatter(points[mask, 0], points[mask, 1], s=45, alpha=0.8, color=colour, label=domain,
                       edgecolors="white", linewidths=0.5)
    ax_pca.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax_pca.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax_pca.set_title("PCA")
    ax_tsne.set_xlabel("t-SNE 1")
    ax_tsne.set_ylabel("t-SNE 2")
    ax_tsne.set_title("t-SNE (perplexity 20, after PCA to 50 dims)")
    ax_tsne.legend(loc="best", fontsize=13, markerscale=1.5)
    style.suptitle(fig, f"MLP output of layer {LAYER} in 2-D", ctx.model_label,
                   subtitle=f"one point per token ({len(x)}, BOS excluded), coloured by the text's domain; "
                            f"silhouette of the domains in the full {x.shape[1]}-D space: {silhouette:.2f} "
                            "(1 = separate clusters, 0 = mixed)")
    fig.subplots_adjust(top=0.83, wspace=0.2)
    return FigureOutput(fig, results={"layer": LAYER, "tokens": len(x),
                                      "pca_explained_variance": [round(float(v), 4) for v in explained],
                                      "domain_silhouette": round(silhouette, 4)})


@figure("mlp_layers", description="MLP output statistics across all layers: scale, heavy tails, outlier "
        "dimensions and the BOS token's massive activations")
def mlp_layers(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    data = domain_activations(ctx)
    n_layers = ctx.model.cfg.n_layers
    per_layer = []
    for layer in range(n_layers):
        x, _ = _layer_rows(data, layer)
        stats = describe(x)
        energy = (x.double() ** 2).sum(0)
        top5 = energy.topk(5).values.sum().item() / energy.sum().item()
        bos = float(np.mean([data["acts"][d][layer, 0].norm().item() for d in DOMAIN_TEXTS]))
        per_layer.append({**stats, "top5_energy": top5, "bos_norm": bos})
    layers = np.arange(n_layers)

    def series(key: str) -> np.ndarray:
        return np.array([s[key] for s in per_layer])

    fig, axes = plt.subplots(1, 3, figsize=(20, 7.5))
    ax = axes[0]
    ax.plot(layers, series("norm_mean"), marker="o", color=style.BLUE, label="text tokens (mean)")
    ax.plot(layers, series("bos_norm"), marker="s", color=style.RED, ls="--", label="BOS token")
    ax.set_yscale("log")
    ax.set_ylim(None, ax.get_ylim()[1] * 100)  # headroom for the legend
    ax.set_title("Norm of the MLP output")
    ax.set_ylabel("‖MLP output‖ (log scale)")
    ax.legend(fontsize=13)
    ax = axes[1]
    ax.plot(layers, series("excess_kurtosis"), marker="o", color=style.PURPLE)
    ax.set_yscale("log")
    ax.set_title("Heavy tails")
    ax.set_ylabel("excess kurtosis (Gaussian: 0)")
    ax = axes[2]
    ax.plot(layers, 100 * series("top5_energy"), marker="o", color=style.ORANGE)
    ax.axhline(100 * 5 / ctx.model.cfg.d_model, color=style.GREY, ls=":", lw=2,
               label=f"if spread evenly ({100 * 5 / ctx.model.cfg.d_model:.1f} %)")
    ax.set_title("Outlier dimensions")
    ax.set_ylabel("% of squared norm in the top 5 dims")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=13)
    for ax in axes:
        ax.set_xlabel("layer")
        ax.axvline(LAYER, color=style.GREY, lw=1.5, alpha=0.6)
    axes[0].text(LAYER + 0.3, axes[0].get_ylim()[0] * 1.2, f"layer {LAYER}", color=style.GREY, fontsize=13)
    style.suptitle(fig, "MLP outputs from the first layer to the last", ctx.model_label,
                   subtitle=f"same four texts, {len(_layer_rows(data, 0)[0])} tokens; statistics over text tokens "
                            "(BOS apart)")
    fig.subplots_adjust(top=0.83, wspace=0.3)
    keys = ("std", "excess_kurtosis", "norm_mean", "bos_norm", "top5_energy")
    return FigureOutput(fig, results={"per_layer": [{"layer": l, **{k: round(s[k], 4) for k in keys},
                                                     "outlier_dims": s["outlier_dims"][:3]}
                                                    for l, s in enumerate(per_layer)]})
