"""The same CPU kernels on every x86-64 machine, so that a seed gives the same numbers everywhere.

torch picks its CPU code path by what the processor offers: on a CPU with AVX-512, MKL's matrix
products and ATen's vectorised kernels (reductions, elementwise maths) run 512-bit code, elsewhere
256-bit AVX2 code. The two sum in a different order, so a forward pass differs in the last bits
(measured: the BOS norm of one MLP output, 20521.5254 on an AVX2 machine, 20521.4668 with AVX-512),
and training (the SAEs of the deck) amplifies that into different features and dead fractions.

:func:`pin_cpu_kernels` asks every numerical library for its AVX2 path before it loads:
``MKL_CBWR=AVX2`` (MKL's Conditional Numerical Reproducibility: torch's matrix products),
``ATEN_CPU_CAPABILITY=avx2`` (torch's own kernels), ``OPENBLAS_CORETYPE=Haswell`` (numpy's and
scipy's BLAS: PCA, t-SNE) and, on a CPU with AVX-512, ``NPY_DISABLE_CPU_FEATURES`` for numpy's
AVX-512 loops. ``MKL_CBWR=AVX2`` holds on Intel CPUs only: on AMD ones MKL runs its AUTO path (only
AUTO and COMPATIBLE exist there; COMPATIBLE, SSE2, costs 3x), so float32 matrix products still differ
in their last bits between the two vendors. The figures that amplify such bits (SAE training data
and training, t-SNE) compute in float64 (``FigureContext.model64``), where the difference is ~1e-16.
Every x86-64 CPU since 2013 has AVX2; on a CPU without it, or another architecture
(ARM, Apple silicon), nothing is set. A value the user has set is kept, so ``MKL_CBWR=AUTO``
restores MKL's fastest path, and ``MECHDEMO_NATIVE_KERNELS=1`` turns the pinning off (each library
picks its fastest kernels; the numbers then depend on the CPU). This must run before torch and numpy
are imported: ``import mechdemo`` does it first. Under pytest, plugins import both before the
conftest: the conftest then sets ``MECHDEMO_NATIVE_KERNELS=1`` unless ``make check`` pinned the
process, so that the mechdemo subprocesses a test starts compute with the same kernels as the test.

Measured on this project's 2-core machine (AVX-512): the full regeneration takes about the same
time pinned (3.5-4 min); a torch already imported keeps its kernels, so a notebook should import
mechdemo before torch for the deck's exact numbers.
"""

from __future__ import annotations

import os
import platform
import sys

PINNED = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell"}
NUMPY_AVX512 = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}  # numpy 2.x dispatch targets


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def pin_cpu_kernels() -> dict[str, str]:
    """Set :data:`PINNED` (and :data:`NUMPY_AVX512` on an AVX-512 CPU) in the environment unless set
    already; return what is in effect. No effect on libraries already imported, nor off x86-64."""
    if os.environ.get("MECHDEMO_NATIVE_KERNELS") == "1" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    flags = cpu_flags()
    if flags and "avx2" not in flags:
        return {}
    wanted = dict(PINNED)
    if "avx512f" in flags:
        wanted.update(NUMPY_AVX512)
    if "torch" not in sys.modules and "numpy" not in sys.modules:
        for key, value in wanted.items():
            os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted if key in os.environ}


def kernels_tag() -> str:
    """A short name for the kernels in effect ("avx2" when pinned, else "native"), for caches whose
    content depends on them (an activation dataset computed under other kernels differs in its last
    bits, and the SAEs trained on it differ more)."""
    return "avx2" if os.environ.get("MKL_CBWR", "").upper().startswith("AVX2") else "native"


if __name__ == "__main__":  # `python3 mechdemo/kernels.py`: the pins as shell assignments (the Makefile's)
    import shlex

    print(" ".join(f"{key}={shlex.quote(value)}" for key, value in pin_cpu_kernels().items()))
