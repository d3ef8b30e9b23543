"""Toy models of superposition (Elhage et al. 2022, https://transformer-circuits.pub/2022/toy_model/).

The model compresses ``n_features`` sparse features into ``n_hidden < n_features`` dimensions and
back::

    h  = W x                     W: [n_hidden, n_features]
    x' = ReLU(Wᵀ h + b)
    L  = mean over batch and features of  I_i (x_i - x'_i)²

Each feature is 0 with probability ``1 - p`` (its *sparsity* is ``S = 1 - p``) and uniform in [0, 1]
otherwise; feature ``i`` has importance ``I_i`` (e.g. ``0.9 ** i``). With dense features the model
keeps only the ``n_hidden`` most important ones, orthogonally; as features get sparser it packs
more of them than it has dimensions (superposition), accepting interference that the ReLU and
bias mostly filter out, in regular geometric arrangements (antipodal pairs, pentagons...).

Many models ("instances", e.g. one per sparsity) are trained at once: every tensor carries a
leading instance dimension, as in the paper's code and ARENA's exercises. Nothing here exists in
a maintained library (TransformerLens and SAELens have no toy models), so it is written by hand, in
a page.

Measures (paper, section "Feature dimensionality"):

* ``‖W_i‖``: how much feature ``i`` is represented (≈ 1 represented, ≈ 0 ignored);
* superposition of feature ``i``: ``Σ_{j≠i} (Ŵ_i · W_j)²``, how much other features share its direction;
* feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²``, the fraction of a dimension feature
  ``i`` gets (1 = a dimension of its own, 1/2 = an antipodal pair, 2/5 = a pentagon);
* dimensions per feature ``n_hidden / ‖W‖_F²``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechdemo.threads import fixed_threads

TOY_THREADS = 2  # torch threads of every toy-model training run (see train_toy_model)


@dataclass
class ToyConfig:
    """A batch of toy models: ``n_instances`` models of ``n_features`` -> ``n_hidden`` -> ``n_features``."""

    n_features: int = 5
    n_hidden: int = 2
    n_instances: int = 1
    n_correlated_pairs: int = 0  # pairs of features that are present together (or both absent)
    n_anticorrelated_pairs: int = 0  # pairs of features of which at most one is present


class ToyModel(nn.Module):
    """``n_instances`` toy models trained at once, one feature probability per instance."""

    def __init__(
        self,
        cfg: ToyConfig,
        feature_probability: Float[Tensor, "instances"] | float = 0.01,
        importance: Float[Tensor, "features"] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(cfg.n_instances, cfg.n_hidden, cfg.n_features),
                                                     generator=g))
        self.b_final = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))
        p = torch.as_tensor(feature_probability, dtype=torch.float32)
        self.register_buffer("feature_probability", p.expand(cfg.n_instances).clone())
        self.register_buffer("importance", torch.ones(cfg.n_features) if importance is None else importance.float())
        self.weighted = importance is not None  # uniform importance: the loss skips the multiplication
        n_paired = 2 * (cfg.n_correlated_pairs + cfg.n_anticorrelated_pairs)
        if n_paired > cfg.n_features:
            raise ValueError(f"{n_paired} paired features but only {cfg.n_features} features")

    def forward(self, x: Float[Tensor, "instances batch features"]) -> Float[Tensor, "instances batch features"]:
        hidden = torch.bmm(x, self.W.transpose(1, 2))  # [instances, batch, hidden]
        return torch.relu(torch.baddbmm(self.b_final[:, None, :], hidden, self.W))

    def generate_batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Float[Tensor, "instances batch features"]:
        """Features uniform in [0, 1], each present with the instance's probability ``p``.

        Correlated pairs (features 0-1, 2-3, ... first) are present together with probability ``p``;
        anticorrelated pairs (next) have exactly one feature present with probability ``2p`` (each ``p``),
        never both; the remaining features are independent.
        """
        cfg, p = self.cfg, self.feature_probability[:, None, None]
        shape = (cfg.n_instances, batch_size)
        rand = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731
        parts = []
        if cfg.n_correlated_pairs:
            present = rand(*shape, cfg.n_correlated_pairs, 1) < p[..., None]
            parts.append((present.expand(-1, -1, -1, 2)).reshape(*shape, -1))
        if cfg.n_anticorrelated_pairs:
            any_present = rand(*shape, cfg.n_anticorrelated_pairs) < 2 * p
            first = rand(*shape, cfg.n_anticorrelated_pairs) < 0.5
            parts.append(torch.stack([any_present & first, any_present & ~first], dim=-1).reshape(*shape, -1))
        n_paired = 2 * (cfg.n_correlated_pairs + cfg.n_anticorrelated_pairs)
        n_free = cfg.n_features - n_paired
        if n_paired:
            paired = torch.cat(parts, dim=-1) * rand(*shape, n_paired)
        if not n_free:
            return paired
        # independent features from one draw: u < p (u / p < 1) is present, and then u / p is uniform
        # in [0, 1]; computed in place (this is most of a training step's time for 100 features)
        free = rand(*shape, n_free).div_(p)
        free.masked_fill_(free >= 1, 0)
        return torch.cat([paired, free], dim=-1) if n_paired else free

    def loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Importance-weighted MSE, averaged over batch and features, summed over instances."""
        return per_instance_loss(self, x, x_hat).sum()


