"""What ``mechdemo ioi`` reports for a set of IOI prompts: logit differences, accuracy and the direct
logit attribution, in the order the prompts were given.

Prompts of a user's file are grouped by token length into batches (:func:`mechdemo.ioi.load_prompts`);
every per-prompt result here is put back in file order. The built-in prompts come one batch per
template.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.dla import DLA, direct_logit_attribution
from mechdemo.ioi.prompts import IOIBatch, ioi_batches, load_prompts
from mechdemo.metrics import logit_diff

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

def logit_diff_of(model: "TransformerBridge", tokens: Int[Tensor, "n pos"], batch: IOIBatch) -> Float[Tensor, " n"]:
    with torch.no_grad():
        return logit_diff(model(tokens.to(model.cfg.device)), batch.correct, batch.incorrect).float().cpu()


def summary(diffs: Float[Tensor, " n"]) -> dict:
    """The JSON summary of a logit-difference vector."""
    return {
        "logit_diff_mean": round(diffs.mean().item(), 4),
        "logit_diff_per_prompt": [round(x, 4) for x in diffs.tolist()],
        "accuracy": round((diffs > 0).float().mean().item(), 4),
    }


def prompt_batches(
    model: "TransformerBridge", prompts: str | Path | None = None, n_per_template: int = 16, seed: int = 0,
    template: int | None = None,
) -> tuple[list[IOIBatch], dict]:
    """The batches of a user's prompt file (grouped by token length), or of the built-in templates
    (all, or one), and a JSON description of where they came from."""
    if prompts is not None:
        batches = load_prompts(model, prompts, seed=seed)
        return batches, {"kind": "file", "path": str(prompts), "token_lengths": [b.tokens.shape[1] for b in batches]}
    batches = ioi_batches(model, n_per_template, seed=seed, templates=None if template is None else [template])
    return batches, {"kind": "templates", "n_per_template": n_per_template, "seed": seed,
                     "templates": [b.template for b in batches]}


def file_order(batches: Sequence[IOIBatch]) -> Int[Tensor, " n"] | None:
    """The permutation that puts the concatenated batches' prompts back in file order (None: already in
    order, the built-in prompts)."""
    if not all(b.rows for b in batches):
        return None
    return torch.tensor([r for b in batches for r in b.rows]).argsort()


def ioi_report(model: "TransformerBridge", batches: Sequence[IOIBatch]) -> tuple[dict, DLA]:
    """The logit difference of every prompt (mean, per prompt, accuracy), of the corrupted prompts when
    every batch has them, and the mean DLA; with the per-prompt :class:`mechdemo.dla.DLA` (file order)."""
    order = file_order(batches)
    diffs = torch.cat([logit_diff_of(model, b.tokens, b) for b in batches])
    diffs = diffs if order is None else diffs[order]
    out = {"n_prompts": len(diffs), **summary(diffs)}
    if all(len(b.corrupted_tokens) for b in batches):
        corrupted = torch.cat([logit_diff_of(model, b.corrupted_tokens, b) for b in batches])
        out["corrupted_logit_diff_mean"] = round(corrupted.mean().item(), 4)
    dla = DLA.concatenate([direct_logit_attribution(model, b.tokens, b.correct, b.incorrect) for b in batches], order)
    out.update(dla.mean())
    return out, dla
