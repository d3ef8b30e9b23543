"""The deck for another model, end to end and offline (#17): every figure computed on a random-weight
model of the GPT-2 or the Llama architecture, then both decks resolved from its manifest.

A random model is the hardest case for the figure code: no induction head, no IOI circuit, an SAE
on noise. Every figure must still be drawn (with a visible note where a result is missing) and the
deck must still build, naming this model and nothing of the default model (whose names and head
labels are searched for in the built Markdown).

The test models are registered only here (a ModelSpec with a few-layer, narrow published config, the
offline tokenizer's vocabulary) and lent to ``run_figures``, the function behind ``mechdemo figures``:
the same code path as the CLI without a second process loading the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(family: str):
    """A 3-layer, 128-wide config of the family: GPT-2 (learned positions, multi-head attention)
    or Llama (RoPE, grouped-query attention, SwiGLU)."""
    from transformers import GPT2Config, LlamaConfig

    from mechdemo.models import offline_vocab_size

    if family == "gpt2":
        return GPT2Config(n_layer=3, n_embd=128, n_head=4, n_positions=512, vocab_size=offline_vocab_size())
    return LlamaConfig(vocab_size=offline_vocab_size(), hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                       tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def default_model_words() -> set[str]:
    """What must not appear on another model's slides: the default model's names, and the head
    labels of the committed deck that no 3-layer model can have."""
    from mechdemo.models import DEFAULT_MODEL, get_spec

    spec = get_spec(DEFAULT_MODEL)
    words = {spec.display_name, spec.name, "SmolLM2", "135M"}
    committed = (ROOT / "img" / "manifest.json").read_text(encoding="utf-8")
    words |= {f"L{l}H{h}" for l, h in re.findall(r'"layer": (\d+), "head": (\d+)', committed) if int(l) >= 3}
    return words


# About a minute per model (every model figure drawn in two languages): `make check`'s tier.
@pytest.mark.full
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_figure_and_both_decks_for_a_random_model(family, tmp_path, monkeypatch):
    from mechdemo.figures import FIGURES
    from mechdemo.figures.registry import MANIFEST, run_figures
    from mechdemo.models import MODELS, ModelSpec, random_model

    name = f"random-{family}"
    spec = ModelSpec(name=name, display_name=f"Random {family.upper()}-3L", description="test model",
                     published_config=lambda: tiny_config(family))
    monkeypatch.setitem(MODELS, name, spec)
    monkeypatch.setenv("MECHDEMO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "img"
    # The toy-model figures need no model: they are the same in every deck (their committed entries
    # are merged below); every figure computed on a model runs here.
    on_model = [n for n, f in FIGURES.items() if f.needs_model]
    entries = run_figures(on_model, model_name=name, out_dir=out, progress=False, scale="small",
                          models={name: random_model(name, seed=1)})
    assert set(entries) == set(on_model)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["model"]["name"] == name and manifest["model"]["family"] == family
    assert manifest["model"]["gqa"] is (family == "llama")
    for figure, entry in entries.items():
        assert entry["model"] == name, figure
        for f in entry["files"]:
            # a picture is more than 5 kB; a site figure's files (pages, data chunks) may be smaller
            assert (out / f).stat().st_size > (0 if FIGURES[figure].site else 5_000), f
    committed = json.loads((ROOT / "img" / MANIFEST).read_text(encoding="utf-8"))["figures"]
    manifest["figures"].update({n: e for n, e in committed.items() if not FIGURES[n].needs_model})
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")

    if not shutil.which("node"):
        if os.environ.get("MECHDEMO_REQUIRE_CHROMIUM"):
            pytest.fail("node required here (MECHDEMO_REQUIRE_CHROMIUM is set) but not found")
        pytest.skip("node not installed: the figures ran, the decks are not resolved")
    dist = tmp_path / "dist"
    proc = subprocess.run(["node", "slides/build.mjs", "--resolve-only"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MECHDEMO_IMG": str(out), "MECHDEMO_MODEL": name,
                                            "SLIDES_DIST": str(dist)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    forbidden = default_model_words()
    for lang in ("es", "en"):
        text = (dist / f"deck.{lang}.md").read_text(encoding="utf-8")
        assert "{{" not in text
        assert text.count(spec.display_name) >= 20, lang  # the captions name this model
        left = sorted(w for w in forbidden if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text))
        assert not left, f"deck.{lang}.md built for {name} still shows the default model's {left}"
