"""Head taxonomy figures: which heads follow which attention rule, and what their patterns look like.

* ``head_scores``: every head's score for each of the five rules of :mod:`mechdemo.heads`, one row
  per rule: a few specialists stand out of the 270 heads.
* ``attention_pattern_<type>`` (previous, current, first, duplicate, induction): the pattern of the
  best head of one type on a real sentence, with the keys its rule names outlined; the deck shows
  them one after another. ``attention_pattern_induction`` also writes the interactive CircuitsVis
  page of all five heads, which the HTML deck shows in place of the picture.

The scores are measured once per run (:func:`head_scores_of`) and shared with the induction and
circuit figures; the five patterns come from one forward pass (:func:`patterns_of`).
"""

from __future__ import annotations

import html as html_lib

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import HEAD_TYPES, head_targets, pattern_score, standard_head_scores, top_heads
from mechdemo.interventions import run, site, sites

# What each type is called in the figures (the Spanish deck keeps the English terms too).
NAMES = {
    "previous_token": "previous-token head",
    "current_token": "current-token head",
    "first_token": "first-token head",
    "duplicate_token": "duplicate-token head",
    "induction": "induction head",
}
COLOURS = {
    "previous_token": style.BLUE,
    "current_token": style.GREEN,
    "first_token": style.PURPLE,
    "duplicate_token": style.ORANGE,
    "induction": style.RED,
}
# A real sentence with a repeat, so duplicate-token and induction heads have something to do.
SENTENCE = "The cat sat on the mat. The cat sat on the"


def head_scores_of(ctx: FigureContext) -> dict:
    """Every head's score for every type, on ``[BOS] + R + R`` (computed once per run)."""
    return ctx.computed("head_scores", lambda: standard_head_scores(ctx.model, seed=ctx.seed))


@figure("head_scores", description="Score of all heads for each of the five attention rules (one row per rule): "
                                   "a few specialists per rule")
def head_scores_figure(ctx: FigureContext) -> FigureOutput:
    scores = head_scores_of(ctx)
    n_layers, n_heads = scores[HEAD_TYPES[0]].shape
    best = {t: top_heads(scores[t], 3) for t in HEAD_TYPES}
    values = {t: torch.nan_to_num(scores[t], nan=0.0).flatten().numpy() for t in HEAD_TYPES}
    jitter = np.random.default_rng(0).uniform(-0.22, 0.22, n_layers * n_heads)

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        for row, t in enumerate(HEAD_TYPES):
            y = row + jitter
            ax.scatter(values[t], y, s=45, color=style.GREY, alpha=0.35, lw=0)
            (l, h, v), *_ = best[t]
            i = l * n_heads + h
            ax.scatter([v], [y[i]], s=220, color=COLOURS[t], edgecolor="black", lw=1.5, zorder=3)
            # the label sits in the gap above its row, clear of the other heads' dots
            ax.text(v + 0.012 if v > 0.85 else v, row - 0.30, f"{style.head_label(l, h)}  {num(v, '.2f')}",
                    ha="right" if v > 0.85 else "center", va="bottom", fontsize=22, weight="bold", color=COLOURS[t])
        ax.set_yticks(range(len(HEAD_TYPES)), [tr(NAMES[t]) for t in HEAD_TYPES])
        ax.set_ylim(len(HEAD_TYPES) - 0.5, -0.7)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(tr("score: share of attention on the keys the rule names"))
        ax.grid(axis="x", color=style.GREY, alpha=0.25)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        return fig

    return FigureOutput(draw, results={
        "n_heads_total": n_layers * n_heads,
        "top_heads": {t: [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in best[t]] for t in HEAD_TYPES},
        "n_above_half": {t: int((values[t] > 0.5).sum()) for t in HEAD_TYPES},
    })


def _str_tokens(model, text: str) -> tuple[torch.Tensor, list[str]]:
    """Tokens of ``text`` (BOS first) and their labels; the BOS token is labelled 'BOS'."""
    tokens = model.to_tokens(text)
    labels = [t.replace("\n", "\\n").strip() or repr(t) for t in model.to_str_tokens(tokens[0])]
    return tokens, ["BOS"] + labels[1:]


def patterns_of(ctx: FigureContext) -> dict:
    """The best head of each type and its attention pattern on :data:`SENTENCE` (one forward pass)."""

    def compute():
        model = ctx.model
        scores = head_scores_of(ctx)
        chosen = {t: top_heads(scores[t], 1)[0] for t in HEAD_TYPES}
        tokens, labels = _str_tokens(model, SENTENCE)
        layers = sorted({l for l, _, _ in chosen.values()})
        with torch.no_grad():
            _, cache = run(model, tokens, names=sites("pattern", layers))
        patterns = {t: cache[site("pattern", l)][0, h].float().cpu() for t, (l, h, _) in chosen.items()}
        targets = {t: head_targets(tokens.cpu(), t)[0] for t in HEAD_TYPES}
        on_rule = {t: pattern_score(patterns[t][None, None], targets[t][None]).item() for t in HEAD_TYPES}
        return {"chosen": chosen, "labels": labels, "patterns": patterns, "targets": targets, "on_rule": on_rule}

    return ctx.computed("attention_patterns", compute)


