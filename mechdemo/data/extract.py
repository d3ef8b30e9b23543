"""Building activation datasets: the activations at one or more sites for every token of a corpus.

What the course's pipeline did (stream a corpus through Llama 3.2 1B, keep the MLP-8 output of
every non-special token as bf16 bit patterns in uint16, shards of 50,000 tokens, a global RMS),
rebuilt to be fast, exact and crash-safe:

**Any site, several at once.** A dataset stores the activations at the sites its config names
(:mod:`mechdemo.interventions`: the MLP output of layer 8 by default, as in the course; or e.g. the
MLP's input and output of every layer, what transcoders train on; or the residual stream at every
layer, what probes read), all from the same forward pass, each in a column named for its site.

**Only the layers needed.** The forward pass stops after the last layer a site needs
(``stop_at_layer``): the later layers and the unembedding, most of the course's cost, are never
computed.

**Deterministic plan.** Documents come from :mod:`mechdemo.data.corpus` in a fixed order and are cut
into fixed-length chunks; batch ``b`` is chunks ``b*B .. b*B+B-1``. How many tokens a batch stores
is known from its token ids alone (special and padding tokens are dropped), so the whole plan
(which batches make which shard, where ``--max-tokens`` stops) follows from tokenisation, before
any model runs. Shard ``k`` of process ``r`` is always the same batches.

**Crash-safe and resumable.** A shard is written to a temporary file and renamed into place when
complete; its size and sha256 go into the process's progress file (also written atomically).
Killed at any moment, a rerun with the same arguments re-tokenises, skips every shard that is
complete and intact, rebuilds any that is missing or damaged, and continues: the result equals
an uninterrupted run, bit for bit (same batches, same arithmetic).

**Several processes.** Under ``torchrun`` / ``accelerate launch`` (``RANK``/``WORLD_SIZE`` set) process
``r`` of ``W`` takes the batches with ``b % W == r``: a disjoint, deterministic share. Each writes its
own shards and progress file; when all are done (a ``gloo``/``nccl`` barrier) process 0 merges them
into ``manifest.json`` and ``norm_stats.json``.

**Format** (2). Arrow IPC files (uncompressed, so they can be memory-mapped), one row per token:
``doc_id`` (int64), ``tok_pos`` (int32, position in the document's tokens), ``token_id`` (int32) and one
column per site, named for it (``blocks.8.hook_mlp_out``: ``d_model`` x uint16, the bf16 bit pattern,
an exact round trip). ``norm_stats.json`` holds, per site, ``tokens``, ``rms = sqrt(mean over tokens of
||x||^2)`` (the course's definition), the per-element RMS, the model and dtype. :class:`ActivationDataset`
reads it back, and also reads format 1 (one ``act`` column: the MLP output of ``config["layer"]``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from mechdemo import __version__
from mechdemo.errors import MechdemoError
from mechdemo.data.dataset import FORMAT, MANIFEST, NORM_STATS, from_uint16, shard_intact, to_uint16
from mechdemo.data.hub import check_hub_repo, push_dataset
from mechdemo.files import check_writable, read_json, sha256_of, write_json_atomic

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

COMPUTE_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines a dataset's content (a rerun must use the same values).

    ``sites``: the site names to store (:func:`mechdemo.interventions.site`); or ``layer`` alone, which
    means the MLP output of that layer (the course's dataset). ``layer`` is then the sites' common
    layer (``None`` if they have several)."""

    model: str
    layer: int | None = None
    corpus: str = "python-docs"
    seq_len: int = 128
    batch_size: int = 16
    shard_size: int = 50_000  # tokens per shard (a shard closes at the first batch boundary past it)
    max_tokens: int | None = None
    dtype: str = "bfloat16"
    # the forward pass's dtype: float64 gives the same bf16 dataset on every CPU (MKL's float32 sums
    # differ in their last bits between Intel and AMD CPUs, and bf16 rounding flips on some of them)
    compute_dtype: str = "float32"
    sites: tuple[str, ...] = ()

    def __post_init__(self):
        from mechdemo.interventions import parse_site, site

        if self.compute_dtype not in COMPUTE_DTYPES:
            raise MechdemoError(f"compute dtype {self.compute_dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}")
        names = tuple(self.sites) if self.sites else ()
        if not names:
            if self.layer is None:
                raise MechdemoError("an activation dataset needs sites (--site KIND --layers L) or a --layer (its MLP "
                                    "output)")
            names = (site("mlp_out", self.layer),)
        if len(set(names)) != len(names):
            raise MechdemoError(f"a site is named twice in {list(names)}")
        layers = {parse_site(name)[1] for name in names}  # validates every name
        object.__setattr__(self, "sites", names)
        object.__setattr__(self, "layer", layers.pop() if len(layers) == 1 else None)

    @property
    def stop_at_layer(self) -> int | None:
        """The block the forward pass can stop before (None: every site's layer is needed, or the final one)."""
        from mechdemo.interventions import parse_site

        layers = [parse_site(name)[1] for name in self.sites]
        if any(layer is None and name not in ("hook_embed", "hook_pos_embed") for name, layer in zip(self.sites, layers)):
            return None
        return max((layer for layer in layers if layer is not None), default=-1) + 1


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class Batch:
    index: int  # global batch index
    chunks: list  # list[mechdemo.data.corpus.Chunk]
    keep: np.ndarray  # [n_chunks, seq_len] bool: which positions are stored
    rows: int


