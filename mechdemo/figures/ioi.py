"""IOI figures (Wang et al. 2022), one message each, from analyses computed once per run.

* ``dla``: the logit difference written by each component (a few heads write most of it);
* ``activation-patching-setup``: what activation patching does, on the real prompts;
* ``activation-patching-resid``: the residual stream patched by layer and position;
* ``activation-patching-heads``: each head's output patched;
* ``path-patching``: path patching, heads -> logits and heads -> the name movers' queries;
* ``ioi-circuit``: the circuit those scans find, with the composition of each edge;
* ``attribution_vs_activation``: the gradient estimate against the exact patching.

Prompt sets: the DLA averages every template (``N_PER_TEMPLATE`` prompts each); activation
patching uses template 0 (both orders for the heads, ABBA only for the residual stream, whose
columns then have one role each); the circuit search uses the first ``CIRCUIT_PROMPTS`` prompts of
template 0. The DLA figure records the logit difference per template, so that the deck can say why
the patching's clean value is not the DLA's mean.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from mechdemo.dla import direct_logit_attribution
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.ioi import TEMPLATES, ioi_batch, ioi_batches
from mechdemo.ioi_circuit import find_ioi_circuit
from mechdemo.patching import attribution_patching, patch_heads, patch_resid_pre, prepare_ioi

N_PER_TEMPLATE = 10  # prompts per template (2 at the tests' small scale)
CIRCUIT_PROMPTS = 6  # the circuit search's prompts (template 0, both orders): four path-patching scans


def _n(ctx: FigureContext) -> int:
    return ctx.pick(N_PER_TEMPLATE, 2)


def _batches(ctx: FigureContext):
    return ctx.computed("ioi_batches", lambda: ioi_batches(ctx.model, _n(ctx), seed=ctx.seed))


def _main_batch(ctx: FigureContext):
    """Template 0, both orders: the batch of the heads' patching (and the DLA's first template)."""
    return _batches(ctx)[0]


def _run(ctx: FigureContext):
    return ctx.computed("ioi_run", lambda: prepare_ioi(ctx.model, _main_batch(ctx)))


def role_circuit(ctx: FigureContext):
    """The IOI circuit path patching finds (computed once per run; the circuit-discovery figures compare with it)."""
    def compute():
        batch = ioi_batch(ctx.model, 0, ctx.pick(CIRCUIT_PROMPTS, 2), seed=ctx.seed)
        return find_ioi_circuit(ctx.model, batch, progress=True)

    return ctx.computed("ioi_circuit", compute)


def _abba_batch(ctx: FigureContext):
    """Template 0, ABBA order only: one position per role, so the residual-stream patching has labelled rows."""
    return ctx.computed("ioi_abba", lambda: ioi_batch(ctx.model, 0, _n(ctx), seed=ctx.seed, orders=("ABBA",)))


def _abba_run(ctx: FigureContext):
    return ctx.computed("ioi_abba_run", lambda: prepare_ioi(ctx.model, _abba_batch(ctx)))


def _resid_patching(ctx: FigureContext):
    """Residual-stream patching (layer x position) on the ABBA batch."""
    return ctx.computed("ioi_patch_resid_abba", lambda: patch_resid_pre(_abba_run(ctx)))


def _heads_patching(ctx: FigureContext):
    return ctx.computed("ioi_patch_heads", lambda: patch_heads(_run(ctx), "z"))


def _dla(ctx: FigureContext):
    """DLA of every template's batch (one :class:`mechdemo.dla.DLA` per template)."""
    return ctx.computed("ioi_dla", lambda: [direct_logit_attribution(ctx.model, b.tokens, b.correct, b.incorrect)
                                            for b in _batches(ctx)])


def _head(h) -> str:
    return style.head_label(h["layer"], h["head"]) if isinstance(h, dict) else style.head_label(*h[:2])


def _signed(value: float) -> str:
    """``+0.41`` / ``−0.96`` (a true minus sign), in the drawing's language."""
    return num(value, "+.2f").replace("-", "−")


def _symmetric(data) -> float:
    return max(float(torch.nan_to_num(torch.as_tensor(data)).abs().max()), 1e-6)


