"""The ``mechdemo`` command (also ``python -m mechdemo``).

Each subcommand is a ``_cmd_<name>`` function registered in :data:`COMMANDS`; analysis
subcommands take ``--json`` and then print exactly one JSON document on standard output
(progress and logs go to standard error). Errors the user can fix are printed as one paragraph
naming the fix, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Callable

from mechdemo import __version__
from mechdemo.errors import MechdemoError

log = logging.getLogger("mechdemo")

@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]  # adds the subcommand's arguments
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, run: Callable[[argparse.Namespace], int]):
    """Register the decorated ``configure(parser)`` as subcommand ``name``, executed by ``run``."""

    def register(configure):
        COMMANDS[name] = Command(configure, run, help)
        return configure

    return register


# --- argument types: a wrong value stops argparse with the flag's name (exit 2), before any work ---


def _int_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_above(minimum: float, inclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or (value < minimum if inclusive else value <= minimum):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {minimum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _probability(text: str) -> float:
    value = _float_above(0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text}")
    return value


POSITIVE = _int_at_least(1)


def _layers(text: str) -> list[int]:
    """``8``, ``3,5,7`` or ``0-29`` (inclusive) as a list of layers."""
    layers: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"expected layers such as 8, 3,5,7 or 0-29, got {text!r}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise argparse.ArgumentTypeError(f"{part!r}: the range goes down; write {last}-{first}")
        layers += range(first, last + 1)
    return list(dict.fromkeys(layers))
NON_NEGATIVE = _int_at_least(0)


def _device(text: str) -> str:
    """cpu, cuda, cuda:N or mps, and only if this machine has it."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps")
    import torch

    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} asked for, but torch sees no CUDA GPU here: use --device cpu "
                                         "(or leave --device out: the best available is picked)")
    if text == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("mps asked for, but this machine has no Apple GPU: use --device cpu")
    return text


def _print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# --- mechdemo models ----------------------------------------------------------------------------


def _run_models(args: argparse.Namespace) -> int:
    if args.prepare:
        from mechdemo.models import DEFAULT_MODEL, dequantized_weights

        print(f"{DEFAULT_MODEL}: dequantized weights ready in {dequantized_weights().path}", file=sys.stderr)
        return 0
    from mechdemo.models import DEFAULT_MODEL, MODELS, availability

    rows = []
    for name, spec in MODELS.items():
        arch = spec.architecture
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "description": spec.description,
                "family": arch.family,
                "n_params": arch.n_params,
                "n_layers": arch.n_layers,
                "d_model": arch.d_model,
                "n_heads": arch.n_heads,
                "n_kv_heads": arch.n_kv_heads,
                "norm": arch.norm,
                "positions": arch.positions,
                "gated": spec.gated,
                "source": f"PyPI {spec.gguf.distribution} (GGUF)" if spec.gguf else f"Hub {spec.hf_repo}",
                "offline": availability(spec),
            }
        )
    if args.json:
        _print_json({"default": DEFAULT_MODEL, "models": rows})
        return 0
    table = [("model", "params", "architecture", "available offline now")]
    for r in rows:
        arch = (
            f"{r['family']}: {r['n_layers']} layers, d_model {r['d_model']}, "
            f"{r['n_heads']} Q / {r['n_kv_heads']} KV heads, {r['norm']}, "
            f"{'RoPE' if r['positions'] == 'rotary' else 'learned positions'}"
        )
        name = r["name"] + (" *" if r["default"] else "") + (" (gated)" if r["gated"] else "")
        table.append((name, f"{r['n_params'] / 1e6:.0f}M", arch, r["offline"]))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for i, row in enumerate(table):
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
        if i == 0:
            print("-" * (sum(widths) + 6 + len("available offline now")))
    print("\n* default (used when --model is not given). Details: mechdemo models --json")
    return 0


@command("models", "list the registered models: size, architecture, offline availability", _run_models)
def _configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prepare", action="store_true",
                   help="dequantize the offline default model's weights into the cache now (once per machine; "
                        "`make setup` does it) instead of on its first load")


# --- mechdemo figures ---------------------------------------------------------------------------


