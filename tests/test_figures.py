"""The figure registry: files, provenance, manifest, determinism, and img/ in sync with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mechdemo import __version__
from mechdemo.figures import FIGURES
from mechdemo.figures.registry import FigureContext, read_manifest, read_provenance, seed_everything
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


def test_same_seed_same_numbers(model):
    """Every figure's results are a function of its seed: two complete runs of the registry
    (each sharing its intermediate results across figures, as `mechdemo figures` does) agree."""
    import matplotlib.pyplot as plt

    models = {DEFAULT_MODEL: model}
    runs = []
    for _ in range(2):
        memo: dict = {}
        results = {}
        for spec in FIGURES.values():
            seed_everything(spec.seed)
            out = spec.func(FigureContext(DEFAULT_MODEL, spec.seed, "cpu", models, memo))
            results[spec.name] = json.dumps(getattr(out, "results", {}), sort_keys=True, default=str)
            plt.close("all")
        runs.append(results)
    for name in FIGURES:
        assert runs[0][name] == runs[1][name], name


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
