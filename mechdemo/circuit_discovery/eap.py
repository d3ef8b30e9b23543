"""Edge attribution patching: a score for every edge of the graph from a few backward passes.

Edge patching (:mod:`mechdemo.circuit_discovery.edge_patching`) measures a circuit exactly but needs a forward pass
per circuit; finding a circuit edge by edge (ACDC, Conmy et al. 2023) needs one per edge, tens of
thousands. **EAP** (Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") estimates the effect of patching each edge ``s → r`` with one linear step:

    score(s → r)  =  (out_s(corrupted) - out_s(clean)) · ∂metric/∂input_r   (at the clean run)

summed over positions and averaged over prompts (positions before the first clean/corrupted
difference add nothing: the difference is 0 there, so runs start after them, as edge patching's
do). Patching the edge adds exactly
``out_s(corrupted) - out_s(clean)`` to ``input_r`` (the residual stream is a sum), so this is the
first-order Taylor estimate of the change in the metric. One forward pass per prompt set records
the senders' outputs, one forward and one backward pass on the clean prompts give the gradient at
every receiver; the score of every edge is then a dot product.

**EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness: Going Beyond Circuit
Overlap When Finding Model Mechanisms") replaces the gradient at the clean run by its average
along the straight path from the corrupted to the clean input embeddings (integrated gradients,
Sundararajan et al. 2017), at ``α = 1/m, 2/m, ..., 1``:

    score(s → r)  =  (out_s(corrupted) - out_s(clean)) · (1/m) Σ_k ∂metric/∂input_r |_{α_k}

The gradient at the clean run alone misjudges components whose effect saturates (a softmax that is
already confident, an attention pattern already on its token); averaging along the path sees them
change. With ``m = 1`` the only point is the clean run: EAP-IG with one step *is* EAP (tested).
Hanna et al. find ``m = 5`` enough for circuits as faithful as with many more steps; we use
:data:`IG_STEPS` = 5, i.e. five forward and backward passes.

Edges are ranked by ``|score|``: an edge that pushes the metric the wrong way matters as much as
one that pushes it the right way (negative name movers in IOI). :mod:`mechdemo.circuit_discovery`
builds circuits from the top edges and measures them by real edge patching.

Why not a library: Hanna et al.'s ``eap`` package (github.com/hannamw/EAP-IG) is not on PyPI and is
built on HookedTransformer; the bridge's own hooks (:func:`mechdemo.interventions.switches_on`)
give the same per-head Q/K/V inputs, so the method fits in this module, on one graph shared with
the exact evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechdemo.interventions import site
from mechdemo.circuit_discovery.edge_patching import PromptPairs, Suffix, run_suffix, sender_outputs, suffix_of
from mechdemo.circuit_discovery.graph import ComputeGraph

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

IG_STEPS = 5  # Hanna et al. 2024: 5 integration steps suffice
METHODS = ("eap", "eap-ig")


def edge_scores(
    model: "TransformerBridge", graph: ComputeGraph, pairs: Sequence[PromptPairs], steps: int = 1, progress: bool = False
) -> Float[Tensor, "n_senders n_receivers"]:
    """EAP (``steps=1``) or EAP-IG (``steps=m``) scores of every edge; 0 where there is no edge.

    The scores estimate the change of the metric's mean over all prompts when the edge alone is
    patched to its corrupted value."""
    return eap_and_eap_ig(model, graph, pairs, steps, progress)["eap-ig" if steps > 1 else "eap"]


def eap_and_eap_ig(
    model: "TransformerBridge", graph: ComputeGraph, pairs: Sequence[PromptPairs], steps: int = IG_STEPS,
    progress: bool = False,
) -> dict[str, Float[Tensor, "n_senders n_receivers"]]:
    """Both scores from EAP-IG's passes: the last step (``α = 1``) is the clean run, whose gradient
    alone is EAP's (``{"eap": ..., "eap-ig": ...}``; the same as two calls of :func:`edge_scores`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    eap = torch.zeros(graph.n_senders, graph.n_receivers)
    ig = torch.zeros(graph.n_senders, graph.n_receivers) if steps > 1 else eap
    total = sum(p.n for p in pairs)
    bar = tqdm(total=len(pairs) * (steps + 2), desc="EAP-IG" if steps > 1 else "EAP", unit="pass",
               disable=not progress, leave=False)
    for p in pairs:
        suffix = suffix_of(model, p)  # before the first difference, delta is 0: no score to add there
        start = suffix.prefix
        clean = sender_outputs(model, graph, p.clean)[:, :, start:]
        corrupted = sender_outputs(model, graph, p.corrupted)[:, :, start:]
        bar.update(2)
        delta = (corrupted - clean).contiguous()  # what patching each sender's edges adds to their receivers
        del clean
        for k in range(1, steps + 1):
            targets = [(ig, 1.0 / (total * steps))]
            if k == steps and steps > 1:
                targets.append((eap, 1.0 / total))
            _accumulate(model, graph, suffix, delta, corrupted[0], k / steps, targets)
            bar.update(1)
    bar.close()
    return {"eap": eap.masked_fill(~graph.edges, 0.0), "eap-ig": ig.masked_fill(~graph.edges, 0.0)}


