"""Activation patching figures on IOI (computed with the IOI runs of :mod:`mechdemo.figures.ioi`).

* ``activation-patching-resid``: the residual stream patched by layer and position;
* ``activation-patching-heads``: each head's output patched;
* ``attribution_vs_activation``: the gradient estimate (attribution patching) against the exact patching.
"""

from __future__ import annotations

import torch

from mechdemo.dla import DLA
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.ioi import (
    abba_batch, abba_run, dla_parts, heads_patching, heatmap, main_batch, main_run, prompt_tokens, resid_patching,
    signed,
)
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.patching import attribution_patching


@figure("activation-patching-resid", description="Activation patching of the residual stream on IOI, by layer and "
                                                 "position: the repeated name moves from S2 to the last position")
def activation_patching_resid(ctx: FigureContext) -> FigureOutput:
    model, abba, run = ctx.model, abba_batch(ctx), abba_run(ctx)
    resid = resid_patching(ctx)  # [n_layers, pos]
    labels = ["BOS"] + prompt_tokens(model, abba.tokens[0])
    for role in ("IO", "S1", "S2"):
        labels[int(abba.positions[role][0])] = role
    end, s2 = len(labels) - 1, int(abba.positions["S2"][0])
    labels[end] = "END"
    moved = [l for l in range(resid.shape[0]) if resid[l, end] > resid[l, s2]]
    handover = moved[0] if moved else None  # first layer where END restores more than S2
    fading = [l for l in range(resid.shape[0]) if resid[l, s2] < 0.9]
    fades = fading[0] if fading else None  # first layer where S2 alone no longer restores (nearly) all

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        im = ax.imshow(resid.T.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels)
        for tick, label in zip(ax.get_yticklabels(), labels):
            if label in ("IO", "S1", "S2", "END"):
                tick.set_fontweight("bold")
        ax.set_xticks(range(0, resid.shape[0], 5))
        ax.set_xlabel(tr("layer"))
        ax.tick_params(axis="y", length=0)
        cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, ticks=[-1, -0.5, 0, 0.5, 1])
        cbar.set_label(tr("patching score (1 = clean)"))
        return fig

    return FigureOutput(draw, results={
        "n_prompts": len(abba), "resid_positions": labels,
        "logit_diff_clean": round(run.clean_ld, 4), "logit_diff_corrupted": round(run.corrupted_ld, 4),
        "handover_layer": handover, "s2_fades_layer": fades,
        "s2_score_layer_0": round(resid[0, s2].item(), 4),
        "end_score_last_layer": round(resid[-1, end].item(), 4),
    })


@figure("activation-patching-heads", description="Activation patching of each head's output on IOI: a handful of "
                                                 "heads carry the effect")
def activation_patching_heads(ctx: FigureContext) -> FigureOutput:
    heads = heads_patching(ctx)
    dla = DLA.concatenate(dla_parts(ctx)).heads.mean(0)  # the DLA figure's, for comparison on the slide
    best, worst = top_heads(heads, 5), top_heads(-heads, 3)
    ranked = [(l, h, v) for l, h, v in best] + [(l, h, -v) for l, h, v in reversed(worst)]

    def draw():
        import matplotlib.pyplot as plt

        fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=style.SLIDE, gridspec_kw={"width_ratios": [1, 1.5]})
        im = heatmap(ax_h, heads, "", mark=[(l, h) for l, h, _ in ranked])
        fig.colorbar(im, ax=ax_h, fraction=0.08, pad=0.03)
        y = range(len(ranked))
        ax_b.barh(y, [v for _, _, v in ranked], color=[style.BLUE if v >= 0 else style.RED for _, _, v in ranked])
        ax_b.set_yticks(y, [style.head_label(l, h) for l, h, _ in ranked])
        ax_b.invert_yaxis()
        ax_b.axvline(0, color="black", lw=1.5)
        for i, (_, _, v) in enumerate(ranked):
            ax_b.text(v + (0.02 if v >= 0 else -0.02), i, signed(v), va="center",
                      ha="left" if v >= 0 else "right", fontsize=20)
        lo, hi = min(v for *_, v in ranked), max(v for *_, v in ranked)
        ax_b.set_xlim(min(0.0, lo) - 0.2, hi + 0.22)
        ax_b.set_xlabel(tr("patching score (1 = clean)"))
        ax_b.tick_params(axis="y", length=0)
        return fig

    return FigureOutput(draw, results={
        "n_prompts": len(main_batch(ctx)),
        "top_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4), "dla": round(dla[l, h].item(), 4)}
                      for l, h, _ in best],
        "most_negative_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4),
                                 "dla": round(dla[l, h].item(), 4)} for l, h, _ in worst],
    })


@figure("attribution_vs_activation", description="Attribution patching (gradient estimate) against activation "
                                                 "patching on IOI: right per head, wrong on the residual stream at S2")
def attribution_figure(ctx: FigureContext) -> FigureOutput:
    # heads: the main batch (both orders), residual stream: the ABBA batch (labelled positions), each
    # estimate from the run its exact patching used (the activation-patching figures', computed once)
    heads, resid = heads_patching(ctx), resid_patching(ctx)
    estimate = {"heads": attribution_patching(main_run(ctx))["heads"],
                "resid_pre": attribution_patching(abba_run(ctx))["resid_pre"]}
    s2 = int(abba_batch(ctx).positions["S2"][0])
    at_s2 = torch.zeros_like(resid, dtype=torch.bool)
    at_s2[:, s2] = True
    pairs = {"heads": (heads, estimate["heads"]), "residual_stream": (resid, estimate["resid_pre"])}
    r = {k: torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item() for k, (a, b) in pairs.items()}
    rest = ~at_s2
    r_rest = torch.corrcoef(torch.stack([resid[rest], estimate["resid_pre"][rest]]))[0, 1].item()

    def draw():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=style.SLIDE)
        titles = {"heads": tr("each head's output"), "residual_stream": tr("residual stream")}
        for ax, (name, (x, y)) in zip(axes, pairs.items()):
            x, y = x.flatten(), y.flatten()
            lo, hi = min(x.min(), y.min()).item() - 0.05, max(x.max(), y.max()).item() + 0.05
            ax.plot([lo, hi], [lo, hi], color=style.GREY, ls="--", lw=2, label="y = x")
            if name == "heads":
                ax.scatter(x, y, s=60, alpha=0.7, color=style.BLUE)
            else:
                mask = at_s2.flatten()
                ax.scatter(x[~mask], y[~mask], s=60, alpha=0.7, color=style.BLUE,
                           label=tr("other positions: r = {r}", r=num(r_rest, ".2f")))
                ax.scatter(x[mask], y[mask], s=90, alpha=0.9, color=style.ORANGE, marker="D",
                           label=tr("position S2"))
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_title(tr("{name}: r = {r}", name=titles[name], r=num(r[name], ".2f")))
            ax.set_xlabel(tr("activation patching (exact)"))
            ax.legend(loc="upper left", frameon=False)
        axes[0].set_ylabel(tr("attribution patching (estimate)"))
        return fig

    return FigureOutput(draw, results={
        "pearson_r": {k: round(v, 4) for k, v in r.items()},
        "pearson_r_resid_without_s2": round(r_rest, 4),
    })
