"""transformer_decoder.png: the decoder-only architecture, drawn from the model's actual config.

Left: the data flow of the loaded model (embedding, residual stream, L blocks of norm -> attention
and norm -> MLP each added back to the stream, final norm, unembedding) labelled with its real
sizes. Right: the same facts for the three registered models side by side; the loaded model's
column is read from the model in memory, the others from their published configs (no download).
"""

from __future__ import annotations

from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from mechdemo.architecture import Architecture, architecture_of
from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.models import MODELS


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


ACTIVATIONS = {"silu": "SiLU", "gelu_new": "GELU", "gelu": "GELU", "relu": "ReLU"}


def _mlp_kind(a: Architecture) -> str:
    act = ACTIVATIONS.get(a.activation, a.activation)
    return f"gated {act}" if a.gated_mlp else act


def _attention_label(a: Architecture) -> str:
    if a.is_gqa:
        title = "Grouped-query attention"
        heads = f"{a.n_heads} query heads share {a.n_kv_heads} K/V heads, d_head = {a.d_head}"
    else:
        title = "Multi-head attention"
        heads = f"{a.n_heads} heads, d_head = {a.d_head}"
    pos = f"rotary positions (RoPE, θ = {a.rope_theta:,.0f}) on Q and K" if a.positions == "rotary" else (
        "positions already in the residual stream"
    )
    return f"{title}\n{heads}\n{pos}"


def _mlp_label(a: Architecture) -> str:
    return f"MLP ({_mlp_kind(a)})\n{a.d_model} → {_fmt_int(a.d_mlp)} → {a.d_model}"


def _header(name: str) -> str:
    return name if len(name) <= 14 else "\n".join(name.rsplit("-", 1))


def draw_architecture(ax, a: Architecture) -> None:
    """Draw the decoder-only data flow of ``a`` on ``ax`` (axis units: 0..10 wide, 0..13 high)."""
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 13.2)
    ax.axis("off")
    x_stream, x_box, w_box = 1.1, 2.3, 7.4

    def box(y, h, text, color, fontsize=14, weight="normal"):
        ax.add_patch(
            FancyBboxPatch(
                (x_box, y), w_box, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                fc=color, ec="black", lw=1.5, alpha=0.9,
            )
        )
        ax.text(x_box + w_box / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight)

    def arrow(p, q, **kw):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=16, lw=1.8, color="black", **kw))

    def plus(y):
        ax.add_patch(Circle((x_stream, y), 0.22, fc="white", ec="black", lw=1.8, zorder=5))
        ax.text(x_stream, y, "+", ha="center", va="center", fontsize=18, weight="bold", zorder=6)

    # input side
    box(0.1, 0.8, f"tokens → ids   (BPE vocabulary {_fmt_int(a.d_vocab)})", "#eeeeee")
    emb = f"Embedding $W_E$  [{_fmt_int(a.d_vocab)} × {a.d_model}]"
    if a.positions == "learned":
        emb += f"\n+ learned positions $W_{{pos}}$  [{_fmt_int(a.n_ctx)} × {a.d_model}]"
    box(1.3, 1.0, emb, "#cfe3f3")
    arrow((x_box + w_box / 2, 0.9), (x_box + w_box / 2, 1.3))
    # the residual stream
    ax.add_patch(Rectangle((x_stream - 0.08, 2.3), 0.16, 8.2, fc=style.BLUE, ec="none", alpha=0.35))
    arrow((x_box, 1.8), (x_stream, 2.3), connectionstyle="arc3,rad=0.3")
    ax.text(0.35, 6.4, f"residual stream  (d_model = {a.d_model})", rotation=90, ha="center", va="center",
            fontsize=14, color=style.BLUE, weight="bold")
    # one block, repeated n_layers times
    ax.add_patch(
        FancyBboxPatch((x_stream - 0.55, 2.75), 9.2, 6.7, boxstyle="round,pad=0.02,rounding_size=0.2",
                       fc="none", ec=style.GREY, lw=2, ls="--")
    )
    ax.text(9.7, 9.2, f"× {a.n_layers} layers", ha="right", va="top", fontsize=16, weight="bold", color=style.GREY)
    norm = a.norm
    for y_norm, y_comp, h_comp, y_plus, label, color in (
        (2.95, 3.85, 1.45, 5.6, _attention_label(a), "#fbe3c0"),
        (6.1, 7.0, 1.1, 8.6, _mlp_label(a), "#cdeee3"),
    ):
        box(y_norm, 0.6, norm, "#eeeeee", fontsize=13)
        arrow((x_stream, y_norm + 0.3), (x_box, y_norm + 0.3))
        box(y_comp, h_comp, label, color, fontsize=13)
        arrow((x_box + w_box / 2, y_norm + 0.6), (x_box + w_box / 2, y_comp))
        arrow((x_box, y_comp + h_comp - 0.3), (x_stream + 0.22, y_plus), connectionstyle="arc3,rad=0.25")
        plus(y_plus)
    # output side
    box(10.6, 0.6, f"final {norm}", "#eeeeee", fontsize=13)
    arrow((x_stream, 10.5), (x_box, 10.9))
    tied = " (tied: $W_U = W_E^T$)" if a.tied_embeddings else ""
    box(11.45, 0.7, f"Unembedding $W_U$  [{a.d_model} × {_fmt_int(a.d_vocab)}]{tied}", "#cfe3f3")
    arrow((x_box + w_box / 2, 11.2), (x_box + w_box / 2, 11.45))
    ax.text(x_box + w_box / 2, 12.65, "logits → softmax → next token", ha="center", va="center", fontsize=14)
    arrow((x_box + w_box / 2, 12.15), (x_box + w_box / 2, 12.45))


