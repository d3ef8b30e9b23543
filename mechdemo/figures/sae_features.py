"""What the features of an SAE mean, argued: ``sae_feature_1``, ``sae_feature_2``, ``sae_feature_causal`` and
the feature browser ``sae_browser``.

A feature slide states a hypothesis and tests it. The features shown are picked by a fixed rule
(:func:`mechdemo.sae.pick_hypothesis_features`): among those neither near-dead nor dense, the ones
whose simplest hypothesis, "it detects token t", holds best in both directions, precision (its top
activations fall on t) times recall (it fires on t's occurrences). A list of top activations alone
overstates how specific a feature is (Bricken et al. 2023, "Towards Monosemanticity"), so each figure
shows the contexts (distinct passages: a paragraph the documentation repeats shows once) beside the
activations on t and on every other token. ``sae_feature_causal`` then edits the first feature
inside the model (ablated, amplified) and measures the next-token distribution against a random
direction of the same norm: what a feature *does*, not only what it reads (Templeton et al. 2024).

``sae_feature_1`` also reports the shown SAE's spliced loss on every held-out sequence, with its
standard errors, the ablation gap it is relative to, and the change of loss itself.
"""

from __future__ import annotations

import re

from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.figures.sae import FEATURE_SAE, SMALL, sae_dataset, trained_sae
from mechdemo.sites import PAGES as BROWSER_PAGES

N_FEATURES = 2  # features shown, one figure each: sae_feature_1, sae_feature_2
N_CONTEXTS = 5  # top-activating contexts drawn per feature
TOP_K = 20  # top activations a hypothesis is read from
CANDIDATES = 200  # top activations searched for distinct passages
N_PROMOTED = 6  # promoted tokens reported per feature (the browser draws them)
SCALES = (0.0, 4.0, 16.0)  # the causal check: the feature ablated, amplified 4 and 16 times
ALL_SEQUENCES = 1_000  # the evaluation of the shown SAE: every held-out sequence (fewer exist)
FEATURE_COLOURS = (style.BLUE, style.ORANGE)


def visible(token: str) -> str:
    """A token of whitespace only, shown: newlines as ⏎, spaces as ␣, tabs as ⇥ (as the context lines
    and the feature browser show them)."""
    return token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥")


def token_label(token: str) -> str:
    """A token as a slide names it: without its leading/trailing spaces, or :func:`visible` if only whitespace."""
    return token.strip() or visible(token)


def _features(ctx: FigureContext) -> dict:
    """The shown features of the TopK SAE, computed once per run (each ``sae_feature_<n>`` draws one): the token
    hypothesis with its precision and recall, distinct top contexts, the activations on the token and
    elsewhere, firing frequency and promoted tokens."""
    import torch

    from mechdemo.data import from_uint16
    from mechdemo.sae import (
        distinct_passages, pick_hypothesis_features, promoted_tokens, split_shards, token_contexts,
        token_hypotheses, top_activations,
    )

    def compute():
        arch, fields = FEATURE_SAE
        _, sae = trained_sae(ctx, arch, fields)  # the sweep's SAE of this setting
        data = sae_dataset(ctx)
        _, (heldout,) = split_shards(data)
        x = from_uint16(data.shard_bits(heldout)).float()
        table = data.table(heldout)
        token_ids, doc, pos = (table.column(c).to_numpy() for c in ("token_id", "doc_id", "tok_pos"))
        hyp = token_hypotheses(sae, x, token_ids, top_k=TOP_K)
        features = pick_hypothesis_features(hyp, len(x), n=N_FEATURES)
        values, rows, fired = top_activations(sae, x, k=min(CANDIDATES, len(x)))
        if len(features) < N_FEATURES:  # (a tiny small-scale SAE) the strongest firing features fill in
            extra = [int(f) for f in values[:, 0].argsort(descending=True) if fired[f] > 0 and int(f) not in features]
            features += extra[: N_FEATURES - len(features)]
        promoted = promoted_tokens(sae, ctx.model, features, k=N_PROMOTED)
        with torch.no_grad():
            acts = sae.encode(x.to(sae.W_dec.dtype))[:, features].float().numpy()  # [n, N_FEATURES]
        shown = []
        for i, (f, logits) in enumerate(zip(features, promoted)):
            top = [int(r) for v, r in zip(values[f].tolist(), rows[f].tolist()) if v > 0]
            keep = distinct_passages(top, doc, pos, token_ids, N_CONTEXTS)
            t = int(hyp["token"][f])
            on_t = token_ids == t
            a = acts[:, i]
            shown.append({
                "feature": f,
                "token": ctx.model.tokenizer.decode([t]),
                "precision": float(hyp["precision"][f]), "recall": float(hyp["recall"][f]),
                "occurrences": int(hyp["occurrences"][f]),
                "frequency": float(fired[f]) / len(x),
                "contexts": token_contexts(data, heldout, keep, ctx.model.tokenizer),
                "activations": [float(a[r]) for r in keep],
                "documents": len({int(doc[r]) for r in keep}),
                "on_token": a[on_t & (a > 0)].tolist(), "elsewhere": a[~on_t & (a > 0)].tolist(),
                "promoted": logits,
            })
        return {"layer": data.layer, "arch": arch, "fields": fields, "d_sae": sae.cfg.d_sae, "site": data.site,
                "heldout_tokens": len(x), "features": shown}

    return ctx.computed("sae.features", compute)


