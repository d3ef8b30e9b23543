"""MLP activations, one idea per figure, all from one recording of the MLP outputs.

The course's first guide hooks the output of MLP ``n`` of Llama 3.2 1B and looks at it: histogram,
mean and variance, PCA, t-SNE, and four prompts from different domains. These figures do that on
the offline model with :mod:`mechdemo.activations`, on the same four domains:

- ``mlp_histogram``: one layer's values against a Gaussian of the same mean and variance (heavy tails);
- ``mlp_outlier_dims``: a few residual-stream dimensions carry most of the magnitude;
- ``mlp_domains``: the four domains give almost the same distribution of values;
- ``mlp_pca`` and ``mlp_tsne``: the tokens in 2-D, coloured by domain;
- ``mlp_layer_norms`` and ``mlp_layer_outliers``: the same statistics across every layer.

The MLP outputs of every layer on the four texts are recorded once per run (``ctx.computed``) and
each figure reads its part. The first position (BOS) is left out of the statistics and projections
and reported apart: models write a few "massive" activations there (Sun et al. 2024), which would
dominate every histogram and principal component while saying nothing about the text.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from mechdemo.activations import DOMAIN_TEXTS, describe, mlp_outputs, pca_2d, tsne_2d
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

TOP_K = 5  # outlier dimensions counted in the per-layer energy share
TAIL_SIGMAS = 5  # "heavy tail": values this many standard deviations from the mean
PERPLEXITY = 20  # t-SNE
NEIGHBOURS = 5  # t-SNE neighbourhoods: how many nearest neighbours share the token's domain
MASSIVE = 10  # a layer writes "massive" activations on BOS when its BOS norm exceeds this many times the text's
DOMAIN_COLORS = [style.BLUE, style.GREEN, style.ORANGE, style.PURPLE]


def domain_activations(ctx: FigureContext) -> dict:
    """MLP outputs of every layer for each domain text: ``{"acts": {domain: [n_layers, pos, d]}, "tokens": ...}``."""

    def compute() -> dict:
        model = ctx.model64  # t-SNE amplifies the last bits of float32 sums, which differ between CPUs
        layers = list(range(model.cfg.n_layers))
        acts, tokens = {}, {}
        for domain, text in DOMAIN_TEXTS.items():
            ids = model.to_tokens(text)  # [1, pos], BOS first
            outs = mlp_outputs(model, ids, layers)
            acts[domain] = torch.stack([outs[layer][0] for layer in layers]).float().cpu()
            tokens[domain] = [model.tokenizer.decode([t]) for t in ids[0].tolist()]
        return {"acts": acts, "tokens": tokens}

    return ctx.computed("mlp.domain_activations", compute)


def _layer_rows(data: dict, layer: int) -> tuple[torch.Tensor, np.ndarray]:
    """Rows (tokens after BOS) of all domains at ``layer`` and the domain index of each row."""
    rows = [data["acts"][d][layer, 1:] for d in DOMAIN_TEXTS]
    labels = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    return torch.cat(rows), labels


def _bos_norm(data: dict, layer: int) -> float:
    return float(np.mean([data["acts"][d][layer, 0].norm().item() for d in DOMAIN_TEXTS]))


def _layer(ctx: FigureContext) -> dict:
    """The model's MLP layer for these figures (``ModelSpec.mlp_layer``: 8 in the course's Llama 3.2
    1B): its number, rows, their domains and tokens, and :func:`describe` of them."""

    def compute() -> dict:
        data = domain_activations(ctx)
        n = ctx.spec.activation_layer(ctx.model.cfg.n_layers)
        x, labels = _layer_rows(data, n)
        tokens = [t for d in DOMAIN_TEXTS for t in data["tokens"][d][1:]]
        return {"layer": n, "x": x, "labels": labels, "tokens": tokens, "stats": describe(x),
                "bos_norm": _bos_norm(data, n)}

    return ctx.computed("mlp.layer", compute)


def _per_layer(ctx: FigureContext) -> list[dict]:
    """:func:`describe` of every layer, the share of the squared norm in its top dimensions, the BOS norm."""

    def compute() -> list[dict]:
        data = domain_activations(ctx)
        out = []
        for layer in range(ctx.model.cfg.n_layers):
            x, _ = _layer_rows(data, layer)
            energy = (x.double() ** 2).sum(0)
            top = energy.topk(TOP_K).values.sum().item() / energy.sum().item()
            out.append({**describe(x), "top_energy": top, "bos_norm": _bos_norm(data, layer)})
        return out

    return ctx.computed("mlp.per_layer", compute)


def _domain_names() -> list[str]:
    return [tr(d) for d in DOMAIN_TEXTS]


def _domain_legend(ax, loc="upper left", **kw):
    ax.legend(loc=loc, markerscale=2.2, handletextpad=0.2, borderpad=0.4, framealpha=0.9, **kw)


def _token(text: str) -> str:
    """A token as shown on a figure: quoted, without its leading space (“the” for " the")."""
    return "“" + (text.strip() or text).replace("\n", "⏎").replace("$", r"\$") + "”"


# ---- one layer -----------------------------------------------------------------------------------


@figure("mlp_histogram", description="One layer's MLP output values against a Gaussian of the same mean and "
        "variance: heavy tails")
def mlp_histogram(ctx: FigureContext) -> FigureOutput:
    from scipy.stats import norm

    layer = _layer(ctx)
    x, stats = layer["x"], layer["stats"]
    values = x.flatten().double().numpy()
    z = np.abs(values - stats["mean"]) / stats["std"]
    beyond = float((z > TAIL_SIGMAS).mean())
    gaussian = float(2 * norm.sf(TAIL_SIGMAS))

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        lim = np.abs(values).max() * 1.02
        bins = np.linspace(-lim, lim, 161)
        density, _, _ = ax.hist(values, bins=bins, density=True, histtype="stepfilled", color=style.BLUE, alpha=0.75,
                                label=tr("MLP output of layer {layer}", layer=layer["layer"]))
        grid = np.linspace(-lim, lim, 800)
        ax.plot(grid, norm.pdf(grid, stats["mean"], stats["std"]), color=style.RED, lw=3, ls="--",
                label=tr("Gaussian with the same mean and variance"))
        ax.set_yscale("log")
        ax.set_ylim(1e-6, density.max() * 30)
        ax.set_xlim(-lim, lim)
        ax.set_xlabel(tr("activation value"))
        ax.set_ylabel(tr("density (log scale)"))
        edge = TAIL_SIGMAS * stats["std"]
        for side in (-1, 1):
            ax.axvspan(stats["mean"] + side * edge, side * lim, color=style.ORANGE, alpha=0.12, lw=0)
        ax.text(-lim * 0.97, 2e-3, tr("beyond ±{k} σ:\n{share} of the values\n(Gaussian: {g})", k=TAIL_SIGMAS,
                                      share=num(100 * beyond, ".2f") + " %", g=num(100 * gaussian, ".5f") + " %"),
                ha="left", va="bottom", fontsize=22, color="#8a3b00")
        ax.legend(loc="upper right", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "layer": layer["layer"], "tokens": len(x), "d_model": x.shape[1], "values": int(values.size),
        **{k: round(stats[k], 4) for k in ("mean", "std", "var", "excess_kurtosis", "min", "max", "norm_mean")},
        "tail_sigmas": TAIL_SIGMAS, "tail_share": round(beyond, 6), "gaussian_tail_share": gaussian,
        "tail_over_gaussian": round(beyond / gaussian), "bos_norm_mean": round(layer["bos_norm"], 3),
    })


OUTLIER_OVER_MEDIAN = 5  # mlp_outlier_dims: a dimension this many times the median one is an outlier


@figure("mlp_outlier_dims", description="Mean magnitude of one layer's MLP output per residual-stream dimension: "
        "a few outlier dimensions dominate")
def mlp_outlier_dims(ctx: FigureContext) -> FigureOutput:
    layer = _layer(ctx)
    x, stats, tokens = layer["x"], layer["stats"], layer["tokens"]
    magnitude = x.abs().mean(0).numpy()
    median = stats["median_dim_mean_abs"]
    # highlighted: up to three dimensions, only those well above the median (a model without outlier
    # dimensions gets a note, not three arbitrary bars in red)
    top = [d for d in stats["outlier_dims"][:3] if magnitude[d] >= OUTLIER_OVER_MEDIAN * median]
    # the token on which each outlier dimension is largest
    peaks = [tokens[int(x[:, d].abs().argmax())] for d in top]

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        ax.stairs(magnitude, np.arange(len(magnitude) + 1) - 0.5, fill=True, color=style.GREY)  # one artist: fast
        same = len(set(peaks)) == 1 and len(peaks) > 1
        for dim, token in zip(top, peaks):
            ax.bar(dim, magnitude[dim], width=4, color=style.RED)
            ratio = num(magnitude[dim] / median, ".0f")
            label = (tr("dim {dim}: {ratio}× the median", dim=dim, ratio=ratio) if same else
                     tr("dim {dim}: {ratio}× the median\n(largest on {token})", dim=dim, ratio=ratio,
                        token=_token(token)))
            right = dim > 0.7 * len(magnitude)
            ax.annotate(label, (dim, magnitude[dim]), xytext=(-12 if right else 12, -6), textcoords="offset points",
                        va="top", ha="right" if right else "left", color=style.RED, fontsize=20, weight="bold")
        if not top:
            style.note(ax, tr("no outlier dimension: the largest is {ratio}× the median",
                              ratio=num(magnitude.max() / median, ".1f")))
        elif same:
            ax.text(0.02, 0.6, tr("all {n} peak on the token {token}", n=len(top), token=_token(peaks[0])),
                    transform=ax.transAxes, ha="left", va="center", color=style.RED, fontsize=22)
        ax.axhline(median, color=style.BLUE, ls=":", lw=3,
                   label=tr("median dimension: {value}", value=num(median, ".2f")))
        ax.set_xlabel(tr("residual-stream dimension"))
        ax.set_ylabel(tr("mean |activation|"))
        ax.set_xlim(-5, len(magnitude) + 5)
        ax.set_ylim(0, magnitude.max() * 1.08)
        ax.legend(loc="upper left", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "layer": layer["layer"], "d_model": len(magnitude),
        "outlier_dims": stats["outlier_dims"], "outlier_mean_abs": [round(v, 4) for v in stats["outlier_mean_abs"]],
        "median_dim_mean_abs": round(median, 4),
        "top_over_median": round(stats["outlier_mean_abs"][0] / median, 2),
        "outlier_peak_tokens": peaks,  # of the highlighted dimensions, those over the threshold
        "outlier_threshold": OUTLIER_OVER_MEDIAN,
    })


@figure("mlp_domains", description="The distribution of one layer's MLP output values on each of four texts from "
        "different domains: almost the same")
def mlp_domains(ctx: FigureContext) -> FigureOutput:
    layer = _layer(ctx)
    x, labels = layer["x"], layer["labels"]
    per_domain = [x[labels == i].flatten().double().numpy() for i in range(len(DOMAIN_TEXTS))]
    stds = [float(v.std()) for v in per_domain]

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        edges = np.linspace(-4, 4, 81)
        peak = 0.0
        for values, name, colour in zip(per_domain, _domain_names(), DOMAIN_COLORS):
            counts, _, _ = ax.hist(values, bins=edges, density=True, histtype="step", lw=3, color=colour,
                                   label=name)
            peak = max(peak, counts.max())
        ax.set_ylim(0, peak * 1.12)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(tr("activation value (central range)"))
        ax.set_ylabel(tr("density"))
        ax.legend(loc="upper left", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "layer": layer["layer"], "domains": list(DOMAIN_TEXTS), "n_domains": len(DOMAIN_TEXTS),
        "tokens_per_domain": [int((labels == i).sum()) for i in range(len(DOMAIN_TEXTS))],
        "std_per_domain": [round(s, 4) for s in stds],
        "std_spread": round((max(stds) - min(stds)) / float(np.mean(stds)), 4),
    })


def _scatter(ax, points, labels):
    for i, (name, colour) in enumerate(zip(_domain_names(), DOMAIN_COLORS)):
        mask = labels == i
        ax.scatter(points[mask, 0], points[mask, 1], s=90, alpha=0.85, color=colour, label=name,
                   edgecolors="white", linewidths=0.6)


def _extremes(scores: np.ndarray, n: int) -> list[int]:
    """Rows with the largest |score| (the sign of a principal component is arbitrary)."""
    return [int(i) for i in np.argsort(-np.abs(scores))[:n]]


@figure("mlp_pca", description="One layer's MLP outputs projected on their first two principal components, "
        "coloured by the text's domain")
def mlp_pca(ctx: FigureContext) -> FigureOutput:
    from sklearn.metrics import silhouette_score

    layer = _layer(ctx)
    x, labels, tokens = layer["x"], layer["labels"], layer["tokens"]
    points, explained = pca_2d(x, seed=ctx.seed)
    silhouette = float(silhouette_score(x.numpy(), labels))
    pc1, pc2 = _extremes(points[:, 0], 8), _extremes(points[:, 1], 8)

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        _scatter(ax, points, labels)
        for rows, axis in ((pc1, 0), (pc2, 1)):
            shown: set[str] = set()
            for i in rows:
                if tokens[i] in shown or len(shown) == 3:
                    continue
                shown.add(tokens[i])
                offset = (0, 14) if axis == 0 else (16, -4)
                ax.annotate(_token(tokens[i]), points[i], xytext=offset, textcoords="offset points",
                            ha="center" if axis == 0 else "left", va="bottom" if axis == 0 else "center",
                            fontsize=20, color="#333333")
        ax.set_xlabel(tr("PC 1 ({share} of the variance)", share=num(100 * explained[0], ".0f") + " %"))
        ax.set_ylabel(tr("PC 2 ({share})", share=num(100 * explained[1], ".0f") + " %"))
        _domain_legend(ax, loc="lower left")
        return fig

    return FigureOutput(draw, results={
        "layer": layer["layer"], "tokens": len(x), "d_model": x.shape[1],
        "pca_explained_variance": [round(float(v), 4) for v in explained],
        "domain_silhouette": round(silhouette, 4),
        "pc1_extreme_tokens": [tokens[i] for i in pc1], "pc2_extreme_tokens": [tokens[i] for i in pc2],
    })


@figure("mlp_tsne", description="One layer's MLP outputs embedded in 2-D with t-SNE, coloured by the text's domain")
def mlp_tsne(ctx: FigureContext) -> FigureOutput:
    from sklearn.neighbors import NearestNeighbors

    layer = _layer(ctx)
    x, labels, tokens = layer["x"], layer["labels"], layer["tokens"]
    points = tsne_2d(x, seed=ctx.seed, perplexity=PERPLEXITY)
    _, idx = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(points).kneighbors(points)
    same = float((labels[idx[:, 1:]] == labels[:, None]).mean())
    chance = float(sum((labels == i).mean() ** 2 for i in range(len(DOMAIN_TEXTS))))
    # tight groups of one word: points most of whose neighbours are the same token (from any text)
    word_of = {}
    for i, row in enumerate(idx):
        word, count = Counter(tokens[j] for j in row).most_common(1)[0]
        if count > (NEIGHBOURS + 1) / 2 and tokens[i] == word:
            word_of.setdefault(word, []).append(i)
    scale = float(np.ptp(points, axis=0).mean())

    def tight(rows: list[int]) -> bool:  # one visible cluster, not a word spread over the map
        group = points[rows]
        return len(rows) >= NEIGHBOURS and float(np.linalg.norm(group - group.mean(0), axis=1).max()) < 0.06 * scale

    words = sorted((w for w, rows in word_of.items() if tight(rows)), key=lambda w: -len(word_of[w]))

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        _scatter(ax, points, labels)
        for word in words[:5]:
            group = points[word_of[word]]
            ax.annotate(_token(word), (group[:, 0].mean(), group[:, 1].max()), xytext=(0, 12),
                        textcoords="offset points", ha="center", va="bottom", fontsize=22, weight="bold",
                        color="#333333")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])  # t-SNE coordinates have no meaning of their own
        ax.set_yticks([])
        pad = 0.05 * np.ptp(points[:, 0])
        ax.set_xlim(points[:, 0].min() - pad, points[:, 0].max() + 0.45 * np.ptp(points[:, 0]))
        ax.set_ylim(points[:, 1].min() - pad, points[:, 1].max() + 2 * pad)
        _domain_legend(ax, loc="center right")
        return fig

    return FigureOutput(draw, results={
        "layer": layer["layer"], "tokens": len(x), "perplexity": PERPLEXITY, "neighbours": NEIGHBOURS,
        "neighbours_same_domain": round(same, 4), "neighbours_same_domain_chance": round(chance, 4),
        "word_clusters": words,
    })


# ---- every layer --------------------------------------------------------------------------------


def _mark_layer(ax, layer: int):
    ax.axvline(layer, color=style.GREY, lw=2, alpha=0.6)


@figure("mlp_layer_norms", description="Norm of the MLP output across layers, text tokens vs the BOS token's "
        "massive activations")
def mlp_layer_norms(ctx: FigureContext) -> FigureOutput:
    per_layer = _per_layer(ctx)
    layers = np.arange(len(per_layer))
    text = np.array([s["norm_mean"] for s in per_layer])
    bos = np.array([s["bos_norm"] for s in per_layer])
    ratio = bos / text
    massive = [int(i) for i in np.flatnonzero(ratio > MASSIVE)]

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        ax.plot(layers, text, marker="o", ms=9, color=style.BLUE, label=tr("text tokens (mean)"))
        ax.plot(layers, bos, marker="s", ms=9, color=style.RED, ls="--", label=tr("BOS token"))
        ax.set_yscale("log")
        ax.set_xlabel(tr("layer"))
        ax.set_ylabel(tr("‖MLP output‖ (log scale)"))
        ax.set_xticks(range(0, len(layers), 5))
        ax.set_xlim(-0.7, len(layers) - 0.3)
        ax.legend(loc="upper left", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "n_layers": len(per_layer),
        "per_layer": [{"layer": l, "norm_mean": round(s["norm_mean"], 4), "bos_norm": round(s["bos_norm"], 4)}
                      for l, s in enumerate(per_layer)],
        "norm_first_layer": round(float(text[0]), 2), "norm_last_layer": round(float(text[-1]), 2),
        "norm_growth": round(float(text[-1] / text[0]), 2),
        "massive_threshold": MASSIVE, "bos_massive_layers": massive, "n_bos_massive_layers": len(massive),
        "bos_max": {"layer": int(bos.argmax()), "norm": round(float(bos.max()), 1),
                    "over_text": round(float(ratio[bos.argmax()]), 1)},
    })


@figure("mlp_layer_outliers", description="Share of the MLP output's squared norm in its top dimensions, layer by "
        "layer: some layers write almost everything into a handful of dimensions")
def mlp_layer_outliers(ctx: FigureContext) -> FigureOutput:
    per_layer = _per_layer(ctx)
    d_model = ctx.model.cfg.d_model
    marked = ctx.spec.activation_layer(ctx.model.cfg.n_layers)
    layers = np.arange(len(per_layer))
    share = np.array([s["top_energy"] for s in per_layer])
    kurtosis = np.array([s["excess_kurtosis"] for s in per_layer])
    even = TOP_K / d_model
    over_half = [int(i) for i in np.flatnonzero(share > 0.5)]

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        ax.plot(layers, 100 * share, marker="o", ms=9, color=style.ORANGE,
                label=tr("the {k} largest of {d} dimensions", k=TOP_K, d=d_model))
        ax.axhline(100 * even, color=style.GREY, ls=":", lw=3,
                   label=tr("if spread evenly ({share})", share=num(100 * even, ".1f") + " %"))
        _mark_layer(ax, marked)
        ax.text(marked + 0.3, 97, tr("layer {layer}\n(previous figures)", layer=marked), color=style.GREY, va="top")
        ax.set_xlabel(tr("layer"))
        ax.set_ylabel(tr("% of the squared norm"))
        ax.set_xticks(range(0, len(layers), 5))
        ax.set_xlim(-0.7, len(layers) - 0.3)
        ax.set_ylim(0, 100)
        ax.legend(loc="upper right", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "n_layers": len(per_layer), "top_k": TOP_K, "d_model": d_model, "even_share": round(even, 5),
        "per_layer": [{"layer": l, "top_energy": round(s["top_energy"], 4),
                       "excess_kurtosis": round(s["excess_kurtosis"], 4), "outlier_dims": s["outlier_dims"][:3]}
                      for l, s in enumerate(per_layer)],
        "layers_over_half": over_half, "n_layers_over_half": len(over_half),
        "max_share": {"layer": int(share.argmax()), "share": round(float(share.max()), 4)},
        "max_kurtosis": {"layer": int(np.argmax(kurtosis)), "excess_kurtosis": round(float(np.max(kurtosis)), 1)},
    })