def train_toy_model(
    model: ToyModel, steps: int = 5_000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train all instances with Adam (fixed seed); return the loss every 100 steps.

    Runs on :data:`TOY_THREADS` CPU threads whatever the machine: a fixed thread count makes the
    result bit-identical on any machine of the same instruction set (reductions split across threads
    sum in a different order, and thousands of Adam steps amplify that). Two, not one: the 100-feature
    sweep's batches are large enough for a second thread to take a quarter off its time (measured).
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    with fixed_threads(TOY_THREADS):
        for step in tqdm(range(steps), desc="toy models", disable=not progress, leave=False):
            x = model.generate_batch(batch_size, g)
            loss = model.loss(x, model(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 100 == 0 or step == steps - 1:
                losses.append(loss.item())
    return losses


def feature_norms(W: Float[Tensor, "instances hidden features"]) -> Float[Tensor, "instances features"]:
    """``‖W_i‖``: how strongly each feature is represented."""
    return W.norm(dim=1)


def interference(W: Float[Tensor, "instances hidden features"]) -> Float[Tensor, "instances features"]:
    """Superposition of each feature: ``Σ_{j≠i} (Ŵ_i · W_j)²``."""
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    overlaps = torch.einsum("ihf,ihg->ifg", unit, W) ** 2  # [i, f, g]: (Ŵ_f · W_g)²
    return overlaps.sum(-1) - torch.diagonal(overlaps, dim1=1, dim2=2)


def feature_dimensionality(W: Float[Tensor, "instances hidden features"]) -> Float[Tensor, "instances features"]:
    """``D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²``: the fraction of a dimension each feature occupies."""
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    overlaps = (torch.einsum("ihf,ihg->ifg", unit, W) ** 2).sum(-1)
    return W.norm(dim=1) ** 2 / overlaps.clamp_min(1e-12)


def dimensions_per_feature(W: Float[Tensor, "instances hidden features"]) -> Float[Tensor, "instances"]:
    """``n_hidden / ‖W‖_F²``: hidden dimensions per (fully) represented feature."""
    return W.shape[1] / W.pow(2).sum(dim=(1, 2))


def n_represented(W: Float[Tensor, "instances hidden features"], threshold: float = 0.5) -> Tensor:
    """How many features each instance represents (``‖W_i‖ > threshold``)."""
    return (feature_norms(W) > threshold).sum(-1)


def cosine_matrix(W: Float[Tensor, "instances hidden features"]) -> Float[Tensor, "instances features features"]:
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return torch.einsum("ihf,ihg->ifg", unit, unit)


def per_instance_loss(model: ToyModel, x: Tensor, x_hat: Tensor) -> Float[Tensor, "instances"]:
    """The loss of each instance separately (importance-weighted MSE)."""
    squared = (x - x_hat).square()
    if model.weighted:
        squared = model.importance * squared
    return squared.mean(dim=(1, 2))
