"""The SAE feature browser: what it shows against brute force (dense encodings, full cosine and logit
matrices), its activations against the model run again on each context, the site's files and
refusals, the CLI, and the pages themselves in headless Chromium with the network blocked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mechdemo.data import ActivationDataset, ExtractConfig, extract, from_uint16
from mechdemo.errors import MechdemoError
from mechdemo.sae import (
    BANDS, FeaturePagesConfig, SAETrainConfig, decoder_neighbours, feature_pages, logit_effects, make_sae,
    nonzero_activations, promoted_tokens, run_bounds, save_sae, split_shards, text_activations, train_sae,
)
from mechdemo.sites import MARKER, check_browser_out, highlight_html, site_bytes, ui_strings, write_browser

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "img"
LAYER = 6
CHROMIUM = os.environ.get("CHROME_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def _random_sae(d_in: int = 16, d_sae: int = 48, arch: str = "relu", seed: int = 0):
    cfg = SAETrainConfig(architecture=arch, expansion=d_sae // d_in, k=4, seed=seed)
    sae = make_sae(cfg, d_in)
    with torch.no_grad():  # fire often enough to have something to sort
        sae.b_enc.add_(0.1)
    return sae


def test_nonzero_activations_are_the_dense_encoding_sorted():
    torch.manual_seed(0)
    for arch in ("relu", "topk"):
        sae = _random_sae(arch=arch)
        x = torch.randn(300, 16)
        rows, feats, values = nonzero_activations(sae, x, batch_size=64)  # several batches
        dense = sae.encode(x).detach()
        r, f = torch.nonzero(dense > 0, as_tuple=True)
        assert len(rows) == len(r) > 0
        assert set(zip(rows.tolist(), feats.tolist())) == set(zip(r.tolist(), f.tolist()))
        np.testing.assert_allclose(values, dense[rows, feats].numpy(), rtol=1e-6)
        # by feature, then by value descending
        assert (np.diff(feats) >= 0).all()
        same = np.diff(feats) == 0
        assert (np.diff(values)[same] <= 0).all()


def test_run_bounds_by_brute_force():
    doc = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    pos = np.array([5, 6, 7, 0, 1, 3, 4, 9, 10, 11])  # document 1 has a gap between 1 and 3
    start, end = run_bounds(doc, pos)
    for r in range(len(doc)):
        lo = r
        while lo > 0 and doc[lo - 1] == doc[r] and pos[lo - 1] == pos[lo] - 1:
            lo -= 1
        hi = r
        while hi < len(doc) - 1 and doc[hi + 1] == doc[r] and pos[hi + 1] == pos[hi] + 1:
            hi += 1
        assert (start[r], end[r]) == (lo, hi), r


def test_decoder_neighbours_by_brute_force():
    sae = _random_sae(d_sae=96)
    ids, cos = decoder_neighbours(sae, k=5, batch=10)  # several batches
    W = sae.W_dec.detach()
    full = torch.nn.functional.cosine_similarity(W[:, None, :], W[None, :, :], dim=-1)
    full.fill_diagonal_(-2)
    expected = full.topk(5, dim=1)
    torch.testing.assert_close(cos, expected.values, rtol=1e-5, atol=1e-6)
    assert (ids == expected.indices).float().mean() > 0.99  # ties aside
    ids20, _ = decoder_neighbours(sae, k=5, among=20)
    assert ids20.shape == (20, 5) and int(ids20.max()) < 20


def test_logit_effects_by_brute_force(model):
    """Promoted and suppressed tokens of every feature, computed in batches, equal the sorted rows of the
    whole ``(W_dec ⊙ γ) · W_U`` matrix; promoted_tokens decodes the same top tokens."""
    sae = _random_sae(d_in=model.cfg.d_model, d_sae=2 * model.cfg.d_model)
    up_ids, up_v, down_ids, down_v = logit_effects(sae, model, k=6, batch=100)  # several batches
    features = [0, 5, 700, 1151]
    gamma = model.ln_final.original_component.weight.detach().float()
    logits = (sae.W_dec.detach()[features] * gamma) @ model.W_U.detach().float()
    top, bottom = logits.sort(dim=1, descending=True), logits.sort(dim=1)
    torch.testing.assert_close(up_v[features], top.values[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(down_v[features], bottom.values[:, :6], rtol=1e-5, atol=1e-5)
    assert (up_ids[features] == top.indices[:, :6]).float().mean() > 0.95  # ties aside
    decoded = promoted_tokens(sae, model, features, k=6)
    assert [[t for t, _ in row] for row in decoded] == [
        [model.tokenizer.decode([int(t)]) for t in row] for row in up_ids[features]]


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory) -> ActivationDataset:
    """~4k tokens of the offline corpus at layer 6, in 4 shards (the last one held out)."""
    out = tmp_path_factory.mktemp("acts")
    cfg = ExtractConfig(model="smollm2-135m", layer=LAYER, corpus="python-docs", seq_len=64, batch_size=8,
                        shard_size=1_000, max_tokens=4_000)
    extract(cfg, out, model=model, progress=False)
    return ActivationDataset(out)


@pytest.fixture(scope="module")
def sae(dataset):
    return train_sae(dataset, SAETrainConfig(architecture="topk", k=16, expansion=2, training_tokens=12_288,
                                             batch_size=512, seed=0), progress=False)


@pytest.fixture(scope="module")
def site(sae, dataset, model):
    return feature_pages(sae, dataset, model, FeaturePagesConfig(n_contexts=8, per_band=3), progress=False)


@pytest.fixture(scope="module")
def heldout(dataset):
    _, (shard,) = split_shards(dataset)
    return from_uint16(dataset.shard_bits(shard)).float()


def test_site_numbers_are_the_brute_force_ones(sae, site, heldout):
    """Density, maximum, histogram and the top contexts are those of the dense encoding of every
    held-out token; the activations shown in any context are the encoding at those tokens."""
    dense = sae.encode(heldout).detach()  # [n, d_sae]
    meta, details = site["meta"], site["details"]
    n = len(heldout)
    assert meta["heldout_tokens"] == n and meta["d_sae"] == dense.shape[1] == len(details)
    fired = (dense > 0).sum(0)
    np.testing.assert_allclose(meta["features"]["density"], (fired / n).numpy(), rtol=1e-3)
    assert meta["n_dead"] == int((fired == 0).sum()) and meta["features"]["flag"].count("dead") == meta["n_dead"]
    for f, d in enumerate(details):
        col = dense[:, f]
        on = col[col > 0]
        assert sum(d["hist"]["counts"]) == len(on)
        assert sum(meta["features"]["spark"][f]) == len(on)
        if not len(on):
            assert d["top"] == [] and d["bands"] == [] and meta["features"]["max"][f] == 0
            continue
        assert meta["features"]["max"][f] == pytest.approx(float(on.max()), rel=1e-3)
        # the top contexts: the true top-k over the held-out data
        k = min(8, len(on))
        true = col.topk(k)
        np.testing.assert_allclose([c[3] for c in d["top"]], true.values.numpy(), rtol=1e-3)
        np.testing.assert_allclose(col[[c[0] for c in d["top"]]].numpy(), [c[3] for c in d["top"]], rtol=1e-3)
        # every activation shown in a window is the dense encoding there (absent rows: zero)
        shown = dict((r, v) for r, v in d["acts"])
        for c in d["top"] + [c for b in d["bands"] for c in b["ctx"]]:
            row, lo, hi, value = c
            assert lo <= row <= hi and hi - lo <= meta["before"] + meta["after"]
            window = col[lo : hi + 1].numpy()
            np.testing.assert_allclose([shown.get(r, 0.0) for r in range(lo, hi + 1)], window, rtol=1e-3, atol=1e-6)
        # quantile samples: from their band, below the top contexts
        ranked = on.sort(descending=True).values.numpy()
        for band in d["bands"]:
            assert (band["q"][0], band["q"][1]) in BANDS
            for row, _, _, value in band["ctx"]:
                assert band["lo"] * (1 - 1e-3) <= value <= band["hi"] * (1 + 1e-3)
                assert value <= ranked[min(k, len(ranked)) - 1] * (1 + 1e-3)
            lo_q = np.quantile(ranked, band["q"][0], method="lower")
            hi_q = np.quantile(ranked, band["q"][1], method="higher")
            assert lo_q * (1 - 1e-3) <= band["lo"] and band["hi"] <= hi_q * (1 + 1e-3)


def test_context_activations_equal_the_model_run_again(model, sae, site, dataset):
    """For a sample of features, every activation shown in its top context equals the SAE's encoding of
    the MLP output the model computes again on that context (its sequence rebuilt from the dataset's
    doc_id/tok_pos/token_id: BOS, then the document's tokens from the start of their chunk)."""
    from mechdemo.activations import mlp_outputs

    _, (shard,) = split_shards(dataset)
    table = dataset.table(shard)
    doc, pos, tok = (table.column(c).to_numpy() for c in ("doc_id", "tok_pos", "token_id"))
    step = dataset.manifest["config"]["seq_len"] - 1
    details = site["details"]
    live = [f for f, d in enumerate(details) if d["top"]]
    checked = 0
    for f in live[:: max(1, len(live) // 6)][:6]:
        row, lo, hi, _ = details[f]["top"][0]
        shown = dict((r, v) for r, v in details[f]["acts"])
        chunks: dict[int, list[int]] = {}  # the row where a chunk starts -> the window's rows in it
        for r in range(lo, hi + 1):
            first = r - (pos[r] - (pos[r] // step) * step)
            if first >= 0 and doc[first] == doc[r]:  # (else the chunk began in the previous shard)
                chunks.setdefault(first, []).append(r)
        for first, in_chunk in chunks.items():
            tokens = torch.tensor([[model.tokenizer.bos_token_id, *tok[first : max(in_chunk) + 1].tolist()]])
            out = mlp_outputs(model, tokens, [LAYER])[LAYER][0]  # [pos, d_model]
            with torch.no_grad():  # stored as bf16, then encoded
                again = sae.encode(out.to(torch.bfloat16).float())[:, f]
            for r in in_chunk:
                expected = shown.get(r, 0.0)
                assert float(again[r - first + 1]) == pytest.approx(expected, abs=0.02 * details[f]["hist"]["hi"] + 1e-3), (f, r)
                checked += 1
    assert checked >= 20


def _ui():
    from mechdemo.figures.i18n import LANGUAGES, translations

    return {lang: translations(ui_strings(), lang) for lang in LANGUAGES}


def test_every_ui_string_is_translated():
    strings = ui_strings()
    assert len(strings) > 10
    es = _ui()["es"]  # raises on a string missing from the table
    assert sum(es[s] != s for s in strings) > len(strings) / 2  # Spanish, mostly not the English text


def test_write_site_and_its_refusals(site, tmp_path):
    out = tmp_path / "browser"
    files = write_browser(site, out, _ui(), provenance={"sae": "x"})
    assert {"es/index.html", "es/feature.html", "en/index.html", "en/feature.html", "data/meta.js",
            "data/tokens.js", "assets/browser.js", MARKER} <= set(files)
    chunks = [f for f in files if f.startswith("data/features-")]
    assert len(chunks) == -(-site["meta"]["d_sae"] // site["meta"]["chunk_size"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == files
    es = (out / "es" / "index.html").read_text(encoding="utf-8")
    assert '<html lang="es">' in es and "{{" not in es and not re.search(r"<script[^>]+src=\"(https?:)?//", es)
    assert _load_js(out / "data" / "features-000.js") == site["details"][: site["meta"]["chunk_size"]]
    assert {k: v for k, v in _load_js(out / "data" / "meta.js").items() if k != "provenance"} == site["meta"]
    # an existing browser: only with overwrite; a folder of something else: never
    with pytest.raises(MechdemoError, match="--overwrite"):
        write_browser(site, out, _ui())
    assert write_browser(site, out, _ui(), overwrite=True) == files
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(MechdemoError, match="something other than a feature browser"):
        check_browser_out(other, overwrite=True)
    assert (other / "mine.txt").read_text() == "keep me"
    with pytest.raises(MechdemoError, match="is a file"):
        check_browser_out(other / "mine.txt")


def test_text_activations_and_highlight(model, sae, dataset):
    tokens, acts = text_activations(model, sae, LAYER, "for x in range(10):\n    print(x)")
    assert len(tokens) == acts.shape[0] and acts.shape[1] == sae.cfg.d_sae and "".join(tokens).startswith("for")
    page = highlight_html(tokens, acts, n=2)
    assert page.count("<b>feature") == 2 and "range" in page
    assert "no feature fires" in highlight_html(tokens, torch.zeros_like(acts))


def test_cli_browse(model, dataset, sae, tmp_path, capsys, monkeypatch):
    from mechdemo import models
    from mechdemo.cli import main

    monkeypatch.setattr(models, "load_model", lambda name=None, **kwargs: model)
    saved = save_sae(sae, tmp_path / "sae", SAETrainConfig(architecture="topk", k=16, expansion=2))
    out = tmp_path / "site"
    args = ["sae", "browse", "--sae", str(saved), "--data", str(dataset.path), "--out", str(out), "--features", "100",
            "--contexts", "5", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == 100 and summary["bytes"] == site_bytes(out)
    meta = _load_js(out / "data" / "meta.js")
    assert meta["d_sae"] == 100 and meta["d_sae_total"] == sae.cfg.d_sae
    # again: refused without --overwrite (exit 2, the site untouched), accepted with it
    before = (out / MARKER).read_text()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / MARKER).read_text() == before
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    # mistakes named before any work
    with pytest.raises(SystemExit) as stopped:  # argparse: a missing flag, exit 2
        main(["sae", "browse", "--sae", str(saved), "--data", str(dataset.path), "--json"])
    assert stopped.value.code == 2 and "--out" in capsys.readouterr().err
    assert main(["sae", "browse", "--sae", str(dataset.path), "--data", str(dataset.path), "--out", str(tmp_path / "x")]) == 2
    assert "not a saved SAE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# In a real browser


def _node_ready() -> None:
    if not (CHROMIUM and shutil.which("node") and shutil.which("npm")):
        if os.environ.get("MECHDEMO_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium and node are required here (MECHDEMO_REQUIRE_CHROMIUM is set)")
        pytest.skip("Chromium or node not installed (apt-get install chromium nodejs npm)")
    if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}, timeout=600)


def browse(site_dir: Path, lang: str, feature: int, shots: Path, filter_text: str | None = None) -> dict:
    """Open the index and one feature page in headless Chromium (tests/browser/check_sae_browser.mjs):
    what the DOM holds, the requests that tried to leave the page, and screenshots."""
    _node_ready()
    shots.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CHROME_PATH": CHROMIUM, **({"FILTER": filter_text} if filter_text else {})}
    proc = subprocess.run(["node", str(ROOT / "tests" / "browser" / "check_sae_browser.mjs"), str(site_dir), lang,
                           str(feature), str(shots)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape == (720, 1280) and pixels.std() > 10, png


JS_DATA = re.compile(r"(?:window\.\w+|\(window\.SAE_CHUNKS = window\.SAE_CHUNKS \|\| \{\}\)\[\d+\]) = (.*);\n", re.S)


def _load_js(path: Path):
    """The value a data file (``window.X = ...;`` or a feature chunk) assigns."""
    return json.loads(JS_DATA.fullmatch(path.read_text(encoding="utf-8")).group(1))


def check_pages(site_dir: Path, lang: str, tmp_path: Path) -> None:
    meta, tokens = _load_js(site_dir / "data" / "meta.js"), _load_js(site_dir / "data" / "tokens.js")
    flags = meta["features"]["flag"]
    # a live feature, and a token its top context fires on to filter the index by
    feature = next(f for f, flag in enumerate(flags) if flag == "" and meta["features"]["top_tokens"][f])
    token = tokens["vocab"][meta["features"]["top_tokens"][feature][0][0]]
    report = browse(site_dir, lang, feature, tmp_path / lang, filter_text=token.strip() or None)
    assert report["requests"] == [] and report["errors"] == [], report
    # the index: every feature, each with its mini-histogram, the dead ones marked; the text filter
    assert report["rowCount"] == meta["d_sae"] == int(re.sub(r"\D", "", report["featureCountText"]))
    assert report["sparkCount"] == meta["d_sae"] and report["deadFlagCount"] == flags.count("dead")
    if token.strip():
        expected = sum(any(token.strip().lower() in tokens["vocab"][v].lower() for v, _ in tt)
                       for tt in meta["features"]["top_tokens"])
        assert expected <= report["filteredRowCount"] < meta["d_sae"]
    # the feature page: its top contexts, the first one token by token with its activations
    chunk = _load_js(site_dir / "data" / f"features-{feature // meta['chunk_size']:03d}.js")
    detail = chunk[feature % meta["chunk_size"]]
    assert report["featureIdText"].strip() == str(feature)
    assert report["contextCount"] == len(detail["top"])
    row, lo, hi, value = detail["top"][0]
    first = report["firstContext"]
    assert first["texts"] == [tokens["vocab"][tokens["stream"][r]].replace("\n", "⏎") for r in range(lo, hi + 1)]
    assert first["centerCount"] == 1 and first["centerIndex"] == row - lo
    acts = dict((r, v) for r, v in detail["acts"])
    np.testing.assert_allclose([float(a) for a in first["acts"]], [acts.get(r, 0.0) for r in range(lo, hi + 1)],
                               rtol=1e-3)
    assert float(first["acts"][row - lo]) == pytest.approx(value, rel=1e-3)
    # the histogram drawn; the neighbour links, the first one followed
    assert report["barCount"] == 30 and report["nonzeroBarCount"] == sum(c > 0 for c in detail["hist"]["counts"]) > 0
    assert report["neighbourHrefs"] == [f"feature.html#f={g}" for g, _ in detail["nn"]]
    assert report["neighbourTarget"] == str(detail["nn"][0][0])
    assert report["neighbourFeatureIdText"].strip() == str(detail["nn"][0][0])
    for shot in ("index.png", "feature.png"):
        _not_blank(tmp_path / lang / shot)


def test_built_site_in_a_browser(site, tmp_path):
    out = tmp_path / "browser"
    write_browser(site, out, _ui())
    check_pages(out, "es", tmp_path)


@pytest.mark.parametrize("lang", ["es", "en"])
def test_committed_browser_in_a_browser(lang, tmp_path):
    check_pages(IMG / "sae_browser", lang, tmp_path)


def test_committed_browser_budget_and_the_feature_figures_agree():
    """img/sae_browser: within 5 MB (no file over it), and the features of sae_feature_1, sae_feature_2 have
    the same numbers there as on their slides (their contexts are distinct passages among the browser's top)."""
    site = IMG / "sae_browser"
    assert site_bytes(site) <= 5_000_000
    assert max(p.stat().st_size for p in site.rglob("*") if p.is_file()) <= 5_000_000
    manifest = json.loads((IMG / "manifest.json").read_text())["figures"]
    meta = _load_js(site / "data" / "meta.js")
    tokens = _load_js(site / "data" / "tokens.js")
    assert manifest["sae_browser"]["bytes"] == site_bytes(site)  # what the registry recorded: these files
    for rank in (1, 2):
        fig = manifest[f"sae_feature_{rank}"]["results"]
        f = fig["feature"]
        assert meta["features"]["density"][f] == pytest.approx(fig["frequency"], abs=1e-5)
        detail = _load_js(site / "data" / f"features-{f // meta['chunk_size']:03d}.js")[f % meta["chunk_size"]]
        top = [c[3] for c in detail["top"]]
        assert top[0] == pytest.approx(fig["top_activations"][0], abs=2e-3)  # the strongest is always shown
        assert tokens["vocab"][tokens["stream"][detail["top"][0][0]]] == fig["top_tokens"][0]
        for v in fig["top_activations"]:  # every context shown is one of the browser's, if in its range
            assert v < min(top) - 2e-3 or min(abs(v - b) for b in top) <= 2e-3
