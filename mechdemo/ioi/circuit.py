"""The IOI circuit of a model, found by path patching as Wang et al. (2022) did for GPT-2 small.

The search (:func:`find_ioi_circuit`) walks the circuit backwards from the logits: heads that
write the answer directly (name movers), heads that steer the name movers' queries
(S-inhibition), heads that feed those (induction, duplicate-token), and the previous-token heads
behind the induction heads; each step is one path-patching scan
(:mod:`mechdemo.path_patching`) and a role is read from where the head attends. Backup name
movers come from the direct effects that grow once the name movers are mean-ablated, and the
circuit's faithfulness from mean-ablating every other head (:mod:`mechdemo.mean_ablation`).
:mod:`mechdemo.circuit_discovery` finds circuits automatically instead and compares.

This module sits above :mod:`mechdemo.ioi` (prompts and the metric) and the patching modules,
which import neither it nor each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from mechdemo.mean_ablation import mean_ablation_faithfulness, mean_ablation_hooks, mean_head_outputs
from mechdemo.dla import direct_logit_attribution
from mechdemo.heads import top_heads
from mechdemo.interventions import site
from mechdemo.ioi.prompts import IOIBatch, ioi_batch
from mechdemo.patching import prepare_ioi
from mechdemo.path_patching import path_patch_each_head

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ROLES = ("name_mover", "negative_name_mover", "backup_name_mover", "copy_suppression", "other_direct",
         "s_inhibition", "induction", "duplicate_token", "previous_token")
NAME_ATTENTION = 0.2  # a head "attends to a name" from END with at least this much attention


@dataclass
class IOICircuit:
    """Heads by IOI role, the evidence for each, and the scans they were read from."""

    roles: dict[str, list[dict]]
    scans: dict[str, Tensor]  # [n_layers, n_heads] effects (1 - path-patching score) and DLA changes
    attention: dict[str, Tensor]  # [n_layers, n_heads] mean attention between IOI positions
    faithfulness: dict

    def heads(self) -> list[tuple[int, int]]:
        return sorted({(h["layer"], h["head"]) for group in self.roles.values() for h in group})

    def to_json(self) -> dict:
        return {"roles": self.roles, "heads": [list(h) for h in self.heads()], "faithfulness": self.faithfulness}


def attention_between(run, batch: IOIBatch, query: str, key: str) -> Float[Tensor, "n_layers n_heads"]:
    """Mean attention from position ``query`` to position ``key`` (names from ``batch.positions``), clean run."""
    rows = torch.arange(len(batch))
    q, k = batch.positions[query], batch.positions[key]
    return torch.stack([
        run.clean[site("pattern", l)][rows, :, q, k].float().mean(0).cpu()
        for l in range(run.model.cfg.n_layers)
    ])


def _pick(effect: Tensor, k: int, threshold: float, exclude: set, extra: dict[str, Tensor] | None = None) -> list[dict]:
    chosen = []
    for layer, head, value in top_heads(torch.nan_to_num(effect, nan=-1e9), k + len(exclude)):
        if (layer, head) in exclude or value < threshold:
            continue
        entry = {"layer": layer, "head": head, "effect": round(value, 4)}
        for name, t in (extra or {}).items():
            entry[name] = round(t[layer, head].item(), 4)
        chosen.append(entry)
        if len(chosen) == k:
            break
    return chosen


def find_ioi_circuit(
    model: "TransformerBridge",
    batch: IOIBatch,
    threshold: float = 0.02,
    max_per_role: int = 4,
    progress: bool = False,
) -> IOICircuit:
    """Find the IOI circuit of ``model`` on ``batch`` by path patching, as Wang et al. did for GPT-2.

    Steps (effect = drop of the normalised logit difference when the path carries the corrupted
    value; a head joins a role when its effect is among the largest and at least ``threshold``):

    1. **name movers**: heads → logits (direct path); **negative name movers**: the ones whose
       direct path pushes the answer the other way;
    2. **S-inhibition**: heads → the name movers' queries;
    3. **induction** and **duplicate-token** heads: heads → the S-inhibition heads' values; told apart
       by where they attend from S2 (S1+1 for induction, S1 for duplicate token);
    4. **previous-token** heads: heads → the induction heads' keys;
    5. **backup name movers**: heads whose direct effect (DLA) grows when the name movers are
       mean-ablated (Wang et al.'s self-repair);
    6. **faithfulness**: the logit difference with every other head mean-ablated.
    """
    run = prepare_ioi(model, batch)
    attention = {
        "end->IO": attention_between(run, batch, "end", "IO"),
        "end->S2": attention_between(run, batch, "end", "S2"),
        "S2->S1": attention_between(run, batch, "S2", "S1"),
        "S2->S1+1": attention_between(run, batch, "S2", "S1+1"),
        "S1+1->S1": attention_between(run, batch, "S1+1", "S1"),
    }
    scans: dict[str, Tensor] = {}
    roles: dict[str, list[dict]] = {r: [] for r in ROLES}

    scans["direct"] = 1 - path_patch_each_head(run, "logits", progress)
    names = {"attention_end_to_IO": attention["end->IO"], "attention_end_to_S2": attention["end->S2"]}
    for sign, effect in ((1, scans["direct"]), (-1, -scans["direct"])):
        for h in _pick(effect, 2 * max_per_role, threshold, set(), names):
            h["effect"] = sign * h["effect"]
            to_io, to_s = h["attention_end_to_IO"], h["attention_end_to_S2"]
            if to_io >= NAME_ATTENTION and to_io >= to_s:
                role = "name_mover" if sign > 0 else "negative_name_mover"
            elif sign > 0 and to_s >= NAME_ATTENTION:
                role = "copy_suppression"  # attends to the subject and pushes it down
            else:
                role = "other_direct"
            if len(roles[role]) < max_per_role:
                roles[role].append(h)
    used = {(h["layer"], h["head"]) for r in roles.values() for h in r}

    if roles["name_mover"]:
        receivers = [(h["layer"], h["head"], "q") for h in roles["name_mover"]]
        scans["to_name_mover_queries"] = 1 - path_patch_each_head(run, receivers, progress)
        movers = {(h["layer"], h["head"]) for r in ("name_mover", "negative_name_mover") for h in roles[r]}
        roles["s_inhibition"] = _pick(scans["to_name_mover_queries"], max_per_role, threshold, movers,
                                      {"attention_end_to_S2": attention["end->S2"]})
        # a head whose effect through the name movers exceeds its direct effect is S-inhibition only
        s_inh = {(h["layer"], h["head"]): h["effect"] for h in roles["s_inhibition"]}
        for role in ("copy_suppression", "other_direct"):
            roles[role] = [h for h in roles[role] if s_inh.get((h["layer"], h["head"]), 0) <= abs(h["effect"])]
        roles["s_inhibition"] = [h for h in roles["s_inhibition"]
                                 if not any((h["layer"], h["head"]) == (g["layer"], g["head"])
                                            for r in ("copy_suppression", "other_direct") for g in roles[r])]
        used = {(h["layer"], h["head"]) for r in roles.values() for h in r}
    if roles["s_inhibition"]:
        receivers = [(h["layer"], h["head"], "v") for h in roles["s_inhibition"]]
        scans["to_s_inhibition_values"] = 1 - path_patch_each_head(run, receivers, progress)
        found = _pick(scans["to_s_inhibition_values"], 2 * max_per_role, threshold, used,
                      {"attention_S2_to_S1+1": attention["S2->S1+1"], "attention_S2_to_S1": attention["S2->S1"]})
        for h in found:
            role = "induction" if h["attention_S2_to_S1+1"] >= h["attention_S2_to_S1"] else "duplicate_token"
            if len(roles[role]) < max_per_role:
                roles[role].append(h)
        used |= {(h["layer"], h["head"]) for h in roles["induction"] + roles["duplicate_token"]}
    if roles["induction"]:
        # previous-token heads act at S1+1, before S2: only a corruption of S1 can show them
        s1 = ioi_batch(model, batch.template, len(batch), batch.seed, tuple(dict.fromkeys(batch.orders)), corrupt="S1")
        if s1.prompts != batch.prompts:
            raise RuntimeError("the S1-corrupted batch does not share the clean prompts")
        run_s1 = prepare_ioi(model, s1)
        receivers = [(h["layer"], h["head"], "k") for h in roles["induction"]]
        scans["to_induction_keys"] = 1 - path_patch_each_head(run_s1, receivers, progress)
        roles["previous_token"] = _pick(scans["to_induction_keys"], 2, threshold, used,
                                        {"attention_S1+1_to_S1": attention["S1+1->S1"]})

    # backup name movers: direct effects that grow once the name movers are gone
    means = mean_head_outputs(model, batch.corrupted_tokens)
    nms = [(h["layer"], h["head"]) for h in roles["name_mover"]]
    before = direct_logit_attribution(model, batch.tokens, batch.correct, batch.incorrect).heads.mean(0)
    after = direct_logit_attribution(model, batch.tokens, batch.correct, batch.incorrect,
                                     fwd_hooks=mean_ablation_hooks(means, nms)).heads.mean(0)
    scans["dla_change_without_name_movers"] = after - before
    relative = scans["dla_change_without_name_movers"] / max(run.clean_ld, 1e-6)
    roles["backup_name_mover"] = _pick(relative, max_per_role, 2 * threshold, set(nms) | used,
                                       {"dla_before": before, "dla_after": after})
    circuit = {(h["layer"], h["head"]) for group in roles.values() for h in group}
    faith = mean_ablation_faithfulness(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, circuit)
    return IOICircuit(roles, scans, attention, faith)
