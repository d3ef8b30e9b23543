"""Edge patching: a transformer as a graph of edges, and the exact evaluation of a circuit.

A transformer's residual stream is a sum: every attention head and every MLP *adds* its output,
and every later component *reads* the sum (Elhage et al. 2021, "A Mathematical Framework"). So the
input of a component is the sum of the outputs of every component before it, and the model is a
graph whose **edges** are "output of A, as read by B":

* **senders** (nodes with an output): the embeddings (``input``), every attention head
  (``a{L}.h{H}``, its output ``z @ W_O``) and every MLP (``m{L}``);
* **receivers** (node inputs): each head's query, key and value input (``a{L}.h{H}<q>`` ...), each
  MLP's input (``m{L}``) and the logits (the final residual stream). Q, K and V are separate
  receivers, so an edge says which input of the later head it enters.
  **Grouped-query attention** (Llama, SmolLM2): the query heads of a group share one key and one
  value projection, so the K and V receivers are the key/value heads (``a{L}.kv{G}<k>``): an edge
  into a shared key enters every query head of the group, as it does in the model;
* an edge goes from every sender to every receiver after it: heads of layer L read the senders of
  layers < L; the MLP of layer L also reads the heads of layer L (sequential blocks: GPT-2, Llama);
  the logits read every sender.

A **circuit** is a set of edges. It is evaluated by **edge patching** (Wang et al. 2022's path
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

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechdemo.forward import BlockContext, block_context, run_blocks
from mechdemo.interventions import run, site, switches_on
from mechdemo.metrics import Metric, normalize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

INPUT = site("resid_pre", 0)  # the embeddings: the input node's output
FINAL = site("final")  # the logits' receiver


@dataclass(frozen=True)
class Graph:
    """Index arithmetic of a model's edge graph (no tensors of the model; see the module docstring).

    Senders: ``0`` = input, then per layer its heads and its MLP. Receivers: per layer its query
    heads, key heads, value heads and its MLP, then the logits. Edge scores and circuits are
    ``[n_senders, n_receivers]`` tensors; :attr:`edges` marks the pairs that are edges.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int

    @classmethod
    def of(cls, model: "TransformerBridge") -> "Graph":
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)

    # senders
    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def before(self, layer: int) -> int:
        """Number of senders upstream of layer ``layer``'s attention (the input and layers < ``layer``)."""
        return 1 + layer * (self.n_heads + 1)

    # receivers
    @property
    def per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer + 1

    def q(self, layer: int) -> slice:
        start = layer * self.per_layer
        return slice(start, start + self.n_heads)

    def k(self, layer: int) -> slice:
        start = layer * self.per_layer + self.n_heads
        return slice(start, start + self.n_kv_heads)

    def v(self, layer: int) -> slice:
        start = layer * self.per_layer + self.n_heads + self.n_kv_heads
        return slice(start, start + self.n_kv_heads)

    def mlp_in(self, layer: int) -> int:
        return (layer + 1) * self.per_layer - 1

    @property
    def logits(self) -> int:
        return self.n_layers * self.per_layer

    @cached_property
    def edges(self) -> Bool[Tensor, "n_senders n_receivers"]:
        """Which (sender, receiver) pairs are edges of the graph."""
        e = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for layer in range(self.n_layers):
            up = self.before(layer)
            e[:up, layer * self.per_layer : self.mlp_in(layer)] = True  # q, k, v of every head
            e[: up + self.n_heads, self.mlp_in(layer)] = True  # the MLP also reads this layer's heads
        e[:, self.logits] = True
        return e

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    # names, as in Hanna et al.'s EAP-IG code: input, a3.h5, m3, a7.h2<q>, logits
    def sender_name(self, i: int) -> str:
        if i == 0:
            return "input"
        layer, j = divmod(i - 1, self.n_heads + 1)
        return f"m{layer}" if j == self.n_heads else f"a{layer}.h{j}"

    def receiver_kind(self, j: int) -> tuple[str, int, int]:
        """``(kind, layer, index)`` of receiver ``j``: kind ``q`` (index: query head), ``k`` or ``v``
        (index: key/value head), ``mlp`` or ``logits``."""
        if j == self.logits:
            return "logits", self.n_layers, 0
        layer, r = divmod(j, self.per_layer)
        if r < self.n_heads:
            return "q", layer, r
        if r < self.n_heads + self.n_kv_heads:
            return "k", layer, r - self.n_heads
        if r < self.n_heads + 2 * self.n_kv_heads:
            return "v", layer, r - self.n_heads - self.n_kv_heads
        return "mlp", layer, 0

    def receiver_name(self, j: int) -> str:
        kind, layer, i = self.receiver_kind(j)
        if kind in ("logits", "mlp"):
            return "logits" if kind == "logits" else f"m{layer}"
        head = "h" if kind == "q" or self.n_kv_heads == self.n_heads else "kv"
        return f"a{layer}.{head}{i}<{kind}>"

    def receiver_node(self, j: int) -> str:
        """The node a receiver belongs to (``a3.h5<q>`` → ``a3.h5``; a shared K/V head → its first query head)."""
        kind, layer, i = self.receiver_kind(j)
        if kind in ("logits", "mlp"):
            return "logits" if kind == "logits" else f"m{layer}"
        return f"a{layer}.h{i if kind == 'q' else i * (self.n_heads // self.n_kv_heads)}"

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.sender_name(sender)}->{self.receiver_name(receiver)}"

    def empty(self) -> Bool[Tensor, "n_senders n_receivers"]:
        return torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)


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
    model: "TransformerBridge", graph: Graph, tokens: Int[Tensor, "n pos"]
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


