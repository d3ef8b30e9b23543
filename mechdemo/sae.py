"""Sparse autoencoders on one layer's MLP output, trained and evaluated with SAELens.

An SAE rewrites an activation ``x`` (``d_in``) as a sparse, non-negative combination of
``d_sae > d_in`` learned directions: ``f = act(W_enc (x - b_dec) + b_enc)``, ``x̂ = W_dec f + b_dec``.
Three activations, as in the literature:

* ``relu``: ReLU with an L1 penalty on ``f`` weighted by the decoder norms, ``λ Σ_i f_i ‖W_dec,i‖``
  (SAELens's standard SAE: the penalty of Templeton et al. 2024, "Scaling Monosemanticity"; Bricken et
  al. 2023, "Towards Monosemanticity", used a plain L1 penalty with unit-norm decoder columns);
* ``topk``: keep the ``k`` largest pre-activations (Gao et al. 2024);
* ``jumprelu``: a learned threshold per feature with an L0 penalty (Rajamanoharan et al. 2024,
  the architecture of Gemma Scope).

**From SAELens** (6.x): the three training SAE classes, :class:`sae_lens.SAETrainer` (Adam, schedules,
dead-feature bookkeeping, and folding the input normalisation into the weights at the end), its
inference ``SAE`` save/load format, :class:`sae_lens.evals.ExplainedVarianceCalculator` and
:func:`sae_lens.evals.get_recons_loss` (splicing the reconstruction into the forward pass, and the
zero-ablation baseline).

**Written here**, because SAELens has no equivalent for our data: the data provider over a
:class:`~mechdemo.datasets.ActivationDataset` (SAELens's ``ActivationsStore`` streams tokens through
the model or reads its own cache format; ours are Arrow shards of bf16 bits, already computed), the
held-out split by shard, held-out token sequences rebuilt from the dataset's ``doc_id``/``tok_pos``
columns for the loss evaluation, L0 and dead/dense fractions over that set (SAELens computes them
only inside ``run_evals``, which needs an ``ActivationsStore``), and each feature's top-activating
contexts and promoted logits.

Activations are divided by the dataset's per-element RMS while training (so that
``E‖x‖² = d_in``, SAELens's "expected_average_only_in" convention, which makes ``l1_coefficient`` and
learning rates transferable between models); SAELens folds that scale into the weights at the end,
so a saved SAE takes raw MLP outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.datasets import ActivationDataset, from_uint16
from mechdemo.files import check_writable, folder_written_atomically
from mechdemo.errors import MechdemoError
from mechdemo.threads import fixed_threads

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

ARCHITECTURES = ("relu", "topk", "jumprelu")
# Training runs on exactly this many torch threads on every machine (mechdemo.threads): the same
# seed then gives the same SAE on a 2-core laptop and on a 32-core server. Two is what the
# smallest machines we support have.
TRAIN_THREADS = 2
TRAIN_CONFIG = "mechdemo_sae.json"
DENSE_THRESHOLD = 0.1  # a feature that fires on more than this fraction of held-out tokens is "dense"


def default_layer(model_name: str, n_layers: int) -> int:
    """The layer SAEs are trained on by default: the registry's ``sae_layer`` (8 for Llama 3.2 1B,
    the course's choice), else the middle one."""
    from mechdemo.models import get_spec

    return get_spec(model_name).default_sae_layer(n_layers)


def hook_of(where: str | int) -> tuple[str, int]:
    """``(site name, layer)`` of where an SAE reads: a per-layer site name, or a layer number (its MLP output,
    what the course's datasets store)."""
    from mechdemo.interventions import parse_site, site

    name = site("mlp_out", where) if isinstance(where, int) else where
    layer = parse_site(name)[1]
    if layer is None:
        raise MechdemoError(f"an SAE here reads a per-layer site, not {name!r}")
    return name, layer


