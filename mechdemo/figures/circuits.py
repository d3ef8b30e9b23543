"""ov_circuit.png: reverse-engineering heads from their weights (QK and OV circuits)."""

from __future__ import annotations

import torch

from mechdemo.circuits import copying_scores, full_ov_circuit, k_composition_scores, mean_score_by_offset, positional_qk
from mechdemo.figures import style
from mechdemo.figures.attention import head_scores_of
from mechdemo.figures.registry import FigureContext, FigureOutput, figure
from mechdemo.heads import top_heads
from mechdemo.tokens import repeated_random_tokens, word_token_ids

N_TOKENS = 1000  # tokens for the copying score
N_SHOWN = 24  # tokens shown in the OV heatmap


@figure("ov_circuit", description="Full OV circuit of the strongest copying head, copying vs induction scores, "
                                  "K-composition of previous-token into induction heads, positional QK")
def ov_circuit(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    scores = head_scores_of(ctx)
    n_words = ctx.pick(N_TOKENS, 100)
    words = word_token_ids(model, n_words, seed=ctx.seed)
    copy = copying_scores(model, words)
    (cl, ch, cv), = top_heads(copy, 1)
    shown = words[:N_SHOWN]
    circuit = full_ov_circuit(model, cl, ch, shown)
    circuit = circuit - circuit.mean(dim=1, keepdim=True)  # logits are shift-invariant per row
    labels = [t.strip() for t in model.to_str_tokens(shown)]

    fig, axes = plt.subplots(2, 2, figsize=(17, 11.5))
    ax = axes[0, 0]
    lim = circuit.abs().max().item()
    im = ax.imshow(circuit.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(N_SHOWN), labels, rotation=90, fontsize=10)
    ax.set_yticks(range(N_SHOWN), labels, fontsize=10)
    ax.set_xlabel("logit raised (output token)", fontsize=13)
    ax.set_ylabel("attended token (source)", fontsize=13)
    ax.set_title(f"Full OV circuit of {style.head_label(cl, ch)}\n$W_E W_{{OV}} W_U$: diagonal = copying", fontsize=16)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)

    ax = axes[0, 1]
    ind = scores["induction"].flatten()
    ax.scatter(ind, copy.flatten(), s=40, color=style.BLUE, alpha=0.7)
    n_heads = model.cfg.n_heads
    notable = {(l, h) for l, h, _ in top_heads(copy, 3) + top_heads(scores["induction"], 4)}
    for i, (l, h) in enumerate(sorted(notable, key=lambda lh: (copy[lh].item(), scores["induction"][lh].item()))):
        low = copy[l, h].item() < 0.1  # heads near the axis: stagger labels upwards
        ax.annotate(style.head_label(l, h), (scores["induction"][l, h], copy[l, h]), fontsize=12,
                    xytext=(-10, 12 + 16 * (i % 4)) if low else (6, 4), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "color": style.GREY, "lw": 0.8} if low else None)
    ax.axhline(1 / n_words, color=style.GREY, ls=":", lw=1.5)
    ax.set_xlabel("induction score (attention)")
    ax.set_ylabel(f"copying score (OV, top-1 of {n_words} words)")
    ax.set_title("Where a head looks vs what it writes", fontsize=16)

    ax = axes[1, 0]
    prev = top_heads(scores["previous_token"], 4)
    induction = top_heads(scores["induction"], 5)
    kcomp = k_composition_scores(model)
    later = torch.arange(model.cfg.n_layers)[:, None, None, None] < torch.arange(model.cfg.n_layers)[None, None, :, None]
    baseline = kcomp[later.expand_as(kcomp)].mean().item()
    table = torch.tensor([[kcomp[pl, ph, il, ih].item() if pl < il else float("nan") for il, ih, _ in induction]
                          for pl, ph, _ in prev])
    im = ax.imshow(table.numpy(), cmap="Greens", vmin=0)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            text = "—" if table[i, j].isnan() else f"{table[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=13)
    ax.set_xticks(range(len(induction)), [style.head_label(l, h) for l, h, _ in induction])
    ax.set_yticks(range(len(prev)), [style.head_label(l, h) for l, h, _ in prev])
    ax.set_xlabel("induction heads (top 5)")
    ax.set_ylabel("previous-token heads (top 4)\n(— : not in an earlier layer)", fontsize=14)
    ax.set_title(f"K-composition (mean over all head pairs: {baseline:.3f})", fontsize=16)
    ax.spines[:].set_visible(True)

    ax = axes[1, 1]
    pl, ph, _ = prev[0]
    if model.cfg.positional_embedding_type == "standard":
        pos = positional_qk(model, pl, ph, n_pos=32)
        im = ax.imshow(pos.tril().numpy(), cmap="RdBu_r")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.set_title(f"Positional QK of {style.head_label(pl, ph)}: $W_{{pos}} W_{{QK}} W_{{pos}}^T$", fontsize=16)
        positional = {"kind": "W_pos W_QK W_pos^T", "first_rows": pos[:8, :8].tolist()}
    else:
        tokens = repeated_random_tokens(model, 4, 50, seed=ctx.seed + 1)[:, :51]  # BOS + R: no repeats
        by_offset = mean_score_by_offset(model, pl, ph, tokens, max_offset=12)
        ax.bar(range(len(by_offset)), by_offset.numpy(), color=[style.ORANGE if o == 1 else style.BLUE
                                                                for o in range(len(by_offset))])
        ax.set_xlabel("offset q − k (0 = the query itself)")
        ax.set_ylabel("mean attention score (pre-softmax)")
        ax.set_title(f"Positional preference of {style.head_label(pl, ph)} (RoPE)", fontsize=16)
        ax.text(0.98, 0.97, "Rotary model: no $W_{pos}$, so no positional QK matrix.\n"
                "Measured instead: the head's score by offset,\non random tokens (content carries no signal).",
                transform=ax.transAxes, ha="right", va="top", fontsize=12, color=style.GREY)
        positional = {"kind": "mean score by offset (rotary)", "scores": [round(v, 4) for v in by_offset.tolist()]}
    style.suptitle(fig, "Reverse-engineering heads from their weights", ctx.model_label,
                   subtitle="Norm weights folded in; effective embedding = W_E + MLP0(W_E); copying score = "
                            "fraction of words whose own logit is the top one")
    fig.subplots_adjust(top=0.86, hspace=0.42, wspace=0.3)
    return FigureOutput(fig, results={
        "copying_head": {"layer": cl, "head": ch, "copying_score": round(cv, 4)},
        "top_copying_heads": [{"layer": l, "head": h, "score": round(v, 4)} for l, h, v in top_heads(copy, 5)],
        "k_composition": {
            "previous_token_heads": [style.head_label(l, h) for l, h, _ in prev],
            "induction_heads": [style.head_label(l, h) for l, h, _ in induction],
            "scores": [[None if v != v else round(v, 4) for v in row] for row in table.tolist()],
            "mean_over_all_pairs": round(baseline, 4),
        },
        "positional": positional,
    })
