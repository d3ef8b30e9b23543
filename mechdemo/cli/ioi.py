"""``mechdemo ioi``: the IOI logit difference, its DLA, and (``--circuit``) the circuit by path patching."""

from __future__ import annotations

import argparse

from mechdemo.cli.args import NON_NEGATIVE, POSITIVE, add_device
from mechdemo.cli.registry import command, print_json
from mechdemo.errors import MechdemoError


def run_ioi(args: argparse.Namespace) -> int:
    from mechdemo.heads import top_heads
    from mechdemo.ioi import check_prompt_file, find_ioi_circuit, ioi_batch, ioi_report, prompt_batches
    from mechdemo.models import load_model

    if args.prompts:
        check_prompt_file(args.prompts)  # before the model loads
        if args.circuit:
            raise MechdemoError("--circuit needs the built-in templates (the path-patching search reads their IO "
                                "and S positions); for your own prompts, `mechdemo circuit --prompts FILE` "
                                "finds the circuit automatically")
    model = load_model(args.model, device=args.device)
    batches, source = prompt_batches(model, args.prompts, args.n, args.seed, args.template)
    report, dla = ioi_report(model, batches)
    out = {"model": model.cfg.model_name, "prompts": source, **report}
    if args.circuit:
        batch = ioi_batch(model, args.template or 0, args.n, seed=args.seed)
        out["circuit"] = find_ioi_circuit(model, batch, progress=not args.json).to_json()
    if args.json:
        print_json(out)
        return 0
    print(f"{out['model']}: {out['n_prompts']} prompts, mean logit difference {out['logit_diff_mean']:.3f}, "
          f"accuracy {out['accuracy']:.1%}")
    best = top_heads(dla.heads.mean(0), 5)
    print("top heads by direct logit attribution: " + ", ".join(f"L{l}H{h} {v:+.2f}" for l, h, v in best))
    if "circuit" in out:
        for role, heads in out["circuit"]["roles"].items():
            if heads:
                print(f"  {role:<20}" + ", ".join(f"L{h['layer']}H{h['head']}" for h in heads))
        print(f"  faithfulness {out['circuit']['faithfulness']['faithfulness']:.2f}")
    return 0


@command("ioi", "indirect object identification: logit difference, DLA, and (--circuit) the circuit", run_ioi)
def configure_ioi(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None)
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help='your prompts: one {"prompt": ..., "correct": " Mary", "incorrect": " John"} per line')
    p.add_argument("--n", type=POSITIVE, default=16, help="prompts per template (default 16)")
    p.add_argument("--template", type=NON_NEGATIVE, default=None, help="only this template (default: all)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--circuit", action="store_true",
                   help="find the circuit by path patching (about a minute per 16 prompts on a CPU)")
    add_device(p)
    p.add_argument("--json", action="store_true")
