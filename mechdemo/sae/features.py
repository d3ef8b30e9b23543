"""What an SAE's features mean: top activations, direct logit effects, contexts, activations on any text.

A feature's **logit effect** is its decoder direction read through the model's readout at unit scale
(:func:`mechdemo.readout.direction_logits`: centred and multiplied by the final norm's weight, then
unembedded), the tokens it pushes up and down directly, ignoring the later layers, as Anthropic's
feature pages show. Its **contexts** are rebuilt from the activation dataset's ``doc_id`` /
``tok_pos`` columns, so no model run is needed to show them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.data import ActivationDataset
from mechdemo.sae.training import hook_of

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge

PICK_FREQUENCY = (1e-3, 3e-2)  # pick_features: fires on more than 0.1 % and less than 3 % of held-out tokens


@torch.no_grad()
def top_activations(
    sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], k: int = 8, batch_size: int = 4096
) -> tuple[Float[Tensor, "d_sae k"], Int[Tensor, "d_sae k"], Int[Tensor, " d_sae"]]:
    """For every feature: its ``k`` largest activations on ``x``, their row indices, and how often it fires."""
    d_sae = sae.cfg.d_sae
    best_v = torch.full((d_sae, k), -1.0)
    best_i = torch.zeros((d_sae, k), dtype=torch.long)
    fired = torch.zeros(d_sae, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        feats = sae.encode(x[start : start + batch_size])  # [b, d_sae]
        fired += (feats > 0).sum(0)
        v, i = feats.T.topk(min(k, feats.shape[0]), dim=1)  # [d_sae, k']
        both_v, both_i = torch.cat([best_v, v], 1), torch.cat([best_i, i + start], 1)
        order = both_v.topk(k, dim=1).indices
        best_v, best_i = both_v.gather(1, order), both_i.gather(1, order)
    return best_v, best_i, fired


@torch.no_grad()
def logit_effects(
    sae: "SAE | TrainingSAE", model: "TransformerBridge", k: int = 10, batch: int = 256,
    features: Sequence[int] | None = None,
) -> tuple[Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"], Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"]]:
    """Each feature's direct logit effect, :func:`mechdemo.readout.direction_logits` of its decoder row
    (``(centre(W_dec[f]) ⊙ γ_final) · W_U``, the centring for LayerNorm models): the ``k`` most promoted
    tokens and values, then the ``k`` most suppressed, ``batch`` features at a time (``features``: only those)."""
    from mechdemo.readout import direction_logits

    W_dec = sae.W_dec.detach().float().cpu()
    if features is not None:
        W_dec = W_dec[list(features)]
    parts = []
    for start in range(0, len(W_dec), batch):
        logits = direction_logits(model, W_dec[start : start + batch])  # [b, vocab]
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        parts.append((up.indices, up.values, down.indices, down.values))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def promoted_tokens(
    sae: "SAE | TrainingSAE", model: "TransformerBridge", features: Sequence[int], k: int = 6
) -> list[list[tuple[str, float]]]:
    """Each feature's direct effect on the logits (:func:`logit_effects`): its top ``k`` tokens, decoded.

    The decoder direction is what the feature adds to the residual stream; scaling by the final
    norm's weight and projecting on the unembedding gives the tokens it pushes up directly (ignoring
    later layers and the norm's division, as in Anthropic's feature pages).
    """
    ids, values, _, _ = logit_effects(sae, model, k=k, features=features)
    return [[(model.tokenizer.decode([int(t)]), float(v)) for t, v in zip(row_ids, row_v)]
            for row_ids, row_v in zip(ids, values)]


def token_contexts(
    dataset: ActivationDataset, shard: int, rows: Sequence[int], tokenizer, before: int = 12, after: int = 3,
) -> list[dict]:
    """The text around each ``rows`` entry of ``shard``: ``{"before", "token", "after"}`` strings."""
    table = dataset.table(shard)
    doc, pos, tok = (table.column(c).to_numpy() for c in ("doc_id", "tok_pos", "token_id"))
    contexts = []
    for row in rows:
        lo, hi = max(0, row - before), min(len(tok), row + after + 1)
        window = np.arange(lo, hi)
        same = (doc[window] == doc[row]) & (np.abs(pos[window] - pos[row]) <= max(before, after))
        window = window[same]
        contexts.append({
            "before": tokenizer.decode(tok[window[window < row]].tolist()),
            "token": tokenizer.decode([int(tok[row])]),
            "after": tokenizer.decode(tok[window[window > row]].tolist()),
        })
    return contexts


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
    out = acts_at[hook][0]  # what extraction records (mechdemo.data)
    acts = sae.encode(out.float().cpu().to(sae.W_dec.dtype))
    strings = [model.tokenizer.decode([int(t)]) for t in tokens[0]]
    bos = model.tokenizer.bos_token_id
    if bos is not None and int(tokens[0, 0]) == bos:
        strings, acts = strings[1:], acts[1:]
    return strings, acts


def pick_features(values: torch.Tensor, fired: torch.Tensor, n_tokens: int, n: int = 4) -> list[int]:
    """``n`` features to show, by a fixed rule rather than by hand: among those that fire on 0.1-3% of
    the held-out tokens (neither near-dead nor dense, :data:`PICK_FREQUENCY`), the ``n`` with the
    strongest top activation."""
    low, high = PICK_FREQUENCY
    freq = fired.float() / n_tokens
    candidates = torch.nonzero((freq > low) & (freq < high)).flatten()
    order = candidates[values[candidates, 0].argsort(descending=True)]
    return [int(f) for f in order[:n]]


# --- a feature's hypothesis, tested -----------------------------------------------------------------


@torch.no_grad()
def token_hypotheses(
    sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], token_ids: Int[np.ndarray, " n"], top_k: int = 20,
    batch_size: int = 4096,
) -> dict[str, np.ndarray]:
    """For every feature, the simplest hypothesis its top activations suggest, and how well it holds:
    "the feature detects token t", t the most common token of its ``top_k`` largest activations.

    * ``precision``: the share of the feature's firings (all of them, not only the top ones) that fall on t;
    * ``recall``: the share of t's occurrences (in ``x``'s text) on which the feature fires;
    * ``occurrences`` of t, and ``fired`` (how many tokens the feature fires on).

    A top-activation list alone overstates how specific a feature is (Bricken et al. 2023): a feature
    whose 20 strongest activations all fall on t may fire on other tokens just as often, more weakly.
    Precision over every firing and recall test the hypothesis in both directions."""
    acts = torch.cat([sae.encode(x[s : s + batch_size].to(sae.W_dec.dtype)).float()
                      for s in range(0, len(x), batch_size)])  # [n, d_sae]
    d_sae = acts.shape[1]
    fires = acts > 0
    top_v, top_i = acts.topk(min(top_k, len(x)), dim=0)  # [k, d_sae]
    token_ids = np.asarray(token_ids)
    tokens = np.full(d_sae, -1)
    precision, recall, occurrences = np.zeros(d_sae), np.zeros(d_sae), np.zeros(d_sae, dtype=int)
    fired = fires.sum(0).numpy()
    for f in range(d_sae):
        rows = top_i[:, f][top_v[:, f] > 0].numpy()
        if len(rows) == 0:
            continue
        values, counts = np.unique(token_ids[rows], return_counts=True)
        t = int(values[counts.argmax()])  # ties: the smallest id (deterministic)
        on_t = torch.from_numpy(token_ids == t)
        hits = int(fires[on_t, f].sum())
        tokens[f], occurrences[f] = t, int(on_t.sum())
        precision[f], recall[f] = hits / fired[f], hits / occurrences[f]
    return {"token": tokens, "precision": precision, "recall": recall, "occurrences": occurrences, "fired": fired}


def pick_hypothesis_features(hypotheses: dict[str, np.ndarray], n_tokens: int, n: int = 2,
                             min_occurrences: int = 10) -> list[int]:
    """``n`` features to show, by a fixed rule rather than by hand: among those that fire on 0.1-3% of the
    tokens (neither near-dead nor dense, :data:`PICK_FREQUENCY`) and whose token occurs at least
    ``min_occurrences`` times, the ones whose token hypothesis holds best (precision x recall), one per
    token (a second feature of the same token would repeat the first's message)."""
    low, high = PICK_FREQUENCY
    freq = hypotheses["fired"] / n_tokens
    score = hypotheses["precision"] * hypotheses["recall"]
    ok = (freq > low) & (freq < high) & (hypotheses["occurrences"] >= min_occurrences) & (hypotheses["token"] >= 0)
    chosen, tokens = [], set()
    for f in np.argsort(-np.where(ok, score, -1), kind="stable"):
        if not ok[f] or len(chosen) == n:
            break
        if int(hypotheses["token"][f]) not in tokens:
            chosen.append(int(f))
            tokens.add(int(hypotheses["token"][f]))
    return chosen


def distinct_passages(rows: Sequence[int], doc: Int[np.ndarray, " n"], pos: Int[np.ndarray, " n"],
                      token_ids: Int[np.ndarray, " n"], k: int, window: int = 12) -> list[int]:
    """The first ``k`` of ``rows`` (best first) that are distinct passages: no two in overlapping windows of
    one document, and no two whose ``window`` tokens before the activating one are mostly the same text (a
    paragraph the documentation repeats shows once)."""
    kept: list[int] = []
    seen: list[set] = []
    for row in rows:
        if any(doc[row] == doc[r] and abs(int(pos[row]) - int(pos[r])) <= window for r in kept):
            continue
        lo = max(0, row - window)
        text = set(zip(range(row - lo), token_ids[lo:row].tolist()[::-1]))  # (distance back, token)
        if any(len(text & other) > 0.5 * max(len(text), 1) for other in seen):
            continue
        kept.append(int(row))
        seen.append(text)
        if len(kept) == k:
            break
    return kept


@torch.no_grad()
def feature_intervention(
    model: "TransformerBridge", sae: "SAE | TrainingSAE", tokens: Int[Tensor, "batch pos"], feature: int,
    where: str | int, scales: Sequence[float] = (0.0, 4.0, 16.0), seed: int = 0, batch_size: int = 8,
    n_tokens: int = 8,
) -> dict:
    """A causal check of one feature: scale its contribution ``f_i(x) W_dec[i]`` at the SAE's site by each of
    ``scales`` (0: the feature ablated, what the SAE does not reconstruct kept; 4: amplified four times, as
    steering does), and measure the next-token distribution at the positions where it fires:
    ``KL(clean || edited)`` (nats), the change of the log-probability of the true next token, and the tokens
    whose mean log-probability drops and rises most. Control: the same positions and amounts along a random
    direction of the norm of ``W_dec[i]`` (seeded): a feature whose direction matters to the model moves
    the distribution more than the control does (Templeton et al. 2024 steer features this way).

    Only the sequences where the feature fires are run, and only from the site's layer on: the first pass
    stops there and keeps the residual stream, which every edited run restarts from."""
    from mechdemo.forward import block_context, run_blocks
    from mechdemo.interventions import run, site
    from mechdemo.readout import logits_from_resid

    hook, layer = hook_of(where)
    resid_name = site("resid_pre", layer)
    w = sae.W_dec[feature].detach().float()
    control = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed))
    control = control / control.norm() * w.norm()
    acts, resids = [], []
    for start in range(0, len(tokens), batch_size):  # where does it fire? (a pass that stops at the layer)
        _, cache = run(model, tokens[start : start + batch_size], names=[hook, resid_name], stop_at_layer=layer + 1)
        acts.append(sae.encode(cache[hook].float().cpu().to(sae.W_dec.dtype))[..., feature].float())
        resids.append(cache[resid_name])
    f_all, resid_all = torch.cat(acts), torch.cat(resids)
    f_all[:, 0] = 0.0  # BOS is not a text position
    chosen = torch.nonzero((f_all > 0).any(1)).flatten()
    out = {"feature": feature, "site": hook, "positions": int((f_all > 0).sum()), "sequences": len(chosen),
           "scales": {}}
    if len(chosen) == 0:
        return out
    per_scale = {s: {"kl": [], "kl_control": [], "true": [], "delta": 0.0} for s in scales}
    for start in range(0, len(chosen), batch_size):
        rows = chosen[start : start + batch_size]
        # causal attention: positions after the last one where the feature fires change nothing that is measured
        n_pos = int(torch.nonzero(f_all[rows] > 0)[:, 1].max()) + 1
        full = tokens[rows]
        batch, f, resid = full[:, :n_pos], f_all[rows, :n_pos], resid_all[rows.to(resid_all.device), :n_pos]
        context = block_context(model, batch.to(model.cfg.device))
        fires = f > 0
        nxt = torch.cat([full[:, 1:], full[:, -1:]], 1)[:, :n_pos][fires]  # the true next token at each firing
        inside = (torch.arange(n_pos) < full.shape[1] - 1).expand_as(fires)[fires]  # ... where there is one

        def log_probs(hooks=()) -> Tensor:  # [firing positions, d_vocab]
            final = run_blocks(model, resid, layer, context, fwd_hooks=list(hooks))
            return logits_from_resid(model, final[fires.to(final.device)]).float().log_softmax(-1).cpu()

        at = log_probs()
        for scale in scales:
            def edit(direction: Tensor, scale: float = scale):
                def hook_fn(act: Tensor, hook) -> Tensor:
                    return act + ((scale - 1.0) * f[..., None] * direction).to(device=act.device, dtype=act.dtype)

                return hook_fn

            edited, other = log_probs([(hook, edit(w))]), log_probs([(hook, edit(control))])
            r = per_scale[scale]
            r["kl"].append((at.exp() * (at - edited)).sum(-1))
            r["kl_control"].append((at.exp() * (at - other)).sum(-1))
            r["true"].append((edited - at).gather(-1, nxt[:, None])[:, 0][inside])
            r["delta"] = r["delta"] + (edited - at).sum(0)

    def mean_se(parts: list[Tensor]) -> tuple[float, float]:
        t = torch.cat(parts)
        return float(t.mean()), float(t.std() / len(t) ** 0.5) if len(t) > 1 else float("nan")

    for scale, r in per_scale.items():
        mean_delta = r["delta"] / out["positions"]
        down, up = mean_delta.topk(n_tokens, largest=False), mean_delta.topk(n_tokens)
        (kl, kl_se), (klc, klc_se), (tr, tr_se) = mean_se(r["kl"]), mean_se(r["kl_control"]), mean_se(r["true"])
        out["scales"][str(scale)] = {
            "scale": scale, "kl": kl, "kl_se": kl_se, "kl_control": klc, "kl_control_se": klc_se,
            "true_next_logprob_change": tr, "true_next_logprob_change_se": tr_se,
            "down": [(int(t), float(v)) for t, v in zip(down.indices, down.values)],
            "up": [(int(t), float(v)) for t, v in zip(up.indices, up.values)],
        }
    return out
