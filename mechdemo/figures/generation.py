"""Generation: next_token.png, decoding_steps.png and kv_cache.png (mechdemo.generation on the model).

Timings vary from run to run, so kv_cache.png plots them but its recorded results hold only what is
deterministic (forward passes, cache sizes); benchmarks/bench_generation.py prints the measured ratio.
"""

from __future__ import annotations

import numpy as np
import torch

from mechdemo.figures import style
from mechdemo.figures.registry import FigureContext, FigureOutput, figure

PROMPT = "The capital of France is"


def _label(tokenizer, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))[1:-1]


@figure("next_token", description="The model's next-token distribution at the last position of a prompt: "
        "top-10 tokens and their probabilities")
def next_token(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    model = ctx.model
    ids = model.to_tokens(PROMPT)
    with torch.no_grad():
        logits = model(ids)[0, -1].float().cpu()
    probs = logits.softmax(-1)
    top = probs.topk(10)
    names = [_label(model.tokenizer, int(t)) for t in top.indices]
    fig, ax = plt.subplots(figsize=(13, 7))
    ax.barh(range(10), top.values.numpy(), color=style.BLUE)
    for i, (q, z) in enumerate(zip(top.values.tolist(), logits[top.indices].tolist())):
        ax.text(q + 0.01, i, f"{q:.1%}  (logit {z:.1f})", va="center", fontsize=14)
    ax.set_yticks(range(10))
    ax.set_yticklabels(names, family="monospace", fontsize=16)
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, float(top.values[0]) * 1.35))
    ax.set_xlabel("probability  softmax(logits)")
    style.suptitle(fig, f"Next token after “{PROMPT}”", ctx.model_label,
                   subtitle="logits at the last position, top 10 of "
                            f"{len(probs):,} tokens; the top-10 hold {float(top.values.sum()):.0%} of the probability")
    fig.subplots_adjust(top=0.84, left=0.16)
    return FigureOutput(fig, results={"prompt": PROMPT, "top_tokens": [model.tokenizer.decode([int(t)]) for t in top.indices],
                                      "top_probabilities": [round(q, 4) for q in top.values.tolist()]})


@figure("decoding_steps", description="Greedy generation step by step: at each step the top-3 candidates and "
        "their probabilities, the chosen token highlighted")
def decoding_steps(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    from mechdemo.generation import generate

    model = ctx.model
    g = generate(model, PROMPT, "greedy", max_new_tokens=10)
    n = len(g.steps)
    fig, ax = plt.subplots(figsize=(18, 7.5))
    for i, step in enumerate(g.steps):
        for r, (t, q) in enumerate(step):
            chosen = t == g.new_ids[i]
            ax.add_patch(plt.Rectangle((i - 0.46, r - 0.42), 0.92, 0.84, color=style.BLUE, alpha=0.15 + 0.75 * q))
            ax.text(i, r - 0.1, _label(model.tokenizer, t), ha="center", va="center", fontsize=14, family="monospace",
                    weight="bold" if chosen else "normal", color="white" if q > 0.5 else "black")
            ax.text(i, r + 0.25, f"{q:.0%}", ha="center", va="center", fontsize=12,
                    color="white" if q > 0.5 else style.GREY)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(2.6, -0.6)
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"step {i + 1}" for i in range(n)], fontsize=13)
    ax.set_yticks(range(3))
    ax.set_yticklabels(["1st", "2nd", "3rd"])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    text = model.tokenizer.decode(g.new_ids).replace("\n", "⏎")
    style.suptitle(fig, "Greedy decoding, step by step", ctx.model_label,
                   subtitle=f"“{PROMPT}” → “{text}”. Each column: the 3 most probable next tokens; greedy takes the first")
    fig.subplots_adjust(top=0.82, bottom=0.1)
    return FigureOutput(fig, results={"prompt": PROMPT, "generated": model.tokenizer.decode(g.new_ids),
                                      "steps": [[[model.tokenizer.decode([t]), round(q, 4)] for t, q in s] for s in g.steps]})


