"""Sparse autoencoders on a real model: ``sae_tradeoff`` and ``sae_feature_1`` ... ``sae_feature_4``.

They train SAEs (SAELens, through :mod:`mechdemo.sae`) on the MLP output of the offline model's
middle layer, read from an activation dataset built by :func:`mechdemo.data.extract` on the
offline corpus. The dataset is cached under the mechdemo cache folder (building it is the slow part:
a forward pass to the middle layer for every token; extraction resumes and verifies shards, so a
cached copy is exactly what a rebuild would write). The SAEs are retrained on every run from fixed
seeds: a few minutes on a laptop CPU, so they are small and briefly trained, and the slides say so.
"""

from __future__ import annotations

import re


from mechdemo.figures import style
from mechdemo.sae import PICK_FREQUENCY, pick_features
from mechdemo.sites import PAGES as BROWSER_PAGES
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


def _dataset(ctx: FigureContext):
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


def _train_setting(ctx: FigureContext, arch: str, fields: dict):
    """One SAE of the sweep, trained once per run (the feature figures and ``sae_tradeoff`` share it)."""
    from mechdemo.sae import SAETrainConfig, train_sae

    def compute():
        cfg = SAETrainConfig(architecture=arch, expansion=EXPANSION, seed=ctx.seed,
                             training_tokens=_train_samples(ctx), dtype=SAE_DTYPE, **fields)
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


N_FEATURES = 4  # features shown, one figure each: sae_feature_1 ... sae_feature_4
N_CONTEXTS = 5  # top-activating contexts drawn per feature
N_FREQUENT = 20  # top activations whose tokens name what a feature fires on
N_PROMOTED = 6  # promoted tokens drawn per feature


def _quoted(tokens: list[str]) -> str:
    return ", ".join(f"“{t}”" for t in tokens)


def visible(token: str) -> str:
    """A token of whitespace only, shown: newlines as ⏎, spaces as ␣, tabs as ⇥ (as the context lines
    and the feature browser show them)."""
    return token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥")


def frequent_tokens(tokens: list[str], most: int = 3) -> tuple[list[str], float]:
    """What a feature fires on, read off the tokens of its top activations: the most frequent ones
    (stripped of spaces, or :func:`visible` if only whitespace; at most ``most``, those seen at least
    twice, or the single most frequent),
    and the share of ``tokens`` they account for."""
    from collections import Counter

    counts = Counter(t.strip() or visible(t) for t in tokens).most_common()
    chosen = [t for t, c in counts[:most] if c >= 2] or [counts[0][0]]
    share = sum(c for t, c in counts if t in chosen) / len(tokens)
    return chosen, share


def _features(ctx: FigureContext) -> dict:
    """The shown features of the TopK SAE, computed once per run (each ``sae_feature_<n>`` draws one):
    their top held-out activations and contexts, firing frequency and promoted tokens."""
    from mechdemo.data import from_uint16
    from mechdemo.sae import promoted_tokens, split_shards, token_contexts, top_activations

    def compute():
        arch, fields = FEATURE_SAE
        _, sae = _train_setting(ctx, arch, fields)  # the sweep's SAE of this setting
        data = _dataset(ctx)
        _, (heldout,) = split_shards(data)
        x = from_uint16(data.shard_bits(heldout)).float()
        values, rows, fired = top_activations(sae, x, k=N_FREQUENT)
        features = pick_features(values, fired, len(x), n=N_FEATURES)
        if len(features) < N_FEATURES:  # (a tiny small-scale SAE) the strongest firing features fill in
            extra = [int(f) for f in values[:, 0].argsort(descending=True) if fired[f] > 0 and int(f) not in features]
            features += extra[: N_FEATURES - len(features)]
        promoted = promoted_tokens(sae, ctx.model, features, k=N_PROMOTED)
        token_ids = data.table(heldout).column("token_id").to_numpy()
        shown = []
        for f, logits in zip(features, promoted):
            top = [(float(v), int(r)) for v, r in zip(values[f].tolist(), rows[f].tolist()) if v > 0]
            tokens = [ctx.model.tokenizer.decode([int(token_ids[r])]) for _, r in top]
            chosen, share = frequent_tokens(tokens)
            shown.append({
                "feature": f,
                "frequency": round(float(fired[f]) / len(x), 5),
                "contexts": token_contexts(data, heldout, [r for _, r in top[:N_CONTEXTS]], ctx.model.tokenizer),
                "activations": [v for v, _ in top[:N_CONTEXTS]],
                "tokens": tokens,
                "frequent": chosen,
                "frequent_share": share,
                "promoted": logits,
            })
        return {"layer": data.layer, "arch": arch, "fields": fields, "d_sae": sae.cfg.d_sae,
                "heldout_tokens": len(x), "features": shown}

    return ctx.computed("sae.features", compute)


