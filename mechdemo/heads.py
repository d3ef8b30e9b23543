"""Head scores: what each attention head attends to, read off its attention pattern.

A head type is a rule that says, for every query position, which key positions a head of that
type attends to (Olsson et al. 2022; Elhage et al. 2021):

* ``previous_token``: the key just before the query (``k = q - 1``);
* ``current_token``: the query itself (``k = q``, the diagonal);
* ``first_token``: position 0, the BOS token (an "attention sink": where heads park attention
  when they have nothing to do);
* ``duplicate_token``: earlier positions holding the same token as the query;
* ``induction``: positions right *after* an earlier occurrence of the query's token: on
  ``... A B ... A`` the head at the second ``A`` attends to ``B``, and (with an OV circuit that
  copies) predicts ``B``.

The score of a head is the attention mass it puts on those keys, averaged over the query
positions where the rule names at least one key (queries with no duplicate have no
"duplicate-token" target, and position 0 can only attend to itself). It is in [0, 1]: 1 means all
of the head's attention goes where the rule says. With ``all_queries=True`` the average runs over
every query instead, which is exactly TransformerLens's ``detect_head(..., error_measure="mul")``
(the tests check it). We do not call ``detect_head`` itself: it runs one prompt and one head type
at a time and keeps a full activation cache, while :func:`head_scores` scores every type for a
whole batch in one forward pass.

Duplicate-token and induction scores are measured on ``[BOS] + R + R``: a random token sequence R
repeated once, where every token of the second half has exactly one earlier occurrence. The
tokens must not be padded (pass equal-length sequences).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechdemo.interventions import run, site
from mechdemo.tokens import repeated_random_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HEAD_TYPES = ("previous_token", "current_token", "first_token", "duplicate_token", "induction")


def head_targets(
    tokens: Int[Tensor, "batch pos"], head_type: str
) -> Bool[Tensor, "batch q_pos k_pos"]:
    """For each query, the keys a head of ``head_type`` attends to (a causal boolean mask)."""
    batch, n = tokens.shape
    q = torch.arange(n, device=tokens.device)[:, None]
    k = torch.arange(n, device=tokens.device)[None, :]
    causal = k <= q
    if head_type == "previous_token":
        mask = (k == q - 1).expand(batch, n, n)
    elif head_type == "current_token":
        mask = ((k == q) & (q > 0)).expand(batch, n, n)
    elif head_type == "first_token":
        mask = ((k == 0) & (q > 0)).expand(batch, n, n)
    elif head_type == "duplicate_token":
        same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
        mask = same & (k < q)
    elif head_type == "induction":
        # key k follows an earlier occurrence of the query's token: tokens[k - 1] == tokens[q]
        prev_of_key = torch.roll(tokens, shifts=1, dims=1)  # prev_of_key[:, k] = tokens[:, k - 1]
        same = tokens[:, :, None] == prev_of_key[:, None, :]
        mask = same & (k >= 1) & (k - 1 < q)
    else:
        raise ValueError(f"unknown head type {head_type!r}; choose from {HEAD_TYPES}")
    return mask & causal


def pattern_score(
    pattern: Float[Tensor, "batch head q_pos k_pos"],
    targets: Bool[Tensor, "batch q_pos k_pos"],
    all_queries: bool = False,
) -> Float[Tensor, " head"]:
    """Mean attention mass on ``targets``, over queries that have a target (or all queries)."""
    mass = (pattern * targets[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, q]
    if all_queries:
        return mass.mean(dim=(0, 2))
    counted = targets.any(-1)  # [batch, q]
    n = counted.sum()
    if n == 0:
        return torch.full(mass.shape[1:2], float("nan"), dtype=mass.dtype, device=mass.device)
    return (mass * counted[:, None].to(mass.dtype)).sum(dim=(0, 2)) / n


def head_scores(
    model: "TransformerBridge",
    tokens: Int[Tensor, "batch pos"],
    head_types: tuple[str, ...] = HEAD_TYPES,
    all_queries: bool = False,
) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """Score every head of ``model`` for every head type on one forward pass of ``tokens``.

    Scores are computed inside the attention-pattern hooks, layer by layer, so no activation
    cache is kept (a 30-layer model on a batch of 8 x 101 tokens needs a few MB, not 100s).
    """
    cfg = model.cfg
    tokens = tokens.to(cfg.device)
    targets = {t: head_targets(tokens, t) for t in head_types}
    scores = {t: torch.zeros(cfg.n_layers, cfg.n_heads) for t in head_types}

    def make_hook(layer: int):
        def hook(pattern, hook):
            p = pattern.float()
            for t in head_types:
                scores[t][layer] = pattern_score(p, targets[t], all_queries).cpu()
            return None

        return hook

    with torch.no_grad():
        run(model, tokens, [(site("pattern", layer), make_hook(layer)) for layer in range(cfg.n_layers)])
    return scores


def standard_head_scores(
    model: "TransformerBridge", batch: int = 8, seq_len: int = 50, seed: int = 0
) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """All head scores on ``[BOS] + R + R`` (``batch`` sequences, R of ``seq_len`` random tokens).

    One input for every type: positional heads (previous, current, first token) behave the same on
    random tokens as on text, and the repeat gives every second-half token one earlier duplicate.
    """
    return head_scores(model, repeated_random_tokens(model, batch, seq_len, seed))


def top_heads(scores: Float[Tensor, "n_layers n_heads"], k: int = 1) -> list[tuple[int, int, float]]:
    """The ``k`` highest-scoring heads as ``(layer, head, score)``, best first."""
    flat = torch.nan_to_num(scores, nan=-1.0).flatten()
    values, idx = flat.topk(k)
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, idx)]


def per_token_loss(
    model: "TransformerBridge", tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy (nats) of predicting ``tokens[:, i + 1]`` at position ``i``."""
    with torch.no_grad():
        logits = model(tokens.to(model.cfg.device)).float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:].to(logits.device), reduction="none").cpu()


def induction_attention_at_offset(
    pattern: Float[Tensor, "batch head q_pos k_pos"], seq_len: int
) -> Float[Tensor, " head"]:
    """On ``[BOS] + R + R``, attention from each second-half token to the token after its first
    occurrence (the key at offset ``seq_len - 1`` behind the query), averaged over the second half."""
    diag = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # [batch, head, n]
    return diag[..., -seq_len:].mean(dim=(0, -1))
