"""Automatic circuit discovery figures (EAP, EAP-IG), from one computation per run.

* ``circuit-discovery-curve``: faithfulness against circuit size for EAP-IG, EAP and random edges,
  on held-out prompts, with the path-patching circuit measured the same way;
* ``circuit-discovery-graph``: the strongest edges of the smallest EAP-IG circuit that reaches
  the target, layer by layer, each edge coloured by the input it enters (Q, K, V, MLP, logits),
  each head by the role path patching gave it.
"""

from __future__ import annotations


from mechdemo.circuit_discovery import discover_ioi, edge_list
from mechdemo.circuit_discovery import ComputeGraph
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.ioi import ROLE_STYLE, role_circuit
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

GRAPH_EDGES = 24  # edges drawn in the circuit figure (the strongest of the circuit)
KIND_COLOR = {"q": style.BLUE, "k": style.ORANGE, "v": style.GREEN, "mlp": style.GREY, "logits": "black"}


def _discovery(ctx: FigureContext) -> dict:
    def compute():
        circuit = role_circuit(ctx)
        role_heads = {r: [(h["layer"], h["head"]) for h in hs] for r, hs in circuit.roles.items() if hs}
        return discover_ioi(ctx.model, role_heads, n_per_template=ctx.pick(8, 1), templates=ctx.pick((0, 1, 2, 3), (0,)),
                            per_decade=ctx.pick(2, 1), progress=True)

    return ctx.computed("circuit_discovery", compute)


def _json(result: dict) -> dict:
    """The numbers the deck may cite: not the tensors, and not the timings (a figure's results must
    be reproducible; the manifest records the figure's seconds, benchmarks/bench_circuit.py the rest)."""
    return {k: v for k, v in result.items() if k not in ("tensors", "seconds")}


@figure("circuit-discovery-curve", description="Faithfulness of circuits built from the top EAP-IG, EAP and random "
                                               "edges, measured by edge patching on held-out IOI prompts")
def curve_figure(ctx: FigureContext) -> FigureOutput:
    result = _discovery(ctx)

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE, layout="constrained")
        lines = (("eap-ig", "EAP-IG", style.BLUE, "-", 4), ("eap", "EAP", style.ORANGE, "-", 3),
                 ("random", tr("random edges"), style.GREY, "--", 3))
        for key, label, color, ls, lw in lines:
            pts = result["curves"][key]
            ax.plot([p["edges"] or 1 for p in pts], [p["faithfulness"] for p in pts], ls, color=color, lw=lw,
                    marker="o", ms=7, label=label)
        target = result["at_target"]
        ax.axhline(target["target"], color="black", lw=1.5, ls=":")
        if target["reached"]:
            ax.plot([target["edges"]], [target["faithfulness"]], "o", ms=16, mfc="none", mec=style.BLUE, mew=3)
            ax.annotate(tr("{edges} edges ({share} of the graph)", edges=num(target["edges"], ",d"),
                           share=num(100 * target["fraction"], ".1f") + " %"),
                        (target["edges"], target["faithfulness"]), xytext=(-150, -200), textcoords="offset points",
                        ha="left", fontsize=22, color=style.BLUE, weight="bold",
                        arrowprops={"arrowstyle": "-|>", "color": style.BLUE, "lw": 2})
        pp = result.get("path_patching")
        if pp:
            ax.plot([pp["edges"]], [pp["faithfulness"]], "*", ms=28, color=style.RED, mec="black", zorder=5,
                    label=tr("path-patching circuit ({n} heads)", n=len(pp["heads"])))
        ax.set_xscale("log")
        ax.set_xlim(8, result["n_edges"] * 1.3)
        low = min(min(p["faithfulness"] for p in c) for c in result["curves"].values())
        ax.set_ylim(min(-0.1, low - 0.05), 1.1)
        ax.set_xlabel(tr("edges in the circuit (log scale; the whole graph: {n})", n=num(result["n_edges"], ",d")))
        ax.set_ylabel(tr("faithfulness"))
        ax.legend(loc="upper left", fontsize=20)
        ax.grid(alpha=0.3)
        return fig

    return FigureOutput(draw, results=_json(result))


@figure("circuit-discovery-graph", description="The strongest edges of the EAP-IG circuit, layer by layer: which "
                                               "input (Q, K, V) each enters, and the role path patching gave each head")
