"""Activation datasets: the activations at one or more sites for every token of a corpus, sharded on disk.

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

**Deterministic plan.** Documents come from :mod:`mechdemo.corpus` in a fixed order and are cut
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
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from mechdemo import __version__
from mechdemo.errors import CorruptFileError, MechdemoError
from mechdemo.files import check_writable, read_json, sha256_of, write_json_atomic

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

FORMAT = 2  # 1: a single "act" column, the MLP output of config["layer"] (still read)
MANIFEST = "manifest.json"
COMPUTE_DTYPES = ("float32", "float64")
NORM_STATS = "norm_stats.json"


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


def to_uint16(x: Tensor) -> np.ndarray:
    """bf16 bit patterns of ``x`` as uint16 (rounding to bf16 first)."""
    return x.to(torch.bfloat16).contiguous().view(torch.uint16).cpu().numpy()


def from_uint16(bits: np.ndarray) -> Tensor:
    """The bf16 tensor whose bit patterns are ``bits`` (exact inverse of :func:`to_uint16`)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if not bits.flags.writeable:  # a memory-mapped file: torch wants memory it may write to
        bits = bits.copy()
    return torch.from_numpy(bits).view(torch.bfloat16)


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class Batch:
    index: int  # global batch index
    chunks: list  # list[mechdemo.corpus.Chunk]
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
    from mechdemo.corpus import iter_chunks

    special = set(model.tokenizer.all_special_ids) | {model.tokenizer.pad_token_id}
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


def check_hub_repo(repo: str) -> None:
    """``--push-to-hub REPO`` can work: a valid repo id, and a Hugging Face login to upload with.

    Checked before any work (the upload comes last, after the whole extraction); the token is
    only looked up, never printed."""
    try:
        from huggingface_hub import get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise MechdemoError("--push-to-hub needs the huggingface_hub package: pip install huggingface_hub") from err
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise MechdemoError(f"--push-to-hub {repo!r} is not a Hub repo id: use NAME or USER/NAME (letters, digits, "
                            f"'-', '_', '.'; {err})") from None
    if not get_token():
        raise MechdemoError("--push-to-hub needs a Hugging Face login with write access: run `hf auth login` (or "
                            "set HF_TOKEN), or drop --push-to-hub and upload the finished folder later with "
                            "`hf upload`")


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
        have = {"compute_dtype": "float32", **read_json(config_file, f"rerun `mechdemo extract` with another --out, or delete {out}")}
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

    from mechdemo.corpus import check_corpus
    from mechdemo.interventions import check_site
    from mechdemo.models import get_spec, load_model

    rank, world, local = _distributed()
    out = Path(out_dir)
    cfg = ExtractConfig(**{**asdict(cfg), "model": get_spec(cfg.model).name})
    _check_out_dir(out, cfg)
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
    progress_file = out / f"progress-r{rank:03d}.json"
    done = json.loads(progress_file.read_text())["shards"] if progress_file.exists() else {}
    bar = tqdm(total=cfg.max_tokens and -(-cfg.max_tokens // world), unit="tok", unit_scale=True,
               desc=f"extract L{cfg.layer}" + (f" [{rank}/{world}]" if world > 1 else ""), disable=not progress)
    start = time.perf_counter()
    computed = 0
    for shard in plan_shards(model, cfg, rank, world):
        record = done.get(shard.name)
        path = out / shard.name
        if record and _intact(path, record):
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
                            "document, split into paragraphs when longer); check the corpus")
    write_json_atomic(progress_file, {"rank": rank, "world_size": world, "shards": done, "complete": True})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    manifest = merge_manifest(out, cfg, d_model) if rank == 0 else {}
    if rank == 0 and push_to_hub:
        manifest = _push(out, push_to_hub, manifest)
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


def _intact(path: Path, record: dict) -> bool:
    return path.is_file() and path.stat().st_size == record["bytes"] and sha256_of(path) == record["sha256"]


def merge_manifest(out: Path, cfg: ExtractConfig, d_model: int) -> dict:
    """Merge every process's progress into ``manifest.json`` and ``norm_stats.json``."""
    shards, incomplete = [], []
    for progress_file in sorted(out.glob("progress-r*.json")):
        state = json.loads(progress_file.read_text())
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


