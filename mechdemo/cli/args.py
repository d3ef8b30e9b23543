"""Argument types: a wrong value stops argparse with the flag's name (exit 2), before any work."""

from __future__ import annotations

import argparse
import re
from typing import Callable


def int_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_above(minimum: float, inclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or (value < minimum if inclusive else value <= minimum):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {minimum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def probability(text: str) -> float:
    value = float_above(0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text}")
    return value


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)


def layers(text: str) -> list[int]:
    """``8``, ``3,5,7`` or ``0-29`` (inclusive) as a list of layers."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"expected layers such as 8, 3,5,7 or 0-29, got {text!r}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise argparse.ArgumentTypeError(f"{part!r}: the range goes down; write {last}-{first}")
        out += range(first, last + 1)
    return list(dict.fromkeys(out))


def device(text: str) -> str | None:
    """auto (None), cpu, cuda, cuda:N or mps, and only if this machine has it."""
    if text == "auto":
        return None
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    import torch

    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} asked for, but torch sees no CUDA GPU here: use --device cpu "
                                         "(or leave --device out: the best available is picked)")
    if text == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("mps asked for, but this machine has no Apple GPU: use --device cpu")
    return text


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device, default=None,
                   help="auto (default: CUDA, else MPS, else the CPU; a GPU only if its self-check passes), cpu, "
                        "cuda, cuda:N, mps")
