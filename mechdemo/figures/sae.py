"""Sparse autoencoders on a real model: the sweep of ``sae_tradeoff`` and the SAEs every SAE figure shares.

They train SAEs (SAELens, through :mod:`mechdemo.sae`) on the MLP output of the offline model's
middle layer, read from an activation dataset built by :func:`mechdemo.data.extract` on the
offline corpus. The dataset is cached under the mechdemo cache folder (building it is the slow part:
a forward pass to the middle layer for every token; extraction resumes and verifies shards, so a
cached copy is exactly what a rebuild would write). The SAEs are retrained on every run from fixed
seeds: a few minutes on a laptop CPU, so they are small and briefly trained, and the slides say so.
"""

from __future__ import annotations


from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
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
# float64: the same SAEs on Intel and AMD CPUs (float32 matrix products differ in their last bits
# between them, and training amplifies that into other features); ~2x the float32 time
SAE_DTYPE = "float64"
ARCH_LABEL = {"topk": "TopK", "relu": "ReLU + L1", "jumprelu": "JumpReLU"}
ARCH_COLOUR = {"topk": style.BLUE, "relu": style.ORANGE, "jumprelu": style.GREEN}


def _train_samples(ctx: FigureContext) -> int:
    return ctx.pick(TRAIN_SAMPLES, SMALL["train_samples"])


def sae_dataset(ctx: FigureContext):
    """The cached activation dataset of the middle layer (built on first use)."""
    from mechdemo.data.corpus import OFFLINE_CORPUS
    from mechdemo.data import FORMAT, ActivationDataset, ExtractConfig, extract
    from mechdemo.kernels import kernels_tag
    from mechdemo.sae import TRAIN_THREADS, default_layer
    from mechdemo.threads import fixed_threads
    from mechdemo.weights_cache import cache_root

    def compute():
        layer = default_layer(ctx.model_name, ctx.model.cfg.n_layers)
        tokens = ctx.pick(TOKENS, SMALL["tokens"])
        model = ctx.model64  # the same bf16 dataset on Intel and AMD CPUs (FigureContext.model64)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        cfg = ExtractConfig(model=ctx.model_name, layer=layer, corpus=OFFLINE_CORPUS, seq_len=128, batch_size=16,
                            shard_size=ctx.pick(SHARD, SMALL["shard"]), max_tokens=tokens, compute_dtype=dtype)
        # the kernels and dtype in the name: a dataset computed under others would give other SAEs
        # (mechdemo.kernels)
        out = (cache_root() / "activations"
               / f"{ctx.model_name}-mlp{layer}-{OFFLINE_CORPUS}-{tokens}-{dtype}-{kernels_tag()}-f{FORMAT}")
        # the SAEs' training data must not depend on the machine either: extraction on the thread
        # count SAE training uses, whatever MECHDEMO_FIGURE_THREADS says
        with fixed_threads(TRAIN_THREADS):
            extract(cfg, out, model=model, progress=True)
        return ActivationDataset(out, verify=True)

    return ctx.computed("sae.dataset", compute)


def trained_sae(ctx: FigureContext, arch: str, fields: dict):
    """One SAE of the sweep, trained once per run (the feature figures and ``sae_tradeoff`` share it)."""
    from mechdemo.sae import SAETrainConfig, train_sae

    def compute():
        cfg = SAETrainConfig(architecture=arch, expansion=EXPANSION, seed=ctx.seed,
                             training_tokens=_train_samples(ctx), dtype=SAE_DTYPE, **fields)
        return cfg, train_sae(sae_dataset(ctx), cfg, progress=True)

    return ctx.computed(f"sae.{arch}.{sorted(fields.items())}", compute)


def _sweep(ctx: FigureContext) -> list[dict]:
    """Every SAE of the sweep, trained and evaluated on the held-out shard: ``[{arch, setting, sae, metrics}]``."""
    from mechdemo.sae import evaluate_saes

    def compute():
        data = sae_dataset(ctx)
        runs = []
        # small scale: the middle setting of each architecture (it holds FEATURE_SAE)
        sweep = ctx.pick(SWEEP, {arch: settings[1:2] for arch, settings in SWEEP.items()})
        for arch, settings in sweep.items():
            for fields in settings:
                cfg, sae = trained_sae(ctx, arch, fields)
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


