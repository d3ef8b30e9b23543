"""Files that are either whole or absent, and files read back with errors that name the fix.

Everything mechdemo writes that a later run reads (dataset shards and manifests, SAEs, transcoders,
tuned lenses, the figure manifest, offline sites) is written under a temporary name and renamed into
place when complete (:func:`write_json_atomic`, :func:`folder_written_atomically`): a run killed at
any moment leaves the old file or none, never half of one. Everything read back goes through
:func:`read_json`, so a truncated or hand-edited file gives one sentence naming the file and how to
rebuild it, not a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from mechdemo.errors import CorruptFileError, MechdemoError


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 16 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any, fsync: bool = True, ensure_ascii: bool = True,
                      newline: bool = False) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file renamed into place
    (``newline``: end the file with one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=ensure_ascii)
        if newline:
            f.write("\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, rebuild: str, fields: dict[str, type | tuple[type, ...]] | None = None) -> Any:
    """The JSON in ``path``; a :class:`CorruptFileError` naming the file and ``rebuild`` (how to make it
    again) if it cannot be read or parsed, or, with ``fields`` ({name: type}), if it is not an object
    with those fields of those types (valid JSON of the wrong shape: a hand edit, another program's
    file). Every file mechdemo reads back goes through here: manifests, configs, progress files,
    SAE configs, and the tuned lenses and transcoders to come (give their ``rebuild`` command)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing: {rebuild}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} cannot be read ({err}): {rebuild}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        what = "is empty" if not text.strip() else f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        raise CorruptFileError(f"{path} {what}: it was truncated or edited; {rebuild}") from None
    if fields is not None:
        if not isinstance(data, dict):
            raise CorruptFileError(f"{path} holds a JSON {type(data).__name__}, not the object mechdemo wrote: it was "
                                   f"edited or replaced; {rebuild}")
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool) and bool not in _types(kind):
                got = "is missing" if name not in data else f"is {_type_names(type(data[name]))}"
                raise CorruptFileError(f"{path}: {name!r} {got}, expected {_type_names(kind)}: the file was edited or "
                                       f"is not the one mechdemo wrote; {rebuild}")
    return data


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a whole number", float: "a number",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _types(kind))


def check_writable(out: Path) -> None:
    """``--out`` (or its nearest existing ancestor, where it would be created) is writable."""
    out = Path(out)
    parent = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MechdemoError(f"--out {out}: {parent} is not writable: choose a folder you can write to")


@contextlib.contextmanager
def folder_written_atomically(out: Path, tag: str) -> Iterator[Path]:
    """A sibling folder ``.<name>.<tag>-<pid>`` to write ``out``'s content into: renamed to ``out`` when
    the block ends without an error (an existing ``out`` replaced only then), removed otherwise. An
    interrupted write leaves the old folder, or none, never half of one; temporaries left by a killed
    run are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.{tag}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.{tag}-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
