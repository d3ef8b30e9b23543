"""Path patching figures on IOI: the scans of the circuit search, and the circuit they find.

* ``path-patching``: path patching, heads -> logits and heads -> the name movers' queries;
* ``ioi-circuit``: the circuit those scans find, with the composition of each edge.
"""

from __future__ import annotations


from mechdemo.figures import style
from mechdemo.figures.i18n import tr
from mechdemo.figures.ioi import CIRCUIT_PROMPTS, ROLE_STYLE, head_text, heatmap, role_circuit
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

# The circuit's edges: (sender role, receiver role, the receiver's input the path enters). With the
# definitions of Elhage et al. (2021): a later head reading an earlier head's output through its
# queries is Q-composition, through its keys K-composition, through its values V-composition.
EDGES = [("previous_token", "induction", "K"), ("induction", "s_inhibition", "V"),
         ("duplicate_token", "s_inhibition", "V"), ("s_inhibition", "name_mover", "Q")]
WRITERS = ("name_mover", "backup_name_mover", "negative_name_mover", "copy_suppression", "other_direct")


ROWS = [["previous_token"], ["induction", "duplicate_token"], ["s_inhibition"],
        ["copy_suppression", "negative_name_mover", "name_mover", "backup_name_mover", "other_direct"]]
ROW_Y = [42, 172, 302, 432]  # box centres (slide px from the bottom): the computation runs upwards
BOX_H = 74


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
        im = heatmap(ax, direct, tr("heads → logits"))
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03).set_label(tr("effect"))
        _annotate_roles(ax, roles, {"name_mover": (0, 5 / 30), "copy_suppression": (1, 12 / 30),
                                    "negative_name_mover": (1.5, 27.5 / 30)})
        if queries is None:
            style.note(ax, tr("no name mover found: no path to their queries to scan"))
        if queries is not None:
            ax = axes[0, 1]
            im = heatmap(ax, queries, tr("heads → name movers' queries"))
            fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03).set_label(tr("effect"))
            first = min(h["layer"] for h in roles["name_mover"])
            ax.text(queries.shape[1] / 2 - 0.5, (first + queries.shape[0]) / 2 - 0.5, tr("after the\nname movers"),
                    ha="center", va="center", fontsize=20, color=style.GREY)
            _annotate_roles(ax, roles, {"s_inhibition": (1, 8 / 30)})
        return fig

    return FigureOutput(draw, results={"circuit": circuit.to_json(), "n_prompts": ctx.pick(CIRCUIT_PROMPTS, 2)})


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
        heads = {r: " ".join(head_text(h) for h in hs) for r, hs in roles.items()}
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
