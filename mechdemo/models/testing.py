"""Random-weight models of the registered architectures, built offline: for tests and teaching.

Same config as the real model (optionally fewer layers, a narrower width or a smaller vocabulary),
same hook names, GQA layout, norms and positions; no download. The compute of a forward pass does
not depend on the weights' values, so these models also measure time and memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from mechdemo.models.loading import offline_tokenizer, wrap
from mechdemo.models.registry import DEFAULT_MODEL, get_spec

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)


def random_model(
    name: str, n_layers: int | None = None, seed: int = 0, vocab_size: int | None = None,
    d_model: int | None = None, tokenizer: Any = None,
) -> "TransformerBridge":
    """A model with the registered architecture and random weights, built offline.

    For tests and teaching: same config (optionally fewer layers), hook names, GQA layout,
    norms and positions as the real model, no download. ``tokenizer`` (loaded from a folder: the
    bridge reloads it from there) is the model's own where one can be built offline
    (:func:`mechdemo.models.packaged_tokenizer`: GPT-2's, Llama 3's); by default the model borrows the
    offline model's tokenizer, so text in, text out, works. ``vocab_size`` (default: the published
    config's) shrinks the embedding and unembedding where the vocabulary is not what is tested
    (Llama 3.2 1B's 128,256 x 2,048 embedding alone is 1 GB). A vocabulary smaller than the
    tokenizer's (Phi-3's 32,064 rows under the borrowed tokenizer's 49,152 ids) is allowed with a
    warning: text whose ids do not fit fails in the embedding (IndexError), never silently.
    ``d_model`` narrows the model where its width is not what is tested (an equivalence of two
    patching implementations): same head size, same query heads per K/V head (GQA), same
    MLP-to-model width ratio, fewer heads.
    """
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    config = spec.published_config()
    tokenizer = tokenizer if tokenizer is not None else offline_tokenizer()
    if n_layers is not None:
        setattr(config, "n_layer" if config.model_type == "gpt2" else "num_hidden_layers", n_layers)
    if d_model is not None:
        _narrow(config, d_model)
    if vocab_size is not None:
        config.vocab_size = vocab_size
    if config.vocab_size < len(tokenizer):
        log.warning("random %s: %d embedding rows for a tokenizer of %d ids: ids from %d up fail in the embedding",
                    spec.name, config.vocab_size, len(tokenizer), config.vocab_size)
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return wrap(hf_model, tokenizer, spec.name, "cpu")


def _narrow(config, d_model: int) -> None:
    """Set a published config's width to ``d_model``, keeping head size, GQA group and MLP ratio."""
    if config.model_type == "gpt2":
        head_dim = config.n_embd // config.n_head
        if d_model % head_dim:
            raise ValueError(f"d_model {d_model} is not a multiple of the head size {head_dim}")
        config.n_embd, config.n_head = d_model, d_model // head_dim
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    if d_model % (head_dim * group):
        raise ValueError(f"d_model {d_model} is not a multiple of head size x GQA group ({head_dim} x {group})")
    ratio = config.intermediate_size / config.hidden_size
    config.hidden_size, config.head_dim = d_model, head_dim
    config.num_attention_heads = d_model // head_dim
    config.num_key_value_heads = config.num_attention_heads // group
    config.intermediate_size = round(ratio * d_model)


def offline_vocab_size() -> int:
    """Token ids the offline tokenizer can produce (the smallest vocabulary a random test model may have)."""
    return get_spec(DEFAULT_MODEL).architecture.d_vocab
