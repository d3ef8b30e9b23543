"""Activation, attribution and path patching against TransformerLens and hand-made patches."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from mechdemo.ioi import ioi_batch
from mechdemo.models import offline_vocab_size, random_model
from mechdemo.patching import (
    attribution_patching,
    patch_attn_out,
    patch_heads,
    patch_heads_by_position,
    patch_mlp_out,
    patch_resid_pre,
    prepare,
    prepare_ioi,
)
from mechdemo.path_patching import path_patch, path_patch_each_head

ATOL = 2e-4  # normalised metric; the prefix reuse changes summation order only


def _run_and_cache(bridge, batch, reuse_prefix=True):
    run = prepare(bridge, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, reuse_prefix)
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(batch.tokens)
    return run, clean_cache


# Equivalence tests of two implementations do not need the published width: a narrower model of the
# same architecture (head size, GQA group, norms, positions kept; mechdemo.models.random_model).
NARROW = 512


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_activation_patching_of_heads_and_resid_equals_transformer_lens(name, model):
    """`make test`'s share of the comparison below: one layer, two prompts, z and resid_pre."""
    bridge = random_model(name, n_layers=1, vocab_size=offline_vocab_size(), d_model=NARROW)
    batch = ioi_batch(model, 0, 2)
    run, clean_cache = _run_and_cache(bridge, batch)
    args = (bridge, batch.corrupted_tokens, clean_cache, run.metric)
    with torch.no_grad():
        torch.testing.assert_close(patch_heads(run, "z"), tlp.get_act_patch_attn_head_out_all_pos(*args).float(),
                                   atol=ATOL, rtol=0)
        if name == "gpt2":  # one forward pass per position: the cheaper model
            torch.testing.assert_close(patch_resid_pre(run), tlp.get_act_patch_resid_pre(*args).float(),
                                       atol=ATOL, rtol=0)


@pytest.mark.parametrize("metric", ["probability", "kl"])
def test_any_metric_patches_as_transformer_lens_does(metric, model):
    """The metric is a parameter: the answer's probability and the KL from the clean distribution
    give TransformerLens's results too (its loop calls ``run.metric`` on full logits; ours reads the
    final residual stream), normalised the same way; path patching with nothing patched scores 1."""
    bridge = random_model("gpt2", n_layers=1, vocab_size=offline_vocab_size(), d_model=NARROW)
    batch = ioi_batch(model, 0, 2)
    run = prepare(bridge, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, metric=metric)
    assert run.measure.name == metric
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(batch.tokens)
        theirs = tlp.get_act_patch_attn_head_out_all_pos(bridge, batch.corrupted_tokens, clean_cache, run.metric)
        torch.testing.assert_close(patch_heads(run, "z"), theirs.float(), atol=ATOL, rtol=0)
        # (full logits vs the final residual stream: the same numbers to float rounding)
        assert run.metric(bridge(batch.tokens)).item() == pytest.approx(1.0, abs=1e-3)
        assert run.metric(bridge(batch.corrupted_tokens)).item() == pytest.approx(0.0, abs=1e-3)
    assert path_patch(run, [[]], "logits").tolist() == [1.0]


@pytest.mark.full  # TransformerLens runs one full forward pass per patch: minutes
@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_activation_patching_equals_transformer_lens(name, model, random_bridge):
    # TL runs one full forward per patch; a 128k-token unembedding makes each Llama one slow: 1 layer
    bridge = random_bridge(name) if name == "gpt2" else random_model(name, n_layers=1, vocab_size=offline_vocab_size())
    batch = ioi_batch(model, 0, 4)
    run, clean_cache = _run_and_cache(bridge, batch)
    args = (bridge, batch.corrupted_tokens, clean_cache, run.metric)
    with torch.no_grad():
        pairs = [
            (patch_resid_pre(run), tlp.get_act_patch_resid_pre(*args)),
            (patch_heads(run, "z"), tlp.get_act_patch_attn_head_out_all_pos(*args)),
            (patch_heads(run, "q"), tlp.get_act_patch_attn_head_q_all_pos(*args)),
            (patch_heads(run, "pattern"), tlp.get_act_patch_attn_head_pattern_all_pos(*args)),
        ]
        if name == "gpt2":
            # TL's k/v functions index query heads (with GQA k and v have fewer heads), and its
            # by-position loop is one full forward per (layer, position, head): GPT-2 only.
            pairs += [(patch_heads(run, "k"), tlp.get_act_patch_attn_head_k_all_pos(*args)),
                      (patch_heads(run, "v"), tlp.get_act_patch_attn_head_v_all_pos(*args)),
                      (patch_heads_by_position(run), tlp.get_act_patch_attn_head_out_by_pos(*args))]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs.float(), atol=ATOL, rtol=0)