@dataclass(frozen=True)
class SAETrainConfig:
    """How to train one SAE (every field is recorded next to the weights)."""

    architecture: str = "topk"
    expansion: int = 4  # d_sae = expansion * d_in
    k: int = 32  # topk: active features per token
    l1_coefficient: float = 5.0  # relu: weight of the L1 penalty (on normalised activations)
    l0_coefficient: float = 2.0  # jumprelu: weight of the L0 penalty
    jumprelu_init_threshold: float = 0.3  # on normalised activations; 0.01 (SAELens's) starts dense
    training_tokens: int = 2_000_000  # samples seen (the dataset is repeated if smaller)
    batch_size: int = 1024
    lr: float = 4e-3  # measured here: converges faster than 1e-3 in a CPU-sized run
    seed: int = 0
    # float64: the same SAE on every CPU (float32 matrix products differ in their last bits between
    # Intel and AMD CPUs, and training amplifies that); about twice as slow
    dtype: str = "float32"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise MechdemoError(f"unknown SAE architecture {self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.dtype not in ("float32", "float64"):
            raise MechdemoError(f"SAE dtype {self.dtype!r}: choose float32 or float64")
        if self.expansion < 1 or self.k < 1 or self.batch_size < 1 or self.training_tokens < self.batch_size:
            raise MechdemoError("expansion, k and batch_size must be positive, training_tokens >= batch_size")

    @property
    def sparsity_setting(self) -> str:
        """The knob that sets sparsity, e.g. 'k=32' or 'l1=5'."""
        return {"topk": f"k={self.k}", "relu": f"l1={self.l1_coefficient:g}",
                "jumprelu": f"l0={self.l0_coefficient:g}"}[self.architecture]


def make_sae(cfg: SAETrainConfig, d_in: int, metadata: dict | None = None) -> "TrainingSAE":
    """A freshly initialised SAELens training SAE (seeded)."""
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=d_in, d_sae=cfg.expansion * d_in, dtype=cfg.dtype, device="cpu",
                  normalize_activations="expected_average_only_in", metadata=SAEMetadata(**(metadata or {})))
    torch.manual_seed(cfg.seed)
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    if cfg.architecture == "relu":
        return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common))
    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        l0_coefficient=cfg.l0_coefficient, jumprelu_init_threshold=cfg.jumprelu_init_threshold, **common))


def split_shards(dataset: ActivationDataset) -> tuple[list[int], list[int]]:
    """Training and held-out shards: the last shard is held out (a dataset needs two or more)."""
    n = len(dataset.shards)
    if n < 2:
        raise MechdemoError(f"{dataset.path} has one shard: an SAE needs a held-out shard. Rebuild it with a smaller "
                            "--shard-size (e.g. a quarter of --max-tokens)")
    return list(range(n - 1)), [n - 1]


def check_batch_fits(dataset: ActivationDataset, shards: Sequence[int], batch_size: int) -> None:
    """Training takes full batches only: shards holding fewer tokens than one batch are an error."""
    rows = sum(dataset.manifest["shards"][i]["rows"] for i in shards)
    if rows < batch_size:
        raise MechdemoError(f"the training shards of {dataset.path} hold {rows:,} tokens, fewer than one batch "
                            f"(--batch-size {batch_size}): use --batch-size {max(1, rows)} or less, or extract "
                            "more tokens")


def data_provider(
    dataset: ActivationDataset, shards: Sequence[int], batch_size: int, seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Float[Tensor, "batch d_in"]]:
    """Endless shuffled batches of raw activations from ``shards`` (a new order every epoch).

    Only full batches (the trainer counts samples per step): shards holding fewer tokens than
    ``batch_size`` would never yield one, so that is an error, not an endless loop."""
    epoch = 0
    while True:
        yielded = False
        for batch in dataset.batches(batch_size, shuffle=True, seed=seed + epoch, shards=shards, dtype=dtype):
            if len(batch) == batch_size:
                yielded = True
                yield batch
        if not yielded:  # never loop forever: a user's too-small dataset, or else a bug
            check_batch_fits(dataset, shards, batch_size)
            raise RuntimeError(f"no full batch of {batch_size} from shards {list(shards)} of {dataset.path}")
        epoch += 1