def _run_figures(args: argparse.Namespace) -> int:
    from mechdemo.figures import FIGURES, run_figures

    if args.list:
        rows = [
            {"name": s.name, "files": list(s.outputs), "needs_model": s.needs_model,
             "generator": s.generator, "description": s.description}
            for s in FIGURES.values()
        ]
        if args.json:
            _print_json(rows)
        else:
            for r in rows:
                print(f"{r['name']:<28}{', '.join(r['files']):<48}{r['description']}")
        return 0
    from mechdemo.figures.registry import time_table

    written = run_figures(args.only, model_name=args.model, out_dir=args.out, device=args.device,
                          progress=not args.json, scale=args.scale)
    if args.json:
        _print_json(written)
    else:
        for name, entry in written.items():
            print(f"{name}: {', '.join(entry['files'])}")
        print()
        print(time_table(written))
    return 0


@command("figures", "regenerate the deck's figures (img/ by default)", _run_figures)
def _configure_figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", metavar="NAME", help="regenerate only these figures")
    p.add_argument("--model", default=None, help="model to compute on (default: the offline default)")
    p.add_argument("--out", default=None, help="output folder (default: img/, or img/<model>/ for another model)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.add_argument("--scale", choices=("full", "small"), default="full",
                   help="full: the deck's figures (default); small: same code on small inputs, seconds (for tests)")
    p.add_argument("--json", action="store_true", help="print the manifest entries as JSON")


# --- mechdemo heads -----------------------------------------------------------------------------


def _run_heads(args: argparse.Namespace) -> int:
    from mechdemo.heads import HEAD_TYPES, standard_head_scores, top_heads
    from mechdemo.models import load_model

    model = load_model(args.model, device=args.device)
    scores = standard_head_scores(model, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
    top = {t: [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in top_heads(scores[t], args.top)]
           for t in HEAD_TYPES}
    if args.json:
        _print_json({
            "model": model.cfg.model_name,
            "input": {"kind": "[BOS] + R + R", "batch": args.batch, "seq_len": args.seq_len, "seed": args.seed},
            "scores": {t: [[round(x, 5) for x in row] for row in scores[t].tolist()] for t in HEAD_TYPES},
            "top": top,
        })
        return 0
    print(f"{model.cfg.model_name}: head scores on {args.batch} x [BOS] + R + R (R = {args.seq_len} random tokens)")
    for t in HEAD_TYPES:
        print(f"  {t:<16}" + "  ".join(f"L{d['layer']}H{d['head']} {d['score']:.2f}" for d in top[t]))
    return 0


@command("heads", "score every attention head: previous/current/first-token, duplicate-token, induction", _run_heads)
def _configure_heads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--batch", type=POSITIVE, default=8, help="number of random sequences (default 8)")
    p.add_argument("--seq-len", type=_int_at_least(2), default=50, help="length of the random sequence R (default 50)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--top", type=POSITIVE, default=3, help="heads listed per type (default 3)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--json", action="store_true", help="print JSON with n_layers x n_heads score lists")


# --- mechdemo ioi -------------------------------------------------------------------------------


def _run_ioi(args: argparse.Namespace) -> int:
    import torch

    from mechdemo.dla import direct_logit_attribution
    from mechdemo.ioi import check_prompt_file, ioi_batch, ioi_batches, load_prompts, logit_diff_of, summary
    from mechdemo.ioi_circuit import find_ioi_circuit
    from mechdemo.models import load_model

    if args.prompts:
        check_prompt_file(args.prompts)  # before the model loads
        if args.circuit:
            raise MechdemoError("--circuit needs the built-in templates (the path-patching search reads their IO "
                                "and S positions); for your own prompts, `mechdemo circuit --prompts FILE` "
                                "finds the circuit automatically")
    model = load_model(args.model, device=args.device)
    if args.prompts:
        batches = load_prompts(model, args.prompts, seed=args.seed)
        source = {"kind": "file", "path": str(args.prompts), "token_lengths": [b.tokens.shape[1] for b in batches]}
    else:
        templates = None if args.template is None else [args.template]
        batches = ioi_batches(model, args.n, seed=args.seed, templates=templates)
        source = {"kind": "templates", "n_per_template": args.n, "seed": args.seed,
                  "templates": [b.template for b in batches]}
    # batches of user prompts hold the lines of one token length each: results go back in file order
    order = torch.tensor([r for b in batches for r in b.rows]).argsort() if args.prompts else None

    def in_order(t: "torch.Tensor") -> "torch.Tensor":
        return t if order is None else t[order]

    diffs = in_order(torch.cat([logit_diff_of(model, b.tokens, b) for b in batches]))
    parts = [direct_logit_attribution(model, b.tokens, b.correct, b.incorrect) for b in batches]
    dla = type(parts[0])(*[in_order(torch.cat([getattr(p, f) for p in parts])) for f in
                           ("heads", "attn_bias", "mlp", "embed", "constant", "total")])
    out = {"model": model.cfg.model_name, "prompts": source, "n_prompts": len(diffs), **summary(diffs)}
    if all(len(b.corrupted_tokens) for b in batches):
        corrupted = in_order(torch.cat([logit_diff_of(model, b.corrupted_tokens, b) for b in batches]))
        out["corrupted_logit_diff_mean"] = round(corrupted.mean().item(), 4)
    out.update(dla.mean())
    if args.circuit:
        batch = ioi_batch(model, args.template or 0, args.n, seed=args.seed)
        out["circuit"] = find_ioi_circuit(model, batch, progress=not args.json).to_json()
    if args.json:
        _print_json(out)
        return 0
    print(f"{out['model']}: {out['n_prompts']} prompts, mean logit difference {out['logit_diff_mean']:.3f}, "
          f"accuracy {out['accuracy']:.1%}")
    from mechdemo.heads import top_heads

    best = top_heads(dla.heads.mean(0), 5)
    print("top heads by direct logit attribution: " + ", ".join(f"L{l}H{h} {v:+.2f}" for l, h, v in best))
    if "circuit" in out:
        for role, heads in out["circuit"]["roles"].items():
            if heads:
                print(f"  {role:<20}" + ", ".join(f"L{h['layer']}H{h['head']}" for h in heads))
        print(f"  faithfulness {out['circuit']['faithfulness']['faithfulness']:.2f}")
    return 0


@command("ioi", "indirect object identification: logit difference, DLA, and (--circuit) the circuit", _run_ioi)
def _configure_ioi(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None)
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help='your prompts: one {"prompt": ..., "correct": " Mary", "incorrect": " John"} per line')
    p.add_argument("--n", type=POSITIVE, default=16, help="prompts per template (default 16)")
    p.add_argument("--template", type=NON_NEGATIVE, default=None, help="only this template (default: all)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--circuit", action="store_true", help="find the circuit by path patching (about a minute per 16 prompts on a CPU)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--json", action="store_true")


