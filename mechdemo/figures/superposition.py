"""Toy models of superposition (Elhage et al. 2022): no language model involved, the slides say "toy model".

* ``superposition`` and ``superposition_sparse``: 5 features in 2 dimensions, one model per sparsity,
  trained together once (``ctx.computed``); the first figure shows the dense end of the sweep, the
  second the sparse end.
* ``superposition_correlation``: correlated pairs end up orthogonal, anticorrelated pairs antipodal.
* ``superpositionhip``: 100 features in 10 dimensions, the dimensions each feature gets as sparsity grows.

All train small models from :mod:`mechdemo.superposition` on CPU with fixed seeds.
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
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
N_FEATURES, N_HIDDEN = 5, 2
SHOWN = {"superposition": (0, 1), "superposition_sparse": (2, 5)}  # instances (sparsities) each figure draws
# 3,000 Adam steps at 3e-3 for the 5- and 4-feature models (measured: the same geometries as 5,000 at 2e-3
# and 10,000 at 1e-3: the same features represented, the same pair geometry)
STEPS, LR = 3_000, 3e-3
REPRESENTED = 0.5  # ‖W_i‖ above this: the feature is stored (n_represented's threshold)


def _geometry(W: torch.Tensor) -> str:
    """The arrangement of the stored features ``W`` ([hidden, stored]): each one's dimensionality
    among them is 1 (orthogonal), 1/2 (antipodal pairs) or 2/5 (a pentagon)."""
    dims = feature_dimensionality(W[None])[0].numpy()
    for value, name in ((1.0, "orthogonal"), (0.5, "antipodal pairs"), (0.4, "pentagon")):
        if len(dims) and np.all(np.abs(dims - value) < 0.05):
            return name
    return "no regular shape"


def _arrow_panel(ax, W: np.ndarray, colours, names, stored=None, lim: float = 1.55) -> None:
    """Feature directions W[:, i] (2-D) as arrows from the origin, each labelled at its tip.

    Features not stored (``stored[i]`` False) are drawn faint and unlabelled."""
    stored = np.ones(W.shape[1], bool) if stored is None else stored
    ax.axhline(0, color=style.GREY, lw=1, alpha=0.35)
    ax.axvline(0, color=style.GREY, lw=1, alpha=0.35)
    for i in range(W.shape[1]):
        alpha = 1.0 if stored[i] else 0.3
        ax.annotate("", xy=W[:, i], xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": colours[i], "lw": 4,
                                                               "mutation_scale": 26, "alpha": alpha})
        if stored[i]:
            tip = W[:, i] / max(np.linalg.norm(W[:, i]), 1e-6)
            ax.text(*(W[:, i] + 0.2 * tip), names[i], color=colours[i], fontsize=24, weight="bold",
                    ha="center", va="center")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)


def _sweep(ctx: FigureContext) -> dict:
    """The 5-feature sparsity sweep, trained once per run (both ``superposition`` figures draw from it)."""

    def compute():
        sparsity = torch.tensor(SPARSITIES)
        importance = 0.9 ** torch.arange(float(N_FEATURES))
        model = ToyModel(ToyConfig(n_features=N_FEATURES, n_hidden=N_HIDDEN, n_instances=len(SPARSITIES)),
                         1 - sparsity, importance, seed=ctx.seed)
        train_toy_model(model, steps=ctx.pick(STEPS, 200), lr=LR, seed=ctx.seed, progress=True)
        W = model.W.detach()
        return {"W": W, "norms": feature_norms(W), "superposition": interference(W), "represented": n_represented(W),
                "dimensionality": feature_dimensionality(W)}

    return ctx.computed("superposition.sweep", compute)


def _sweep_figure(ctx: FigureContext, name: str) -> FigureOutput:
    from matplotlib import cm

    sweep = _sweep(ctx)
    W, norms, represented, dims = sweep["W"], sweep["norms"], sweep["represented"], sweep["dimensionality"]
    shown = SHOWN[name]
    colours = cm.viridis(np.linspace(0, 0.8, N_FEATURES))  # darkest: most important
    names = [f"x{i}" for i in range(N_FEATURES)]
    stored = [(norms[k] > REPRESENTED).numpy() for k in range(len(SPARSITIES))]
    geometry = [_geometry(W[k][:, norms[k] > REPRESENTED]) for k in range(len(SPARSITIES))]

    def draw():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(shown), figsize=style.SLIDE)
        for ax, k in zip(axes, shown):
            _arrow_panel(ax, W[k].numpy(), colours, names, stored[k])
            ax.set_title(tr("S = {s}: {n} of {total} features", s=num(SPARSITIES[k], "g"), n=int(represented[k]),
                            total=N_FEATURES))
            ax.set_xlabel(tr(geometry[k]), fontsize=24, color=style.GREY, labelpad=10)
        return fig

    results = {"shown_sparsity": [SPARSITIES[k] for k in shown],
               "shown_features_represented": [int(represented[k]) for k in shown],
               "shown_geometry": [geometry[k] for k in shown]}
    if name == "superposition":  # the whole sweep's numbers, once
        results = {
            "n_features": N_FEATURES,
            "n_hidden": N_HIDDEN,
            "sparsity": list(SPARSITIES),
            "features_represented": represented.tolist(),
            "geometry": geometry,
            "feature_norms": norms.double().numpy().round(3).tolist(),
            "superposition": sweep["superposition"].double().numpy().round(3).tolist(),
            "feature_dimensionality": dims.double().numpy().round(3).tolist(),
            **results,
        }
    return FigureOutput(draw, results=results)


@figure("superposition", needs_model=False, description="5 features in 2 dimensions, dense end of a sparsity sweep: "
        "dense, only the 2 most important features (orthogonal); a little sparser, 4 in antipodal pairs")
def superposition_figure(ctx: FigureContext) -> FigureOutput:
    return _sweep_figure(ctx, "superposition")


@figure("superposition_sparse", needs_model=False, description="5 features in 2 dimensions, sparse end of the sweep: "
        "all 5 stored, as a pentagon")
def superposition_sparse(ctx: FigureContext) -> FigureOutput:
    return _sweep_figure(ctx, "superposition_sparse")


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


ORTHOGONAL, ANTIPODAL = 0.1, -0.9  # |cos| below / cos below: a pair counted as orthogonal / antipodal


@figure("superposition_correlation", needs_model=False, description="4 features in 2 dimensions as two pairs: "
        "correlated pairs end up orthogonal, anticorrelated pairs antipodal (lowest-loss of 4 initialisations each)")
def superposition_correlation(ctx: FigureContext) -> FigureOutput:
    p = 0.05
    models = _paired_models(ctx.seed, p, steps=ctx.pick(STEPS, 200))
    n = models["correlated"].cfg.n_instances
    results = {"n_features": 4, "n_hidden": 2, "feature_probability": p, "n_initializations": n}
    shown = {}
    for name, model in models.items():
        geometry = pair_geometry(model)
        cos = geometry["within_pair_cosine"]
        best = int(geometry["loss"].argmin())
        shown[name] = (model.W.detach()[best].numpy(), cos[best].numpy())
        full = cosine_matrix(model.W.detach())  # [instance, feature, feature]
        cross = torch.stack([full[:, 0, 2:], full[:, 1, 2:], full[:, 2, :2], full[:, 3, :2]], 1)  # other pair's
        results[name] = {"within_pair_cosine": cos.double().numpy().round(3).tolist(),
                         "loss": geometry["loss"].double().numpy().round(6).tolist(), "lowest_loss_instance": best,
                         "n_orthogonal": int((cos.abs() < ORTHOGONAL).all(1).sum()),
                         "n_antipodal": int((cos < ANTIPODAL).all(1).sum()),
                         # every feature antipodal to one of the other pair's: the local minimum
                         "n_cross_pair_antipodal": int((cross.min(-1).values < ANTIPODAL).all(1).sum())}
    results["anticorrelated"]["n_not_antipodal"] = n - results["anticorrelated"]["n_antipodal"]
    colours = [style.BLUE, style.SKY, style.RED, style.ORANGE]  # pair 1: blues, pair 2: red and orange
    names = [f"x{i}" for i in range(4)]
    titles = {"correlated": "correlated: present together", "anticorrelated": "anticorrelated: never together"}

    def draw():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=style.SLIDE)
        for ax, (name, (W, cos)) in zip(axes, shown.items()):
            _arrow_panel(ax, W, colours, names, lim=1.4)
            ax.set_title(tr(titles[name]))
            a, b = (num(c + 0.0, "+.2f").replace("-", "−") for c in cos)  # a true minus sign
            ax.set_xlabel(tr("cos(x0, x1) = {a}   cos(x2, x3) = {b}", a=a, b=b), fontsize=22, labelpad=14)
        return fig

    return FigureOutput(draw, results=results)


STICKY = {1: "1", 3 / 4: "3/4", 2 / 3: "2/3", 1 / 2: "1/2", 2 / 5: "2/5", 1 / 3: "1/3"}
NEAR = 0.02  # a feature "at" a sticky fraction: its dimensionality within this of it
# named plateaus: text, where the text goes (x, y), the point its arrow marks
STICKY_NAMES = {1 / 2: ("antipodal pairs", (1.05, 0.14), (2.45, 0.48)), 2 / 5: ("pentagons", (7.5, 0.52), (4.9, 0.42))}


@figure("superpositionhip", needs_model=False, description="Feature dimensionality vs sparsity for 100 features "
        "in 10 dimensions: the superposition hypothesis, with the 'sticky' fractions 1/2, 2/5 ...")
def superpositionhip(ctx: FigureContext) -> FigureOutput:
    n_instances, n_features, n_hidden = 16, 100, 10
    p = 1 / torch.logspace(0, 2, n_instances)  # 1/p from 1 to 100
    model = ToyModel(ToyConfig(n_features, n_hidden, n_instances), p, seed=ctx.seed)
    # 3,000 steps of 256 (measured: the same counts at 1/2, 2/5 and 1/3 as 5,000 steps of 512, in a third of the time)
    train_toy_model(model, steps=ctx.pick(3_000, 100), batch_size=256, lr=3e-3, seed=ctx.seed, progress=True)
    W = model.W.detach()
    per_feature = dimensions_per_feature(W)
    D, norms = feature_dimensionality(W), feature_norms(W)
    inv_p = (1 / p).numpy()
    rng = np.random.default_rng(ctx.seed)
    points = []  # (x jittered, D) of the represented features of each model
    for k in range(n_instances):
        d = D[k][norms[k] > REPRESENTED].numpy()
        points.append((inv_p[k] * np.exp(rng.normal(0, 0.04, len(d))), d))

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator

        fig, ax = plt.subplots(figsize=style.SLIDE)
        for value, text in STICKY.items():
            ax.axhline(value, color=style.GREY, ls=":", lw=1.5)
            ax.text(inv_p[-1] * 1.3, value, text, va="center", fontsize=20, color=style.GREY)
        for name, text_at, point in STICKY_NAMES.values():
            ax.annotate(tr(name), point, xytext=text_at, ha="left", va="center", fontsize=22, color=style.GREY,
                        weight="bold", arrowprops={"arrowstyle": "->", "color": style.GREY, "lw": 2})
        for k, (x, d) in enumerate(points):
            ax.scatter(x, d, s=40, alpha=0.4, color=style.BLUE, lw=0,
                       label=tr("each feature: Dᵢ") if k == 0 else None)
        ax.plot(inv_p, per_feature.numpy(), color="black", lw=3.5, label=tr("whole model"))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1, 3, 10, 30, 100]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels(["1", "3", "10", "30", "100"])
        ax.set_xlim(0.85, inv_p[-1] * 1.25)
        ax.set_xlabel(tr("1 / (1 − S): how rare each feature is"))
        ax.set_ylabel(tr("dimensions per feature"))
        ax.set_ylim(0, 1.08)
        ax.spines["right"].set_visible(False)
        ax.legend(loc="upper right", bbox_to_anchor=(0.96, 0.9), markerscale=2)
        return fig

    return FigureOutput(draw, results={
        "n_features": n_features,
        "n_hidden": n_hidden,
        "inverse_feature_probability": inv_p.astype(float).round(2).tolist(),
        "dimensions_per_feature": per_feature.double().numpy().round(4).tolist(),
        "features_represented": n_represented(W).tolist(),
        # how many represented features sit within NEAR of each sticky fraction
        "near_tolerance": NEAR,
        "features_near_fraction": {text: int(((D[norms > REPRESENTED] - value).abs() < NEAR).sum())
                                   for value, text in STICKY.items()},
    })
