"""``mechdemo circuit``: find a circuit automatically (EAP / EAP-IG) and measure it by edge patching."""

from __future__ import annotations

import argparse

from mechdemo.cli.args import NON_NEGATIVE, POSITIVE, add_device, probability
from mechdemo.cli.registry import command, print_json


def run_circuit(args: argparse.Namespace) -> int:
    from mechdemo.circuit_discovery import DISCOVERY_SEED, EVALUATION_SEED, TEMPLATES, discover_circuit
    from mechdemo.circuit_discovery import ioi_prompt_sets, split_prompts
    from mechdemo.ioi import check_prompt_file, load_prompts, require_corrupted
    from mechdemo.models import load_model

    if args.prompts:
        check_prompt_file(args.prompts)  # before the model loads
    model = load_model(args.model, device=args.device)
    if args.prompts:
        everything = load_prompts(model, args.prompts, seed=args.seed)
        require_corrupted(everything)
        discovery, evaluation = split_prompts(everything)
        prompts = {"kind": "file", "path": str(args.prompts), "discovery": "odd lines", "evaluation": "even lines"}
    else:
        discovery, evaluation = ioi_prompt_sets(model, args.n, TEMPLATES, n_held_out=args.n, seed=args.seed)
        prompts = {"kind": "templates", "templates": list(TEMPLATES), "n_per_template": args.n,
                   "discovery_seed": DISCOVERY_SEED + args.seed, "evaluation_seed": EVALUATION_SEED + args.seed}
    target = None if args.edges is not None else (args.faithfulness if args.faithfulness is not None else 0.8)
    found = discover_circuit(model, discovery, evaluation, args.method, args.metric, edges=args.edges, target=target,
                             top=args.top, progress=not args.json)
    found.pop("tensor")
    out = {"model": model.cfg.model_name, "task": args.task, "prompts": prompts, **found}
    if args.json:
        print_json(out)
        return 0
    c, steps = out["circuit"], out["ig_steps"]
    print(f"{out['model']}: {args.method.upper()} ({steps} step{'s' if steps > 1 else ''}) over {out['n_edges']:,} "
          f"edges, {out['n_prompts']['discovery']} prompts; measured on {out['n_prompts']['evaluation']} others")
    print("top edges by |score|:")
    for e in out["top_edges"]:
        print(f"  {e['edge']:<28} {e['score']:+.4f}")
    print(f"circuit: {c['edges']:,} edges ({c['fraction']:.1%} of the graph), {len(c['heads'])} heads, "
          f"faithfulness {c['faithfulness']:.2f} ({args.metric}, 1 = the whole model, 0 = corrupted)")
    if target is not None and not c.get("reached", True):
        print(f"  (no circuit smaller than the whole graph reaches {target:g})")
    return 0


@command("circuit", "find a circuit automatically: EAP / EAP-IG edge scores, then the smallest top-scoring circuit "
                    "measured by edge patching on held-out prompts", run_circuit)
def configure_circuit(p: argparse.ArgumentParser) -> None:
    from mechdemo.circuit_discovery import IG_STEPS, METHODS, N_PER_TEMPLATE
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
    size.add_argument("--faithfulness", type=probability, default=None,
                      help="find the smallest top-scoring circuit at least this faithful (default 0.8)")
    p.add_argument("--metric", choices=METRICS, default="logit_diff", help="what faithfulness measures (default logit_diff)")
    p.add_argument("--n", type=POSITIVE, default=N_PER_TEMPLATE,
                   help=f"built-in prompts per template, for each of discovery and evaluation (default {N_PER_TEMPLATE})")
    p.add_argument("--top", type=POSITIVE, default=20, help="top edges listed (default 20)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    add_device(p)
    p.add_argument("--json", action="store_true")