def test_layer_outputs_equal_manual_patches(model, random_bridge):
    """attn_out / mlp_out patching against a hand-written hook on the full forward pass."""
    bridge = random_bridge("meta-llama/Llama-3.2-1B")
    batch = ioi_batch(model, 0, 4)
    run, clean_cache = _run_and_cache(bridge, batch)
    for fn, hook in ((patch_attn_out, "hook_attn_out"), (patch_mlp_out, "hook_mlp_out")):
        ours = fn(run)
        for layer in range(bridge.cfg.n_layers):
            name = f"blocks.{layer}.{hook}"
            with torch.no_grad():
                logits = bridge.run_with_hooks(batch.corrupted_tokens, fwd_hooks=[(name, lambda a, hook, n=name: clean_cache[n])])
            assert ours[layer].item() == pytest.approx(run.metric(logits).item(), abs=ATOL)


@pytest.fixture(scope="module")
def offline_heads(model):
    """Head patching (z) on four IOI prompts of the offline model: (batch, run, scores), computed once
    for the tests that check it against manual patches and against attribution patching."""
    batch = ioi_batch(model, 0, 4)
    run = prepare_ioi(model, batch)
    return batch, run, patch_heads(run, "z")


def test_offline_model_head_patching_equals_manual_patches(model, offline_heads):
    batch, run, ours = offline_heads
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_z"))
    for layer, head in [(23, 3), (17, 4), (5, 2)]:
        name = f"blocks.{layer}.attn.hook_z"

        def hook(act, hook, head=head, name=name):
            act[:, :, head] = clean[name][:, :, head]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(batch.corrupted_tokens, fwd_hooks=[(name, hook)])
        assert ours[layer, head].item() == pytest.approx(run.metric(logits).item(), abs=ATOL)


def test_patching_the_only_difference_restores_the_clean_run(model):
    batch = ioi_batch(model, 0, 2)
    run = prepare_ioi(model, batch)
    resid = patch_resid_pre(run)
    s2 = int(batch.positions["S2"][0])
    assert resid[0, s2].item() == pytest.approx(1.0, abs=1e-4)  # layer 0, S2: the whole difference
    others = [p for p in range(batch.tokens.shape[1]) if p != s2]
    assert resid[0, others].abs().max().item() < 1e-4  # identical activations: no-op patches


def test_prefix_reuse_gives_the_same_results(model, random_bridge):
    batch = ioi_batch(model, 1, 4)
    model = random_bridge("gpt2")  # learned positions: the suffix must keep its positions
    fast = prepare_ioi(model, batch)
    slow = prepare(model, batch.tokens, batch.corrupted_tokens, batch.correct, batch.incorrect, reuse_prefix=False)
    assert fast.prefix == int(batch.positions["S2"][0]) and slow.prefix == 0
    torch.testing.assert_close(patch_heads(fast, "z"), patch_heads(slow, "z"), atol=ATOL, rtol=0)


def test_attribution_patching_tracks_activation_patching(model, offline_heads):
    _, run, exact = offline_heads
    estimate = attribution_patching(run)["heads"]
    r = torch.corrcoef(torch.stack([estimate.flatten(), exact.flatten()]))[0, 1]
    assert r > 0.9
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_path_patching_with_no_senders_changes_nothing(model):
    run = prepare_ioi(model, ioi_batch(model, 0, 4))
    assert path_patch(run, [[]], "logits").tolist() == [1.0]
    # batched with a real sender set, the empty copy still reproduces the clean run (up to float reordering)
    assert path_patch(run, [[], [(5, 1)]], [(20, 0, "q"), (23, 1, "k")])[0].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("which", ["default", "gpt2"])
