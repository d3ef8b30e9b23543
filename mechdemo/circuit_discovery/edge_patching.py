"""Edge patching: the exact evaluation of a circuit of the model's computational graph.

The graph (:mod:`mechdemo.circuit_discovery.graph`) has an edge from every component's output to
every later component's input. A **circuit** is a set of edges. It is evaluated by **edge patching** (Wang et al. 2022's path
patching generalised by Conmy et al. 2023 for ACDC and Hanna et al. 2024 for EAP-IG): run the
clean prompts, but every edge *outside* the circuit carries the sender's output on the
**corrupted** prompts instead of its current one. In one forward pass:

    input of receiver r  =  residual stream at r  +  Σ_{s → r not in circuit} (out_s(corrupted) - out_s(current))

where ``out_s(current)`` is the sender's output in this very (patched) run, recorded as the pass
reaches it. The circuit's **faithfulness** is the metric of that run on the 0 (corrupted) .. 1
(clean) scale (:mod:`mechdemo.metrics`): the full graph gives exactly 1 and the empty circuit
exactly 0 (every input is then the corrupted one), whatever the metric.

This is one forward pass per circuit, whatever its size, and over the positions from the first
clean/corrupted difference on only: before it, every activation is the same in every run, so its
keys and values are cached once (:class:`Suffix`, as in :mod:`mechdemo.patching`).
TransformerLens-style patching, one hooked forward pass per edge, would need ~70,000 for
SmolLM2-135M (``benchmarks/bench_circuit.py`` measures both). The hook points are TransformerBridge's own: per-head Q/K/V inputs
(``use_split_qkv_input``), per-head outputs (``use_attn_result``) and the MLP input
(``use_hook_mlp_in``), switched on around every run here (:func:`mechdemo.interventions.switches_on`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechdemo.circuit_discovery.graph import ComputeGraph
from mechdemo.forward import BlockContext, block_context, run_blocks
from mechdemo.interventions import run, site, switches_on
from mechdemo.metrics import Metric, normalize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

INPUT = site("resid_pre", 0)  # the embeddings: the input node's output
FINAL = site("final")  # the logits' receiver


def forward_to_final_resid(
    model: "TransformerBridge", tokens: Int[Tensor, "n pos"], hooks: Sequence[tuple[str, Callable]] = (),
    final_hook: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, "n pos d_model"]:
    """Run ``tokens`` with ``hooks`` up to the final residual stream (the input of the final norm:
    the unembedding of every position is not needed).

    ``final_hook`` may change that residual stream (the logits' receiver); gradients flow through
    the result as usual.
    """
    hooks = list(hooks)
    if final_hook is not None:
        hooks.append((FINAL, lambda act, hook: final_hook(act)))
    _, kept = run(model, tokens, hooks, stop_after=FINAL)
    return kept[FINAL]


def sender_outputs(
    model: "TransformerBridge", graph: ComputeGraph, tokens: Int[Tensor, "n pos"]
) -> Float[Tensor, "n_senders n pos d_model"]:
    """Every sender's output on ``tokens``: embeddings, each head's ``z @ W_O``, each MLP's output."""
    n, pos = tokens.shape
    out = torch.empty(graph.n_senders, n, pos, model.cfg.d_model)

    def keep(index: int | slice, heads: bool = False):
        def hook(act, hook):
            out[index] = (act.permute(2, 0, 1, 3) if heads else act).detach().float().cpu()
            return act

        return hook

    hooks = [(INPUT, keep(0))]
    for layer in range(graph.n_layers):
        hooks.append((site("result", layer),
                      keep(slice(graph.head(layer, 0), graph.head(layer, 0) + graph.n_heads), heads=True)))
        hooks.append((site("mlp_out", layer), keep(graph.mlp(layer))))
    with torch.no_grad(), switches_on(model):
        forward_to_final_resid(model, tokens, hooks)
    return out


@dataclass
class PromptPairs:
    """Equal-length clean and corrupted prompts (aligned positions) and the metric on them.

    Prompts of different lengths go in different ``PromptPairs``; functions here take a list."""

    clean: Int[Tensor, "n pos"]
    corrupted: Int[Tensor, "n pos"]
    metric: Metric

    def __post_init__(self):
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} prompts "
                             "differ in shape: pairs must have the same token length")

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    @property
    def prefix(self) -> int:
        """Positions before the first one where a clean and its corrupted prompt differ: every
        activation there is the same in the clean, the corrupted and any patched run (attention is
        causal), so runs compute the positions from here on, with the prefix's keys and values cached."""
        differs = (self.clean != self.corrupted).any(0).nonzero().flatten()
        if len(differs) == 0:
            raise ValueError("the clean and corrupted prompts are identical: nothing to patch")
        return int(differs[0])


