"""Automatic circuit discovery on the offline model: what it costs.

1. EAP and EAP-IG scores for every edge of the graph on 32 IOI prompts (the issue's budget:
   EAP-IG in 60 s on this 2-core CPU);
2. one edge-patched evaluation of a circuit (every edge outside it carrying its corrupted value),
   against a plain forward pass of the same prompts;
3. what TransformerLens-style patching would take for the same evaluation: one hooked forward pass
   per edge removed. That is measured on a sample of edges and extrapolated to the circuit's
   complement (printed as an extrapolation). It also only patches one edge at a time, so it would
   not even give the same number: interactions between removed edges are what edge patching
   measures in its one pass.
"""

from __future__ import annotations

import os
import random
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(sample_edges: int = 20) -> None:
    from mechdemo.circuit_discovery import ioi_pairs, ioi_prompt_sets
    from mechdemo.circuit_discovery import IG_STEPS, edge_scores
    from mechdemo.circuit_discovery import (
        ComputeGraph, baselines, edge_patching_faithfulness, forward_to_final_resid, prune_circuit, sender_outputs,
        top_edges,
    )
    from mechdemo.interventions import switches_on
    from mechdemo.models import load_model

    model = load_model(device="cpu")
    graph = ComputeGraph.of(model)
    discovery, evaluation = ioi_prompt_sets(model)
    pairs = ioi_pairs(model, discovery)
    n = sum(p.n for p in pairs)
    print(f"{model.cfg.model_name}: {graph.n_edges:,} edges, {n} IOI prompts in {len(pairs)} token lengths, "
          f"{torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    eap = edge_scores(model, graph, pairs, steps=1)
    t_eap = time.perf_counter() - t0
    t0 = time.perf_counter()
    eap_ig = edge_scores(model, graph, pairs, steps=IG_STEPS)
    t_ig = time.perf_counter() - t0
    print(f"EAP scores, every edge:                {t_eap:6.1f} s")
    print(f"EAP-IG scores ({IG_STEPS} steps), every edge:     {t_ig:6.1f} s   (budget 60 s)")

    base = baselines(model, graph, ioi_pairs(model, evaluation))
    circuit = prune_circuit(top_edges(eap_ig, graph, 3000), graph)
    edge_patching_faithfulness(model, graph, base, circuit)  # warm-up
    t0 = time.perf_counter()
    f = edge_patching_faithfulness(model, graph, base, circuit)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in base:
            forward_to_final_resid(model, b.pairs.clean)
    t_forward = time.perf_counter() - t0
    print(f"edge-patched evaluation of a {int(circuit.sum()):,}-edge circuit: {t_eval:6.2f} s "
          f"(faithfulness {f:.3f}) = {t_eval / t_forward:.1f} plain forward passes ({t_forward:.2f} s)")

    # TransformerLens style: one hooked forward pass per removed edge (measured on a sample)
    removed = (graph.edges & ~circuit).nonzero().tolist()
    sample = random.Random(0).sample(removed, sample_edges)
    b = base[0]
    corrupted = sender_outputs(model, graph, b.pairs.corrupted)
    t0 = time.perf_counter()
    for s, r in sample:
        delta = corrupted[s]  # (the value does not matter for the timing)
        layer, j = divmod(r, graph.per_layer)
        if r == graph.logits:
            hooks, final = [], (lambda act: act + delta)
        elif j == graph.per_layer - 1:
            hooks, final = [(f"blocks.{layer}.hook_mlp_in", lambda act, hook: act + delta)], None
        else:
            kind = "q" if j < graph.n_heads else "k" if j < graph.n_heads + graph.n_kv_heads else "v"
            hooks, final = [(f"blocks.{layer}.attn.hook_{kind}_input", lambda act, hook: act + delta[:, :, None])], None
        with torch.no_grad(), switches_on(model), model.hooks(fwd_hooks=hooks):  # TransformerLens's own hooks
            forward_to_final_resid(model, b.pairs.clean, final_hook=final)
    per_edge = (time.perf_counter() - t0) / sample_edges * len(base)  # every prompt group
    print(f"TransformerLens-style, one forward per removed edge: {per_edge:.2f} s per edge (measured on "
          f"{sample_edges}) x {len(removed):,} removed edges = {per_edge * len(removed) / 3600:,.1f} h (extrapolated)")
    print(f"edge patching is {per_edge * len(removed) / t_eval:,.0f}x faster for this evaluation")


if __name__ == "__main__":
    main()
