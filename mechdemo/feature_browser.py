"""An offline feature browser for a trained SAE: every feature explorable from ``file://``.

What practitioners read to understand an SAE feature is its *feature page*, after Anthropic's
visualiser (Bricken et al. 2023, "Towards Monosemanticity"; Templeton et al. 2024, "Scaling
Monosemanticity"), the SAE dashboards (sae_vis, SAEDashboard) and Neuronpedia:

* **activation density**: the fraction of tokens on which the feature fires, and a histogram of its
  non-zero activations (a feature that fires on half the tokens is not a concept; one that never
  fires is dead);
* **top-activating contexts**: the text around its largest activations, every token coloured by the
  feature's activation there;
* **contexts at lower quantiles**: a random sample of contexts from each quarter of its non-zero
  activations. The top examples alone overstate how specific a feature is (Bricken et al. call
  this "interpretability illusion" risk): what it does at typical strengths is often broader;
* **logit effect**: the decoder direction ``W_dec[f]``, scaled by the final norm's weight ``γ`` and
  read through the unembedding, ``(W_dec[f] ⊙ γ) · W_U``: the tokens it pushes up and down directly
  (ignoring the later layers and the norm's division, as the feature pages do);
* **nearest features**: the other features whose decoder directions have the largest cosine with
  this one (feature splitting and near-duplicates show up here).

**Computed in one pass.** The activation dataset already holds the MLP output of every held-out
token, so nothing here runs the model: the SAE encodes the held-out shard in batches and every
non-zero activation is kept as a ``(row, feature, value)`` triple (L0 per token, so about 160,000
triples for a TopK k = 32 SAE on 5,000 tokens). Sorted by feature and then by value, the triples
give each feature's density, histogram, exact top-k, quantile samples, and its activation at every
token of the contexts shown. The model contributes weights only (unembedding and final norm).

**Why written here.** SAEDashboard (PyPI ``sae-dashboard`` 0.8.0) pins ``transformer-lens<3`` and
``transformers<4.57``, so it cannot be installed beside this project's stack, and its pages load
their JavaScript from a CDN; Neuronpedia needs its server and the network. The site this module
writes is static: HTML pages, a small hand-written script (``mechdemo/browser_assets``), and the
data as ``.js`` files that assign globals, loaded with ``<script>`` tags (a page opened from
``file://`` may not ``fetch`` files next to it, but it may load scripts). A feature's details come
in chunks of :data:`CHUNK` features, loaded when a page shows one of them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo import __version__
from mechdemo.datasets import ActivationDataset, from_uint16
from mechdemo.files import check_writable, folder_written_atomically
from mechdemo.errors import MechdemoError
from mechdemo.interventions import parse_site
from mechdemo.sae import DENSE_THRESHOLD, hook_of, logit_effects, split_shards

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge

ASSETS = Path(__file__).parent / "browser_assets"
PAGES = ("index.html", "feature.html")
MARKER = "sae_browser.json"  # the site's provenance; also how a folder is known to be a browser we wrote
CHUNK = 64  # features per data file
N_CONTEXTS = 20  # top-activating contexts per feature
BANDS = ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))  # quantile bands of the non-zero activations
PER_BAND = 4  # contexts sampled per band
BEFORE, AFTER = 12, 4  # tokens shown before and after the activating one
HIST_BINS, SPARK_BINS = 30, 12
N_LOGITS, N_NEIGHBOURS, N_TOP_TOKENS = 10, 8, 3


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (the site's numbers: compact, exact enough to read)."""
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------------------------------------
# The one pass over the held-out activations