def _evaluation(ctx: FigureContext) -> dict:
    """The shown SAE on every held-out sequence: reconstruction and spliced loss with standard errors."""
    from mechdemo.sae import evaluate_sae

    def compute():
        arch, fields = FEATURE_SAE
        _, sae = trained_sae(ctx, arch, fields)
        metrics = evaluate_sae(sae, sae_dataset(ctx), ctx.model, n_sequences=ctx.pick(ALL_SEQUENCES, SMALL["n_sequences"]))
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}

    return ctx.computed("sae.featured_evaluation", compute)


def _clean(text: str) -> str:
    """One line of text: newlines shown as ⏎, runs of spaces (code indentation) as one."""
    return re.sub(r" {2,}", " ", text.replace("\n", "⏎ ").replace("\t", " "))


CONTEXT_FONT = 20
BEFORE_CHARS, AFTER_CHARS = 34, 12  # characters shown (monospace)


def _draw_context(ax, y: float, context: dict, value: float, colour) -> None:
    """One context line (monospace, positions in points from the panel's left edge): the
    activation, the preceding text right-aligned up to the highlighted token, then what follows."""
    from matplotlib import transforms

    char = 0.6 * CONTEXT_FONT  # DejaVu Sans Mono's advance, in points
    before = _clean(context["before"])[-BEFORE_CHARS:]
    token = _clean(context["token"])
    after = _clean(context["after"])[:AFTER_CHARS]
    mono = {"fontsize": CONTEXT_FONT, "family": "DejaVu Sans Mono", "va": "center"}

    def at(points: float):
        return transforms.offset_copy(ax.get_yaxis_transform(), fig=ax.figure, x=points, y=0, units="points")

    edge = 6 * char + BEFORE_CHARS * char  # where the token starts
    ax.text(0, y, num(value, ".1f"), ha="left", weight="bold", transform=at(0), **mono)
    ax.text(0, y, before, ha="right", color=style.GREY, transform=at(edge), **mono)
    ax.text(0, y, token, ha="left", weight="bold", transform=at(edge),
            bbox={"boxstyle": "round,pad=0.2", "fc": colour, "ec": "none", "alpha": 0.45}, **mono)
    ax.text(0, y, after, ha="left", color=style.GREY, transform=at(edge + char * (len(token) + 0.6)), **mono)


