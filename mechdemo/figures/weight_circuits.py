"""Reverse-engineering heads from their weights (QK and OV circuits, Elhage et al. 2021).

Four figures, one idea each, from shared computations (:func:`copying_of`, :func:`k_composition_of`):

* ``ov_circuit``: the full OV circuit ``E W_OV U`` of the strongest copying head on a few words: a
  diagonal, i.e. the head raises the logit of the token it attends to;
* ``copying_vs_induction``: every head's copying score (OV, what it writes) against its induction
  score (attention, where it looks);
* ``k_composition``: how much the keys of the top induction heads read what the top
  previous-token heads write (K-composition), against the mean over all head pairs;
* ``positional_preference``: how the strongest previous-token head finds the previous token: its
  positional QK circuit (``W_pos W_QK W_pos^T``) for learned positions, or, for rotary models
  (SmolLM2, Llama), which have no ``W_pos``, its mean pre-softmax score by offset ``q - k``.
"""

from __future__ import annotations

import torch

from mechdemo.weight_circuits import copying_scores, full_ov_circuit, k_composition_scores, mean_score_by_offset, positional_qk
from mechdemo.figures import style
from mechdemo.figures.attention import head_scores_of
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.tokens import repeated_random_tokens, word_token_ids

N_WORDS = 1000  # whole-word tokens for the copying score
N_SHOWN = 14  # words shown in the OV heatmap
MAX_CHARS = 5  # ... of at most this many letters
N_PREV, N_INDUCTION = 4, 5  # rows and columns of the K-composition table
MAX_OFFSET = 12


