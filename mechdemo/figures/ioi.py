"""IOI figures (Wang et al. 2022): the IOI runs every IOI figure shares, computed once per run, and
the first two figures.

* ``dla``: the logit difference written by each component (a few heads write most of it);
* ``activation-patching-setup``: what activation patching does, on the real prompts.

:mod:`mechdemo.figures.patching` draws the activation and attribution patching results,
:mod:`mechdemo.figures.path_patching` the path-patching scans and the circuit.

Prompt sets: the DLA averages every template (``N_PER_TEMPLATE`` prompts each); activation
patching uses template 0 (both orders for the heads, ABBA only for the residual stream, whose
columns then have one role each); the circuit search uses the first ``CIRCUIT_PROMPTS`` prompts of
template 0. The DLA figure records the logit difference per template, so that the deck can say why
the patching's clean value is not the DLA's mean.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from mechdemo.dla import DLA, direct_logit_attribution
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.ioi import TEMPLATES, ioi_batch, ioi_batches
from mechdemo.ioi.circuit import find_ioi_circuit
from mechdemo.patching import patch_heads, patch_resid_pre, prepare_ioi

N_PER_TEMPLATE = 10  # prompts per template (2 at the tests' small scale)
CIRCUIT_PROMPTS = 6  # the circuit search's prompts (template 0, both orders): four path-patching scans


def n_per_template(ctx: FigureContext) -> int:
    return ctx.pick(N_PER_TEMPLATE, 2)


def ioi_batches_of(ctx: FigureContext):
    return ctx.computed("ioi_batches", lambda: ioi_batches(ctx.model, n_per_template(ctx), seed=ctx.seed))


def main_batch(ctx: FigureContext):
    """Template 0, both orders: the batch of the heads' patching (and the DLA's first template)."""
    return ioi_batches_of(ctx)[0]


def main_run(ctx: FigureContext):
    return ctx.computed("ioi_run", lambda: prepare_ioi(ctx.model, main_batch(ctx)))


def role_circuit(ctx: FigureContext):
    """The IOI circuit path patching finds (computed once per run; the circuit-discovery figures compare with it)."""
    def compute():
        batch = ioi_batch(ctx.model, 0, ctx.pick(CIRCUIT_PROMPTS, 2), seed=ctx.seed)
        return find_ioi_circuit(ctx.model, batch, progress=True)

    return ctx.computed("ioi_circuit", compute)


def abba_batch(ctx: FigureContext):
    """Template 0, ABBA order only: one position per role, so the residual-stream patching has labelled rows."""
    return ctx.computed("ioi_abba", lambda: ioi_batch(ctx.model, 0, n_per_template(ctx), seed=ctx.seed, orders=("ABBA",)))


def abba_run(ctx: FigureContext):
    return ctx.computed("ioi_abba_run", lambda: prepare_ioi(ctx.model, abba_batch(ctx)))


def resid_patching(ctx: FigureContext):
    """Residual-stream patching (layer x position) on the ABBA batch."""
    return ctx.computed("ioi_patch_resid_abba", lambda: patch_resid_pre(abba_run(ctx)))


def heads_patching(ctx: FigureContext):
    return ctx.computed("ioi_patch_heads", lambda: patch_heads(main_run(ctx), "z"))


def dla_parts(ctx: FigureContext):
    """DLA of every template's batch (one :class:`mechdemo.dla.DLA` per template)."""
    return ctx.computed("ioi_dla", lambda: [direct_logit_attribution(ctx.model, b.tokens, b.correct, b.incorrect)
                                            for b in ioi_batches_of(ctx)])


def head_text(h) -> str:
    return style.head_label(h["layer"], h["head"]) if isinstance(h, dict) else style.head_label(*h[:2])


def signed(value: float) -> str:
    """``+0.41`` / ``−0.96`` (a true minus sign), in the drawing's language."""
    return num(value, "+.2f").replace("-", "−")


def symmetric_limit(data) -> float:
    return max(float(torch.nan_to_num(torch.as_tensor(data)).abs().max()), 1e-6)