def _feature_figure(ctx: FigureContext, rank: int) -> FigureOutput:
    info = _features(ctx)
    feat = info["features"][rank - 1]
    colour = FEATURE_COLOURS[(rank - 1) % len(FEATURE_COLOURS)]
    contexts, activations = feat["contexts"], feat["activations"]
    label = token_label(feat["token"])

    def draw():
        import matplotlib.pyplot as plt
        import numpy as np

        fig, (left, right) = plt.subplots(1, 2, figsize=style.SLIDE, width_ratios=[2.2, 1.0])
        left.set_axis_off()
        left.set_xlim(0, 1)
        left.set_ylim(len(contexts) - 0.5, -0.5)
        left.set_title(tr("top activations, distinct passages (held-out text)"), loc="left")
        for j, (c, v) in enumerate(zip(contexts, activations)):
            _draw_context(left, j, c, v, colour)
        # where it fires: on the token of the hypothesis, or on any other token
        both = feat["on_token"] + feat["elsewhere"]
        bins = np.linspace(0, max(both) if both else 1.0, 13)
        right.hist([feat["on_token"], feat["elsewhere"]], bins=bins, stacked=True, color=[colour, style.GREY],
                   label=[f"“{label}”", tr("other tokens")])
        right.yaxis.set_major_locator(plt.MaxNLocator(4, integer=True))
        right.set_title(tr("where it fires"))
        right.set_xlabel(tr("activation"))
        right.set_ylabel(tr("tokens"))
        right.xaxis.set_major_locator(plt.MaxNLocator(3))
        right.legend(loc="upper left")
        return fig

    frequency = feat["frequency"]
    results = {
        "layer": info["layer"], "architecture": info["arch"], **info["fields"], "d_sae": info["d_sae"],
        "rank": rank, "n_features": N_FEATURES, "feature": feat["feature"], "frequency": round(frequency, 5),
        "heldout_tokens": info["heldout_tokens"], "top_k": TOP_K,
        "token": label, "precision": round(feat["precision"], 4), "recall": round(feat["recall"], 4),
        "occurrences": feat["occurrences"], "fired_elsewhere": len(feat["elsewhere"]),
        "fired_on_token": len(feat["on_token"]), "n_contexts": len(contexts), "documents": feat["documents"],
        "top_tokens": [c["token"] for c in contexts],
        "top_activations": [round(v, 3) for v in activations],
        "promoted": [t for t, _ in feat["promoted"]],
        "promoted_tokens": ", ".join(dict.fromkeys(f"“{token_label(t)}”" for t, _ in feat["promoted"][:3])),
    }
    if rank == 1:
        from mechdemo.sae import PICK_FREQUENCY

        results["pick_frequency"] = list(PICK_FREQUENCY)
        results["evaluation"] = _evaluation(ctx)
    return FigureOutput(draw, results=results)


_FEATURE = ("its token hypothesis (precision and recall), top-activating held-out contexts from distinct passages, "
            "and its activations on that token and on every other token")


@figure("sae_feature_1", description=f"The first SAE feature picked by rule: {_FEATURE}; and the SAE's spliced loss "
        "on every held-out sequence")
def sae_feature_1(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 1)


@figure("sae_feature_2", description=f"The second SAE feature picked by rule: {_FEATURE}")
def sae_feature_2(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 2)


@figure("sae_feature_causal", description="The causal check of the first feature: its decoder contribution "
        "ablated and amplified inside the model, the next-token KL at the positions where it fires against a "
        "random direction of the same norm, and the tokens it promotes")
