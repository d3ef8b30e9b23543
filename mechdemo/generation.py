"""Text generation written by hand: decoding strategies over the model's logits, with or without a KV cache.

``transformers``' ``generate`` does all of this; it is rewritten here (small functions, one
strategy each) because seeing it is the point of the course's generation guide, and tested against
``generate`` (greedy and beam search give the same tokens).

The forward pass is the Hugging Face model inside the bridge (``model.original_model``), which owns
the KV cache: with the cache, step ``t`` feeds only the newest token and reuses the keys and values
of the ``t - 1`` before it; without it, every step reprocesses the whole sequence.

KV-cache memory: every layer keeps a key and a value vector per **key/value head** and position:
``2 x n_layers x n_kv_heads x d_head x seq_len x bytes`` (x batch). Grouped-query attention shares
each K/V head among several query heads, so counting query heads (as the course's guide did)
overstates Llama 3.2 1B's cache 4x (32 query heads, 8 K/V heads) and SmolLM2-135M's 3x.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.errors import MechdemoError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

STRATEGIES = ("greedy", "sample", "top-k", "top-p", "beam")


# --- strategies: logits -> next token ---------------------------------------------------------


def greedy(logits: Float[Tensor, "vocab"], generator: torch.Generator | None = None) -> int:
    """The most probable token."""
    return int(logits.argmax())


def _check_k(k: int) -> None:
    if k < 1:
        raise MechdemoError(f"top-k needs k >= 1, got {k}")


def _check_p(p: float) -> None:
    if not 0 < p <= 1:
        raise MechdemoError(f"top-p needs 0 < p <= 1, got {p}")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise MechdemoError(f"temperature must be > 0 (use greedy for temperature 0), got {temperature}")


def top_k_filter(logits: Float[Tensor, "vocab"], k: int) -> Float[Tensor, "vocab"]:
    """Logits outside the ``k`` largest set to -inf."""
    _check_k(k)
    kth = logits.topk(min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Float[Tensor, "vocab"], p: float) -> Float[Tensor, "vocab"]:
    """Nucleus: keep the smallest set of most probable tokens whose probability reaches ``p``."""
    _check_p(p)
    sorted_logits, order = logits.sort(descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative - sorted_logits.softmax(-1) >= p  # tokens after the nucleus is complete
    return logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def sample(logits: Float[Tensor, "vocab"], generator: torch.Generator | None = None, temperature: float = 1.0) -> int:
    """Draw from ``softmax(logits / temperature)``."""
    _check_temperature(temperature)
    probs = (logits.float() / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_chooser(strategy: str, temperature: float = 1.0, k: int = 50, p: float = 0.9) -> Callable:
    """``choose(logits, generator) -> token id`` for a single-sequence strategy.

    The settings are checked here, before any generation (the filters and :func:`sample` check them
    too when called on their own): a wrong ``p`` fails before the model is even loaded.
    """
    if strategy == "greedy":
        return greedy
    if strategy in ("sample", "top-k", "top-p"):
        _check_temperature(temperature)
    if strategy == "top-k":
        _check_k(k)
    if strategy == "top-p":
        _check_p(p)
    if strategy == "sample":
        return lambda logits, g: sample(logits, g, temperature)
    if strategy == "top-k":
        return lambda logits, g: sample(top_k_filter(logits, k), g, temperature)
    if strategy == "top-p":
        return lambda logits, g: sample(top_p_filter(logits, p), g, temperature)
    raise MechdemoError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Generation:
    """What a generation did: the new tokens, each step's top candidates, forward passes and time per token."""

    prompt_ids: list[int]
    new_ids: list[int]
    steps: list[list[tuple[int, float]]] = field(default_factory=list)  # top-3 (token id, probability) per step
    forward_passes: int = 0
    seconds_per_token: list[float] = field(default_factory=list)


