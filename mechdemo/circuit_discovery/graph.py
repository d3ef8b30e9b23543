"""The model's computational graph: components as nodes, "output of A as read by B" as edges.

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

This module is index arithmetic and set operations on circuits (boolean ``[n_senders, n_receivers]``
tensors): no model run. It is the *model's* graph, fixed by the architecture; an attribution graph
(features and their linear effects on one prompt) is another object. Circuits are evaluated by
:mod:`mechdemo.circuit_discovery.edge_patching` and scored by :mod:`mechdemo.circuit_discovery.eap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Iterable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class ComputeGraph:
    """Index arithmetic of a model's edge graph (no tensors of the model; see the module docstring).

    Senders: ``0`` = input, then per layer its heads and its MLP. Receivers: per layer its query
    heads, key heads, value heads and its MLP, then the logits. Edge scores and circuits are
    ``[n_senders, n_receivers]`` tensors; :attr:`edges` marks the pairs that are edges.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int

    @classmethod
    def of(cls, model: "TransformerBridge") -> "ComputeGraph":
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


def top_edges(scores: Float[Tensor, "n_senders n_receivers"], graph: ComputeGraph, n: int) -> Bool[Tensor, "n_senders n_receivers"]:
    """The circuit of the ``n`` edges with the largest ``|score|`` (ties broken by index)."""
    flat = scores.abs().masked_fill(~graph.edges, -1.0).flatten()
    circuit = torch.zeros_like(flat, dtype=torch.bool)
    n = max(0, min(n, graph.n_edges))
    if n:
        circuit[torch.topk(flat, n, sorted=True).indices] = True
    return circuit.view_as(scores) & graph.edges


def prune_circuit(circuit: Bool[Tensor, "n_senders n_receivers"], graph: ComputeGraph) -> Bool[Tensor, "n_senders n_receivers"]:
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


def _receivers_of_sender(graph: ComputeGraph) -> list[list[int]]:
    """For each sender node, the receivers that are its inputs (a head: its q, its k/v head's k and v)."""
    out: list[list[int]] = [[] for _ in range(graph.n_senders)]
    group = graph.n_heads // graph.n_kv_heads
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            out[graph.head(layer, h)] = [graph.q(layer).start + h, graph.k(layer).start + h // group,
                                         graph.v(layer).start + h // group]
        out[graph.mlp(layer)] = [graph.mlp_in(layer)]
    return out


def random_scores(graph: ComputeGraph, seed: int = 0) -> Float[Tensor, "n_senders n_receivers"]:
    """Random edge scores: the control in a faithfulness curve (same circuit sizes, no information)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(graph.n_senders, graph.n_receivers, generator=g).masked_fill(~graph.edges, 0.0)


def node_circuit(graph: ComputeGraph, heads: Iterable[tuple[int, int]]) -> Bool[Tensor, "s r"]:
    """A circuit of heads as edges: every edge among the heads, the embeddings, every MLP and the
    logits (the heads' Q, K and V inputs; a shared key/value head counts if one of its query heads is in)."""
    heads = set(heads)
    group = graph.n_heads // graph.n_kv_heads
    senders = torch.zeros(graph.n_senders, dtype=torch.bool)
    receivers = torch.zeros(graph.n_receivers, dtype=torch.bool)
    senders[0] = True
    receivers[graph.logits] = True
    for layer in range(graph.n_layers):
        senders[graph.mlp(layer)] = True
        receivers[graph.mlp_in(layer)] = True
    for layer, head in heads:
        senders[graph.head(layer, head)] = True
        receivers[graph.q(layer).start + head] = True
        receivers[graph.k(layer).start + head // group] = True
        receivers[graph.v(layer).start + head // group] = True
    return senders[:, None] & receivers[None, :] & graph.edges


def heads_in(graph: ComputeGraph, circuit: Bool[Tensor, "s r"]) -> list[tuple[int, int]]:
    """The heads whose output leaves through some edge of ``circuit``."""
    out = []
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            if bool(circuit[graph.head(layer, head)].any()):
                out.append((layer, head))
    return out


def edge_list(graph: ComputeGraph, scores: Float[Tensor, "s r"], circuit: Bool[Tensor, "s r"] | None = None,
              limit: int | None = None) -> list[dict]:
    """Edges (of ``circuit``, or all) by decreasing ``|score|``: ``{"edge", "sender", "receiver", "score"}``."""
    mask = graph.edges if circuit is None else circuit & graph.edges
    idx = mask.flatten().nonzero().flatten()
    order = idx[scores.flatten()[idx].abs().argsort(descending=True, stable=True)]
    if limit is not None:
        order = order[:limit]
    out = []
    for i in order.tolist():
        s, r = divmod(i, graph.n_receivers)
        out.append({"edge": graph.edge_name(s, r), "sender": graph.sender_name(s), "receiver": graph.receiver_name(r),
                    "score": round(float(scores[s, r]), 6)})
    return out
