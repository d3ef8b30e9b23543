"""The price of pinned CPU kernels (mechdemo.kernels): one forward pass of the default model on
16 x 128 tokens, in a process with the AVX2 kernels pinned and in one with the CPU's native ones
(MECHDEMO_NATIVE_KERNELS=1), one after the other on 2 threads. Prints seconds for each and the ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys

TIMED = """
import time, mechdemo, torch
from mechdemo.models import load_model
torch.set_num_threads(2)
model = load_model(device="cpu")
tokens = torch.randint(100, 40000, (16, 128), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model(tokens)
    start = time.perf_counter()
    for _ in range(3):
        model(tokens)
print((time.perf_counter() - start) / 3, torch.backends.cpu.get_cpu_capability())
"""


def seconds(native: bool) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE",
                                                            "NPY_DISABLE_CPU_FEATURES", "MECHDEMO_NATIVE_KERNELS")}
    env.update(HF_HUB_OFFLINE="1", **({"MECHDEMO_NATIVE_KERNELS": "1"} if native else {}))
    out = subprocess.run([sys.executable, "-c", TIMED], env=env, capture_output=True, text=True, check=True).stdout
    value, capability = out.split()[-2:]
    return float(value), capability


def main() -> None:
    pinned, pinned_cap = seconds(native=False)
    native, native_cap = seconds(native=True)
    print(f"forward, pinned ({pinned_cap}): {pinned:.2f} s; native ({native_cap}): {native:.2f} s; "
          f"pinned / native = {pinned / native:.2f}")


if __name__ == "__main__":
    main()
