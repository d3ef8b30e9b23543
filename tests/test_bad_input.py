"""Bad input never costs work (#20): every mistake a user can fix stops the command before any work,
with exit status 2, a message naming the flag or file and the fix, no traceback, and whatever was
already in the output location byte-identical afterwards.

The commands run in-process through ``mechdemo.cli.main`` (what the console script calls): the
checks come before any model load, so a case takes milliseconds. A tiny activation dataset, built
once with the session's model, stands in for a real one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mechdemo.cli import main

TEXT = ("Interpretability asks how a network computes what it computes. " * 3 + "\n\n") * 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    """A real activation dataset of a few hundred tokens in three shards."""
    from mechdemo.data import ExtractConfig, extract
    from mechdemo.models import DEFAULT_MODEL

    root = tmp_path_factory.mktemp("bad-input")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = root / "acts"
    extract(ExtractConfig(model=DEFAULT_MODEL, layer=1, corpus=str(corpus), seq_len=32, batch_size=2, shard_size=100,
                          max_tokens=300), out, model=model, progress=False)
    return out


def tree_hash(path: Path) -> str:
    """Names and bytes of everything under ``path`` (or of the file itself)."""
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    for p in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
        h.update(str(p.relative_to(path.parent)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def make(root: Path, spec: str) -> Path:
    """Build a fixture path from a short spec: 'file:name', 'dir:name', 'sae:name', 'foreign:name',
    'binary:name.txt', 'latin1:name.txt', 'longdoc:name.txt'."""
    kind, name = spec.split(":", 1)
    p = root / name
    if kind == "file":
        p.write_text("not a folder")
    elif kind == "dir":
        p.mkdir()
    elif kind == "sae":
        p.mkdir()
        (p / "cfg.json").write_text("{}")
        (p / "sae_weights.safetensors").write_bytes(b"\0" * 64)
    elif kind == "foreign":
        p.mkdir()
        (p / "manifest.json").write_text('{"someone": "else"}')
        (p / "notes.md").write_text("keep me")
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 40)
    elif kind == "prompts":
        p.write_text('{"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", '
                     '"incorrect": " John"}\n')
    elif kind == "latin1":
        p.write_bytes(("Caf\xe9 et cr\xe8me, " * 10 + "\n").encode("latin-1"))
    return p


# (id, argv with {data}/{tmp} placeholders, paths to create, the output whose bytes must survive,
#  words the message must contain)
CASES = [
    # numbers out of range, by flag: argparse stops before anything runs
    ("extract-batch-size-0", "extract --layer 1 --out {tmp}/o --batch-size 0", [], None, ["--batch-size", "at least 1"]),
    ("extract-shard-size-0", "extract --layer 1 --out {tmp}/o --shard-size 0", [], None, ["--shard-size", "at least 1"]),
    ("extract-max-tokens-0", "extract --layer 1 --out {tmp}/o --max-tokens 0", [], None, ["--max-tokens", "at least 1"]),
    ("extract-max-tokens-negative", "extract --layer 1 --out {tmp}/o --max-tokens -5", [], None, ["--max-tokens"]),
    ("extract-seq-len-0", "extract --layer 1 --out {tmp}/o --seq-len 0", [], None, ["--seq-len", "at least 2"]),
    ("extract-seq-len-1", "extract --layer 1 --out {tmp}/o --seq-len 1", [], None, ["--seq-len", "BOS"]),
    ("extract-layer-negative", "extract --layer -1 --out {tmp}/o", [], None, ["--layer", "at least 0"]),
    ("extract-layer-not-a-number", "extract --layer eight --out {tmp}/o", [], None, ["--layer", "whole number"]),
    ("extract-layer-beyond-the-model", "extract --layer 30 --out {tmp}/o", [], "{tmp}/o",
     ["layer 30", "layers 0 to 29"]),
    ("extract-layers-beyond-the-model", "extract --site resid_post --layers 28-31 --out {tmp}/o", [], "{tmp}/o",
     ["layer 30", "layers 0 to 29"]),
    ("extract-unknown-site", "extract --site mlp_output --layers 3 --out {tmp}/o", [], "{tmp}/o",
     ["mlp_output", "mlp_out"]),
    ("extract-site-without-layers", "extract --site resid_post --out {tmp}/o", [], "{tmp}/o", ["--layers"]),
    ("extract-layers-going-down", "extract --site resid_post --layers 5-2 --out {tmp}/o", [], None, ["--layers", "2-5"]),
    ("extract-layers-not-numbers", "extract --site resid_post --layers a-b --out {tmp}/o", [], None, ["--layers", "0-29"]),
    ("extract-layer-and-layers", "extract --layer 3 --layers 4 --out {tmp}/o", [], "{tmp}/o", ["--layer", "--layers"]),
    ("generate-max-new-tokens-negative", "generate --prompt hi --max-new-tokens -1", [], None, ["--max-new-tokens"]),
    ("generate-num-beams-0", "generate --prompt hi --strategy beam --num-beams 0", [], None, ["--num-beams"]),
    ("generate-temperature-0", "generate --prompt hi --temperature 0", [], None, ["--temperature", "more than 0"]),
    ("generate-top-p-above-1", "generate --prompt hi --strategy top-p --p 1.5", [], None, ["--p", "at most 1"]),
    ("generate-top-k-0", "generate --prompt hi --strategy top-k --k 0", [], None, ["--k", "at least 1"]),
    ("generate-seed-negative", "generate --prompt hi --seed -1", [], None, ["--seed", "at least 0"]),
    ("ioi-n-0", "ioi --n 0", [], None, ["--n", "at least 1"]),
    ("ioi-template-negative", "ioi --template -1", [], None, ["--template"]),
    ("heads-batch-0", "heads --batch 0", [], None, ["--batch", "at least 1"]),
    ("heads-seq-len-1", "heads --seq-len 1", [], None, ["--seq-len", "at least 2"]),
    ("heads-top-0", "heads --top 0", [], None, ["--top"]),
    ("sae-lr-negative", "sae train --data {data} --out {tmp}/s --lr -1", [], None, ["--lr", "more than 0"]),
    ("sae-lr-not-a-number", "sae train --data {data} --out {tmp}/s --lr fast", [], None, ["--lr", "a number"]),
    ("sae-batch-size-0", "sae train --data {data} --out {tmp}/s --batch-size 0", [], None, ["--batch-size"]),
    ("sae-tokens-0", "sae train --data {data} --out {tmp}/s --tokens 0", [], None, ["--tokens"]),
    ("sae-expansion-0", "sae train --data {data} --out {tmp}/s --expansion 0", [], None, ["--expansion"]),
    ("sae-k-0", "sae train --data {data} --out {tmp}/s --architecture topk --k 0", [], None, ["--k"]),
    ("sae-l1-negative", "sae train --data {data} --out {tmp}/s --l1 -0.5", [], None, ["--l1", "at least 0"]),
    ("sae-eval-sequences-0", "sae eval --data {data} --sae {tmp}/s --eval-sequences 0", [], None,
     ["--eval-sequences"]),
    ("device-gpu", "heads --device gpu", [], None, ["--device", "not a device", "cpu"]),
    ("device-cuda-without-gpu", "generate --prompt hi --device cuda", [], None, ["--device", "no CUDA", "cpu"]),
    ("figures-device-bogus", "figures --only dla --device tpu", [], None, ["--device"]),
    # inputs and output locations, checked before a model loads or a byte is written
    ("extract-corpus-missing-file", "extract --layer 1 --corpus {tmp}/missing.txt --out {tmp}/o", [], "{tmp}/o",
     ["--corpus", "no such file"]),
    ("extract-corpus-relative-missing", "extract --layer 1 --corpus ./no/such/folder --out {tmp}/o", [], "{tmp}/o",
     ["--corpus", "no such file"]),
    ("extract-corpus-empty-folder", "extract --layer 1 --corpus {tmp}/empty --out {tmp}/o", ["dir:empty"], "{tmp}/o",
     ["--corpus", "no .txt or .jsonl"]),
    ("extract-corpus-binary", "extract --layer 1 --corpus {tmp}/blob.txt --out {tmp}/o", ["binary:blob.txt"],
     "{tmp}/o", ["--corpus", "binary"]),
    ("extract-corpus-wrong-suffix", "extract --layer 1 --corpus {tmp}/notes.md --out {tmp}/o", ["file:notes.md"],
     "{tmp}/o", ["--corpus", ".txt or .jsonl"]),
    ("extract-out-is-a-file", "extract --layer 1 --out {tmp}/taken", ["file:taken"], "{tmp}/taken",
     ["--out", "is a file"]),
    ("extract-out-foreign-folder", "extract --layer 1 --out {tmp}/theirs", ["foreign:theirs"], "{tmp}/theirs",
     ["--out", "something other than a mechdemo dataset"]),
    ("extract-out-other-arguments", "extract --layer 2 --corpus {tmp}/c.txt --out {data}", [], "{data}",
     ["other arguments", "same arguments"]),
    ("sae-data-not-a-dataset", "sae train --data {tmp}/empty --out {tmp}/s", ["dir:empty"], "{tmp}/s",
     ["--data", "not an activation dataset", "mechdemo extract"]),
    ("sae-data-is-an-sae", "sae train --data {tmp}/an-sae --out {tmp}/s", ["sae:an-sae"], "{tmp}/an-sae",
     ["--data", "holds an SAE", "--sae"]),
    ("sae-train-without-out", "sae train --data {data}", [], None, ["--out", "required"]),
    ("sae-out-existing-sae", "sae train --data {data} --out {tmp}/old", ["sae:old"], "{tmp}/old",
     ["--out", "already holds an SAE", "--overwrite"]),
    ("sae-out-is-a-file", "sae train --data {data} --out {tmp}/taken", ["file:taken"], "{tmp}/taken",
     ["--out", "is a file"]),
    ("sae-out-foreign-folder", "sae train --data {data} --out {tmp}/theirs", ["foreign:theirs"], "{tmp}/theirs",
     ["--out", "something other than an SAE"]),
    ("sae-out-inside-dataset", "sae train --data {data} --out {data}/sae", [], "{data}", ["--out", "inside the dataset"]),
    ("sae-eval-without-sae", "sae eval --data {data}", [], None, ["--sae", "required"]),
    ("sae-eval-with-training-flags", "sae eval --data {data} --sae {tmp}/s --k 8", [], None, ["unrecognized", "--k"]),
    ("sae-browse-with-training-flags", "sae browse --data {data} --sae {tmp}/s --out {tmp}/b --architecture relu", [],
     None, ["unrecognized", "--architecture"]),
    ("sae-eval-sae-is-a-dataset", "sae eval --data {data} --sae {data}", [], "{data}", ["--sae", "not a saved SAE"]),
    ("sae-batch-larger-than-dataset", "sae train --data {data} --out {tmp}/s --batch-size 4096 --tokens 8192",
     [], "{tmp}/s", ["fewer than one batch", "--batch-size"]),
    ("unknown-model", "anatomy --model gpt-5", [], None, ["Unknown model", "Choose one of"]),
    # prompt files and circuit discovery, checked before the model loads
    ("ioi-prompts-missing", "ioi --prompts {tmp}/none.jsonl", [], None, ["--prompts", "no such file"]),
    ("ioi-prompts-not-json", "ioi --prompts {tmp}/notes.md", ["file:notes.md"], None, ["notes.md:1", "not valid JSON"]),
    ("ioi-prompts-binary", "ioi --prompts {tmp}/blob.txt", ["binary:blob.txt"], None, ["blob.txt", "not UTF-8"]),
    ("ioi-prompts-with-circuit", "ioi --prompts {tmp}/p.jsonl --circuit", ["prompts:p.jsonl"], None,
     ["--circuit", "mechdemo circuit --prompts"]),
    ("circuit-faithfulness-above-1", "circuit --faithfulness 1.5", [], None, ["--faithfulness", "at most 1"]),
    ("circuit-edges-0", "circuit --edges 0", [], None, ["--edges", "at least 1"]),
    ("circuit-edges-and-faithfulness", "circuit --edges 10 --faithfulness 0.8", [], None, ["not allowed with"]),
    ("circuit-unknown-method", "circuit --method acdc", [], None, ["--method", "eap-ig"]),
    ("circuit-prompts-missing", "circuit --prompts {tmp}/none.jsonl", [], None, ["--prompts", "no such file"]),
    # the upload comes last, after the whole extraction: whether it can work is checked first
    ("extract-push-to-hub-bad-repo-id", "extract --layer 1 --out {tmp}/o --push-to-hub a/b/c", [], "{tmp}/o",
     ["--push-to-hub", "not a Hub repo id", "USER/NAME"]),
    ("extract-push-to-hub-without-login", "extract --layer 1 --out {tmp}/o --push-to-hub me/acts", [], "{tmp}/o",
     ["--push-to-hub", "hf auth login", "HF_TOKEN"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_fixable_mistake_stops_before_any_work(case, dataset, tmp_path, capsys, monkeypatch):
    name, argv, create, keep, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)  # no Hugging Face login here
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    for spec in create:
        make(tmp_path, spec)
    fill = {"data": str(dataset), "tmp": str(tmp_path)}
    kept = Path(keep.format(**fill)) if keep else None
    before = tree_hash(kept) if kept else None
    try:
        code = main(argv.format(**fill).split())
    except SystemExit as exit_:  # argparse: a bad flag value
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (name, code, err[-2000:])
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, f"{name}: {word!r} not in the message: {err}"
    if kept:
        assert tree_hash(kept) == before, f"{name}: {kept} changed"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir()), "extract wrote into --out"


def test_an_unwritable_output_is_found_before_training(dataset, tmp_path, capsys, monkeypatch):
    """(Running as root, permissions do not stop a write: the check's os.access is made to say no.)"""
    real = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    for argv in (["sae", "train", "--data", str(dataset), "--out", str(locked / "sae")],
                 ["extract", "--layer", "1", "--out", str(locked / "acts")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and "Traceback" not in err
    assert not any(locked.iterdir())


def test_a_long_single_document_txt_is_split_into_paragraphs_not_dropped(tmp_path):
    from mechdemo.data.corpus import MAX_CHARS, iter_documents

    corpus = tmp_path / "book.txt"
    paragraph = "A sentence about attention heads and what they move. " * 20
    corpus.write_text("\n\n".join([paragraph] * (MAX_CHARS // len(paragraph) + 5)), encoding="utf-8")
    assert len(corpus.read_text()) > MAX_CHARS
    docs = list(iter_documents(str(corpus)))
    assert len(docs) > 1 and all(text == paragraph.strip() for _, text in docs)


def test_non_utf8_and_non_string_text_name_the_file_and_line(tmp_path):
    from mechdemo.data.corpus import iter_documents
    from mechdemo.errors import MechdemoError

    latin = make(tmp_path, "latin1:old.txt")
    with pytest.raises(MechdemoError, match=r"old\.txt:1: not UTF-8.*iconv"):
        list(iter_documents(str(latin)))
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text('{"text": "a fine first line of text here"}\n{"text": 42}\n', encoding="utf-8")
    with pytest.raises(MechdemoError, match=r'records\.jsonl:2: "text" must be a string'):
        list(iter_documents(str(jsonl)))


def test_a_corpus_the_filter_empties_is_an_error_and_leaves_no_folder(model, tmp_path):
    from mechdemo.data import ExtractConfig, extract
    from mechdemo.errors import MechdemoError
    from mechdemo.models import DEFAULT_MODEL

    corpus = tmp_path / "shouting.txt"
    corpus.write_text("ALL CAPITALS, EVERY WORD OF IT, NOTHING ELSE.\n", encoding="utf-8")
    out = tmp_path / "acts"
    with pytest.raises(MechdemoError, match="no tokens to store.*quality filter"):
        extract(ExtractConfig(model=DEFAULT_MODEL, layer=1, corpus=str(corpus)), out, model=model, progress=False)
    assert not out.exists()  # so the corrected command starts clean


def test_sae_overwrite_replaces_an_sae_and_a_failed_save_keeps_the_old_one(dataset, tmp_path, monkeypatch):
    from mechdemo.data import ActivationDataset
    from mechdemo.errors import MechdemoError
    from mechdemo.sae import SAETrainConfig, load_sae, save_sae, train_sae

    cfg = SAETrainConfig(architecture="topk", expansion=1, k=4, training_tokens=64, batch_size=32)
    sae = train_sae(ActivationDataset(dataset), cfg, progress=False)
    out = save_sae(sae, tmp_path / "sae", cfg)
    before = tree_hash(out)
    with pytest.raises(MechdemoError, match="--overwrite"):
        save_sae(sae, out, cfg)
    assert tree_hash(out) == before

    def broken(self, path):  # the disk fills up half-way through the new SAE
        (Path(path) / "cfg.json").write_text("{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(sae), "save_inference_model", broken)
    with pytest.raises(OSError):
        save_sae(sae, out, cfg, overwrite=True)
    assert tree_hash(out) == before  # the old SAE, intact
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no half-written sibling left
    monkeypatch.undo()
    save_sae(sae, out, cfg, overwrite=True)
    assert load_sae(out).cfg.d_sae == sae.cfg.d_sae


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "delete"])
def test_training_never_uses_a_damaged_shard(damage, dataset, tmp_path, capsys):
    """`sae train` checks each shard against the manifest as it reads it (size, sha256) and stops
    naming the shard and the command that rebuilds it; nothing is saved."""
    import json
    import shutil

    copy = tmp_path / "acts"
    shutil.copytree(dataset, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    if damage == "flip-a-byte":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        shard.unlink()
    code = main(["sae", "train", "--data", str(copy), "--out", str(tmp_path / "sae"), "--batch-size", "32",
                 "--tokens", "64", "--no-model"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert shard.name in err and "mechdemo extract" in err and "rebuilds only" in err, err
    assert not (tmp_path / "sae").exists()


def test_an_sae_that_would_not_fit_on_the_disk_is_refused_before_training(dataset, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 2**19, 2**19))
    old = make(tmp_path, "sae:old")
    before = tree_hash(old)
    code = main(["sae", "train", "--data", str(dataset), "--out", str(old), "--overwrite", "--no-model"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "MiB are free" in err and "--out" in err, err
    assert tree_hash(old) == before


def _can_mount_tmpfs(where: Path) -> bool:
    import subprocess

    where.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if ok.returncode == 0:
        subprocess.run(["umount", str(where)], check=True)
    return ok.returncode == 0


@pytest.mark.parametrize("disk", ["tmpfs", "mocked"])
def test_a_full_disk_stops_extract_cleanly_and_the_rerun_finishes_it(disk, dataset, model, tmp_path, capsys,
                                                                    monkeypatch):
    """The disk fills up after the first shard: exit 2, no traceback, the message says to free space
    and rerun; the completed shard is kept, and the rerun (with room) gives the dataset an
    uninterrupted run gives, byte for byte. ``tmpfs``: a real 200 KiB file system (needs root and
    the right to mount; skipped otherwise); ``mocked``: the Arrow writer raises ENOSPC."""
    import errno
    import json
    import subprocess

    import pyarrow as pa

    from mechdemo import models

    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    disk_root = tmp_path / "disk"
    if disk == "tmpfs":
        if not _can_mount_tmpfs(disk_root):
            pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the mocked case covers it")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk_root)], check=True)
    else:
        disk_root.mkdir()
        real_new_file, calls = pa.ipc.new_file, []

        def new_file(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the second shard
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_new_file(*args, **kwargs)

        monkeypatch.setattr(pa.ipc, "new_file", new_file)
    out = disk_root / "acts"
    argv = ["extract", "--layer", "1", "--corpus", str(corpus), "--out", str(out), "--seq-len", "32",
            "--batch-size", "2", "--shard-size", "100", "--max-tokens", "300", "--json"]
    try:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert "no space left" in err and "rerun the same command to resume" in err, err
        assert not (out / "manifest.json").exists()
        kept = json.loads((out / "progress-r000.json").read_text())["shards"]
        assert len(kept) == 1  # the first shard survived
        if disk == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk_root)], check=True)
        else:
            monkeypatch.setattr(pa.ipc, "new_file", real_new_file)
        assert main(argv) == 0, capsys.readouterr().err
        reference = json.loads((dataset / "manifest.json").read_text())["shards"]
        rebuilt = json.loads((out / "manifest.json").read_text())["shards"]
        assert [(r["file"], r["sha256"]) for r in rebuilt] == [(r["file"], r["sha256"]) for r in reference]
        assert not list(out.glob(".*.tmp"))
    finally:
        if disk == "tmpfs":
            subprocess.run(["umount", str(disk_root)], check=False)


def _sae_command(data: Path, out: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "mechdemo", "sae", "train", "--data", str(data), "--out", str(out),
            "--architecture", "topk", "--expansion", "2", "--k", "8", "--batch-size", "32", "--tokens", "16000",
            "--no-model"]


@pytest.mark.full  # about seven `sae train` processes; fault tests run in `make check`
def test_sae_train_killed_or_interrupted_anywhere_then_rerun_equals_uninterrupted(dataset, tmp_path):
    """SIGKILL and SIGINT at seeded random moments of `sae train` (imports, training, the save):
    the output is either absent or the complete SAE, never half of one; SIGINT exits 130 with a
    message saying nothing was saved and to rerun; the rerun gives the uninterrupted run's SAE,
    byte for byte (training is deterministic), and leaves no temporary folder behind."""
    import random
    import signal
    import subprocess
    import time

    def run(out: Path) -> float:
        start = time.monotonic()
        done = subprocess.run(_sae_command(dataset, out), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return time.monotonic() - start

    (tmp_path / "reference").mkdir()
    whole = run(tmp_path / "reference" / "sae")
    expected = tree_hash(tmp_path / "reference" / "sae")
    rng = random.Random(0)
    for i, sig in enumerate([signal.SIGKILL, signal.SIGKILL, signal.SIGINT]):
        parent = tmp_path / f"run{i}"
        parent.mkdir()
        out = parent / "sae"
        # SIGINT once the command is running (Python's own start-up is not ours to word)
        delay = rng.uniform(0.1 if sig == signal.SIGKILL else 1.0, whole * 0.98)
        process = subprocess.Popen(_sae_command(dataset, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        time.sleep(delay)
        process.send_signal(sig)
        _, err = process.communicate(timeout=600)
        if process.returncode == 0:  # it finished first: that is the uninterrupted run
            assert tree_hash(out) == expected
            continue
        if sig == signal.SIGINT:
            assert process.returncode == 130, err[-2000:]
            assert "interrupted" in err and "nothing was saved" in err and "rerun the same command" in err, err
            assert "Traceback" not in err, err
        else:
            assert process.returncode == -signal.SIGKILL
        assert tree_hash(out) in ("absent", expected), f"{sig!r} after {delay:.1f}s left a partial SAE"
        if not out.exists():  # (killed after the final rename, the SAE is complete: nothing to redo)
            run(out)
            assert tree_hash(out) == expected, f"the rerun after {sig!r} at {delay:.1f}s differs"
            assert [p.name for p in parent.iterdir()] == ["sae"], "a temporary folder was left behind"
