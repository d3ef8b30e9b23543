"""``mechdemo generate``: text from a decoding strategy written by hand (greedy, sampling, top-k, top-p, beam)."""

from __future__ import annotations

import argparse
import sys

from mechdemo.cli.args import NON_NEGATIVE, POSITIVE, add_device, float_above, probability
from mechdemo.cli.registry import command, print_json


def run_generate(args: argparse.Namespace) -> int:
    from mechdemo.generation import generate, make_chooser
    from mechdemo.models import load_model

    if args.strategy != "beam":
        make_chooser(args.strategy, args.temperature, args.k, args.p)  # wrong settings fail before the load
    model = load_model(args.model, device=args.device)
    g = generate(model, args.prompt, args.strategy, args.max_new_tokens, use_cache=not args.no_cache,
                 temperature=args.temperature, k=args.k, p=args.p, num_beams=args.num_beams, seed=args.seed)

    def decode(ids: list[int]) -> str:
        return model.tokenizer.decode(ids)

    text = decode(g.new_ids)
    if args.json:
        print_json({"model": model.cfg.model_name, "prompt": args.prompt, "strategy": args.strategy,
                    "use_cache": not args.no_cache, "text": text, "new_token_ids": g.new_ids,
                    "forward_passes": g.forward_passes,
                    "steps": [[{"token": decode([t]), "id": t, "probability": round(q, 5)} for t, q in step]
                              for step in g.steps]})
        return 0
    print(args.prompt + text)
    for i, step in enumerate(g.steps):
        chosen = decode([g.new_ids[i]])
        print(f"  {i + 1:>3} {chosen!r:<16} top-3: " + ", ".join(f"{decode([t])!r} {q:.1%}" for t, q in step),
              file=sys.stderr)
    print(f"{g.forward_passes} forward passes ({'no ' if args.no_cache else ''}KV cache)", file=sys.stderr)
    return 0


@command("generate", "generate text with a decoding strategy written by hand (greedy, sampling, top-k, top-p, beam)",
         run_generate)
def configure_generate(p: argparse.ArgumentParser) -> None:
    from mechdemo.generation import STRATEGIES

    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=20)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    p.add_argument("--temperature", type=float_above(0), default=1.0, help="sample / top-k / top-p (default 1)")
    p.add_argument("--k", type=POSITIVE, default=50, help="top-k (default 50)")
    p.add_argument("--p", type=probability, default=0.9, help="top-p, in (0, 1] (default 0.9)")
    p.add_argument("--num-beams", type=POSITIVE, default=4, help="beam (default 4)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    add_device(p)
    p.add_argument("--json", action="store_true")
