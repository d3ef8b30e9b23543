"""What a figure function gets: :class:`FigureContext` (the run's model, loaded once and shared; the
seed; the scale; results that several figures share, computed once), and the run's thread count.

**Threads.** Every figure runs on exactly ``FIGURE_THREADS`` torch threads (2, or
``$MECHDEMO_FIGURE_THREADS``), whatever the machine's core count: reductions split over another
number of threads round differently, and training loops (SAEs, toy models) amplify that into other
numbers. (SAE training and the extraction of its dataset pin ``mechdemo.sae.TRAIN_THREADS``, toy
models ``mechdemo.superposition.TOY_THREADS``, so those results do not follow this setting;
``$MECHDEMO_MAX_THREADS`` caps all of them, see :mod:`mechdemo.threads`.)

**Scale.** ``scale="full"`` computes what the deck shows. ``scale="small"`` runs the same code paths
on small inputs (few prompts, few training steps): what ``make test`` uses to check every figure
function end to end. A figure function reads its sizes with ``ctx.pick(full, small)``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable

import numpy as np
import torch

from mechdemo.errors import MechdemoError

log = logging.getLogger(__name__)


SCALES = ("full", "small")


FIGURE_THREADS = 2


MAX_FLOAT64_BYTES = 4 * 2**30  # FigureContext.model64: larger models are not copied to float64


def check_scale(scale: str) -> None:
    """A clear error unless ``scale`` is one of :data:`SCALES`."""
    if scale not in SCALES:
        raise MechdemoError(f"unknown figure scale {scale!r}: choose one of {', '.join(SCALES)}")


def figure_threads() -> int:
    """Torch threads of a figure run: ``$MECHDEMO_FIGURE_THREADS`` or :data:`FIGURE_THREADS`."""
    value = os.environ.get("MECHDEMO_FIGURE_THREADS", str(FIGURE_THREADS))
    if not value.isdigit() or int(value) < 1:
        raise MechdemoError(f"MECHDEMO_FIGURE_THREADS must be a positive integer, not {value!r}")
    return int(value)


class FigureContext:
    """What a figure function gets: the run's model (loaded on first use), seed and settings."""

    def __init__(self, model_name: str, seed: int, device: str | None, models: dict, memo: dict | None = None,
                 scale: str = "full"):
        check_scale(scale)
        self.model_name = model_name
        self.seed = seed
        self.device = device
        self.scale = scale
        self._models = models  # shared across the run: each model loads once
        self._memo = memo if memo is not None else {}  # shared across the run: results reused by several figures

    def pick(self, full: Any, small: Any) -> Any:
        """``full`` for the deck's figures, ``small`` for the quick end-to-end run of the tests."""
        return full if self.scale == "full" else small

    def computed(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run, model and seed; later figures asking for ``key`` reuse it."""
        full = (self.model_name, self.seed, self.scale, key)
        if full not in self._memo:
            self._memo[full] = compute()
        return self._memo[full]

    @property
    def model(self):
        if self.model_name not in self._models:
            from mechdemo.models import load_model

            log.info("Loading %s ...", self.model_name)
            self._models[self.model_name] = load_model(self.model_name, device=self.device)
        return self._models[self.model_name]

    @property
    def model64(self):
        """The run's model in float64 (a copy, made once per run), for the computations whose rounding
        the figure amplifies: SAE training data and t-SNE. MKL's float32 sums differ in their last bits
        between Intel and AMD CPUs (``MKL_CBWR=AVX2`` holds on Intel CPUs only; ``mechdemo.kernels``),
        and training or t-SNE turn that into other features and maps; float64 moves the differences to
        1e-16, below the bf16 rounding of an activation dataset and far below what the deck shows.
        A model over :data:`MAX_FLOAT64_BYTES` in float64 (Llama 3.2 1B: 10 GB) is used as it is."""
        key = (self.model_name, "float64")
        if key not in self._models:
            from mechdemo.models import to_float64

            model = self.model
            size = sum(p.numel() for p in model.parameters()) * 8
            if size > MAX_FLOAT64_BYTES:
                log.warning("%s is %.1f GB in float64: using it in its own dtype (numbers may then differ in "
                            "their last digits between CPU vendors)", self.model_name, size / 1e9)
                self._models[key] = model
            else:
                self._models[key] = to_float64(model)
        return self._models[key]

    @property
    def spec(self):
        from mechdemo.models import get_spec

        return get_spec(self.model_name)

    @property
    def model_label(self) -> str:
        """Human name of the model for titles, e.g. 'SmolLM2-135M-Instruct'."""
        return self.spec.display_name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