def _clean(text: str) -> str:
    """One line of text: newlines shown as ⏎, runs of spaces (code indentation) as one."""
    return re.sub(r" {2,}", " ", text.replace("\n", "⏎ ").replace("\t", " "))


CONTEXT_FONT = 20
BEFORE_CHARS, AFTER_CHARS, TICK_CHARS = 36, 14, 12  # characters shown (monospace)


def _draw_context(ax, y: float, context: dict, value: float, colour) -> None:
    """One context line (monospace, positions in points from the panel's left edge): the
    activation, the preceding text right-aligned up to the highlighted token, then what follows."""
    from matplotlib import transforms

    char = 0.6 * CONTEXT_FONT  # DejaVu Sans Mono's advance, in points
    before = _clean(context["before"])[-BEFORE_CHARS:]
    token = _clean(context["token"])
    after = _clean(context["after"])[:AFTER_CHARS]
    mono = {"fontsize": CONTEXT_FONT, "family": "DejaVu Sans Mono", "va": "center"}

    def at(points: float):
        return transforms.offset_copy(ax.get_yaxis_transform(), fig=ax.figure, x=points, y=0, units="points")

    edge = 6 * char + BEFORE_CHARS * char  # where the token starts
    ax.text(0, y, num(value, ".1f"), ha="left", weight="bold", transform=at(0), **mono)
    ax.text(0, y, before, ha="right", color=style.GREY, transform=at(edge), **mono)
    ax.text(0, y, token, ha="left", weight="bold", transform=at(edge),
            bbox={"boxstyle": "round,pad=0.2", "fc": colour, "ec": "none", "alpha": 0.45}, **mono)
    ax.text(0, y, after, ha="left", color=style.GREY, transform=at(edge + char * (len(token) + 0.6)), **mono)


def _feature_figure(ctx: FigureContext, rank: int) -> FigureOutput:
    info = _features(ctx)
    feat = info["features"][rank - 1]
    colour = [style.BLUE, style.ORANGE, style.GREEN, style.PURPLE][(rank - 1) % 4]
    contexts, activations, promoted = feat["contexts"], feat["activations"], feat["promoted"]

    def draw():
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=style.SLIDE, width_ratios=[3.0, 1.0])
        left.set_axis_off()
        left.set_xlim(0, 1)
        left.set_ylim(len(contexts) - 0.5, -0.5)
        left.set_title(tr("top activations on held-out text"), loc="left")
        for j, (c, v) in enumerate(zip(contexts, activations)):
            _draw_context(left, j, c, v, colour)
        # a leading space shown, so that " string" and "string" differ
        names = [re.sub(r"^ ", "␣", repr(t)[1:-1]) for t, _ in promoted]
        names = [n if len(n) <= TICK_CHARS else n[: TICK_CHARS - 1] + "…" for n in names]
        right.barh(range(len(names)), [v for _, v in promoted], color=colour, alpha=0.85)
        right.set_yticks(range(len(names)))
        right.set_yticklabels(names, family="DejaVu Sans Mono")
        right.invert_yaxis()
        right.set_title(tr("promoted logits"))
        right.xaxis.set_major_locator(plt.MaxNLocator(3))
        return fig

    return FigureOutput(draw, results={
        "layer": info["layer"], "architecture": info["arch"], **info["fields"], "d_sae": info["d_sae"],
        "rank": rank, "n_features": N_FEATURES, "feature": feat["feature"], "frequency": feat["frequency"],
        "heldout_tokens": info["heldout_tokens"],
        "pick_frequency": list(PICK_FREQUENCY),
        "top_tokens": feat["tokens"][:N_CONTEXTS],
        "top_activations": [round(v, 3) for v in activations],
        "n_frequent": len(feat["tokens"]),
        "frequent_tokens": _quoted(feat["frequent"]),
        "frequent_share": round(feat["frequent_share"], 4),
        "promoted": [t for t, _ in promoted],
        "promoted_tokens": _quoted(list(dict.fromkeys(t.strip() or visible(t) for t, _ in promoted))[:3]),
    })


