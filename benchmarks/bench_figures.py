"""The whole `make figures` run: every figure's wall seconds, the total against the 5-minute goal,
and the share of the two slowest figures.

It regenerates every figure on the offline default model into a temporary folder, with a fresh
temporary cache (so the activation dataset is built, as on a fresh clone; the model's weights are
dequantized once first, outside the timed run, as `make figures` finds them after the first load).
Prints the table and writes ``benchmarks/results/figures.json`` (seconds per figure, total, goal).

    .venv/bin/python benchmarks/bench_figures.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

GOAL_S = 300.0  # `make figures` after set-up on a 2-core CPU (issue: every figure in under 5 minutes)
RESULTS = Path(__file__).resolve().parent / "results" / "figures.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="time only these figures")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MECHDEMO_CACHE"] = str(Path(tmp) / "cache")
        from mechdemo.figures.registry import run_figures, time_table
        from mechdemo.models import DEFAULT_MODEL, load_model

        t0 = time.perf_counter()
        model = load_model(DEFAULT_MODEL, device="cpu")  # the first load of a fresh clone, not timed below
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        entries = run_figures(args.only, out_dir=Path(tmp) / "img", progress=False, models={DEFAULT_MODEL: model})
        wall = time.perf_counter() - t0
    print(time_table(entries))
    seconds = {name: e["seconds"] for name, e in entries.items()}
    total = sum(seconds.values())
    slowest = sorted(seconds.items(), key=lambda kv: -kv[1])[:2]
    print(f"\nfirst model load (dequantizing the GGUF, not in the table): {load_s:.1f} s")
    print(f"total {total:.1f} s ({wall:.1f} s wall) against the goal of {GOAL_S:.0f} s: "
          f"{'within' if total <= GOAL_S else 'OVER'} ({total / GOAL_S:.0%} of it)")
    print("two slowest: " + ", ".join(f"{n} {s:.1f} s ({s / total:.0%})" for n, s in slowest))
    if args.only is None:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"seconds": seconds, "total_s": round(total, 1), "goal_s": GOAL_S,
                                       "first_load_s": round(load_s, 1), "cpu_count": os.cpu_count()},
                                      indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
