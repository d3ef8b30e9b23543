"""The dequantized-weights cache: reused, verified, rebuilt when damaged, never half-written."""

from __future__ import annotations

from pathlib import Path

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from mechdemo import weights_cache
from mechdemo.models import load_model
from mechdemo.weights_cache import MARKER, ensure_dequantized


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mechdemo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHDEMO_CACHE", str(root))
        yield root


def _logits(model, text="The capital of France is"):
    with torch.no_grad():
        return model(model.to_tokens(text))


@pytest.mark.full  # dequantizes the GGUF (30-40 s); `make check` runs in a fresh cache
def test_first_load_builds_second_load_reads(cache_dir, gguf_path, monkeypatch):
    first = ensure_dequantized(gguf_path, "smollm2-135m")
    assert first.built and first.path.parent.parent == cache_dir
    assert first.path.name == weights_cache.sha256_of(gguf_path)[:16]  # keyed by the GGUF's hash
    record = json.loads((first.path / MARKER).read_text())
    assert "model.safetensors" in record["files"] and "tokenizer.json" in record["files"]
    reference = _logits(load_model(device="cpu"))

    def must_not_dequantize(*args, **kwargs):
        raise AssertionError("the second load dequantized the GGUF again")

    monkeypatch.setattr(weights_cache, "dequantize_gguf", must_not_dequantize)
    second = ensure_dequantized(gguf_path, "smollm2-135m")
    assert not second.built and second.path == first.path
    torch.testing.assert_close(_logits(load_model(device="cpu")), reference, rtol=0, atol=0)


@pytest.fixture(scope="session")
def verified_build(gguf_path) -> "Path":
    """The cache folder the session's model loads from (built once, verified at every load)."""
    return ensure_dequantized(gguf_path, "smollm2-135m").path


@pytest.fixture
def fast_rebuild(verified_build, cache_dir, monkeypatch) -> list:
    """Builds copy the files of a verified build instead of dequantizing the GGUF again (30 s each;
    the real dequantization is what test_first_load_builds_second_load_reads checks). Returns the
    list of folders built."""
    reference = verified_build
    rebuilt = []

    def copy(gguf_file, out_dir):
        rebuilt.append(out_dir)
        for f in reference.iterdir():
            if f.name != MARKER:
                shutil.copy2(f, out_dir / f.name)

    monkeypatch.setattr(weights_cache, "dequantize_gguf", copy)
    return rebuilt


def test_corrupt_weights_are_detected_and_rebuilt(cache_dir, gguf_path, caplog, fast_rebuild):
    folder = ensure_dequantized(gguf_path, "smollm2-135m").path
    builds = len(fast_rebuild)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # flip bytes in the middle: same size, different content
        f.seek(size // 2)
        f.write(b"\x00\xff" * 512)
    with pytest.raises(weights_cache.CorruptFileError, match="sha256"):
        weights_cache.verify(folder)
    with caplog.at_level(logging.WARNING, logger="mechdemo.weights_cache"):
        rebuilt = ensure_dequantized(gguf_path, "smollm2-135m")
    assert rebuilt.built and "damaged" in caplog.text and len(fast_rebuild) == builds + 1
    weights_cache.verify(rebuilt.path)


def test_partial_cache_is_detected_and_rebuilt(cache_dir, gguf_path, fast_rebuild):
    folder = ensure_dequantized(gguf_path, "smollm2-135m").path
    builds = len(fast_rebuild)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(weights_cache.CorruptFileError):
        weights_cache.verify(folder)
    assert ensure_dequantized(gguf_path, "smollm2-135m").built and len(fast_rebuild) == builds + 1
    weights_cache.verify(folder)
    # a folder without its marker (the writer died before finishing) is not trusted either
    (folder / MARKER).unlink()
    with pytest.raises(weights_cache.CorruptFileError, match="missing"):
        weights_cache.verify(folder)


def test_failed_build_leaves_nothing(tmp_path, gguf_path, monkeypatch):
    monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path))

    def crash(gguf_file, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(weights_cache, "dequantize_gguf", crash)
    with pytest.raises(RuntimeError):
        ensure_dequantized(gguf_path, "smollm2-135m")
    assert list((tmp_path / "smollm2-135m").iterdir()) == []


def test_leftovers_of_killed_builds_are_removed(tmp_path, gguf_path, monkeypatch):
    """SIGKILL leaves a .tmp-* folder; the next build deletes those whose process is gone."""
    monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "smollm2-135m" / f".tmp-0123456789abcdef-{dead.pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")

    def build(gguf_file, out_dir):
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(weights_cache, "dequantize_gguf", build)
    result = ensure_dequantized(gguf_path, "smollm2-135m")
    assert not stale.exists()
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", MARKER]
