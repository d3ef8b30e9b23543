"""A device self-check: one short forward pass on the CPU and on the accelerator, compared.

GPU back ends can return silently wrong numbers for exactly this kind of work: on Apple's MPS the
IOI logit difference of GPT-2 came out inverted (TransformerLens issue #1178), and torch 2.8 on
MPS corrupted ``generate`` (#1062). An analysis run there would draw confident, wrong figures.
So the first time a process uses a non-CPU device (for a dtype), :func:`check_device` runs a model
on one IOI prompt in float32 on the CPU (the reference) and in the device's dtype on the device,
and compares the logits:

* **relative error**: the largest absolute difference of the logits, over every position after the
  first, divided by the largest absolute reference logit. The first position is left out: models
  write huge activations at BOS, where half precision is legitimately far off (SmolLM2 in bfloat16
  on the CPU: 0.24 there, 0.03 elsewhere). Tolerance by dtype (:data:`TOLERANCE`): a few times what
  the CPU's own half-precision kernels differ from float32 on that prompt (measured on SmolLM2:
  float16 0.004, bfloat16 0.03), far below a wrong kernel (inverted logits: 2).
* **the IOI logit difference** ``logit(" Mary") - logit(" John")`` must keep its sign.

A failed check is a :class:`DeviceCheck` whose :meth:`~DeviceCheck.warning` gives the measured
numbers and the fix (``--device cpu``); :func:`mechdemo.models.load_model` decides what to do with
it (an automatically picked device is dropped for the CPU, a requested one is kept with the warning).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

CHECK_PROMPT = "When Mary and John went to the store, John gave a drink to"
ANSWERS = (" Mary", " John")  # correct, incorrect

# largest relative logit error (see the module docstring) accepted in each dtype
TOLERANCE = {torch.float32: 2e-3, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True)
class DeviceCheck:
    """What the self-check measured on one device and dtype."""

    device: str
    dtype: str
    model: str
    max_abs_diff: float  # largest |logit difference| after the first position
    logit_scale: float  # largest |reference logit| there
    tolerance: float  # accepted relative error
    logit_diff_cpu: float | None = None  # logit(IO) - logit(S) at the last position, on the CPU
    logit_diff_device: float | None = None  # the same on the device

    @property
    def relative_error(self) -> float:
        return self.max_abs_diff / max(self.logit_scale, 1e-12)

    @property
    def sign_kept(self) -> bool:
        if self.logit_diff_cpu is None or self.logit_diff_device is None:
            return True
        return (self.logit_diff_cpu > 0) == (self.logit_diff_device > 0)

    @property
    def passed(self) -> bool:
        return self.relative_error <= self.tolerance and self.sign_kept

    def summary(self) -> str:
        text = (f"{self.model} on {self.device} in {self.dtype}: logits differ from the CPU's by up to "
                f"{self.max_abs_diff:.4g} (relative {self.relative_error:.3g}; tolerance for {self.dtype} "
                f"{self.tolerance:g})")
        if self.logit_diff_cpu is not None and self.logit_diff_device is not None:
            text += (f"; IOI logit difference {self.logit_diff_device:+.3f} on {self.device}, "
                     f"{self.logit_diff_cpu:+.3f} on the CPU")
        return text

    def warning(self) -> str:
        return (f"Device self-check FAILED: {self.summary()}. Results computed on {self.device} would be wrong "
                f"(known for MPS: TransformerLens issues #1178, #1062). Use the CPU: --device cpu "
                "(load_model(..., device='cpu')); or update torch and macOS/drivers and rerun.")


def run_on_device(hf_model: Any, tokens: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Logits of a copy of ``hf_model`` moved to ``device`` in ``dtype`` (returned on the CPU, float32)."""
    moved = copy.deepcopy(hf_model).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            return moved(tokens.to(device)).logits.float().cpu()
    finally:
        del moved
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()


def check_device(hf_model: Any, tokenizer: Any, device: torch.device | str, dtype: torch.dtype, model_name: str,
                 forward: Callable[..., Tensor] | None = None) -> DeviceCheck:
    """Compare ``hf_model`` (a float32 ``transformers`` causal LM on the CPU) on :data:`CHECK_PROMPT`
    with the same model on ``device`` in ``dtype`` (``forward``: how it is run there, by default
    :func:`run_on_device`; tests pass a fake device)."""
    device = torch.device(device)
    ids = tokenizer(CHECK_PROMPT, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    tokens = torch.tensor([([bos] if bos is not None else []) + list(ids)])
    with torch.no_grad():
        reference = hf_model(tokens).logits.float()
    on_device = (forward or run_on_device)(hf_model, tokens, device, dtype)
    start = 1 if tokens.shape[1] > 1 else 0
    diff = (on_device[:, start:] - reference[:, start:]).abs().max()
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    lds: tuple[float | None, float | None] = (None, None)
    if all(len(a) == 1 and a[0] < reference.shape[-1] for a in answers):
        (io,), (s,) = answers
        lds = tuple(float(x[0, -1, io] - x[0, -1, s]) for x in (reference, on_device))  # type: ignore[assignment]
    if not torch.isfinite(on_device).all():
        diff = torch.tensor(float("inf"))
    return DeviceCheck(str(device), str(dtype).removeprefix("torch."), model_name, float(diff),
                       float(reference[:, start:].abs().max()), TOLERANCE.get(dtype, 2e-2), *lds)
