"""The Indirect Object Identification (IOI) task of Wang et al. (2022), as data and a metric.

"When Mary and John went to the store, John gave a drink to" → " Mary". The sentence names two
people; the subject (S, "John") appears twice, the indirect object (IO, "Mary") once, and the
model should complete with the IO. The metric is the **logit difference**
``logit(IO) - logit(S)`` at the last position: positive means the model prefers the right name.

Each prompt comes from a template in one of two orders: ABBA (IO first: "Mary and John ...,
John gave ... to") or BABA (S first: "John and Mary ..., John gave ... to"). Names, places and
objects are drawn from pools filtered to single tokens (with their leading space) for the model's
tokenizer, so every prompt of a template has the same length and the same positions:
``IO``, ``S1`` (first subject), ``S1+1``, ``S2`` (second subject) and ``end`` (the last token, where the
answer is predicted). Analyses run one template at a time (:class:`IOIBatch`); :func:`ioi_batches`
gives one batch per template.

The **corrupted** ("ABC") version of each prompt replaces S2 with a third name C: "When Mary and
John went to the store, Tom gave a drink to". Nothing is repeated any more, so the information the
IOI circuit uses (which name is duplicated) is gone, while length, positions and the rest of the
sentence are identical. Patching experiments move activations between the two. ``corrupt="S1"``
replaces the first occurrence instead ("When Mary and Tom went to the store, John gave a drink
to"): the only way to see heads that act *before* S2, such as the previous-token heads that feed
induction heads at S1+1, since nothing before S2 differs in the S2 corruption.

Users can also bring their own prompts (:func:`load_prompts`, a JSONL file of
``{"prompt": ..., "correct": " Mary", "incorrect": " John"}``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.errors import MechdemoError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# {A} and {B}: the two names of the first clause; {S}: the repeated subject.
TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
NAMES = (
    "Mary John Alice Bob James Michael Sarah Emma David Daniel Laura Anna Tom Kate Paul Peter Lisa "
    "Mark Jessica Jennifer Robert William Richard Thomas Linda Susan Karen Nancy Helen Sandra Ruth "
    "Michelle Steven Kevin Brian George Edward Anthony Jason Matthew Frank Scott Eric Andrew Patrick "
    "Jack Henry Arthur Ryan Joe Samuel Adam Harry Victor Martin Alan Sean Chris Tony Nathan Jacob "
    "Oscar Alex Leo Sam Charlie Rachel Rose Grace Julia Claire Sophie Lucy Amy Emily Olivia Diana"
).split()
PLACES = "store park school hospital office restaurant station garden house beach market library museum".split()
OBJECTS = "drink book ring kiss bone basketball computer necklace flower snack bag apple letter gift ball".split()


def single_token_words(model: "TransformerBridge", words: list[str]) -> list[str]:
    """The words that are one token for ``model``'s tokenizer when preceded by a space."""
    tok = model.tokenizer
    return [w for w in words if len(tok.encode(" " + w, add_special_tokens=False)) == 1]


@dataclass
class IOIBatch:
    """Clean IOI prompts of one template, their corrupted (ABC) twins, answers and positions."""

    prompts: list[str]
    corrupted_prompts: list[str]
    tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    correct: Int[Tensor, " n"]  # IO token ids
    incorrect: Int[Tensor, " n"]  # S token ids
    positions: dict[str, Int[Tensor, " n"]] = field(default_factory=dict)  # IO, S1, S1+1, S2, end
    template: int | None = None
    orders: list[str] = field(default_factory=list)
    seed: int = 0
    corrupt: str = "S2"

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def end(self) -> int:
        return self.tokens.shape[1] - 1  # answers are predicted at the last token

    def subset(self, index: slice | list[int]) -> "IOIBatch":
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        t = torch.tensor(idx)
        return IOIBatch(
            [self.prompts[i] for i in idx],
            [self.corrupted_prompts[i] for i in idx],
            self.tokens[t], self.corrupted_tokens[t], self.correct[t], self.incorrect[t],
            {k: v[t] for k, v in self.positions.items()}, self.template,
            [self.orders[i] for i in idx] if self.orders else [], self.seed, self.corrupt,
        )


