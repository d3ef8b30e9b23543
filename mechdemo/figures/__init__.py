"""Every figure of the deck, one registered function each (see :mod:`mechdemo.figures.registry`).

Importing this package registers all figures; ``mechdemo figures`` regenerates them.
"""

from mechdemo.figures.registry import FIGURES, FigureContext, FigureOutput, figure, run_figures

# Figure modules register themselves on import.
from mechdemo.figures import architecture, attention, generation, induction, ioi, patching, path_patching, circuit_discovery, mlp, sae, sae_features, superposition, weight_circuits  # noqa: E402,F401  isort: skip

__all__ = ["FIGURES", "FigureContext", "FigureOutput", "figure", "run_figures"]
