"""Loading the offline default model: cold (dequantize the GGUF) vs warm (read the cache).

Both loads run in this process, one after the other, into a fresh temporary cache, so the ratio
compares like with like on this machine. Prints seconds for each and the ratio.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MECHDEMO_CACHE"] = cache
        os.environ["HF_HUB_OFFLINE"] = "1"
        from mechdemo.models import load_model

        t0 = time.perf_counter()
        cold = load_model(device="cpu")
        t_cold = time.perf_counter() - t0
        del cold
        t0 = time.perf_counter()
        warm = load_model(device="cpu")
        t_warm = time.perf_counter() - t0
        with torch.no_grad():
            assert warm.tokenizer.decode(warm(warm.to_tokens("The capital of France is"))[0, -1].argmax()) == " Paris"
    print(f"cold load (dequantize GGUF + write cache): {t_cold:6.2f} s")
    print(f"warm load (verified cache):                 {t_warm:6.2f} s")
    print(f"ratio cold / warm: {t_cold / t_warm:.1f}x")


if __name__ == "__main__":
    main()
