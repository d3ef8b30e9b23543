"""Activation patching and attribution patching, batched.

**Activation patching** (Meng et al. 2022; Wang et al. 2022) asks which activations carry the
information that distinguishes two inputs. Run the model on the *corrupted* prompt, replace one
activation by its value on the *clean* prompt, and measure how much of the clean behaviour comes
back. The metric is a parameter (:mod:`mechdemo.metrics`: the logit difference LD by default, the
answer's probability, the KL divergence from the clean distribution); results are normalised:

    patched score = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)

so 1 means "this activation alone restores the clean answer" and 0 means "no effect".

**Batching.** TransformerLens's ``transformer_lens.patching`` runs one full forward pass per
patch. Here every forward pass carries many patches: the corrupted batch is replicated once per
patch (for one layer: one copy per head, or per position), each copy patched differently by one
hook. Two more savings follow from where a patch acts:

* nothing upstream of the patched layer changes, so the run starts at that layer from the cached
  corrupted residual stream (:func:`mechdemo.forward.run_blocks`);
* positions before the first token where the clean and corrupted prompts differ (S2 in IOI's
  ABC corruption) have identical activations in both runs (attention is causal): patching them
  is a no-op, and the patched runs reuse their keys and values like a KV cache instead of
  recomputing them (``prefix_len`` in :func:`mechdemo.forward.block_context`);
* the metric needs two logits at one position, so the unembedding (a d_model x d_vocab product
  per position) is replaced by two columns of ``W_U`` (:meth:`mechdemo.metrics.LogitDifference.from_resid`).

The tests check every result against ``transformer_lens.patching`` on the same inputs;
``benchmarks/bench_patching.py`` measures the speed-up.

**Attribution patching** (Nanda 2023; Syed et al. 2023) approximates every patch at once with
one linear step: ``score ≈ (a_clean - a_corrupted) · ∂metric/∂a`` evaluated on the corrupted run.
Two forward passes and one backward pass, whatever the number of patches. It is exact for
components the metric depends on linearly and drifts where attention saturates; the
``attribution_vs_activation`` figure shows how far.

Key/value heads: with grouped-query attention several query heads share one key/value head, so
``k`` and ``v`` are patched per key/value head (``n_kv_heads`` columns), ``q`` and the pattern per
query head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechdemo.forward import BlockContext, block_context, run_blocks
from mechdemo.interventions import hooks, parse_site, run, site, sites
from mechdemo.readout import logits_from_resid
from mechdemo.metrics import Metric, make_metric, normalize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# the head axis of each patchable head activation (a site of mechdemo.interventions)
HEAD_AXES = {"z": 2, "q": 2, "k": 2, "v": 2, "pattern": 1}
MAX_TOKENS_PER_FORWARD = 16_384  # copies x prompts x positions per batched forward pass


@dataclass
class PatchingRun:
    """Clean and corrupted runs of one batch of equal-length prompts, cached once for every experiment."""

    model: "TransformerBridge"
    clean_tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    correct: Int[Tensor, " n"]
    incorrect: Int[Tensor, " n"]
    clean: dict[str, Tensor]  # hook name -> activation on the clean prompts
    corrupted: dict[str, Tensor]
    context: BlockContext
    clean_value: float  # the metric's mean on the clean prompts
    corrupted_value: float
    measure: Metric  # what is measured (mechdemo.metrics): the logit difference unless asked otherwise

    @property
    def clean_ld(self) -> float:
        """The clean mean of the metric (named for the default metric, the logit difference)."""
        return self.clean_value

    @property
    def corrupted_ld(self) -> float:
        return self.corrupted_value

    @property
    def prefix(self) -> int:
        """Positions before the first one where clean and corrupted prompts differ (identical in both runs)."""
        return self.context.prefix_len

    @property
    def n(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean_tokens.shape[1]

    def normalize(self, value: Tensor | float) -> Tensor | float:
        """Map a mean of the metric to the 0 (corrupted) .. 1 (clean) scale."""
        return normalize(value, self.clean_value, self.corrupted_value)

    def metric(self, logits: Float[Tensor, "n pos d_vocab"]) -> Tensor:
        """The normalised metric from full logits (for TransformerLens's patching functions)."""
        return self.normalize(self.measure.on_logits(logits).mean())

    def copies_metric(self, resid_end: Float[Tensor, "rows d_model"]) -> Float[Tensor, " copies"]:
        """Normalised metric of each copy of the batch, from the final residual stream at the answer
        (row ``c * n + i`` is copy ``c`` of prompt ``i``)."""
        rows = torch.arange(resid_end.shape[0], device=resid_end.device) % self.n
        values = self.measure.from_resid(self.model, resid_end, rows).float()
        return self.normalize(values.view(-1, self.n).mean(1)).cpu()


def _cached_names(model: "TransformerBridge") -> list[str]:
    names = [site("final")]
    for l in range(model.cfg.n_layers):
        names += [site(kind, l) for kind in ("resid_pre", "attn_out", "mlp_out", *HEAD_AXES)]
    return names


def prepare(
    model: "TransformerBridge",
    clean_tokens: Int[Tensor, "n pos"],
    corrupted_tokens: Int[Tensor, "n pos"],
    correct: Int[Tensor, " n"],
    incorrect: Int[Tensor, " n"],
    reuse_prefix: bool = True,
    metric: Metric | str = "logit_diff",
) -> PatchingRun:
    """Run and cache the clean and the corrupted prompts (same length, aligned positions).

    ``metric``: a :class:`mechdemo.metrics.Metric` or the name of one (``logit_diff``,
    ``probability``, ``kl``). ``reuse_prefix=False`` recomputes every position in every patched run
    (slower, same results).
    """
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} differ")
    names = _cached_names(model)
    caches = []
    for tokens in (clean_tokens, corrupted_tokens):
        with torch.no_grad():
            _, cache = run(model, tokens, names=names)
        caches.append(cache)
    if isinstance(metric, str):
        with torch.no_grad():
            clean_end = logits_from_resid(model, caches[0][site("final")][:, -1]) if metric == "kl" else None
        metric = make_metric(metric, correct, incorrect, clean_end)
    with torch.no_grad():
        lds = [metric.from_resid(model, c[site("final")][:, -1]).float().mean().item() for c in caches]
    if abs(lds[0] - lds[1]) < 1e-6:
        raise ValueError(f"clean and corrupted prompts give the same {metric.name}: nothing to patch")
    differs = (clean_tokens != corrupted_tokens).any(0).nonzero()
    prefix = int(differs[0]) if reuse_prefix and len(differs) else 0
    return PatchingRun(model, clean_tokens, corrupted_tokens, correct, incorrect, caches[0], caches[1],
                       block_context(model, clean_tokens, prefix), lds[0], lds[1], metric)


