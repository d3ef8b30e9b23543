"""Generation (mechdemo.generation on the model), one message per figure:

- ``next_token``: the next-token distribution after a prompt (top 10 of the vocabulary);
- ``decoding_steps``: greedy decoding step by step, the top-3 candidates of each step;
- ``kv_cache``: time per generated token with and without the KV cache (one timed run each way);
- ``kv_cache_memory``: the cache's memory for the three registered models, counting K/V heads (right
  with grouped-query attention) against counting query heads (the course's formula).

Timings vary from run to run, so kv_cache plots them but its recorded results hold only what is
deterministic (forward passes, tokens); benchmarks/bench_generation.py prints the measured ratio.
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.i18n import num, tr
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

PROMPT = "The capital of France is"
TOP = 10  # next_token: tokens shown
STEPS = 10  # decoding_steps: greedy steps shown
CACHE_TOKENS = 1000  # kv_cache_memory: sequence length the cache is sized for


def _label(text: str) -> str:
    """A token as shown on a figure: escapes visible (\\n), no leading space, no mathtext."""
    shown = repr(text)[1:-1].strip() or repr(text)[1:-1]
    return shown.replace("$", r"\$")


@figure("next_token", description="The model's next-token distribution at the last position of a prompt: "
        "the top-10 tokens, their probabilities and logits")
def next_token(ctx: FigureContext) -> FigureOutput:
    model = ctx.model
    ids = model.to_tokens(PROMPT)
    with torch.no_grad():
        logits = model(ids)[0, -1].float().cpu()
    probs = logits.softmax(-1)
    top = probs.topk(TOP)
    tokens = [model.tokenizer.decode([int(t)]) for t in top.indices]
    p = top.values.tolist()
    z = logits[top.indices].tolist()

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        y = np.arange(TOP)
        ax.barh(y, p, color=style.BLUE, height=0.75)
        for i, (q, zi) in enumerate(zip(p, z)):
            ax.text(q + 0.008, i, tr("{p}   (logit {z})", p=num(100 * q, ".1f") + " %", z=num(zi, ".1f")),
                    va="center", fontsize=20)
        ax.set_yticks(y)
        ax.set_yticklabels([_label(t) for t in tokens], family="monospace", fontsize=22)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, p[0] * 1.3))
        ax.set_xlabel(tr("probability = softmax(logits), over {n} tokens", n=num(len(probs), ",d")))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}".replace("%", " %"))
        return fig

    return FigureOutput(draw, results={
        "prompt": PROMPT, "top_token": tokens[0].strip(), "top_tokens": tokens,
        "top_probabilities": [round(q, 4) for q in p],
        "top_logits": [round(v, 3) for v in z], "vocab_size": len(probs), "top_n": TOP,
        "top_mass": round(float(sum(p)), 4),
    })


@figure("decoding_steps", description="Greedy generation step by step: at each step the top-3 candidates and "
        "their probabilities, the chosen token highlighted")
def decoding_steps(ctx: FigureContext) -> FigureOutput:
    from mechdemo.generation import generate

    model = ctx.model
    g = generate(model, PROMPT, "greedy", max_new_tokens=STEPS)
    steps = [[(model.tokenizer.decode([t]), q) for t, q in step] for step in g.steps]
    n = len(steps)
    k = len(steps[0])

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyBboxPatch

        fig, ax = plt.subplots(figsize=style.SLIDE)
        for i, step in enumerate(steps):
            for r, (text, q) in enumerate(step):
                dark = q > 0.5
                ax.add_patch(FancyBboxPatch((i - 0.45, r - 0.43), 0.9, 0.86, boxstyle="round,pad=0,rounding_size=0.08",
                                            fc=style.BLUE, alpha=0.12 + 0.8 * q, ec=style.BLUE if r == 0 else "none",
                                            lw=2.5))
                ax.text(i, r - 0.14, _label(text), ha="center", va="center", fontsize=22, family="monospace",
                        weight="bold" if r == 0 else "normal", color="white" if dark else "black")
                ax.text(i, r + 0.22, num(100 * q, ".0f") + " %", ha="center", va="center", fontsize=19,
                        color="white" if dark else "#444444")
        ax.set_xlim(-0.55, n - 0.45)
        ax.set_ylim(k - 0.45, -0.5)
        ax.set_xticks(range(n))
        ax.set_xticklabels([str(i + 1) for i in range(n)])
        ax.set_xlabel(tr("generation step (greedy takes the top row)"))
        ax.set_yticks([])
        for r, rank in enumerate([tr("1st"), tr("2nd"), tr("3rd")][:k]):  # text, not ticks: "1.º" keeps its point
            ax.text(-0.55, r, rank, ha="right", va="center", fontsize=20)
        ax.tick_params(length=0)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        return fig

    return FigureOutput(draw, results={
        "prompt": PROMPT, "generated": model.tokenizer.decode(g.new_ids), "n_steps": n, "n_candidates": k,
        "steps": [[[t, round(q, 4)] for t, q in s] for s in steps],
    })


@figure("kv_cache", description="Generating with and without the KV cache: time per token against position "
        "(one timed run each way) and forward passes")
def kv_cache(ctx: FigureContext) -> FigureOutput:
    from mechdemo.generation import generate

    model = ctx.model
    n_new = ctx.pick(24, 6)
    # one timed run each way: on this CPU a step costs ~130 ms with the cache and ~250 ms without
    # (reading the weights dominates at these lengths), far above the run-to-run noise
    runs = {use_cache: generate(model, PROMPT, "greedy", n_new, use_cache=use_cache, stop_at_eos=False)
            for use_cache in (True, False)}
    ms_per_token = {use_cache: 1000 * np.asarray(run.seconds_per_token) for use_cache, run in runs.items()}
    assert runs[True].new_ids == runs[False].new_ids  # the cache changes the cost, not the tokens
    prompt_len = len(runs[True].prompt_ids)
    positions = prompt_len + np.arange(n_new)

    def draw():
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=style.SLIDE)
        for use_cache, colour, marker in ((False, style.RED, "s"), (True, style.BLUE, "o")):
            ms = ms_per_token[use_cache][1:]  # the first step is the same prompt pass either way
            text = tr("with the cache: one token per step") if use_cache else tr(
                "without the cache: the whole sequence per step")
            ax.plot(positions[1:], ms, color=colour, marker=marker, ms=8,
                    label=tr("{what} ({s} s in total)", what=text, s=num(ms.sum() / 1000, ".1f")))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(tr("position of the generated token"))
        ax.set_ylabel(tr("ms per token (CPU)"))
        ax.set_ylim(0, max(ms_per_token[False][1:].max(), ms_per_token[True][1:].max()) * 1.3)
        ax.legend(loc="upper left", framealpha=0.9)
        return fig

    return FigureOutput(draw, results={
        "prompt": PROMPT, "new_tokens": n_new, "forward_passes": runs[True].forward_passes,
        "prompt_tokens": prompt_len, "last_position": int(positions[-1]),
    })


@figure("kv_cache_memory", description="Memory of the KV cache for 1,000 tokens on the loaded model and the course's "
        "models: K/V heads (right with grouped-query attention) against the formula with query heads")
def kv_cache_memory(ctx: FigureContext) -> FigureOutput:
    from mechdemo.architecture import architecture_of
    from mechdemo.generation import kv_cache_bytes, kv_cache_bytes_of
    from mechdemo.models import MODELS, compared_with

    rows = {}
    for name in compared_with(ctx.model_name):
        spec = MODELS[name]
        if name == ctx.model_name:  # the loaded model: its config and the dtype it runs in
            config = ctx.model.original_model.config
            dtype = next(ctx.model.original_model.parameters()).dtype
        else:
            config = spec.published_config()
            dtype = spec.accelerator_dtype or torch.float32
        a = architecture_of(config)
        size = torch.empty((), dtype=dtype).element_size()
        right = kv_cache_bytes_of(config, CACHE_TOKENS, dtype)
        wrong = kv_cache_bytes(a.n_layers, a.n_heads, a.d_head, CACHE_TOKENS, size)
        rows[name] = {"label": spec.display_name, "dtype": str(dtype).removeprefix("torch."), "bytes_per_value": size,
                      "right_mb": right / 1e6, "wrong_mb": wrong / 1e6, "ratio": a.n_heads / a.n_kv_heads}
    names = list(rows)

    def draw():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=style.SLIDE)
        y = np.arange(len(names))
        right = [rows[n]["right_mb"] for n in names]
        wrong = [rows[n]["wrong_mb"] for n in names]
        ax.barh(y - 0.2, right, 0.4, color=style.BLUE, label=tr("2 × layers × K/V heads × d_head × tokens × bytes"))
        ax.barh(y + 0.2, wrong, 0.4, color=style.GREY, alpha=0.55, label=tr("the same with query heads"))
        for yi, n in zip(y, names):
            r = rows[n]
            ax.text(r["right_mb"], yi - 0.2, f"  {num(r['right_mb'], '.1f')} MB", va="center", fontsize=20)
            if r["ratio"] > 1:
                ax.text(r["wrong_mb"], yi + 0.2, tr("  {mb} MB ({ratio}× too much)", mb=num(r["wrong_mb"], ".1f"),
                                                   ratio=num(r["ratio"], ".0f")), va="center", fontsize=20,
                        color="#444444")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{rows[n]['label']}\n({rows[n]['dtype']})" for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, max(wrong) * 1.45)
        ax.set_xlabel(tr("KV cache for {n} tokens (MB)", n=num(CACHE_TOKENS, ",d")))
        fig.legend(loc="outside upper center", ncol=2, frameon=False)
        return fig

    return FigureOutput(draw, results={
        "tokens": CACHE_TOKENS,
        "kv_cache_mb_1000_tokens": {n: round(rows[n]["right_mb"], 3) for n in names},
        "query_head_formula_mb_1000_tokens": {n: round(rows[n]["wrong_mb"], 3) for n in names},
        "query_head_overstatement": {n: round(rows[n]["ratio"], 3) for n in names},
        "dtypes": {n: rows[n]["dtype"] for n in names},
        "loaded": {"kv_cache_mb": round(rows[ctx.model_name]["right_mb"], 3),
                   "query_head_formula_mb": round(rows[ctx.model_name]["wrong_mb"], 3),
                   "query_head_overstatement": round(rows[ctx.model_name]["ratio"], 3)},
    })