def train_sae(
    dataset: ActivationDataset, cfg: SAETrainConfig = SAETrainConfig(), progress: bool = True
) -> "TrainingSAE":
    """Train an SAE on ``dataset``'s training shards; return it with the normalisation folded in."""
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    train_shards, _ = split_shards(dataset)
    check_batch_fits(dataset, train_shards, cfg.batch_size)  # before building anything
    c = dataset.manifest["config"]
    sae = make_sae(cfg, dataset.d_model, metadata={
        "model_name": c["model"], "hook_name": dataset.site, "hook_head_index": None,
        "layer": dataset.layer, "dataset": str(dataset.path), "mechdemo": asdict(cfg),
    })
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_tokens, train_batch_size_samples=cfg.batch_size, lr=cfg.lr, lr_end=cfg.lr / 10,
        lr_scheduler_name="constant", lr_decay_steps=max(1, cfg.training_tokens // cfg.batch_size // 5),
        device="cpu", dead_feature_window=max(100, cfg.training_tokens // cfg.batch_size // 4),
        feature_sampling_window=max(100, cfg.training_tokens // cfg.batch_size // 4),
    )
    trainer = SAETrainer(trainer_cfg, sae, data_provider(dataset, train_shards, cfg.batch_size, cfg.seed,
                                                         getattr(torch, cfg.dtype)))
    # The dataset's RMS sets the scale (SAELens would otherwise estimate it from 1,000 batches);
    # fit() folds it into the weights when done.
    trainer.activation_scaler.scaling_factor = 1.0 / dataset.norm_stats["rms_per_element"]
    import sae_lens.training.sae_trainer as sae_trainer

    original = sae_trainer.tqdm
    if not progress:  # SAETrainer always draws its bar
        sae_trainer.tqdm = _silent_tqdm(original)
    try:
        torch.manual_seed(cfg.seed)
        with fixed_threads(TRAIN_THREADS):
            sae = trainer.fit()
    finally:
        sae_trainer.tqdm = original
    return sae


def _silent_tqdm(tqdm_cls):
    def make(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm_cls(*args, **kwargs)

    return make


def sae_bytes(d_in: int, expansion: int) -> int:
    """About what a saved SAE takes on disk: float32 encoder and decoder plus biases."""
    d_sae = d_in * expansion
    return 4 * (2 * d_in * d_sae + d_sae + d_in) + 64 * 1024


def check_sae_out(out: str | Path, overwrite: bool = False, needed_bytes: int = 0) -> Path:
    """Check, before any training, that an SAE can be saved in ``out``: not a file, not a folder
    holding something else, not an existing SAE unless ``overwrite``, writable, and with
    ``needed_bytes`` free (an SAE being replaced stays until the new one is complete). Raises a
    :class:`MechdemoError` naming the fix; returns the path."""
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MechdemoError(f"--out {out} is a file, not a folder: choose a folder for the SAE")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "cfg.json").is_file():
            raise MechdemoError(f"--out {out} is a folder that holds something other than an SAE: choose another "
                                "(mechdemo never replaces a folder it did not write)")
        if not overwrite:
            raise MechdemoError(f"--out {out} already holds an SAE: pass --overwrite to replace it, or choose "
                                "another --out")
    check_writable(out)
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if needed_bytes and (free := shutil.disk_usage(existing).free) < needed_bytes:
        raise MechdemoError(f"--out {out}: the SAE needs about {needed_bytes / 2**20:,.0f} MiB but only "
                            f"{free / 2**20:,.0f} MiB are free there: free some space or choose another --out")
    return out


def save_sae(sae: "TrainingSAE", out: str | Path, cfg: SAETrainConfig, metrics: dict | None = None,
             overwrite: bool = False) -> Path:
    """Save the inference SAE (SAELens format: ``cfg.json`` + safetensors) and our config and metrics.

    Written into a sibling folder first and renamed into place, so an interrupted save never leaves
    half an SAE; an existing SAE in ``out`` is replaced only with ``overwrite`` (then atomically)."""
    out = check_sae_out(out, overwrite)
    with folder_written_atomically(out, "saving") as tmp:
        sae.save_inference_model(str(tmp))
        cfg_file = tmp / "cfg.json"  # SAELens writes its keys in hash order: sorted, the same SAE is the same bytes
        cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()), indent=2, sort_keys=True))
        (tmp / TRAIN_CONFIG).write_text(json.dumps({"train_config": asdict(cfg), "metrics": metrics or {}}, indent=2))
    return out


