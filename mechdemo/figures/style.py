"""One style for every figure: readable from the back of a lecture room.

16:9 canvases (the deck's aspect ratio), large fonts, thick lines, a colour-blind-safe palette,
and a title helper that always names the model and the metric.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import matplotlib as mpl

DPI = 150
WIDE = (13.33, 7.5)  # inches: 16:9, 2000 x 1125 px at DPI

# Okabe-Ito palette (colour-blind safe)
BLUE, ORANGE, GREEN, RED, PURPLE, SKY, YELLOW, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#666666",
)
PALETTE = [BLUE, ORANGE, GREEN, RED, PURPLE, SKY, YELLOW, GREY]

RC = {
    "figure.figsize": WIDE,
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.15,
    "font.family": "DejaVu Sans",
    "font.size": 16,
    "axes.titlesize": 18,
    "axes.titleweight": "bold",
    "axes.labelsize": 16,
    "xtick.labelsize": 14,
    "ytick.labelsize": 14,
    "legend.fontsize": 14,
    "figure.titlesize": 22,
    "figure.titleweight": "bold",
    "lines.linewidth": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "image.cmap": "viridis",
    "svg.hashsalt": "mechdemo",
}


@contextlib.contextmanager
def projector_style() -> Iterator[None]:
    with mpl.rc_context(RC):
        yield


def suptitle(fig, title: str, model_label: str | None, subtitle: str | None = None) -> None:
    """Title naming what is shown and on which model, e.g. 'Induction scores — SmolLM2-135M'."""
    text = title if model_label is None else f"{title} — {model_label}"
    fig.suptitle(text, x=0.02, ha="left")
    if subtitle:
        fig.text(0.02, 0.935, subtitle, ha="left", va="top", fontsize=14, color=GREY)


def layer_head_heatmap(
    ax,
    scores,
    title: str,
    *,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    mark: list[tuple[int, int]] | None = None,
):
    """Heatmap of a [n_layers, n_heads] score (layers down, heads across); ``mark`` boxes heads."""
    from matplotlib.patches import Rectangle

    data = scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores
    n_layers, n_heads = data.shape
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, n_heads, max(1, n_heads // 8)))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 10)))
    for layer, head in mark or []:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=RED, lw=2.5))
    return im


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
