"""Feature pages: everything a page of the feature browser shows about each feature of an SAE.

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
* **logit effect**: the decoder direction ``W_dec[f]`` through the readout at unit scale,
  ``(centre(W_dec[f]) ⊙ γ) · W_U`` (:func:`mechdemo.sae.features.logit_effects`): the tokens it pushes
  up and down directly (ignoring the later layers and the norm's division, as the feature pages do);
* **nearest features**: the other features whose decoder directions have the largest cosine with
  this one (feature splitting and near-duplicates show up here).

**Computed in one pass.** The activation dataset already holds the activation the SAE reads at every
held-out token, so nothing here runs the model: the SAE encodes the held-out shard in batches and every
non-zero activation is kept as a ``(row, feature, value)`` triple (L0 per token, so about 160,000
triples for a TopK k = 32 SAE on 5,000 tokens). Sorted by feature and then by value, the triples
give each feature's density, histogram, exact top-k, quantile samples, and its activation at every
token of the contexts shown. The model contributes weights only (unembedding and final norm).

This module computes; :mod:`mechdemo.sites.feature_browser` writes the pages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.data import ActivationDataset, from_uint16
from mechdemo.errors import MechdemoError
from mechdemo.interventions import parse_site
from mechdemo.sae.evaluation import DENSE_THRESHOLD
from mechdemo.sae.features import logit_effects
from mechdemo.sae.training import split_shards

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge


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
class FeaturePagesConfig:
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


def feature_pages(
    sae: "SAE | TrainingSAE", dataset: ActivationDataset, model: "TransformerBridge",
    cfg: FeaturePagesConfig = FeaturePagesConfig(), progress: bool = True,
) -> dict[str, Any]:
    """Everything the feature browser shows, from one encoding pass over ``dataset``'s held-out shard:
    ``{"meta", "tokens", "details"}`` (JSON-able; :func:`mechdemo.sites.feature_browser.write_browser`
    writes it)."""
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
