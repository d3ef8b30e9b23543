"""Partial forward passes reproduce the full forward pass, for every architecture path."""

from __future__ import annotations

import pytest
import torch

from mechdemo.forward import block_context, run_blocks
from mechdemo.readout import logit_diff_from_resid

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "When Tom and Anna went to the park, Anna gave a ball to"]


@pytest.mark.parametrize("which", ["default", "gpt2", "meta-llama/Llama-3.2-1B"])
@pytest.mark.parametrize("prefix", [0, 9])
def test_running_from_any_layer_equals_the_full_forward(which, prefix, model, random_bridge):
    bridge = model if which == "default" else random_bridge(which)
    tokens = bridge.to_tokens(PROMPTS)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    context = block_context(bridge, tokens, prefix)
    last = f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"
    scale = cache[last].abs().max().item()
    for start in range(0, bridge.cfg.n_layers, 7 if which == "default" else 1):
        resid = cache[f"blocks.{start}.hook_resid_pre"][:, prefix:].repeat(3, 1, 1)  # three copies of the batch
        with torch.no_grad():
            out = run_blocks(bridge, resid, start, context)
        # without a prefix the arithmetic is identical; with one, attention over cached keys
        # sums in another order (relative error ~1e-7)
        tol = 0 if prefix == 0 else 1e-6 * scale
        torch.testing.assert_close(out, cache[last][:, prefix:].repeat(3, 1, 1), atol=tol, rtol=0)
    correct, incorrect = torch.tensor([5, 6]), torch.tensor([7, 8])
    with torch.no_grad():
        ld = logit_diff_from_resid(bridge, cache[last][:, -1], correct, incorrect)
    rows = torch.arange(2)
    torch.testing.assert_close(ld, logits[rows, -1, correct] - logits[rows, -1, incorrect], atol=1e-4, rtol=1e-5)


def test_padded_batches_are_refused(model):
    tokens = model.to_tokens(PROMPTS)
    context = block_context(model, tokens)
    with pytest.raises(ValueError, match="positions"):
        run_blocks(model, torch.zeros(2, tokens.shape[1] + 1, model.cfg.d_model), 0, context)
