"""IOI figures: dla.png, activation-patching.png, path-patching.png, attribution_vs_activation.png."""

from __future__ import annotations

import textwrap

import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from mechdemo.dla import direct_logit_attribution
from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.ioi import TEMPLATES, find_ioi_circuit, ioi_batch, ioi_batches
from mechdemo.patching import attribution_patching, patch_heads, patch_resid_pre, prepare_ioi

N_PER_TEMPLATE = 10  # prompts per template (2 at the tests' small scale)


def _n(ctx: FigureContext) -> int:
    return ctx.pick(N_PER_TEMPLATE, 2)


def _batches(ctx: FigureContext):
    return ctx.computed("ioi_batches", lambda: ioi_batches(ctx.model, _n(ctx), seed=ctx.seed))


def _main_batch(ctx: FigureContext):
    """Template 0, both orders: the batch every patching figure uses."""
    return _batches(ctx)[0]


def _run(ctx: FigureContext):
    return ctx.computed("ioi_run", lambda: prepare_ioi(ctx.model, _main_batch(ctx)))


CIRCUIT_PROMPTS = 6  # the circuit search's prompts (template 0, both orders): four path-patching scans


def _circuit(ctx: FigureContext):
    def compute():
        batch = ioi_batch(ctx.model, 0, ctx.pick(CIRCUIT_PROMPTS, 2), seed=ctx.seed)
        return find_ioi_circuit(ctx.model, batch, progress=True)

    return ctx.computed("ioi_circuit", compute)


def _abba_batch(ctx: FigureContext):
    """Template 0, ABBA order only: one position per role, so the residual-stream patching has labelled columns."""
    return ctx.computed("ioi_abba", lambda: ioi_batch(ctx.model, 0, _n(ctx), seed=ctx.seed, orders=("ABBA",)))


def _abba_run(ctx: FigureContext):
    return ctx.computed("ioi_abba_run", lambda: prepare_ioi(ctx.model, _abba_batch(ctx)))


def _resid_patching(ctx: FigureContext):
    """Residual-stream patching (layer x position) on the ABBA batch, shared by two figures."""
    return ctx.computed("ioi_patch_resid_abba", lambda: patch_resid_pre(_abba_run(ctx)))


def _heads_patching(ctx: FigureContext):
    return ctx.computed("ioi_patch_heads", lambda: patch_heads(_run(ctx), "z"))


def _diverging(ax, data, title, cmap="RdBu"):
    lim = max(float(torch.nan_to_num(data).abs().max()), 1e-6)
    im = ax.imshow(data.numpy(), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=16)
    return im


@figure("dla", description="Direct logit attribution of the IOI logit difference to every head, MLP and the embeddings")
def dla_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    parts = [direct_logit_attribution(model, b.tokens, b.correct, b.incorrect) for b in _batches(ctx)]
    heads = torch.cat([p.heads for p in parts]).mean(0)
    mlp = torch.cat([p.mlp for p in parts]).mean(0)
    attn = torch.cat([p.heads.sum(2) + p.attn_bias for p in parts]).mean(0)
    embed = torch.cat([p.embed for p in parts]).mean().item()
    total = torch.cat([p.total for p in parts])
    error = max((p.parts_sum() - p.total).abs().max().item() for p in parts)

    fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=(16, 8.5), gridspec_kw={"width_ratios": [1, 1.6]})
    im = _diverging(ax_h, heads, "Per head (logits)", cmap="RdBu")
    ax_h.set_xlabel("head")
    ax_h.set_ylabel("layer")
    best, worst = top_heads(heads, 3), top_heads(-heads, 2)
    for l, h, _ in best + worst:
        ax_h.text(h, l, style.head_label(l, h), ha="center", va="center", fontsize=9, color="black")
    fig.colorbar(im, ax=ax_h, fraction=0.05, pad=0.02, label="contribution to logit(IO) − logit(S)")
    layers = torch.arange(model.cfg.n_layers)
    ax_b.bar(layers - 0.2, attn.numpy(), width=0.4, color=style.ORANGE, label="attention (all heads)")
    ax_b.bar(layers + 0.2, mlp.numpy(), width=0.4, color=style.GREEN, label="MLP")
    ax_b.axhline(0, color="black", lw=1)
    ax_b.set_xlabel("layer")
    ax_b.set_ylabel("contribution (logits)")
    ax_b.set_title(f"Per layer; embeddings: {embed:+.2f}", fontsize=16)
    ax_b.legend(loc="upper left")
    ld = total.mean().item()
    acc = (total > 0).float().mean().item()
    style.suptitle(fig, "Direct logit attribution on IOI", ctx.model_label,
                   subtitle=f"{len(total)} prompts, {len(TEMPLATES)} templates: mean logit difference {ld:.2f}, "
                            f"IO preferred in {acc:.0%}; the parts add up to it (max error {error:.0e})")
    fig.subplots_adjust(top=0.85, wspace=0.45)
    return FigureOutput(fig, results={
        "n_prompts": len(total), "logit_diff_mean": round(ld, 4), "accuracy": round(acc, 4),
        "top_heads": [{"layer": l, "head": h, "dla": round(v, 4)} for l, h, v in best],
        "most_negative_heads": [{"layer": l, "head": h, "dla": round(-v, 4)} for l, h, v in worst],
        "embed": round(embed, 4), "max_sum_error": error,
    })