@dataclass
class Suffix:
    """A clean run from ``pairs.prefix`` on: the prefix's keys and values (``context``) and the
    embeddings of the later positions (``clean_input``), the input of :func:`run_suffix`."""

    pairs: PromptPairs
    context: BlockContext
    clean_input: Float[Tensor, "n suffix d_model"]

    @property
    def prefix(self) -> int:
        return self.context.prefix_len


def suffix_of(model: "TransformerBridge", pairs: PromptPairs) -> Suffix:
    p = pairs.prefix
    kept: dict[str, Tensor] = {}

    def keep(act, hook):
        kept["x"] = act.detach()
        return act

    with torch.no_grad():
        forward_to_final_resid(model, pairs.clean, [(INPUT, keep)])
    return Suffix(pairs, block_context(model, pairs.clean, prefix_len=p), kept["x"][:, p:])


def run_suffix(
    model: "TransformerBridge", suffix: Suffix, hooks: Sequence[tuple[str, Callable]] = (),
    final_hook: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, "n suffix d_model"]:
    """The final residual stream at the suffix positions of the clean prompts, with ``hooks`` (under
    :func:`mechdemo.interventions.switches_on`: the hooks see suffix positions only) and ``final_hook`` on the result."""
    with switches_on(model):
        final = run_blocks(model, suffix.clean_input, 0, suffix.context, fwd_hooks=hooks)
    return final_hook(final) if final_hook is not None else final


@dataclass
class Baseline:
    """What every evaluation of one :class:`PromptPairs` reuses: the clean run's suffix; the
    senders' outputs and the residual stream at every receiver on the corrupted run (suffix
    positions); the metric's mean on the clean and on the corrupted run."""

    suffix: Suffix
    corrupted_out: Float[Tensor, "n_senders n suffix d_model"]
    corrupted_resid: Float[Tensor, "where n suffix d_model"]  # per layer: attention input, MLP input; then final
    clean_value: float
    corrupted_value: float

    @property
    def pairs(self) -> PromptPairs:
        return self.suffix.pairs


def _corrupted_resid(model: "TransformerBridge", graph: ComputeGraph, tokens: Int[Tensor, "n pos"]) -> Tensor:
    out = []

    def keep(act, hook):
        out.append(act.detach().float().cpu())
        return act

    hooks = []
    for layer in range(graph.n_layers):
        hooks += [(site("resid_pre", layer), keep), (site("mlp_resid_in", layer), keep)]
    with torch.no_grad(), switches_on(model):
        final = forward_to_final_resid(model, tokens, hooks)
    return torch.stack([*out, final.float().cpu()])


