"""The readout: the final norm and the unembedding, the one way the residual stream becomes logits.

Every technique that asks "what does this vector say about the next token?" reads it the way the
model reads its last residual stream::

    logits = final_norm(x) W_U + b_U

* RMSNorm (Llama, SmolLM2):  ``final_norm(x) = γ ⊙ x / rms(x)``;
* LayerNorm (GPT-2):         ``final_norm(x) = γ ⊙ (x - mean(x)) / std(x) + β``.

The norm divides by a per-position **scale**; with the scale held at the value it took on a real
run (``ln_final.hook_scale``), the readout is linear in ``x``: the centring (LayerNorm only), the
multiplication by ``γ`` and the unembedding are all linear maps. That is what lets direct logit
attribution split the logits into a sum over components (:mod:`mechdemo.dla`), what the QK/OV
circuits fold into their matrices (:mod:`mechdemo.weight_circuits`), what an SAE feature's "logit
effect" means (``(centre(W_dec[f]) ⊙ γ) · W_U``, Anthropic's feature pages) and what the logit lens
and an attribution graph's logit nodes read. They all call this module, so the LayerNorm centring
and bias are treated the same way everywhere (the tests check each caller against the model's own
logits on a random GPT-2 and a random Llama).

Two readings, for two purposes:

* **the model's own readout** (:func:`logits_from_resid`, :func:`logit_diff_from_resid`): the Hugging
  Face norm module itself, so the numbers are the forward pass's, bit for bit;
* **the linear readout of a direction** (:func:`direction_logits`, :func:`folded_unembedding`,
  :func:`frozen_readout`): ``centre`` and ``γ`` folded in, the division by the scale either dropped
  (a direction has no natural scale: this is the unit-scale reading, which changes no ranking) or
  frozen at a run's value, and the constant part (``β W_U + b_U``) kept apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def final_norm(model: "TransformerBridge", resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """The model's final LayerNorm / RMSNorm (its Hugging Face module: same numerics as the forward)."""
    return model.ln_final.original_component(resid)