# --- mechdemo circuit ---------------------------------------------------------------------------


def _run_circuit(args: argparse.Namespace) -> int:
    import time

    from mechdemo.circuit_discovery import (
        DISCOVERY_SEED, EVALUATION_SEED, TEMPLATES, edge_list, heads_in, ioi_pairs, smallest_circuit, steps_of,
    )
    from mechdemo.edge_attribution import edge_scores
    from mechdemo.edge_patching import Graph, baselines, faithfulness, prune, top_edges
    from mechdemo.ioi import check_prompt_file, ioi_batches, load_prompts, require_corrupted
    from mechdemo.models import load_model

    if args.edges is None and args.faithfulness is None:
        args.faithfulness = 0.8
    if args.prompts:
        check_prompt_file(args.prompts)  # before the model loads
    model = load_model(args.model, device=args.device)
    if args.prompts:
        everything = load_prompts(model, args.prompts, seed=args.seed)
        require_corrupted(everything)
        # alternate prompts, in file order: discovery on one half, evaluation on the other
        discovery, evaluation = [], []
        for b in everything:
            for half, parity in ((discovery, 0), (evaluation, 1)):
                keep = [i for i, r in enumerate(b.rows) if r % 2 == parity]
                if keep:
                    half.append(b.subset(keep))
        if not discovery or not evaluation:
            raise MechdemoError(f"--prompts {args.prompts} holds one prompt: circuit discovery needs at least two "
                                "(odd lines find the circuit, even lines measure it)")
        prompts = {"kind": "file", "path": str(args.prompts), "discovery": "odd lines", "evaluation": "even lines"}
    else:
        discovery = ioi_batches(model, args.n, DISCOVERY_SEED + args.seed, list(TEMPLATES))
        evaluation = ioi_batches(model, args.n, EVALUATION_SEED + args.seed, list(TEMPLATES))
        prompts = {"kind": "templates", "templates": list(TEMPLATES), "n_per_template": args.n,
                   "discovery_seed": DISCOVERY_SEED + args.seed, "evaluation_seed": EVALUATION_SEED + args.seed}
    graph = Graph.of(model)
    start = time.perf_counter()
    steps = steps_of(args.method)
    scores = edge_scores(model, graph, ioi_pairs(model, discovery, args.metric), steps=steps, progress=not args.json)
    seconds = {"scores": round(time.perf_counter() - start, 2)}
    base = baselines(model, graph, ioi_pairs(model, evaluation, args.metric))
    start = time.perf_counter()
    if args.edges is not None:
        circuit = prune(top_edges(scores, graph, args.edges), graph)
        found = {"top": args.edges, "edges": int(circuit.sum()), "faithfulness": faithfulness(model, graph, base, circuit)}
    else:
        result = smallest_circuit(model, graph, base, scores, args.faithfulness)
        circuit = result.pop("circuit", graph.edges)
        found = {**result, "target": args.faithfulness}
    seconds["evaluation"] = round(time.perf_counter() - start, 2)
    found["fraction"] = found["edges"] / graph.n_edges
    found["heads"] = [list(h) for h in heads_in(graph, circuit)]
    out = {"model": model.cfg.model_name, "task": args.task, "method": args.method, "ig_steps": steps,
           "metric": args.metric, "n_edges": graph.n_edges, "prompts": prompts,
           "n_prompts": {"discovery": sum(len(b) for b in discovery), "evaluation": sum(len(b) for b in evaluation)},
           "top_edges": edge_list(graph, scores, limit=args.top), "circuit": found,
           "circuit_edges": [e["edge"] for e in edge_list(graph, scores, circuit)], "seconds": seconds}
    if args.json:
        _print_json(out)
        return 0
    print(f"{out['model']}: {args.method.upper()} ({steps} step{'s' if steps > 1 else ''}) over {graph.n_edges:,} edges, "
          f"{out['n_prompts']['discovery']} prompts; measured on {out['n_prompts']['evaluation']} others")
    print("top edges by |score|:")
    for e in out["top_edges"]:
        print(f"  {e['edge']:<28} {e['score']:+.4f}")
    print(f"circuit: {found['edges']:,} edges ({found['fraction']:.1%} of the graph), {len(found['heads'])} heads, "
          f"faithfulness {found['faithfulness']:.2f} ({args.metric}, 1 = the whole model, 0 = corrupted)")
    if args.faithfulness is not None and not found.get("reached", True):
        print(f"  (no circuit smaller than the whole graph reaches {args.faithfulness:g})")
    return 0


