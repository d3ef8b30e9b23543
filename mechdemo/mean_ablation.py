"""Mean ablation and circuit faithfulness (Wang et al. 2022, §4).

To *remove* a head without pushing the model off-distribution, replace its output with its
**mean** over a reference distribution, position by position: here the corrupted (ABC) prompts
of the same template, which share positions and sentence frame but carry no IOI signal.
Zero-ablation would instead inject a vector the model never sees.

**Faithfulness** of a circuit: mean-ablate every head *outside* it and place its logit difference
between two references, the full model (1) and the empty circuit, every head mean-ablated (0)::

    faithfulness = (LD(circuit alone) - LD(no head)) / (LD(full model) - LD(no head))

The empty circuit is not 0 by itself: with every head mean-ablated the MLPs, the embeddings and the
heads' mean outputs still prefer the IO (on SmolLM2-135M, about a third of the model's logit
difference), so the plain ratio ``LD(circuit) / LD(model)`` (``logit_diff_ratio``, the number Wang
et al. report: 87 % for GPT-2 small) credits the circuit with what no head does. Edge-patching
faithfulness (:mod:`mechdemo.circuit_discovery.edge_patching`) uses the same formula with its own
empty circuit, the corrupted run; the two differ by how a component is removed (its mean, or its
corrupted value), and that choice alone can move faithfulness a lot (Miller et al. 2024,
"Transformer Circuit Faithfulness Metrics are not Robust"). Wang et al. keep circuit heads only at
the positions where they act; here circuit heads stay whole, a simplification that can only make
the circuit look more faithful. Every MLP stays in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.interventions import replace, run, site, sites
from mechdemo.metrics import logit_diff, normalize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Head = tuple[int, int]


def mean_head_outputs(
    model: "TransformerBridge", reference_tokens: Int[Tensor, "n pos"]
) -> Float[Tensor, "n_layers pos n_heads d_head"]:
    """Each head's ``z`` averaged over the reference prompts, per position."""
    names = sites("z", range(model.cfg.n_layers))
    with torch.no_grad():
        _, cache = run(model, reference_tokens, names=names)
    return torch.stack([cache[n].mean(0) for n in names])


def mean_ablation_hooks(means: Tensor, heads: Iterable[Head]) -> list:
    """Forward hooks that replace the listed heads' ``z`` by ``means`` (from :func:`mean_head_outputs`)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [replace(site("z", layer), means[layer][None, :, sorted(hs)], (slice(None), slice(None), sorted(hs)))
            for layer, hs in by_layer.items()]


def logit_diff_with_ablation(
    model: "TransformerBridge",
    tokens: Int[Tensor, "n pos"],
    correct: Int[Tensor, " n"],
    incorrect: Int[Tensor, " n"],
    means: Tensor,
    ablated: Iterable[Head],
) -> Float[Tensor, " n"]:
    """Per-prompt logit difference with ``ablated`` heads mean-ablated."""
    with torch.no_grad():
        logits, _ = run(model, tokens, mean_ablation_hooks(means, ablated))
    return logit_diff(logits, correct, incorrect).float().cpu()


def mean_ablation_faithfulness(
    model: "TransformerBridge",
    tokens: Int[Tensor, "n pos"],
    corrupted_tokens: Int[Tensor, "n pos"],
    correct: Int[Tensor, " n"],
    incorrect: Int[Tensor, " n"],
    circuit: Iterable[Head],
) -> dict:
    """Logit differences of the full model, of the circuit alone (complement mean-ablated) and of no head
    (every head mean-ablated); the normalised ``faithfulness`` (0 = no head, 1 = the model) and the plain
    ``logit_diff_ratio``."""
    circuit = set(circuit)
    means = mean_head_outputs(model, corrupted_tokens)
    everything = {(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    with torch.no_grad():
        full = logit_diff(model(tokens.to(model.cfg.device)), correct, incorrect).float().cpu()
    alone = logit_diff_with_ablation(model, tokens, correct, incorrect, means, everything - circuit)
    nothing = logit_diff_with_ablation(model, tokens, correct, incorrect, means, everything)
    return {
        "logit_diff_full": round(full.mean().item(), 4),
        "logit_diff_circuit": round(alone.mean().item(), 4),
        "logit_diff_all_heads_ablated": round(nothing.mean().item(), 4),
        "faithfulness": round(normalize(alone.mean().item(), full.mean().item(), nothing.mean().item()), 4),
        "logit_diff_ratio": round(alone.mean().item() / full.mean().item(), 4),
        "n_heads_in_circuit": len(circuit),
    }
