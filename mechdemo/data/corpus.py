"""Text corpora for activation datasets: where documents come from, which are kept, how they are cut.

Sources (``iter_documents``):

* ``python-docs`` (the offline default): English documentation that every Python installation
  carries, so it needs no network and no download: the ``pydoc`` topic pages
  (``pydoc_data.topics``, the language reference as ``help()`` shows it) and every docstring of
  the standard library, read from the source files with ``ast`` (nothing is imported). Real,
  human-written technical English with code, about 10 MB; deterministic for a given Python
  version.
* a local ``.txt`` file (one document; one longer than the quality filter's limit is split into
  paragraphs, and a paragraph still too long into runs of whole sentences), a ``.jsonl`` file (one ``{"text": ...}`` per line), or a
  folder of them (read recursively in sorted order);
* a Hugging Face dataset name such as ``monology/pile-uncopyrighted`` (what the course used),
  streamed (needs the Hub).

``doc_id`` is a document's index in its source, before filtering, so it is stable whatever the
filter keeps. The quality filter is the course's: 20 < length < 30,000 characters, not all
upper-case, not a number. Documents are tokenised with special-token parsing off: a literal
``<|eot_id|>`` in a web page is text, not Llama 3's end of turn.

Chunking follows the course (``tokens + [EOS]`` cut into pieces of fixed length) with two
differences. Every piece starts with BOS, as SAELens does, not only the first: models write
outlier activations at the first position of a context, so a piece starting mid-document without
BOS would store a token the model never sees in normal use. And the last piece is kept,
right-padded (a causal model's earlier positions never see padding, and padded positions are
dropped with the other special tokens), so no document is lost for being short.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mechdemo.errors import MechdemoError

OFFLINE_CORPUS = "python-docs"
PILE = "monology/pile-uncopyrighted"


MAX_CHARS = 30_000  # the quality filter's longest document


def good(text: str) -> bool:
    """The course's quality filter."""
    t = text.strip()
    return 20 < len(t) < MAX_CHARS and t.upper() != t and not t.isnumeric()


def _python_docs() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield doc


LOCAL_SUFFIXES = (".txt", ".jsonl")


def _local_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise MechdemoError(f"--corpus {path} holds no .txt or .jsonl files")
    for file in files:
        if file.suffix not in LOCAL_SUFFIXES:
            raise MechdemoError(f"--corpus {file}: corpus files must be .txt or .jsonl")
        with open(file, "rb") as f:
            head = f.read(8192)
        if b"\0" in head:
            raise MechdemoError(f"--corpus {file} is a binary file, not text: give a .txt or .jsonl file of text")
    return files


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = file.read_bytes()[: err.start].count(b"\n") + 1
        raise MechdemoError(f"--corpus {file}:{line}: not UTF-8 text ({err.reason}): convert it, e.g. "
                            f"`iconv -f latin1 -t utf-8 {file} > fixed.txt`") from None


def _paragraphs(text: str) -> list[str]:
    """A .txt file is one document; one longer than the quality filter's limit is split into its
    paragraphs (blank-line separated), and a paragraph still too long into runs of whole sentences
    (:func:`split_long`), so that ordinary text is never dropped for its length."""
    if len(text.strip()) < MAX_CHARS:
        return [text]
    return [piece for p in re.split(r"\n\s*\n", text) if p.strip() for piece in split_long(p)]


