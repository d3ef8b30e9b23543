"""Saving and loading SAEs: SAELens's format (``cfg.json`` + safetensors) plus our training record.

A saved SAE is a folder SAELens's ``SAE.load_from_disk`` reads, plus ``mechdemo_sae.json`` (the
training configuration and the held-out metrics). It is written into a sibling folder and renamed
into place (:func:`mechdemo.files.folder_written_atomically`), so an interrupted save never leaves half
an SAE, and an existing one is replaced only when asked.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from mechdemo.errors import CorruptFileError, MechdemoError
from mechdemo.files import check_writable, folder_written_atomically, read_json
from mechdemo.sae.training import SAETrainConfig

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE

    from mechdemo.data import ActivationDataset



TRAIN_CONFIG = "mechdemo_sae.json"


def sae_bytes(d_in: int, expansion: int) -> int:
    """About what a saved SAE takes on disk: float32 encoder and decoder plus biases."""
    d_sae = d_in * expansion
    return 4 * (2 * d_in * d_sae + d_sae + d_in) + 64 * 1024


def check_sae_out(out: str | Path, overwrite: bool = False, needed_bytes: int = 0) -> Path:
    """Check, before any training, that an SAE can be saved in ``out``: not a file, not a folder
    holding something else, not an existing SAE unless ``overwrite``, writable, and with
    ``needed_bytes`` free (an SAE being replaced stays until the new one is complete). Raises a
    :class:`MechdemoError` naming the fix; returns the path."""
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MechdemoError(f"--out {out} is a file, not a folder: choose a folder for the SAE")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "cfg.json").is_file():
            raise MechdemoError(f"--out {out} is a folder that holds something other than an SAE: choose another "
                                "(mechdemo never replaces a folder it did not write)")
        if not overwrite:
            raise MechdemoError(f"--out {out} already holds an SAE: pass --overwrite to replace it, or choose "
                                "another --out")
    check_writable(out)
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if needed_bytes and (free := shutil.disk_usage(existing).free) < needed_bytes:
        raise MechdemoError(f"--out {out}: the SAE needs about {needed_bytes / 2**20:,.0f} MiB but only "
                            f"{free / 2**20:,.0f} MiB are free there: free some space or choose another --out")
    return out


def save_sae(sae: "TrainingSAE", out: str | Path, cfg: SAETrainConfig, metrics: dict | None = None,
             overwrite: bool = False) -> Path:
    """Save the inference SAE (SAELens format: ``cfg.json`` + safetensors) and our config and metrics.

    Written into a sibling folder first and renamed into place, so an interrupted save never leaves
    half an SAE; an existing SAE in ``out`` is replaced only with ``overwrite`` (then atomically)."""
    out = check_sae_out(out, overwrite)
    with folder_written_atomically(out, "saving") as tmp:
        sae.save_inference_model(str(tmp))
        cfg_file = tmp / "cfg.json"  # SAELens writes its keys in hash order: sorted, the same SAE is the same bytes
        cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()), indent=2, sort_keys=True))
        (tmp / TRAIN_CONFIG).write_text(json.dumps({"train_config": asdict(cfg), "metrics": metrics or {}}, indent=2))
    return out


def load_sae(path: str | Path) -> "SAE":
    """An SAE saved by :func:`save_sae` (or any SAELens ``save_model`` folder)."""
    from sae_lens import SAE

    from safetensors import SafetensorError

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise MechdemoError(f"{path} is not a saved SAE (no cfg.json): train one with `mechdemo sae train --out {path}`")
    rebuild = f"train it again with `mechdemo sae train --out {path} --overwrite` (and the arguments it was trained with)"
    cfg = read_json(path / "cfg.json", rebuild, {"d_in": int, "d_sae": int})
    if (path / TRAIN_CONFIG).exists():
        read_json(path / TRAIN_CONFIG, rebuild, {"train_config": dict})
    try:
        return SAE.load_from_disk(str(path), device="cpu")
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, SafetensorError) as err:
        raise CorruptFileError(f"{path} holds a damaged SAE ({type(err).__name__}: {str(err)[:200]}; its cfg.json says "
                               f"d_in {cfg['d_in']}, d_sae {cfg['d_sae']}): {rebuild}") from None


def check_sae_matches(sae: "SAE", dataset: "ActivationDataset", what: str, sae_path: str | Path | None = None) -> None:
    """An SAE trained on another model or site than the dataset holds is a user's mix-up: say so
    (``what``: the verb of the error, e.g. "evaluate")."""
    meta = sae.cfg.metadata
    model = dataset.manifest["config"]["model"]
    if meta.get("hook_name") and (meta.get("hook_name"), meta.get("model_name")) != (dataset.site, model):
        raise MechdemoError(f"{sae_path or 'the SAE'} was trained on {meta.get('model_name')} {meta.get('hook_name')}, "
                            f"but {dataset.path} holds {model} {dataset.site}: {what} it on a dataset of the same "
                            "model and site")