def _single_id(model: "TransformerBridge", text: str) -> int:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise MechdemoError(f"{text!r} is {len(ids)} tokens for {model.cfg.model_name}; answers must be single tokens")
    return ids[0]


def _find(row: list[int], token: int, after: int = -1) -> int:
    for i in range(after + 1, len(row)):
        if row[i] == token:
            return i
    raise ValueError(f"token {token} not found after position {after}")


def ioi_batch(
    model: "TransformerBridge",
    template: int = 0,
    n: int = 24,
    seed: int = 0,
    orders: tuple[str, ...] = ("ABBA", "BABA"),
    corrupt: str = "S2",
) -> IOIBatch:
    """``n`` IOI prompts from ``TEMPLATES[template]`` (orders alternating), with their ABC corruptions.

    ``corrupt``: which occurrence of the subject the third name replaces, ``"S2"`` or ``"S1"``. The
    clean prompts depend only on ``template``, ``n``, ``seed`` and ``orders``.
    """
    if corrupt not in ("S1", "S2"):
        raise MechdemoError(f"corrupt must be 'S1' or 'S2', not {corrupt!r}")
    if not 0 <= template < len(TEMPLATES):
        raise MechdemoError(f"template {template} does not exist: choose 0..{len(TEMPLATES) - 1}")
    rng = random.Random(seed * 1000 + template)
    names = single_token_words(model, list(NAMES))
    places, objects = single_token_words(model, PLACES), single_token_words(model, OBJECTS)
    if len(names) < 3 or not places or not objects:
        raise MechdemoError(f"{model.cfg.model_name}'s tokenizer splits too many names/places/objects into several tokens")
    clean, corrupted_prompts, io_ids, s_ids, order_list = [], [], [], [], []
    for i in range(n):
        io, s, c = rng.sample(names, 3)
        order = orders[i % len(orders)]
        a, b = (io, s) if order == "ABBA" else (s, io)
        fill = {"PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
        clean.append(TEMPLATES[template].format(A=a, B=b, S=s, **fill))
        if corrupt == "S2":
            corrupted_prompts.append(TEMPLATES[template].format(A=a, B=b, S=c, **fill))
        else:
            a2, b2 = (a, c) if order == "ABBA" else (c, b)
            corrupted_prompts.append(TEMPLATES[template].format(A=a2, B=b2, S=s, **fill))
        io_ids.append(_single_id(model, " " + io))
        s_ids.append(_single_id(model, " " + s))
        order_list.append(order)
    tokens, corrupted = model.to_tokens(clean), model.to_tokens(corrupted_prompts)
    if tokens.shape != corrupted.shape:
        raise RuntimeError("clean and corrupted prompts tokenize to different lengths")
    pos: dict[str, list[int]] = {"IO": [], "S1": [], "S1+1": [], "S2": [], "end": []}
    for row, io, s in zip(tokens.tolist(), io_ids, s_ids):
        s1 = _find(row, s)
        pos["IO"].append(_find(row, io))
        pos["S1"].append(s1)
        pos["S1+1"].append(s1 + 1)
        pos["S2"].append(_find(row, s, after=s1))
        pos["end"].append(len(row) - 1)
    return IOIBatch(
        clean, corrupted_prompts, tokens.cpu(), corrupted.cpu(), torch.tensor(io_ids), torch.tensor(s_ids),
        {k: torch.tensor(v) for k, v in pos.items()}, template, order_list, seed, corrupt,
    )


def ioi_batches(model: "TransformerBridge", n_per_template: int = 16, seed: int = 0,
                templates: list[int] | None = None) -> list[IOIBatch]:
    """One :class:`IOIBatch` per template (equal lengths within a batch, not across batches)."""
    return [ioi_batch(model, t, n_per_template, seed) for t in (templates if templates is not None else range(len(TEMPLATES)))]


# --- user prompts ----------------------------------------------------------------------------


def load_prompts(model: "TransformerBridge", path: str | Path) -> IOIBatch:
    """Read a JSONL file of ``{"prompt", "correct", "incorrect"}`` lines as one batch (no corruption).

    Every answer must be a single token and every prompt the same number of tokens (one batch,
    aligned positions); a line that breaks a rule is named in the error.
    """
    path = Path(path)
    if not path.is_file():
        raise MechdemoError(f"prompt file {path} does not exist")
    prompts, correct, incorrect, lengths = [], [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MechdemoError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "correct", "incorrect")):
            raise MechdemoError(f'{where}: expected {{"prompt": str, "correct": str, "incorrect": str}}')
        for key in ("correct", "incorrect"):
            ids = model.tokenizer.encode(record[key], add_special_tokens=False)
            if len(ids) != 1:
                pieces = [model.tokenizer.decode([i]) for i in ids]
                raise MechdemoError(
                    f"{where}: {key} answer {record[key]!r} is {len(ids)} tokens {pieces} for "
                    f"{model.cfg.model_name}; use a single-token answer (mind the leading space, e.g. ' Mary')"
                )
        n_tokens = model.to_tokens(record["prompt"]).shape[1]
        if lengths and n_tokens != lengths[0]:
            raise MechdemoError(
                f"{where}: the prompt is {n_tokens} tokens but line 1 of the batch is {lengths[0]}; "
                "all prompts of a file form one batch and must have the same token length"
            )
        prompts.append(record["prompt"])
        correct.append(model.tokenizer.encode(record["correct"], add_special_tokens=False)[0])
        incorrect.append(model.tokenizer.encode(record["incorrect"], add_special_tokens=False)[0])
        lengths.append(n_tokens)
    if not prompts:
        raise MechdemoError(f"{path} holds no prompts")
    tokens = model.to_tokens(prompts).cpu()
    end = torch.full((len(prompts),), tokens.shape[1] - 1)
    return IOIBatch(prompts, [], tokens, torch.empty(0, dtype=torch.long), torch.tensor(correct),
                    torch.tensor(incorrect), {"end": end})