def prepare_ioi(model: "TransformerBridge", batch, metric: Metric | str = "logit_diff") -> PatchingRun:
    """:func:`prepare` for an :class:`mechdemo.ioi.IOIBatch`."""
    return prepare(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, metric=metric)


# --- the batched engine ------------------------------------------------------------------------

Patch = Callable[[Tensor, int], None]  # patch(one copy's activation [n, ...], patch index), in place


def _run_copies(
    run: PatchingRun,
    layer: int,
    n_copies: int,
    hook_name: str | None,
    patch: Patch,
    resid_patch: Patch | None = None,
) -> Float[Tensor, " copies"]:
    """Normalised metric for ``n_copies`` patched copies of the corrupted batch, run from ``layer``.

    ``patch(act, i)`` edits, in place, the activation at ``hook_name`` of the copy that carries
    patch ``i`` (``act`` is that copy's [n, ...] slice); ``resid_patch`` edits the residual stream
    entering ``layer`` instead.
    """
    model = run.model
    resid0 = run.corrupted[site("resid_pre", layer)][:, run.prefix :]
    per_copy = run.n * run.context.n_run
    chunk = max(1, MAX_TOKENS_PER_FORWARD // per_copy)
    scores = []
    for first in range(0, n_copies, chunk):
        copies = min(chunk, n_copies - first)
        resid = resid0.repeat(copies, 1, 1)
        if resid_patch is not None:
            view = resid.view(copies, run.n, *resid.shape[1:])
            for i in range(copies):
                resid_patch(view[i], first + i)
        edits = []
        if hook_name is not None:
            def hook(act, hook, copies=copies, first=first):
                view = act.view(copies, run.n, *act.shape[1:])
                for i in range(copies):
                    patch(view[i], first + i)
                return act

            edits.append((hook_name, hook))
        with torch.no_grad():
            final = run_blocks(model, resid, layer, run.context, fwd_hooks=edits)
            scores.append(run.copies_metric(final[:, -1]))
    return torch.cat(scores)


def suffix_activation(run: PatchingRun, name: str, which: str = "clean") -> Tensor:
    """The ``clean`` (or ``corrupted``) activation at ``name`` on the positions the patched runs compute."""
    act = (run.clean if which == "clean" else run.corrupted)[name]
    if run.prefix == 0:
        return act
    if parse_site(name)[0] == "pattern":  # [n, head, query, key]: queries from the prefix on, all keys
        return act[:, :, run.prefix :]
    return act[:, run.prefix :]


def _layers(run: PatchingRun, progress: bool, desc: str):
    return tqdm(range(run.model.cfg.n_layers), desc=desc, unit="layer", disable=not progress, leave=False)


# --- activation patching -----------------------------------------------------------------------


def patch_resid_pre(run: PatchingRun, progress: bool = False) -> Float[Tensor, "n_layers pos"]:
    """Patch the residual stream entering each layer at each position."""
    out = torch.zeros(run.model.cfg.n_layers, run.n_pos)  # prefix positions: clean = corrupted, score 0
    for layer in _layers(run, progress, "resid_pre"):
        clean = suffix_activation(run, site("resid_pre", layer))

        def patch(act, i, clean=clean):
            act[:, i] = clean[:, i]

        out[layer, run.prefix :] = _run_copies(run, layer, run.context.n_run, None, None, resid_patch=patch)
    return out


def _patch_whole(run: PatchingRun, kind: str, progress: bool) -> Float[Tensor, " n_layers"]:
    out = torch.zeros(run.model.cfg.n_layers)
    for layer in _layers(run, progress, kind):
        name = site(kind, layer)
        clean = suffix_activation(run, name)

        def patch(act, i, clean=clean):
            act[:] = clean

        out[layer] = _run_copies(run, layer, 1, name, patch)[0]
    return out


def patch_attn_out(run: PatchingRun, progress: bool = False) -> Float[Tensor, " n_layers"]:
    """Patch each layer's whole attention output (all heads, all positions)."""
    return _patch_whole(run, "attn_out", progress)


def patch_mlp_out(run: PatchingRun, progress: bool = False) -> Float[Tensor, " n_layers"]:
    """Patch each layer's MLP output (all positions)."""
    return _patch_whole(run, "mlp_out", progress)


def patch_heads(run: PatchingRun, activation: str = "z", progress: bool = False) -> Float[Tensor, "n_layers heads"]:
    """Patch one head's ``z`` (its output), ``q``, ``k``, ``v`` or ``pattern`` at all positions.

    Returns [n_layers, n_heads] (or [n_layers, n_kv_heads] for ``k`` and ``v``).
    """
    axis = HEAD_AXES[activation]
    n_cols = run.clean[site(activation, 0)].shape[axis]
    out = torch.zeros(run.model.cfg.n_layers, n_cols)
    for layer in _layers(run, progress, f"heads {activation}"):
        name = site(activation, layer)
        clean = suffix_activation(run, name)

        def patch(act, i, clean=clean, axis=axis):
            index = (slice(None),) * axis + (i,)
            act[index] = clean[index]

        out[layer] = _run_copies(run, layer, n_cols, name, patch)
    return out


def patch_heads_by_position(run: PatchingRun, progress: bool = False) -> Float[Tensor, "n_layers pos n_heads"]:
    """Patch one head's output (``z``) at one position: [n_layers, pos, n_heads], as TransformerLens orders it."""
    n_heads, n_run = run.model.cfg.n_heads, run.context.n_run
    out = torch.zeros(run.model.cfg.n_layers, run.n_pos, n_heads)  # prefix positions: score 0
    for layer in _layers(run, progress, "heads by position"):
        name = site("z", layer)
        clean = suffix_activation(run, name)

        def patch(act, i, clean=clean):
            pos, head = divmod(i, n_heads)
            act[:, pos, head] = clean[:, pos, head]

        out[layer, run.prefix :] = _run_copies(run, layer, n_run * n_heads, name, patch).view(n_run, n_heads)
    return out


# --- attribution patching ----------------------------------------------------------------------


def attribution_patching(run: PatchingRun) -> dict[str, Tensor]:
    """Linear estimates of :func:`patch_resid_pre` ([n_layers, pos]) and :func:`patch_heads` ``z``
    ([n_layers, n_heads]) from one forward and one backward pass on the corrupted prompts (the clean
    forward pass is the one :func:`prepare` already cached)."""
    model = run.model
    n_layers = model.cfg.n_layers
    acts: dict[str, Tensor] = {}

    def keep(name):
        def hook(act, hook):
            act.retain_grad()
            acts[name] = act
            return act

        return hook

    names = sites("resid_pre", range(n_layers)) + sites("z", range(n_layers))
    with torch.enable_grad(), hooks(model, [(n, keep(n)) for n in names]):
        logits = model(run.corrupted_tokens.to(model.cfg.device))
        metric = run.metric(logits)
        metric.backward()
    resid = torch.zeros(n_layers, run.n_pos)
    heads = torch.zeros(n_layers, model.cfg.n_heads)
    for l in range(n_layers):
        name = site("resid_pre", l)
        delta = run.clean[name] - acts[name].detach()
        resid[l] = (delta * acts[name].grad).sum((0, 2)).cpu()
        name = site("z", l)
        delta = run.clean[name] - acts[name].detach()
        heads[l] = (delta * acts[name].grad).sum((0, 1, 3)).cpu()
    model.zero_grad(set_to_none=True)
    return {"resid_pre": resid, "heads": heads}
