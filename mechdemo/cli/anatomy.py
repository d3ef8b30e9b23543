"""``mechdemo anatomy``: a model's module tree, parameters per component and config, from its config alone."""

from __future__ import annotations

import argparse

from mechdemo.cli.registry import command, print_json


def run_anatomy(args: argparse.Namespace) -> int:
    from mechdemo.anatomy import anatomy
    from mechdemo.models import get_spec

    spec = get_spec(args.model)
    a = anatomy(spec.published_config())  # config only: no weights, no network
    if args.json:
        print_json({"model": spec.name, **a})
        return 0
    print(f"{spec.display_name} ({spec.name})\n")
    print(a["tree"])
    print("\nparameters:")
    for part, n in a["parameters"].items():
        print(f"  {part:<20} {n:>15,}")
    print("\none block's projections ([out, in]):")
    for row in a["modules"]:
        print(f"  {row['module']:<22} {str(row['shape']):<14} {row['meaning']}")
    print("\nconfig:")
    for row in a["config"]:
        print(f"  {row['field']:<34} {str(row['value']):<24} {row['meaning']}")
    return 0


@command("anatomy", "module tree, parameters per component and every config field explained (config only, offline)",
         run_anatomy)
def configure_anatomy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (default: the offline default)")
    p.add_argument("--json", action="store_true")