# --- metric ----------------------------------------------------------------------------------


def logit_diff(
    logits: Float[Tensor, "n pos d_vocab"], correct: Int[Tensor, " n"], incorrect: Int[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """``logit[correct] - logit[incorrect]`` at the last position of each prompt."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, correct.to(last.device)] - last[rows, incorrect.to(last.device)]


def logit_diff_of(model: "TransformerBridge", tokens: Int[Tensor, "n pos"], batch: IOIBatch) -> Float[Tensor, " n"]:
    with torch.no_grad():
        return logit_diff(model(tokens.to(model.cfg.device)), batch.correct, batch.incorrect).float().cpu()


def summary(diffs: Float[Tensor, " n"]) -> dict:
    """The JSON summary of a logit-difference vector."""
    return {
        "logit_diff_mean": round(diffs.mean().item(), 4),
        "logit_diff_per_prompt": [round(x, 4) for x in diffs.tolist()],
        "accuracy": round((diffs > 0).float().mean().item(), 4),
    }


# --- the circuit ------------------------------------------------------------------------------

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
        run.clean[f"blocks.{l}.attn.hook_pattern"][rows, :, q, k].float().mean(0).cpu()
        for l in range(run.model.cfg.n_layers)
    ])


def _pick(effect: Tensor, k: int, threshold: float, exclude: set, extra: dict[str, Tensor] | None = None) -> list[dict]:
    from mechdemo.heads import top_heads

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
    from mechdemo.ablation import faithfulness, mean_ablation_hooks, mean_head_outputs
    from mechdemo.dla import direct_logit_attribution
    from mechdemo.patching import prepare_ioi
    from mechdemo.path_patching import path_patch_each_head

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
    faith = faithfulness(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, circuit)
    return IOICircuit(roles, scans, attention, faith)