def heatmap(ax, scores, title: str, mark=None, mark_color: str = "black"):
    """A layer x head heatmap on a diverging scale (NaN: heads that cannot reach the receiver, blank)."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    lim = symmetric_limit(scores)
    cmap = mpl.colormaps["RdBu"].with_extremes(bad="white")
    im = style.layer_head_heatmap(ax, scores, title, vmin=-lim, vmax=lim, cmap=cmap)
    ax.set_yticks(range(0, scores.shape[0], 5))
    for layer, head in mark or []:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=mark_color, lw=3))
    return im


# ---- DLA ----------------------------------------------------------------------------------------

N_POSITIVE, N_NEGATIVE = 4, 2  # heads shown one by one in the DLA waterfall


@figure("dla", description="Direct logit attribution of the IOI logit difference: a few heads write most of it "
                           "(waterfall of heads, the other heads, MLPs and embeddings up to the total)")
def dla_figure(ctx: FigureContext) -> FigureOutput:
    parts = dla_parts(ctx)
    every = DLA.concatenate(parts)  # every template's prompts
    heads = every.heads.mean(0)
    mlp = every.mlp.mean(0).sum().item()
    embed = every.embed.mean().item()
    rest = (every.attn_bias.sum(1) + every.constant).mean().item()  # biases, norm offsets
    total = every.total
    error = max((p.parts_sum() - p.total).abs().max().item() for p in parts)
    ld, acc = total.mean().item(), (total > 0).float().mean().item()
    best, worst = top_heads(heads, N_POSITIVE), top_heads(-heads, N_NEGATIVE)
    shown = sum(v for _, _, v in best) - sum(v for _, _, v in worst)
    others = heads.sum().item() - shown
    steps = ([(style.head_label(l, h), v) for l, h, v in best] + [(style.head_label(l, h), -v) for l, h, v in worst]
             + [(None, others), (None, mlp), (None, embed + rest)])  # None: labels translated when drawn

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        start = 0.0
        for i, (name, value) in enumerate(steps):
            color = style.BLUE if value >= 0 else style.RED
            ax.bar(i, value, bottom=start, color=color, width=0.7)
            end = start + value
            if i + 1 < len(steps):
                ax.plot([i + 0.35, i + 0.65], [end, end], color=style.GREY, lw=1.5)
            shown_value = value if abs(value) >= 0.005 else 0.0  # no "-0.00"
            ax.text(i, max(start, end) + 0.08, signed(shown_value) if shown_value else num(0.0, ".2f"), ha="center",
                    va="bottom", fontsize=20)
            start = end
        n = len(steps)
        ax.bar(n, ld, color=style.GREY, width=0.7)
        ax.text(n, ld + 0.08, num(ld, ".2f"), ha="center", va="bottom", fontsize=20, weight="bold")
        ax.axhline(0, color="black", lw=1.5)
        groups = iter([tr("other heads"), tr("MLPs"), tr("embeddings")])
        labels = [name if name is not None else next(groups) for name, _ in steps] + [tr("logit diff")]
        ax.set_xticks(range(n + 1), labels, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylabel(tr("logit(IO) − logit(S)"))
        levels = list(accumulate(v for _, v in steps))
        ax.set_ylim(min(0.0, *levels) - 0.3, max(0.0, *levels) + 0.9)
        return fig

    by_template = [round(p.total.mean().item(), 4) for p in parts]
    return FigureOutput(draw, results={
        "n_prompts": len(total), "n_templates": len(parts), "n_per_template": len(parts[0].total),
        "n_top_heads": len(best),
        "logit_diff_mean": round(ld, 4), "accuracy": round(acc, 4),
        "logit_diff_by_template": by_template,
        "hardest_template": {"template": by_template.index(min(by_template)), "logit_diff": min(by_template)},
        "top_heads": [{"layer": l, "head": h, "dla": round(v, 4)} for l, h, v in best],
        "most_negative_heads": [{"layer": l, "head": h, "dla": round(-v, 4)} for l, h, v in worst],
        "shown_heads_total": round(shown, 4), "other_heads_total": round(others, 4),
        "top_heads_share": round(sum(v for _, _, v in best) / ld, 4),
        "mlp_total": round(mlp, 4), "embed": round(embed, 4), "biases_total": round(rest, 4),
        "max_sum_error": error,
    })


# ---- activation patching ------------------------------------------------------------------------


def prompt_tokens(model, tokens) -> list[str]:
    return [t.strip() for t in model.to_str_tokens(tokens)][1:]  # without BOS


@figure("activation-patching-setup", description="Activation patching on IOI: the clean and the corrupted (ABC) "
                                                 "prompt, one clean activation copied into the corrupted run, the score")
def activation_patching_setup(ctx: FigureContext) -> FigureOutput:
    batch, run = main_batch(ctx), main_run(ctx)
    model = ctx.model
    clean, corrupted = prompt_tokens(model, batch.tokens[0]), prompt_tokens(model, batch.corrupted_tokens[0])
    roles = {int(batch.positions[r][0]) - 1: r for r in ("IO", "S1", "S2")}  # token index without BOS
    answer = model.to_str_tokens(batch.correct[:1])[0].strip()
    s2 = int(batch.positions["S2"][0]) - 1

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch

        fig = plt.figure(figsize=style.SLIDE, layout="none")
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, style.FIGURE_BOX_PX[0])
        ax.set_ylim(0, style.FIGURE_BOX_PX[1])
        ax.axis("off")
        renderer = fig.canvas.get_renderer()
        size = 24

        def width(text: str) -> float:
            t = ax.text(0, 0, text, fontsize=size)
            w = t.get_window_extent(renderer).width / fig.dpi * style.PX_PER_INCH
            t.remove()
            return w

        gap = 9
        widths = [max(width(a), width(b)) + 12 for a, b in zip(clean, corrupted)]
        x0 = 18
        lefts = [x0 + sum(widths[:i]) + gap * i for i in range(len(widths))]
        rows = [(tr("clean"), clean, 430, style.GREEN, answer, run.clean_ld),
                (tr("corrupted"), corrupted, 235, style.RED, "?", run.corrupted_ld)]
        role_color = {"IO": style.BLUE, "S1": style.ORANGE, "S2": style.ORANGE}
        for name, tokens, y, color, out, ld in rows:
            ax.text(x0, y + 52, name, fontsize=26, weight="bold", color=color, va="bottom")
            for i, (tok, left, w) in enumerate(zip(tokens, lefts, widths)):
                role = roles.get(i)
                changed = tokens is corrupted and i == s2
                face = "#fde0d0" if changed else ("#dbe9f6" if role == "IO" else "#fdebc8" if role else "#f2f2f2")
                edge = style.RED if changed else role_color.get(role, "#bbbbbb")
                ax.add_patch(plt.Rectangle((left, y - 22), w, 44, fc=face, ec=edge, lw=2.5 if role or changed else 1))
                ax.text(left + w / 2, y, tok, fontsize=size, ha="center", va="center")
                if role and tokens is clean:
                    ax.text(left + w / 2, y + 26, role, fontsize=20, ha="center", va="bottom",
                            color=role_color[role], weight="bold")
            end = lefts[-1] + widths[-1] + 18
            ax.text(end, y, "→ " + out, fontsize=26, va="center", weight="bold", color=color)
            ax.text(end, y - 34, tr("mean LD {ld}", ld=num(ld, ".2f")), fontsize=22, va="top", color=color)
        mid = lefts[s2] + widths[s2] / 2
        ax.add_patch(FancyArrowPatch((mid, 430 - 26), (mid, 235 + 26), arrowstyle="-|>", mutation_scale=30,
                                     color="black", lw=3))
        ax.text(mid + 16, 332, tr("copy ONE clean activation\n(one layer, one position or head)"), fontsize=22,
                va="center")
        ax.text(x0, 125, tr("LD = logit(IO) − logit(S), mean over the {n} prompts of the batch", n=len(batch)),
                fontsize=22, va="center", color=style.GREY)
        ax.text(x0, 75, tr("score = (LD patched − LD corrupted) / (LD clean − LD corrupted)"), fontsize=26,
                va="center")
        ax.text(x0, 25, tr("1 = the clean answer is back;  0 = no effect"), fontsize=22, va="center",
                color=style.GREY)
        return fig

    return FigureOutput(draw, results={
        "n_prompts": len(batch), "template": TEMPLATES[0],
        "logit_diff_clean": round(run.clean_ld, 4), "logit_diff_corrupted": round(run.corrupted_ld, 4),
        "example_clean": batch.prompts[0], "example_corrupted": batch.corrupted_prompts[0],
    })


# ---- path patching and the circuit --------------------------------------------------------------

ROLE_STYLE = {  # role -> (label, colour)
    "previous_token": ("previous-token", style.GREY),
    "duplicate_token": ("duplicate-token", style.SKY),
    "induction": ("induction", style.BLUE),
    "s_inhibition": ("S-inhibition", style.PURPLE),
    "name_mover": ("name mover", style.GREEN),
    "backup_name_mover": ("backup name mover", style.YELLOW),
    "negative_name_mover": ("negative name mover", style.RED),
    "copy_suppression": ("copy suppression", style.ORANGE),
    "other_direct": ("other direct effects", "#999999"),
}
