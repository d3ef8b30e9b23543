"""``mechdemo extract`` (build or resume an activation dataset) and ``mechdemo dataset info``."""

from __future__ import annotations

import argparse

from mechdemo.cli.args import POSITIVE, NON_NEGATIVE, int_at_least, layers
from mechdemo.cli.registry import command, print_json
from mechdemo.errors import MechdemoError


def sites_of(kinds: list[str] | None, layer: int | None, layer_list: list[int] | None) -> tuple[str, ...]:
    """The site names of ``--site`` kinds x ``--layers`` (``--layer N`` alone: the MLP output of layer N)."""
    from mechdemo.interventions import SITES, site

    if layer is not None and layer_list is not None:
        raise MechdemoError("--layer and --layers say the same thing: give one")
    chosen = layer_list if layer_list is not None else ([layer] if layer is not None else [])
    names: list[str] = []
    for kind in kinds or ["mlp_out"]:
        if kind not in SITES:
            names.append(kind)  # a full site name (ExtractConfig checks it)
        elif SITES[kind].per_layer:
            if not chosen:
                raise MechdemoError(f"--site {kind} is per layer: give --layer N, or --layers (e.g. 3,5,7 or 0-29)")
            names += [site(kind, n) for n in chosen]
        else:
            names.append(site(kind))
    return tuple(names)


def run_extract(args: argparse.Namespace) -> int:
    from mechdemo.data import ExtractConfig, extract
    from mechdemo.models import DEFAULT_MODEL

    cfg = ExtractConfig(model=args.model or DEFAULT_MODEL, corpus=args.corpus,
                        sites=sites_of(args.site, args.layer, args.layers), seq_len=args.seq_len,
                        batch_size=args.batch_size, shard_size=args.shard_size, max_tokens=args.max_tokens,
                        compute_dtype=args.compute_dtype)
    manifest = extract(cfg, args.out, progress=not args.json, push_to_hub=args.push_to_hub)
    if not manifest:  # a process other than 0 under torchrun: process 0 reports
        return 0
    summary = {"out": str(args.out), "tokens": manifest["tokens"], "shards": len(manifest["shards"]),
               "sites": manifest["sites"], "norm_stats": manifest["norm_stats"],
               "pushed_to_hub": manifest.get("pushed_to_hub")}
    if args.json:
        print_json(summary)
    else:
        print(f"{args.out}: {summary['tokens']:,} tokens at {len(summary['sites'])} site(s) in {summary['shards']} "
              f"shards, rms " + ", ".join(f"{s['rms']:.4g}" for s in summary["norm_stats"].values()))
    return 0


@command("extract", "build (or resume) an activation dataset: the activations at chosen sites (by default one "
                    "layer's MLP output) for every token of a corpus", run_extract,
         kept="every completed shard is kept: rerun the same command to resume")
def configure_extract(p: argparse.ArgumentParser) -> None:
    from mechdemo.data import COMPUTE_DTYPES, OFFLINE_CORPUS, PILE

    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--layer", type=NON_NEGATIVE, default=None,
                   help="one layer (with the default --site, its MLP output; Llama 3.2 1B: 8, as in the course)")
    p.add_argument("--layers", type=layers, default=None, metavar="L",
                   help="layers for the per-layer sites: 8, 3,5,7 or 0-29")
    p.add_argument("--site", action="append", default=None, metavar="KIND",
                   help="what to store (repeat for several, all from one forward pass): mlp_out (default), mlp_in, "
                        "resid_pre, resid_mid, resid_post, attn_out, ... (mechdemo.interventions.SITES)")
    p.add_argument("--corpus", default=OFFLINE_CORPUS,
                   help=f"{OFFLINE_CORPUS!r} (offline default), a .txt/.jsonl file or folder, or a Hub dataset "
                        f"such as {PILE!r}")
    p.add_argument("--out", required=True, help="output folder (rerun with the same arguments to resume)")
    p.add_argument("--seq-len", type=int_at_least(2, " (BOS and one token)"), default=128,
                   help="tokens per sequence (default 128)")
    p.add_argument("--max-tokens", type=POSITIVE, default=None, help="stop after about this many stored tokens")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--shard-size", type=POSITIVE, default=50_000, help="tokens per shard (default 50,000)")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                   help="the forward pass's dtype (default float32); float64 stores the same bf16 activations on "
                        "every CPU (float32 sums differ in their last bits between Intel and AMD), ~2x slower")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub dataset repo")
    p.add_argument("--json", action="store_true")


def run_dataset_info(args: argparse.Namespace) -> int:
    from mechdemo.data import ActivationDataset

    info = ActivationDataset(args.dir, verify=args.verify).info()
    if args.json:
        print_json(info)
        return 0
    print(f"{info['path']}: {info['model']}, corpus {info['corpus']}")
    print(f"  {info['tokens']:,} tokens x {info['d_model']} ({info['dtype']}) at {len(info['sites'])} site(s), "
          f"{info['shards']} shards, {info['bytes'] / 1e6:,.1f} MB" + ("; verified" if args.verify else ""))
    for name, stats in info["norm_stats"].items():
        print(f"  {name:<28} rms {stats['rms']:.4g} (per element {stats['rms_per_element']:.4g})")
    return 0


@command("info", "describe an activation dataset (mechdemo dataset info DIR)", run_dataset_info,
         group="dataset", group_help="activation datasets: mechdemo dataset info DIR")
def configure_dataset_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--verify", action="store_true", help="check every shard's size and sha256")
    p.add_argument("--json", action="store_true")