def baselines(model: "TransformerBridge", graph: ComputeGraph, pairs: Sequence[PromptPairs]) -> list[Baseline]:
    """One :class:`Baseline` per group of prompt pairs."""
    out = []
    for p in pairs:
        suffix = suffix_of(model, p)
        values = []
        for tokens in (p.clean, p.corrupted):
            with torch.no_grad(), switches_on(model):  # the numerics of the patched runs (per-head norms)
                resid = forward_to_final_resid(model, tokens)
            values.append(p.metric.from_resid(model, resid[:, -1]).float().mean().item())
        start = suffix.prefix
        out.append(Baseline(suffix, sender_outputs(model, graph, p.corrupted)[:, :, start:].contiguous(),
                            _corrupted_resid(model, graph, p.corrupted)[:, :, start:].contiguous(), values[0], values[1]))
    return out


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def edge_patched_resid(
    model: "TransformerBridge", graph: ComputeGraph, base: Baseline,
    circuits: Bool[Tensor, "n_senders n_receivers"] | Sequence[Bool[Tensor, "n_senders n_receivers"]],
) -> Float[Tensor, "n suffix d_model"] | Float[Tensor, "copies n suffix d_model"]:
    """The final residual stream of the clean prompts (suffix positions: the last is the answer)
    with every edge outside the circuit carrying its sender's corrupted output: one forward pass
    over the positions from the first clean/corrupted difference on (see the module docstring).

    Given a list of circuits, one forward pass evaluates all of them, one copy of the prompts per
    circuit (``[copies, n, suffix, d_model]``): a pass over a few short prompts costs mostly the
    per-layer overhead of the model's Python code, which the copies share.

    Each receiver's input is computed the cheaper of two equal ways: from the current residual
    stream plus ``corrupted - current`` of the senders whose edge is *absent*, or from the corrupted
    run's residual stream plus ``current - corrupted`` of the senders whose edge is *present*
    (the biases, in both, cancel). Only senders with an edge in the chosen set are read."""
    single = isinstance(circuits, Tensor)
    stack = torch.stack([c.bool() for c in ([circuits] if single else circuits)])
    device = model.cfg.device
    corr = base.corrupted_out.to(device)
    corr_resid = base.corrupted_resid.to(device)
    edges = graph.edges.to(device)
    present = stack.to(device) & edges
    absent = edges & ~present
    copies, n = len(stack), base.pairs.n
    diff = corr.new_zeros((copies, *corr.shape))  # corrupted - current output of each sender, per copy
    H = graph.n_heads

    def record(index, heads=False):
        def hook(act, hook):
            view = act.view(copies, n, *act.shape[1:]).float()
            diff[:, index] = corr[index] - (view.permute(0, 3, 1, 2, 4) if heads else view)
            return act

        return hook

    def one_copy(act: Tensor, c: int, up: int, cols, where: int, heads: bool) -> Tensor:
        """``act``: copy ``c``'s input as the model computed it ([n, pos, (heads,) d]); ``where``: index into corr_resid."""
        a, p = absent[c, :up, cols], present[c, :up, cols]
        rows_a, rows_p = a.reshape(up, -1).any(1).nonzero().flatten(), p.reshape(up, -1).any(1).nonzero().flatten()
        if len(rows_a) <= len(rows_p):  # current + (corrupted - current) over the absent edges
            if len(rows_a) == 0:
                return act
            return act + mix(_rows(diff[c], rows_a, up), _rows(a, rows_a, up)).to(act.dtype)
        start = corr_resid[where][:, :, None] if heads else corr_resid[where]  # corrupted - (corrupted - current) ...
        x = start - mix(_rows(diff[c], rows_p, up), _rows(p, rows_p, up)) if len(rows_p) else start
        return x.expand_as(act).to(act.dtype) if heads else x.to(act.dtype)

    def receiver_input(act: Tensor, up: int, cols, where: int, heads: bool) -> Tensor:
        view = act.view(copies, n, *act.shape[1:])
        return torch.stack([one_copy(view[c], c, up, cols, where, heads) for c in range(copies)]).view_as(act)

    def add(up: int, cols, where: int, heads: bool):
        def hook(act, hook):
            return receiver_input(act, up, cols, where, heads)

        return hook

    hooks = [(INPUT, record(0))]
    for layer in range(graph.n_layers):
        up = graph.before(layer)
        for kind, cols in (("q", graph.q(layer)), ("k", graph.k(layer)), ("v", graph.v(layer))):
            hooks.append((site(f"{kind}_input", layer), add(up, cols, 2 * layer, True)))
        heads = slice(graph.head(layer, 0), graph.head(layer, 0) + H)
        hooks.append((site("result", layer), record(heads, heads=True)))
        hooks.append((site("mlp_resid_in", layer), add(up + H, graph.mlp_in(layer), 2 * layer + 1, False)))
        hooks.append((site("mlp_out", layer), record(graph.mlp(layer))))
    final = add(graph.n_senders, graph.logits, 2 * graph.n_layers, False)
    suffix = base.suffix
    if copies > 1:
        suffix = Suffix(suffix.pairs, suffix.context, suffix.clean_input.repeat(copies, 1, 1))
    with torch.no_grad():
        resid = run_suffix(model, suffix, hooks, final_hook=lambda act: final(act, None))
    resid = resid.view(copies, n, *resid.shape[1:])
    return resid[0] if single else resid


