"""The architecture figures, drawn from the models' actual configs.

- ``transformer_decoder``: the data flow of the loaded model (embedding, residual stream, L blocks
  of norm -> attention and norm -> MLP each added back to the stream, final norm, unembedding)
  labelled with its real sizes.
- ``architecture_table``: the same facts for the loaded model beside the course's models (GPT-2
  small, Llama 3.2 1B: :func:`mechdemo.models.compared_with`); the loaded model's column is read
  from the model in memory, the others from their published configs (no download).
- ``mlp_gated``: a plain MLP, ``W_out GELU(W_in x)`` (GPT-2's), next to a gated one (SwiGLU, the
  Llama family's), ``W_down (SiLU(W_gate x) ⊙ W_up x)``, with each model's sizes; the loaded
  model is one of the two.

The diagrams are drawn on one axes in slide pixels (1200 x 520, 1 pt = 1 px): box sizes and font
sizes are in the same unit, so what fits here fits on the slide.
"""

from __future__ import annotations

from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from mechdemo.architecture import Architecture, architecture_of
from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.models import MODELS, compared_with

ACTIVATIONS = {"silu": "SiLU", "gelu_new": "GELU", "gelu": "GELU", "relu": "ReLU"}
FONT = 20  # diagram text (pt = px on the slide)
LIGHT_BLUE, LIGHT_ORANGE, LIGHT_GREEN, LIGHT_GREY = "#cfe3f3", "#fbe3c0", "#cdeee3", "#eeeeee"


def _architectures(ctx: FigureContext) -> dict[str, Architecture]:
    """The architectures of the loaded model (from its config in memory) and of the course's models
    (from their published configs, no download), the loaded model first."""

    def compute() -> dict[str, Architecture]:
        loaded = architecture_of(ctx.model.original_model.config)
        return {name: (loaded if name == ctx.model_name else MODELS[name].architecture)
                for name in compared_with(ctx.model_name)}

    return ctx.computed("architecture.models", compute)


def _activation(a: Architecture) -> str:
    return ACTIVATIONS.get(a.activation, a.activation)


def _mlp_kind(a: Architecture) -> str:
    if a.gated_mlp:
        return "SwiGLU" if a.activation == "silu" else tr("gated {act}", act=_activation(a))
    return _activation(a)


def _params_millions(n: int) -> str:
    return tr("{n} M", n=num(n / 1e6, ",.1f"))


def _mlp_params(a: Architecture) -> int:
    """Weights of one layer's MLP (biases included)."""
    n = (3 if a.gated_mlp else 2) * a.d_model * a.d_mlp
    if a.mlp_bias:
        n += (2 if a.gated_mlp else 1) * a.d_mlp + a.d_model
    return n


# ---- drawing in slide pixels ---------------------------------------------------------------------