def copying_of(ctx: FigureContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(word token ids, copying score of every head on them), computed once per run."""

    def compute():
        words = word_token_ids(ctx.model, ctx.pick(N_WORDS, 100), seed=ctx.seed)
        return words, copying_scores(ctx.model, words)

    return ctx.computed("copying_scores", compute)


def k_composition_of(ctx: FigureContext) -> torch.Tensor:
    """K-composition score of every (earlier head, later head) pair, computed once per run."""
    return ctx.computed("k_composition", lambda: k_composition_scores(ctx.model))


@figure("ov_circuit", description="Full OV circuit W_E W_OV W_U of the strongest copying head on a few words: "
                                  "a diagonal (the head copies the token it attends to)")
def ov_circuit(ctx: FigureContext) -> FigureOutput:
    model = ctx.model
    words, copy = copying_of(ctx)
    (cl, ch, cv), = top_heads(copy, 1)
    short = [i for i, t in zip(words.tolist(), model.to_str_tokens(words)) if len(t.strip()) <= MAX_CHARS]
    shown = torch.tensor(short[:N_SHOWN])  # short words: labels that leave room for the matrix
    circuit = full_ov_circuit(model, cl, ch, shown)
    circuit = circuit - circuit.mean(dim=1, keepdim=True)  # logits are shift-invariant per row
    labels = [t.strip() for t in model.to_str_tokens(shown)]
    on_diagonal = (circuit.argmax(-1) == torch.arange(len(shown))).sum().item()

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9.5, style.SLIDE[1]))
        lim = circuit.abs().max().item()
        im = ax.imshow(circuit.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel(tr("logit raised (output token)"))
        ax.set_ylabel(tr("attended token"))
        ax.set_title(style.head_label(cl, ch))
        ax.tick_params(length=0)
        bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(tr("logit change (row-centred)"))
        return fig

    return FigureOutput(draw, results={
        "copying_head": {"layer": cl, "head": ch, "copying_score": round(cv, 4)},
        "top_copying_heads": [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in top_heads(copy, 5)],
        "n_words": len(words),
        "chance": round(1 / len(words), 4),
        "n_shown": len(shown),
        "n_shown_on_diagonal": int(on_diagonal),
    })


@figure("copying_vs_induction", description="Every head's copying score (OV: what it writes) against its induction "
                                            "score (attention: where it looks)")
def copying_vs_induction(ctx: FigureContext) -> FigureOutput:
    scores = head_scores_of(ctx)["induction"]
    words, copy = copying_of(ctx)
    induction = top_heads(scores, 4)
    copiers = top_heads(copy, 2)
    x, y = scores.flatten().numpy(), copy.flatten().numpy()

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        ax.scatter(x, y, s=70, color=style.GREY, alpha=0.5, lw=0)
        for heads, colour, label in ((induction, style.RED, tr("top {n} induction heads", n=len(induction))),
                                     (copiers, style.BLUE, tr("top {n} copying heads", n=len(copiers)))):
            ax.scatter([scores[l, h] for l, h, _ in heads], [copy[l, h] for l, h, _ in heads], s=200, color=colour,
                       edgecolor="black", lw=1.2, zorder=3, label=label)
        for l, h, _ in copiers:
            ax.annotate(style.head_label(l, h), (scores[l, h], copy[l, h]), xytext=(14, 0), textcoords="offset points",
                        va="center", color=style.BLUE, weight="bold")
        l, h, _ = induction[0]
        ax.annotate(style.head_label(l, h), (scores[l, h], copy[l, h]), xytext=(0, 22), textcoords="offset points",
                    ha="center", va="bottom", color=style.RED, weight="bold")
        ax.set_xlim(-0.02, 1.0)
        ax.set_ylim(-0.03, 1.0)
        ax.set_xlabel(tr("induction score (attention: where it looks)"))
        ax.set_ylabel(tr("copying score (OV: what it writes)"))
        ax.legend(loc="upper right", framealpha=0.9)
        ax.grid(color=style.GREY, alpha=0.2)
        return fig

    return FigureOutput(draw, results={
        "induction_heads": [{"layer": l, "head": h, "induction": round(v, 4), "copying": round(copy[l, h].item(), 4)}
                            for l, h, v in induction],
        "copying_heads": [{"layer": l, "head": h, "copying": round(v, 4), "induction": round(scores[l, h].item(), 4)}
                          for l, h, v in copiers],
        "n_words": len(words),
        "max_copying_of_top_induction": round(max(copy[l, h].item() for l, h, _ in induction), 4),
    })


@figure("k_composition", description="K-composition of the top previous-token heads into the keys of the top "
                                     "induction heads, against the mean over all head pairs")
def k_composition(ctx: FigureContext) -> FigureOutput:
    scores = head_scores_of(ctx)
    kcomp = k_composition_of(ctx)
    n_layers = kcomp.shape[0]
    prev = top_heads(scores["previous_token"], N_PREV)
    # an induction head reads what a head of an earlier layer wrote: layer 0 has none to read
    induction = top_heads(scores["induction"][1:], N_INDUCTION)
    induction = [(l + 1, h, v) for l, h, v in induction]
    later = torch.arange(n_layers)[:, None, None, None] < torch.arange(n_layers)[None, None, :, None]
    baseline = kcomp[later.expand_as(kcomp)].mean().item()
    table = torch.tensor([[kcomp[pl, ph, il, ih].item() if pl < il else float("nan") for il, ih, _ in induction]
                          for pl, ph, _ in prev])
    valid = ~table.isnan()
    strongest = None
    if valid.any():  # the pair that composes most among those shown
        i, j = divmod(int(torch.where(valid, table, -1.0).argmax()), table.shape[1])
        strongest = {"previous": style.head_label(*prev[i][:2]), "induction": style.head_label(*induction[j][:2]),
                     "score": round(table[i, j].item(), 4), "ratio_to_mean": round(table[i, j].item() / baseline, 2)}

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        top = float(torch.nan_to_num(table, nan=0.0).max())
        im = ax.imshow(table.numpy(), cmap="Greens", vmin=0, vmax=top, aspect="auto")
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                v = table[i, j].item()
                ax.text(j, i, "—" if v != v else num(v, ".2f"), ha="center", va="center", fontsize=26,
                        color="white" if v == v and v > 0.6 * top else "black")
        ax.set_xticks(range(len(induction)), [style.head_label(l, h) for l, h, _ in induction])
        ax.set_yticks(range(len(prev)), [style.head_label(l, h) for l, h, _ in prev])
        ax.set_xlabel(tr("top {n} induction heads (keys that read)", n=len(induction)))
        ax.set_ylabel(tr("previous-token heads\n(output written)"))
        ax.tick_params(length=0)
        ax.spines[:].set_visible(True)
        bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        bar.ax.axhline(baseline, color=style.RED, lw=4)
        ticks = [0.0, baseline] + [t / 20 for t in range(2, int(top * 20) + 1)]
        bar.set_ticks(ticks, labels=["0.00", tr("mean of all pairs: {value}", value=num(baseline, ".3f"))]
                      + [f"{t:.2f}" for t in ticks[2:]])  # plain numbers: localize_ticks writes them in Spanish
        bar.ax.get_yticklabels()[1].set_color(style.RED)
        if strongest is None:  # a degenerate result says so on the figure, not with an empty grid
            style.note(ax, tr("no previous-token head shown sits in an earlier layer than these induction heads"))
        return fig

    first = [v for v in table[0].tolist() if v == v]
    return FigureOutput(draw, results={
        "previous_token_heads": [style.head_label(l, h) for l, h, _ in prev],
        "induction_heads": [style.head_label(l, h) for l, h, _ in induction],
        "scores": [[None if v != v else round(v, 4) for v in row] for row in table.tolist()],
        "mean_over_all_pairs": round(baseline, 4),
        "top_previous_mean_ratio": round(sum(first) / len(first) / baseline, 2) if first else None,
        "strongest": strongest,
    })


@figure("positional_preference", description="How the strongest previous-token head finds the previous token: its "
                                             "positional QK circuit, or (rotary models) its mean score by offset")
def positional_preference(ctx: FigureContext) -> FigureOutput:
    model = ctx.model
    (pl, ph, _), = top_heads(head_scores_of(ctx)["previous_token"], 1)
    n_sequences = ctx.pick(4, 2)
    if model.cfg.positional_embedding_type == "standard":
        pos = positional_qk(model, pl, ph, n_pos=24)
        by_offset = torch.stack([pos.diagonal(-o)[1:].mean() for o in range(MAX_OFFSET + 1)])
        positional = {"kind": "W_pos W_QK W_pos^T", "best_offset": int(by_offset.argmax()),
                      "first_rows": [[round(v, 4) for v in r] for r in pos[:8, :8].tolist()]}
    else:
        tokens = repeated_random_tokens(model, n_sequences, 50, seed=ctx.seed + 1)[:, :51]  # BOS + R: no repeats
        by_offset = mean_score_by_offset(model, pl, ph, tokens, max_offset=MAX_OFFSET)
        positional = {"kind": "mean score by offset (rotary)", "scores": [round(v, 4) for v in by_offset.tolist()],
                      "best_offset": int(by_offset.argmax())}

    def draw():
        import matplotlib.pyplot as plt

        if "first_rows" in positional:  # learned positions: the matrix itself
            fig, ax = plt.subplots(figsize=style.SLIDE)
            im = ax.imshow(pos.tril().numpy(), cmap="RdBu_r", aspect="auto")
            ax.set_xlabel(tr("key position"))
            ax.set_ylabel(tr("query position"))
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02).set_label(tr("positional score"))
        else:
            fig, ax = plt.subplots(figsize=style.SLIDE)
            values = by_offset.numpy()
            ax.bar(range(len(values)), values, color=[style.ORANGE if o == 1 else style.BLUE
                                                      for o in range(len(values))])
            ax.axhline(0, color="black", lw=1.5)
            ax.set_xticks(range(len(values)))
            ax.set_xlabel(tr("offset q − k (0 = the query itself, 1 = the previous token)"))
            ax.set_ylabel(tr("mean score (pre-softmax)"))
        ax.set_title(style.head_label(pl, ph))
        return fig

    return FigureOutput(draw, results={"head": {"layer": pl, "head": ph}, "n_sequences": n_sequences,
                                       "positional": positional})
