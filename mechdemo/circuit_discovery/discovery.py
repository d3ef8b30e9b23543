"""Automatic circuit discovery on IOI: score every edge, keep the top ones, measure what they do.

:mod:`mechdemo.ioi.circuit` finds the IOI circuit by hand, as Wang et al. (2022) did: path-patching
scans and roles read from attention patterns. The field now finds circuits automatically
(ACDC, Conmy et al. 2023; EAP, Syed et al. 2023; EAP-IG, Hanna et al. 2024):

1. **score** every edge of the model's graph (:mod:`mechdemo.circuit_discovery.graph`: ~70,000 edges for
   SmolLM2-135M, 32,491 for GPT-2 small) on *discovery* prompts, by EAP or EAP-IG
   (:mod:`mechdemo.circuit_discovery.eap`);
2. **build** circuits of increasing size from the top ``|score|`` edges, pruned of edges that can
   change nothing (:func:`mechdemo.circuit_discovery.graph.prune_circuit`);
3. **measure** each by real edge patching on *held-out* prompts (other names, places, objects;
   another seed): the **faithfulness curve**, normalised metric against number of edges. Random
   edges of the same sizes are the control: a method earns its keep by reaching high
   faithfulness with far fewer edges than chance.

The hand-found circuit is measured the same way (:func:`node_circuit`: every edge among its heads,
the embeddings, every MLP and the logits: the MLPs stay, as in Wang et al.'s evaluation), and the
smallest EAP-IG circuit that is at least as faithful is reported with the roles of the heads it
shares with it.

:func:`smallest_circuit` finds the smallest top-``n`` circuit reaching a faithfulness by
narrowing a bracket on ``n`` (to within 5 %), starting from the curve's points: faithfulness grows with ``n``
only roughly (adding an edge can also remove a compensating one), so the answer is the smallest
*on that search path*, always measured, never interpolated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from mechdemo.circuit_discovery.eap import IG_STEPS, METHODS, eap_and_eap_ig
from mechdemo.circuit_discovery.edge_patching import (
    Baseline, PromptPairs, baselines, edge_patching_faithfulness, edge_patching_faithfulness_many,
)
from mechdemo.circuit_discovery.graph import (
    ComputeGraph, edge_list, heads_in, node_circuit, prune_circuit, random_scores, top_edges,
)
from mechdemo.ioi import IOIBatch, ioi_batches
from mechdemo.metrics import make_metric

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DISCOVERY_SEED, EVALUATION_SEED = 0, 1  # different names, places and objects
TEMPLATES = (0, 1, 2, 3)
N_PER_TEMPLATE = 8  # 32 prompts for discovery
N_HELD_OUT_PER_TEMPLATE = 8  # 32 held out
TARGET = 0.8


def steps_of(method: str) -> int:
    """Integration steps of a method: EAP is EAP-IG with one step (the clean run)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return 1 if method == "eap" else IG_STEPS


def ioi_pairs(model: "TransformerBridge", batches: Sequence[IOIBatch], metric: str = "logit_diff") -> list[PromptPairs]:
    """IOI batches (one per template / token length) as clean/corrupted pairs with ``metric``."""
    pairs = []
    for b in batches:
        clean_end = None
        if metric == "kl":
            with torch.no_grad():
                clean_end = model(b.tokens.to(model.cfg.device))[:, -1]
        pairs.append(PromptPairs(b.tokens, b.corrupted_tokens, make_metric(metric, b.correct, b.incorrect, clean_end)))
    return pairs


def ioi_prompt_sets(model: "TransformerBridge", n_per_template: int = N_PER_TEMPLATE,
                    templates: Sequence[int] = TEMPLATES, n_held_out: int | None = None,
                    seed: int = 0) -> tuple[list[IOIBatch], list[IOIBatch]]:
    """Discovery and held-out evaluation prompts: same templates, another seed (other names, places
    and objects); ``n_held_out`` per template (default :data:`N_HELD_OUT_PER_TEMPLATE`, at most
    ``n_per_template``). ``seed`` shifts both seeds (another draw of both sets)."""
    n_held_out = min(n_per_template, N_HELD_OUT_PER_TEMPLATE) if n_held_out is None else n_held_out
    return (ioi_batches(model, n_per_template, DISCOVERY_SEED + seed, list(templates)),
            ioi_batches(model, n_held_out, EVALUATION_SEED + seed, list(templates)))


def split_prompts(batches: Sequence[IOIBatch]) -> tuple[list[IOIBatch], list[IOIBatch]]:
    """A user's prompts (:func:`mechdemo.ioi.load_prompts`, batches by token length) split in file order:
    odd lines find the circuit, even lines measure it (so the two sets come from the same file, and
    a circuit is never measured on the prompts it was found on)."""
    from mechdemo.errors import MechdemoError

    discovery, evaluation = [], []
    for b in batches:
        for half, parity in ((discovery, 0), (evaluation, 1)):
            keep = [i for i, r in enumerate(b.rows) if r % 2 == parity]
            if keep:
                half.append(b.subset(keep))
    if not discovery or not evaluation:
        source = batches[0].source if batches else "the prompt file"
        raise MechdemoError(f"{source} holds one prompt: circuit discovery needs at least two (odd lines find the "
                            "circuit, even lines measure it)")
    return discovery, evaluation


