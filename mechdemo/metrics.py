"""What a patching experiment measures: metrics on the answer position, and their normalisation.

Every patching method in this package (activation, attribution, path and edge patching, EAP)
asks the same question: how much of the model's clean behaviour survives when part of the
computation sees the corrupted input? The *metric* says what "behaviour" means. It reads the
logits at the answer position of each prompt and returns one number per prompt:

* :class:`LogitDifference` — ``logit[correct] - logit[incorrect]`` (Wang et al. 2022), the IOI
  default: it isolates the choice between two names and is linear in the final residual stream
  (up to the final norm), so patching scores add up well;
* :class:`AnswerProbability` — ``p(correct)``: what a user reads off a completion, but saturating
  near 0 and 1 (Zhang & Nanda 2024, "Towards best practices of activation patching");
* :class:`KLToClean` — the KL divergence of the patched next-token distribution from the clean
  one, over the whole vocabulary (Conmy et al. 2023 use it for ACDC): no answer tokens needed.

Any metric is normalised the same way, with its mean on the clean and on the corrupted prompts::

    normalised = (m - m_corrupted) / (m_clean - m_corrupted)

so 1 is the clean behaviour and 0 the corrupted one whatever the metric's sign or scale (for the
KL, ``m_clean = 0``). A metric also works from the final residual stream (:meth:`Metric.from_resid`):
batched patching runs stop there, and the logit difference then needs two columns of the
unembedding instead of all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.readout import logit_diff_from_resid, logits_from_resid

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METRICS = ("logit_diff", "probability", "kl")


def logit_diff(
    logits: Float[Tensor, "n pos d_vocab"], correct: Int[Tensor, " n"], incorrect: Int[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """``logit[correct] - logit[incorrect]`` at the last position of each prompt."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, correct.to(last.device)] - last[rows, incorrect.to(last.device)]


class Metric:
    """One number per prompt from the logits at its answer position (the last position).

    ``rows`` says which prompt each row is (patching runs many copies of a batch at once); by
    default row ``i`` is prompt ``i``.
    """

    name = "metric"

    def __call__(self, logits_end: Float[Tensor, "rows d_vocab"], rows: Int[Tensor, " rows"] | None = None) -> Tensor:
        raise NotImplementedError

    def from_resid(
        self, model: "TransformerBridge", resid_end: Float[Tensor, "rows d_model"], rows: Int[Tensor, " rows"] | None = None
    ) -> Float[Tensor, " rows"]:
        """The metric from the final residual stream at the answer position."""
        return self(logits_from_resid(model, resid_end), rows)

    def on_logits(self, logits: Float[Tensor, "n pos d_vocab"]) -> Float[Tensor, " n"]:
        """The metric from a full forward pass's logits (the answer at the last position)."""
        return self(logits[:, -1])


def _rows(rows: Tensor | None, n: int, device) -> Tensor:
    return torch.arange(n, device=device) if rows is None else rows.to(device)


class LogitDifference(Metric):
    """``logit[correct] - logit[incorrect]``, per prompt."""

    name = "logit_diff"

    def __init__(self, correct: Int[Tensor, " n"], incorrect: Int[Tensor, " n"]):
        self.correct, self.incorrect = correct, incorrect

    def __call__(self, logits_end, rows=None):
        r = _rows(rows, logits_end.shape[0], logits_end.device)
        i = torch.arange(logits_end.shape[0], device=logits_end.device)
        c, w = self.correct.to(logits_end.device)[r], self.incorrect.to(logits_end.device)[r]
        return logits_end[i, c] - logits_end[i, w]

    def from_resid(self, model, resid_end, rows=None):
        """Two columns of the unembedding instead of all of them (:func:`mechdemo.readout.logit_diff_from_resid`)."""
        r = _rows(rows, resid_end.shape[0], self.correct.device)
        return logit_diff_from_resid(model, resid_end, self.correct[r], self.incorrect[r])


class AnswerProbability(Metric):
    """``p(correct)`` under the next-token distribution, per prompt."""

    name = "probability"

    def __init__(self, correct: Int[Tensor, " n"]):
        self.correct = correct

    def __call__(self, logits_end, rows=None):
        r = _rows(rows, logits_end.shape[0], logits_end.device)
        i = torch.arange(logits_end.shape[0], device=logits_end.device)
        return logits_end.float().softmax(-1)[i, self.correct.to(logits_end.device)[r]]


class KLToClean(Metric):
    """``KL(p_clean || p_patched)`` of the next-token distributions, per prompt (0 on the clean run)."""

    name = "kl"

    def __init__(self, clean_logits_end: Float[Tensor, "n d_vocab"]):
        self.clean_logprobs = clean_logits_end.detach().float().log_softmax(-1)

    def __call__(self, logits_end, rows=None):
        r = _rows(rows, logits_end.shape[0], logits_end.device)
        clean = self.clean_logprobs.to(logits_end.device)[r]
        patched = logits_end.float().log_softmax(-1)
        return (clean.exp() * (clean - patched)).sum(-1)


def make_metric(
    name: str, correct: Int[Tensor, " n"], incorrect: Int[Tensor, " n"], clean_logits_end: Tensor | None = None
) -> Metric:
    """The metric called ``name`` (one of :data:`METRICS`) for prompts with these answers."""
    if name == "logit_diff":
        return LogitDifference(correct, incorrect)
    if name == "probability":
        return AnswerProbability(correct)
    if name == "kl":
        if clean_logits_end is None:
            raise ValueError("the KL metric needs the clean run's logits at the answer position")
        return KLToClean(clean_logits_end)
    raise ValueError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")


def normalize(value: Tensor | float, clean: float, corrupted: float) -> Tensor | float:
    """Map a metric value to the 0 (corrupted) .. 1 (clean) scale."""
    return (value - corrupted) / (clean - corrupted)
