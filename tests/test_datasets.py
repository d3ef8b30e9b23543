"""Activation datasets: exact storage, metadata that matches the text, crash safety, several processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mechdemo.activations import mlp_outputs
from mechdemo.data.corpus import chunk_document, iter_documents
from mechdemo.data import ActivationDataset, ExtractConfig, extract, from_uint16, to_uint16
from mechdemo.errors import CorruptFileError, MechdemoError, OutOfRangeError

LAYER = 4
# small enough to run in seconds, large enough for many shards
ARGS = {"layer": LAYER, "seq_len": 64, "batch_size": 4, "shard_size": 300}
# a transcoder's pairs and a probe's residual streams, from one forward pass
MULTI_SITES = ("blocks.2.mlp.hook_in", "blocks.4.mlp.hook_in", "blocks.2.hook_mlp_out", "blocks.4.hook_mlp_out",
               "blocks.2.hook_resid_post", "blocks.4.hook_resid_post")  # the order MULTI_CLI gives
MULTI_CLI = ["--site", "mlp_in", "--site", "mlp_out", "--site", "resid_post", "--layers", "2,4"]
FIXTURE = Path(__file__).parent / "fixtures" / "dataset-format1"  # written by mechdemo before datasets had sites


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A local .jsonl corpus: 30 real documents of the offline corpus (plus two the filter must drop)."""
    docs = []
    for _, text in iter_documents("python-docs"):
        if 300 < len(text) < 1500:
            docs.append(text)
        if len(docs) == 30:
            break
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    lines = [json.dumps({"text": t}) for t in docs[:10]] + [json.dumps({"text": "12345678901234567890123"}),
                                                             json.dumps({"text": "SHOUTING IN ALL CAPITALS HERE"})]
    lines += [json.dumps({"text": t}) for t in docs[10:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(corpus: Path, **overrides) -> ExtractConfig:
    return ExtractConfig(model="smollm2-135m", corpus=str(corpus), **{**ARGS, **overrides})


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory) -> Path:
    """The dataset built in one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    extract(_config(corpus), out, model=model, progress=False)
    return out


def _cli_args(corpus: Path, out: Path) -> list[str]:
    return ["extract", "--model", "smollm2-135m", "--layer", str(LAYER), "--corpus", str(corpus), "--out", str(out),
            "--seq-len", str(ARGS["seq_len"]), "--batch-size", str(ARGS["batch_size"]),
            "--shard-size", str(ARGS["shard_size"])]


def _rows(path: Path, site: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a dataset sorted by (doc_id, tok_pos): metadata [n, 3] and activation bits [n, d] (at ``site``)."""
    data = ActivationDataset(path, verify=True)
    meta = np.stack([data.column("doc_id"), data.column("tok_pos"), data.column("token_id")], axis=1)
    bits = np.concatenate([data.shard_bits(i, site) for i in range(len(data.shards))])
    order = np.lexsort((meta[:, 1], meta[:, 0]))
    return meta[order], bits[order]


def _shard_hashes(path: Path) -> dict[str, str]:
    return {s["file"]: s["sha256"] for s in ActivationDataset(path).shards}


# --- storage ----------------------------------------------------------------------------------


def test_uint16_bf16_round_trip_is_bit_exact():
    every_pattern = np.arange(2**16, dtype=np.uint16)  # all bf16 values, NaNs and infinities included
    as_bf16 = from_uint16(every_pattern)
    assert as_bf16.dtype == torch.bfloat16
    np.testing.assert_array_equal(to_uint16(as_bf16), every_pattern)
    x = torch.randn(1000, 7) * 100
    np.testing.assert_array_equal(from_uint16(to_uint16(x)).view(torch.int16).numpy(),
                                  x.to(torch.bfloat16).view(torch.int16).numpy())


def test_chunking_keeps_every_token_once():
    ids = list(range(100, 250))
    chunks = list(chunk_document(7, ids, seq_len=64, bos=0, eos=2, pad=2))
    stored = []
    for c in chunks:
        assert len(c.ids) == 64 and c.ids[0] == 0
        stored += [t for t in c.ids[1:] if t != 2]
    assert stored == ids


# --- the dataset matches the text and the model -----------------------------------------------


def test_metadata_matches_retokenisation(model, corpus, reference):
    data = ActivationDataset(reference, verify=True)
    docs = dict(iter_documents(str(corpus)))
    assert len(docs) == 30  # the filter dropped the number and the all-caps line
    doc_ids, positions, token_ids = data.column("doc_id"), data.column("tok_pos"), data.column("token_id")
    tokenized = {d: model.tokenizer(t, add_special_tokens=False).input_ids for d, t in docs.items()}
    assert set(doc_ids.tolist()) == set(docs)
    for doc_id, ids in tokenized.items():
        mine = doc_ids == doc_id
        # every token of the document is stored exactly once (BOS/EOS/padding are not)
        assert sorted(positions[mine].tolist()) == list(range(len(ids)))
        np.testing.assert_array_equal(token_ids[mine], np.array(ids)[positions[mine]])
    assert len(data) == sum(len(ids) for ids in tokenized.values())
    assert data.norm_stats["tokens"] == len(data)


def test_activations_match_a_direct_forward_pass(model, corpus, reference):
    """Rows of the first chunk of a document equal the MLP output on [BOS] + its first tokens, in bf16."""
    meta, bits = _rows(reference)
    docs = dict(iter_documents(str(corpus)))
    doc_id = sorted(docs)[3]
    ids = model.tokenizer(docs[doc_id], add_special_tokens=False).input_ids[: ARGS["seq_len"] - 1]
    direct = mlp_outputs(model, torch.tensor([[model.tokenizer.bos_token_id] + ids]), [LAYER])[LAYER][0, 1:]
    rows = (meta[:, 0] == doc_id) & (meta[:, 1] < len(ids))
    stored = from_uint16(bits[rows]).float()
    torch.testing.assert_close(stored, direct.to(torch.bfloat16).float(), rtol=0.02, atol=0.02)
    # the bulk must be bit-identical after bf16 rounding (batching may move the last fp32 bit of a few)
    assert (to_uint16(direct) == bits[rows]).mean() > 0.97


def test_norm_stats_are_the_rms_of_the_stored_values(reference):
    data = ActivationDataset(reference)
    x = data.activations(torch.float64)
    rms = x.pow(2).sum(1).mean().sqrt().item()
    stats = json.loads((reference / "norm_stats.json").read_text())[f"blocks.{LAYER}.hook_mlp_out"]
    assert stats["rms"] == pytest.approx(rms, rel=1e-9)
    assert stats["rms_per_element"] == pytest.approx(rms / x.shape[1] ** 0.5, rel=1e-9)
    assert (stats["site"], stats["model"], stats["dtype"], stats["tokens"]) == (
        f"blocks.{LAYER}.hook_mlp_out", "smollm2-135m", "bfloat16", len(x))
    assert data.norm_stats == stats


def test_reader_batches_cover_every_row_once_shuffled_and_normalised(reference):
    data = ActivationDataset(reference)
    every = data.activations(torch.float32)
    batches = list(data.batches(batch_size=256, shuffle=True, seed=1, buffer_shards=3))
    assert all(len(b) == 256 for b in batches[:-1])
    got = torch.cat(batches)
    assert got.shape == every.shape
    assert not torch.equal(got, every)  # shuffled
    key = lambda t: t[torch.from_numpy(np.lexsort(t.T.numpy()[::-1].copy()))]  # noqa: E731 - sort rows
    torch.testing.assert_close(key(got), key(every), rtol=0, atol=0)
    unit = torch.cat(list(data.batches(batch_size=1000, shuffle=False, normalize=True, dtype=torch.float64)))
    assert unit.pow(2).mean().item() == pytest.approx(1.0, rel=1e-6)


def test_info_cli(reference):
    out = subprocess.run([sys.executable, "-m", "mechdemo", "dataset", "info", str(reference), "--verify", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["tokens"] == len(ActivationDataset(reference)) and info["layer"] == LAYER
    assert info["sites"] == [f"blocks.{LAYER}.hook_mlp_out"]
    assert info["d_model"] == 576 and info["shards"] > 5


# --- several sites, and datasets of the first format ------------------------------------------


@pytest.fixture(scope="module")
def multi(model, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi")
    extract(_config(corpus, layer=None, sites=MULTI_SITES, max_tokens=900), out, model=model, progress=False)
    return out


def test_several_sites_come_from_one_forward_pass_and_equal_the_models(model, corpus, multi, reference):
    """Every site's column equals the model's activation there (TransformerLens's own cache, in bf16), the
    rows are the single-site dataset's, and the MLP output column is bit-identical to it."""
    data = ActivationDataset(multi, verify=True)
    assert data.sites == list(MULTI_SITES) and data.manifest["config"]["layer"] is None
    meta, _ = _rows(multi, MULTI_SITES[0])
    ref_meta, ref_bits = _rows(reference, f"blocks.{LAYER}.hook_mlp_out")
    np.testing.assert_array_equal(meta, ref_meta[: len(meta)])
    np.testing.assert_array_equal(_rows(multi, f"blocks.{LAYER}.hook_mlp_out")[1], ref_bits[: len(meta)])
    docs = dict(iter_documents(str(corpus)))
    doc_id = sorted(docs)[0]
    ids = model.tokenizer(docs[doc_id], add_special_tokens=False).input_ids[: ARGS["seq_len"] - 1]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([[model.tokenizer.bos_token_id] + ids]), names_filter=list(MULTI_SITES))
    rows = (meta[:, 0] == doc_id) & (meta[:, 1] < len(ids))
    for site in MULTI_SITES:
        stored = from_uint16(_rows(multi, site)[1][rows]).float()
        torch.testing.assert_close(stored, cache[site][0, 1:].to(torch.bfloat16).float(), rtol=0.02, atol=0.02)
        assert data.norm_stats_of(site)["rms"] == pytest.approx(data.activations(torch.float64, site).pow(2).sum(1)
                                                                .mean().sqrt().item(), rel=1e-9)
    with pytest.raises(MechdemoError, match="holds 6 sites.*select"):
        data.site  # noqa: B018
    assert data.select("blocks.4.mlp.hook_in").layer == 4


def test_paired_batches_hold_the_same_tokens(multi):
    """Batches of two sites (a transcoder's input and output) are shuffled together, row for row."""
    data = ActivationDataset(multi)
    pair = ("blocks.2.mlp.hook_in", "blocks.2.hook_mlp_out")
    pairs = list(data.batches(batch_size=100, seed=3, site=pair))
    x_in = torch.cat([a for a, _ in pairs])
    x_out = torch.cat([b for _, b in pairs])
    every_in, every_out = data.activations(site=pair[0]), data.activations(site=pair[1])
    index = {tuple(r.tolist()): i for i, r in enumerate(every_in)}
    order = torch.tensor([index[tuple(r.tolist())] for r in x_in])
    assert not torch.equal(order, torch.arange(len(order)))  # shuffled
    torch.testing.assert_close(x_out, every_out[order], rtol=0, atol=0)


def test_a_dataset_of_the_first_format_still_opens_and_verifies():
    """tests/fixtures/dataset-format1 was written by mechdemo before sites existed (one "act" column)."""
    import pyarrow as pa

    data = ActivationDataset(FIXTURE, verify=True)
    assert data.format == 1 and data.sites == ["blocks.1.hook_mlp_out"] and data.layer == 1
    direct = np.concatenate([pa.ipc.open_file(pa.memory_map(str(FIXTURE / s["file"]))).read_all().column("act")
                             .combine_chunks().values.to_numpy().reshape(-1, data.d_model) for s in data.shards])
    np.testing.assert_array_equal(np.concatenate([data.shard_bits(i) for i in range(len(data.shards))]), direct)
    assert data.norm_stats["rms"] == pytest.approx(data.activations(torch.float64).pow(2).sum(1).mean().sqrt().item(), rel=1e-6)
    assert len(torch.cat(list(data.batches(batch_size=16)))) == len(data) == 90
    assert "--layer 1" in data.config_args()


# --- crash safety -----------------------------------------------------------------------------


def _shards_done(out: Path) -> int:
    try:
        return len(json.loads((out / "progress-r000.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.full  # three builder processes (each loads the model); fault tests run in `make check`
@pytest.mark.parametrize("sites", ["mlp_out", "several"])
def test_killed_twice_then_resumed_equals_uninterrupted(model, corpus, reference, tmp_path, sites):
    """SIGKILL the builder twice mid-run; the third run finishes, and the dataset is byte-identical
    (one site, and several sites of two layers stored from the same forward pass)."""
    out = tmp_path / "killed"
    args = _cli_args(corpus, out)
    if sites != "mlp_out":
        at = args.index("--layer")
        args = args[:at] + args[at + 2 :] + MULTI_CLI
    command = [sys.executable, "-m", "mechdemo", *args, "--json"]
    if sites != "mlp_out":
        reference = tmp_path / "multi-reference"
        extract(_config(corpus, layer=None, sites=MULTI_SITES), reference, model=model, progress=False)
    n_shards = len(ActivationDataset(reference).shards)
    for kill_after in (2, n_shards // 2 + 1):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while _shards_done(out) < kill_after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "the builder finished before it could be killed"
        assert not (out / "manifest.json").exists()
        assert 0 < _shards_done(out) < n_shards
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads(finished.stdout)["tokens"] == len(ActivationDataset(reference))
    assert _shard_hashes(out) == _shard_hashes(reference)
    for site in ActivationDataset(reference).sites:
        for a, b in zip(_rows(out, site), _rows(reference, site)):
            np.testing.assert_array_equal(a, b)
    assert not list(out.glob(".*.tmp"))


def test_corrupt_or_truncated_shard_is_detected_and_rebuilt_alone(model, corpus, reference, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    shards = sorted(out.glob("shard-*.arrow"))
    truncated, flipped = shards[1], shards[3]
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    data = flipped.read_bytes()
    middle = len(data) // 2
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])

    with pytest.raises(CorruptFileError, match=truncated.name) as err:
        ActivationDataset(out, verify=True)
    assert "mechdemo extract" in str(err.value)  # names the fix
    with pytest.raises(CorruptFileError, match=truncated.name):
        ActivationDataset(out).table(1)  # reading without verification also refuses a truncated file

    untouched = {p.name: p.stat().st_mtime_ns for p in shards if p not in (truncated, flipped)}
    extract(_config(corpus), out, model=model, progress=False)  # resumes, rebuilding only the two
    assert {p.name: p.stat().st_mtime_ns for p in shards if p.name in untouched} == untouched
    assert _shard_hashes(out) == _shard_hashes(reference)
    ActivationDataset(out, verify=True)


def test_other_arguments_on_an_existing_dataset_are_refused(model, corpus, reference):
    with pytest.raises(MechdemoError, match="other arguments.*layer"):
        extract(_config(corpus, layer=LAYER + 1), reference, model=model, progress=False)


def test_float64_extraction_rounds_to_the_same_bf16_and_mismatches_are_named(model, corpus, reference, tmp_path):
    """``compute_dtype="float64"`` (what the SAE figures use: the same dataset on Intel and AMD CPUs)
    stores bf16 values that agree with the float32 extraction except where float32 rounding flipped
    one; a model of another dtype than the config's is refused, and so is an unknown dtype."""
    from mechdemo.models import to_float64

    model64 = to_float64(model)
    out = tmp_path / "f64"
    extract(_config(corpus, compute_dtype="float64", max_tokens=600), out, model=model64, progress=False)
    meta64, bits64 = _rows(out)
    meta, bits = _rows(reference)
    n = len(meta64)
    assert (meta[:n] == meta64).all() and json.loads((out / "config.json").read_text())["compute_dtype"] == "float64"
    same = (bits[:n] == bits64).mean()
    assert same > 0.97  # float32 rounding flips the bf16 rounding of a few values
    torch.testing.assert_close(from_uint16(bits64).float(), from_uint16(bits[:n]).float(), rtol=0.02, atol=0.02)
    with pytest.raises(MechdemoError, match="computes in torch.float32, the config asks for float64"):
        extract(_config(corpus, compute_dtype="float64"), tmp_path / "x", model=model, progress=False)
    with pytest.raises(MechdemoError, match="choose one of float32, float64"):
        _config(corpus, compute_dtype="float16")


def test_layer_out_of_range_fails_before_writing(model, corpus, tmp_path):
    with pytest.raises(OutOfRangeError, match=r"0\.\.29"):
        extract(_config(corpus, layer=30), tmp_path / "bad", model=model, progress=False)
    assert not (tmp_path / "bad").exists()


def test_failed_upload_keeps_the_local_dataset(model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the upload fails: no network
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_not_a_real_token")  # a login, as far as the check sees
    out = tmp_path / "push"
    manifest = extract(_config(corpus, shard_size=2000), out, model=model, progress=False,
                       push_to_hub="nobody/mechdemo-test")
    assert manifest["pushed_to_hub"]["ok"] is False
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["pushed_to_hub"]["repo"] == "nobody/mechdemo-test"
    assert len(ActivationDataset(out, verify=True)) == manifest["tokens"] > 0


# --- several processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.full  # torchrun with two processes; `make check`
def test_two_processes_under_torchrun_equal_one(corpus, reference, tmp_path):
    out = tmp_path / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "mechdemo", *_cli_args(corpus, out), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = sorted(p.name for p in out.glob("progress-r*.json"))
    assert progress == ["progress-r000.json", "progress-r001.json"]
    files = [s["file"] for s in ActivationDataset(out).shards]
    assert any("-r000-" in f for f in files) and any("-r001-" in f for f in files)
    (meta, bits), (ref_meta, ref_bits) = _rows(out), _rows(reference)
    np.testing.assert_array_equal(meta, ref_meta)
    # each process ran the same batches as the single process did, so the values agree; a different
    # thread count may move the last fp32 bit of a few values across a bf16 rounding boundary
    assert (bits == ref_bits).mean() > 0.999
    torch.testing.assert_close(from_uint16(bits).float(), from_uint16(ref_bits).float(), rtol=0.01, atol=0.01)
    stats, ref_stats = (ActivationDataset(p).norm_stats for p in (out, reference))
    assert stats["tokens"] == ref_stats["tokens"]
    assert stats["rms"] == pytest.approx(ref_stats["rms"], rel=1e-4)
