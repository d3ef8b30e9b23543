"""repeated_seq.png: loss on a repeated random sequence, and the induction heads that cause the drop."""

from __future__ import annotations

import math

from mechdemo.figures import style
from mechdemo.figures.attention import head_scores_of
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import per_token_loss, repeated_random_tokens, top_heads

SEQ_LEN = 50
BATCH = 8


@figure("repeated_seq", description="Per-token loss on [BOS] + R + R (R random), next to the induction score of every head")
def repeated_seq(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    tokens = repeated_random_tokens(model, ctx.pick(BATCH, 2), SEQ_LEN, seed=ctx.seed)
    loss = per_token_loss(model, tokens)  # [batch, 2 * SEQ_LEN]; loss[:, i] predicts token i + 1
    # Tokens: 0 = BOS, 1..L = R, L+1..2L = R again. First half: predicting tokens 2..L (token 1 has
    # only BOS as context). Second half: predicting tokens L+2..2L, each of which followed the
    # current token earlier (token L+1 = R[1] followed nothing: it is as unpredictable as the rest).
    first, second = loss[:, 1:SEQ_LEN], loss[:, SEQ_LEN + 1 :]
    mean_first, mean_second = first.mean().item(), second.mean().item()
    scores = head_scores_of(ctx)["induction"]

    fig, (ax, ax_heat) = plt.subplots(1, 2, figsize=(16, 8), gridspec_kw={"width_ratios": [2.3, 1]})
    positions = range(1, loss.shape[1] + 1)  # position of the predicted token
    mean = loss.mean(0)
    q25, q75 = loss.quantile(0.25, dim=0), loss.quantile(0.75, dim=0)
    ax.fill_between(positions, q25, q75, color=style.BLUE, alpha=0.2, label=f"25–75 % of {BATCH} sequences")
    ax.plot(positions, mean, color=style.BLUE, label="mean loss")
    uniform = math.log(model.cfg.d_vocab)
    ax.axhline(uniform, color=style.GREY, ls=":", lw=2, label=f"uniform guess ln({model.cfg.d_vocab:,}) = {uniform:.1f}")
    ax.axvline(SEQ_LEN + 0.5, color=style.RED, ls="--", lw=2)
    ax.hlines(mean_first, 2, SEQ_LEN, color=style.ORANGE, lw=3)
    ax.hlines(mean_second, SEQ_LEN + 2, 2 * SEQ_LEN, color=style.GREEN, lw=3)
    box = {"fc": "white", "ec": "none", "alpha": 0.85}
    ax.text(SEQ_LEN / 2, mean_first + 2.2, f"first half: {mean_first:.2f} nats", ha="center", va="bottom",
            color=style.ORANGE, fontsize=18, weight="bold", bbox=box)
    ax.text(1.5 * SEQ_LEN, mean_second + 2.2, f"second half: {mean_second:.2f} nats", ha="center", va="bottom",
            color=style.GREEN, fontsize=18, weight="bold", bbox=box)
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("cross-entropy loss (nats)")
    top = max(uniform, q75.max().item()) + 4
    ax.set_ylim(0, top)
    ax.text(SEQ_LEN + 1.5, top - 0.3, "repeat starts", color=style.RED, va="top", fontsize=14)
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.9), fontsize=13)
    ax.set_title("Loss per token")

    best = top_heads(scores, 4)
    im = style.layer_head_heatmap(ax_heat, scores, "Induction score", mark=[(l, h) for l, h, _ in best])
    ax_heat.set_xlabel("head\n" + ", ".join(f"{style.head_label(l, h)} {v:.2f}" for l, h, v in best[:3]), fontsize=13)
    fig.colorbar(im, ax=ax_heat, fraction=0.05, pad=0.03)
    style.suptitle(fig, "Induction on a repeated random sequence", ctx.model_label,
                   subtitle=f"{BATCH} sequences [BOS] + R + R, R = {SEQ_LEN} random tokens: the second half is "
                            "predictable only by copying from the first")
    fig.subplots_adjust(top=0.85, wspace=0.25)
    return FigureOutput(fig, results={
        "mean_loss_first_half": round(mean_first, 4),
        "mean_loss_second_half": round(mean_second, 4),
        "uniform_loss": round(uniform, 4),
        "top_induction_heads": [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in best],
    })
