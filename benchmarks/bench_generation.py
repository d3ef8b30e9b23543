"""Generation with vs without the KV cache: greedy, fixed prompt, 64 new tokens, offline model.

Both run in this process, alternating, three rounds each; the fastest round of each is compared
(same tokens either way, asserted). Prints seconds, forward passes and the ratio.
"""

from __future__ import annotations

import os
import time

PROMPT = "The capital of France is"
NEW_TOKENS = 64
ROUNDS = 3


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mechdemo.generation import generate
    from mechdemo.models import load_model

    model = load_model(device="cpu")
    best = {True: float("inf"), False: float("inf")}
    tokens = {}
    for _ in range(ROUNDS):
        for use_cache in (True, False):
            start = time.perf_counter()
            g = generate(model, PROMPT, "greedy", NEW_TOKENS, use_cache=use_cache, stop_at_eos=False)
            best[use_cache] = min(best[use_cache], time.perf_counter() - start)
            tokens[use_cache] = g.new_ids
    assert tokens[True] == tokens[False]
    print(f"{NEW_TOKENS} tokens after {PROMPT!r}, {model.cfg.model_name}, fastest of {ROUNDS} rounds")
    print(f"with KV cache:    {best[True]:6.2f} s ({best[True] / NEW_TOKENS * 1000:.0f} ms/token)")
    print(f"without KV cache: {best[False]:6.2f} s ({best[False] / NEW_TOKENS * 1000:.0f} ms/token)")
    print(f"ratio without / with: {best[False] / best[True]:.1f}x")


if __name__ == "__main__":
    main()
