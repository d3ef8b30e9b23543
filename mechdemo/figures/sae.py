"""Sparse autoencoders on a real model: sae_features.png and sae_tradeoff.png.

Both train SAEs (SAELens, through :mod:`mechdemo.sae`) on the MLP output of the offline model's
middle layer, read from an activation dataset built by :func:`mechdemo.datasets.extract` on the
offline corpus. The dataset is cached under the mechdemo cache folder (building it is the slow part:
a forward pass to the middle layer for every token; extraction resumes and verifies shards, so a
cached copy is exactly what a rebuild would write). The SAEs are retrained on every run from fixed
seeds: a few minutes on a laptop CPU, so they are small and briefly trained, and the figures say so.
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

TOKENS = 20_000  # activation dataset size (the last quarter is held out)
SHARD = 5_000
EXPANSION = 2
TRAIN_SAMPLES = 32_000
EVAL_SEQUENCES = 6  # held-out sequences of the spliced-loss evaluation (each SAE's spliced run: ~2.4 s here)
SMALL = {"tokens": 3_000, "shard": 750, "train_samples": 4_096, "n_sequences": 2}  # the tests' small scale
# the sparsity sweep: architecture -> SAETrainConfig fields of each run. JumpReLU's thresholds
# move one Adam step at a time, so it gets 4x more (smaller) steps for the same samples, at twice
# the learning rate (measured at 32,000 samples: at 4e-3 its L0 stays near 200 whatever the
# coefficient, at 8e-3 the three coefficients span L0 ~ 15-60 like the other two architectures).
SWEEP = {
    "topk": [{"k": k} for k in (8, 32, 128)],
    "relu": [{"l1_coefficient": c} for c in (1.0, 2.0, 5.0)],
    "jumprelu": [{"l0_coefficient": c, "batch_size": 256, "lr": 8e-3} for c in (0.5, 2.0, 8.0)],
}
FEATURE_SAE = ("topk", {"k": 32})
ARCH_LABEL = {"topk": "TopK", "relu": "ReLU + L1", "jumprelu": "JumpReLU"}
ARCH_COLOUR = {"topk": style.BLUE, "relu": style.ORANGE, "jumprelu": style.GREEN}


def _train_samples(ctx: FigureContext) -> int:
    return ctx.pick(TRAIN_SAMPLES, SMALL["train_samples"])


def _dataset(ctx: FigureContext):
    """The cached activation dataset of the middle layer (built on first use)."""
    from mechdemo.corpus import OFFLINE_CORPUS
    from mechdemo.datasets import ActivationDataset, ExtractConfig, extract
    from mechdemo.sae import TRAIN_THREADS, default_layer
    from mechdemo.threads import fixed_threads
    from mechdemo.weights_cache import cache_root

    def compute():
        layer = default_layer(ctx.model_name, ctx.model.cfg.n_layers)
        tokens = ctx.pick(TOKENS, SMALL["tokens"])
        cfg = ExtractConfig(model=ctx.model_name, layer=layer, corpus=OFFLINE_CORPUS, seq_len=128, batch_size=16,
                            shard_size=ctx.pick(SHARD, SMALL["shard"]), max_tokens=tokens)
        out = cache_root() / "activations" / f"{ctx.model_name}-mlp{layer}-{OFFLINE_CORPUS}-{tokens}"
        # the SAEs' training data must not depend on the machine either: extraction on the thread
        # count SAE training uses, whatever MECHDEMO_FIGURE_THREADS says
        with fixed_threads(TRAIN_THREADS):
            extract(cfg, out, model=ctx.model, progress=True)
        return ActivationDataset(out, verify=True)

    return ctx.computed("sae.dataset", compute)


def _train_setting(ctx: FigureContext, arch: str, fields: dict):
    """One SAE of the sweep, trained once per run (``sae_features`` and ``sae_tradeoff`` share it)."""
    from mechdemo.sae import SAETrainConfig, train_sae

    def compute():
        cfg = SAETrainConfig(architecture=arch, expansion=EXPANSION, seed=ctx.seed,
                             training_tokens=_train_samples(ctx), **fields)
        return cfg, train_sae(_dataset(ctx), cfg, progress=True)

    return ctx.computed(f"sae.{arch}.{sorted(fields.items())}", compute)


def _sweep(ctx: FigureContext) -> list[dict]:
    """Every SAE of the sweep, trained and evaluated on the held-out shard: ``[{arch, setting, sae, metrics}]``."""
    from mechdemo.sae import evaluate_saes

    def compute():
        data = _dataset(ctx)
        runs = []
        # small scale: the middle setting of each architecture (it holds FEATURE_SAE)
        sweep = ctx.pick(SWEEP, {arch: settings[1:2] for arch, settings in SWEEP.items()})
        for arch, settings in sweep.items():
            for fields in settings:
                cfg, sae = _train_setting(ctx, arch, fields)
                runs.append({"arch": arch, "setting": cfg.sparsity_setting, "fields": fields, "sae": sae})
        # the clean and zero-ablated runs of the loss evaluation are shared by the whole sweep
        metrics = evaluate_saes([r["sae"] for r in runs], data, ctx.model,
                                n_sequences=ctx.pick(EVAL_SEQUENCES, SMALL["n_sequences"]))
        for run, m in zip(runs, metrics):
            run["metrics"] = m
        return runs

    return ctx.computed("sae.sweep", compute)


def _rounded(metrics: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def pick_features(values: torch.Tensor, fired: torch.Tensor, n_tokens: int, n: int = 4) -> list[int]:
    """``n`` features to show, by a fixed rule rather than by hand: among those that fire on 0.1-3% of
    the held-out tokens (neither near-dead nor dense), the ``n`` with the strongest top activation."""
    freq = fired.float() / n_tokens
    candidates = torch.nonzero((freq > 1e-3) & (freq < 3e-2)).flatten()
    order = candidates[values[candidates, 0].argsort(descending=True)]
    return [int(f) for f in order[:n]]


def _draw_context(ax, y: float, context: dict, value: float, colour, renderer) -> None:
    """One context line: preceding text right-aligned up to the highlighted token, then what follows."""
    clean = lambda s: s.replace("\n", "⏎ ").replace("\t", " ")  # noqa: E731
    before = clean(context["before"])[-48:]
    x0 = 0.50
    ax.text(x0, y, before, ha="right", va="center", fontsize=13, color=style.GREY, family="monospace")
    token = ax.text(x0, y, clean(context["token"]), ha="left", va="center", fontsize=13, family="monospace",
                    weight="bold", bbox={"boxstyle": "round,pad=0.15", "fc": colour, "ec": "none", "alpha": 0.45})
    width = token.get_window_extent(renderer).transformed(ax.transAxes.inverted()).width
    ax.text(x0 + width + 0.004, y, clean(context["after"])[:14], ha="left", va="center", fontsize=13,
            color=style.GREY, family="monospace")
    ax.text(0.0, y, f"{value:.1f}", ha="left", va="center", fontsize=13, color="black", weight="bold")


@figure("sae_features", description="What SAE features mean: top-activating contexts (activating token "
        "highlighted) and the tokens each feature's decoder direction promotes, for a TopK SAE on the middle layer")
def sae_features(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    from mechdemo.datasets import from_uint16
    from mechdemo.sae import promoted_tokens, split_shards, token_contexts, top_activations

    arch, fields = FEATURE_SAE
    _, sae = _train_setting(ctx, arch, fields)  # the sweep's SAE of this setting
    data = _dataset(ctx)
    layer = data.manifest["config"]["layer"]
    _, (heldout,) = split_shards(data)
    x = from_uint16(data.shard_bits(heldout)).float()
    values, rows, fired = top_activations(sae, x, k=5)
    features = pick_features(values, fired, len(x))
    promoted = promoted_tokens(sae, ctx.model, features, k=6)

    fig = plt.figure(figsize=(20, 11))
    grid = fig.add_gridspec(len(features), 2, width_ratios=[3.2, 1], hspace=0.45, wspace=0.05)
    renderer = fig.canvas.get_renderer()
    colours = [style.BLUE, style.ORANGE, style.GREEN, style.PURPLE]
    results = []
    for i, f in enumerate(features):
        contexts = token_contexts(data, heldout, rows[f].tolist(), ctx.model.tokenizer)
        ax = fig.add_subplot(grid[i, 0])
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.5, len(contexts) - 0.5)
        ax.invert_yaxis()
        for j, (c, v) in enumerate(zip(contexts, values[f].tolist())):
            _draw_context(ax, j, c, v, colours[i], renderer)
        ax.set_title(f"feature {f}: fires on {fired[f] / len(x):.2%} of held-out tokens — top activations",
                     loc="left", fontsize=15)
        bar = fig.add_subplot(grid[i, 1])
        names = [repr(t)[1:-1] for t, _ in promoted[i]]
        bar.barh(range(len(names)), [v for _, v in promoted[i]], color=colours[i], alpha=0.8)
        bar.set_yticks(range(len(names)))
        bar.set_yticklabels(names, fontsize=12, family="monospace")
        bar.invert_yaxis()
        bar.tick_params(axis="x", labelsize=11)
        if i == 0:
            bar.set_title("promoted logits (direct)", fontsize=15)
        results.append({"feature": f, "frequency": round(float(fired[f]) / len(x), 5),
                        "top_tokens": [c["token"] for c in contexts],
                        "top_activations": [round(v, 3) for v in values[f].tolist()],
                        "promoted": [t for t, _ in promoted[i]]})
    style.suptitle(fig, f"SAE features on MLP {layer}", ctx.model_label,
                   subtitle=f"TopK SAE (k = {fields['k']}, {sae.cfg.d_sae:,} features) trained on the offline corpus; "
                            "contexts from held-out text, activating token highlighted, activation on the left. "
                            "Bars: W_dec[f] · γ · W_U")
    fig.subplots_adjust(top=0.87, bottom=0.03, left=0.02, right=0.98)
    return FigureOutput(fig, results={"layer": layer, "architecture": arch, **fields, "features": results})


@figure("sae_tradeoff", description="SAEs on the middle layer's MLP output: sparsity (L0) against explained "
        "variance and loss recovered, for TopK, ReLU + L1 and JumpReLU across their sparsity settings")
def sae_tradeoff(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    runs = _sweep(ctx)
    data = _dataset(ctx)
    layer = data.manifest["config"]["layer"]
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5))
    for arch in SWEEP:
        points = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["metrics"]["l0"])
        l0 = [r["metrics"]["l0"] for r in points]
        for ax, key in zip(axes, ("explained_variance", "loss_recovered")):
            y = [r["metrics"][key] for r in points]
            ax.plot(l0, y, "o-", color=ARCH_COLOUR[arch], lw=2.5, ms=10, label=ARCH_LABEL[arch])
            for r, x_, y_ in zip(points, l0, y):
                ax.annotate(r["setting"], (x_, y_), textcoords="offset points", fontsize=12, color=ARCH_COLOUR[arch],
                            xytext=(-10, 10) if arch == "jumprelu" else (6, -16), ha="right" if arch == "jumprelu" else "left")
    for ax, label in zip(axes, ("explained variance  1 − FVU", "loss recovered  (zero-ablation = 0, model = 1)")):
        ax.set_xscale("log")
        ax.set_xlabel("L0: active features per token (held out)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    d_sae = EXPANSION * data.d_model
    style.suptitle(fig, f"SAE sparsity vs reconstruction, MLP {layer}", ctx.model_label,
                   subtitle=f"{d_sae:,} features each, {_train_samples(ctx):,} training samples (CPU-sized: under a minute "
                            f"per SAE). Held out: reconstruction on {runs[0]['metrics']['tokens']:,} tokens, loss on "
                            f"{runs[0]['metrics']['ce_tokens']:,} predictions. Up and left is better")
    fig.subplots_adjust(top=0.84, wspace=0.25)
    return FigureOutput(fig, results={
        "layer": layer, "d_sae": d_sae, "train_samples": _train_samples(ctx), "dataset_tokens": len(data),
        "saes": [{"architecture": r["arch"], "setting": r["setting"], **_rounded(r["metrics"])} for r in runs],
    })
