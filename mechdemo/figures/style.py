"""One style for every figure: made for the slide it sits on, readable from the back of the room.

**Geometry.** A figure slide (``theme.css``, ``section.figure``) shows a one-line takeaway above a
figure box of :data:`FIGURE_BOX_PX` (1200 x 520 px on the 1280 x 720 slide) and a one-line caption
below. A figure is drawn at the size it is shown, :data:`SLIDE` inches at 72 px per inch, so that
**1 pt of font is 1 px on the slide**: the 18 px floor for text is an 18 pt floor here, and the
registry refuses a figure with smaller text (:data:`MIN_TEXT_PX`, checked on every drawn text,
tick labels included). PNGs are written at :data:`DPI` = 2 px per slide px (sharp on a projector
and on HiDPI screens), without ``bbox_inches="tight"``, which would change the aspect ratio the
slide reserves. A figure for a narrower box (two columns) passes ``figsize``; the registry records
its size and its smallest font in the manifest, and the deck's render test checks both.

Large fonts, thick lines, a colour-blind-safe palette (Okabe-Ito).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import matplotlib as mpl

from mechdemo.figures.i18n import tr

SLIDE_PX = (1280, 720)  # Marp's 16:9 slide
FIGURE_BOX_PX = (1200, 520)  # the figure's box on a figure slide (theme.css section.figure img)
PX_PER_INCH = 72  # drawn at the size shown: 1 pt = 1 px on the slide
SLIDE = (FIGURE_BOX_PX[0] / PX_PER_INCH, FIGURE_BOX_PX[1] / PX_PER_INCH)  # 16.67 x 7.22 in
DPI = 2 * PX_PER_INCH  # 2400 x 1040 px PNGs
MIN_TEXT_PX = 18  # smallest text on the 1280 x 720 slide

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
    "figure.figsize": SLIDE,
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.bbox": "standard",  # the size drawn is the size saved: the slide's aspect ratio
    "figure.constrained_layout.use": True,
    "font.family": "DejaVu Sans",
    "font.size": 20,
    "axes.titlesize": 24,
    "axes.titleweight": "bold",
    "axes.labelsize": 22,
    "xtick.labelsize": 20,
    "ytick.labelsize": 20,
    "legend.fontsize": 20,
    "legend.title_fontsize": 20,
    "figure.titlesize": 26,
    "figure.titleweight": "bold",
    "lines.linewidth": 3,
    "axes.linewidth": 1.5,
    "xtick.major.size": 6,
    "ytick.major.size": 6,
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


def shown_px_per_inch(size_in: tuple[float, float]) -> float:
    """CSS px per inch of a figure of ``size_in`` on its slide: scaled down to fit the figure box,
    never up beyond its natural size (1 PNG px = 1 CSS px)."""
    w, h = size_in
    return min(FIGURE_BOX_PX[0] / w, FIGURE_BOX_PX[1] / h, DPI)


def smallest_text(fig) -> tuple[float, str]:
    """(font size in pt, text) of the smallest visible text ``fig`` draws, tick labels included."""
    from matplotlib.text import Text

    fig.canvas.draw()  # ticks and their labels exist only once drawn
    sizes = [(t.get_fontsize(), t.get_text()) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()]
    return min(sizes) if sizes else (float("inf"), "")


def suptitle(fig, title: str, model_label: str | None, subtitle: str | None = None) -> None:
    """Title naming what is shown and on which model, e.g. 'Induction scores — SmolLM2-135M'."""
    text = title if model_label is None else f"{title} — {model_label}"
    fig.suptitle(text, x=0.02, ha="left")
    if subtitle:
        fig.text(0.02, 0.935, subtitle, ha="left", va="top", fontsize=20, color=GREY)


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
    ax.set_xlabel(tr("head"))
    ax.set_ylabel(tr("layer"))
    ax.set_xticks(range(0, n_heads, max(1, n_heads // 8)))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 10)))
    for layer, head in mark or []:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=RED, lw=2.5))
    return im


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def slide_canvas():
    """A figure of the slide's figure box with one axes over all of it, in slide pixels (x 0..1200,
    y 0..520 from the bottom), no frame: for diagrams placed by hand. Returns ``(fig, ax)``."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=SLIDE, layout="none")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, FIGURE_BOX_PX[0])
    ax.set_ylim(0, FIGURE_BOX_PX[1])
    ax.axis("off")
    return fig, ax


def note(ax, text: str) -> None:
    """A visible note across ``ax``: what a figure says when its result is missing or degenerate on
    this model (no circuit found, no head of a kind), instead of an empty or misleading picture."""
    import textwrap

    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 48)), transform=ax.transAxes, ha="center", va="center",
            fontsize=24, color=RED, zorder=10,
            bbox={"boxstyle": "round,pad=0.6", "fc": "white", "ec": RED, "lw": 2.5, "alpha": 0.95})
