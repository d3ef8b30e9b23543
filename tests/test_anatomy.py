"""Model anatomy: parameter counts against the published sizes and the loaded model, config explained."""

from __future__ import annotations

import pytest

from mechdemo.anatomy import anatomy, parameter_counts
from mechdemo.models import get_spec


@pytest.mark.parametrize("name, total", [
    ("gpt2", 124_439_808),  # GPT-2 small (tied embeddings)
    ("meta-llama/Llama-3.2-1B", 1_235_814_400),  # "1.24B"
    ("smollm2-135m", 134_515_008),
])
def test_parameter_counts_from_the_config_alone(name, total):
    a = anatomy(get_spec(name).published_config())
    counts = a["parameters"]
    assert counts["total"] == total
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert "other" not in counts and "unembedding" not in counts  # all tied, all assigned
    assert not [row["field"] for row in a["config"] if row["meaning"].startswith("(not")]  # every field explained


def test_anatomy_of_the_loaded_model(model):
    a = anatomy(model)
    hf_params = {n: p for n, p in model.original_model.named_parameters()}
    # the loaded weights are the counted ones, plus the zero unembedding bias TransformerLens's bridge adds
    bias = hf_params.pop("lm_head._original_component.bias")
    assert not bias.any()
    assert a["parameters"]["total"] == sum(p.numel() for p in hf_params.values()) == 134_515_008
    tree = a["tree"]
    assert "(0) x 30: LlamaDecoderLayer" in tree and "lm_head: Linear  [tied to embed_tokens]" in tree
    assert tree.count("q_proj") == 1  # the 30 blocks are shown once


def test_cli_anatomy_json_works_offline_for_gpt2():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mechdemo", "anatomy", "--model", "gpt2", "--json"],
                          capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["parameters"]["total"] == 124_439_808 and "(0) x 12: GPT2Block" in out["tree"]
