"""Sites and interventions (mechdemo.interventions) against TransformerLens's own caching and hooks,
on a random GPT-2 and a random Llama."""

from __future__ import annotations

import pytest
import torch

from mechdemo.errors import MechdemoError, OutOfRangeError
from mechdemo.interventions import (
    SITES, add, check_site, hooks, parse_site, project_out, record, replace, run, site, switches_on, zero,
)

ARCHS = ["gpt2", "meta-llama/Llama-3.2-1B"]


def _tokens(n=2, pos=6):
    return torch.randint(5, 900, (n, pos), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ARCHS)
def test_every_site_is_a_hook_point_of_the_model(random_bridge, name):
    model = random_bridge(name)
    for kind, spec in SITES.items():
        if kind == "pos_embed" and name != "gpt2":
            with pytest.raises(MechdemoError, match="no learned position"):
                check_site(model, site(kind))
            continue
        hook = site(kind, 1 if spec.per_layer else None)
        check_site(model, hook)
        assert parse_site(hook) == (kind, 1 if spec.per_layer else None)
        with switches_on(model):
            assert hook in model.hook_dict, hook


def test_site_errors_name_the_fix(random_bridge):
    model = random_bridge("gpt2")
    with pytest.raises(MechdemoError, match="unknown site 'mlp_output'.*mlp_out"):
        site("mlp_output", 0)
    with pytest.raises(MechdemoError, match="per layer"):
        site("resid_pre")
    with pytest.raises(OutOfRangeError, match="layers 0..1"):
        check_site(model, site("resid_pre", 2))
    with pytest.raises(MechdemoError, match="not a site name"):
        parse_site("blocks.x.hook_resid_pre")


@pytest.mark.parametrize("name", ARCHS)
def test_record_equals_transformer_lens_cache(random_bridge, name):
    model = random_bridge(name)
    names = [site("resid_pre", 1), site("z", 0), site("pattern", 1), site("mlp_out", 0), site("final")]
    with torch.no_grad():
        _, theirs = model.run_with_cache(_tokens(), names_filter=names)
        with record(model, names) as ours:
            model(_tokens())
        logits, also = run(model, _tokens(), names=names)
    for n in names:
        assert torch.equal(ours[n], theirs[n]) and torch.equal(also[n], theirs[n]), n
    torch.testing.assert_close(logits, model(_tokens()))


@pytest.mark.parametrize("name", ARCHS)
def test_stop_after_returns_the_same_activation(random_bridge, name):
    model = random_bridge(name)
    with torch.no_grad():
        logits, full = run(model, _tokens(), names=[site("resid_mid", 0)])
        none, stopped = run(model, _tokens(), stop_after=site("resid_mid", 0))
    assert none is None and torch.equal(full[site("resid_mid", 0)], stopped[site("resid_mid", 0)])


def test_switches_are_on_only_inside_and_restored(random_bridge):
    model = random_bridge("meta-llama/Llama-3.2-1B")
    seen = {}

    def keep(act, hook):
        seen["shape"] = tuple(act.shape)

    assert not model.cfg.use_split_qkv_input
    with torch.no_grad(), hooks(model, [(site("q_input", 1), keep)]):
        assert model.cfg.use_split_qkv_input
        model(_tokens())
    assert not model.cfg.use_split_qkv_input
    assert seen["shape"] == (2, 6, model.cfg.n_heads, model.cfg.d_model)  # forked per query head


@pytest.mark.parametrize("name", ARCHS)
def test_add_changes_the_stream_by_exactly_the_vector_there_and_nowhere_before(random_bridge, name):
    model = random_bridge(name)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    names = [site("resid_pre", 0), site("resid_post", 0), site("resid_pre", 1)]
    with torch.no_grad():
        _, base = run(model, _tokens(), names=names)
        _, steered = run(model, _tokens(), [add(site("resid_post", 0), v, alpha=2.5, positions=[3])], names=names)
    assert torch.equal(base[names[0]], steered[names[0]])  # upstream untouched
    for recorded in names[1:]:  # at the site itself (recorders see the edit) and where the stream goes next
        delta = steered[recorded] - base[recorded]
        torch.testing.assert_close(delta[:, 3], (2.5 * v).expand(2, -1))
        assert delta[:, [0, 1, 2, 4, 5]].abs().max() == 0


@pytest.mark.parametrize("name", ARCHS)
def test_project_out_leaves_no_component_and_replace_and_zero_replace(random_bridge, name):
    model = random_bridge(name)
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    where = site("resid_pre", 1)
    with torch.no_grad():
        _, out = run(model, _tokens(), [project_out(where, d)], names=[where])
        assert (out[where] @ (d / d.norm())).abs().max() < 1e-4
        _, out = run(model, _tokens(), [zero(site("mlp_out", 0))], names=[site("mlp_out", 0)])
        assert out[site("mlp_out", 0)].abs().max() == 0
        value = torch.full((model.cfg.d_model,), 0.5)
        _, out = run(model, _tokens(), [replace(where, value, (slice(None), 2))], names=[where])
        assert torch.equal(out[where][:, 2], value.expand(2, -1))