def _canvas():
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=style.SLIDE, layout="none")  # one axes filling the figure: nothing to lay out
    ax = fig.add_axes((0, 0, 1, 1))
    w, h = style.FIGURE_BOX_PX
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, color, *, size=FONT, weight="normal", ls="-"):
    """A rounded box with its lower-left corner at (x, y), ``text`` centred in it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=10", fc=color, ec="black",
                                lw=1.8, ls=ls))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, linespacing=1.35)


def _arrow(ax, p, q, rad=0.0, color="black", lw=2.2):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=22, lw=lw, color=color,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def _plus(ax, x, y):
    ax.add_patch(Circle((x, y), 17, fc="white", ec="black", lw=2, zorder=5))
    ax.text(x, y, "+", ha="center", va="center", fontsize=24, weight="bold", zorder=6)


def _hadamard(ax, x, y):
    """⊙, the elementwise product, drawn (the glyph in a circle reads as two circles)."""
    ax.add_patch(Circle((x, y), 17, fc="white", ec="black", lw=2, zorder=5))
    ax.add_patch(Circle((x, y), 4.5, fc="black", ec="none", zorder=6))


# ---- transformer_decoder --------------------------------------------------------------------------


def _draw_decoder(a: Architecture):
    fig, ax = _canvas()
    y_s = 215  # the residual stream
    x0, x1 = 235, 975  # where the stream runs
    ax.add_patch(Rectangle((x0, y_s - 9), x1 - x0, 18, fc=style.BLUE, ec="none", alpha=0.45))
    ax.text((x0 + x1) / 2, y_s - 40, tr("residual stream  (d_model = {d})", d=a.d_model), ha="center", va="center",
            fontsize=22, color=style.BLUE, weight="bold")
    # input: tokens -> embedding -> the stream
    _box(ax, 10, 30, 205, 80, tr("tokens (BPE)\n→ ids"), LIGHT_GREY)
    _box(ax, 10, y_s - 50, 205, 100, tr("Embedding $W_E$\n{v} × {d}", v=num(a.d_vocab, ",d"), d=a.d_model),
         LIGHT_BLUE)
    _arrow(ax, (112, 110), (112, y_s - 50))
    _arrow(ax, (215, y_s), (x0 + 2, y_s))
    # one block, repeated n_layers times
    bx0, bx1, by0, by1 = 262, 948, 125, 508
    ax.add_patch(FancyBboxPatch((bx0, by0), bx1 - bx0, by1 - by0, boxstyle="round,pad=0,rounding_size=14",
                                fc="none", ec=style.GREY, lw=2.2, ls="--"))
    ax.text(bx1 - 12, by0 + 12, tr("× {n} layers", n=a.n_layers), ha="right", va="bottom", fontsize=24,
            weight="bold", color=style.GREY)
    if a.is_gqa:
        attn = tr("Grouped-query attention\n{h} query heads, {kv} K/V\nd_head = {dh}, RoPE", h=a.n_heads,
                  kv=a.n_kv_heads, dh=a.d_head)
    else:
        attn = tr("Multi-head attention\n{h} heads, d_head = {dh}", h=a.n_heads, dh=a.d_head)
    if a.gated_mlp:
        mlp = tr("Gated MLP\n({kind})\n{d} → {m} → {d}", kind=_mlp_kind(a), d=a.d_model, m=num(a.d_mlp, ",d"))
    else:
        mlp = tr("MLP ({act})\n{d} → {m} → {d}", act=_activation(a), d=a.d_model, m=num(a.d_mlp, ",d"))
    for x_read, x_plus, text, color in ((300, 618, attn, LIGHT_ORANGE), (655, 912, mlp, LIGHT_GREEN)):
        w_comp = x_plus - x_read - 20
        x_comp = x_read - 20
        _box(ax, x_read, y_s + 45, 150, 50, a.norm, LIGHT_GREY)
        _arrow(ax, (x_read + 20, y_s + 9), (x_read + 20, y_s + 45))
        _box(ax, x_comp, 330, w_comp, 130, text, color)
        _arrow(ax, (x_read + 20, y_s + 95), (x_read + 20, 330))
        _arrow(ax, (x_comp + w_comp, 395), (x_plus, y_s + 17), rad=-0.35)
        _plus(ax, x_plus, y_s)
    # output: final norm -> unembedding -> logits
    x_out = 995
    _box(ax, x_out, y_s - 30, 195, 60, tr("final {norm}", norm=a.norm), LIGHT_GREY)
    _arrow(ax, (x1 - 2, y_s), (x_out, y_s))
    unembed = tr("Unembedding\n$W_U = W_E^T$") if a.tied_embeddings else tr("Unembedding\n$W_U$")
    _box(ax, x_out, 300, 195, 100, unembed, LIGHT_BLUE)
    _arrow(ax, (x_out + 97, y_s + 30), (x_out + 97, 300))
    ax.text(x_out + 97, 470, tr("logits →\nnext token"), ha="center", va="center", fontsize=FONT, linespacing=1.3)
    _arrow(ax, (x_out + 97, 400), (x_out + 97, 435))
    return fig


@figure("transformer_decoder", description="Decoder-only transformer drawn from the loaded model's config: "
        "embedding, residual stream, blocks of norm + attention and norm + MLP added back, unembedding")
def transformer_decoder(ctx: FigureContext) -> FigureOutput:
    arch = _architectures(ctx)[ctx.model_name]
    return FigureOutput(lambda: _draw_decoder(arch), results={
        "architecture": arch.to_dict(),
        "n_params_millions": round(arch.n_params / 1e6, 1),
    })


# ---- architecture_table -----------------------------------------------------------------------------


def _rows(archs: list[Architecture]) -> list[tuple[str, list[str]]]:
    def col(f):
        return [f(a) for a in archs]

    return [
        (tr("Layers"), col(lambda a: str(a.n_layers))),
        ("d_model", col(lambda a: num(a.d_model, ",d"))),
        (tr("Query / K/V heads"), col(lambda a: f"{a.n_heads} / {a.n_kv_heads}")),
        ("d_head", col(lambda a: str(a.d_head))),
        ("d_mlp", col(lambda a: num(a.d_mlp, ",d"))),
        (tr("Vocabulary"), col(lambda a: num(a.d_vocab, ",d"))),
        (tr("Context"), col(lambda a: num(a.n_ctx, ",d"))),
        (tr("Norm"), col(lambda a: a.norm)),
        (tr("Positions"), col(lambda a: tr("learned") if a.positions == "learned" else "RoPE")),
        ("MLP", col(_mlp_kind)),
        (tr("Tied $W_E$ / $W_U$"), col(lambda a: tr("yes") if a.tied_embeddings else tr("no"))),
        (tr("Parameters"), col(lambda a: _params_millions(a.n_params))),
    ]


DESIGN_ROWS = (2, 7, 8, 9)  # the rows where the families differ by design, not by size


def _draw_table(archs: dict[str, Architecture], highlight: str):
    fig, ax = _canvas()
    names = list(archs)
    rows = _rows(list(archs.values()))
    w, h = style.FIGURE_BOX_PX
    dy = h / (len(rows) + 1)
    x_label, x_cols = 8, [445 + 290 * i for i in range(len(names))]
    col = names.index(highlight)
    ax.add_patch(Rectangle((x_cols[col] - 145, 0), 290, h, fc=style.ORANGE, alpha=0.18, ec="none"))
    for r in DESIGN_ROWS:
        y = h - (r + 2) * dy
        ax.add_patch(Rectangle((0, y), w, dy, fc=style.SKY, alpha=0.12, ec="none", zorder=0))
    for i, name in enumerate(names):
        ax.text(x_cols[i], h - dy / 2, MODELS[name].display_name, ha="center", va="center", weight="bold",
                fontsize=FONT)
    for r, (label, values) in enumerate(rows, start=1):
        y = h - (r + 0.5) * dy
        ax.text(x_label, y, label, ha="left", va="center", fontsize=FONT, color="#444444")
        for i, v in enumerate(values):
            ax.text(x_cols[i], y, v, ha="center", va="center", fontsize=FONT, weight="bold" if i == col else "normal")
        ax.axhline(h - r * dy, color="#cccccc", lw=1.2)
    return fig


@figure("architecture_table", description="The loaded model beside the course's models (layers, widths, heads, "
        "norm, positions, MLP, parameters): the loaded model from its config, the others from published configs")
def architecture_table(ctx: FigureContext) -> FigureOutput:
    archs = _architectures(ctx)
    return FigureOutput(lambda: _draw_table(archs, ctx.model_name), results={
        "models": {name: {**a.to_dict(), "n_params_millions": round(a.n_params / 1e6, 1)} for name, a in archs.items()},
    })


# ---- mlp_gated ---------------------------------------------------------------------------------------


def _draw_mlps(plain: Architecture, plain_name: str, gated: Architecture, gated_name: str):
    fig, ax = _canvas()
    # columns shared by both rows: input, first matrices, activation, (gate), last matrix, output
    x_in, x_w1, x_act, x_mul, x_w2, x_out = 10, 200, 470, 640, 740, 1020
    w_in, w_w, w_act, w_out = 150, 225, 120, 170

    def matrix(x, y, name, rows, cols, color):
        _box(ax, x, y - 40, w_w, 80, f"{name}\n{num(rows, ',d')} → {num(cols, ',d')}", color)

    # GPT-2: x -> W_in -> GELU -> W_out
    y = 420
    ax.text(x_in, 505, tr("{model}: MLP", model=MODELS[plain_name].display_name), ha="left", va="center",
            fontsize=24, weight="bold")
    _box(ax, x_in, y - 30, w_in, 60, f"$x$ ({num(plain.d_model, ',d')})", LIGHT_GREY)
    matrix(x_w1, y, "$W_{in}$", plain.d_model, plain.d_mlp, LIGHT_BLUE)
    _box(ax, x_act, y - 30, w_act, 60, _activation(plain), LIGHT_ORANGE)
    matrix(x_w2, y, "$W_{out}$", plain.d_mlp, plain.d_model, LIGHT_BLUE)
    _box(ax, x_out, y - 30, w_out, 60, tr("output"), LIGHT_GREY)
    for a, b in ((x_in + w_in, x_w1), (x_w1 + w_w, x_act), (x_act + w_act, x_w2), (x_w2 + w_w, x_out)):
        _arrow(ax, (a, y), (b, y))
    ax.text(x_in, 335, tr("$W_{{out}}\\,\\mathrm{{{act}}}(W_{{in}}\\,x)$    2 matrices: {p} parameters per layer",
                          act=_activation(plain), p=_params_millions(_mlp_params(plain))),
            ha="left", va="center", fontsize=24)
    ax.axhline(295, xmin=0.005, xmax=0.995, color="#bbbbbb", lw=1.5)
    # SmolLM2 / Llama: x -> (SiLU(W_gate x)) * (W_up x) -> W_down
    y_gate, y_up = 205, 105
    y_mid = (y_gate + y_up) / 2
    ax.text(x_in, 265, tr("{model}: gated MLP ({kind})", model=MODELS[gated_name].display_name, kind=_mlp_kind(gated)), ha="left",
            va="center", fontsize=24, weight="bold")
    _box(ax, x_in, y_mid - 30, w_in, 60, f"$x$ ({num(gated.d_model, ',d')})", LIGHT_GREY)
    matrix(x_w1, y_gate, "$W_{gate}$", gated.d_model, gated.d_mlp, LIGHT_BLUE)
    matrix(x_w1, y_up, "$W_{up}$", gated.d_model, gated.d_mlp, LIGHT_BLUE)
    _box(ax, x_act, y_gate - 30, w_act, 60, _activation(gated), LIGHT_ORANGE)
    _hadamard(ax, x_mul + 17, y_mid)
    matrix(x_w2, y_mid, "$W_{down}$", gated.d_mlp, gated.d_model, LIGHT_BLUE)
    _box(ax, x_out, y_mid - 30, w_out, 60, tr("output"), LIGHT_GREY)
    _arrow(ax, (x_in + w_in, y_mid + 10), (x_w1, y_gate), rad=-0.15)
    _arrow(ax, (x_in + w_in, y_mid - 10), (x_w1, y_up), rad=0.15)
    _arrow(ax, (x_w1 + w_w, y_gate), (x_act, y_gate))
    _arrow(ax, (x_act + w_act, y_gate), (x_mul + 17, y_mid + 17), rad=-0.25)
    _arrow(ax, (x_w1 + w_w, y_up), (x_mul + 17, y_mid - 17), rad=0.2)
    _arrow(ax, (x_mul + 34, y_mid), (x_w2, y_mid))
    _arrow(ax, (x_w2 + w_w, y_mid), (x_out, y_mid))
    ax.text(x_in, 25, tr("$W_{{down}}\\,(\\mathrm{{{act}}}(W_{{gate}}\\,x) \\odot W_{{up}}\\,x)$    3 matrices: {p} "
                         "parameters per layer", act=_activation(gated), p=_params_millions(_mlp_params(gated))),
            ha="left", va="center", fontsize=24)
    return fig


@figure("mlp_gated", description="A plain MLP (GPT-2's), W_out GELU(W_in x), beside a gated MLP (SwiGLU, the Llama "
        "family's), W_down (SiLU(W_gate x) * W_up x), one of them the loaded model's, with sizes from the configs")
def mlp_gated(ctx: FigureContext) -> FigureOutput:
    archs = _architectures(ctx)  # the loaded model first: it is one of the two drawn
    plain_name = next(name for name, a in archs.items() if not a.gated_mlp)
    gated_name = next(name for name, a in archs.items() if a.gated_mlp)
    return FigureOutput(lambda: _draw_mlps(archs[plain_name], plain_name, archs[gated_name], gated_name), results={
        "plain": MODELS[plain_name].display_name,
        "gated": MODELS[gated_name].display_name,
        "models": {name: {"d_model": a.d_model, "d_mlp": a.d_mlp, "activation": _activation(a),
                          "gated": a.gated_mlp, "matrices": 3 if a.gated_mlp else 2,
                          "mlp_params_per_layer": _mlp_params(a),
                          "mlp_params_per_layer_millions": round(_mlp_params(a) / 1e6, 2),
                          "d_mlp_over_d_model": round(a.d_mlp / a.d_model, 3)}
                   for name, a in archs.items()},
    })