def _rows(t: Tensor, rows: Tensor, up: int) -> Tensor:
    """``t[rows]``, or the view ``t[:up]`` when most rows are wanted (a gather copies; a matmul with a
    few zero weights is cheaper)."""
    return t[:up] if 2 * len(rows) > up else t[rows]


def mix(
    outputs: Float[Tensor, "s n pos d_model"], weights: Float[Tensor, "s heads"] | Float[Tensor, " s"]
) -> Float[Tensor, "n pos heads d_model"] | Float[Tensor, "n pos d_model"]:
    """``Σ_s weights[s] · outputs[s]`` for each receiver column: one matrix product over the flattened
    outputs (``torch.einsum`` would copy ``outputs`` into another layout first)."""
    s, n, pos, d = outputs.shape
    flat = outputs.reshape(s, n * pos * d)
    w = weights.to(outputs.dtype)
    if w.ndim == 1:
        return (w @ flat).view(n, pos, d)
    return (w.T @ flat).view(-1, n, pos, d).permute(1, 2, 0, 3)


MAX_COPIES = 8  # circuits per forward pass in faithfulness_many (memory: 8 copies of every sender's output)


def edge_patching_faithfulness(
    model: "TransformerBridge", graph: ComputeGraph, base: Sequence[Baseline], circuit: Bool[Tensor, "n_senders n_receivers"]
) -> float:
    """The circuit's normalised metric over every prompt (1 = the clean model, 0 = corrupted).

    The empty circuit is 0 and the whole graph 1 by construction (every input is then the corrupted,
    or the clean, one: the tests check it with :func:`edge_patched_resid`), so neither is run."""
    return edge_patching_faithfulness_many(model, graph, base, [circuit])[0]


def edge_patching_faithfulness_many(
    model: "TransformerBridge", graph: ComputeGraph, base: Sequence[Baseline],
    circuits: Sequence[Bool[Tensor, "n_senders n_receivers"]],
) -> list[float]:
    """:func:`faithfulness` of each circuit, up to :data:`MAX_COPIES` per forward pass."""
    out: list[float | None] = [None] * len(circuits)
    todo = []
    for i, c in enumerate(circuits):
        c = c.bool() & graph.edges
        if not bool(c.any()):
            out[i] = 0.0
        elif torch.equal(c, graph.edges):
            out[i] = 1.0
        else:
            todo.append((i, c))
    weights = [b.pairs.n for b in base]
    clean = _weighted([b.clean_value for b in base], weights)
    corrupted = _weighted([b.corrupted_value for b in base], weights)
    for first in range(0, len(todo), MAX_COPIES):
        chunk = todo[first : first + MAX_COPIES]
        sums = torch.zeros(len(chunk), dtype=torch.float64)
        for b in base:
            resid = edge_patched_resid(model, graph, b, [c for _, c in chunk])  # [copies, n, suffix, d]
            ends = resid[:, :, -1].reshape(-1, resid.shape[-1])
            rows = torch.arange(b.pairs.n).repeat(len(chunk))
            with torch.no_grad():
                values = b.pairs.metric.from_resid(model, ends, rows).float().view(len(chunk), b.pairs.n)
            sums += values.sum(1).double().cpu()
        for (i, _), total in zip(chunk, sums.tolist()):
            out[i] = float(normalize(total / sum(weights), clean, corrupted))
    return out  # type: ignore[return-value]


