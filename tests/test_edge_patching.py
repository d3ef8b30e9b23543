"""Edge patching and edge attribution patching (#18), checked against independent references on
random-weight GPT-2 (LayerNorm, learned positions, biases) and Llama (RMSNorm, RoPE, GQA) models:

* one edge: the TransformerLens-style patch — one hooked forward pass that adds the sender's
  ``corrupted - clean`` output to that one receiver input;
* a random set of edges: every receiver input rebuilt explicitly as the sum of its senders'
  chosen outputs plus the (constant) biases, layer by layer;
* EAP: ``(corrupted - clean) · gradient`` with the gradient taken by autograd at the receivers'
  own activations; EAP-IG with one step is EAP, and with two steps the average of the gradients at
  the two interpolated inputs.
"""

from __future__ import annotations

import random

import pytest
import torch

from mechdemo import circuit_discovery as ep
from mechdemo.circuit_discovery.eap import eap_and_eap_ig, edge_scores
from mechdemo.interventions import SWITCHES, switches_on
from mechdemo.metrics import KLToClean, LogitDifference, AnswerProbability, normalize

ARCHS = ["gpt2", "meta-llama/Llama-3.2-1B"]


@pytest.fixture(scope="module")
def tiny():
    """``tiny(arch)``: (model, graph, pairs) for a 2-layer random model and two prompt groups."""
    from mechdemo.models import offline_vocab_size, random_model

    built = {}

    def get(arch: str):
        if arch not in built:
            model = random_model(arch, n_layers=2, seed=3, vocab_size=offline_vocab_size(),
                                 d_model=256 if arch == "gpt2" else 512)  # 4 heads; 8 heads in 2 K/V groups
            g = torch.Generator().manual_seed(0)
            groups = []
            for n, pos in ((3, 7), (2, 9)):  # two token lengths
                clean = torch.randint(100, 5000, (n, pos), generator=g)
                corrupted = clean.clone()
                corrupted[:, pos // 2] = torch.randint(100, 5000, (n,), generator=g)  # one token differs
                correct, incorrect = torch.randint(100, 5000, (n,), generator=g), torch.randint(100, 5000, (n,), generator=g)
                groups.append(ep.PromptPairs(clean, corrupted, LogitDifference(correct, incorrect)))
            built[arch] = (model, ep.ComputeGraph.of(model), groups)
        return built[arch]

    return get


def _metric_of(model, pairs, resid):
    return pairs.metric.from_resid(model, resid[:, -1]).float().mean().item()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_graph_counts_edges_as_the_papers_do(arch, tiny):
    model, graph, _ = tiny(arch)
    H, K, L = graph.n_heads, graph.n_kv_heads, graph.n_layers
    expected = sum((2 * K + H) * (1 + layer * (H + 1)) + (1 + layer * (H + 1) + H) for layer in range(L)) + graph.n_senders
    assert graph.n_edges == expected
    # GPT-2 small's full graph: 32,491 edges, as in Hanna et al. 2024
    assert ep.ComputeGraph(12, 12, 12).n_edges == 32491
    names = {graph.receiver_name(j) for j in range(graph.n_receivers)}
    assert len(names) == graph.n_receivers and "logits" in names
    assert (f"a1.kv0<k>" in names) == (K < H)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_edge_equals_a_hooked_forward_pass_per_edge(arch, tiny):
    model, graph, groups = tiny(arch)
    pairs = groups[0]
    base = ep.baselines(model, graph, [pairs])
    clean_out = ep.sender_outputs(model, graph, pairs.clean)
    corr_out = ep.sender_outputs(model, graph, pairs.corrupted)
    edges = graph.edges.nonzero().tolist()
    rng = random.Random(0)
    for s, r in rng.sample(edges, 12) + [[0, graph.logits]]:
        circuit = graph.edges.clone()
        circuit[s, r] = False
        fast = ep.edge_patching_faithfulness(model, graph, base, circuit)
        delta = corr_out[s] - clean_out[s]
        layer, j = divmod(r, graph.per_layer)
        hooks, final = [], None
        if r == graph.logits:
            final = lambda act: act + delta  # noqa: E731
        elif j < graph.per_layer - 1:
            kind, col = ("q", j) if j < graph.n_heads else ("k", j - graph.n_heads) if j < graph.n_heads + graph.n_kv_heads \
                else ("v", j - graph.n_heads - graph.n_kv_heads)

            def patch(act, hook, col=col):
                act = act.clone()
                act[:, :, col] += delta
                return act

            hooks = [(f"blocks.{layer}.attn.hook_{kind}_input", patch)]
        else:
            hooks = [(f"blocks.{layer}.hook_mlp_in", lambda act, hook: act + delta)]
        with torch.no_grad(), switches_on(model):
            resid = ep.forward_to_final_resid(model, pairs.clean, hooks, final_hook=final)
        naive = normalize(_metric_of(model, pairs, resid), base[0].clean_value, base[0].corrupted_value)
        assert fast == pytest.approx(naive, abs=1e-4), graph.edge_name(s, r)


def _explicit_sum_run(model, graph, pairs, circuit):
    """The reference for a set of edges: each receiver input rebuilt as Σ senders' chosen outputs +
    biases, where the biases are what the clean residual stream holds beyond its senders' sum."""
    clean_out = ep.sender_outputs(model, graph, pairs.clean)
    corr_out = ep.sender_outputs(model, graph, pairs.corrupted)
    # the residual stream at each receiver on the clean run, and the senders feeding it
    seen = {}

    def keep(name):
        def hook(act, hook):
            seen[name] = act.detach().float()
            return act

        return hook

    names = [f"blocks.{l}.hook_resid_pre" for l in range(graph.n_layers)] + \
            [f"blocks.{l}.hook_mlp_in" for l in range(graph.n_layers)]
    with torch.no_grad(), switches_on(model):
        seen["final"] = ep.forward_to_final_resid(model, pairs.clean, [(n, keep(n)) for n in names]).float()
    bias = {}
    for l in range(graph.n_layers):
        bias[("attn", l)] = seen[f"blocks.{l}.hook_resid_pre"] - clean_out[: graph.before(l)].sum(0)
        bias[("mlp", l)] = seen[f"blocks.{l}.hook_mlp_in"] - clean_out[: graph.before(l) + graph.n_heads].sum(0)
    bias["final"] = seen["final"] - clean_out.sum(0)

    current = torch.zeros_like(clean_out)

    def chosen(receiver: int, up: int):
        use = circuit[:up, receiver].float()[:, None, None, None]
        return (use * current[:up] + (1 - use) * corr_out[:up]).sum(0)

    def record(index, heads=False):
        def hook(act, hook):
            current[index] = (act.permute(2, 0, 1, 3) if heads else act).detach().float()
            return act

        return hook

    def rebuild(kind, layer):
        def hook(act, hook):
            out = act.clone()
            cols = {"q": graph.q(layer), "k": graph.k(layer), "v": graph.v(layer)}[kind]
            for i, r in enumerate(range(cols.start, cols.stop)):
                out[:, :, i] = chosen(r, graph.before(layer)) + bias[("attn", layer)]
            return out

        return hook

    hooks = [("blocks.0.hook_resid_pre", record(0))]
    for layer in range(graph.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_{k}_input", rebuild(k, layer)) for k in "qkv"]
        heads = slice(graph.head(layer, 0), graph.head(layer, 0) + graph.n_heads)
        hooks.append((f"blocks.{layer}.attn.hook_result", record(heads, heads=True)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", lambda act, hook, layer=layer:
                      chosen(graph.mlp_in(layer), graph.before(layer) + graph.n_heads) + bias[("mlp", layer)]))
        hooks.append((f"blocks.{layer}.hook_mlp_out", record(graph.mlp(layer))))
    with torch.no_grad(), switches_on(model):
        return ep.forward_to_final_resid(model, pairs.clean, hooks,
                                         final_hook=lambda act: chosen(graph.logits, graph.n_senders) + bias["final"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
def test_random_circuits_equal_the_explicit_sum_of_chosen_outputs(arch, density, tiny):
    model, graph, groups = tiny(arch)
    base = ep.baselines(model, graph, groups)
    g = torch.Generator().manual_seed(int(density * 100))
    circuit = (torch.rand(graph.n_senders, graph.n_receivers, generator=g) < density) & graph.edges
    values = []
    for pairs in groups:
        values.append(_metric_of(model, pairs, _explicit_sum_run(model, graph, pairs, circuit)))
    weights = [p.n for p in groups]
    naive = normalize(sum(v * w for v, w in zip(values, weights)) / sum(weights),
                      sum(b.clean_value * b.pairs.n for b in base) / sum(weights),
                      sum(b.corrupted_value * b.pairs.n for b in base) / sum(weights))
    assert ep.edge_patching_faithfulness(model, graph, base, circuit) == pytest.approx(naive, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("metric", ["logit_diff", "probability", "kl"])
def test_the_full_graph_scores_one_and_the_empty_circuit_zero_for_any_metric(arch, metric, tiny):
    model, graph, groups = tiny(arch)
    regrouped = []
    for p in groups:
        if metric == "logit_diff":
            m = p.metric
        elif metric == "probability":
            m = AnswerProbability(p.metric.correct)
        else:
            with torch.no_grad():
                clean_end = ep.forward_to_final_resid(model, p.clean)[:, -1]
                from mechdemo.readout import logits_from_resid

                m = KLToClean(logits_from_resid(model, clean_end))
        regrouped.append(ep.PromptPairs(p.clean, p.corrupted, m))
    base = ep.baselines(model, graph, regrouped)
    for b in base:  # run (on the suffix, with the prefix cached), not the shortcut faithfulness() takes
        for circuit, expected in ((graph.edges, b.clean_value), (graph.empty(), b.corrupted_value)):
            resid = ep.edge_patched_resid(model, graph, b, circuit)
            assert resid.shape[1] == b.pairs.clean.shape[1] - b.pairs.prefix
            assert _metric_of(model, b.pairs, resid) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert ep.edge_patching_faithfulness(model, graph, base, graph.edges) == 1.0
    assert ep.edge_patching_faithfulness(model, graph, base, graph.empty()) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_drops_only_edges_that_change_nothing(arch, tiny):
    model, graph, groups = tiny(arch)
    base = ep.baselines(model, graph, groups)
    scores = ep.random_scores(graph, seed=1)
    for n in (5, 40, 200):
        circuit = ep.top_edges(scores, graph, n)
        pruned = ep.prune_circuit(circuit, graph)
        assert int(circuit.sum()) == min(n, graph.n_edges) and bool((pruned <= circuit).all())
        assert ep.edge_patching_faithfulness(model, graph, base, pruned) == pytest.approx(ep.edge_patching_faithfulness(model, graph, base, circuit),
                                                                            abs=1e-4)
    assert torch.equal(ep.prune_circuit(graph.edges, graph), graph.edges)


@pytest.mark.parametrize("arch", ARCHS)
def test_several_circuits_in_one_pass_equal_one_pass_each(arch, tiny):
    model, graph, groups = tiny(arch)
    base = ep.baselines(model, graph, groups)
    g = torch.Generator().manual_seed(7)
    circuits = [(torch.rand(graph.n_senders, graph.n_receivers, generator=g) < d) & graph.edges for d in (0.03, 0.5, 0.9)]
    circuits += [graph.empty(), graph.edges]
    together = ep.edge_patching_faithfulness_many(model, graph, base, circuits)
    alone = [ep.edge_patching_faithfulness(model, graph, base, c) for c in circuits]
    assert together == pytest.approx(alone, abs=1e-4) and together[-2:] == [0.0, 1.0]  # (batched sums round apart)
    for b in base:  # the copies' residual streams too
        many = ep.edge_patched_resid(model, graph, b, circuits[:3])
        for c, circuit in enumerate(circuits[:3]):
            torch.testing.assert_close(many[c], ep.edge_patched_resid(model, graph, b, circuit), atol=1e-4, rtol=1e-4)


def _autograd_reference(model, graph, groups, alphas):
    """EAP(-IG) by hand: retain_grad on the receivers' own activations, one backward per α."""
    total = sum(p.n for p in groups)
    scores = torch.zeros(graph.n_senders, graph.n_receivers)
    for p in groups:
        clean_out = ep.sender_outputs(model, graph, p.clean)
        corr_out = ep.sender_outputs(model, graph, p.corrupted)
        delta = corr_out - clean_out
        for alpha in alphas:
            acts = {}

            def keep(name):
                def hook(act, hook):
                    act = act.clone()  # (the hook's input may also be the residual stream itself:
                    act.retain_grad()  # only the receiver's copy must collect the gradient)
                    acts[name] = act
                    return act

                return hook

            def start(act, hook, alpha=alpha):
                return corr_out[0] + alpha * (act - corr_out[0])

            hooks = [("blocks.0.hook_resid_pre", start)] if alpha != 1 else []
            for l in range(graph.n_layers):
                hooks += [(f"blocks.{l}.attn.hook_{k}_input", keep(f"{k}{l}")) for k in "qkv"]
                hooks.append((f"blocks.{l}.hook_mlp_in", keep(f"m{l}")))
            with torch.enable_grad(), switches_on(model):
                final = ep.forward_to_final_resid(model, p.clean, hooks)
                final.retain_grad()
                p.metric.from_resid(model, final[:, -1]).sum().backward()
            model.zero_grad(set_to_none=True)
            for l in range(graph.n_layers):
                up = graph.before(l)
                for k, cols in (("q", graph.q(l)), ("k", graph.k(l)), ("v", graph.v(l))):
                    grad = acts[f"{k}{l}"].grad
                    for i, r in enumerate(range(cols.start, cols.stop)):
                        scores[:up, r] += (delta[:up] * grad[:, :, i]).sum((1, 2, 3)) / total / len(alphas)
                grad = acts[f"m{l}"].grad
                scores[: up + graph.n_heads, graph.mlp_in(l)] += (delta[: up + graph.n_heads] * grad).sum((1, 2, 3)) / total / len(alphas)
            scores[:, graph.logits] += (delta * final.grad).sum((1, 2, 3)) / total / len(alphas)
    return scores


@pytest.mark.parametrize("arch", ARCHS)
def test_eap_scores_equal_delta_times_the_autograd_gradient(arch, tiny):
    model, graph, groups = tiny(arch)
    eap = edge_scores(model, graph, groups, steps=1)
    reference = _autograd_reference(model, graph, groups, [1.0])
    torch.testing.assert_close(eap, reference, rtol=1e-4, atol=1e-5)
    assert bool((eap[~graph.edges] == 0).all()) and eap.abs().sum() > 0
    assert torch.equal(edge_scores(model, graph, groups, steps=1), eap)  # deterministic


@pytest.mark.parametrize("arch", ARCHS)
def test_eap_ig_averages_the_gradient_along_the_input_path(arch, tiny):
    model, graph, groups = tiny(arch)
    ig = edge_scores(model, graph, groups, steps=2)
    torch.testing.assert_close(ig, _autograd_reference(model, graph, groups, [0.5, 1.0]), rtol=1e-4, atol=1e-5)
    eap = edge_scores(model, graph, groups, steps=1)
    assert not torch.allclose(ig, eap)
    both = eap_and_eap_ig(model, graph, groups, steps=2)  # EAP from EAP-IG's last pass (α = 1)
    torch.testing.assert_close(both["eap-ig"], ig, rtol=0, atol=0)
    torch.testing.assert_close(both["eap"], eap, rtol=1e-6, atol=1e-7)


def test_switches_on_restores_the_model(tiny):
    model, graph, groups = tiny("gpt2")
    flags = {f: bool(getattr(model.cfg, f, False)) for f in SWITCHES}
    with switches_on(model):
        assert all(getattr(model.cfg, f) for f in SWITCHES)
    assert {f: bool(getattr(model.cfg, f, False)) for f in SWITCHES} == flags
