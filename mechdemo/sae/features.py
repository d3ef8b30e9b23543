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