def curve_sizes(n_edges: int, per_decade: int = 2, smallest: int = 10) -> list[int]:
    """Circuit sizes for a curve: ``per_decade`` log-spaced sizes per factor of 10, up to the whole graph."""
    sizes, k = [], 0
    while True:
        n = int(round(smallest * 10 ** (k / per_decade)))
        if n >= n_edges:
            return sorted(set(sizes)) + [n_edges]
        sizes.append(n)
        k += 1


def faithfulness_curve(
    model: "TransformerBridge", graph: ComputeGraph, base: Sequence[Baseline], scores: Float[Tensor, "s r"],
    sizes: Iterable[int],
) -> list[dict]:
    """``[{"top": n, "edges": pruned size, "faithfulness": f}]`` for the top-``n`` circuits of ``scores``."""
    sizes = list(sizes)
    circuits = [prune_circuit(top_edges(scores, graph, n), graph) for n in sizes]
    values = edge_patching_faithfulness_many(model, graph, base, circuits)  # several circuits per forward pass
    return [{"top": n, "edges": int(c.sum()), "faithfulness": f} for n, c, f in zip(sizes, circuits, values)]


def smallest_circuit(
    model: "TransformerBridge", graph: ComputeGraph, base: Sequence[Baseline], scores: Float[Tensor, "s r"], target: float,
    curve: Sequence[dict] = (), rel_tol: float = 0.05, probes: int = 3,
) -> dict:
    """The smallest top-``n`` circuit (pruned) whose faithfulness is at least ``target``, to within
    ``rel_tol`` of ``n``: bracketed by the points of ``curve`` already measured (the smallest
    reaching the target, the largest before it that does not), then narrowed by measuring
    ``probes`` sizes spaced evenly on a log scale inside the bracket per round (in one batched
    pass). ``reached`` is False if not even the whole graph does (a target above 1)."""
    measured = {p["top"]: p["faithfulness"] for p in curve}

    def measure(ns: list[int]) -> None:
        new = [n for n in dict.fromkeys(ns) if n not in measured]
        circuits = [prune_circuit(top_edges(scores, graph, n), graph) for n in new]
        measured.update(zip(new, edge_patching_faithfulness_many(model, graph, base, circuits)))

    reaching = [n for n in sorted(measured) if measured[n] >= target]
    hi = reaching[0] if reaching else graph.n_edges
    measure([hi])
    if measured[hi] < target:  # not even the whole graph
        return {"top": hi, "edges": graph.n_edges, "faithfulness": measured[hi], "reached": False}
    lo = max((n for n in measured if n < hi and measured[n] < target), default=0)
    while hi - lo > 1 and hi > lo * (1 + rel_tol):
        base_lo = max(lo, 1)
        inside = sorted({min(max(int(round(base_lo * (hi / base_lo) ** (j / (probes + 1)))), lo + 1), hi - 1)
                         for j in range(1, probes + 1)})
        measure(inside)
        hi = min([n for n in inside if measured[n] >= target], default=hi)
        lo = max([n for n in inside if n < hi and measured[n] < target] + [lo])
    circuit = prune_circuit(top_edges(scores, graph, hi), graph)
    return {"top": hi, "edges": int(circuit.sum()), "faithfulness": measured[hi], "reached": True, "circuit": circuit}


def discover_circuit(
    model: "TransformerBridge",
    discovery: Sequence[IOIBatch],
    evaluation: Sequence[IOIBatch],
    method: str = "eap-ig",
    metric: str = "logit_diff",
    edges: int | None = None,
    target: float | None = TARGET,
    top: int = 20,
    progress: bool = False,
) -> dict:
    """Find one circuit: ``method``'s edge scores on the ``discovery`` prompts, then either the top
    ``edges`` edges (pruned) or the smallest top-scoring circuit at least ``target`` faithful, measured by
    edge patching on the ``evaluation`` prompts. What ``mechdemo circuit`` prints, as JSON-able numbers
    (the circuit itself, a boolean ``[n_senders, n_receivers]`` tensor, under ``"tensor"``)."""
    if (edges is None) == (target is None):
        raise ValueError("give either edges (a circuit size) or target (a faithfulness to reach), not both")
    graph = ComputeGraph.of(model)
    steps = steps_of(method)
    start = time.perf_counter()
    scores = eap_and_eap_ig(model, graph, ioi_pairs(model, discovery, metric), steps, progress)[
        "eap-ig" if steps > 1 else "eap"]
    seconds = {"scores": round(time.perf_counter() - start, 2)}
    base = baselines(model, graph, ioi_pairs(model, evaluation, metric))
    start = time.perf_counter()
    if edges is not None:
        circuit = prune_circuit(top_edges(scores, graph, edges), graph)
        found = {"top": edges, "edges": int(circuit.sum()),
                 "faithfulness": edge_patching_faithfulness(model, graph, base, circuit)}
    else:
        result = smallest_circuit(model, graph, base, scores, target)
        circuit = result.get("circuit", graph.edges)
        found = {**_public(result), "target": target}
    seconds["evaluation"] = round(time.perf_counter() - start, 2)
    found["fraction"] = found["edges"] / graph.n_edges
    found["heads"] = [list(h) for h in heads_in(graph, circuit)]
    return {
        "method": method, "ig_steps": steps, "metric": metric, "n_edges": graph.n_edges,
        "n_prompts": {"discovery": sum(len(b) for b in discovery), "evaluation": sum(len(b) for b in evaluation)},
        "clean_value": _mean([b.clean_value for b in base], [b.pairs.n for b in base]),
        "corrupted_value": _mean([b.corrupted_value for b in base], [b.pairs.n for b in base]),
        "top_edges": edge_list(graph, scores, limit=top), "circuit": found,
        "circuit_edges": [e["edge"] for e in edge_list(graph, scores, circuit)], "seconds": seconds,
        "tensor": circuit,
    }


