"""``mechdemo heads``: every attention head's scores (previous/current/first token, duplicate, induction)."""

from __future__ import annotations

import argparse

from mechdemo.cli.args import NON_NEGATIVE, POSITIVE, add_device, int_at_least
from mechdemo.cli.registry import command, print_json


def run_heads(args: argparse.Namespace) -> int:
    from mechdemo.heads import HEAD_TYPES, standard_head_scores, top_heads
    from mechdemo.models import load_model

    model = load_model(args.model, device=args.device)
    scores = standard_head_scores(model, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
    top = {t: [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in top_heads(scores[t], args.top)]
           for t in HEAD_TYPES}
    if args.json:
        print_json({"model": model.cfg.model_name,
                    "input": {"kind": "[BOS] + R + R", "batch": args.batch, "seq_len": args.seq_len, "seed": args.seed},
                    "scores": {t: [[round(x, 5) for x in row] for row in scores[t].tolist()] for t in HEAD_TYPES},
                    "top": top})
        return 0
    print(f"{model.cfg.model_name}: head scores on {args.batch} x [BOS] + R + R (R = {args.seq_len} random tokens)")
    for t in HEAD_TYPES:
        print(f"  {t:<16}" + "  ".join(f"L{d['layer']}H{d['head']} {d['score']:.2f}" for d in top[t]))
    return 0


@command("heads", "score every attention head: previous/current/first-token, duplicate-token, induction", run_heads)
def configure_heads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--batch", type=POSITIVE, default=8, help="number of random sequences (default 8)")
    p.add_argument("--seq-len", type=int_at_least(2), default=50, help="length of the random sequence R (default 50)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--top", type=POSITIVE, default=3, help="heads listed per type (default 3)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON with n_layers x n_heads score lists")