def _schematic(ax, batch) -> None:
    """Clean / corrupted / patched runs in three boxes."""
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    rows = [
        ("clean", batch.prompts[0] + " → IO", style.GREEN),
        ("corrupted", batch.corrupted_prompts[0] + " → ?", style.RED),
    ]
    for i, (name, text, color) in enumerate(rows):
        y = 0.78 - 0.3 * i
        ax.add_patch(FancyBboxPatch((0.0, y - 0.1), 1.0, 0.2, boxstyle="round,pad=0.01", fc=color, alpha=0.12, ec=color))
        ax.text(0.02, y + 0.04, name, fontsize=14, weight="bold", color=color, va="center")
        ax.text(0.02, y - 0.05, textwrap.fill(text, 42), fontsize=11.5, va="center")
    ax.add_patch(FancyArrowPatch((0.5, 0.66), (0.5, 0.6), arrowstyle="-|>", mutation_scale=18, color="black"))
    ax.text(0.5, 0.14, "Run the corrupted prompt, paste ONE clean activation,\nmeasure (LD − LD_corr) / (LD_clean − LD_corr):"
            "\n1 = clean answer restored, 0 = no effect", ha="center", va="center", fontsize=12.5)


@figure("activation-patching", description="Activation patching on IOI: residual stream by layer and position, and each head's output")
def activation_patching_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    abba = _abba_batch(ctx)
    resid = _resid_patching(ctx)
    heads = _heads_patching(ctx)
    labels = ["BOS"] + [t for t in model.to_str_tokens(abba.tokens[0])][1:]
    for role in ("IO", "S1", "S2"):
        labels[int(abba.positions[role][0])] = role
    labels = [lab.strip() or repr(lab) for lab in labels]

    fig = plt.figure(figsize=(17, 9.5))
    grid = fig.add_gridspec(2, 3, width_ratios=[1.15, 1.5, 0.95], height_ratios=[1, 1])
    ax_s = fig.add_subplot(grid[:, 0])
    _schematic(ax_s, abba)
    ax_r = fig.add_subplot(grid[:, 1])
    im = ax_r.imshow(resid.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax_r.set_xticks(range(len(labels)), labels, rotation=90, fontsize=12)
    ax_r.set_ylabel("layer")
    ax_r.set_title("Residual stream (layer × position)", fontsize=16)
    fig.colorbar(im, ax=ax_r, fraction=0.04, pad=0.02)
    ax_h = fig.add_subplot(grid[:, 2])
    im2 = _diverging(ax_h, heads, "Each head's output\n(all positions)")
    ax_h.set_xlabel("head")
    ax_h.set_ylabel("layer")
    for l, h, _ in top_heads(heads.abs(), 5):
        ax_h.text(h, l, style.head_label(l, h), ha="center", va="center", fontsize=8.5)
    fig.colorbar(im2, ax=ax_h, fraction=0.06, pad=0.03)
    run = _run(ctx)
    style.suptitle(fig, "Activation patching on IOI (clean → corrupted)", ctx.model_label,
                   subtitle=f"Template \"{TEMPLATES[0].split(',')[0]}, …\"; corrupted = S2 replaced by a third name; "
                            f"LD clean {run.clean_ld:.2f}, corrupted {run.corrupted_ld:.2f}")
    fig.subplots_adjust(top=0.86, wspace=0.35)
    return FigureOutput(fig, results={
        "logit_diff_clean": round(run.clean_ld, 4), "logit_diff_corrupted": round(run.corrupted_ld, 4),
        "resid_positions": labels,
        "top_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4)} for l, h, _ in top_heads(heads, 5)],
        "most_negative_heads": [{"layer": l, "head": h, "score": round(heads[l, h].item(), 4)} for l, h, _ in top_heads(-heads, 3)],
    })


ROLE_STYLE = {  # role -> (label, colour, row in the graph: higher = later in the computation)
    "previous_token": ("previous token", style.GREY, 0),
    "duplicate_token": ("duplicate token", style.SKY, 1),
    "induction": ("induction", style.BLUE, 1),
    "s_inhibition": ("S-inhibition", style.PURPLE, 2),
    "name_mover": ("name mover", style.GREEN, 3),
    "backup_name_mover": ("backup name mover", style.YELLOW, 3),
    "negative_name_mover": ("negative name mover", style.RED, 3),
    "copy_suppression": ("copy suppression (of S)", style.ORANGE, 3),
    "other_direct": ("other direct", "#bbbbbb", 3),
}
EDGES = [("previous_token", "induction", "K"), ("induction", "s_inhibition", "V"),
         ("duplicate_token", "s_inhibition", "V"), ("s_inhibition", "name_mover", "Q")]


ROW_GAP = 1.6  # vertical distance between role rows
STACK = 0.75  # vertical offset between heads of one role in one layer


def draw_circuit(ax, circuit, n_layers: int) -> None:
    """Heads placed by layer (x) and role (y), with the path-patching edges between roles."""
    pos = {}
    counts: dict[tuple[int, int], int] = {}
    for role, heads in circuit.roles.items():
        label, color, row = ROLE_STYLE[role]
        for h in heads:
            key = (h["layer"], row)
            k = counts.get(key, 0)
            counts[key] = k + 1
            xy = (h["layer"], row * ROW_GAP + STACK * k)
            pos[(h["layer"], h["head"])] = xy
            ax.scatter(*xy, s=650, color=color, edgecolor="black", zorder=3)
            ax.text(*xy, f"{h['layer']}.{h['head']}", ha="center", va="center", fontsize=9, zorder=4)
    top = max([xy[1] for xy in pos.values()] + [3 * ROW_GAP])
    for src, dst, kind in EDGES:
        labelled = False
        for a in circuit.roles.get(src, []):
            for b in circuit.roles.get(dst, []):
                pa, pb = pos[(a["layer"], a["head"])], pos[(b["layer"], b["head"])]
                ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle="-|>", mutation_scale=14, color=style.GREY,
                                             lw=1.2, shrinkA=14, shrinkB=14, zorder=2))
                if not labelled:
                    ax.text((pa[0] + pb[0]) / 2 - 0.3, (pa[1] + pb[1]) / 2, kind, fontsize=12, color="black",
                            ha="right", va="center", weight="bold")
                    labelled = True
    for role, (label, color, row) in ROLE_STYLE.items():
        if circuit.roles.get(role):
            ax.scatter([], [], s=150, color=color, edgecolor="black", label=label)
    ax.legend(loc="upper left", fontsize=11, ncol=2, frameon=False)
    first = min([xy[0] for xy in pos.values()] + [n_layers // 2])
    ax.set_xlim(max(-1, first - 6), n_layers)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.7, top + 0.8)
    ax.set_yticks([])
    ax.set_xlabel("layer")
    ax.spines[["left"]].set_visible(False)
    ax.text(n_layers - 0.5, top + 0.4, "K, V, Q: the input of the later head the path enters; the last row writes the logits",
            ha="right", fontsize=11, color=style.GREY)


@figure("path-patching", description="Path patching on IOI: heads to logits, heads to the name movers' queries, and the circuit found")
def path_patching_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    circuit = _circuit(ctx)
    fig = plt.figure(figsize=(17, 11))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.5], width_ratios=[1, 1, 1.3])
    ax1 = fig.add_subplot(grid[0, 0])
    im = _diverging(ax1, circuit.scans["direct"], "Heads → logits (direct path)")
    ax1.set_ylabel("layer")
    fig.colorbar(im, ax=ax1, fraction=0.05)
    ax2 = fig.add_subplot(grid[0, 1])
    if "to_name_mover_queries" in circuit.scans:
        im = _diverging(ax2, circuit.scans["to_name_mover_queries"], "Heads → name movers' queries")
        fig.colorbar(im, ax=ax2, fraction=0.05)
    for ax in (ax1, ax2):
        ax.set_xlabel("head")
    ax3 = fig.add_subplot(grid[0, 2])
    ax3.axis("off")
    f = circuit.faithfulness
    lines = [f"{ROLE_STYLE[r][0]}: " + ", ".join(f"{h['layer']}.{h['head']}" for h in hs)
             for r, hs in circuit.roles.items() if hs]
    ax3.text(0, 1, "Roles found (layer.head)\n\n" + "\n".join(lines)
             + f"\n\nFaithfulness: every other head mean-ablated\nLD {f['logit_diff_circuit']:.2f} of "
               f"{f['logit_diff_full']:.2f} ({f['faithfulness']:.0%}) with {f['n_heads_in_circuit']} heads",
             va="top", fontsize=12.5)
    ax4 = fig.add_subplot(grid[1, :])
    draw_circuit(ax4, circuit, ctx.model.cfg.n_layers)
    style.suptitle(fig, "Path patching on IOI", ctx.model_label,
                   subtitle="Effect = drop of the normalised logit difference when only that path carries the corrupted "
                            "activation (red: the path carries the answer)")
    fig.subplots_adjust(top=0.88, hspace=0.35, wspace=0.3)
    return FigureOutput(fig, results={"circuit": circuit.to_json()})