@command("circuit", "find a circuit automatically: EAP / EAP-IG edge scores, then the smallest top-scoring circuit "
                    "measured by edge patching on held-out prompts", _run_circuit)
def _configure_circuit(p: argparse.ArgumentParser) -> None:
    from mechdemo.circuit_discovery import N_PER_TEMPLATE
    from mechdemo.edge_attribution import IG_STEPS, METHODS
    from mechdemo.metrics import METRICS

    p.add_argument("--task", choices=["ioi"], default="ioi", help="the task (default ioi)")
    p.add_argument("--model", default=None)
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help='your prompts, any lengths: {"prompt", "correct", "incorrect"[, "corrupted"]} per line; odd '
                        "lines find the circuit, even lines measure it")
    p.add_argument("--method", choices=METHODS, default="eap-ig",
                   help=f"eap (one gradient) or eap-ig (integrated gradients, {IG_STEPS} steps; default)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--edges", type=POSITIVE, default=None, help="keep the top N edges (pruned) and measure them")
    size.add_argument("--faithfulness", type=_probability, default=None,
                      help="find the smallest top-scoring circuit at least this faithful (default 0.8)")
    p.add_argument("--metric", choices=METRICS, default="logit_diff", help="what faithfulness measures (default logit_diff)")
    p.add_argument("--n", type=POSITIVE, default=N_PER_TEMPLATE,
                   help=f"built-in prompts per template, for each of discovery and evaluation (default {N_PER_TEMPLATE})")
    p.add_argument("--top", type=POSITIVE, default=20, help="top edges listed (default 20)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--json", action="store_true")


# --- mechdemo extract / dataset --------------------------------------------------------------


def _run_extract(args: argparse.Namespace) -> int:
    from mechdemo.datasets import ExtractConfig, extract
    from mechdemo.models import DEFAULT_MODEL

    from mechdemo.interventions import SITES, site

    if args.layer is not None and args.layers is not None:
        raise MechdemoError("--layer and --layers say the same thing: give one")
    layers = args.layers if args.layers is not None else ([args.layer] if args.layer is not None else [])
    kinds = args.site or ["mlp_out"]
    names = []
    for kind in kinds:
        if kind in SITES and SITES[kind].per_layer:
            if not layers:
                raise MechdemoError(f"--site {kind} is per layer: give --layers (e.g. --layers 8, or 0-29)")
            names += [site(kind, layer) for layer in layers]
        else:
            names.append(site(kind) if kind in SITES else kind)  # a per-model site, or a full site name
    cfg = ExtractConfig(model=args.model or DEFAULT_MODEL, corpus=args.corpus, sites=tuple(names),
                        seq_len=args.seq_len, batch_size=args.batch_size, shard_size=args.shard_size,
                        max_tokens=args.max_tokens, compute_dtype=args.compute_dtype)
    manifest = extract(cfg, args.out, progress=not args.json, push_to_hub=args.push_to_hub)
    if manifest:  # process 0
        summary = {"out": str(args.out), "tokens": manifest["tokens"], "shards": len(manifest["shards"]),
                   "norm_stats": manifest["norm_stats"], "pushed_to_hub": manifest.get("pushed_to_hub")}
        if args.json:
            _print_json(summary)
        else:
            print(f"{args.out}: {summary['tokens']:,} tokens in {summary['shards']} shards, "
                  f"rms {summary['norm_stats']['rms']:.4g}")
    return 0


