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

Scores use the same scale as activation patching: 1 = the clean logit difference (the path does
not matter), 0 = the corrupted one; a path that carries the answer scores well below 1.
An empty set of senders changes nothing and scores exactly 1 (the tests check it).

Batching as in :mod:`mechdemo.patching`: each copy of the batch carries one sender set, runs
start at the earliest layer that changes, and positions before the first clean/corrupted
difference are reused. Receivers ``k``/``v`` of grouped-query models act on the shared key/value
head, i.e. on every query head of its group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechdemo.circuits import kv_head
from mechdemo.forward import logit_diff_from_resid, run_blocks
from mechdemo.patching import MAX_TOKENS_PER_FORWARD, PatchingRun, _suffix

Head = tuple[int, int]
Receiver = tuple[int, int, str]  # (layer, head, "q" | "k" | "v")
Receivers = Union[Sequence[Receiver], str]  # or "logits"
INPUT_HOOKS = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v"}


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
        if kind not in INPUT_HOOKS:
            raise ValueError(f"receiver input must be q, k or v, not {kind!r}")


def _freeze_hooks(run: PatchingRun, senders: Sequence[Sequence[Head]], start: int, stop: int, copies: int):
    """Hooks for step 2: every head's z clean, each copy's senders corrupted."""
    by_layer: dict[int, list[tuple[int, int]]] = defaultdict(list)  # layer -> (copy, head)
    for c, group in enumerate(senders):
        for layer, head in group:
            by_layer[layer].append((c, head))
    hooks = []
    for layer in range(start, stop):
        name = f"blocks.{layer}.attn.hook_z"
        clean, corrupted = _suffix_of(run.clean, run, name), _suffix_of(run.corrupted, run, name)

        def hook(act, hook, clean=clean, corrupted=corrupted, patches=by_layer.get(layer, [])):
            view = act.view(copies, run.n, *act.shape[1:])
            view[:] = clean
            for c, head in patches:
                view[c, :, :, head] = corrupted[:, :, head]
            return act

        hooks.append((name, hook))
    return hooks


def _suffix_of(store: dict, run: PatchingRun, name: str) -> Tensor:
    act = store[name]
    return act[:, run.prefix :] if run.prefix else act


def path_patch(
    run: PatchingRun, senders: Sequence[Sequence[Head]], receivers: Receivers
) -> Float[Tensor, " n_sender_sets"]:
    """Normalised logit difference after patching each sender set's path into ``receivers``."""
    _check(run, senders, receivers)
    model = run.model
    n_layers = model.cfg.n_layers
    per_copy = run.n * run.context.n_run
    chunk = max(1, MAX_TOKENS_PER_FORWARD // per_copy)
    scores = []
    for first in range(0, len(senders), chunk):
        group = list(senders[first : first + chunk])
        scores.append(_path_patch_chunk(run, group, receivers, n_layers))
    return torch.cat(scores) if scores else torch.zeros(0)


def _path_patch_chunk(run: PatchingRun, senders: list, receivers: Receivers, n_layers: int) -> Tensor:
    model = run.model
    copies = len(senders)
    correct, incorrect = run.correct.repeat(copies), run.incorrect.repeat(copies)
    sender_layers = [layer for group in senders for layer, _ in group]
    if not sender_layers:  # nothing patched anywhere: the clean run
        return torch.ones(copies)
    start = min(sender_layers)
    stop = n_layers if receivers == "logits" else max(layer for layer, _, _ in receivers) + 1
    resid = _suffix(run, f"blocks.{start}.hook_resid_pre").repeat(copies, 1, 1)
    hooks = _freeze_hooks(run, senders, start, stop, copies)
    recorded: dict[str, Tensor] = {}
    if receivers != "logits":
        for name in {f"blocks.{layer}.{INPUT_HOOKS[kind]}" for layer, _, kind in receivers}:
            def record(act, hook, name=name):
                recorded[name] = act.detach().clone()
                return act

            hooks.append((name, record))
    with torch.no_grad():
        final = run_blocks(model, resid, start, run.context, stop=stop, fwd_hooks=hooks)
        if receivers == "logits":
            ld = logit_diff_from_resid(model, final[:, -1], correct, incorrect)
            return run.normalize(ld.float().view(copies, run.n).mean(1)).cpu()
        # step 3: clean run with only the receivers' inputs replaced
        start3 = min(layer for layer, _, _ in receivers)
        patches: dict[str, list[int]] = defaultdict(list)
        for layer, head, kind in receivers:
            patches[f"blocks.{layer}.{INPUT_HOOKS[kind]}"].append(head if kind == "q" else kv_head(model, head))
        hooks3 = []
        for name, columns in patches.items():
            def replace(act, hook, name=name, columns=sorted(set(columns))):
                act[:, :, columns] = recorded[name][:, :, columns]
                return act

            hooks3.append((name, replace))
        resid = _suffix(run, f"blocks.{start3}.hook_resid_pre").repeat(copies, 1, 1)
        final = run_blocks(model, resid, start3, run.context, fwd_hooks=hooks3)
        ld = logit_diff_from_resid(model, final[:, -1], correct, incorrect)
    return run.normalize(ld.float().view(copies, run.n).mean(1)).cpu()


def path_patch_each_head(
    run: PatchingRun, receivers: Receivers, progress: bool = False
) -> Float[Tensor, "n_layers n_heads"]:
    """Path-patching score of every single head as the sender (NaN where it cannot reach the receivers)."""
    n_layers, n_heads = run.model.cfg.n_layers, run.model.cfg.n_heads
    last = n_layers if receivers == "logits" else min(layer for layer, _, _ in receivers)
    out = torch.full((n_layers, n_heads), float("nan"))
    for layer in tqdm(range(last), desc="path patching", unit="layer", disable=not progress, leave=False):
        out[layer] = path_patch(run, [[(layer, h)] for h in range(n_heads)], receivers)
    return out
