"""`mechdemo models` and the command-line entry points."""

from __future__ import annotations

import json
import subprocess
import sys

from mechdemo.cli import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in data["models"]}
    assert data["default"] == "smollm2-135m"
    assert set(by_name) >= {"smollm2-135m", "gpt2", "meta-llama/Llama-3.2-1B"}
    assert by_name["smollm2-135m"]["offline"].startswith("yes")
    assert by_name["meta-llama/Llama-3.2-1B"]["gated"] is True
    assert by_name["meta-llama/Llama-3.2-1B"]["n_kv_heads"] == 8
    assert by_name["gpt2"]["norm"] == "LayerNorm" and by_name["gpt2"]["positions"] == "learned"


def test_models_table_and_console_script():
    proc = subprocess.run([sys.executable, "-m", "mechdemo", "models"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m *" in proc.stdout and "available offline now" in proc.stdout


def test_models_prepare_leaves_the_weights_a_load_uses(model, capsys):
    """`make setup` runs `mechdemo models --prepare`: afterwards the offline model's dequantized
    weights are in the cache (here already, from the session model's load: the command verifies them)."""
    from mechdemo.weights_cache import cache_root

    assert main(["models", "--prepare"]) == 0
    err = capsys.readouterr().err
    folder = model.original_model.name_or_path  # where the session model was loaded from
    assert str(folder) in err and str(cache_root()) in str(folder)


def test_figures_list(capsys):
    assert main(["figures", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "transformer_decoder" for r in rows)
