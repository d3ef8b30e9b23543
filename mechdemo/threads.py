"""A fixed torch thread count for computations whose result must not depend on the machine.

Training loops amplify rounding: a reduction split across threads sums in another order, the
weights differ in the last bit after one step, and after thousands of Adam steps a count such as
"features that never fire" differs between a 2-core laptop and an 8-core server. Inside
:func:`fixed_threads` torch uses the same number of threads on every machine, so the same seed
gives the same numbers (on the same CPU instruction set). Outside it, torch keeps its default.

``$MECHDEMO_MAX_THREADS`` caps every fixed count. The test suite's xdist workers set it to 1: two
workers share two cores, and a second OpenMP thread in each would spin against the other worker
(several-fold slower). Numbers computed under a cap are deterministic too, but not bit-identical to
uncapped ones; the small-scale tests that run under it do not compare with committed numbers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def fixed_threads(n: int = 1) -> Iterator[None]:
    """Run the block with exactly ``n`` intra-op threads (at most ``$MECHDEMO_MAX_THREADS``), then
    restore the previous count."""
    if n < 1:
        raise ValueError(f"thread count must be positive, got {n}")
    n = capped(n)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def max_threads() -> int | None:
    """The cap ``$MECHDEMO_MAX_THREADS`` puts on :func:`fixed_threads` (None: no cap)."""
    value = os.environ.get("MECHDEMO_MAX_THREADS")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MECHDEMO_MAX_THREADS must be a positive integer, not {value!r}")
    return int(value)


def capped(n: int) -> int:
    """The thread count :func:`fixed_threads` uses for ``n``: ``n``, at most ``$MECHDEMO_MAX_THREADS``."""
    return min(n, max_threads() or n)
