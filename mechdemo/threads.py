"""A fixed torch thread count for computations whose result must not depend on the machine.

Training loops amplify rounding: a reduction split across threads sums in another order, the
weights differ in the last bit after one step, and after thousands of Adam steps a count such as
"features that never fire" differs between a 2-core laptop and an 8-core server. Inside
:func:`fixed_threads` torch uses the same number of threads on every machine, so the same seed
gives the same numbers (on the same CPU instruction set). Outside it, torch keeps its default.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def fixed_threads(n: int = 1) -> Iterator[None]:
    """Run the block with exactly ``n`` intra-op threads, then restore the previous count."""
    if n < 1:
        raise ValueError(f"thread count must be positive, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