def _heatmap(ax, scores, title: str, mark=None, mark_color: str = "black"):
    """A layer x head heatmap on a diverging scale (NaN: heads that cannot reach the receiver, blank)."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    lim = _symmetric(scores)
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
    parts = _dla(ctx)
    heads = torch.cat([p.heads for p in parts]).mean(0)
    mlp = torch.cat([p.mlp for p in parts]).mean(0).sum().item()
    embed = torch.cat([p.embed for p in parts]).mean().item()
    rest = torch.cat([p.attn_bias.sum(1) + p.constant for p in parts]).mean().item()  # biases, norm offsets
    total = torch.cat([p.total for p in parts])
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
            ax.text(i, max(start, end) + 0.08, _signed(shown_value) if shown_value else num(0.0, ".2f"), ha="center",
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


def _tokens(model, tokens) -> list[str]:
    return [t.strip() for t in model.to_str_tokens(tokens)][1:]  # without BOS


@figure("activation-patching-setup", description="Activation patching on IOI: the clean and the corrupted (ABC) "
                                                 "prompt, one clean activation copied into the corrupted run, the score")
def activation_patching_setup(ctx: FigureContext) -> FigureOutput:
    batch, run = _main_batch(ctx), _run(ctx)
    model = ctx.model
    clean, corrupted = _tokens(model, batch.tokens[0]), _tokens(model, batch.corrupted_tokens[0])
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


@figure("activation-patching-resid", description="Activation patching of the residual stream on IOI, by layer and "
                                                 "position: the repeated name moves from S2 to the last position")
def activation_patching_resid(ctx: FigureContext) -> FigureOutput:
    model, abba, run = ctx.model, _abba_batch(ctx), _abba_run(ctx)
    resid = _resid_patching(ctx)  # [n_layers, pos]
    labels = ["BOS"] + _tokens(model, abba.tokens[0])
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
    heads = _heads_patching(ctx)
    dla = torch.cat([p.heads for p in _dla(ctx)]).mean(0)  # the DLA figure's, for comparison on the slide
    best, worst = top_heads(heads, 5), top_heads(-heads, 3)
    ranked = [(l, h, v) for l, h, v in best] + [(l, h, -v) for l, h, v in reversed(worst)]

    def draw():
        import matplotlib.pyplot as plt

        fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=style.SLIDE, gridspec_kw={"width_ratios": [1, 1.5]})
        im = _heatmap(ax_h, heads, "", mark=[(l, h) for l, h, _ in ranked])
        fig.colorbar(im, ax=ax_h, fraction=0.08, pad=0.03)
        y = range(len(ranked))
        ax_b.barh(y, [v for _, _, v in ranked], color=[style.BLUE if v >= 0 else style.RED for _, _, v in ranked])
        ax_b.set_yticks(y, [style.head_label(l, h) for l, h, _ in ranked])
        ax_b.invert_yaxis()
        ax_b.axvline(0, color="black", lw=1.5)
        for i, (_, _, v) in enumerate(ranked):
            ax_b.text(v + (0.02 if v >= 0 else -0.02), i, _signed(v), va="center",
                      ha="left" if v >= 0 else "right", fontsize=20)
        lo, hi = min(v for *_, v in ranked), max(v for *_, v in ranked)
        ax_b.set_xlim(min(0.0, lo) - 0.2, hi + 0.22)
        ax_b.set_xlabel(tr("patching score (1 = clean)"))
        ax_b.tick_params(axis="y", length=0)
        return fig

    return FigureOutput(draw, results={
        "n_prompts": len(_main_batch(ctx)),
        "top_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4), "dla": round(dla[l, h].item(), 4)}
                      for l, h, _ in best],
        "most_negative_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4),
                                 "dla": round(dla[l, h].item(), 4)} for l, h, _ in worst],
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
# The circuit's edges: (sender role, receiver role, the receiver's input the path enters). With the
# definitions of Elhage et al. (2021): a later head reading an earlier head's output through its
# queries is Q-composition, through its keys K-composition, through its values V-composition.
EDGES = [("previous_token", "induction", "K"), ("induction", "s_inhibition", "V"),
         ("duplicate_token", "s_inhibition", "V"), ("s_inhibition", "name_mover", "Q")]
WRITERS = ("name_mover", "backup_name_mover", "negative_name_mover", "copy_suppression", "other_direct")


def _annotate_roles(ax, roles: dict, where: dict[str, tuple[float, float]]) -> None:
    """Label the heads of some roles on a layer x head heatmap: a box around each head, the role's
    name at ``where[role]`` = (shift right of the heads' mean, height as a fraction of the layers),
    in an empty part of the panel, an arrow to its heads (one arrow to a row of neighbours). The
    height is a fraction so that the layout holds for a model of any depth."""
    from matplotlib.patches import Rectangle

    n_heads = ax.get_xlim()[1] + 0.5
    n_layers = max(ax.get_ylim()) + 0.5
    for role, (shift, fraction) in where.items():
        if not roles.get(role):
            continue
        y = fraction * n_layers
        color = ROLE_STYLE[role][1]
        heads = sorted((h["layer"], h["head"]) for h in roles[role])
        for layer, head in heads:
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=color, lw=3.5))
        x = sum(h for _, h in heads) / len(heads)
        anchor = min(max(x + shift, 1.8), n_heads - 2.8)  # keep the label inside the panel
        row = len({l for l, _ in heads}) == 1 and heads[-1][1] - heads[0][1] == len(heads) - 1
        targets = [(x, heads[0][0])] if row else [(h, l) for l, h in heads]
        for head, layer in targets:  # arrows from the label's centre, drawn under it
            edge = layer - 0.5 if y < layer else layer + 0.5
            ax.annotate("", xy=(head, edge), xytext=(anchor, y), zorder=4,
                        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2, "mutation_scale": 18,
                                    "shrinkA": 0, "shrinkB": 1})
        ax.text(anchor, y, tr(ROLE_STYLE[role][0]), ha="center", va="center", fontsize=20, weight="bold",
                color=color, zorder=6, bbox={"fc": "white", "ec": color, "lw": 2, "boxstyle": "round,pad=0.25"})


@figure("path-patching", description="Path patching on IOI: each head's effect through the direct path to the logits, "
                                     "and through the name movers' queries")
def path_patching_figure(ctx: FigureContext) -> FigureOutput:
    circuit = role_circuit(ctx)
    roles = circuit.roles
    direct = circuit.scans["direct"]
    queries = circuit.scans.get("to_name_mover_queries")

    def draw():
        import matplotlib.pyplot as plt

        panels = 2 if queries is not None else 1
        fig, axes = plt.subplots(1, panels, figsize=style.SLIDE, squeeze=False)
        ax = axes[0, 0]
        im = _heatmap(ax, direct, tr("heads → logits"))
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03).set_label(tr("effect"))
        _annotate_roles(ax, roles, {"name_mover": (0, 5 / 30), "copy_suppression": (1, 12 / 30),
                                    "negative_name_mover": (1.5, 27.5 / 30)})
        if queries is None:
            style.note(ax, tr("no name mover found: no path to their queries to scan"))
        if queries is not None:
            ax = axes[0, 1]
            im = _heatmap(ax, queries, tr("heads → name movers' queries"))
            fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03).set_label(tr("effect"))
            first = min(h["layer"] for h in roles["name_mover"])
            ax.text(queries.shape[1] / 2 - 0.5, (first + queries.shape[0]) / 2 - 0.5, tr("after the\nname movers"),
                    ha="center", va="center", fontsize=20, color=style.GREY)
            _annotate_roles(ax, roles, {"s_inhibition": (1, 8 / 30)})
        return fig

    return FigureOutput(draw, results={"circuit": circuit.to_json(), "n_prompts": ctx.pick(CIRCUIT_PROMPTS, 2)})


ROWS = [["previous_token"], ["induction", "duplicate_token"], ["s_inhibition"],
        ["copy_suppression", "negative_name_mover", "name_mover", "backup_name_mover", "other_direct"]]
ROW_Y = [42, 172, 302, 432]  # box centres (slide px from the bottom): the computation runs upwards
BOX_H = 74


def _circuit_layout(roles: dict, widths: dict[str, float]) -> dict[str, float]:
    """Role -> x centre (slide px). The writers share the top row; every other role sits under the
    role it feeds, so that edges run (nearly) straight up."""
    width = style.FIGURE_BOX_PX[0]
    xs: dict[str, float] = {}
    top = [r for r in ROWS[3] if roles.get(r)]
    gap = (width - sum(widths[r] for r in top)) / (len(top) + 1)
    x = 0.0
    for r in top:
        x += gap + widths[r] / 2
        xs[r] = x
        x += widths[r] / 2
    xs["s_inhibition"] = xs.get("name_mover", width / 2)
    below = [r for r in ROWS[1] if roles.get(r)]
    for i, r in enumerate(below):
        xs[r] = xs["s_inhibition"] + (0 if len(below) == 1 else (-1 if i == 0 else 1) * 190)
    xs["previous_token"] = xs.get("induction", xs["s_inhibition"])
    return xs


@figure("ioi-circuit", description="The IOI circuit path patching finds: heads grouped by role, edges labelled by "
                                   "the composition (Q, K, V) through which a role reads the one before")
def ioi_circuit_figure(ctx: FigureContext) -> FigureOutput:
    circuit = role_circuit(ctx)
    roles = {r: hs for r, hs in circuit.roles.items() if hs}
    edges = [(a, b, kind) for a, b, kind in EDGES if a in roles and b in roles]

    def draw():
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

        fig, ax = style.slide_canvas()
        W, H = style.FIGURE_BOX_PX
        renderer = fig.canvas.get_renderer()

        def text_width(text: str, **kw) -> float:
            t = ax.text(0, 0, text, fontsize=20, **kw)
            w = t.get_window_extent(renderer).width / fig.dpi * style.PX_PER_INCH
            t.remove()
            return w

        titles = {r: tr(ROLE_STYLE[r][0]) for r in roles}
        heads = {r: " ".join(_head(h) for h in hs) for r, hs in roles.items()}
        widths = {r: max(text_width(titles[r], weight="bold"), text_width(heads[r])) + 30 for r in roles}
        xs = _circuit_layout(roles, widths)
        ys = {r: ROW_Y[i] for i, row in enumerate(ROWS) for r in row}
        for role in roles:
            x, y, w = xs[role], ys[role], widths[role]
            color = ROLE_STYLE[role][1]
            for fc, ec in ((color, "none"), ("none", color)):
                ax.add_patch(FancyBboxPatch((x - w / 2, y - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0,rounding_size=10",
                                            fc=fc, ec=ec, lw=3, alpha=0.2 if fc != "none" else 1))
            ax.text(x, y + 6, titles[role], ha="center", va="bottom", fontsize=20, weight="bold")
            ax.text(x, y - 4, heads[role], ha="center", va="top", fontsize=20)

        def arrow(a, b, **kw):
            ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=26, lw=2.5, shrinkA=0, shrinkB=0, **kw))

        logits_y = H - 22
        ax.text(W / 2, logits_y, tr("logits"), ha="center", va="center", fontsize=22, weight="bold",
                bbox={"boxstyle": "round,pad=0.25", "fc": "#eeeeee", "ec": "black", "lw": 1.5})
        ax.plot([30, W - 30], [logits_y, logits_y], color="black", lw=1.5, zorder=0)
        for role in ROWS[3]:
            if role in roles:
                arrow((xs[role], ys[role] + BOX_H / 2), (xs[role], logits_y - 4), color=style.GREY)
        labelled = set()
        for a, b, kind in edges:
            start, stop = (xs[a], ys[a] + BOX_H / 2), (xs[b], ys[b] - BOX_H / 2)
            arrow(start, stop, color="black")
            if kind in labelled:
                continue
            labelled.add(kind)
            mid_x, mid_y = (start[0] + stop[0]) / 2, (start[1] + stop[1]) / 2
            right = start[0] >= stop[0]  # label on the outer side of the edge
            ax.text(mid_x + (16 if right else -16), mid_y, tr("{kind}-composition", kind=kind),
                    ha="left" if right else "right", va="center", fontsize=22, weight="bold", color=style.BLUE)
        if "name_mover" not in roles:  # the search starts from the name movers: without them, no circuit
            style.note(ax, tr("no name mover found: path patching finds no IOI circuit on this model"))
        return fig

    return FigureOutput(draw, results={
        "edges": [{"from": a, "to": b, "composition": kind} for a, b, kind in edges],
        "roles_shown": list(roles),
    })


# ---- attribution patching -----------------------------------------------------------------------


@figure("attribution_vs_activation", description="Attribution patching (gradient estimate) against activation "
                                                 "patching on IOI: right per head, wrong on the residual stream at S2")
def attribution_figure(ctx: FigureContext) -> FigureOutput:
    # heads: the main batch (both orders), residual stream: the ABBA batch (labelled positions), each
    # estimate from the run its exact patching used (the activation-patching figures', computed once)
    heads, resid = _heads_patching(ctx), _resid_patching(ctx)
    estimate = {"heads": attribution_patching(_run(ctx))["heads"],
                "resid_pre": attribution_patching(_abba_run(ctx))["resid_pre"]}
    s2 = int(_abba_batch(ctx).positions["S2"][0])
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