@figure("kv_cache", description="Generating with and without the KV cache: time per token against position, "
        "forward passes, and the cache's memory (grouped-query attention counted right)")
def kv_cache(ctx: FigureContext) -> FigureOutput:
    import matplotlib.pyplot as plt

    from mechdemo.generation import generate, kv_cache_bytes_of
    from mechdemo.models import get_spec

    model = ctx.model
    n_new = ctx.pick(24, 6)
    # one timed run each way: on this CPU a step costs ~130 ms with the cache and ~250 ms without
    # (reading the weights dominates at these lengths), far above the run-to-run noise
    runs = {use_cache: generate(model, PROMPT, "greedy", n_new, use_cache=use_cache, stop_at_eos=False)
            for use_cache in (True, False)}
    ms_per_token = {use_cache: 1000 * np.asarray(run.seconds_per_token) for use_cache, run in runs.items()}
    assert runs[True].new_ids == runs[False].new_ids  # the cache changes the cost, not the tokens
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(18, 7), gridspec_kw={"width_ratios": [1.6, 1]})
    prompt_len = len(runs[True].prompt_ids)
    positions = prompt_len + np.arange(n_new)
    for use_cache, colour in ((False, style.RED), (True, style.BLUE)):
        ms = ms_per_token[use_cache]
        label = f"{'with' if use_cache else 'without'} cache: {ms[1:].sum() / 1000:.2f} s for {n_new - 1} tokens"
        ax.plot(positions[1:], ms[1:], color=colour, lw=2.5, label=label)  # the first step is the same prompt pass
    ax.set_xlabel("position of the generated token")
    ax.set_ylabel("ms per token (CPU, one run)")
    ax.legend(loc="upper left")
    ax.set_ylim(bottom=0)
    ax.set_title("without the cache every step reprocesses the whole sequence", fontsize=15)
    # memory for 1,000 tokens: right (K/V heads) vs counting query heads, for our models
    names = ["smollm2-135m", "gpt2", "meta-llama/Llama-3.2-1B"]
    right, wrong = [], []
    for name in names:
        config = get_spec(name).published_config()
        dtype = torch.float32 if name == "smollm2-135m" or name == "gpt2" else torch.bfloat16
        right.append(kv_cache_bytes_of(config, 1000, dtype) / 1e6)
        mha = config.__class__(**{**config.to_dict(), "num_key_value_heads": getattr(config, "num_attention_heads", None)}) \
            if hasattr(config, "num_key_value_heads") else config
        wrong.append(kv_cache_bytes_of(mha, 1000, dtype) / 1e6)
    y = np.arange(len(names))
    mem.barh(y - 0.2, right, 0.4, color=style.BLUE, label="2·layers·KV heads·d_head·seq·bytes")
    mem.barh(y + 0.2, wrong, 0.4, color=style.GREY, alpha=0.6, label="counting query heads (overstated)")
    for yi, r in zip(y, right):
        mem.text(r, yi - 0.2, f" {r:.1f} MB", va="center", fontsize=13)
    mem.set_yticks(y)
    mem.set_yticklabels(["SmolLM2-135M\n(fp32)", "GPT-2 small\n(fp32)", "Llama 3.2 1B\n(bf16)"])
    mem.invert_yaxis()
    mem.set_xlabel("KV cache for 1,000 tokens (MB)")
    mem.legend(loc="upper center", bbox_to_anchor=(0.4, -0.14), fontsize=12, frameon=False)
    style.suptitle(fig, "The KV cache", ctx.model_label,
                   subtitle=f"greedy generation of {n_new} tokens after “{PROMPT}”: {runs[True].forward_passes} forward "
                            "passes either way, one token each with the cache, the whole sequence each without")
    fig.subplots_adjust(top=0.82, bottom=0.22, wspace=0.35)
    return FigureOutput(fig, results={
        "new_tokens": n_new, "forward_passes": runs[True].forward_passes,
        "kv_cache_mb_1000_tokens": dict(zip(names, [round(r, 3) for r in right])),
        "query_head_formula_mb_1000_tokens": dict(zip(names, [round(w, 3) for w in wrong])),
    })