def _commands(ctx: FigureContext, data) -> dict[str, str]:
    """The CLI commands that build this dataset and train and evaluate the shown SAE (FEATURE_SAE)
    with the settings the figures use: flags the CLI's defaults do not already give."""
    from mechdemo.data.corpus import OFFLINE_CORPUS
    from mechdemo.sae import SAETrainConfig

    c = data.manifest["config"]
    layer = c["layer"]
    extract = f"mechdemo extract --layer {layer} --max-tokens {c['max_tokens']} --shard-size {c['shard_size']}"
    for flag, key, default in (("--seq-len", "seq_len", 128), ("--batch-size", "batch_size", 16),
                               ("--corpus", "corpus", OFFLINE_CORPUS), ("--compute-dtype", "compute_dtype", "float32")):
        if c.get(key, default) != default:
            extract += f" {flag} {c[key]}"
    arch, fields = FEATURE_SAE
    cfg = SAETrainConfig(architecture=arch, expansion=EXPANSION, seed=ctx.seed, training_tokens=_train_samples(ctx),
                         dtype=SAE_DTYPE, **fields)
    default = SAETrainConfig()
    train = f"mechdemo sae train --data acts{layer}/ --out sae{layer}/ \\\n    --architecture {arch}"
    for flag, key in (("--k", "k"), ("--l1", "l1_coefficient"), ("--l0", "l0_coefficient"),
                      ("--expansion", "expansion"), ("--tokens", "training_tokens"), ("--batch-size", "batch_size"),
                      ("--lr", "lr"), ("--seed", "seed"), ("--dtype", "dtype")):
        relevant = {"k": "topk", "l1_coefficient": "relu", "l0_coefficient": "jumprelu"}.get(key, arch) == arch
        if relevant and (getattr(cfg, key) != getattr(default, key) or key in fields):
            value = getattr(cfg, key)
            train += f" {flag} {value:g}" if not isinstance(value, str) else f" {flag} {value}"
    return {
        "extract": f"{extract} --out acts{layer}/",
        "train": f"{train} --no-model",
        "eval": f"mechdemo sae eval --sae sae{layer}/ --data acts{layer}/ "
                f"--eval-sequences {ctx.pick(EVAL_SEQUENCES, SMALL['n_sequences'])}",
    }


@figure("sae_tradeoff", description="SAEs on the middle layer's MLP output: sparsity (L0) against explained "
        "variance and loss recovered, for TopK, ReLU + L1 and JumpReLU across their sparsity settings")
def sae_tradeoff(ctx: FigureContext) -> FigureOutput:
    from mechdemo.sae import DEGENERATE_FRACTION, DENSE_THRESHOLD

    runs = _sweep(ctx)
    data = sae_dataset(ctx)
    layer = data.layer
    keys = ("explained_variance", "loss_recovered")
    curves = {arch: sorted((r["metrics"] for r in runs if r["arch"] == arch), key=lambda m: m["l0"]) for arch in SWEEP}

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        fig, axes = plt.subplots(1, 2, figsize=style.SLIDE, sharex=True)
        for arch, points in curves.items():
            colour = ARCH_COLOUR[arch]
            l0 = [m["l0"] for m in points]
            for ax, key in zip(axes, keys):
                ys = [m[key] for m in points]
                ax.plot(l0, ys, "-", color=colour, lw=3, label=tr(ARCH_LABEL[arch]))
                if key == "loss_recovered" and "loss_recovered_se" in points[0]:  # ±1 SE over sequences
                    ax.errorbar(l0, ys, yerr=[m["loss_recovered_se"] for m in points], fmt="none", ecolor=colour,
                                elinewidth=2, capsize=6)
                for x, y, m in zip(l0, ys, points):  # hollow: a degenerate SAE (many dead or dense features)
                    ax.plot(x, y, "o", ms=13, mew=3, color=colour, mfc="white" if m["degenerate"] else colour,
                            zorder=3)
        for ax, title in zip(axes, ("explained variance", "loss recovered")):
            ax.set_title(tr(title))
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator([10, 30, 100]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels(["10", "30", "100"])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: tr("{p}%", p=num(100 * v, ".0f"))))
            ax.grid(alpha=0.3)
            ax.margins(y=0.08)
        fig.supxlabel(tr("L0: active features per token (held-out text)"), fontsize=22)
        handles, _ = axes[0].get_legend_handles_labels()
        hollow = Line2D([], [], ls="none", marker="o", ms=13, mew=3, color=style.GREY, mfc="white",
                        label=tr("> {p}% dead or dense features", p=num(100 * DEGENERATE_FRACTION, ".0f")))
        axes[0].legend(handles=[*handles, hollow], loc="lower right")
        return fig

    d_sae = EXPANSION * data.d_model
    return FigureOutput(draw, results={
        "layer": layer, "d_sae": d_sae, "expansion": EXPANSION, "train_samples": _train_samples(ctx),
        "dataset_tokens": len(data), "n_saes": len(runs), "dense_threshold": DENSE_THRESHOLD,
        "degenerate_fraction": DEGENERATE_FRACTION, "n_degenerate": sum(r["metrics"]["degenerate"] for r in runs),
        "eval_sequences": ctx.pick(EVAL_SEQUENCES, SMALL["n_sequences"]),
        "commands": _commands(ctx, data),
        "saes": [{"architecture": r["arch"], "setting": r["setting"], **_rounded(r["metrics"])} for r in runs],
    })