@command("extract", "build (or resume) an activation dataset: one layer's MLP output for every token of a corpus",
         _run_extract)
def _configure_extract(p: argparse.ArgumentParser) -> None:
    from mechdemo.corpus import OFFLINE_CORPUS, PILE
    from mechdemo.datasets import COMPUTE_DTYPES

    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--layer", type=NON_NEGATIVE, default=None,
                   help="one layer (with the default --site, its MLP output; Llama 3.2 1B: 8, as in the course)")
    p.add_argument("--layers", type=_layers, default=None, metavar="L",
                   help="layers for the per-layer sites: 8, 3,5,7 or 0-29")
    p.add_argument("--site", action="append", default=None, metavar="KIND",
                   help="what to store (repeat for several, all from one forward pass): mlp_out (default), mlp_in, "
                        "resid_pre, resid_mid, resid_post, attn_out, ... (`mechdemo.interventions.SITES`)")
    p.add_argument("--corpus", default=OFFLINE_CORPUS,
                   help=f"{OFFLINE_CORPUS!r} (offline default), a .txt/.jsonl file or folder, or a Hub dataset "
                        f"such as {PILE!r}")
    p.add_argument("--out", required=True, help="output folder (rerun with the same arguments to resume)")
    p.add_argument("--seq-len", type=_int_at_least(2, " (BOS and one token)"), default=128,
                   help="tokens per sequence (default 128)")
    p.add_argument("--max-tokens", type=POSITIVE, default=None, help="stop after about this many stored tokens")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--shard-size", type=POSITIVE, default=50_000, help="tokens per shard (default 50,000)")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                   help="the forward pass's dtype (default float32); float64 stores the same bf16 activations on "
                        "every CPU (float32 sums differ in their last bits between Intel and AMD), ~2x slower")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub dataset repo")
    p.add_argument("--json", action="store_true")


def _run_dataset(args: argparse.Namespace) -> int:
    from mechdemo.datasets import ActivationDataset

    data = ActivationDataset(args.dir, verify=args.verify)
    info = data.info()
    if args.json:
        _print_json(info)
        return 0
    stats = info["norm_stats"]
    print(f"{info['path']}: {info['model']}, corpus {info['corpus']}")
    print(f"  {info['tokens']:,} tokens x {info['d_model']} ({info['dtype']}) at {len(info['sites'])} site(s), "
          f"{info['shards']} shards, {info['bytes'] / 1e6:,.1f} MB" + ("; verified" if args.verify else ""))
    for name in info["sites"]:
        print(f"  {name:<28} rms {stats[name]['rms']:.4g} (per element {stats[name]['rms_per_element']:.4g})")
    return 0


@command("dataset", "describe an activation dataset (mechdemo dataset info DIR)", _run_dataset)
def _configure_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info"])
    p.add_argument("dir")
    p.add_argument("--verify", action="store_true", help="check every shard's size and sha256")
    p.add_argument("--json", action="store_true")


# --- mechdemo sae ----------------------------------------------------------------------------------


def _sae_summary(out, train_config: dict | None, metrics: dict) -> dict:
    return {"sae": str(out), "train_config": train_config, "metrics": metrics}


def _print_sae_metrics(metrics: dict) -> None:
    print(f"  L0 {metrics['l0']:.1f}, explained variance {metrics['explained_variance']:.3f} (FVU {metrics['fvu']:.3f}), "
          f"dead {metrics['dead_fraction']:.1%}, dense {metrics['dense_fraction']:.1%} on {metrics['tokens']:,} "
          "held-out tokens")
    if "ce_clean" in metrics:
        print(f"  next-token loss {metrics['ce_clean']:.3f} -> {metrics['ce_spliced']:.3f} with the SAE spliced in "
              f"(delta {metrics['delta_ce']:+.3f}; zero-ablation {metrics['ce_zero_ablation']:.3f}; "
              f"loss recovered {metrics['loss_recovered']:.1%})")


