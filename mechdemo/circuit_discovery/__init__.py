"""Automatic circuit discovery: the model's computational graph, exact edge patching, EAP / EAP-IG
edge scores, and the pipeline that finds and measures a circuit.

* :mod:`~mechdemo.circuit_discovery.graph`: the graph of components and edges, circuits as sets of edges;
* :mod:`~mechdemo.circuit_discovery.edge_patching`: a circuit's faithfulness, by patching every edge outside it;
* :mod:`~mechdemo.circuit_discovery.eap`: a score for every edge from a few backward passes (EAP, EAP-IG);
* :mod:`~mechdemo.circuit_discovery.discovery`: score, keep the top edges, measure on held-out prompts.
"""

from mechdemo.circuit_discovery.discovery import (
    DISCOVERY_SEED, EVALUATION_SEED, N_HELD_OUT_PER_TEMPLATE, N_PER_TEMPLATE, TARGET, TEMPLATES, curve_sizes,
    discover_circuit, discover_ioi, faithfulness_curve, ioi_pairs, ioi_prompt_sets, smallest_circuit,
    split_prompts, steps_of,
)
from mechdemo.circuit_discovery.eap import IG_STEPS, METHODS, eap_and_eap_ig, edge_scores
from mechdemo.circuit_discovery.edge_patching import (
    MAX_COPIES, Baseline, PromptPairs, Suffix, baselines, edge_patched_resid, edge_patching_faithfulness,
    edge_patching_faithfulness_many, forward_to_final_resid, mix, run_suffix, sender_outputs, suffix_of,
)
from mechdemo.circuit_discovery.graph import (
    ComputeGraph, edge_list, heads_in, node_circuit, prune_circuit, random_scores, top_edges,
)

__all__ = [
    "DISCOVERY_SEED", "EVALUATION_SEED", "IG_STEPS", "MAX_COPIES", "METHODS", "N_HELD_OUT_PER_TEMPLATE",
    "N_PER_TEMPLATE", "TARGET", "TEMPLATES", "Baseline", "ComputeGraph", "PromptPairs", "Suffix", "baselines",
    "curve_sizes", "discover_circuit", "discover_ioi", "eap_and_eap_ig", "edge_list", "edge_patched_resid",
    "edge_patching_faithfulness", "edge_patching_faithfulness_many", "edge_scores", "faithfulness_curve",
    "forward_to_final_resid", "heads_in", "ioi_pairs", "ioi_prompt_sets", "mix", "node_circuit", "prune_circuit",
    "random_scores", "run_suffix", "sender_outputs", "smallest_circuit", "split_prompts", "steps_of", "suffix_of",
    "top_edges",
]
