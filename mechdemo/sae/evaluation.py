"""Evaluating an SAE on held-out data: reconstruction, sparsity, dead and dense features, and the
next-token loss with the SAE spliced into the model.

* ``l0`` (active features per token), ``explained_variance`` (SAELens's calculator) and the dead /
  dense fractions over the held-out shard's activations (SAELens computes these only inside
  ``run_evals``, which needs its own ``ActivationsStore``);
* the **spliced loss**: the model's next-token cross-entropy with the SAE's reconstruction in place
  of the activation it reads, against the clean run and against zero-ablating that activation
  (``loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)``). It is only as informative
  as the gap ``CE_zero - CE_clean`` is large: report ``delta_ce`` beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.data import ActivationDataset, from_uint16
from mechdemo.errors import MechdemoError
from mechdemo.sae.training import hook_of, split_shards

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge


DENSE_THRESHOLD = 0.1  # a feature that fires on more than this fraction of held-out tokens is "dense"


@torch.no_grad()
def encode_batches(sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], batch_size: int = 4096) -> Iterator[tuple[Tensor, Tensor]]:
    """(features [b, d_sae], reconstruction [b, d_in]) for consecutive slices of ``x``."""
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        feats = sae.encode(chunk)
        yield feats, sae.decode(feats)


@torch.no_grad()
def reconstruction_metrics(
    sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], dense_threshold: float = DENSE_THRESHOLD
) -> dict[str, float]:
    """L0, explained variance, and dead / dense feature fractions on activations ``x``.

    * ``l0``: mean number of active features per token;
    * ``explained_variance``: ``1 - E‖x - x̂‖² / Var(x)`` (SAELens's calculator); ``fvu`` is ``1 -`` that;
    * ``dead_fraction``: features that never fire on ``x``; ``dense_fraction``: features that fire on
      more than ``dense_threshold`` of the tokens.
    """
    from sae_lens.evals import ExplainedVarianceCalculator

    ev = ExplainedVarianceCalculator()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    active = 0
    start = 0
    for feats, recon in encode_batches(sae, x):
        ev.add_batch(recon, x[start : start + len(recon)])
        start += len(recon)
        on = feats > 0
        fired += on.sum(0)
        active += int(on.sum())
    explained = ev.compute()
    freq = fired.float() / len(x)
    return {
        "l0": active / len(x),
        "explained_variance": explained,
        "fvu": 1.0 - explained,
        "dead_fraction": float((fired == 0).float().mean()),
        "dense_fraction": float((freq > dense_threshold).float().mean()),
        "tokens": len(x),
    }


def heldout_sequences(
    dataset: ActivationDataset, shard: int, seq_len: int, bos: int, max_sequences: int = 32
) -> Int[Tensor, "n seq_len"]:
    """Token sequences ``[BOS] + seq_len-1 tokens`` rebuilt from a shard's ``doc_id``/``tok_pos``/``token_id``.

    Runs of consecutive positions of one document are cut into full-length pieces, so the model sees
    the held-out text exactly as the dataset stored it (special tokens were not stored).
    """
    table = dataset.table(shard)
    doc, pos, tok = (table.column(c).to_numpy() for c in ("doc_id", "tok_pos", "token_id"))
    breaks = np.flatnonzero((doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)) + 1
    step = seq_len - 1
    sequences: list[list[int]] = []
    for run in np.split(tok, breaks):
        for start in range(0, len(run) - step + 1, step):
            sequences.append([bos] + run[start : start + step].tolist())
            if len(sequences) == max_sequences:
                return torch.tensor(sequences)
    if not sequences:
        raise MechdemoError(f"shard {shard} of {dataset.path} has no run of {step} consecutive tokens; use a smaller seq_len")
    return torch.tensor(sequences)


@torch.no_grad()
def spliced_loss(
    sae: "SAE | TrainingSAE", model: "TransformerBridge", tokens: Int[Tensor, "batch pos"], where: str | int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Next-token loss with the SAE's reconstruction spliced in place of the activation it reads
    (``where``: a site name, or a layer number for its MLP output).

    Uses SAELens's ``get_recons_loss`` (clean, spliced and zero-ablated forward passes, per token) and
    averages over every predicted token except the BOS position's: ``ce_clean``, ``ce_spliced``,
    ``ce_zero_ablation``, ``delta_ce = ce_spliced - ce_clean``, ``ce_tokens`` (predictions averaged) and ``loss_recovered =
    (ce_zero - ce_spliced) / (ce_zero - ce_clean)`` (1 = the SAE loses nothing, 0 = as bad as deleting
    the MLP's output).
    """
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    from mechdemo.activations import check_layer

    hook, layer = hook_of(where)
    check_layer(model, layer)
    sums = {"ce_loss_without_sae": 0.0, "ce_loss_with_sae": 0.0, "ce_loss_with_ablation": 0.0}
    count = 0
    # The SAE is trained on CPU; on a CUDA/MPS model it runs beside the model, then goes back.
    sae_device = sae.W_dec.device
    sae.to(model.cfg.device)
    try:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size].to(model.cfg.device)
            out = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=False, compute_ce_loss=True,
                                  hook_name=hook)
            for key in sums:
                sums[key] += float(out[key].float().sum())
            count += out["ce_loss_without_sae"].numel()
    finally:
        sae.to(sae_device)
    clean, spliced, zero = (sums[k] / count for k in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation"))
    return {
        "ce_clean": clean, "ce_spliced": spliced, "ce_zero_ablation": zero, "delta_ce": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        "ce_tokens": count,
    }


@torch.no_grad()
def spliced_losses(
    saes: Sequence["SAE | TrainingSAE"], model: "TransformerBridge", tokens: Int[Tensor, "batch pos"],
    where: str | int, batch_size: int = 8,
) -> list[dict[str, float]]:
    """:func:`spliced_loss` of several SAEs of one site, with the work they share done once.

    The clean and the zero-ablated runs do not depend on the SAE: they run once. Each SAE's spliced
    run starts at ``layer`` from the clean run's residual stream (the blocks before it see nothing
    of the SAE) and reads the logits from the final norm and unembedding. Same numbers as
    :func:`spliced_loss` (SAELens's ``get_recons_loss``, three full forward passes per SAE), which the
    tests compare it with; for a sweep of nine SAEs it does about a sixth of the work.
    """
    import torch.nn.functional as F

    from mechdemo.activations import check_layer
    from mechdemo.forward import block_context, run_blocks
    from mechdemo.interventions import run, site
    from mechdemo.readout import logits_from_resid

    hook, layer = hook_of(where)
    check_layer(model, layer)
    device = model.cfg.device
    resid_name = site("resid_pre", layer)
    sums = torch.zeros(len(saes) + 2, dtype=torch.float64)  # clean, zero ablation, each SAE
    count = 0
    sae_devices = [sae.W_dec.device for sae in saes]
    for sae in saes:  # trained on CPU; on a CUDA/MPS model they run beside it, then go back
        sae.to(device)
    try:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size].to(device)
            targets = batch[:, 1:].flatten()

            def loss_sum(logits: Tensor) -> float:
                return float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, reduction="sum"))

            logits, cache = run(model, batch, names=[resid_name])
            sums[0] += loss_sum(logits)
            context = block_context(model, batch)
            replacements = [lambda act: torch.zeros_like(act)]
            replacements += [lambda act, sae=sae: sae.decode(sae.encode(act)).to(act.dtype) for sae in saes]
            for i, replace in enumerate(replacements, start=1):
                final = run_blocks(model, cache[resid_name], layer, context,
                                   fwd_hooks=[(hook, lambda act, hook, replace=replace: replace(act))])
                sums[i] += loss_sum(logits_from_resid(model, final))
            count += targets.numel()
    finally:
        for sae, sae_device in zip(saes, sae_devices):
            sae.to(sae_device)
    clean, zero = float(sums[0]) / count, float(sums[1]) / count
    results = []
    for total in sums[2:].tolist():
        spliced = total / count
        results.append({
            "ce_clean": clean, "ce_spliced": spliced, "ce_zero_ablation": zero, "delta_ce": spliced - clean,
            "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
            "ce_tokens": count,
        })
    return results