def dot(
    delta: Float[Tensor, "s n pos d_model"], grad: Float[Tensor, "n pos heads d_model"] | Float[Tensor, "n pos d_model"]
) -> Float[Tensor, "s heads"] | Float[Tensor, " s"]:
    """``Σ_{n,pos,d} delta[s] · grad[..., h, :]`` as one matrix product over the flattened senders."""
    s = delta.shape[0]
    flat = delta.reshape(s, -1)
    if grad.ndim == 3:
        return flat @ grad.reshape(-1)
    return flat @ grad.permute(0, 1, 3, 2).reshape(-1, grad.shape[2])


def _accumulate(
    model: "TransformerBridge", graph: ComputeGraph, suffix: Suffix, delta: Tensor, corrupted_input: Tensor,
    alpha: float, targets: list[tuple[Tensor, float]],
) -> None:
    """One forward and backward pass at ``alpha`` along the corrupted → clean input path; add
    ``weight * delta · gradient`` to each ``(scores, weight)`` of ``targets``, receiver by receiver,
    as the backward pass reaches it."""
    device = model.cfg.device
    delta = delta.to(device)
    H = graph.n_heads
    probes: list[Tensor] = []

    def probe(up: int, cols):
        def hook(act, hook):
            eps = torch.zeros_like(act, requires_grad=True)
            probes.append(eps)

            def on_grad(grad, up=up, cols=cols):
                product = dot(delta[:up], grad.float()).cpu()
                for scores, weight in targets:
                    scores[:up, cols] += weight * product

            eps.register_hook(on_grad)
            return act + eps

        return hook

    def interpolate(act, hook):
        if alpha == 1.0:  # the clean run itself (so that one step is exactly EAP)
            return act
        start = corrupted_input.to(device=act.device, dtype=act.dtype)
        return start + alpha * (act - start)

    hooks = [(site("resid_pre", 0), interpolate)]
    for layer in range(graph.n_layers):
        up = graph.before(layer)
        for kind, cols in (("q", graph.q(layer)), ("k", graph.k(layer)), ("v", graph.v(layer))):
            hooks.append((site(f"{kind}_input", layer), probe(up, cols)))
        hooks.append((site("mlp_resid_in", layer), probe(up + H, graph.mlp_in(layer))))
    final = probe(graph.n_senders, graph.logits)
    with torch.enable_grad():
        resid = run_suffix(model, suffix, hooks, final_hook=lambda act: final(act, None))
        metric = suffix.pairs.metric.from_resid(model, resid[:, -1]).float().sum()
        metric.backward(inputs=probes)