def _page(title: str, intro: str, body: str) -> str:
    """A complete HTML page around CircuitsVis's inline (no-CDN) source."""
    from mechdemo.figures.i18n import current

    return (
        f"<!DOCTYPE html>\n<html lang=\"{current()}\"><head><meta charset=\"utf-8\">"
        f"<title>{html_lib.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:16px;max-width:1150px}h2{margin:0 0 8px 0}"
        "p{margin:0 0 8px 0}</style></head><body>"
        f"<h2>{html_lib.escape(title)}</h2><p>{html_lib.escape(intro)}</p>\n{body}\n</body></html>\n"
    )


def _interactive_page(ctx: FigureContext, found: dict) -> str:
    """All five heads in one CircuitsVis view, the induction head first (the slide it replaces)."""
    import circuitsvis as cv

    order = ("induction",) + tuple(t for t in HEAD_TYPES if t != "induction")
    names = [f"{tr(NAMES[t])} {style.head_label(l, h)}" for t in order for l, h, _ in [found["chosen"][t]]]
    vis = cv.attention.attention_heads(attention=torch.stack([found["patterns"][t] for t in order]),
                                       tokens=found["labels"], attention_head_names=names)
    return _page(
        tr("Attention patterns of the best head of each type — {model}", model=ctx.model_label),
        tr("Sentence: \"{sentence}\". Click a head to enlarge it; hover a token to see where it attends. "
           "Works offline.", sentence=SENTENCE),
        vis.local_src,
    )


def _pattern_figure(ctx: FigureContext, kind: str) -> FigureOutput:
    found = patterns_of(ctx)
    l, h, score = found["chosen"][kind]
    pattern = found["patterns"][kind].numpy()
    targets = found["targets"][kind].numpy()
    labels = found["labels"]
    n = len(labels)

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle

        fig, ax = plt.subplots(figsize=(9.3, style.SLIDE[1]))
        masked = np.ma.masked_where(np.triu(np.ones((n, n), bool), 1), pattern)  # causal: no future keys
        im = ax.imshow(masked, cmap="Blues", vmin=0, vmax=1)
        for q, k in zip(*np.nonzero(targets)):
            ax.add_patch(Rectangle((k - 0.5, q - 0.5), 1, 1, fill=False, ec=style.ORANGE, lw=3.5))
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        ax.set_xlabel(tr("key (attended to)"))
        ax.set_ylabel(tr("query"))
        ax.set_title(style.head_label(l, h))
        ax.spines[:].set_visible(True)
        ax.tick_params(length=0)
        bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(tr("attention weight"))
        bar.set_ticks([0, 0.5, 1])
        # in the empty upper triangle (future keys, masked)
        ax.legend(handles=[Patch(fill=False, ec=style.ORANGE, lw=3.5, label=tr("keys the rule names"))],
                  loc="upper right", frameon=False, handlelength=1.2)
        return fig

    html = (lambda: _interactive_page(ctx, found)) if kind == "induction" else None
    return FigureOutput(draw, html=html, results={
        "sentence": SENTENCE,
        "n_tokens": n,
        "head": {"layer": l, "head": h, "score": round(score, 4)},
        "attention_on_rule": round(found["on_rule"][kind], 4),
    })


_ABOUT = "on a real sentence, the keys its rule names outlined"


@figure("attention_pattern_previous", description=f"Attention pattern of the best previous-token head {_ABOUT}")
def attention_pattern_previous(ctx: FigureContext) -> FigureOutput:
    return _pattern_figure(ctx, "previous_token")


@figure("attention_pattern_current", description=f"Attention pattern of the best current-token head {_ABOUT}")
def attention_pattern_current(ctx: FigureContext) -> FigureOutput:
    return _pattern_figure(ctx, "current_token")


@figure("attention_pattern_first", description=f"Attention pattern of the best first-token (BOS) head {_ABOUT}")
def attention_pattern_first(ctx: FigureContext) -> FigureOutput:
    return _pattern_figure(ctx, "first_token")


@figure("attention_pattern_duplicate", description=f"Attention pattern of the best duplicate-token head {_ABOUT}")
def attention_pattern_duplicate(ctx: FigureContext) -> FigureOutput:
    return _pattern_figure(ctx, "duplicate_token")


@figure("attention_pattern_induction", html=True,
        description=f"Attention pattern of the best induction head {_ABOUT} (+ the interactive CircuitsVis page of "
                    "the best head of every type, shown by the HTML deck)")
def attention_pattern_induction(ctx: FigureContext) -> FigureOutput:
    return _pattern_figure(ctx, "induction")