@dataclass
class ShardPlan:
    rank: int
    index: int  # shard index within the rank
    batches: list[Batch] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches)

    @property
    def name(self) -> str:
        return f"shard-r{self.rank:03d}-{self.index:05d}.arrow"


def _batches(model: "TransformerBridge", cfg: ExtractConfig) -> Iterator[Batch]:
    from mechdemo.data.corpus import iter_chunks

    tok = model.tokenizer  # every special or added token (BOS, EOS, padding, chat markers) is left out
    special = set(tok.all_special_ids) | set(tok.get_added_vocab().values()) | {tok.pad_token_id}
    special_ids = np.array(sorted(i for i in special if i is not None))
    chunks, index, total = [], 0, 0

    def make(chunks, index):
        ids = np.array([c.ids for c in chunks])
        keep = ~np.isin(ids, special_ids)
        return Batch(index, chunks, keep, int(keep.sum()))

    for chunk in iter_chunks(model, cfg.corpus, cfg.seq_len):
        chunks.append(chunk)
        if len(chunks) == cfg.batch_size:
            batch = make(chunks, index)
            yield batch
            total += batch.rows
            chunks, index = [], index + 1
            if cfg.max_tokens is not None and total >= cfg.max_tokens:
                return
    if chunks:
        yield make(chunks, index)


def plan_shards(model: "TransformerBridge", cfg: ExtractConfig, rank: int = 0, world_size: int = 1) -> Iterator[ShardPlan]:
    """The shards process ``rank`` of ``world_size`` writes, with their batches (no model run)."""
    shard = ShardPlan(rank, 0)
    for batch in _batches(model, cfg):
        if batch.index % world_size != rank:
            continue
        shard.batches.append(batch)
        if shard.rows >= cfg.shard_size:
            yield shard
            shard = ShardPlan(rank, shard.index + 1)
    if shard.batches:
        yield shard


# --- extraction -------------------------------------------------------------------------------


def _schema(d_model: int, sites: Sequence[str], metadata: dict) -> pa.Schema:
    return pa.schema(
        [("doc_id", pa.int64()), ("tok_pos", pa.int32()), ("token_id", pa.int32())]
        + [(name, pa.list_(pa.uint16(), d_model)) for name in sites],
        metadata={"mechdemo": json.dumps(metadata)},
    )