def sae_feature_causal(ctx: FigureContext) -> FigureOutput:
    from mechdemo.sae import feature_intervention, heldout_sequences, split_shards
    from mechdemo.tokens import bos_token_id

    info = _features(ctx)
    feat = info["features"][0]
    arch, fields = FEATURE_SAE
    _, sae = trained_sae(ctx, arch, fields)
    data = sae_dataset(ctx)
    _, (heldout,) = split_shards(data)
    tokens = heldout_sequences(data, heldout, data.manifest["config"]["seq_len"], bos_token_id(ctx.model),
                               ctx.pick(ALL_SEQUENCES, SMALL["n_sequences"]))
    result = feature_intervention(ctx.model, sae, tokens, feat["feature"], data.site, scales=SCALES, seed=ctx.seed)
    decode = ctx.model.tokenizer.decode
    scales = [{**{k: (round(v, 5) if v == v else None) for k, v in s.items() if isinstance(v, float)},  # NaN: one position
               "down": [token_label(decode([t])) for t, _ in s["down"]],
               "up": [token_label(decode([t])) for t, _ in s["up"]]}
              for s in result["scales"].values()]
    label = token_label(feat["token"])
    strongest = result["scales"].get(str(SCALES[-1]))
    # the feature's direction matters if, at the strongest edit, its KL stands 2 standard errors above the control's
    stands_out = bool(strongest and strongest["kl"] - strongest["kl_control"]
                      > 2 * (strongest["kl_se"] ** 2 + strongest["kl_control_se"] ** 2) ** 0.5)

    def draw():
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=style.SLIDE)
        xs = np.arange(len(SCALES))
        for offset, key, colour, name in ((-0.2, "kl", FEATURE_COLOURS[0], tr("feature {f} (“{t}”)", f=feat["feature"], t=label)),
                                          (0.2, "kl_control", style.GREY, tr("random direction, same norm"))):
            ys = [result["scales"][str(s)][key] for s in SCALES if str(s) in result["scales"]]
            errors = [result["scales"][str(s)][key + "_se"] for s in SCALES if str(s) in result["scales"]]
            ax.bar(xs[: len(ys)] + offset, ys, width=0.4, yerr=errors, capsize=8, color=colour, label=name)
        ax.set_xticks(xs)
        ax.set_xticklabels([tr("ablated (×{s})", s=num(s, "g")) if s == 0 else tr("×{s}", s=num(s, "g"))
                            for s in SCALES])
        ax.set_yscale("log")
        ax.set_ylabel(tr("next-token KL where it fires (nats)"))
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3, axis="y")
        return fig

    return FigureOutput(draw, results={
        "feature": feat["feature"], "token": label, "site": result["site"], "scales_applied": list(SCALES),
        "positions": result["positions"], "sequences": result["sequences"], "sequences_run": len(tokens),
        "control": "a random direction of the norm of the feature's decoder vector, same positions and amounts",
        "stands_out": stands_out, "strongest_scale": SCALES[-1],
        "by_scale": scales,
    })


@figure("sae_browser", site=BROWSER_PAGES,
        description="The offline feature browser of the feature figures' SAE (TopK k=32): every feature's density, "
                    "activation histogram, top and quantile-sampled held-out contexts, logit effect and nearest "
                    "features, as a static site that works from file://")
def sae_browser(ctx: FigureContext) -> FigureOutput:
    """The browser of the SAE that ``sae_feature_1`` and ``sae_feature_2`` show, from the same held-out
    shard: the features it shows have the same numbers there (the tests compare them)."""
    from mechdemo.figures.i18n import LANGUAGES, translations
    from mechdemo.sae import FeaturePagesConfig, feature_pages
    from mechdemo.sites import ui_strings, write_browser

    arch, fields = FEATURE_SAE
    _, sae = trained_sae(ctx, arch, fields)
    cfg = FeaturePagesConfig(seed=ctx.seed)
    site = feature_pages(sae, sae_dataset(ctx), ctx.model, cfg, progress=True)
    meta = site["meta"]
    shown = [f["feature"] for f in _features(ctx)["features"]]
    ui = {lang: translations(ui_strings(), lang) for lang in LANGUAGES}

    def write(folder, provenance):
        return write_browser(site, folder, ui, provenance={**provenance, "sae": f"{arch} {sorted(fields.items())}"},
                             overwrite=True)

    return FigureOutput(None, site=write, results={
        "layer": meta["layer"], "d_sae": meta["d_sae"], "heldout_tokens": meta["heldout_tokens"],
        "n_dead": meta["n_dead"], "n_dense": meta["n_dense"], "n_contexts": cfg.n_contexts,
        "features_shown": [{"feature": f, "density": meta["features"]["density"][f], "max": meta["features"]["max"][f]}
                           for f in shown],
    })
