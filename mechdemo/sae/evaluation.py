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
# an SAE with more than this fraction of dead or of dense features is "degenerate": its dictionary is partly
# unused or partly not sparse, so its point on a sparsity/fidelity curve is not comparable with the others
DEGENERATE_FRACTION = 0.2


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
      more than ``dense_threshold`` of the tokens; ``degenerate``: either above :data:`DEGENERATE_FRACTION`.
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
    dead, dense = float((fired == 0).float().mean()), float((freq > dense_threshold).float().mean())
    return {
        "l0": active / len(x),
        "explained_variance": explained,
        "fvu": 1.0 - explained,
        "dead_fraction": dead,
        "dense_fraction": dense,
        "degenerate": dead > DEGENERATE_FRACTION or dense > DEGENERATE_FRACTION,
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
    per_sequence = []  # [n_sequences, 2 + n_saes]: summed loss of each sequence, clean, zero ablation, each SAE
    count = 0
    sae_devices = [sae.W_dec.device for sae in saes]
    for sae in saes:  # trained on CPU; on a CUDA/MPS model they run beside it, then go back
        sae.to(device)
    try:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size].to(device)
            targets = batch[:, 1:]

            def loss_sums(logits: Tensor) -> Tensor:  # [batch]: each sequence's summed loss
                return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none").double().sum(1).cpu()

            logits, cache = run(model, batch, names=[resid_name])
            columns = [loss_sums(logits)]
            context = block_context(model, batch)
            replacements = [lambda act: torch.zeros_like(act)]
            replacements += [lambda act, sae=sae: sae.decode(sae.encode(act)).to(act.dtype) for sae in saes]
            for replace in replacements:
                final = run_blocks(model, cache[resid_name], layer, context,
                                   fwd_hooks=[(hook, lambda act, hook, replace=replace: replace(act))])
                columns.append(loss_sums(logits_from_resid(model, final)))
            per_sequence.append(torch.stack(columns, 1))
            count += targets.numel()
    finally:
        for sae, sae_device in zip(saes, sae_devices):
            sae.to(sae_device)
    return loss_summaries(torch.cat(per_sequence).numpy(), count)


BOOTSTRAP = 1000  # resamples of the sequences for the standard errors


def loss_summaries(sums: "np.ndarray", count: int, seed: int = 0) -> list[dict[str, float]]:
    """From each sequence's summed loss (``[n_sequences, 2 + n_saes]``: clean, zero ablation, each SAE;
    ``count`` predicted tokens in all), each SAE's ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation``,
    ``delta_ce``, the ablation ``gap`` (``ce_zero - ce_clean``: what loss recovered is relative to) and
    ``loss_recovered``, with standard errors (``*_se``) from a seeded bootstrap over sequences (tokens of
    one sequence are not independent). A small gap makes loss recovered noisy: report it with its error."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    per_token = sums.sum(0) / count
    resampled = np.stack([sums[rng.integers(0, n, n)].sum(0) for _ in range(BOOTSTRAP)]) / count  # equal lengths
    clean, zero = per_token[0], per_token[1]
    out = []
    for i in range(2, sums.shape[1]):
        spliced = per_token[i]
        delta = resampled[:, i] - resampled[:, 0]
        gap = resampled[:, 1] - resampled[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            recovered = (resampled[:, 1] - resampled[:, i]) / gap
        out.append({
            "ce_clean": float(clean), "ce_spliced": float(spliced), "ce_zero_ablation": float(zero),
            "delta_ce": float(spliced - clean), "delta_ce_se": float(delta.std()),
            "gap": float(zero - clean), "gap_se": float(gap.std()),
            "loss_recovered": float((zero - spliced) / (zero - clean)) if zero != clean else float("nan"),
            "loss_recovered_se": float(np.nanstd(recovered)),
            "ce_tokens": count, "ce_sequences": n,
        })
    return out


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
