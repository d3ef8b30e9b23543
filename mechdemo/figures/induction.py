"""repeated_seq: loss on a repeated random sequence collapses where induction heads can copy.

Olsson et al. (2022), "In-context Learning and Induction Heads": on [BOS] + R + R with R random
tokens, the first R is unpredictable (loss near a uniform guess over the vocabulary) while every
token of the second R can be predicted by finding its previous occurrence and copying what came
next. The induction heads that do it are the ``induction`` column of ``head_scores``.
"""

from __future__ import annotations

import math

from mechdemo.figures import style
from mechdemo.figures.attention import head_scores_of
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import per_token_loss, repeated_random_tokens, top_heads

SEQ_LEN = 50
BATCH = 8


@figure("repeated_seq", description="Per-token loss on [BOS] + R + R (R random): the repeated half is predictable "
                                    "only by copying, and the loss collapses there")
def repeated_seq(ctx: FigureContext) -> FigureOutput:
    model = ctx.model
    n_sequences = ctx.pick(BATCH, 2)
    tokens = repeated_random_tokens(model, n_sequences, SEQ_LEN, seed=ctx.seed)
    loss = per_token_loss(model, tokens)  # [batch, 2 * SEQ_LEN]; loss[:, i] predicts token i + 1
    # Tokens: 0 = BOS, 1..L = R, L+1..2L = R again. First half: predicting tokens 2..L (token 1 has
    # only BOS as context). Second half: predicting tokens L+2..2L, each of which followed the
    # current token earlier (token L+1 = R[1] followed nothing: it is as unpredictable as the rest).
    first, second = loss[:, 1:SEQ_LEN], loss[:, SEQ_LEN + 1 :]
    mean_first, mean_second = first.mean().item(), second.mean().item()
    best = top_heads(head_scores_of(ctx)["induction"], 4)
    mean = loss.mean(0).numpy()
    q25, q75 = loss.quantile(0.25, dim=0).numpy(), loss.quantile(0.75, dim=0).numpy()
    vocab = model.cfg.d_vocab
    uniform = math.log(vocab)

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        positions = range(1, len(mean) + 1)  # position of the predicted token
        ax.fill_between(positions, q25, q75, color=style.BLUE, alpha=0.2, label=tr("25–75 % of sequences"))
        ax.plot(positions, mean, color=style.BLUE, label=tr("mean over {n} sequences", n=n_sequences))
        ax.axhline(uniform, color=style.GREY, ls=":", lw=2.5,
                   label=tr("uniform guess ln({vocab}) = {value}", vocab=num(vocab, ",d"), value=num(uniform, ".1f")))
        ax.axvline(SEQ_LEN + 0.5, color=style.RED, ls="--", lw=2.5)
        ax.hlines(mean_first, 2, SEQ_LEN, color=style.ORANGE, lw=4)
        ax.hlines(mean_second, SEQ_LEN + 2, 2 * SEQ_LEN, color=style.GREEN, lw=4)
        box = {"fc": "white", "ec": "none", "alpha": 0.85}
        ax.text(SEQ_LEN / 2, mean_first + 1.5, tr("first R: {loss} nats", loss=num(mean_first, ".2f")), ha="center",
                va="bottom", color=style.ORANGE, fontsize=24, weight="bold", bbox=box)
        ax.text(1.5 * SEQ_LEN, mean_second + 1.5, tr("repeated R: {loss} nats", loss=num(mean_second, ".2f")),
                ha="center", va="bottom", color=style.GREEN, fontsize=24, weight="bold", bbox=box)
        top = max(uniform, float(q75.max())) + 3.5
        ax.set_ylim(0, top)
        ax.set_xlim(0, 2 * SEQ_LEN + 1)
        ax.text(SEQ_LEN + 1.5, top - 0.2, tr("repeat starts"), color=style.RED, va="top")
        ax.set_xlabel(tr("position of the predicted token"))
        ax.set_ylabel(tr("cross-entropy loss (nats)"))
        ax.legend(loc="center right", bbox_to_anchor=(1.0, 0.62), framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "n_sequences": n_sequences,
        "seq_len": SEQ_LEN,
        "mean_loss_first_half": round(mean_first, 4),
        "mean_loss_second_half": round(mean_second, 4),
        "uniform_loss": round(uniform, 4),
        "top_induction_heads": [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in best],
    })
