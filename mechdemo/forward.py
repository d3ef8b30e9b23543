"""Partial forward passes: run a model from layer ``l`` (and stop where the answer is known).

Patching experiments change one activation and rerun the model. Everything upstream of the
patched layer is unchanged, so recomputing it is wasted work; so is the unembedding, a
[d_model x d_vocab] product per position, when the metric is a logit difference between two
tokens at one position. TransformerBridge runs whole forward passes only (``start_at_layer``
is not supported), so this module runs its blocks itself:

* :func:`block_context` records what the model passes to its blocks besides the residual
  stream (attention mask, rotary cos/sin or nothing, position ids) on one forward pass;
* :func:`run_blocks` feeds a residual stream through ``model.blocks[start:stop]`` with that
  context. The blocks are the bridge's own, so every hook point fires as usual and patching hooks
  work inside;
* with ``prefix_len = d`` the context also holds the keys and values of the first ``d`` positions
  (a KV cache, as in generation), and :func:`run_blocks` runs positions ``d..`` only. Patching uses
  it for the positions before the first token where clean and corrupted prompts differ: by
  causality their activations are identical in both runs, so they never need recomputing;
* the logits are read from the final residual stream by :mod:`mechdemo.readout`.

The tests check that running from any layer reproduces the full forward pass exactly, for the
GPT-2 (LayerNorm, learned positions) and Llama (RMSNorm, RoPE, GQA) code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.interventions import Hook, hooks

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge



@dataclass
class BlockContext:
    """Positional and keyword arguments every block receives after the residual stream.

    With ``prefix_len > 0`` the blocks see positions ``prefix_len..n_pos-1`` only, and
    ``prefix_kv[layer]`` holds the keys and values of the earlier positions ([n, kv_heads, prefix, d_head]).
    """

    args: tuple
    kwargs: dict[str, Any]
    n_pos: int
    prefix_len: int = 0
    prefix_kv: list[tuple[Tensor, Tensor]] | None = None

    @property
    def n_run(self) -> int:
        """Positions the blocks actually run on."""
        return self.n_pos - self.prefix_len


class _CacheSlot:
    """Stands where the model passed its KV cache; :func:`run_blocks` puts a fresh one there."""


CACHE_SLOT = _CacheSlot()


def _batch_free(value: Any) -> Any:
    from transformers.cache_utils import Cache

    if isinstance(value, Cache):
        return CACHE_SLOT  # a KV cache belongs to one batch: run_blocks builds one per call
    if isinstance(value, Tensor) and value.ndim == 4 and value.shape[0] > 1:
        if not bool((value == value[:1]).all()):
            raise ValueError("the attention mask differs across the batch (padding?); pass unpadded tokens")
        return value[:1]  # the same causal mask for every sequence: broadcast over any batch size
    return value


def block_context(model: "TransformerBridge", tokens: Int[Tensor, "batch pos"], prefix_len: int = 0) -> BlockContext:
    """Record the non-residual arguments of ``model.blocks[0]`` on a forward pass of ``tokens``.

    The context depends only on the number of positions (no padding), so it serves any batch of
    sequences of that length. With ``prefix_len``, the keys and values of ``tokens[:, :prefix_len]``
    are computed once (for every sequence of ``tokens``) and the blocks run the rest.
    """
    from transformers.cache_utils import DynamicCache

    if not 0 <= prefix_len < tokens.shape[1]:
        raise ValueError(f"prefix_len must be in 0..{tokens.shape[1] - 1}, got {prefix_len}")
    record: dict[str, Any] = {}
    hf = model.original_model
    tokens = tokens.to(model.cfg.device)
    prefix_kv = None
    if prefix_len:
        with torch.no_grad():
            past = hf(tokens[:, :prefix_len], use_cache=True).past_key_values
        prefix_kv = [(past.layers[l].keys, past.layers[l].values) for l in range(model.cfg.n_layers)]

    def capture(module, args, kwargs):
        record["args"] = tuple(_batch_free(a) for a in args[1:])
        record["kwargs"] = {k: _batch_free(v) for k, v in kwargs.items() if k != "use_cache"}
        raise _Captured

    handle = model.blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            if prefix_len:
                past_one = DynamicCache(config=hf.config)
                for layer, (k, v) in enumerate(prefix_kv):
                    past_one.update(k[:1], v[:1], layer)
                hf(tokens[:1, prefix_len:], past_key_values=past_one, use_cache=True)
            else:
                hf(tokens[:1], use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    return BlockContext(record["args"], record["kwargs"], tokens.shape[1], prefix_len, prefix_kv)


class _Captured(Exception):
    """Stops the forward pass once block 0's arguments are recorded."""


def run_blocks(
    model: "TransformerBridge",
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    context: BlockContext,
    stop: int | None = None,
    fwd_hooks: Sequence[Hook] = (),
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks ``start .. stop - 1`` (default: to the last) on ``resid`` = ``hook_resid_pre`` of ``start``.

    ``resid`` covers the positions the context runs (``context.n_run``; all of them without a
    prefix). Its batch must be a whole number of copies of the prompts the context was built on
    when there is a prefix (copy ``c`` of prompt ``i`` at row ``c * n + i``).
    """
    from transformers.cache_utils import DynamicCache

    stop = model.cfg.n_layers if stop is None else stop
    if resid.shape[1] != context.n_run:
        raise ValueError(f"context runs {context.n_run} positions, resid has {resid.shape[1]}")
    cache = None
    if context.prefix_kv is not None:
        n = context.prefix_kv[0][0].shape[0]
        if resid.shape[0] % n:
            raise ValueError(f"batch of {resid.shape[0]} is not a whole number of copies of {n} prompts")
        copies = resid.shape[0] // n
        cache = DynamicCache(config=model.original_model.config)
        for layer in range(start, stop):
            k, v = context.prefix_kv[layer]
            cache.update(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1), layer)

    def fill(value):
        return cache if value is CACHE_SLOT else value

    args = tuple(fill(a) for a in context.args)
    kwargs = {k: fill(v) for k, v in context.kwargs.items()}
    with hooks(model, list(fwd_hooks)):
        for layer in range(start, stop):
            out = model.blocks[layer](resid, *args, **kwargs)
            resid = out[0] if isinstance(out, tuple) else out
    return resid