def discover_ioi(
    model: "TransformerBridge",
    role_heads: dict[str, list[tuple[int, int]]] | None = None,
    n_per_template: int = N_PER_TEMPLATE,
    templates: Sequence[int] = TEMPLATES,
    target: float = TARGET,
    metric: str = "logit_diff",
    per_decade: int = 2,
    progress: bool = False,
) -> dict:
    """Everything the deck and the CLI report: EAP and EAP-IG scores on the discovery prompts; the
    faithfulness curves of EAP, EAP-IG and random edges on the held-out prompts; the smallest EAP-IG
    circuit reaching ``target``, and (given the hand-found circuit's ``role_heads``, role → heads)
    that circuit's faithfulness and the smallest EAP-IG circuit at least as faithful.

    Returns JSON-able numbers plus, under ``"tensors"``, the scores and circuits (not JSON)."""
    graph = ComputeGraph.of(model)
    discovery, evaluation = ioi_prompt_sets(model, n_per_template, templates)
    seconds = {}
    start = time.perf_counter()
    scores = eap_and_eap_ig(model, graph, ioi_pairs(model, discovery, metric), IG_STEPS, progress=progress)
    seconds["scores"] = time.perf_counter() - start
    scores["random"] = random_scores(graph, seed=0)
    base = baselines(model, graph, ioi_pairs(model, evaluation, metric))
    sizes = curve_sizes(graph.n_edges, per_decade)
    curves = {}
    start = time.perf_counter()
    for name in ("eap-ig", "eap", "random"):
        curves[name] = faithfulness_curve(model, graph, base, scores[name], sizes)
    seconds["curves"] = time.perf_counter() - start
    seconds["per_evaluation"] = seconds["curves"] / (3 * len(sizes))
    at_target = smallest_circuit(model, graph, base, scores["eap-ig"], target, curves["eap-ig"])
    out = {
        "metric": metric, "ig_steps": IG_STEPS, "n_edges": graph.n_edges,
        "graph": {"n_senders": graph.n_senders, "n_receivers": graph.n_receivers, "n_layers": graph.n_layers,
                  "n_heads": graph.n_heads, "n_kv_heads": graph.n_kv_heads},
        "prompts": {"discovery": {"seed": DISCOVERY_SEED, "templates": list(templates), "n": sum(len(b) for b in discovery)},
                    "evaluation": {"seed": EVALUATION_SEED, "templates": list(templates),
                                   "n": sum(len(b) for b in evaluation)}},
        "clean_value": _mean([b.clean_value for b in base], [b.pairs.n for b in base]),
        "corrupted_value": _mean([b.corrupted_value for b in base], [b.pairs.n for b in base]),
        "curves": curves,
        "at_target": {"target": target, **_public(at_target), "fraction": at_target["edges"] / graph.n_edges,
                      "heads": [list(h) for h in heads_in(graph, at_target.get("circuit", graph.edges))]},
        "top_edges": edge_list(graph, scores["eap-ig"], limit=20),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    tensors = {"scores": scores, "at_target": at_target.get("circuit", graph.edges)}
    if role_heads:
        heads = sorted({tuple(h) for group in role_heads.values() for h in group})
        hand = node_circuit(graph, heads)
        hand_faith = edge_patching_faithfulness(model, graph, base, hand)
        matching = smallest_circuit(model, graph, base, scores["eap-ig"], hand_faith, curves["eap-ig"])
        found = set(heads_in(graph, at_target.get("circuit", graph.edges)))
        out["path_patching"] = {"heads": [list(h) for h in heads], "edges": int(hand.sum()),
                                "faithfulness": hand_faith,
                                "eap_ig_matching": {**_public(matching), "fraction": matching["edges"] / graph.n_edges},
                                "roles_at_target": {role: [list(h) for h in group if tuple(h) in found]
                                                    for role, group in role_heads.items()}}
        tensors["path_patching"] = hand
    out["tensors"] = tensors
    return out


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "circuit"}


def _mean(values: Sequence[float], weights: Sequence[int]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)
