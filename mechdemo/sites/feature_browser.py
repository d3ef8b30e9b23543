"""The SAE feature browser: every feature's page, as a static site that opens from ``file://``.

What it shows is computed by :mod:`mechdemo.sae.feature_pages` (density, histogram, top and quantile
contexts, logit effect, nearest features); this module writes the pages: ``<lang>/index.html`` and
``<lang>/feature.html`` per language, the data as ``.js`` files, and a small hand-written script and
style sheet (``mechdemo/sites/assets``), through the generic writer of :mod:`mechdemo.sites.static`.

**Why written here.** SAEDashboard (PyPI ``sae-dashboard`` 0.8.0) pins ``transformer-lens<3`` and
``transformers<4.57``, so it cannot be installed beside this project's stack, and its pages load
their JavaScript from a CDN; Neuronpedia needs its server and the network. A feature's details come
in chunks of :data:`mechdemo.sae.feature_pages.CHUNK` features, loaded when a page shows one of them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from jaxtyping import Float
from torch import Tensor

from mechdemo.data import ActivationDataset
from mechdemo.sae.feature_pages import FeaturePagesConfig, feature_pages
from mechdemo.sites.static import ASSETS, check_site_out, js_assign, redirect_page, written_site

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge

PAGES = ("index.html", "feature.html")
MARKER = "sae_browser.json"  # the site's provenance; also how a folder is known to be a browser we wrote
WHAT = "feature browser"


def ui_strings() -> list[str]:
    """Every English UI string of the pages (listed in ``browser.js`` between UI_STRINGS_BEGIN and
    UI_STRINGS_END): the keys of the translation table the caller fills in per language."""
    source = (ASSETS / "browser.js").read_text(encoding="utf-8")
    block = re.search(r"// UI_STRINGS_BEGIN\n(.*?)// UI_STRINGS_END", source, re.S)
    if not block:
        raise RuntimeError("browser.js has no UI_STRINGS_BEGIN ... UI_STRINGS_END block")
    return [line[3:] for line in block.group(1).splitlines() if line.startswith("// ")]


def check_browser_out(out: str | Path, overwrite: bool = False) -> Path:
    """:func:`mechdemo.sites.static.check_site_out` for a feature browser."""
    return check_site_out(out, MARKER, WHAT, overwrite)


def write_browser(
    data: dict[str, Any], out: str | Path, ui: dict[str, dict[str, str]], provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write the site of :func:`mechdemo.sae.feature_pages.feature_pages`'s ``data`` into ``out``; return its
    files (relative).

    ``ui`` maps each language to its translation of :func:`ui_strings` (``{"es": {...}, "en": {...}}``):
    pages ``<lang>/index.html`` and ``<lang>/feature.html`` per language, one copy of the data and the
    script; written whole or not at all (:func:`mechdemo.sites.static.written_site`).
    """
    import html

    out = check_browser_out(out, overwrite)
    meta = data["meta"]
    with written_site(out, MARKER, provenance or {}) as (put, files):
        template = (ASSETS / "page.html").read_text(encoding="utf-8")
        for lang, table in ui.items():
            for page in PAGES:  # one template: the script draws the page its <body data-page> names
                put(f"{lang}/{page}", template.replace("{{LANG}}", lang).replace("{{PAGE}}", page.removesuffix(".html"))
                    .replace("{{TITLE}}", html.escape(meta["title"]))
                    .replace("{{UI_JSON}}", json.dumps(table, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")))
        for asset in ("browser.js", "browser.css"):
            put(f"assets/{asset}", (ASSETS / asset).read_text(encoding="utf-8"))
        put("data/meta.js", js_assign("SAE_META", {**meta, "provenance": provenance or {}}))  # the pages' footer
        put("data/tokens.js", js_assign("SAE_TOKENS", data["tokens"]))
        details = data["details"]
        for c, start in enumerate(range(0, len(details), meta["chunk_size"])):
            chunk = json.dumps(details[start : start + meta["chunk_size"]], ensure_ascii=False, separators=(",", ":"))
            put(f"data/features-{c:03d}.js", f"(window.SAE_CHUNKS = window.SAE_CHUNKS || {{}})[{c}] = {chunk};\n")
        put("index.html", redirect_page(meta["title"], list(ui)))
    return files


def build_browser(
    sae: "SAE | TrainingSAE", dataset: ActivationDataset, model: "TransformerBridge", out: str | Path,
    ui: dict[str, dict[str, str]], cfg: FeaturePagesConfig = FeaturePagesConfig(), provenance: dict | None = None,
    overwrite: bool = False, progress: bool = True,
) -> list[str]:
    """:func:`mechdemo.sae.feature_pages.feature_pages` then :func:`write_browser` (``out`` is checked first:
    nothing is computed for a site that could not be written)."""
    check_browser_out(out, overwrite)
    data = feature_pages(sae, dataset, model, cfg, progress=progress)
    prov = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": cfg.__dict__,
            "model": data["meta"]["model"], "layer": data["meta"]["layer"], "dataset": str(dataset.path),
            **(provenance or {})}
    return write_browser(data, out, ui, prov, overwrite=overwrite)


def highlight_html(tokens: Sequence[str], acts: Float[Tensor, "pos d_sae"], features: Sequence[int] | None = None,
                   n: int = 3) -> str:
    """Inline HTML (for a notebook) of ``tokens`` coloured by each of ``features``' activations, one line
    per feature (default: the ``n`` features with the largest activation on the text). Hovering a
    token shows its activation and the strongest features there."""
    import html

    if features is None:
        features = [int(f) for f in acts.max(0).values.argsort(descending=True)[:n] if acts[:, f].max() > 0]
    palette = ["255,127,14", "31,119,180", "44,160,44", "148,103,189", "214,39,40"]
    top_here = [[int(f) for f in row.argsort(descending=True)[:3] if row[f] > 0] for row in acts]
    lines = []
    for i, f in enumerate(features):
        col, peak = palette[i % len(palette)], float(acts[:, f].max())
        spans = []
        for j, tok in enumerate(tokens):
            a = float(acts[j, f])
            alpha = a / peak if peak > 0 else 0.0
            tip = f"feature {f}: {a:.3g}" + ("; strongest here: " + ", ".join(map(str, top_here[j])) if top_here[j] else "")
            text = html.escape(tok.replace("\n", "⏎"))
            spans.append(f'<span title="{html.escape(tip)}" style="background:rgba({col},{alpha:.2f});'
                         f'white-space:pre">{text}</span>')
        lines.append(f'<div style="font-family:monospace;margin:4px 0"><b>feature {f}</b> (max {peak:.3g}): '
                     + "".join(spans) + "</div>")
    if not lines:
        lines.append("<div>no feature fires on this text</div>")
    return "\n".join(lines)