def _run_sae(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mechdemo.datasets import ActivationDataset
    from mechdemo.models import load_model
    from mechdemo.sae import SAETrainConfig, evaluate_sae, load_sae, save_sae, train_sae

    _check_sae_args(args)  # before the dataset is read or a model loaded
    if args.action == "browse":
        return _run_sae_browse(args)
    data = ActivationDataset(args.data)
    c = data.manifest["config"]
    if args.action == "train":
        cfg = SAETrainConfig(architecture=args.architecture, expansion=args.expansion, k=args.k,
                             l1_coefficient=args.l1, l0_coefficient=args.l0, training_tokens=args.tokens,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, dtype=args.dtype)
        sae = train_sae(data, cfg, progress=not args.json)
        model = None if args.no_model else load_model(c["model"])
        metrics = evaluate_sae(sae, data, model, n_sequences=args.eval_sequences)
        save_sae(sae, args.out, cfg, metrics, overwrite=args.overwrite)
        summary = _sae_summary(args.out, asdict(cfg), metrics)
    else:
        sae = load_sae(args.sae)
        _check_sae_matches(sae, args, data, "evaluate")
        model = None if args.no_model else load_model(c["model"])
        summary = _sae_summary(args.sae, None, evaluate_sae(sae, data, model, n_sequences=args.eval_sequences))
    if args.json:
        _print_json(summary)
    else:
        print(f"{summary['sae']}: SAE on {c['model']} {data.site}")
        _print_sae_metrics(summary["metrics"])
    return 0


def _check_sae_matches(sae, args: argparse.Namespace, data, what: str) -> None:
    """An SAE trained on another model or layer than the dataset's is a user's mix-up: say so."""
    meta = sae.cfg.metadata
    c = data.manifest["config"]
    if meta.get("hook_name") and (meta.get("hook_name"), meta.get("model_name")) != (data.site, c["model"]):
        raise MechdemoError(f"{args.sae} was trained on {meta.get('model_name')} {meta.get('hook_name')}, but "
                            f"{args.data} holds {c['model']} {data.site}: {what} it on a dataset of "
                            "the same model and site")


def _run_sae_browse(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mechdemo.datasets import ActivationDataset
    from mechdemo.feature_browser import BrowserConfig, build_browser, site_bytes, ui_strings
    from mechdemo.figures.i18n import LANGUAGES, translations
    from mechdemo.models import load_model
    from mechdemo.sae import load_sae

    start = time.perf_counter()
    cfg = BrowserConfig(n_contexts=args.contexts, features=None if args.features == "all" else int(args.features),
                        seed=args.seed)
    data = ActivationDataset(args.data)
    c = data.manifest["config"]
    sae = load_sae(args.sae)
    _check_sae_matches(sae, args, data, "browse")
    model = load_model(c["model"])  # its unembedding: each feature's logit effect
    ui = {lang: translations(ui_strings(), lang) for lang in LANGUAGES}
    files = build_browser(sae, data, model, args.out, ui, cfg, provenance={"sae": str(args.sae)},
                          overwrite=args.overwrite, progress=not args.json)
    out = Path(args.out)
    summary = {"out": str(out), "index": {lang: str(out / lang / "index.html") for lang in LANGUAGES},
               "features": cfg.features or sae.cfg.d_sae, "files": len(files), "bytes": site_bytes(out),
               "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        _print_json(summary)
    else:
        print(f"{out}: feature browser of {summary['features']:,} features, {summary['bytes'] / 1e6:.1f} MB, "
              f"{summary['seconds']:.0f} s")
        for lang, index in summary["index"].items():
            print(f"  {lang}: {Path(index).absolute().as_uri()}")
    return 0


def _features_arg(value: str) -> str:
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive number of features, not {value!r}")


@command("sae", "train (mechdemo sae train), evaluate (mechdemo sae eval) or browse the features of (mechdemo sae "
                "browse) a sparse autoencoder on an activation dataset", _run_sae)
def _configure_sae(p: argparse.ArgumentParser) -> None:
    from mechdemo.sae import ARCHITECTURES, SAETrainConfig

    d = SAETrainConfig()
    p.add_argument("action", choices=["train", "eval", "browse"])
    p.add_argument("--data", required=True, help="activation dataset folder (from `mechdemo extract`); its last shard "
                                                 "is held out for evaluation")
    p.add_argument("--out", help="train: folder for the SAE (SAELens format + mechdemo_sae.json); browse: folder "
                                 "for the feature browser (open <out>/en/index.html or es/index.html)")
    p.add_argument("--sae", help="eval, browse: a saved SAE folder")
    p.add_argument("--architecture", choices=ARCHITECTURES, default=d.architecture,
                   help=f"relu (L1 penalty), topk or jumprelu (default {d.architecture})")
    p.add_argument("--expansion", type=POSITIVE, default=d.expansion, help=f"d_sae / d_model (default {d.expansion})")
    p.add_argument("--k", type=POSITIVE, default=d.k, help=f"topk: active features per token (default {d.k})")
    p.add_argument("--l1", type=_float_above(0, inclusive=True), default=d.l1_coefficient, help=f"relu: L1 coefficient (default {d.l1_coefficient:g})")
    p.add_argument("--l0", type=_float_above(0, inclusive=True), default=d.l0_coefficient, help=f"jumprelu: L0 coefficient (default {d.l0_coefficient:g})")
    p.add_argument("--tokens", type=POSITIVE, default=d.training_tokens,
                   help=f"training samples (the dataset repeats if smaller; default {d.training_tokens:,})")
    p.add_argument("--batch-size", type=POSITIVE, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=_float_above(0), default=d.lr, help=f"default {d.lr:g}")
    p.add_argument("--seed", type=NON_NEGATIVE, default=d.seed)
    p.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype,
                   help="train: the SAE's dtype (default float32); float64 trains the same SAE on every CPU, ~2x slower")
    p.add_argument("--eval-sequences", type=POSITIVE, default=32,
                   help="held-out sequences for the spliced-loss evaluation (default 32)")
    p.add_argument("--no-model", action="store_true", help="skip the spliced-loss evaluation (no model load)")
    p.add_argument("--features", type=_features_arg, default="all",
                   help="browse: all features, or only the first N (a smaller, quicker site; default all)")
    p.add_argument("--contexts", type=POSITIVE, default=20, help="browse: top-activating contexts per feature (default 20)")
    p.add_argument("--overwrite", action="store_true", help="train: replace an SAE already in --out; browse: a browser")
    p.add_argument("--json", action="store_true")


def _check_sae_args(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked before reading data or training."""
    from pathlib import Path

    from mechdemo.sae import check_sae_out, sae_bytes

    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        hint = ("it holds an SAE: --data takes the activation dataset (from `mechdemo extract`), --sae the SAE"
                if (data / "cfg.json").is_file() else "build one with `mechdemo extract --layer N --out DIR`")
        raise MechdemoError(f"--data {data} is not an activation dataset (no manifest.json): {hint}")
    if args.action == "train":
        if not args.out:
            raise MechdemoError("mechdemo sae train needs --out DIR: the folder to save the SAE in")
        out = Path(args.out).absolute()
        if out == data.absolute() or data.absolute() in out.parents:
            raise MechdemoError(f"--out {args.out} is inside the dataset --data {args.data}: save the SAE elsewhere")
        try:
            d_in = int(json.loads((data / "manifest.json").read_text())["d_model"])
        except (OSError, ValueError, KeyError, TypeError):
            d_in = 0  # a damaged manifest: ActivationDataset names it next
        # a bad --out, or one without room for the SAE, is found now, not after training
        check_sae_out(args.out, args.overwrite, needed_bytes=sae_bytes(d_in, args.expansion) if d_in else 0)
    if args.action in ("eval", "browse"):
        if not args.sae:
            raise MechdemoError(f"mechdemo sae {args.action} needs --sae DIR: a folder written by `mechdemo sae train`")
        if not (Path(args.sae) / "cfg.json").is_file():
            raise MechdemoError(f"--sae {args.sae} is not a saved SAE (no cfg.json): train one with "
                                f"`mechdemo sae train --data {args.data} --out DIR`")
    if args.action == "browse":
        from mechdemo.feature_browser import check_site_out

        if not args.out:
            raise MechdemoError("mechdemo sae browse needs --out DIR: the folder to write the feature browser in")
        check_site_out(args.out, args.overwrite)  # before the model loads


# --- mechdemo anatomy ------------------------------------------------------------------------------


def _run_anatomy(args: argparse.Namespace) -> int:
    from mechdemo.anatomy import anatomy
    from mechdemo.models import get_spec

    spec = get_spec(args.model)
    a = anatomy(spec.published_config())  # config only: no weights, no network
    if args.json:
        _print_json({"model": spec.name, **a})
        return 0
    print(f"{spec.display_name} ({spec.name})\n")
    print(a["tree"])
    print("\nparameters:")
    for part, n in a["parameters"].items():
        print(f"  {part:<20} {n:>15,}")
    print("\nconfig:")
    for row in a["config"]:
        print(f"  {row['field']:<34} {str(row['value']):<24} {row['meaning']}")
    return 0


@command("anatomy", "module tree, parameters per component and every config field explained (config only, offline)",
         _run_anatomy)
def _configure_anatomy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--json", action="store_true")


# --- mechdemo generate -----------------------------------------------------------------------------


def _run_generate(args: argparse.Namespace) -> int:
    from mechdemo.generation import generate, make_chooser
    from mechdemo.models import load_model

    if args.strategy != "beam":
        make_chooser(args.strategy, args.temperature, args.k, args.p)  # wrong settings fail before the load
    model = load_model(args.model, device=args.device)
    g = generate(model, args.prompt, args.strategy, args.max_new_tokens, use_cache=not args.no_cache,
                 temperature=args.temperature, k=args.k, p=args.p, num_beams=args.num_beams, seed=args.seed)
    decode = lambda ids: model.tokenizer.decode(ids)  # noqa: E731
    text = decode(g.new_ids)
    if args.json:
        _print_json({
            "model": model.cfg.model_name, "prompt": args.prompt, "strategy": args.strategy, "use_cache": not args.no_cache,
            "text": text, "new_token_ids": g.new_ids, "forward_passes": g.forward_passes,
            "steps": [[{"token": decode([t]), "id": t, "probability": round(q, 5)} for t, q in step] for step in g.steps],
        })
        return 0
    print(args.prompt + text)
    for i, step in enumerate(g.steps):
        chosen = decode([g.new_ids[i]])
        print(f"  {i + 1:>3} {chosen!r:<16} top-3: " + ", ".join(f"{decode([t])!r} {q:.1%}" for t, q in step),
              file=sys.stderr)
    print(f"{g.forward_passes} forward passes ({'no ' if args.no_cache else ''}KV cache)", file=sys.stderr)
    return 0


@command("generate", "generate text with a decoding strategy written by hand (greedy, sampling, top-k, top-p, beam)",
         _run_generate)
def _configure_generate(p: argparse.ArgumentParser) -> None:
    from mechdemo.generation import STRATEGIES

    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=20)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    p.add_argument("--temperature", type=_float_above(0), default=1.0, help="sample / top-k / top-p (default 1)")
    p.add_argument("--k", type=POSITIVE, default=50, help="top-k (default 50)")
    p.add_argument("--p", type=_probability, default=0.9, help="top-p, in (0, 1] (default 0.9)")
    p.add_argument("--num-beams", type=POSITIVE, default=4, help="beam (default 4)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--json", action="store_true")


# --- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechdemo",
        description="Mechanistic interpretability lecture: models, analyses and figures.",
    )
    parser.add_argument("--version", action="version", version=f"mechdemo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except MechdemoError as err:
        print(f"mechdemo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mechdemo: interrupted; {_what_is_kept(args.command)}", file=sys.stderr)
        return 130
    except OSError as err:
        if (problem := _storage_problem(err)) is None:
            return _report_bug()
        print(f"mechdemo: error: {problem}: free some space (or choose a writable --out) and rerun the same "
              f"command; {_what_is_kept(args.command)}", file=sys.stderr)
        return 2
    except Exception:  # not the user's mistake: a bug, with everything needed to report it
        return _report_bug()


def _what_is_kept(command: str) -> str:
    """After an interruption or a full disk: what survives, and what rerunning does."""
    return {"extract": "every completed shard is kept: rerun the same command to resume",
            "figures": "every figure finished before is kept in the manifest: rerun to make the rest",
            "sae": "nothing was saved and any SAE already in --out is untouched: rerun the same command (training "
                   "is deterministic, so it gives the same SAE)"}.get(command, "nothing was changed")


def _storage_problem(err: OSError) -> str | None:
    """A full or read-only disk is the user's to fix, not a bug: say which file, without a traceback."""
    import errno

    text = str(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text
    read_only = err.errno == errno.EROFS or "Read-only file system" in text
    if not (full or read_only):
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return ("no space left on the device" if full else "the file system is read-only") + where


def _report_bug() -> int:
    import traceback

    traceback.print_exc()
    print(f"mechdemo {__version__}: this is a bug in mechdemo, not something you did wrong; please report it "
          "with the command and the traceback above.", file=sys.stderr)
    return 1
