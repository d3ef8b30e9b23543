"""Sites and interventions: the one way mechdemo reads or changes a model's activations.

A **site** is a named place in the forward pass: ``site("resid_pre", 3)`` is the residual stream
entering block 3, ``site("z", 7)`` the heads' value-weighted sums in layer 7, ``site("final")`` the
residual stream entering the final norm. Sites are TransformerLens hook points
(``blocks.3.hook_resid_pre``); :data:`SITES` lists every kind with what it holds, so hook names are
never spelled by hand.

An **intervention** is a list of hooks, ``(site name, function)`` pairs, active for the duration of
a ``with hooks(model, [...])`` block. The function receives the activation (and the hook point) and
returns the activation to use from there on (or ``None`` to keep it). Reading is an intervention that
changes nothing (:func:`record`); patching replaces an activation by its value on another input;
ablation replaces it by a mean or zero; steering adds a direction; directional ablation projects one
out. Each is a small function that returns hooks (:func:`replace`, :func:`add`, :func:`project_out`,
:func:`zero`), in the manner of TransformerLens's ``patching.py``, where each patching experiment is
a setter given to one generic function. Every technique of the package goes through :func:`hooks`.

**Why not ``model.hooks`` / ``run_with_hooks``.** TransformerBridge rebuilds its hook dictionary for
every hook it adds (~25 ms each on a laptop CPU): 4 s for the ~180 hooks of one edge-patched forward
pass, eight times the pass itself. :func:`hooks` has the same semantics (aliases, the gating check,
removal of exactly these hooks on exit) with every name resolved once per block.

**Sites behind a switch.** A few hook points exist only when the bridge computes them separately:
each head's Q/K/V input (``q_input``...: the residual stream forked per head, ``use_split_qkv_input``),
each head's output (``result``: ``z @ W_O`` per head, ``use_attn_result``) and each MLP's residual
input (``mlp_resid_in``, ``use_hook_mlp_in``). :func:`hooks` switches on what its sites need and
restores the switches on exit; :func:`switches_on` keeps them on for a whole computation (their
outputs equal the plain forward pass's only to ~1e-4: per-head norms sum in another order, so runs
that are compared should all be made with the same switches).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.errors import MechdemoError, OutOfRangeError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[Tensor, Any], "Tensor | None"]
Hook = tuple[str, HookFn]


@dataclass(frozen=True)
class SiteKind:
    template: str  # the hook name, with {layer} for per-layer sites
    holds: str  # what the activation is, and its shape
    switch: str | None = None  # the bridge setting this hook point needs

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.template


SITES: dict[str, SiteKind] = {
    "embed": SiteKind("hook_embed", "token embeddings [batch, pos, d_model]"),
    "pos_embed": SiteKind("hook_pos_embed", "learned position embeddings (GPT-2) [batch, pos, d_model]"),
    "resid_pre": SiteKind("blocks.{layer}.hook_resid_pre", "residual stream entering the block [batch, pos, d_model]"),
    "resid_mid": SiteKind("blocks.{layer}.hook_resid_mid", "residual stream after attention, before the MLP's norm "
                                                           "[batch, pos, d_model]"),
    "resid_post": SiteKind("blocks.{layer}.hook_resid_post", "residual stream leaving the block [batch, pos, d_model]"),
    "attn_out": SiteKind("blocks.{layer}.hook_attn_out", "attention output, all heads and bias [batch, pos, d_model]"),
    "mlp_in": SiteKind("blocks.{layer}.mlp.hook_in", "the MLP's input, after its norm [batch, pos, d_model]"),
    "mlp_out": SiteKind("blocks.{layer}.hook_mlp_out", "the MLP's output [batch, pos, d_model]"),
    "q": SiteKind("blocks.{layer}.attn.hook_q", "queries [batch, pos, n_heads, d_head]"),
    "k": SiteKind("blocks.{layer}.attn.hook_k", "keys [batch, pos, n_kv_heads, d_head]"),
    "v": SiteKind("blocks.{layer}.attn.hook_v", "values [batch, pos, n_kv_heads, d_head]"),
    "z": SiteKind("blocks.{layer}.attn.hook_z", "each head's value-weighted sum [batch, pos, n_heads, d_head]"),
    "attn_scores": SiteKind("blocks.{layer}.attn.hook_attn_scores", "pre-softmax scores [batch, n_heads, q, k]"),
    "pattern": SiteKind("blocks.{layer}.attn.hook_pattern", "attention pattern [batch, n_heads, q, k]"),
    "ln1_scale": SiteKind("blocks.{layer}.ln1.hook_scale", "the attention norm's scale [batch, pos, 1]"),
    "ln2_scale": SiteKind("blocks.{layer}.ln2.hook_scale", "the MLP norm's scale [batch, pos, 1]"),
    "q_input": SiteKind("blocks.{layer}.attn.hook_q_input", "each query head's residual input "
                                                            "[batch, pos, n_heads, d_model]", "use_split_qkv_input"),
    "k_input": SiteKind("blocks.{layer}.attn.hook_k_input", "each key head's residual input "
                                                            "[batch, pos, n_kv_heads, d_model]", "use_split_qkv_input"),
    "v_input": SiteKind("blocks.{layer}.attn.hook_v_input", "each value head's residual input "
                                                            "[batch, pos, n_kv_heads, d_model]", "use_split_qkv_input"),
    "result": SiteKind("blocks.{layer}.attn.hook_result", "each head's output z @ W_O "
                                                          "[batch, pos, n_heads, d_model]", "use_attn_result"),
    "mlp_resid_in": SiteKind("blocks.{layer}.hook_mlp_in", "the MLP's own copy of the residual stream, before its "
                                                           "norm [batch, pos, d_model]", "use_hook_mlp_in"),
    "final": SiteKind("ln_final.hook_in", "the final residual stream, entering the final norm [batch, pos, d_model]"),
    "final_scale": SiteKind("ln_final.hook_scale", "the final norm's scale [batch, pos, 1]"),
}
SWITCHES = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")


def site(kind: str, layer: int | None = None) -> str:
    """The hook name of site ``kind`` (a key of :data:`SITES`) in ``layer`` (per-layer sites only)."""
    if kind not in SITES:
        raise MechdemoError(f"unknown site {kind!r}: choose one of {', '.join(SITES)}")
    spec = SITES[kind]
    if spec.per_layer and layer is None:
        raise MechdemoError(f"site {kind!r} is per layer: give a layer")
    if not spec.per_layer and layer is not None:
        raise MechdemoError(f"site {kind!r} is not per layer (it has no layer {layer})")
    return spec.template.format(layer=layer)


def sites(kind: str, layers: Sequence[int]) -> list[str]:
    """:func:`site` of ``kind`` in each of ``layers``."""
    return [site(kind, layer) for layer in layers]


def parse_site(name: str) -> tuple[str, int | None]:
    """``(kind, layer)`` of a hook name :func:`site` makes (``blocks.3.hook_mlp_out`` → ``("mlp_out", 3)``)."""
    for kind, spec in SITES.items():
        if not spec.per_layer:
            if name == spec.template:
                return kind, None
            continue
        head, _, tail = spec.template.partition("{layer}")
        if name.startswith(head) and name.endswith(tail):
            middle = name[len(head) : len(name) - len(tail)]
            if middle.isdigit():
                return kind, int(middle)
    raise MechdemoError(f"{name!r} is not a site name: sites are {', '.join(SITES)} (e.g. {site('mlp_out', 0)})")


def check_site(model: "TransformerBridge", name: str) -> None:
    """An error naming the valid range if ``name``'s layer is not in ``model``, or the kind does not exist
    in this architecture (``pos_embed`` on a rotary model)."""
    kind, layer = parse_site(name)
    n = model.cfg.n_layers
    if layer is not None and not 0 <= layer < n:
        raise OutOfRangeError(f"layer {layer} is out of range: {model.cfg.model_name} has layers 0..{n - 1}")
    if kind == "pos_embed" and model.cfg.positional_embedding_type != "standard":
        raise MechdemoError(f"{model.cfg.model_name} has no learned position embeddings (it uses "
                            f"{model.cfg.positional_embedding_type} positions): site 'pos_embed' does not exist")


def switches_needed(names: Sequence[str]) -> set[str]:
    """The bridge switches the hook points ``names`` need (see the module docstring)."""
    needed = set()
    for name in names:
        try:
            kind, _ = parse_site(name)
        except MechdemoError:
            continue  # a hook point that is not a site: no switch
        if SITES[kind].switch:
            needed.add(SITES[kind].switch)
    return needed


@contextmanager
def switches_on(model: "TransformerBridge", switches: Sequence[str] = SWITCHES) -> Iterator[None]:
    """Turn the bridge ``switches`` on (per-head Q/K/V inputs, per-head outputs, MLP residual inputs)
    for the block; each is restored on exit to what it was."""
    setters = {"use_split_qkv_input": model.set_use_split_qkv_input, "use_attn_result": model.set_use_attn_result,
               "use_hook_mlp_in": model.set_use_hook_mlp_in}
    turned = [s for s in switches if not bool(getattr(model.cfg, s, False))]
    try:
        for switch in turned:
            setters[switch](True)
        yield
    finally:
        for switch in turned:
            setters[switch](False)


@contextmanager
def hooks(model: "TransformerBridge", fwd_hooks: Sequence[Hook] = ()) -> Iterator[None]:
    """The hooks ``fwd_hooks`` active on every forward pass inside the block (and removed on exit,
    whatever happens); the switches their sites need are on meanwhile."""
    from transformer_lens.model_bridge.bridge import build_alias_to_canonical_map

    fwd_hooks = list(fwd_hooks)
    if not fwd_hooks:
        yield
        return
    with ExitStack() as stack:
        needed = switches_needed([name for name, _ in fwd_hooks])
        if needed:
            stack.enter_context(switches_on(model, sorted(needed)))
        hook_dict = model.hook_dict
        aliases = build_alias_to_canonical_map(hook_dict)
        level = model.context_level + 1
        added = []
        try:
            model.context_level = level
            for name, fn in fwd_hooks:
                canonical = aliases.get(name, name)
                if canonical not in hook_dict:
                    raise ValueError(f"no hook point {name!r} in {model.cfg.model_name}")
                model.check_hooks_to_add(canonical)
                point = hook_dict[canonical]
                if getattr(model, "compatibility_mode", False) and canonical != point.name and point.name is not None:
                    point.add_hook(fn, dir="fwd", level=level, alias_names=[point.name, canonical])
                else:
                    point.add_hook(fn, dir="fwd", level=level)
                added.append(point)
            yield
        finally:
            for point in added:
                point.remove_hooks(dir="fwd", level=level)
            model.context_level = level - 1


# --- reading ---------------------------------------------------------------------------------------


def recorder(store: dict[str, Tensor], name: str, detach: bool = True, transform: Callable | None = None,
             key: str | None = None) -> Hook:
    """A hook that keeps the activation at ``name`` in ``store[key or name]`` (detached unless told
    otherwise; ``transform`` applied first, e.g. to keep one position) and changes nothing."""

    def keep(act: Tensor, hook: Any) -> None:
        value = transform(act) if transform is not None else act
        store[key or name] = value.detach() if detach else value
        return None

    return name, keep


@contextmanager
def record(model: "TransformerBridge", names: Sequence[str], detach: bool = True) -> Iterator[dict[str, Tensor]]:
    """Inside the block, every forward pass stores its activation at each site of ``names`` in the
    dictionary yielded (the last pass's values)."""
    store: dict[str, Tensor] = {}
    with hooks(model, [recorder(store, name, detach) for name in names]):
        yield store


class _Stop(Exception):
    """Raised by :func:`run` after its last needed site: the rest of the forward pass is not needed."""


def run(
    model: "TransformerBridge",
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[Hook] = (),
    names: Sequence[str] = (),
    stop_after: str | None = None,
    stop_at_layer: int | None = None,
) -> tuple[Float[Tensor, "batch pos d_vocab"] | None, dict[str, Tensor]]:
    """One forward pass of ``tokens`` with the intervention ``fwd_hooks``, recording ``names``:
    ``(logits, {name: activation})``. With ``stop_after`` (a site name) the pass stops once that site
    is computed (no logits: ``None``); ``stop_at_layer`` stops before that block (the bridge's own).
    Gradients flow unless the caller is inside ``torch.no_grad()``."""
    store: dict[str, Tensor] = {}
    recorders = [recorder(store, name) for name in names]
    stops = []
    if stop_after is not None:
        def stop(act: Tensor, hook: Any) -> None:
            store[stop_after] = act
            raise _Stop

        stops = [(stop_after, stop)]
    logits = None
    try:
        with hooks(model, [*fwd_hooks, *recorders, *stops]):
            out = model(tokens.to(model.cfg.device), stop_at_layer=stop_at_layer)
            logits = out if stop_at_layer is None else None
    except _Stop:
        pass
    return logits, store


# --- changing ---------------------------------------------------------------------------------------


def replace(name: str, value: Tensor | Callable[[Tensor], Tensor], index: Any = ...) -> Hook:
    """Replace the activation at ``name`` (or ``act[index]``) by ``value`` (a tensor broadcast to it, or a
    function of the activation): patching and mean ablation."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        new = value(act) if callable(value) else value
        act[index] = new.to(device=act.device, dtype=act.dtype) if isinstance(new, Tensor) else new
        return act

    return name, hook


def zero(name: str, index: Any = ...) -> Hook:
    """Zero-ablate the activation at ``name`` (or ``act[index]``)."""
    return replace(name, 0.0, index)  # type: ignore[arg-type]


def add(name: str, vector: Float[Tensor, "... d"], alpha: float = 1.0,
        positions: int | slice | Sequence[int] | None = None) -> Hook:
    """Add ``alpha * vector`` to the activation at ``name`` (at every position, or at ``positions``):
    activation addition / steering (Turner et al. 2023; Rimsky et al. 2024)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        delta = (alpha * vector).to(device=act.device, dtype=act.dtype)
        if positions is None:
            return act + delta
        out = act.clone()
        where = list(positions) if isinstance(positions, Sequence) else positions
        out[:, where] = out[:, where] + delta
        return out

    return name, hook


def project_out(name: str, direction: Float[Tensor, " d"]) -> Hook:
    """Remove the component along ``direction`` from the activation at ``name``: ``x - (x·d̂) d̂``
    (directional ablation, Arditi et al. 2024)."""
    unit = direction / direction.norm()

    def hook(act: Tensor, hook: Any) -> Tensor:
        d = unit.to(device=act.device, dtype=act.dtype)
        return act - (act @ d)[..., None] * d

    return name, hook
