"""Head taxonomy figures: head_scores.png and attention_pattern.png (+ its CircuitsVis page)."""

from __future__ import annotations

import html

import circuitsvis as cv
import torch

from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import HEAD_TYPES, standard_head_scores, top_heads

TITLES = {
    "previous_token": "Previous token",
    "current_token": "Current token",
    "first_token": "First token (BOS)",
    "duplicate_token": "Duplicate token",
    "induction": "Induction",
}
RULES = {
    "previous_token": "attends to k = q − 1",
    "current_token": "attends to itself (k = q)",
    "first_token": "attends to position 0 (BOS)",
    "duplicate_token": "attends to earlier copies of its token",
    "induction": "attends to the token after an earlier copy",
}
# A real sentence with a repeat, so duplicate-token and induction heads have something to do.
SENTENCE = "The cat sat on the mat. The cat sat on the"


def head_scores_of(ctx: FigureContext) -> dict:
    return ctx.computed("head_scores", lambda: standard_head_scores(ctx.model, seed=ctx.seed))


@figure("head_scores", description="Previous/current/first-token, duplicate-token and induction scores of every head")
def head_scores_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    scores = head_scores_of(ctx)
    fig, axes = plt.subplots(1, len(HEAD_TYPES), figsize=(16, 9), sharey=True)
    results = {}
    for ax, t in zip(axes, HEAD_TYPES):
        best = top_heads(scores[t], 3)
        im = style.layer_head_heatmap(ax, scores[t], TITLES[t], mark=[(l, h) for l, h, _ in best[:1]])
        l, h, v = best[0]
        ax.set_xlabel(f"head\nbest {style.head_label(l, h)} = {v:.2f}")
        results[t] = [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in best]
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.subplots_adjust(top=0.84)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="attention mass on the rule's keys")
    style.suptitle(fig, "Head scores", ctx.model_label,
                   subtitle="8 sequences [BOS] + R + R, R = 50 random tokens; score = mean attention on the keys each rule names")
    return FigureOutput(fig, results={"top_heads": results})


def _str_tokens(model, text: str) -> tuple[torch.Tensor, list[str]]:
    """Tokens of ``text`` (BOS first) and their labels; the BOS token is labelled 'BOS'."""
    tokens = model.to_tokens(text)
    labels = [t.replace("\n", "\\n") for t in model.to_str_tokens(tokens[0])]
    return tokens, ["BOS"] + labels[1:]


def _page(title: str, intro: str, body: str) -> str:
    """A complete HTML page around CircuitsVis's inline (no-CDN) source."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:24px;max-width:1100px}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>\n{body}\n</body></html>\n"
    )


@figure("attention_pattern", html=True,
        description="Attention pattern of the top head of each type on a real sentence (+ interactive CircuitsVis page)")
def attention_pattern(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    scores = head_scores_of(ctx)
    chosen = {t: top_heads(scores[t], 1)[0] for t in HEAD_TYPES}
    tokens, labels = _str_tokens(model, SENTENCE)
    layers = sorted({l for l, _, _ in chosen.values()})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in layers])
    patterns = {t: cache[f"blocks.{l}.attn.hook_pattern"][0, h].float().cpu() for t, (l, h, _) in chosen.items()}

    fig, axes = plt.subplots(2, 3, figsize=(16, 10.5))
    n = len(labels)
    for ax, t in zip(axes.flat, HEAD_TYPES):
        l, h, v = chosen[t]
        ax.imshow(patterns[t].numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{TITLES[t]}: {style.head_label(l, h)}")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=11)
        ax.set_yticks(range(n), labels, fontsize=11)
        if ax in axes[1]:
            ax.set_xlabel("key (attended to)", fontsize=13)
        ax.set_ylabel("query", fontsize=13)
        ax.spines[:].set_visible(True)
    legend = axes.flat[-1]
    legend.axis("off")
    lines = [f"{style.head_label(l, h)}  {TITLES[t].lower()}, score {v:.2f}\n      {RULES[t]}"
             for t, (l, h, v) in chosen.items()]
    legend.text(-0.05, 1.0, "Score = attention on the rule's keys,\non random repeats (head_scores.png)\n\n"
                + "\n\n".join(lines), va="top", fontsize=12.5)
    style.suptitle(fig, "Attention patterns of the top head of each type", ctx.model_label,
                   subtitle=f"Sentence: \"{SENTENCE}\"  (rows: query token, columns: key token, darker = more attention)")
    fig.subplots_adjust(top=0.88, hspace=0.3, wspace=0.3)

    names = [f"{TITLES[t]} {style.head_label(l, h)}" for t, (l, h, _) in chosen.items()]
    vis = cv.attention.attention_heads(
        attention=torch.stack([patterns[t] for t in HEAD_TYPES]), tokens=labels, attention_head_names=names
    )
    page = _page(
        f"Attention patterns — {ctx.model_label}",
        f"Top head of each type (previous, current, first token, duplicate, induction) on \"{SENTENCE}\". "
        "Click a head to enlarge it; hover a cell to read the attention weight. Works offline.",
        vis.local_src,
    )
    results = {t: {"layer": l, "head": h, "score": round(v, 4)} for t, (l, h, v) in chosen.items()}
    return FigureOutput(fig, html=page, results={"sentence": SENTENCE, "heads": results})
