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
``{"prompt": ..., "correct": " Mary", "incorrect": " John"}``, optionally ``"corrupted": ...``), of any
token lengths: they are grouped by length into batches and results are put back in file order.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mechdemo.errors import MechdemoError
from mechdemo.tokens import unpadded_tokens

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
    rows: list[int] = field(default_factory=list)  # user prompts: which lines of the file (0-based, blanks skipped)
    source: str | None = None  # user prompts: the file
    uncorrupted_lines: list[int] = field(default_factory=list)  # user prompts without a corrupted twin

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
            [self.corrupted_prompts[i] for i in idx] if self.corrupted_prompts else [],
            self.tokens[t], self.corrupted_tokens[t] if len(self.corrupted_tokens) else self.corrupted_tokens,
            self.correct[t], self.incorrect[t],
            {k: v[t] for k, v in self.positions.items()}, self.template,
            [self.orders[i] for i in idx] if self.orders else [], self.seed, self.corrupt,
            [self.rows[i] for i in idx] if self.rows else [], self.source,
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
    # no padding: "end" is the last position of every row, and clean and corrupted rows align position by position
    tokens = unpadded_tokens(model, clean + corrupted_prompts, f"IOI template {template}'s prompts")
    tokens, corrupted = tokens[:n], tokens[n:]
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


def check_prompt_file(path: str | Path) -> None:
    """What can be checked in a prompt file before a model is loaded: it exists, is UTF-8 text, and
    every non-blank line is a JSON object with string "prompt", "correct", "incorrect" (and
    optionally "corrupted"). :func:`load_prompts` checks the rest (single-token answers, lengths)."""
    path = Path(path)
    if not path.is_file():
        raise MechdemoError(f"--prompts {path}: no such file (one JSON object per line: "
                            '{"prompt": ..., "correct": " Mary", "incorrect": " John"})')
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise MechdemoError(f"{path}:{line}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        seen = True
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MechdemoError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "correct", "incorrect")):
            raise MechdemoError(f'{where}: expected {{"prompt": str, "correct": str, "incorrect": str}} '
                                '(and optionally "corrupted": str)')
        if "corrupted" in record and not isinstance(record["corrupted"], str):
            raise MechdemoError(f'{where}: "corrupted" must be a string (the prompt with the key information changed)')
    if not seen:
        raise MechdemoError(f"{path} holds no prompts: write one JSON object per line, e.g. "
                            '{"prompt": "When Mary and John went to the store, John gave a drink to", '
                            '"correct": " Mary", "incorrect": " John"}')


def load_prompts(model: "TransformerBridge", path: str | Path, seed: int = 0) -> list[IOIBatch]:
    """Read a JSONL file of ``{"prompt", "correct", "incorrect"}`` lines (optionally ``"corrupted"``).

    Prompts may have any token lengths: they are grouped by length, one :class:`IOIBatch` per length
    (in order of first appearance), and each batch's ``rows`` says which lines (0-based, blank lines
    skipped) it holds, so results go back into file order. Every answer must be a single token.

    The corrupted twin of a prompt, for patching and circuit discovery, is its ``"corrupted"`` field
    (same token length as the prompt, for aligned positions) or, without one, the ABC corruption of
    the built-in prompts: the last occurrence of the incorrect answer (S2) replaced by another
    single-token name that the prompt does not contain. A batch where some prompt has neither
    has no corrupted tokens (``corrupted_tokens`` empty; :func:`require_corrupted` names the line).
    A line that breaks a rule is named in the error.
    """
    path = Path(path)
    check_prompt_file(path)
    text = path.read_text(encoding="utf-8")
    names = [" " + n for n in single_token_words(model, list(NAMES))]
    name_ids = [model.tokenizer.encode(n, add_special_tokens=False)[0] for n in names]
    records = []  # (line number, prompt, tokens, corrupted tokens or None, correct id, incorrect id)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = json.loads(line)  # valid: check_prompt_file
        ids = {}
        for key in ("correct", "incorrect"):
            ids[key] = model.tokenizer.encode(record[key], add_special_tokens=False)
            if len(ids[key]) != 1:
                pieces = [model.tokenizer.decode([i]) for i in ids[key]]
                raise MechdemoError(
                    f"{where}: {key} answer {record[key]!r} is {len(ids[key])} tokens {pieces} for "
                    f"{model.cfg.model_name}; use a single-token answer (mind the leading space, e.g. ' Mary')"
                )
        tokens = model.to_tokens(record["prompt"])[0].cpu()
        if "corrupted" in record:
            corrupted = model.to_tokens(record["corrupted"])[0].cpu()
            if corrupted.shape != tokens.shape:
                raise MechdemoError(f"{where}: the corrupted prompt is {len(corrupted)} tokens and the prompt "
                                    f"{len(tokens)}: patching pairs their positions, so they must have the same "
                                    "token length (change a name for a name, a word for a word)")
        else:
            corrupted = _abc_corruption(tokens, ids["incorrect"][0], name_ids, random.Random(seed * 100_003 + number))
        records.append((number, record["prompt"], tokens, corrupted, ids["correct"][0], ids["incorrect"][0]))
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(len(r[2]), []).append(i)
    batches = []
    for rows in groups.values():
        rs = [records[i] for i in rows]
        tokens = torch.stack([r[2] for r in rs])
        complete = all(r[3] is not None for r in rs)
        corrupted = torch.stack([r[3] for r in rs]) if complete else torch.empty(0, dtype=torch.long)
        missing = [r[0] for r in rs if r[3] is None]
        end = torch.full((len(rs),), tokens.shape[1] - 1)
        batches.append(IOIBatch([r[1] for r in rs], [], tokens, corrupted, torch.tensor([r[4] for r in rs]),
                                torch.tensor([r[5] for r in rs]), {"end": end}, rows=rows,
                                source=str(path), uncorrupted_lines=missing))
    return batches


def _abc_corruption(tokens: Tensor, s_id: int, name_ids: list[int], rng: random.Random) -> Tensor | None:
    """``tokens`` with the last occurrence of ``s_id`` replaced by a name absent from the prompt (None if S is absent)."""
    where = (tokens == s_id).nonzero().flatten()
    if len(where) == 0:
        return None
    present = set(tokens.tolist())
    candidates = [i for i in name_ids if i not in present]
    if not candidates:
        return None
    out = tokens.clone()
    out[int(where[-1])] = rng.choice(candidates)
    return out


def require_corrupted(batches: list[IOIBatch]) -> None:
    """An error naming the first prompt line that has no corrupted twin (patching needs one)."""
    for b in batches:
        if b.uncorrupted_lines:
            raise MechdemoError(
                f"{b.source}:{b.uncorrupted_lines[0]}: no corrupted prompt: the line has no \"corrupted\" field and "
                "its incorrect answer does not occur in the prompt (where the ABC corruption would replace it); "
                'add a "corrupted" prompt of the same token length')
