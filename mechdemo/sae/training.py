"""Training sparse autoencoders with SAELens on an activation dataset (one site: by default an MLP's output).

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
:class:`~mechdemo.data.ActivationDataset` (SAELens's ``ActivationsStore`` streams tokens through
the model or reads its own cache format; ours are Arrow shards of bf16 bits, already computed), the
held-out split by shard, held-out token sequences rebuilt from the dataset's ``doc_id``/``tok_pos``
columns for the loss evaluation, L0 and dead/dense fractions over that set (SAELens computes them
only inside ``run_evals``, which needs an ``ActivationsStore``), and each feature's top-activating
contexts and promoted logits (:mod:`mechdemo.sae.evaluation`, :mod:`mechdemo.sae.features`).

Activations are divided by the dataset's per-element RMS while training (so that
``E‖x‖² = d_in``, SAELens's "expected_average_only_in" convention, which makes ``l1_coefficient`` and
learning rates transferable between models); SAELens folds that scale into the weights at the end,
so a saved SAE takes the raw activations of its site.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from mechdemo.data import ActivationDataset
from mechdemo.errors import MechdemoError
from mechdemo.threads import fixed_threads

if TYPE_CHECKING:
    from sae_lens import TrainingSAE

log = logging.getLogger(__name__)

ARCHITECTURES = ("relu", "topk", "jumprelu")
# Training runs on exactly this many torch threads on every machine (mechdemo.threads): the same
# seed then gives the same SAE on a 2-core laptop and on a 32-core server. Two is what the
# smallest machines we support have.
TRAIN_THREADS = 2


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


# ---------------------------------------------------------------------------------------------
# Evaluation


# ---------------------------------------------------------------------------------------------
# What features mean