def comparison_rows(archs: dict[str, Architecture]) -> list[tuple[str, list[str]]]:
    def col(f):
        return [f(a) for a in archs.values()]

    return [
        ("Layers", col(lambda a: str(a.n_layers))),
        ("d_model", col(lambda a: _fmt_int(a.d_model))),
        ("Query / KV heads", col(lambda a: f"{a.n_heads} / {a.n_kv_heads}")),
        ("d_head", col(lambda a: str(a.d_head))),
        ("d_mlp", col(lambda a: _fmt_int(a.d_mlp))),
        ("Vocabulary", col(lambda a: _fmt_int(a.d_vocab))),
        ("Context", col(lambda a: _fmt_int(a.n_ctx))),
        ("Norm", col(lambda a: a.norm)),
        ("Positions", col(lambda a: "learned" if a.positions == "learned" else "RoPE")),
        ("MLP", col(_mlp_kind)),
        ("Tied W_E / W_U", col(lambda a: "yes" if a.tied_embeddings else "no")),
        ("Parameters", col(lambda a: _fmt_params(a.n_params))),
    ]


def draw_comparison(ax, archs: dict[str, Architecture], highlight: str) -> None:
    ax.axis("off")
    names = list(archs)
    rows = comparison_rows(archs)
    n_rows = len(rows) + 1
    x_label, x_cols = 0.0, [0.40 + 0.22 * i for i in range(len(names))]
    dy = 1.0 / n_rows
    col = names.index(highlight)
    ax.add_patch(Rectangle((x_cols[col] - 0.11, 0), 0.22, 1.0, fc=style.ORANGE, alpha=0.15, ec="none"))
    for i, name in enumerate(names):
        ax.text(x_cols[i], 1 - dy / 2, _header(name), ha="center", va="center", weight="bold", fontsize=14)
    for r, (label, values) in enumerate(rows, start=1):
        y = 1 - (r + 0.5) * dy
        ax.text(x_label, y, label, ha="left", va="center", fontsize=14, color=style.GREY)
        for i, v in enumerate(values):
            ax.text(x_cols[i], y, v, ha="center", va="center", fontsize=14)
        ax.axhline(1 - r * dy, color="#dddddd", lw=1)
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1)


@figure(
    "transformer_decoder",
    description="Decoder-only transformer drawn from the loaded model's config, beside the other registered models",
)
def transformer_decoder(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    arch = architecture_of(model.original_model.config)
    archs = {
        spec.display_name: (arch if name == ctx.model_name else spec.architecture)
        for name, spec in MODELS.items()
    }
    fig = plt.figure(figsize=(16, 9))
    ax_arch = fig.add_axes((0.0, 0.0, 0.5, 0.9))
    ax_table = fig.add_axes((0.53, 0.08, 0.46, 0.78))
    draw_architecture(ax_arch, arch)
    draw_comparison(ax_table, archs, highlight=ctx.model_label)
    style.suptitle(fig, "Decoder-only transformer", ctx.model_label,
                   subtitle=f"{_fmt_params(arch.n_params)} parameters. Sizes read from the loaded model's config; "
                            "the other columns from the published configs.")
    return FigureOutput(fig, results={"architecture": arch.to_dict()})