def _push(out: Path, repo: str, manifest: dict) -> dict:
    """Upload the dataset folder to a Hub dataset repo; on failure keep everything local and say so."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="dataset",
                          allow_patterns=["*.arrow", "*.json"], ignore_patterns=["progress-*.json"])
        manifest["pushed_to_hub"] = {"repo": repo, "ok": True}
    except Exception as err:  # noqa: BLE001 - any failure: keep the local copy, report, go on
        log.warning("Upload to %s failed (%s: %s). Nothing is lost: the dataset is complete in %s; "
                    "upload it later with `hf upload %s %s --repo-type dataset`.",
                    repo, type(err).__name__, err, out, repo, out)
        manifest["pushed_to_hub"] = {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {err}"}
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


# --- reading ----------------------------------------------------------------------------------


class ActivationDataset:
    """A dataset written by :func:`extract`: memory-mapped shards, batches as tensors.

    ``sites`` lists what it stores; the methods that read activations take a ``site`` (default: the
    dataset's only one). :meth:`select` gives a view on one site, for code that reads one (an SAE)."""

    def __init__(self, path: str | Path, verify: bool = False):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise MechdemoError(f"{self.path} has no {MANIFEST}: not a finished dataset (rerun `mechdemo extract` "
                                "with the same arguments to finish it)")
        self.manifest = read_json(manifest, "rerun `mechdemo extract` with the dataset's arguments (its shards are "
                                            "kept) or build it again")
        try:
            self.format = int(self.manifest.get("format", 1))
            self.d_model: int = self.manifest["d_model"]
            if self.format == 1:  # one "act" column: the MLP output of the config's layer
                from mechdemo.interventions import site

                name = site("mlp_out", self.manifest["config"]["layer"])
                self._columns = {name: "act"}
                self._norm_stats = {name: {**self.manifest["norm_stats"], "site": name}}
            elif self.format == FORMAT:
                self._columns = {name: name for name in self.manifest["sites"]}
                self._norm_stats = self.manifest["norm_stats"]
            else:
                raise MechdemoError(f"{manifest} is format {self.format}, newer than this mechdemo reads ({FORMAT}): "
                                    "upgrade mechdemo (pip install -U mechdemo)")
            self.shards  # noqa: B018 - the list must exist
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CorruptFileError(f"{manifest} is not a dataset manifest mechdemo wrote ({type(err).__name__}: {err}): "
                                   "rebuild the dataset with `mechdemo extract`") from None
        self.sites: list[str] = list(self._columns)
        self._tables: dict[str, pa.Table] = {}
        if verify:
            self.verify()

    def __len__(self) -> int:
        return self.manifest["tokens"]

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def select(self, site: str) -> "ActivationDataset":
        """This dataset seen as holding ``site`` only (the same files; for code that reads one site)."""
        import copy

        self._check_site(site)
        view = copy.copy(self)
        view.sites, view._tables = [site], self._tables
        return view

    def _check_site(self, site: str) -> str:
        if site not in self._columns:
            raise MechdemoError(f"{self.path} holds no activations at {site!r}: it holds {', '.join(self.sites)}")
        return site

    @property
    def site(self) -> str:
        """The dataset's site, when it holds one (else an error naming them: pass ``site=`` or use :meth:`select`)."""
        if len(self.sites) != 1:
            raise MechdemoError(f"{self.path} holds {len(self.sites)} sites ({', '.join(self.sites)}): say which one "
                                "(site=..., or ActivationDataset.select(site))")
        return self.sites[0]

    @property
    def layer(self) -> int | None:
        """The layer of :attr:`site`."""
        from mechdemo.interventions import parse_site

        return parse_site(self.site)[1]

    @property
    def norm_stats(self) -> dict:
        """``tokens``, ``rms``, ``rms_per_element`` ... of :attr:`site`."""
        return self._norm_stats[self.site]

    def norm_stats_of(self, site: str) -> dict:
        return self._norm_stats[self._check_site(site)]

    def verify(self) -> None:
        """Check every shard's size and sha256; raise :class:`CorruptFileError` naming the first bad one."""
        for record in self.shards:
            path = self.path / record["file"]
            if not _intact(path, record):
                raise CorruptFileError(
                    f"{path} is missing, truncated or damaged (size/sha256 differ from the manifest). Rerun "
                    f"`mechdemo extract` with the dataset's arguments ({self.config_args()}): it rebuilds only "
                    "that shard."
                )

    def config_args(self) -> str:
        from mechdemo.interventions import parse_site

        c = self.manifest["config"]
        if self.format == 1:
            where = f"--layer {c['layer']}"
        else:
            kinds = list(dict.fromkeys(parse_site(name)[0] for name in c["sites"]))
            layers = sorted({parse_site(name)[1] for name in c["sites"]} - {None})
            where = " ".join(f"--site {k}" for k in kinds) + (f" --layers {','.join(map(str, layers))}" if layers else "")
        args = f"--model {c['model']} {where} --corpus {c['corpus']} --out {self.path} " \
               f"--seq-len {c['seq_len']} --batch-size {c['batch_size']} --shard-size {c['shard_size']}"
        return args + (f" --max-tokens {c['max_tokens']}" if c.get("max_tokens") else "")

    def table(self, i: int) -> pa.Table:
        """Shard ``i`` as a memory-mapped Arrow table, checked against the manifest on first use:
        its size, and the sha256 of the bytes mapped (one pass over pages the reader maps anyway),
        so training never runs on a damaged shard."""
        import hashlib

        name = self.shards[i]["file"]
        if name not in self._tables:
            path = self.path / name
            record = self.shards[i]
            rebuild = (f"Rerun `mechdemo extract` with the dataset's arguments ({self.config_args()}): it rebuilds "
                       "only the damaged shard.")
            try:
                if path.stat().st_size != record["bytes"]:
                    raise CorruptFileError(f"{path} has {path.stat().st_size:,} bytes, the manifest says "
                                           f"{record['bytes']:,}: truncated or damaged. {rebuild}")
                mapped = pa.memory_map(str(path), "r")
                if "sha256" in record and hashlib.sha256(mapped.read_buffer()).hexdigest() != record["sha256"]:
                    raise CorruptFileError(f"{path} is damaged: its sha256 differs from the manifest's. {rebuild}")
                mapped.seek(0)
                reader = pa.ipc.open_file(mapped)
                table = reader.read_all()
            except (OSError, pa.ArrowInvalid) as err:
                raise CorruptFileError(
                    f"{path} cannot be read ({err}). Rerun `mechdemo extract` with the dataset's arguments "
                    f"({self.config_args()}): it rebuilds only the damaged shard."
                ) from None
            if table.num_rows != self.shards[i]["rows"]:
                raise CorruptFileError(f"{path} has {table.num_rows} rows, the manifest says {self.shards[i]['rows']}")
            self._tables[name] = table
        return self._tables[name]

    def shard_bits(self, i: int, site: str | None = None) -> np.ndarray:
        """Shard ``i``'s activations at ``site`` as a [rows, d_model] uint16 array (a view of the file when possible)."""
        name = self._columns[self._check_site(site) if site is not None else self.site]
        column = self.table(i).column(name).combine_chunks()
        return column.values.to_numpy(zero_copy_only=False).reshape(-1, self.d_model)

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([self.table(i).column(name).to_numpy() for i in range(len(self.shards))])

    def activations(self, dtype: torch.dtype = torch.float32, site: str | None = None) -> Tensor:
        """All activations at ``site`` as one [tokens, d_model] tensor (loads everything: for small datasets)."""
        return torch.cat([from_uint16(self.shard_bits(i, site)).to(dtype) for i in range(len(self.shards))])

    def batches(
        self,
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 4,
        dtype: torch.dtype = torch.float32,
        normalize: bool = False,
        epochs: int = 1,
        shards: Sequence[int] | None = None,
        site: str | Sequence[str] | None = None,
    ) -> Iterator[Tensor] | Iterator[tuple[Tensor, ...]]:
        """Batches of [batch_size, d_model] activations at ``site`` (of all shards, or of ``shards``).

        ``site`` may be several sites (e.g. an MLP's input and output): each batch is then a tuple, one
        tensor per site, of the same tokens. With ``shuffle``, shards come in a seeded random order and
        rows are shuffled within a buffer of ``buffer_shards`` shards; ``normalize`` divides each site by
        its ``rms_per_element`` (unit mean square).
        """
        several = site is not None and not isinstance(site, str)
        names = [self._check_site(s) for s in site] if several else [site if site is not None else self.site]
        self._check_site(names[0])
        generator = np.random.default_rng(seed)
        scales = [1.0 / self._norm_stats[n]["rms_per_element"] if normalize else 1.0 for n in names]
        chosen = np.arange(len(self.shards)) if shards is None else np.asarray(shards)

        def out(bits: list[np.ndarray]):
            tensors = tuple(from_uint16(b).to(dtype) * scale for b, scale in zip(bits, scales))
            return tensors if several else tensors[0]

        for _ in range(epochs):
            order = generator.permutation(chosen) if shuffle else chosen
            leftover = [np.empty((0, self.d_model), dtype=np.uint16) for _ in names]
            for first in range(0, len(order), buffer_shards):
                picked = order[first : first + buffer_shards]
                buffer = [np.concatenate([left] + [self.shard_bits(i, n) for i in picked]) for left, n in zip(leftover, names)]
                if shuffle:
                    perm = generator.permutation(len(buffer[0]))
                    buffer = [b[perm] for b in buffer]
                n_full = len(buffer[0]) // batch_size * batch_size
                for start in range(0, n_full, batch_size):
                    yield out([b[start : start + batch_size] for b in buffer])
                leftover = [b[n_full:] for b in buffer]
            if len(leftover[0]):
                yield out(leftover)

    def info(self) -> dict:
        c = self.manifest["config"]
        return {
            "path": str(self.path), "model": c["model"], "sites": self.sites, "layer": c.get("layer"),
            "corpus": c["corpus"], "tokens": len(self), "d_model": self.d_model, "shards": len(self.shards),
            "bytes": sum(s["bytes"] for s in self.shards), "norm_stats": {n: self._norm_stats[n] for n in self.sites},
            "seq_len": c["seq_len"], "dtype": c["dtype"],
            "pushed_to_hub": self.manifest.get("pushed_to_hub"),
        }
