"""Path patching (Wang et al. 2022, §3 and Appendix B): the effect of one path, not one node.

Activation patching says *that* a head matters; path patching says *through what*. A path goes
from **sender** heads to **receivers**: the queries, keys or values of later heads, or the logits
(the direct path). The question is "how much does the sender's output, as read by the receivers
and nothing else, change the answer?" Wang et al. answer it in three runs:

1. run the clean and the corrupted prompts and cache every head's output;
2. run the clean prompts again with the senders' outputs taken from the corrupted run and
   **every other head frozen** at its clean output (MLPs recompute, as in the paper); record the
   receivers' inputs (their q, k or v). Only the sender's change, and what MLPs make of it,
   reaches the receivers;
3. run the clean prompts once more with only the receivers' inputs replaced by those recorded
   values, everything else free, and measure the logit difference. For the direct path to the
   logits, step 2's final residual stream is the receiver and step 3 is the readout.

Scores use the same scale as activation patching, for whatever metric the run measures
(:mod:`mechdemo.metrics`; the logit difference by default): 1 = the clean value (the path does
not matter), 0 = the corrupted one; a path that carries the answer scores well below 1.
An empty set of senders changes nothing and scores exactly 1 (the tests check it).

**Step 2 needs no attention.** With every head frozen, each attention layer's output is its clean
output plus, in the layer of a sender, ``(z_corrupted - z_clean) @ W_O`` of that head: nothing
moves between positions, and only the MLPs recompute. So step 2 runs ``ln2`` and the MLP of each
block and skips attention (a third of a block's work here, and its hooks); when the receivers are the logits it runs the answer position alone, since no other
position can reach it. Copies whose senders sit in later layers stay on the cached clean residual
stream until their first sender's layer. The result is the same as the three-run recipe with
frozen-head hooks (the tests check it against that naive implementation, one hooked forward pass
per sender set, for GPT-2 and Llama architectures).

Step 3 runs whole blocks, batched as in :mod:`mechdemo.patching`: each copy of the batch carries
one sender set, runs start at the first receiver's layer, and positions before the first
clean/corrupted difference are reused. Receivers ``k``/``v`` of grouped-query models act on the
shared key/value head, i.e. on every query head of its group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechdemo.weight_circuits import kv_head
from mechdemo.forward import run_blocks
from mechdemo.interventions import recorder, replace, site
from mechdemo.patching import MAX_TOKENS_PER_FORWARD, PatchingRun, suffix_activation

Head = tuple[int, int]
Receiver = tuple[int, int, str]  # (layer, head, "q" | "k" | "v")
Receivers = Union[Sequence[Receiver], str]  # or "logits"
RECEIVER_INPUTS = ("q", "k", "v")  # the sites of a receiving head


def _check(run: PatchingRun, senders: Sequence[Sequence[Head]], receivers: Receivers) -> None:
    if receivers == "logits":
        return
    if not receivers:
        raise ValueError("no receivers: pass (layer, head, 'q'|'k'|'v') tuples or 'logits'")
    first = min(layer for layer, _, _ in receivers)
    for group in senders:
        for layer, _ in group:
            if layer >= first:
                raise ValueError(f"sender in layer {layer} cannot reach receivers starting in layer {first}")
    for _, _, kind in receivers:
        if kind not in RECEIVER_INPUTS:
            raise ValueError(f"receiver input must be q, k or v, not {kind!r}")


def _frozen_run(
    run: PatchingRun, senders: list, stop: int, positions: slice, record_at: Sequence[int] = ()
) -> tuple[Tensor, dict[int, Tensor]]:
    """Step 2: the clean run with every head frozen and each copy's senders corrupted.

    Returns the residual stream entering layer ``stop`` for every copy ([copies * n, pos, d_model],
    on ``positions`` of the suffix the patched runs compute), and the one entering each layer of
    ``record_at``.
    """
    model = run.model
    copies = len(senders)
    first = torch.tensor([min((l for l, _ in g), default=stop) for g in senders])  # first sender layer of each copy
    by_layer: dict[int, list[tuple[int, int]]] = defaultdict(list)  # layer -> (copy, head)
    for c, group in enumerate(senders):
        for layer, head in group:
            by_layer[layer].append((c, head))
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]

    def clean_resid(layer: int) -> Tensor:
        name = site("resid_pre", layer) if layer < model.cfg.n_layers else site("final")
        return suffix_activation(run, name)[:, positions]

    start = int(first.min())
    resid = clean_resid(start).repeat(copies, 1, 1)
    recorded = {}
    for layer in range(start, stop + 1):
        view = resid.view(copies, run.n, *resid.shape[1:])
        # copies whose first sender is in this layer or later are still exactly on the clean run
        view[first >= layer] = clean_resid(layer)
        if layer in record_at:
            recorded[layer] = resid.clone()
        if layer == stop:
            break
        active = (first <= layer).nonzero().flatten()
        mid = view[active] + suffix_activation(run, site("attn_out", layer))[:, positions]
        if layer in by_layer:
            z_clean = suffix_activation(run, site("z", layer))[:, positions]
            z_corr = suffix_activation(run, site("z", layer), "corrupted")[:, positions]
            row = {int(c): i for i, c in enumerate(active)}
            for c, head in by_layer[layer]:
                delta = torch.einsum("npd,dm->npm", z_corr[:, :, head] - z_clean[:, :, head], W_O[layer, head])
                mid[row[c]] += delta.to(mid.dtype)
        block = model.blocks[layer]
        view[active] = mid + block.mlp(block.ln2(mid.flatten(0, 1))).view_as(mid)
    return resid, recorded


def path_patch(
    run: PatchingRun, senders: Sequence[Sequence[Head]], receivers: Receivers, progress: bool = False
) -> Float[Tensor, " n_sender_sets"]:
    """Normalised logit difference after patching each sender set's path into ``receivers``."""
    _check(run, senders, receivers)
    model = run.model
    n_layers = model.cfg.n_layers
    # the logits need one position per prompt; step 3 runs every position of the suffix
    per_copy = run.n * (1 if receivers == "logits" else run.context.n_run)
    chunk = max(1, MAX_TOKENS_PER_FORWARD // per_copy)
    scores = []
    starts = range(0, len(senders), chunk)
    for first in tqdm(starts, desc="path patching", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        group = list(senders[first : first + chunk])
        scores.append(_path_patch_chunk(run, group, receivers, n_layers))
    return torch.cat(scores) if scores else torch.zeros(0)


def _path_patch_chunk(run: PatchingRun, senders: list, receivers: Receivers, n_layers: int) -> Tensor:
    model = run.model
    copies = len(senders)
    if not any(senders):  # nothing patched anywhere: the clean run
        return torch.ones(copies)
    with torch.no_grad():
        if receivers == "logits":
            final, _ = _frozen_run(run, senders, n_layers, slice(-1, None))
            return run.copies_metric(final[:, -1])
        # step 2: the receivers' inputs as the frozen run computes them
        receiver_layers = sorted({layer for layer, _, _ in receivers})
        _, resid_at = _frozen_run(run, senders, receiver_layers[-1], slice(None), record_at=receiver_layers)
        recorded: dict[str, Tensor] = {}
        for layer in receiver_layers:
            names = {site(kind, layer) for l, _, kind in receivers if l == layer}
            keep = [recorder(recorded, name, transform=torch.clone) for name in names]
            run_blocks(model, resid_at[layer], layer, run.context, stop=layer + 1, fwd_hooks=keep)
        # step 3: clean run with only the receivers' inputs replaced
        start3 = receiver_layers[0]
        patches: dict[str, list[int]] = defaultdict(list)
        for layer, head, kind in receivers:
            patches[site(kind, layer)].append(head if kind == "q" else kv_head(model, head))
        hooks3 = []
        for name, columns in patches.items():
            columns = sorted(set(columns))
            hooks3.append(replace(name, recorded[name][:, :, columns], (slice(None), slice(None), columns)))
        resid = suffix_activation(run, site("resid_pre", start3)).repeat(copies, 1, 1)
        final = run_blocks(model, resid, start3, run.context, fwd_hooks=hooks3)
        return run.copies_metric(final[:, -1])


def path_patch_each_head(
    run: PatchingRun, receivers: Receivers, progress: bool = False
) -> Float[Tensor, "n_layers n_heads"]:
    """Path-patching score of every single head as the sender (NaN where it cannot reach the receivers)."""
    n_layers, n_heads = run.model.cfg.n_layers, run.model.cfg.n_heads
    last = n_layers if receivers == "logits" else min(layer for layer, _, _ in receivers)
    out = torch.full((n_layers, n_heads), float("nan"))
    senders = [[(layer, h)] for layer in range(last) for h in range(n_heads)]
    if senders:
        out[:last] = path_patch(run, senders, receivers, progress).view(last, n_heads)
    return out