def _corrupted_resid(model: "TransformerBridge", graph: Graph, tokens: Int[Tensor, "n pos"]) -> Tensor:
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


def baselines(model: "TransformerBridge", graph: Graph, pairs: Sequence[PromptPairs]) -> list[Baseline]:
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
    model: "TransformerBridge", graph: Graph, base: Baseline,
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


def faithfulness(
    model: "TransformerBridge", graph: Graph, base: Sequence[Baseline], circuit: Bool[Tensor, "n_senders n_receivers"]
) -> float:
    """The circuit's normalised metric over every prompt (1 = the clean model, 0 = corrupted).

    The empty circuit is 0 and the whole graph 1 by construction (every input is then the corrupted,
    or the clean, one: the tests check it with :func:`edge_patched_resid`), so neither is run."""
    return faithfulness_many(model, graph, base, [circuit])[0]


def faithfulness_many(
    model: "TransformerBridge", graph: Graph, base: Sequence[Baseline],
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


def top_edges(scores: Float[Tensor, "n_senders n_receivers"], graph: Graph, n: int) -> Bool[Tensor, "n_senders n_receivers"]:
    """The circuit of the ``n`` edges with the largest ``|score|`` (ties broken by index)."""
    flat = scores.abs().masked_fill(~graph.edges, -1.0).flatten()
    circuit = torch.zeros_like(flat, dtype=torch.bool)
    n = max(0, min(n, graph.n_edges))
    if n:
        circuit[torch.topk(flat, n, sorted=True).indices] = True
    return circuit.view_as(scores) & graph.edges


def prune(circuit: Bool[Tensor, "n_senders n_receivers"], graph: Graph) -> Bool[Tensor, "n_senders n_receivers"]:
    """Drop the edges that cannot change the evaluation: those leaving a node no circuit edge enters
    (its output is then exactly its corrupted one; the input node always counts as entered) and
    those entering a node no circuit edge leaves (its output then reaches nothing). Repeats until
    stable; the faithfulness is unchanged (the tests check it)."""
    c = circuit.clone() & graph.edges
    receivers_of = _receivers_of_sender(graph)
    while True:
        fed = torch.zeros(graph.n_senders, dtype=torch.bool)
        fed[0] = True
        entered = c.any(0)  # per receiver
        for s in range(1, graph.n_senders):
            fed[s] = bool(entered[receivers_of[s]].any())
        feeds = c.any(1)  # per sender: has an outgoing edge
        used = torch.zeros(graph.n_receivers, dtype=torch.bool)
        used[graph.logits] = True
        for s in range(1, graph.n_senders):
            if feeds[s]:
                used[receivers_of[s]] = True
        keep = c & fed[:, None] & used[None, :]
        if torch.equal(keep, c):
            return c
        c = keep


def _receivers_of_sender(graph: Graph) -> list[list[int]]:
    """For each sender node, the receivers that are its inputs (a head: its q, its k/v head's k and v)."""
    out: list[list[int]] = [[] for _ in range(graph.n_senders)]
    group = graph.n_heads // graph.n_kv_heads
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            out[graph.head(layer, h)] = [graph.q(layer).start + h, graph.k(layer).start + h // group,
                                         graph.v(layer).start + h // group]
        out[graph.mlp(layer)] = [graph.mlp_in(layer)]
    return out


def random_scores(graph: Graph, seed: int = 0) -> Float[Tensor, "n_senders n_receivers"]:
    """Random edge scores: the control in a faithfulness curve (same circuit sizes, no information)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(graph.n_senders, graph.n_receivers, generator=g).masked_fill(~graph.edges, 0.0)
