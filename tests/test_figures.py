"""The figure registry: files, provenance, manifest, determinism, and img/ in sync with it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from mechdemo import __version__
from mechdemo.figures import FIGURES
from mechdemo.figures.registry import read_manifest, read_provenance, run_figures
from mechdemo.models import DEFAULT_MODEL

IMG = Path(__file__).resolve().parents[1] / "img"


def test_cli_writes_png_with_provenance_and_manifest(tmp_path):
    out = tmp_path / "img"
    proc = subprocess.run(
        [sys.executable, "-m", "mechdemo", "figures", "--only", "transformer_decoder", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    png = out / "transformer_decoder.png"
    assert png.stat().st_size > 50_000
    prov = read_provenance(png)
    assert prov["figure"] == "transformer_decoder"
    assert prov["model"] == DEFAULT_MODEL
    assert prov["seed"] == 0 and prov["mechdemo_version"] == __version__ and prov["date"]
    entry = read_manifest(out)["figures"]["transformer_decoder"]
    assert entry["files"] == ["transformer_decoder.png"]
    assert entry["generator"] == "mechdemo.figures.architecture:transformer_decoder"
    assert entry["model"] == DEFAULT_MODEL
    # the numbers on the figure are the loaded model's
    arch = entry["results"]["architecture"]
    assert (arch["n_layers"], arch["d_model"], arch["n_heads"], arch["n_kv_heads"]) == (30, 576, 9, 3)


def _assert_close(new, old, path: str = "") -> None:
    """Equal structure; numbers equal up to float noise (thread scheduling, last rounded digit)."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), f"{path}: keys {sorted(new)} != {sorted(old)}"
        for key in old:
            _assert_close(new[key], old[key], f"{path}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{path}: length {len(new)} != {len(old)}"
        for i, (a, b) in enumerate(zip(new, old)):
            _assert_close(a, b, f"{path}[{i}]")
    elif isinstance(old, float) or isinstance(new, float):
        assert math.isclose(new, old, rel_tol=2e-3, abs_tol=2e-3), f"{path}: {new} != {old}"
    else:
        assert new == old, f"{path}: {new!r} != {old!r}"


def test_committed_figures_are_reproduced(tmp_path):
    """Regenerating every figure from its seed (one complete `mechdemo figures` run, into a temporary
    folder) reproduces the numbers in the committed img/manifest.json: the figures in the deck are
    what the code computes now, and a seed determines them."""
    entries = run_figures(out_dir=tmp_path, progress=False)
    committed = read_manifest(IMG)["figures"]
    assert set(entries) == set(FIGURES)
    for name, entry in entries.items():
        assert entry["files"] == committed[name]["files"], name
        _assert_close(json.loads(json.dumps(entry.get("results", {}), default=str)),
                      committed[name].get("results", {}), name)


def test_img_is_in_sync_with_the_registry():
    """Every PNG in img/ comes from a registered figure, and every registered figure is in img/."""
    registered = {f for spec in FIGURES.values() for f in spec.outputs}
    present = {p.name for p in IMG.iterdir() if p.suffix in (".png", ".html")}
    assert present - registered == set(), "files in img/ that no registered figure writes"
    assert registered - present == set(), "registered figures missing from img/: run `make figures`"
    manifest = read_manifest(IMG)["figures"]
    assert set(manifest) == set(FIGURES)
    for name, entry in manifest.items():
        assert entry["generator"] == FIGURES[name].generator
        png = IMG / f"{name}.png"
        prov = read_provenance(png)
        assert prov["figure"] == name
        assert prov["model"] == (DEFAULT_MODEL if FIGURES[name].needs_model else None)