def evaluate_saes(
    saes: Sequence["SAE | TrainingSAE"], dataset: ActivationDataset, model: "TransformerBridge | None" = None,
    max_tokens: int = 50_000, n_sequences: int = 32,
) -> list[dict[str, Any]]:
    """Every metric of each SAE on the held-out shard: reconstruction metrics, and with ``model`` the
    spliced loss (:func:`spliced_losses`: the SAE-independent runs once for all)."""
    from mechdemo.tokens import bos_token_id

    _, (heldout,) = split_shards(dataset)
    x = from_uint16(dataset.shard_bits(heldout)[:max_tokens]).float()
    metrics = [reconstruction_metrics(sae, x) for sae in saes]
    if model is not None:
        tokens = heldout_sequences(dataset, heldout, dataset.manifest["config"]["seq_len"], bos_token_id(model),
                                   n_sequences)
        for m, loss in zip(metrics, spliced_losses(saes, model, tokens, dataset.site)):
            m.update(loss)
    return metrics


def evaluate_sae(
    sae: "SAE | TrainingSAE", dataset: ActivationDataset, model: "TransformerBridge | None" = None,
    max_tokens: int = 50_000, n_sequences: int = 32,
) -> dict[str, Any]:
    """Every metric on the held-out shard: reconstruction metrics, and with ``model`` the spliced loss."""
    return evaluate_saes([sae], dataset, model, max_tokens, n_sequences)[0]