@torch.no_grad()
def nonzero_activations(
    sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], batch_size: int = 2048, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every non-zero feature activation on ``x``: ``(rows, features, values)``, sorted by feature,
    then by value (descending), then by row. One batched encoding pass; nothing dense is kept."""
    from tqdm.auto import tqdm

    rows, feats, values = [], [], []
    for start in tqdm(range(0, len(x), batch_size), desc="encoding held-out tokens", unit="batch",
                      disable=not progress):
        acts = sae.encode(x[start : start + batch_size].to(sae.W_dec.dtype))
        r, f = torch.nonzero(acts > 0, as_tuple=True)
        rows.append(r.numpy().astype(np.int64) + start)
        feats.append(f.numpy().astype(np.int64))
        values.append(acts[r, f].float().numpy())
    rows, feats, values = (np.concatenate(a) if a else np.zeros(0) for a in (rows, feats, values))
    order = np.lexsort((rows, -values, feats))
    return rows[order], feats[order], values[order]


def run_bounds(doc: Int[np.ndarray, " n"], pos: Int[np.ndarray, " n"]) -> tuple[np.ndarray, np.ndarray]:
    """For every row, the first and last row of its run: consecutive positions of one document
    (a context never crosses into another document or over a gap)."""
    n = len(doc)
    breaks = np.flatnonzero((doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks - 1, [n - 1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.concatenate([starts, [n]])))
    return starts[run], ends[run]


@torch.no_grad()
def decoder_neighbours(
    sae: "SAE | TrainingSAE", k: int = N_NEIGHBOURS, among: int | None = None, batch: int = 1024,
) -> tuple[Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"]]:
    """Each feature's ``k`` nearest features by cosine of decoder directions (itself excluded),
    among the first ``among`` features (default all)."""
    W = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=1)[:among]
    k = min(k, len(W) - 1)
    ids, cos = [], []
    for start in range(0, len(W), batch):
        sim = W[start : start + batch] @ W.T  # [b, d_sae]
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -float("inf")
        top = sim.topk(k, dim=1)
        ids.append(top.indices)
        cos.append(top.values)
    return torch.cat(ids), torch.cat(cos)


@dataclass(frozen=True)
class BrowserConfig:
    """What the site shows (every field is recorded in its provenance)."""

    n_contexts: int = N_CONTEXTS
    per_band: int = PER_BAND
    before: int = BEFORE
    after: int = AFTER
    features: int | None = None  # only the first N features (None: all)
    seed: int = 0  # the quantile samples

    def __post_init__(self):
        if self.n_contexts < 1 or self.per_band < 0 or self.before < 0 or self.after < 0:
            raise MechdemoError("contexts must be at least 1; per-band samples and the window sizes not negative")
        if self.features is not None and self.features < 1:
            raise MechdemoError("--features must be 'all' or a positive number")


def _band_samples(values: np.ndarray, n_top: int, per_band: int, rng: np.random.Generator) -> list[tuple]:
    """Indices into one feature's descending ``values`` sampled from each quantile band of
    :data:`BANDS` (the top contexts excluded): ``[(q0, q1, lo, hi, indices)]``, empty bands left out."""
    m = len(values)
    out = []
    for q0, q1 in BANDS:
        # ascending ranks [q0 m, q1 m) are descending indices (m - q1 m, m - q0 m]
        first, last = m - int(np.floor(q1 * m)), m - int(np.floor(q0 * m))
        candidates = np.arange(max(first, n_top), last)
        if len(candidates) == 0 or per_band == 0:
            continue
        chosen = np.sort(rng.choice(candidates, size=min(per_band, len(candidates)), replace=False))
        out.append((q0, q1, float(values[candidates[-1]]), float(values[candidates[0]]), chosen))
    return out


def compute_browser(
    sae: "SAE | TrainingSAE", dataset: ActivationDataset, model: "TransformerBridge",
    cfg: BrowserConfig = BrowserConfig(), progress: bool = True,
) -> dict[str, Any]:
    """Everything the site shows, from one encoding pass over ``dataset``'s held-out shard:
    ``{"meta", "tokens", "details"}`` (JSON-able; :func:`write_site` writes it)."""
    from tqdm.auto import tqdm

    from mechdemo.models import get_spec

    _, (heldout,) = split_shards(dataset)
    table = dataset.table(heldout)
    doc, pos, token_ids = (table.column(c).to_numpy() for c in ("doc_id", "tok_pos", "token_id"))
    x = from_uint16(dataset.shard_bits(heldout)).float()
    n = len(x)
    d_sae = int(sae.cfg.d_sae)
    shown = min(d_sae, cfg.features or d_sae)

    rows, feats, values = nonzero_activations(sae, x, progress=progress)
    keep = feats < shown
    rows, feats, values = rows[keep], feats[keep], values[keep]
    bounds = np.searchsorted(feats, np.arange(shown + 1))  # feature f's triples: [bounds[f], bounds[f+1])
    start_of, end_of = run_bounds(doc, pos)
    up_ids, up_v, down_ids, down_v = (t[:shown].numpy() for t in logit_effects(sae, model, k=N_LOGITS))
    nn_ids, nn_cos = (t.numpy() for t in decoder_neighbours(sae, among=shown))

    vocab_ids = np.unique(np.concatenate([token_ids, up_ids.ravel(), down_ids.ravel()]))
    local = {int(t): i for i, t in enumerate(vocab_ids)}
    tokenizer = model.tokenizer

    def context(row: int, value: float) -> list:
        return [int(row), int(max(start_of[row], row - cfg.before)), int(min(end_of[row], row + cfg.after)),
                _sig(value)]

    density, maxima, top_tokens, spark, flags, details = [], [], [], [], [], []
    for f in tqdm(range(shown), desc="feature pages", unit="feature", disable=not progress):
        seg = slice(bounds[f], bounds[f + 1])
        f_rows, f_vals = rows[seg], values[seg]
        m = len(f_vals)
        density.append(_sig(m / n))
        maxima.append(_sig(float(f_vals[0])) if m else 0.0)
        flags.append("dead" if m == 0 else "dense" if m / n > DENSE_THRESHOLD else "")
        hi = float(f_vals[0]) if m else 1.0
        spark.append(np.histogram(f_vals, bins=SPARK_BINS, range=(0, hi))[0].tolist())
        top = [context(r, v) for r, v in zip(f_rows[: cfg.n_contexts].tolist(), f_vals[: cfg.n_contexts].tolist())]
        counts = Counter(int(token_ids[c[0]]) for c in top).most_common(N_TOP_TOKENS)
        top_tokens.append([[local[t], c] for t, c in counts])
        rng = np.random.default_rng([cfg.seed, f])
        bands = [{"q": [q0, q1], "lo": _sig(lo), "hi": _sig(hi_), "ctx": [context(f_rows[i], f_vals[i]) for i in idx]}
                 for q0, q1, lo, hi_, idx in _band_samples(f_vals, cfg.n_contexts, cfg.per_band, rng)]
        # the feature's activation at every token of the windows shown (zero where absent)
        by_row = np.argsort(f_rows, kind="stable")
        sorted_rows = f_rows[by_row]
        wanted = set()
        for c in top + [c for b in bands for c in b["ctx"]]:
            a, b = np.searchsorted(sorted_rows, c[1], "left"), np.searchsorted(sorted_rows, c[2], "right")
            wanted.update(range(int(a), int(b)))
        acts = [[int(sorted_rows[i]), _sig(float(f_vals[by_row[i]]))] for i in sorted(wanted)]
        details.append({
            "hist": {"hi": _sig(hi), "counts": np.histogram(f_vals, bins=HIST_BINS, range=(0, hi))[0].tolist()},
            "top": top, "bands": bands, "acts": acts,
            "up": [[local[int(t)], _sig(float(v))] for t, v in zip(up_ids[f], up_v[f])],
            "down": [[local[int(t)], _sig(float(v))] for t, v in zip(down_ids[f], down_v[f])],
            "nn": [[int(g), round(float(c), 3)] for g, c in zip(nn_ids[f], nn_cos[f])],
        })

    meta_cfg = sae.cfg.metadata
    model_name = meta_cfg.model_name or dataset.manifest["config"]["model"]
    try:
        display = get_spec(model_name).display_name
    except MechdemoError:
        display = model_name
    hook, layer = dataset.site, dataset.layer
    kind = parse_site(hook)[0]
    where = f"MLP {layer}" if kind == "mlp_out" else f"{kind} {layer}"
    train = getattr(meta_cfg, "mechdemo", None) or {}
    arch = train.get("architecture", sae.cfg.architecture())
    setting = {"topk": f"k={train.get('k')}", "relu": f"l1={train.get('l1_coefficient')}",
               "jumprelu": f"l0={train.get('l0_coefficient')}"}.get(arch, "") if train else ""
    meta = {
        "title": f"SAE · {display} · {where}", "model": model_name, "model_display": display, "layer": layer,
        "hook": hook, "d_sae": shown, "d_sae_total": d_sae, "d_in": int(sae.cfg.d_in),
        "architecture": arch, "setting": setting, "heldout_tokens": n, "dense_threshold": DENSE_THRESHOLD,
        "n_dead": flags.count("dead"), "n_dense": flags.count("dense"), "chunk_size": CHUNK,
        "before": cfg.before, "after": cfg.after,
        "features": {"density": density, "max": maxima, "top_tokens": top_tokens, "spark": spark, "flag": flags},
    }
    tokens = {"vocab": [tokenizer.decode([int(t)]) for t in vocab_ids],
              "stream": [local[int(t)] for t in token_ids]}
    return {"meta": meta, "tokens": tokens, "details": details}


# ---------------------------------------------------------------------------------------------
# The site


def ui_strings() -> list[str]:
    """Every English UI string of the pages (listed in ``browser.js`` between UI_STRINGS_BEGIN and
    UI_STRINGS_END): the keys of the translation table the caller fills in per language."""
    source = (ASSETS / "browser.js").read_text(encoding="utf-8")
    block = re.search(r"// UI_STRINGS_BEGIN\n(.*?)// UI_STRINGS_END", source, re.S)
    if not block:
        raise RuntimeError("browser.js has no UI_STRINGS_BEGIN ... UI_STRINGS_END block")
    return [line[3:] for line in block.group(1).splitlines() if line.startswith("// ")]


def check_site_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check, before any work, that a site can be written to ``out``: not a file, not a folder holding
    anything but a browser this module wrote, and an existing browser only with ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MechdemoError(f"--out {out} is a file, not a folder: choose a folder for the browser")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise MechdemoError(f"--out {out} is a folder that holds something other than a feature browser: choose "
                                "another (mechdemo never replaces a folder it did not write)")
        if not overwrite:
            raise MechdemoError(f"--out {out} already holds a feature browser: pass --overwrite to replace it, or "
                                "choose another --out")
    check_writable(out)
    return out


def _js(name: str, value: Any) -> str:
    return f"window.{name} = {json.dumps(value, ensure_ascii=False, separators=(',', ':'))};\n"


def write_site(
    data: dict[str, Any], out: str | Path, ui: dict[str, dict[str, str]], provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write the site of :func:`compute_browser`'s ``data`` into ``out``; return its files (relative).

    ``ui`` maps each language to its translation of :func:`ui_strings` (``{"es": {...}, "en": {...}}``):
    pages ``<lang>/index.html`` and ``<lang>/feature.html`` per language, one copy of the data and the
    script. Written into a sibling folder and renamed into place: an interrupted run leaves the old
    site (or none), never half of one.
    """
    import html

    out = check_site_out(out, overwrite)
    files: list[str] = []
    with folder_written_atomically(out, "writing") as tmp:

        def put(rel: str, text: str) -> None:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
            files.append(rel)

        meta = data["meta"]
        template = (ASSETS / "page.html").read_text(encoding="utf-8")
        for lang, table in ui.items():
            for page in PAGES:  # one template: the script draws the page its <body data-page> names
                put(f"{lang}/{page}", template.replace("{{LANG}}", lang).replace("{{PAGE}}", page.removesuffix(".html"))
                    .replace("{{TITLE}}", html.escape(meta["title"]))
                    .replace("{{UI_JSON}}", json.dumps(table, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")))
        for asset in ("browser.js", "browser.css"):
            put(f"assets/{asset}", (ASSETS / asset).read_text(encoding="utf-8"))
        put("data/meta.js", _js("SAE_META", {**meta, "provenance": provenance or {}}))  # the pages' footer
        put("data/tokens.js", _js("SAE_TOKENS", data["tokens"]))
        details = data["details"]
        for c, start in enumerate(range(0, len(details), meta["chunk_size"])):
            chunk = json.dumps(details[start : start + meta["chunk_size"]], ensure_ascii=False, separators=(",", ":"))
            put(f"data/features-{c:03d}.js", f"(window.SAE_CHUNKS = window.SAE_CHUNKS || {{}})[{c}] = {chunk};\n")
        languages = list(ui)
        index = "".join(f'<li><a href="{lang}/index.html">{lang}</a></li>' for lang in languages)
        put("index.html", f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(meta["title"])}'
                          f'</title><meta http-equiv="refresh" content="0; url={languages[0]}/index.html"></head>'
                          f"<body><ul>{index}</ul></body></html>\n")
        put(MARKER, json.dumps({"mechdemo_version": __version__, **(provenance or {}), "files": sorted(files)},
                               indent=2, sort_keys=True) + "\n")
    return sorted(files)


def site_bytes(out: str | Path) -> int:
    """The total size of the site's files."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


def build_browser(
    sae: "SAE | TrainingSAE", dataset: ActivationDataset, model: "TransformerBridge", out: str | Path,
    ui: dict[str, dict[str, str]], cfg: BrowserConfig = BrowserConfig(), provenance: dict | None = None,
    overwrite: bool = False, progress: bool = True,
) -> list[str]:
    """:func:`compute_browser` then :func:`write_site` (``out`` is checked first: nothing is computed for
    a site that could not be written)."""
    check_site_out(out, overwrite)
    data = compute_browser(sae, dataset, model, cfg, progress=progress)
    prov = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": cfg.__dict__,
            "model": data["meta"]["model"], "layer": data["meta"]["layer"], "dataset": str(dataset.path),
            **(provenance or {})}
    return write_site(data, out, ui, prov, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Feature activations on any text (demo 06's helper)


@torch.no_grad()
def text_activations(
    model: "TransformerBridge", sae: "SAE | TrainingSAE", where: str | int, text: str,
) -> tuple[list[str], Float[Tensor, "pos d_sae"]]:
    """The tokens of ``text`` (after the model's BOS, if it has one) and every feature's activation at
    each: one forward pass to the SAE's site (``where``: a site name, or a layer for its MLP output), the
    activation there encoded by the SAE."""
    from mechdemo.interventions import run

    hook, layer = hook_of(where)
    tokens = model.to_tokens(text)  # BOS first, as the dataset's sequences
    _, acts_at = run(model, tokens, names=[hook], stop_at_layer=layer + 1)
    out = acts_at[hook][0]  # what extraction records (mechdemo.datasets)
    acts = sae.encode(out.float().cpu().to(sae.W_dec.dtype))
    strings = [model.tokenizer.decode([int(t)]) for t in tokens[0]]
    bos = model.tokenizer.bos_token_id
    if bos is not None and int(tokens[0, 0]) == bos:
        strings, acts = strings[1:], acts[1:]
    return strings, acts


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
