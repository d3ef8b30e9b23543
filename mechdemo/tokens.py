"""Token sets the analyses use: ordinary tokens, whole-word tokens, repeated random sequences."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mechdemo.errors import MechdemoError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def bos_token_id(model: "TransformerBridge") -> int:
    bos = model.tokenizer.bos_token_id
    if bos is None:
        raise MechdemoError(f"{model.cfg.model_name}'s tokenizer has no BOS token; pass tokens explicitly.")
    return int(bos)


def unpadded_tokens(model: "TransformerBridge", prompts: list[str], what: str = "prompts") -> Int[Tensor, "n pos"]:
    """``model.to_tokens(prompts)`` (BOS first), refusing to pad: analyses that read "the last position"
    or fixed positions need every prompt to have the same number of tokens, and ``to_tokens`` would pad
    the shorter ones silently (under GPT-2 with its BOS id, 50256, so the pads look like tokens). A
    :class:`MechdemoError` names the two prompts that differ."""
    lengths = [len(ids) for ids in model.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    if len(set(lengths)) > 1:
        short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
        raise MechdemoError(
            f"{what} of different token lengths for {model.cfg.model_name} ({prompts[short]!r}: {lengths[short]}, "
            f"{prompts[long]!r}: {lengths[long]}); they would be padded and their positions would not align. Use "
            "words that are single tokens for this tokenizer (mechdemo.ioi.single_token_words), or group prompts by "
            "length (mechdemo.ioi.load_prompts does)")
    tokens = model.to_tokens(list(prompts))
    return tokens


def ordinary_token_ids(model: "TransformerBridge") -> Int[Tensor, " n"]:
    """Ids of ordinary vocabulary tokens: no special or added tokens (BOS, EOS, chat markers...)."""
    tok = model.tokenizer
    excluded = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
    n = min(len(tok), model.cfg.d_vocab)
    keep = torch.ones(n, dtype=torch.bool)
    keep[[i for i in excluded if i < n]] = False
    return keep.nonzero().squeeze(-1)


def repeated_random_tokens(
    model: "TransformerBridge", batch: int = 8, seq_len: int = 50, seed: int = 0
) -> Int[Tensor, "batch two_seq_len_plus_1"]:
    """``[BOS] + R + R`` with R uniform over ordinary tokens (BOS added even if the tokenizer does not)."""
    if batch < 1 or seq_len < 2:
        raise MechdemoError(f"need batch >= 1 and seq_len >= 2, got batch={batch}, seq_len={seq_len}")
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise MechdemoError(
            f"[BOS] + R + R with seq_len={seq_len} is {2 * seq_len + 1} tokens, more than "
            f"{model.cfg.model_name}'s context of {model.cfg.n_ctx}: use --seq-len {(model.cfg.n_ctx - 1) // 2} or less"
        )
    generator = torch.Generator().manual_seed(seed)
    pool = ordinary_token_ids(model)
    r = pool[torch.randint(len(pool), (batch, seq_len), generator=generator)]
    bos = torch.full((batch, 1), bos_token_id(model), dtype=r.dtype)
    return torch.cat([bos, r, r], dim=1)


def word_token_ids(model: "TransformerBridge", n: int = 1000, seed: int = 0) -> Int[Tensor, " n"]:
    """``n`` random tokens that are whole lower-case words with a leading space (" house", " river").

    Full circuits are easiest to read on such tokens: each is a word a reader recognises.
    """
    pool = ordinary_token_ids(model)
    words = [
        int(i)
        for i, text in zip(pool.tolist(), model.tokenizer.convert_ids_to_tokens(pool.tolist()))
        if _is_word(model.tokenizer.convert_tokens_to_string([text]))
    ]
    if len(words) < n:
        raise MechdemoError(f"{model.cfg.model_name} has only {len(words)} whole-word tokens; ask for fewer")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(words), generator=generator)[:n]
    return torch.tensor(words)[pick]


def _is_word(text: str) -> bool:
    return text.startswith(" ") and len(text) >= 4 and text[1:].isalpha() and text[1:].islower()
