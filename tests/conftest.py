"""Shared fixtures. The suite runs offline: HF_HUB_OFFLINE=1 is set before anything imports the Hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the two cores: one torch thread each (two
    # processes with two OpenMP threads each spin against each other), and so for the mechdemo
    # subprocesses the tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MECHDEMO_MAX_THREADS"] = "1"  # and the counts training pins (mechdemo.threads)
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def model():
    """The offline default model, loaded once for the whole session (read-only: do not mutate)."""
    from mechdemo.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def gguf_path():
    from mechdemo.models import get_spec, gguf_file

    return gguf_file(get_spec("smollm2-135m"))


@pytest.fixture(scope="session")
def random_bridge():
    """``random_bridge(name)``: a 2-layer random-weight model of a registered architecture, built once,
    with the offline tokenizer's vocabulary (49,152 instead of Llama's 128,256: a third of the
    memory and of the unembedding's time; no test of these models is about the vocabulary)."""
    from mechdemo.models import offline_vocab_size, random_model

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = random_model(name, n_layers=2, vocab_size=offline_vocab_size())
        return built[name]

    return get