def _activations(model: "TransformerBridge", batch: Batch, cfg: ExtractConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Run the batch as far as the sites need and return the stored rows' activations per site (uint16)
    and their metadata."""
    from mechdemo.interventions import run

    ids = torch.tensor([c.ids for c in batch.chunks])
    with torch.no_grad():
        _, acts = run(model, ids, names=cfg.sites, stop_at_layer=cfg.stop_at_layer)  # [n, seq_len, d_model] each
    keep = torch.from_numpy(batch.keep)
    bits = {name: to_uint16(acts[name][keep.to(acts[name].device)]) for name in cfg.sites}
    rows, cols = np.nonzero(batch.keep)
    doc = np.array([c.doc_id for c in batch.chunks])[rows]
    pos = np.array([c.start - c.offset for c in batch.chunks])[rows] + cols
    return bits, {"doc_id": doc, "tok_pos": pos, "token_id": ids.numpy()[batch.keep]}


def _write_shard(path: Path, d_model: int, sites: Sequence[str], parts: list, metadata: dict) -> dict:
    """Write ``parts`` (activation bits per site + metadata, per batch) as one Arrow file, atomically."""
    bits = {name: np.concatenate([p[0][name] for p in parts]) for name in sites}
    meta = {k: np.concatenate([p[1][k] for p in parts]) for k in ("doc_id", "tok_pos", "token_id")}
    columns = {"doc_id": pa.array(meta["doc_id"], pa.int64()), "tok_pos": pa.array(meta["tok_pos"], pa.int32()),
               "token_id": pa.array(meta["token_id"], pa.int32())}
    for name in sites:
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(bits[name].reshape(-1), type=pa.uint16()), d_model)
    table = pa.table(columns, schema=_schema(d_model, sites, metadata))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=65_536)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sum_sq = {name: float(np.square(from_uint16(b).double().numpy()).sum()) for name, b in bits.items()}
    return {"file": path.name, "rows": len(meta["doc_id"]), "bytes": path.stat().st_size, "sha256": sha256_of(path),
            "sum_sq": sum_sq}


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _check_out_dir(out: Path, cfg: ExtractConfig) -> None:
    """``--out`` can hold this dataset: new, empty, or this very dataset (to resume); writable."""
    config_file = out / "config.json"
    wanted = json.loads(json.dumps({**asdict(cfg), "format": FORMAT}))
    if out.exists() and not out.is_dir():
        raise MechdemoError(f"--out {out} is a file, not a folder: choose a folder for the dataset")
    if out.is_dir() and not config_file.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise MechdemoError(f"--out {out} holds files of something other than a mechdemo dataset: choose another "
                            "(mechdemo never writes into a folder it did not create)")
    check_writable(out)
    if config_file.exists():
        have = {"compute_dtype": "float32", **read_json(config_file, f"rerun `mechdemo extract` with another --out, or "
                                                                    f"delete {out}",
                                                                    {"model": str, "corpus": str, "seq_len": int})}
        if have.get("format", 1) != FORMAT:
            raise MechdemoError(f"{out} holds an unfinished dataset of an older format ({have.get('format', 1)}): "
                                "choose another --out (or finish it with the mechdemo version that started it)")
        if have != wanted:
            diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
            raise MechdemoError(
                f"{out} holds a dataset built with other arguments {diff} (had, asked). Rerun with the "
                "same arguments to resume it, or choose another --out."
            )


def extract(
    cfg: ExtractConfig,
    out_dir: str | Path,
    model: "TransformerBridge | None" = None,
    progress: bool = True,
    push_to_hub: str | None = None,
) -> dict:
    """Build (or resume) the dataset of ``cfg`` in ``out_dir``; return the manifest."""
    from tqdm.auto import tqdm

    from mechdemo.data.corpus import check_corpus
    from mechdemo.interventions import check_site
    from mechdemo.models import get_spec, load_model

    rank, world, local = _distributed()
    out = Path(out_dir)
    cfg = ExtractConfig(**{**asdict(cfg), "model": get_spec(cfg.model).name})
    _check_out_dir(out, cfg)
    progress_file = out / f"progress-r{rank:03d}.json"
    done = read_progress(progress_file)["shards"] if progress_file.exists() else {}  # before any work
    if push_to_hub and rank == 0:
        check_hub_repo(push_to_hub)
    check_corpus(cfg.corpus)  # before the model loads or a byte is written
    if model is None:
        _check_layers(cfg, get_spec(cfg.model).architecture.n_layers)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if model is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else None
        model = load_model(cfg.model, device=device, dtype=getattr(torch, cfg.compute_dtype))
    elif (have := next(model.parameters()).dtype) != getattr(torch, cfg.compute_dtype):
        raise MechdemoError(f"the model given computes in {have}, the config asks for {cfg.compute_dtype}")
    for name in cfg.sites:
        check_site(model, name)
    d_model = model.cfg.d_model
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stale_patterns = [f".shard-r{rank:03d}-*.tmp", f".progress-r{rank:03d}.json.*.tmp"]
    if rank == 0:
        stale_patterns += [f".{name}.*.tmp" for name in ("config.json", MANIFEST, NORM_STATS)]
    for pattern in stale_patterns:  # left by a killed run (or one that found the disk full)
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)
    bar = tqdm(total=cfg.max_tokens and -(-cfg.max_tokens // world), unit="tok", unit_scale=True,
               desc=f"extract L{cfg.layer}" + (f" [{rank}/{world}]" if world > 1 else ""), disable=not progress)
    start = time.perf_counter()
    computed = 0
    for shard in plan_shards(model, cfg, rank, world):
        record = done.get(shard.name)
        path = out / shard.name
        if record and shard_intact(path, record):
            bar.update(record["rows"])
            continue
        if record:
            log.warning("%s is missing or damaged: rebuilding it.", path)
        parts = []
        for batch in shard.batches:
            parts.append(_activations(model, batch, cfg))
            bar.update(batch.rows)
            computed += batch.rows
            bar.set_postfix_str(f"{computed / (time.perf_counter() - start):,.0f} tok/s computed")
        if rank == 0 and not (out / "config.json").exists():  # written with the first shard: a run that
            write_json_atomic(out / "config.json", {**asdict(cfg), "format": FORMAT})  # fails earlier leaves none
        meta = {"rank": rank, "index": shard.index, "batches": [b.index for b in shard.batches],
                "sites": list(cfg.sites), "model": cfg.model}
        done[shard.name] = {**_write_shard(path, d_model, cfg.sites, parts, meta), "batches": meta["batches"]}
        write_json_atomic(progress_file, {"rank": rank, "world_size": world, "shards": done, "complete": False})
    bar.close()
    if not done and world == 1:  # nothing to store: say why, and leave no folder behind
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise MechdemoError(f"--corpus {cfg.corpus} gave no tokens to store: the quality filter keeps documents of "
                            "21 to 29,999 characters that are not all capitals nor only digits (a .txt file is one "
                            "document, split into paragraphs and sentences when longer); check the corpus")
    write_json_atomic(progress_file, {"rank": rank, "world_size": world, "shards": done, "complete": True})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    manifest = merge_manifest(out, cfg, d_model) if rank == 0 else {}
    if rank == 0 and push_to_hub:
        manifest = push_dataset(out, push_to_hub, manifest)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return manifest


def _check_layers(cfg: ExtractConfig, n_layers: int) -> None:
    """Every site's layer exists in a model of ``n_layers`` (checked before the model loads)."""
    from mechdemo.interventions import parse_site

    for name in cfg.sites:
        layer = parse_site(name)[1]
        if layer is not None and not 0 <= layer < n_layers:
            raise MechdemoError(f"layer {layer} ({name}) is out of range: {cfg.model} has layers 0 to {n_layers - 1}")


def read_progress(path: Path) -> dict:
    """A process's progress file ({"shards": {name: record}, "complete": bool}), checked."""
    return read_json(path, f"delete it and rerun the same `mechdemo extract` command: the shards it listed are "
                           "computed again", {"shards": dict})


def merge_manifest(out: Path, cfg: ExtractConfig, d_model: int) -> dict:
    """Merge every process's progress into ``manifest.json`` and ``norm_stats.json``."""
    shards, incomplete = [], []
    for progress_file in sorted(out.glob("progress-r*.json")):
        state = read_progress(progress_file)
        if not state.get("complete"):
            incomplete.append(progress_file.name)
        shards.extend(state["shards"].values())
    if incomplete:
        raise MechdemoError(f"{', '.join(incomplete)} not complete: rerun the same command to finish")
    shards.sort(key=lambda r: r["file"])
    tokens = sum(r["rows"] for r in shards)
    stats = {}
    for name in cfg.sites:
        sum_sq = sum(r["sum_sq"][name] for r in shards)
        rms = (sum_sq / tokens) ** 0.5 if tokens else 0.0
        stats[name] = {"tokens": tokens, "rms": rms, "rms_per_element": rms / d_model**0.5, "site": name,
                       "model": cfg.model, "dtype": cfg.dtype, "d_model": d_model}
    manifest = {"format": FORMAT, "mechdemo_version": __version__, "config": asdict(cfg), "d_model": d_model,
                "sites": list(cfg.sites), "tokens": tokens, "shards": shards, "norm_stats": stats}
    write_json_atomic(out / NORM_STATS, stats)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


# --- reading ----------------------------------------------------------------------------------