def load_sae(path: str | Path) -> "SAE":
    """An SAE saved by :func:`save_sae` (or any SAELens ``save_model`` folder)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise MechdemoError(f"{path} is not a saved SAE (no cfg.json): train one with `mechdemo sae train --out {path}`")
    return SAE.load_from_disk(str(path), device="cpu")


# ---------------------------------------------------------------------------------------------
# Evaluation


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


# ---------------------------------------------------------------------------------------------
# What features mean


@torch.no_grad()
def top_activations(
    sae: "SAE | TrainingSAE", x: Float[Tensor, "n d_in"], k: int = 8, batch_size: int = 4096
) -> tuple[Float[Tensor, "d_sae k"], Int[Tensor, "d_sae k"], Int[Tensor, " d_sae"]]:
    """For every feature: its ``k`` largest activations on ``x``, their row indices, and how often it fires."""
    d_sae = sae.cfg.d_sae
    best_v = torch.full((d_sae, k), -1.0)
    best_i = torch.zeros((d_sae, k), dtype=torch.long)
    fired = torch.zeros(d_sae, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        feats = sae.encode(x[start : start + batch_size])  # [b, d_sae]
        fired += (feats > 0).sum(0)
        v, i = feats.T.topk(min(k, feats.shape[0]), dim=1)  # [d_sae, k']
        both_v, both_i = torch.cat([best_v, v], 1), torch.cat([best_i, i + start], 1)
        order = both_v.topk(k, dim=1).indices
        best_v, best_i = both_v.gather(1, order), both_i.gather(1, order)
    return best_v, best_i, fired


@torch.no_grad()
def logit_effects(
    sae: "SAE | TrainingSAE", model: "TransformerBridge", k: int = 10, batch: int = 256,
    features: Sequence[int] | None = None,
) -> tuple[Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"], Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"]]:
    """Each feature's direct logit effect, :func:`mechdemo.readout.direction_logits` of its decoder row
    (``(centre(W_dec[f]) ⊙ γ_final) · W_U``, the centring for LayerNorm models): the ``k`` most promoted
    tokens and values, then the ``k`` most suppressed, ``batch`` features at a time (``features``: only those)."""
    from mechdemo.readout import direction_logits

    W_dec = sae.W_dec.detach().float().cpu()
    if features is not None:
        W_dec = W_dec[list(features)]
    parts = []
    for start in range(0, len(W_dec), batch):
        logits = direction_logits(model, W_dec[start : start + batch])  # [b, vocab]
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        parts.append((up.indices, up.values, down.indices, down.values))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def promoted_tokens(
    sae: "SAE | TrainingSAE", model: "TransformerBridge", features: Sequence[int], k: int = 6
) -> list[list[tuple[str, float]]]:
    """Each feature's direct effect on the logits (:func:`logit_effects`): its top ``k`` tokens, decoded.

    The decoder direction is what the feature adds to the residual stream; scaling by the final
    norm's weight and projecting on the unembedding gives the tokens it pushes up directly (ignoring
    later layers and the norm's division, as in Anthropic's feature pages).
    """
    ids, values, _, _ = logit_effects(sae, model, k=k, features=features)
    return [[(model.tokenizer.decode([int(t)]), float(v)) for t, v in zip(row_ids, row_v)]
            for row_ids, row_v in zip(ids, values)]


def token_contexts(
    dataset: ActivationDataset, shard: int, rows: Sequence[int], tokenizer, before: int = 12, after: int = 3,
) -> list[dict]:
    """The text around each ``rows`` entry of ``shard``: ``{"before", "token", "after"}`` strings."""
    table = dataset.table(shard)
    doc, pos, tok = (table.column(c).to_numpy() for c in ("doc_id", "tok_pos", "token_id"))
    contexts = []
    for row in rows:
        lo, hi = max(0, row - before), min(len(tok), row + after + 1)
        window = np.arange(lo, hi)
        same = (doc[window] == doc[row]) & (np.abs(pos[window] - pos[row]) <= max(before, after))
        window = window[same]
        contexts.append({
            "before": tokenizer.decode(tok[window[window < row]].tolist()),
            "token": tokenizer.decode([int(tok[row])]),
            "after": tokenizer.decode(tok[window[window > row]].tolist()),
        })
    return contexts
