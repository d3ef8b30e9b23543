"""mechdemo.kernels: the same CPU kernels on every x86-64 machine (the committed figures' numbers
depend on them: an AVX-512 machine computes other SAEs than an AVX2 one unless they are pinned)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechdemo.kernels import PINNED, cpu_flags

ROOT = Path(__file__).resolve().parents[1]
X86_AVX2 = "avx2" in cpu_flags()
CLEAN = {k: v for k, v in os.environ.items()
         if k not in PINNED and k not in ("NPY_DISABLE_CPU_FEATURES", "MECHDEMO_NATIVE_KERNELS")}


def run(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**CLEAN, **env}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.skipif(not X86_AVX2, reason="the pins apply to x86-64 CPUs with AVX2 only")
def test_import_mechdemo_pins_torch_and_numpy_before_they_load():
    out = run("import mechdemo, os, torch, numpy\n"
              "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
              "print(os.environ['MKL_CBWR'], torch.backends.cpu.get_cpu_capability(), f.get('X86_V4', False))")
    mkl, aten, v4 = out.split()
    assert (mkl, aten, v4) == ("AVX2", "AVX2", "False")


@pytest.mark.skipif(not X86_AVX2, reason="the pins apply to x86-64 CPUs with AVX2 only")
def test_a_value_the_user_set_is_kept_and_torch_imported_first_is_left_alone():
    assert run("import mechdemo, os; print(os.environ['MKL_CBWR'])", MKL_CBWR="AUTO") == "AUTO"
    out = run("import torch, mechdemo, os; print(os.environ.get('MKL_CBWR'), mechdemo.kernels.pin_cpu_kernels())")
    assert out == "None {}"  # too late to pin: nothing set, nothing claimed
    out = run("import mechdemo, os, torch; print(os.environ.get('MKL_CBWR'), torch.backends.cpu.get_cpu_capability())",
              MECHDEMO_NATIVE_KERNELS="1")
    assert out.split()[0] == "None"  # the opt-out: the CPU's own kernels
    if "avx512f" in cpu_flags():
        assert out.split()[1] == "AVX512"


def test_the_makefile_gets_the_same_pins_as_shell_assignments():
    proc = subprocess.run(["python3", "mechdemo/kernels.py"], capture_output=True, text=True, cwd=ROOT,
                          env=CLEAN, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if X86_AVX2:
        assert "MKL_CBWR=AVX2" in proc.stdout and "ATEN_CPU_CAPABILITY=avx2" in proc.stdout
    else:
        assert proc.stdout.strip() == ""
