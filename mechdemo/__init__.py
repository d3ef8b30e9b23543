"""mechdemo: the computations behind a lecture on mechanistic interpretability.

Load a model (``mechdemo.models.load_model``), analyse it with the modules named for what they
compute, and regenerate the deck's figures with ``mechdemo figures``.
"""

from importlib.metadata import PackageNotFoundError, version

from mechdemo.kernels import pin_cpu_kernels

pin_cpu_kernels()  # before anything imports torch: the same kernels, so the same numbers, on every machine

try:
    __version__ = version("mechdemo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from mechdemo.deprecated import install as _install_moved_paths  # noqa: E402

_install_moved_paths()  # the 0.1 module paths (mechdemo.datasets, ...) keep working for one release

__all__ = ["__version__"]