def split_long(text: str, limit: int = MAX_CHARS - 1) -> list[str]:
    """``text`` in consecutive pieces of at most ``limit`` characters, cut after a sentence's end where
    possible, else at a space, else (one "word" longer than ``limit``) anywhere; nothing is lost but
    the whitespace at the cuts."""
    text = text.strip()
    pieces: list[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = max((m.end() for m in re.finditer(r"[.!?…][\"')\]]*\s", window)), default=0)
        if cut < limit // 4:  # no sentence end in the last three quarters: cut at a space
            cut = window.rfind(" ") + 1 or window.rfind("\n") + 1
        if cut < limit // 4:
            cut = limit
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    return pieces + ([text] if text else [])


def _local(path: Path) -> Iterator[str]:
    for file in _local_files(path):
        if file.suffix == ".txt":
            yield from _paragraphs(_read_text(file))
        else:
            for number, line in enumerate(_read_text(file).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise MechdemoError(f'--corpus {file}:{number}: expected a JSON object with a "text" field') from None
                if not isinstance(text, str):
                    raise MechdemoError(f'--corpus {file}:{number}: "text" must be a string, got {type(text).__name__}')
                yield text


def check_corpus(source: str) -> None:
    """Everything about ``--corpus`` that can be checked before any work: the offline corpus, an
    existing local file or folder of text, or a Hub dataset name (``owner/name``)."""
    if source == OFFLINE_CORPUS:
        return
    path = Path(source).expanduser()
    if path.exists():
        _local_files(path)
        return
    looks_local = source.startswith((".", "/", "~")) or path.suffix in LOCAL_SUFFIXES or source.count("/") != 1
    if looks_local:
        raise MechdemoError(f"--corpus {source}: no such file or folder. Use {OFFLINE_CORPUS!r} (offline), a local "
                            f".txt/.jsonl file or folder, or a Hugging Face dataset name such as {PILE!r}.")


def _hub(name: str) -> Iterator[str]:
    import datasets

    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as err:  # noqa: BLE001 - the datasets library raises many types here
        raise MechdemoError(
            f"Cannot stream the Hugging Face dataset {name!r} ({type(err).__name__}: {err}). It needs the "
            f"Hub; offline, use --corpus {OFFLINE_CORPUS} or a local .txt/.jsonl file or folder."
        ) from None
    for record in stream:
        yield record["text"]


def iter_documents(source: str = OFFLINE_CORPUS) -> Iterator[tuple[int, str]]:
    """``(doc_id, text)`` for every document of ``source`` that passes the quality filter."""
    if source == OFFLINE_CORPUS:
        texts = _python_docs()
    elif Path(source).exists():
        texts = _local(Path(source))
    elif "/" in source and not source.startswith((".", "/")):
        texts = _hub(source)
    else:
        raise MechdemoError(
            f"Unknown corpus {source!r}: use {OFFLINE_CORPUS!r} (offline), a local .txt/.jsonl file or folder, "
            f"or a Hugging Face dataset name such as {PILE!r}."
        )
    for doc_id, text in enumerate(texts):
        if good(text):
            yield doc_id, text.strip()


@dataclass(frozen=True)
class Chunk:
    """``seq_len`` token ids: BOS (if the model has one), then document tokens from position ``start``
    of document ``doc_id`` (EOS after the last), right-padded."""

    doc_id: int
    start: int  # document position of the first token after BOS
    ids: tuple[int, ...]
    offset: int  # 1 if ids[0] is BOS, else 0: ids[j] is document token start + j - offset


def chunk_document(
    doc_id: int, ids: list[int], seq_len: int, bos: int | None, eos: int | None, pad: int
) -> Iterator[Chunk]:
    """Cut ``ids + [EOS]`` into pieces of ``seq_len - 1`` tokens, each after a BOS (last one right-padded)."""
    seq = list(ids) + ([eos] if eos is not None else [])
    offset = 1 if bos is not None else 0
    step = seq_len - offset
    if step < 1:
        raise MechdemoError(f"seq_len must be at least {offset + 1}")
    for start in range(0, len(seq), step):
        piece = ([bos] if offset else []) + seq[start : start + step]
        yield Chunk(doc_id, start, tuple(piece + [pad] * (seq_len - len(piece))), offset)


def iter_chunks(model, source: str, seq_len: int, max_doc_tokens: int = 100_000) -> Iterator[Chunk]:
    """Every chunk of every kept document of ``source``, in a deterministic order."""
    tok = model.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if pad is None:
        raise MechdemoError(f"{model.cfg.model_name}'s tokenizer has no pad or EOS token to pad chunks with")
    for doc_id, text in iter_documents(source):
        # special-token parsing off: a literal "<|eot_id|>" in a document is text, not Llama 3's end of turn
        ids = tok(text, add_special_tokens=False, split_special_tokens=True, truncation=True,
                  max_length=max_doc_tokens).input_ids
        yield from chunk_document(doc_id, ids, seq_len, bos, eos, pad)


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
