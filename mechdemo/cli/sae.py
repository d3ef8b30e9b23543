"""``mechdemo sae train | eval | browse``: sparse autoencoders on an activation dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from mechdemo.cli.args import NON_NEGATIVE, POSITIVE, float_above
from mechdemo.cli.registry import command, print_json
from mechdemo.errors import MechdemoError

GROUP = "sae"
GROUP_HELP = "sparse autoencoders: train, evaluate, or browse the features of one (mechdemo sae train --help)"
NOT_SAVED = ("nothing was saved and any SAE already in --out is untouched: rerun the same command (training is "
             "deterministic, so it gives the same SAE)")


def dataset_of(args: argparse.Namespace):
    """``--data`` (checked before anything else is read), seen at ``--site`` if it holds several."""
    from mechdemo.data import ActivationDataset

    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        hint = ("it holds an SAE: --data takes the activation dataset (from `mechdemo extract`), --sae the SAE"
                if (data / "cfg.json").is_file() else "build one with `mechdemo extract --layer N --out DIR`")
        raise MechdemoError(f"--data {data} is not an activation dataset (no manifest.json): {hint}")
    dataset = ActivationDataset(data)
    return dataset.select(args.site) if args.site else dataset.select(dataset.site)


def saved_sae(args: argparse.Namespace) -> Path:
    if not (Path(args.sae) / "cfg.json").is_file():
        raise MechdemoError(f"--sae {args.sae} is not a saved SAE (no cfg.json): train one with "
                            f"`mechdemo sae train --data {args.data} --out DIR`")
    return Path(args.sae)


def print_metrics(metrics: dict) -> None:
    print(f"  L0 {metrics['l0']:.1f}, explained variance {metrics['explained_variance']:.3f} (FVU {metrics['fvu']:.3f}), "
          f"dead {metrics['dead_fraction']:.1%}, dense {metrics['dense_fraction']:.1%} on {metrics['tokens']:,} "
          "held-out tokens")
    if "ce_clean" in metrics:
        print(f"  next-token loss {metrics['ce_clean']:.3f} -> {metrics['ce_spliced']:.3f} with the SAE spliced in "
              f"(delta {metrics['delta_ce']:+.3f}; zero-ablation {metrics['ce_zero_ablation']:.3f}, a gap of "
              f"{metrics['ce_zero_ablation'] - metrics['ce_clean']:.3f}; loss recovered {metrics['loss_recovered']:.1%} "
              f"on {metrics['ce_tokens']:,} tokens)")


def report(summary: dict, args: argparse.Namespace, data) -> int:
    if args.json:
        print_json(summary)
        return 0
    print(f"{summary['sae']}: SAE on {data.manifest['config']['model']} {data.site}")
    print_metrics(summary["metrics"])
    return 0


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="activation dataset folder (from `mechdemo extract`); its last "
                                                 "shard is held out for evaluation")
    p.add_argument("--site", default=None, help="the dataset's site to use, if it holds several")
    p.add_argument("--json", action="store_true")


def add_evaluation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-sequences", type=POSITIVE, default=32,
                   help="held-out sequences for the spliced-loss evaluation (default 32)")
    p.add_argument("--no-model", action="store_true", help="skip the spliced-loss evaluation (no model load)")


# --- train ---------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mechdemo.models import load_model
    from mechdemo.sae import SAETrainConfig, check_sae_out, evaluate_sae, sae_bytes, save_sae, train_sae

    out = Path(args.out).absolute()
    if out == Path(args.data).absolute() or Path(args.data).absolute() in out.parents:
        raise MechdemoError(f"--out {args.out} is inside the dataset --data {args.data}: save the SAE elsewhere")
    data = dataset_of(args)
    # a bad --out, or one without room for the SAE, is found now, not after training
    check_sae_out(args.out, args.overwrite, needed_bytes=sae_bytes(data.d_model, args.expansion))
    cfg = SAETrainConfig(architecture=args.architecture, expansion=args.expansion, k=args.k, l1_coefficient=args.l1,
                         l0_coefficient=args.l0, training_tokens=args.tokens, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, dtype=args.dtype)
    sae = train_sae(data, cfg, progress=not args.json)
    model = None if args.no_model else load_model(data.manifest["config"]["model"])
    metrics = evaluate_sae(sae, data, model, n_sequences=args.eval_sequences)
    save_sae(sae, args.out, cfg, metrics, overwrite=args.overwrite)
    return report({"sae": str(args.out), "train_config": asdict(cfg), "metrics": metrics}, args, data)


@command("train", "train an SAE on an activation dataset (SAELens), evaluate it on the held-out shard, save it",
         run_train, kept=NOT_SAVED, group=GROUP, group_help=GROUP_HELP)
def configure_train(p: argparse.ArgumentParser) -> None:
    from mechdemo.sae import ARCHITECTURES, SAETrainConfig

    d = SAETrainConfig()
    add_common(p)
    p.add_argument("--out", required=True, help="folder for the SAE (SAELens format + mechdemo_sae.json)")
    p.add_argument("--architecture", choices=ARCHITECTURES, default=d.architecture,
                   help=f"relu (L1 penalty), topk or jumprelu (default {d.architecture})")
    p.add_argument("--expansion", type=POSITIVE, default=d.expansion, help=f"d_sae / d_model (default {d.expansion})")
    p.add_argument("--k", type=POSITIVE, default=d.k, help=f"topk: active features per token (default {d.k})")
    p.add_argument("--l1", type=float_above(0, inclusive=True), default=d.l1_coefficient,
                   help=f"relu: L1 coefficient (default {d.l1_coefficient:g})")
    p.add_argument("--l0", type=float_above(0, inclusive=True), default=d.l0_coefficient,
                   help=f"jumprelu: L0 coefficient (default {d.l0_coefficient:g})")
    p.add_argument("--tokens", type=POSITIVE, default=d.training_tokens,
                   help=f"training samples (the dataset repeats if smaller; default {d.training_tokens:,})")
    p.add_argument("--batch-size", type=POSITIVE, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float_above(0), default=d.lr, help=f"default {d.lr:g}")
    p.add_argument("--seed", type=NON_NEGATIVE, default=d.seed)
    p.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype,
                   help="the SAE's dtype (default float32); float64 trains the same SAE on every CPU, ~2x slower")
    p.add_argument("--overwrite", action="store_true", help="replace an SAE already in --out")
    add_evaluation(p)


# --- eval ----------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    from mechdemo.models import load_model
    from mechdemo.sae import check_sae_matches, evaluate_sae, load_sae

    path = saved_sae(args)
    data = dataset_of(args)
    sae = load_sae(path)
    check_sae_matches(sae, data, "evaluate", path)
    model = None if args.no_model else load_model(data.manifest["config"]["model"])
    return report({"sae": str(path), "train_config": None,
                   "metrics": evaluate_sae(sae, data, model, n_sequences=args.eval_sequences)}, args, data)


@command("eval", "evaluate a saved SAE on its dataset's held-out shard", run_eval, group=GROUP, group_help=GROUP_HELP)
def configure_eval(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--sae", required=True, help="a saved SAE folder (from mechdemo sae train)")
    add_evaluation(p)


# --- browse --------------------------------------------------------------------------------------


def features_arg(value: str) -> str:
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive number of features, not {value!r}")


def run_browse(args: argparse.Namespace) -> int:
    import time

    from mechdemo.figures.i18n import LANGUAGES, translations
    from mechdemo.models import load_model
    from mechdemo.sae import FeaturePagesConfig, check_sae_matches, load_sae
    from mechdemo.sites import build_browser, check_browser_out, site_bytes, ui_strings

    start = time.perf_counter()
    path = saved_sae(args)
    data = dataset_of(args)
    check_browser_out(args.out, args.overwrite)  # before the model loads
    cfg = FeaturePagesConfig(n_contexts=args.contexts, features=None if args.features == "all" else int(args.features),
                             seed=args.seed)
    sae = load_sae(path)
    check_sae_matches(sae, data, "browse", path)
    model = load_model(data.manifest["config"]["model"])  # its unembedding: each feature's logit effect
    ui = {lang: translations(ui_strings(), lang) for lang in LANGUAGES}
    files = build_browser(sae, data, model, args.out, ui, cfg, provenance={"sae": str(path)},
                          overwrite=args.overwrite, progress=not args.json)
    out = Path(args.out)
    summary = {"out": str(out), "index": {lang: str(out / lang / "index.html") for lang in LANGUAGES},
               "features": cfg.features or sae.cfg.d_sae, "files": len(files), "bytes": site_bytes(out),
               "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print_json(summary)
        return 0
    print(f"{out}: feature browser of {summary['features']:,} features, {summary['bytes'] / 1e6:.1f} MB, "
          f"{summary['seconds']:.0f} s")
    for lang, index in summary["index"].items():
        print(f"  {lang}: {Path(index).absolute().as_uri()}")
    return 0


@command("browse", "write an offline browser of an SAE's features (open <out>/en/index.html or es/index.html)",
         run_browse, kept="any browser already in --out is untouched: rerun the same command",
         group=GROUP, group_help=GROUP_HELP)
def configure_browse(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--sae", required=True, help="a saved SAE folder (from mechdemo sae train)")
    p.add_argument("--out", required=True, help="folder for the feature browser")
    p.add_argument("--features", type=features_arg, default="all",
                   help="all features, or only the first N (a smaller, quicker site; default all)")
    p.add_argument("--contexts", type=POSITIVE, default=20, help="top-activating contexts per feature (default 20)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="the quantile samples (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a browser already in --out")