_FEATURE = ("top-activating held-out contexts, activating token highlighted, and the tokens its decoder direction "
            "promotes")


@figure("sae_feature_1", description=f"The first SAE feature picked by rule: its {_FEATURE}")
def sae_feature_1(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 1)


@figure("sae_feature_2", description=f"The second SAE feature picked by rule: its {_FEATURE}")
def sae_feature_2(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 2)


@figure("sae_feature_3", description=f"The third SAE feature picked by rule: its {_FEATURE}")
def sae_feature_3(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 3)


@figure("sae_feature_4", description=f"The fourth SAE feature picked by rule: its {_FEATURE}")
def sae_feature_4(ctx: FigureContext) -> FigureOutput:
    return _feature_figure(ctx, 4)


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
    from mechdemo.sae import DENSE_THRESHOLD

    runs = _sweep(ctx)
    data = _dataset(ctx)
    layer = data.layer
    curves = {}
    for arch in SWEEP:
        points = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["metrics"]["l0"])
        curves[arch] = ([r["metrics"]["l0"] for r in points],
                        {key: [r["metrics"][key] for r in points] for key in ("explained_variance", "loss_recovered")})

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        fig, axes = plt.subplots(1, 2, figsize=style.SLIDE, sharex=True)
        for arch, (l0, ys) in curves.items():
            for ax, key in zip(axes, ("explained_variance", "loss_recovered")):
                ax.plot(l0, ys[key], "o-", color=ARCH_COLOUR[arch], lw=3, ms=12, label=tr(ARCH_LABEL[arch]))
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
        axes[0].legend(loc="lower right")
        return fig

    d_sae = EXPANSION * data.d_model
    return FigureOutput(draw, results={
        "layer": layer, "d_sae": d_sae, "expansion": EXPANSION, "train_samples": _train_samples(ctx),
        "dataset_tokens": len(data), "n_saes": len(runs), "dense_threshold": DENSE_THRESHOLD,
        "eval_sequences": ctx.pick(EVAL_SEQUENCES, SMALL["n_sequences"]),
        "commands": _commands(ctx, data),
        "saes": [{"architecture": r["arch"], "setting": r["setting"], **_rounded(r["metrics"])} for r in runs],
    })


@figure("sae_browser", site=BROWSER_PAGES,
        description="The offline feature browser of the feature figures' SAE (TopK k=32): every feature's density, "
                    "activation histogram, top and quantile-sampled held-out contexts, logit effect and nearest "
                    "features, as a static site that works from file://")
def sae_browser(ctx: FigureContext) -> FigureOutput:
    """The browser of the SAE that ``sae_feature_1`` ... ``sae_feature_4`` show, from the same held-out
    shard: the four features it shows have the same numbers there (the tests compare them)."""
    from mechdemo.sae import FeaturePagesConfig, feature_pages
    from mechdemo.sites import ui_strings, write_browser
    from mechdemo.figures.i18n import LANGUAGES, translations

    arch, fields = FEATURE_SAE
    _, sae = _train_setting(ctx, arch, fields)
    cfg = FeaturePagesConfig(seed=ctx.seed)
    site = feature_pages(sae, _dataset(ctx), ctx.model, cfg, progress=True)
    meta = site["meta"]
    shown = [f["feature"] for f in _features(ctx)["features"]]
    ui = {lang: translations(ui_strings(), lang) for lang in LANGUAGES}

    def write(folder, provenance):
        return write_browser(site, folder, ui, provenance={**provenance, "sae": f"{arch} {sorted(fields.items())}"},
                          overwrite=True)

    return FigureOutput(None, site=write, results={
        "layer": meta["layer"], "d_sae": meta["d_sae"], "heldout_tokens": meta["heldout_tokens"],
        "n_dead": meta["n_dead"], "n_dense": meta["n_dense"], "n_contexts": cfg.n_contexts,
        "features_shown": [{"feature": f, "density": meta["features"]["density"][f], "max": meta["features"]["max"][f]}
                           for f in shown],
    })