@figure("attribution_vs_activation", description="Attribution patching (gradient estimate) against activation patching on IOI")
def attribution_figure(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    # heads: the main batch (both orders), residual stream: the ABBA batch (labelled positions), each
    # estimate from the run its exact patching used (the activation-patching figure's, computed once)
    heads, resid = _heads_patching(ctx), _resid_patching(ctx)
    estimate = {"heads": attribution_patching(_run(ctx))["heads"],
                "resid_pre": attribution_patching(_abba_run(ctx))["resid_pre"]}
    fig, axes = plt.subplots(1, 2, figsize=(16, 8))
    results = {}
    for ax, (name, real, approx) in zip(axes, [("each head's output", heads, estimate["heads"]),
                                              ("residual stream (layer × position)", resid, estimate["resid_pre"])]):
        x, y = real.flatten(), approx.flatten()
        r = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
        ax.scatter(x, y, s=30, alpha=0.6, color=style.BLUE)
        lo, hi = min(x.min(), y.min()).item(), max(x.max(), y.max()).item()
        ax.plot([lo, hi], [lo, hi], color=style.GREY, ls="--", lw=1.5, label="y = x")
        ax.set_xlabel("activation patching (exact)")
        ax.set_ylabel("attribution patching (estimate)")
        ax.set_title(f"{name}: r = {r:.2f}", fontsize=16)
        ax.legend(loc="upper left")
        results[name] = round(r, 4)
    style.suptitle(fig, "Attribution patching vs activation patching on IOI", ctx.model_label,
                   subtitle="Estimate: (clean − corrupted activation) · gradient of the metric, from 2 forward passes and "
                            "1 backward pass for all patches.\nIt fails where one patch restores everything (the residual "
                            "stream at S2 in early layers): a linear step cannot follow the saturated softmax.")
    fig.subplots_adjust(top=0.8, wspace=0.25)
    return FigureOutput(fig, results={"pearson_r": results})
