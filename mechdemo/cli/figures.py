"""``mechdemo figures``: regenerate the deck's figures."""

from __future__ import annotations

import argparse

from mechdemo.cli.args import add_device
from mechdemo.cli.registry import command, print_json


def run_figures(args: argparse.Namespace) -> int:
    from mechdemo.figures import FIGURES, run_figures as regenerate
    from mechdemo.figures.registry import time_table

    if args.list:
        rows = [{"name": s.name, "files": list(s.outputs), "needs_model": s.needs_model, "generator": s.generator,
                 "description": s.description} for s in FIGURES.values()]
        if args.json:
            print_json(rows)
        else:
            for r in rows:
                print(f"{r['name']:<28}{', '.join(r['files']):<48}{r['description']}")
        return 0
    written = regenerate(args.only, model_name=args.model, out_dir=args.out, device=args.device,
                         progress=not args.json, scale=args.scale)
    if args.json:
        print_json(written)
        return 0
    for name, entry in written.items():
        print(f"{name}: {', '.join(entry['files'])}")
    print()
    print(time_table(written))
    return 0


@command("figures", "regenerate the deck's figures (img/ by default)", run_figures,
         kept="every figure finished before is kept in the manifest: rerun to make the rest")
def configure_figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", metavar="NAME", help="regenerate only these figures")
    p.add_argument("--model", default=None, help="model to compute on (default: the offline default)")
    p.add_argument("--out", default=None, help="output folder (default: img/, or img/<model>/ for another model)")
    add_device(p)
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.add_argument("--scale", choices=("full", "small"), default="full",
                   help="full: the deck's figures (default); small: same code on small inputs, seconds (for tests)")
    p.add_argument("--json", action="store_true", help="print the manifest entries as JSON")
