"""The figures' one translation table: every figure is drawn in Spanish and in English.

A figure function computes its results once and returns a ``draw()`` callable; the registry calls
it once per language in :data:`LANGUAGES`, inside :func:`language`. Plotting code writes its text
in English through :func:`tr` (the English string is the key) and formats numbers with :func:`num`
(decimal comma and thousands point in Spanish, as the Spanish deck formats its numbers)::

    ax.set_ylabel(tr("cross-entropy loss (nats)"))
    ax.text(x, y, tr("first half: {loss} nats", loss=num(mean_first, ".2f")))

A string missing from the table stops the figure with an error naming it (the small-scale run of
``make test`` draws every figure in every language, so a missing translation never reaches a
slide). Technical terms stay in English in Spanish too, as is usual in the field (*head*,
*logit*, *residual stream*, *feature*, *SAE* ...). Tick labels are localised by the registry
(:func:`localize_ticks`).

Why a dictionary and not gettext: the deck has two languages and a few hundred short strings; a
Python table keeps them next to the code, reviewable in one file, with no build step.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from mechdemo.errors import MechdemoError

LANGUAGES = ("es", "en")
SOURCE = "en"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("mechdemo_figure_language", default=SOURCE)


class MissingTranslation(MechdemoError):
    pass


@contextlib.contextmanager
def language(lang: str) -> Iterator[None]:
    """Draw in ``lang`` (one of :data:`LANGUAGES`) inside the block."""
    if lang not in LANGUAGES:
        raise MechdemoError(f"unknown figure language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    token = _current.set(lang)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def tr(text: str, **values: object) -> str:
    """``text`` (English, the key) in the current language, with ``{name}`` fields filled in.

    Pass numbers already formatted with :func:`num`, so that they follow the language too.
    """
    lang = _current.get()
    if lang == SOURCE:
        out = text
    else:
        try:
            out = TABLE[lang][text]
        except KeyError:
            raise MissingTranslation(
                f"no {lang!r} translation of figure text {text!r}: add it to mechdemo/figures/i18n.py"
            ) from None
    return out.format(**values) if values else out


def num(value: float, spec: str = "") -> str:
    """``format(value, spec)`` in the current language: ``num(0.5, ".2f")`` is '0,50' in Spanish.

    Thousands separators (``spec`` with ``,``) become points in Spanish, as ``Intl.NumberFormat``
    writes them in the Spanish deck (49.152).
    """
    text = format(value, spec)
    return num_text(text) if _current.get() == "es" else text


def localize_ticks(fig) -> None:
    """Decimal commas on every axis of ``fig`` when drawing in Spanish (after the plotting code)."""
    if _current.get() != "es":
        return
    from matplotlib.ticker import Formatter

    class Comma(Formatter):
        def __init__(self, inner):
            self.inner = inner

        def set_axis(self, axis):
            super().set_axis(axis)
            self.inner.set_axis(axis)

        def set_locs(self, locs):
            self.inner.set_locs(locs)

        def format_ticks(self, values):
            return [num_text(s) for s in self.inner.format_ticks(values)]

        def __call__(self, x, pos=None):
            return num_text(self.inner(x, pos))

        def get_offset(self):
            return num_text(self.inner.get_offset())

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for major, get, set_ in ((True, axis.get_major_formatter, axis.set_major_formatter),
                                     (False, axis.get_minor_formatter, axis.set_minor_formatter)):
                inner = get()
                if not isinstance(inner, Comma):
                    set_(Comma(inner))


def num_text(text: str) -> str:
    """A number already written in English notation, in Spanish notation ('1,234.5' -> '1.234,5')."""
    return text.replace(",", "\0").replace(".", ",").replace("\0", ".")


# ---- the table: English (key) -> Spanish ------------------------------------------------------
# One section per figure module, in the order of the deck. Keep technical terms in English.

ES: dict[str, str] = {
    # ---- shared (style helpers, several figures)
    "head": "head",
    "layer": "capa",
    "{model}": "{model}",
    # ---- architecture
    # ---- attention (head scores, attention patterns)
    # ---- induction
    "loss per token": "pérdida por token",
    "position of the predicted token": "posición del token predicho",
    "cross-entropy loss (nats)": "cross-entropy loss (nats)",
    "mean over {n} sequences": "media de {n} secuencias",
    "25–75 % of sequences": "25–75 % de las secuencias",
    "uniform guess ln({vocab}) = {value}": "predicción uniforme ln({vocab}) = {value}",
    "first R: {loss} nats": "primera R: {loss} nats",
    "repeated R: {loss} nats": "R repetida: {loss} nats",
    "repeat starts": "empieza la repetición",
    "induction score": "induction score",
    # ---- circuits (QK / OV)
    # ---- ioi
    # ---- superposition
    # ---- sae
    # ---- mlp
    # ---- generation
}

TABLE: dict[str, dict[str, str]] = {"es": ES}
