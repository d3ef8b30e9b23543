"""Reading activation datasets: memory-mapped Arrow shards, checked, as batches of tensors.

:class:`ActivationDataset` opens a folder written by :func:`mechdemo.data.extract.extract` (format 2:
one column per site) or by earlier versions (format 1: one ``act`` column, the MLP output of
``config["layer"]``). Activations are stored as the bit patterns of bf16 values in uint16
(:func:`to_uint16` / :func:`from_uint16`, an exact round trip); every shard is checked against the
manifest's size and sha256 before its first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from mechdemo.errors import CorruptFileError, MechdemoError
from mechdemo.files import read_json, sha256_of

FORMAT = 2  # 1: a single "act" column, the MLP output of config["layer"] (still read)
MANIFEST = "manifest.json"
NORM_STATS = "norm_stats.json"


def to_uint16(x: Tensor) -> np.ndarray:
    """bf16 bit patterns of ``x`` as uint16 (rounding to bf16 first)."""
    return x.to(torch.bfloat16).contiguous().view(torch.uint16).cpu().numpy()


def from_uint16(bits: np.ndarray) -> Tensor:
    """The bf16 tensor whose bit patterns are ``bits`` (exact inverse of :func:`to_uint16`)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if not bits.flags.writeable:  # a memory-mapped file: torch wants memory it may write to
        bits = bits.copy()
    return torch.from_numpy(bits).view(torch.bfloat16)


def shard_intact(path: Path, record: dict) -> bool:
    return path.is_file() and path.stat().st_size == record["bytes"] and sha256_of(path) == record["sha256"]


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
        self.manifest = read_json(manifest, "rerun `mechdemo extract` with the dataset's arguments (config.json beside "
                                            "it records them; complete shards are kept, not recomputed) or build it "
                                            "again",
                                  {"d_model": int, "tokens": int, "shards": list, "config": dict})
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
            for record in self.shards:  # what verify(), table() and info() read
                if not (isinstance(record, dict) and isinstance(record.get("file"), str)
                        and all(isinstance(record.get(k), int) for k in ("rows", "bytes"))):
                    raise ValueError(f"a shard record without file, rows and bytes: {str(record)[:80]}")
            config = self.manifest["config"]
            for key in ("model", "corpus", "seq_len", "dtype"):
                config[key]  # noqa: B018 - info() and config_args() read them
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
            if not shard_intact(path, record):
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