def graph_figure(ctx: FigureContext) -> FigureOutput:
    result = _discovery(ctx)
    graph = ComputeGraph.of(ctx.model)
    circuit = result["tensors"]["at_target"]
    scores = result["tensors"]["scores"]["eap-ig"]
    shown = edge_list(graph, scores, circuit, limit=GRAPH_EDGES)
    role_of = {}
    for role, heads in role_circuit(ctx).roles.items():
        for h in heads:
            role_of.setdefault(f"a{h['layer']}.h{h['head']}", role)
    flat = {graph.edge_name(s, r): (s, r) for s, r in circuit.nonzero().tolist()}

    def draw():
        from matplotlib.lines import Line2D
        from matplotlib.patches import FancyArrowPatch

        fig, ax = style.slide_canvas()
        W, H = style.FIGURE_BOX_PX
        nodes = set()
        for e in shown:
            s, r = flat[e["edge"]]
            nodes.add(graph.sender_name(s))
            nodes.add(graph.receiver_node(r))

        def layer_of(node: str) -> float:
            if node == "input":
                return -1
            if node == "logits":
                return graph.n_layers
            layer = int(node[1:].split(".")[0])
            return layer + (0.5 if node.startswith("m") else 0)

        levels = sorted({layer_of(n) for n in nodes})
        left, right, bottom, top = 150, W - 250, 30, H - 30
        y_of = {lv: bottom + (top - bottom) * i / max(1, len(levels) - 1) for i, lv in enumerate(levels)}
        pos = {}
        for lv in levels:
            row = sorted((n for n in nodes if layer_of(n) == lv), key=lambda n: (n.startswith("m"), n))
            for i, n in enumerate(row):
                pos[n] = (left + (right - left) * (i + 1) / (len(row) + 1), y_of[lv])
            label = {-1: tr("embeddings"), graph.n_layers: "logits"}.get(lv, f"L{int(lv)}" + (" MLP" if lv % 1 else ""))
            ax.text(20, y_of[lv], label, ha="left", va="center", fontsize=20, color=style.GREY)
        top_score = max(abs(e["score"]) for e in shown) if shown else 1.0
        for e in shown:
            s, r = flat[e["edge"]]
            a, b = pos[graph.sender_name(s)], pos[graph.receiver_node(r)]
            ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=20, shrinkA=16, shrinkB=16,
                                         lw=1.5 + 5 * abs(e["score"]) / top_score, color=KIND_COLOR[graph.receiver_kind(r)[0]],
                                         alpha=0.85, connectionstyle="arc3,rad=0.08", zorder=1))
        for n, (x, y) in pos.items():
            role = role_of.get(n)
            color = ROLE_STYLE[role][1] if role else "#dddddd"
            short = n.replace("a", "", 1).replace(".h", "H", 1) if n.startswith("a") else n
            short = f"L{short}" if n.startswith("a") else {"input": tr("embeddings"), "logits": "logits"}.get(n, f"MLP {n[1:]}")
            ax.text(x, y, short, ha="center", va="center", fontsize=20, weight="bold", zorder=3,
                    bbox={"boxstyle": "round,pad=0.3", "fc": color, "ec": "black", "lw": 1.2, "alpha": 0.95})
        kinds = {graph.receiver_kind(flat[e["edge"]][1])[0] for e in shown}
        handles = [Line2D([], [], color=KIND_COLOR[k], lw=5, label=label) for k, label in
                   (("q", "→ Q"), ("k", "→ K"), ("v", "→ V"), ("mlp", "→ MLP"), ("logits", "→ logits")) if k in kinds]
        roles_seen = [r for r in ROLE_STYLE if r in set(role_of.get(n) for n in nodes)]
        handles += [Line2D([], [], marker="s", ls="", ms=16, mfc=ROLE_STYLE[r][1], mec="black", label=tr(ROLE_STYLE[r][0]))
                    for r in roles_seen]
        if any(n.startswith("a") and n not in role_of for n in nodes):
            handles.append(Line2D([], [], marker="s", ls="", ms=16, mfc="#dddddd", mec="black", label=tr("other heads")))
        ax.legend(handles=handles, loc="center right", fontsize=20, frameon=False, borderaxespad=0.2)
        return fig

    return FigureOutput(draw, results={"edges_shown": shown, "n_shown": len(shown), "circuit_edges": int(circuit.sum())})
