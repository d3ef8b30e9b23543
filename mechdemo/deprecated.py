"""Old import paths, kept working for one release with a ``DeprecationWarning`` (as scikit-learn 0.22 did).

mechdemo 0.2 grouped the modules that share types into subpackages and renamed a few things whose
names collided (the model's computational graph is not an attribution graph; mean-ablation and
edge-patching faithfulness are different measures). An attendee's notebook written against 0.1 still
runs: ``import mechdemo.datasets`` gives a module that forwards every name to its new home and says
where that is. No file exists at the old paths: :func:`install` adds an import hook for them.

Remove in mechdemo 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module -> (new modules, searched in order; {old name: new name})
MOVED: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mechdemo.circuits": (("mechdemo.weight_circuits",), {}),
    "mechdemo.ablation": (("mechdemo.mean_ablation",), {"faithfulness": "mean_ablation_faithfulness"}),
    "mechdemo.edge_patching": (("mechdemo.circuit_discovery", "mechdemo.circuit_discovery.edge_patching"), {
        "Graph": "ComputeGraph", "prune": "prune_circuit", "faithfulness": "edge_patching_faithfulness",
        "faithfulness_many": "edge_patching_faithfulness_many", "graph_hooks": "switches_on"}),
    "mechdemo.edge_attribution": (("mechdemo.circuit_discovery.eap",), {}),
    "mechdemo.ioi_circuit": (("mechdemo.ioi.circuit",), {}),
    "mechdemo.datasets": (("mechdemo.data", "mechdemo.data.extract", "mechdemo.files"), {}),
    "mechdemo.corpus": (("mechdemo.data.corpus",), {}),
    "mechdemo.feature_browser": (("mechdemo.sae", "mechdemo.sae.feature_pages", "mechdemo.sites", "mechdemo.sites.feature_browser"), {
        "BrowserConfig": "FeaturePagesConfig", "compute_browser": "feature_pages", "write_site": "write_browser",
        "check_site_out": "check_browser_out"}),
}
class _Forwarding(types.ModuleType):
    """A module that forwards attribute lookups to the modules that now hold the names."""

    def __init__(self, name: str, targets: tuple[str, ...], renames: dict[str, str]):
        super().__init__(name, f"Deprecated: moved to {', '.join(targets)}.")
        self._targets, self._renames = targets, renames

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        new = self._renames.get(attr, attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, new):
                if new != attr:
                    warnings.warn(f"{self.__name__}.{attr} is now {target}.{new}", DeprecationWarning, stacklevel=2)
                return getattr(module, new)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute {attr!r}")

    def __dir__(self):
        names = set(self._renames)
        for target in self._targets:
            names |= {n for n in dir(importlib.import_module(target)) if not n.startswith("_")}
        return sorted(names)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        targets, renames = MOVED[spec.name]
        return _Forwarding(spec.name, targets, renames)

    def exec_module(self, module):
        warnings.warn(f"{module.__name__} moved to {', '.join(module._targets)} in mechdemo 0.2; the old path "
                      "works until 0.3", DeprecationWarning, stacklevel=2)
        module.__all__ = [n for n in dir(module)]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _Loader())
        return None


def install() -> None:
    """Make the old module paths importable (``import mechdemo`` calls this)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