def test_path_patching_last_layer_head_equals_reverse_activation_patching(which, model, random_bridge):
    """A last-layer head's only path is the direct one: path patching = corrupting that head in the clean run."""
    batch = ioi_batch(model, 0, 4)
    model = model if which == "default" else random_bridge(which)
    run = prepare_ioi(model, batch)
    last = model.cfg.n_layers - 1
    scores = path_patch(run, [[(last, h)] for h in (0, 1)], "logits")
    with torch.no_grad():
        _, corrupted = model.run_with_cache(batch.corrupted_tokens, names_filter=f"blocks.{last}.attn.hook_z")
    for i, head in enumerate((0, 1)):
        def hook(act, hook, head=head):
            act[:, :, head] = corrupted[f"blocks.{last}.attn.hook_z"][:, :, head]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=[(f"blocks.{last}.attn.hook_z", hook)])
        assert scores[i].item() == pytest.approx(run.metric(logits).item(), abs=ATOL)


def test_path_patching_rejects_senders_after_receivers(model):
    run = prepare_ioi(model, ioi_batch(model, 0, 2))
    with pytest.raises(ValueError, match="cannot reach"):
        path_patch(run, [[(25, 0)]], [(20, 0, "q")])
    scan = path_patch_each_head(run, [(2, 0, "v")])
    assert scan.shape == (30, 9) and scan[2:].isnan().all() and not scan[:2].isnan().any()


def _naive_path_patch(model, batch, senders, receivers, run):
    """Wang et al.'s three runs written out with hooks on whole forward passes: one per sender set."""
    from mechdemo.weight_circuits import kv_head

    n_layers = model.cfg.n_layers
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens, names_filter=z_names)
        _, corrupted = model.run_with_cache(batch.corrupted_tokens, names_filter=z_names)
    hooks_in = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v"}
    scores = []
    for group in senders:
        # hook.name is the bridge's resolved name: each hook closes over the name it was given
        def freeze(act, hook, layer, name):
            act[:] = clean[name]
            for l, h in group:
                if l == layer:
                    act[:, :, h] = corrupted[name][:, :, h]
            return act

        hooks = [(name, lambda act, hook, l=l, name=name: freeze(act, hook, l, name)) for l, name in enumerate(z_names)]
        recorded = {}
        if receivers != "logits":
            for name in {f"blocks.{l}.{hooks_in[k]}" for l, _, k in receivers}:
                def record(act, hook, name=name):
                    recorded[name] = act.detach().clone()
                    return act
                hooks.append((name, record))
        with torch.no_grad():
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
            if receivers != "logits":
                def replace(act, hook, name):
                    layer, kind = int(name.split(".")[1]), name.split("hook_")[-1]
                    for l, h, k in receivers:
                        if l == layer and k == kind:
                            col = h if k == "q" else kv_head(model, h)
                            act[:, :, col] = recorded[name][:, :, col]
                    return act
                logits = model.run_with_hooks(batch.tokens, fwd_hooks=[
                    (name, lambda act, hook, name=name: replace(act, hook, name)) for name in recorded])
        scores.append(run.metric(logits).item())
    return torch.tensor(scores)


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_path_patching_equals_the_naive_three_runs(name, model, random_bridge):
    """The frozen-heads fast path (MLPs only in step 2, the answer position only for the logits) gives
    what the three hooked forward passes of Wang et al. give, for LayerNorm/learned positions and
    RMSNorm/RoPE/GQA, for the logits and for q, k and v receivers, several sender sets batched."""
    bridge = random_model(name, n_layers=3, vocab_size=offline_vocab_size(), d_model=NARROW)
    batch = ioi_batch(model, 0, 2)
    run = prepare_ioi(bridge, batch)
    cases = [
        ([[(0, 0)], [(1, 3), (0, 2)], [], [(2, 1)]], "logits"),
        ([[(0, 1)], [(0, 0), (1, 2)], [(1, 5)]], [(2, 0, "q"), (2, 3, "k")]),
        ([[(0, 4)], [(0, 1), (0, 7)]], [(1, 2, "v"), (2, 1, "q")]),
    ]
    for senders, receivers in cases:
        fast = path_patch(run, senders, receivers)
        naive = _naive_path_patch(bridge, batch, senders, receivers, run)
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
        assert (fast - 1).abs().max() > 1e-3  # the paths do change something: the comparison is not vacuous