class _Stepper:
    """Next-token logits for a growing batch of sequences, with or without the KV cache."""

    def __init__(self, hf, use_cache: bool):
        self.hf, self.use_cache, self.cache, self.forward_passes = hf, use_cache, None, 0

    @torch.no_grad()
    def __call__(self, ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch vocab"]:
        self.forward_passes += 1
        if self.use_cache and self.cache is not None:
            out = self.hf(ids[:, -1:], past_key_values=self.cache, use_cache=True)
        else:
            out = self.hf(ids, use_cache=self.use_cache)
        if self.use_cache:
            self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def reorder(self, beams: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(beams)


def stop_ids(model: "TransformerBridge") -> set[int]:
    """The tokens that end a generation, as ``transformers``' ``generate`` stops: the ids of the model's
    generation config (Phi-3-mini-4k-instruct's: ``<|endoftext|>``, ``<|assistant|>`` and the chat's end
    of turn ``<|end|>``; the other registered models' name their EOS), else the tokenizer's EOS."""
    config = getattr(model.original_model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    ids.discard(None)
    if ids:
        return {int(i) for i in ids}
    eos = model.tokenizer.eos_token_id
    return set() if eos is None else {int(eos)}


def _prompt_ids(model: "TransformerBridge", prompt: str | Tensor) -> Int[Tensor, "1 pos"]:
    if isinstance(prompt, str):
        return model.to_tokens(prompt).cpu()  # BOS first, as the analyses
    return prompt.reshape(1, -1).cpu()


def generate(
    model: "TransformerBridge", prompt: str | Tensor, strategy: str = "greedy", max_new_tokens: int = 20,
    use_cache: bool = True, temperature: float = 1.0, k: int = 50, p: float = 0.9, num_beams: int = 4,
    seed: int = 0, stop_at_eos: bool = True,
) -> Generation:
    """Generate ``max_new_tokens`` tokens after ``prompt`` with a strategy of :data:`STRATEGIES`."""
    if strategy == "beam":
        return beam_search(model, prompt, num_beams, max_new_tokens, use_cache, stop_at_eos)
    choose = make_chooser(strategy, temperature, k, p)
    hf = model.original_model
    ids = _prompt_ids(model, prompt).to(hf.device)
    stops = stop_ids(model) if stop_at_eos else set()
    generator = torch.Generator().manual_seed(seed)
    step = _Stepper(hf, use_cache)
    result = Generation(ids[0].tolist(), [])
    for _ in range(max_new_tokens):
        start = time.perf_counter()
        logits = step(ids)[0].cpu()
        token = choose(logits, generator)
        result.seconds_per_token.append(time.perf_counter() - start)
        probs, top = logits.softmax(-1).topk(3)
        result.steps.append([(int(t), float(q)) for t, q in zip(top, probs)])
        result.new_ids.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
        if token in stops:
            break
    result.forward_passes = step.forward_passes
    return result


def beam_search(
    model: "TransformerBridge", prompt: str | Tensor, num_beams: int = 4, max_new_tokens: int = 20,
    use_cache: bool = True, stop_at_eos: bool = True,
) -> Generation:
    """Beam search as ``transformers`` does it (length penalty 1): keep the ``num_beams`` highest sums
    of log-probabilities among ``2 x num_beams`` candidates; a candidate ending in EOS that ranks in the
    first ``num_beams`` is finished, scored by its sum divided by its generated length; stop when
    ``num_beams`` hypotheses are finished or at ``max_new_tokens``, and return the best."""
    hf = model.original_model
    ids = _prompt_ids(model, prompt).to(hf.device)
    prompt_len = ids.shape[1]
    stops = stop_ids(model) if stop_at_eos else set()
    step = _Stepper(hf, use_cache)
    beams = ids.repeat(num_beams, 1)
    scores = torch.full((num_beams,), float("-inf"))
    scores[0] = 0.0  # all beams start as the prompt: count it once
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_new_tokens):
        logprobs = step(beams).cpu().log_softmax(-1)  # [beams, vocab]
        top_scores, top_index = (scores[:, None] + logprobs).flatten().topk(2 * num_beams)
        generated = beams.shape[1] + 1 - prompt_len
        keep: list[tuple[int, int, float]] = []  # (beam, token, score)
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, logprobs.shape[-1])
            if token in stops:
                if rank < num_beams:
                    finished.append((score / generated, beams[beam, prompt_len:].tolist() + [token]))
            elif len(keep) < num_beams:
                keep.append((beam, token, score))
        order = torch.tensor([b for b, _, _ in keep], device=beams.device)
        beams = torch.cat([beams[order], torch.tensor([[t] for _, t, _ in keep], device=beams.device)], dim=1)
        scores = torch.tensor([s for _, _, s in keep])
        step.reorder(order)
        if len(finished) >= num_beams:
            break
    generated = beams.shape[1] - prompt_len
    candidates = finished + [(float(s) / generated, beams[i, prompt_len:].tolist()) for i, s in enumerate(scores)]
    best = max(candidates, key=lambda c: c[0])[1]
    return Generation(ids[0].tolist(), best, forward_passes=step.forward_passes)


# --- the KV cache -----------------------------------------------------------------------------


def kv_cache_bytes(n_layers: int, n_kv_heads: int, d_head: int, seq_len: int, bytes_per_value: int = 2,
                   batch: int = 1) -> int:
    """Memory of a KV cache: ``2 (K and V) x layers x K/V heads x d_head x positions x bytes x batch``."""
    return 2 * n_layers * n_kv_heads * d_head * seq_len * bytes_per_value * batch


def kv_cache_bytes_of(config, seq_len: int, dtype: torch.dtype = torch.float32, batch: int = 1) -> int:
    """:func:`kv_cache_bytes` from a ``transformers`` config (GPT-2 and Llama field names)."""
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = getattr(config, "hidden_size", None) or config.n_embd
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    return kv_cache_bytes(n_layers, n_kv, d_head, seq_len, torch.empty((), dtype=dtype).element_size(), batch)


def measured_cache_bytes(cache) -> int:
    """Bytes held by a ``transformers`` cache's key and value tensors."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