def logits_from_resid(
    model: "TransformerBridge", resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """The logits from the final residual stream: final norm, then the unembedding (and its bias)."""
    logits = final_norm(model, resid) @ model.W_U.to(resid.dtype)
    b_U = getattr(model, "b_U", None)
    return logits + b_U.to(logits.dtype) if b_U is not None else logits


def logit_diff_from_resid(
    model: "TransformerBridge",
    resid_end: Float[Tensor, "batch d_model"],
    correct: Int[Tensor, " batch"],
    incorrect: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """``logit[correct] - logit[incorrect]`` from the final residual stream at the answer position
    (two columns of the unembedding instead of all of them)."""
    normed = final_norm(model, resid_end)
    W_U = model.W_U
    direction = W_U[:, correct.to(W_U.device)] - W_U[:, incorrect.to(W_U.device)]  # [d_model, batch]
    diff = (normed * direction.T.to(normed.dtype)).sum(-1)
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        diff = diff + (b_U[correct.to(b_U.device)] - b_U[incorrect.to(b_U.device)]).to(diff.dtype)
    return diff


# --- the linear readout ---------------------------------------------------------------------------


def centres(norm_module) -> bool:
    """Whether a norm subtracts the mean before scaling (LayerNorm) or not (RMSNorm). ``norm_module``
    is a bridge component (``model.ln_final``, ``model.blocks[l].ln1``) or its Hugging Face module."""
    hf = getattr(norm_module, "original_component", norm_module)
    return isinstance(hf, torch.nn.LayerNorm)


def norm_weight(norm_module) -> Float[Tensor, " d_model"]:
    """``γ`` of a norm (float32, on the CPU)."""
    hf = getattr(norm_module, "original_component", norm_module)
    return hf.weight.detach().float().cpu()


def norm_bias(norm_module) -> Float[Tensor, " d_model"] | None:
    """``β`` of a LayerNorm (float32, on the CPU); None for RMSNorm or a LayerNorm without bias."""
    hf = getattr(norm_module, "original_component", norm_module)
    bias = getattr(hf, "bias", None)
    return None if bias is None else bias.detach().float().cpu()


def centre(norm_module, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """``x - mean(x)`` for a LayerNorm, ``x`` for an RMSNorm: the linear part of the norm before ``γ``."""
    return x - x.mean(-1, keepdim=True) if centres(norm_module) else x


def norm_map(norm_module, d_model: int) -> Float[Tensor, "d_model d_model"]:
    """The linear map a norm applies to a unit-scale row vector: ``diag(γ)``, after the centring
    projection ``I - 11ᵀ/d`` for LayerNorm (``x @ norm_map = centre(x) ⊙ γ``)."""
    fold = torch.diag(norm_weight(norm_module))
    if centres(norm_module):
        fold = (torch.eye(d_model) - torch.full((d_model, d_model), 1.0 / d_model)) @ fold
    return fold


def folded_unembedding(model: "TransformerBridge") -> Float[Tensor, "d_model d_vocab"]:
    """``norm_map(final norm) @ W_U``: the unembedding of unit-scale residual directions (float32, CPU)."""
    return norm_map(model.ln_final, model.cfg.d_model) @ model.W_U.detach().float().cpu()


@torch.no_grad()
def direction_logits(
    model: "TransformerBridge", directions: Float[Tensor, "n d_model"]
) -> Float[Tensor, "n d_vocab"]:
    """The direct logit effect of each direction: ``(centre(d) ⊙ γ) · W_U``, the logits it adds through
    the final norm at unit scale (the norm's division and bias left out: a direction has no scale of its
    own, and a positive scale changes no ranking). What an SAE feature's or a transcoder feature's
    decoder row promotes directly (float32, CPU)."""
    d = directions.detach().float().cpu()
    return (centre(model.ln_final, d) * norm_weight(model.ln_final)) @ model.W_U.detach().float().cpu()


def frozen_readout(
    model: "TransformerBridge",
    x: Float[Tensor, "n ... d_model"],
    scale: Float[Tensor, "n 1"],
    unembed: Float[Tensor, "n d_model"],
) -> Float[Tensor, "n ..."]:
    """``(centre(x) ⊙ γ / scale) · u``: the part of ``final_norm(x_total) · u`` that component ``x`` of
    the residual stream contributes when the norm's scale is frozen at ``scale`` (one per row: the
    scale of the run that ``x`` is part of). ``unembed`` holds one unembedding direction per row
    (e.g. ``W_U[:, correct] - W_U[:, incorrect]``). The contributions of every component of a
    residual stream plus :func:`readout_constant` add up to ``final_norm(x_total) · u`` exactly."""
    x = x.float().cpu()
    direction = unembed.float().cpu() * norm_weight(model.ln_final)
    extra = x.ndim - 2
    direction = direction.view(x.shape[0], *([1] * extra), -1)
    return (centre(model.ln_final, x) * direction).sum(-1) / scale.float().cpu().view(x.shape[0], *([1] * extra))


def readout_constant(
    model: "TransformerBridge", unembed: Float[Tensor, "n d_model"], bias_diff: Float[Tensor, " n"] | None = None
) -> Float[Tensor, " n"]:
    """The part of ``logits · u`` that no component writes: ``β · u`` (LayerNorm's bias) plus
    ``bias_diff`` (the unembedding bias of the same readout, e.g. ``b_U[correct] - b_U[incorrect]``)."""
    out = torch.zeros(unembed.shape[0])
    beta = norm_bias(model.ln_final)
    if beta is not None:
        out += (unembed.float().cpu() * beta).sum(-1)
    if bias_diff is not None:
        out += bias_diff.detach().float().cpu()
    return out


def answer_directions(
    model: "TransformerBridge", correct: Int[Tensor, " n"], incorrect: Int[Tensor, " n"]
) -> tuple[Float[Tensor, "n d_model"], Float[Tensor, " n"]]:
    """``W_U[:, correct] - W_U[:, incorrect]`` per prompt ([n, d_model], float32 CPU) and the matching
    unembedding-bias difference (zeros without ``b_U``): the readout of a logit difference."""
    W_U = model.W_U.detach().float().cpu()
    directions = (W_U[:, correct.cpu()] - W_U[:, incorrect.cpu()]).T
    b_U = getattr(model, "b_U", None)
    if b_U is None:
        return directions, torch.zeros(len(correct))
    b = b_U.detach().float().cpu()
    return directions, b[correct.cpu()] - b[incorrect.cpu()]
