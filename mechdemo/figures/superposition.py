"""Toy models of superposition: superposition.png, superposition_correlation.png, superpositionhip.png.

All three train small models from :mod:`mechdemo.superposition` on CPU with fixed seeds (no
language model involved: the figures say "toy model").
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.superposition import (
    ToyConfig,
    ToyModel,
    cosine_matrix,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    interference,
    n_represented,
    per_instance_loss,
    train_toy_model,
)

SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99, 0.999)
# 3,000 Adam steps at 3e-3 for the 5- and 4-feature models (measured: the same geometries as 5,000 at 2e-3
# and 10,000 at 1e-3: the same features represented, the same pair geometry)
STEPS, LR = 3_000, 3e-3
TOY_LABEL = "toy model (Elhage et al. 2022)"


def _arrow_panel(ax, W: np.ndarray, colours, lim: float = 1.5) -> None:
    """Feature directions W[:, i] (2-D) as arrows from the origin."""
    for i in range(W.shape[1]):
        ax.annotate("", xy=W[:, i], xytext=(0, 0),
                    arrowprops={"arrowstyle": "-|>", "color": colours[i], "lw": 3, "mutation_scale": 18})
        ax.scatter(*W[:, i], color=colours[i], s=50, zorder=3)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color=style.GREY, lw=0.8, alpha=0.4)
    ax.axvline(0, color=style.GREY, lw=0.8, alpha=0.4)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)


@figure("superposition", needs_model=False, description="5 features in 2 dimensions across a sparsity sweep: "
        "from the 2 most important features (dense) to a pentagon (sparse)")
def superposition_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt
    from matplotlib import cm

    sparsity = torch.tensor(SPARSITIES)
    importance = 0.9 ** torch.arange(5.0)
    model = ToyModel(ToyConfig(n_features=5, n_hidden=2, n_instances=len(SPARSITIES)), 1 - sparsity, importance,
                     seed=ctx.seed)
    train_toy_model(model, steps=ctx.pick(STEPS, 200), lr=LR, seed=ctx.seed, progress=True)
    W = model.W.detach()
    norms, superpos, represented = feature_norms(W), interference(W), n_represented(W)
    colours = cm.viridis(np.linspace(0, 0.9, 5))

    fig, axes = plt.subplots(2, len(SPARSITIES), figsize=(20, 8.5), gridspec_kw={"height_ratios": [1.25, 1]})
    for k, s in enumerate(SPARSITIES):
        _arrow_panel(axes[0, k], W[k].numpy(), colours)
        axes[0, k].set_title(f"S = {s:g}\n{represented[k]} features", fontsize=17)
        ax = axes[1, k]
        bar_colours = cm.RdYlBu_r(np.clip(superpos[k].numpy() / 2, 0, 1))
        ax.barh(range(5), norms[k].numpy(), color=bar_colours, edgecolor=style.GREY)
        ax.set_xlim(0, 1.3)
        ax.set_yticks(range(5))
        ax.set_yticklabels([f"x{i}" for i in range(5)] if k == 0 else [])
        ax.invert_yaxis()
        ax.set_xlabel("‖W_i‖", fontsize=15)
    axes[1, 0].set_ylabel("feature (most important first)", fontsize=14)
    sm = plt.cm.ScalarMappable(cmap="RdYlBu_r", norm=plt.Normalize(0, 2))
    cbar = fig.colorbar(sm, ax=axes[1, :], fraction=0.02, pad=0.01)
    cbar.set_label("superposition Σⱼ (Ŵᵢ·Wⱼ)²", fontsize=13)
    style.suptitle(fig, "Superposition: 5 features, 2 dimensions", TOY_LABEL,
                   subtitle="h = Wx, x' = ReLU(WᵀH + b), importance 0.9^i; each feature is zero with probability S "
                            "(sparsity). Arrows: columns of W. Bars: how strongly each feature is represented")
    fig.subplots_adjust(top=0.8, hspace=0.35, wspace=0.15)
    return FigureOutput(fig, results={
        "sparsity": list(SPARSITIES),
        "features_represented": represented.tolist(),
        "feature_norms": norms.double().numpy().round(3).tolist(),
        "superposition": superpos.double().numpy().round(3).tolist(),
    })


def _paired_models(seed: int, p: float, steps: int, n_instances: int = 4) -> dict[str, ToyModel]:
    models = {}
    for name, cfg in (("correlated", ToyConfig(4, 2, n_instances, n_correlated_pairs=2)),
                      ("anticorrelated", ToyConfig(4, 2, n_instances, n_anticorrelated_pairs=2))):
        model = ToyModel(cfg, p, seed=seed)
        train_toy_model(model, steps=steps, lr=LR, seed=seed)
        models[name] = model
    return models


def pair_geometry(model: ToyModel) -> dict:
    """Per instance: cosine between the features of each pair (0-1, 2-3) and the loss."""
    cos = cosine_matrix(model.W.detach())
    within = torch.stack([cos[:, 0, 1], cos[:, 2, 3]], dim=1)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        x = model.generate_batch(100_000, g)
        loss = per_instance_loss(model, x, model(x))
    return {"within_pair_cosine": within, "loss": loss}


@figure("superposition_correlation", needs_model=False, description="4 features in 2 dimensions as two pairs: "
        "correlated pairs end up orthogonal, anticorrelated pairs antipodal")
def superposition_correlation(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    p = 0.05
    models = _paired_models(ctx.seed, p, steps=ctx.pick(STEPS, 200))
    pair_colours = [style.BLUE, style.SKY, style.RED, style.ORANGE]  # pair 1: blues, pair 2: reds
    n = models["correlated"].cfg.n_instances
    fig, axes = plt.subplots(2, n, figsize=(18, 9.5))
    results = {"feature_probability": p}
    for row, (name, model) in enumerate(models.items()):
        geometry = pair_geometry(model)
        best = int(geometry["loss"].argmin())
        W = model.W.detach()
        for k in range(n):
            ax = axes[row, k]
            _arrow_panel(ax, W[k].numpy(), pair_colours, lim=1.4)
            c = geometry["within_pair_cosine"][k]
            ax.set_title(f"init {k}: cos {c[0]:+.2f}, {c[1]:+.2f}" + ("\n(lowest loss)" if k == best else "\n"),
                         fontsize=15, weight="bold" if k == best else "normal")
        axes[row, 0].set_ylabel(f"{name} pairs", fontsize=18, weight="bold")
        axes[row, 0].yaxis.set_label_coords(-0.08, 0.5)
        results[name] = {"within_pair_cosine": geometry["within_pair_cosine"].double().numpy().round(3).tolist(),
                         "loss": geometry["loss"].double().numpy().round(6).tolist(), "lowest_loss_instance": best}
    handles = [plt.Line2D([], [], color=c, lw=4) for c in pair_colours]
    fig.legend(handles, ["pair 1: x0", "pair 1: x1", "pair 2: x2", "pair 2: x3"], loc="lower center", ncol=4,
               fontsize=15, frameon=False)
    style.suptitle(fig, "Correlated features: orthogonal; anticorrelated: antipodal", TOY_LABEL,
                   subtitle=f"4 features in 2 dimensions, each present with probability {p}. Correlated: a pair is "
                            "present together; anticorrelated: at most one of a pair.\nFour random initialisations "
                            "each; cos = cosine between the two features of pair 1 and of pair 2")
    fig.subplots_adjust(top=0.8, bottom=0.08, hspace=0.3, wspace=0.1)
    return FigureOutput(fig, results=results)


STICKY = {1: "1", 3 / 4: "3/4", 2 / 3: "2/3", 1 / 2: "1/2", 2 / 5: "2/5", 1 / 3: "1/3"}


@figure("superpositionhip", needs_model=False, description="Feature dimensionality vs sparsity for 100 features "
        "in 10 dimensions: the superposition hypothesis, with the 'sticky' fractions 1/2, 2/5 ...")
def superpositionhip(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    n_instances, n_features, n_hidden = 16, 100, 10
    p = 1 / torch.logspace(0, 2, n_instances)  # 1/p from 1 to 100
    model = ToyModel(ToyConfig(n_features, n_hidden, n_instances), p, seed=ctx.seed)
    # 3,000 steps of 256 (measured: the same counts at 1/2, 2/5 and 1/3 as 5,000 steps of 512, in a third of the time)
    train_toy_model(model, steps=ctx.pick(3_000, 100), batch_size=256, lr=3e-3, seed=ctx.seed, progress=True)
    W = model.W.detach()
    per_feature = dimensions_per_feature(W)
    D, norms = feature_dimensionality(W), feature_norms(W)

    fig, ax = plt.subplots(figsize=(15, 8))
    inv_p = (1 / p).numpy()
    ax.plot(inv_p, per_feature.numpy(), color="black", lw=3, label="dimensions per feature  m / ‖W‖²_F")
    rng = np.random.default_rng(ctx.seed)
    for k in range(n_instances):
        d = D[k][norms[k] > 0.5].numpy()
        jitter = inv_p[k] * np.exp(rng.normal(0, 0.04, len(d)))
        ax.scatter(jitter, d, s=14, alpha=0.35, color=style.BLUE, label="feature dimensionality Dᵢ" if k == 0 else None)
    for value, text in STICKY.items():
        ax.axhline(value, color=style.GREY, ls=":", lw=1.2)
        ax.text(inv_p[-1] * 1.35, value, text, va="center", fontsize=14, color=style.GREY)
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 − S): how rare each feature is")
    ax.set_ylabel("dimensions per feature")
    ax.set_ylim(0, 1.1)
    ax.legend(loc="upper center", fontsize=14)
    style.suptitle(fig, "Sparser features share dimensions", TOY_LABEL,
                   subtitle=f"{n_features} features in {n_hidden} dimensions, equal importance, one model per sparsity. "
                            "Dense: one dimension per represented feature.\nSparser: features settle on fractions "
                            "of a dimension (1/2 antipodal pairs, 2/5 pentagons ...), then pack ever tighter")
    fig.subplots_adjust(top=0.82)
    return FigureOutput(fig, results={
        "inverse_feature_probability": inv_p.astype(float).round(2).tolist(),
        "dimensions_per_feature": per_feature.double().numpy().round(4).tolist(),
        "features_represented": n_represented(W).tolist(),
        # how many represented features sit within 0.02 of each sticky fraction
        "features_near_fraction": {text: int(((D[norms > 0.5] - value).abs() < 0.02).sum())
                                   for value, text in STICKY.items()},
    })
