"""Per-head activation patching over every head of the offline model on a batch of IOI prompts:
mechdemo's batched implementation vs TransformerLens's loop (one forward pass per head), same
model, same inputs, same metric. Checks the results agree, prints both times and the ratio, and
attribution patching's time as the floor (one forward and one backward pass for all heads).
"""

from __future__ import annotations

import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(n_prompts: int = 16) -> None:
    import transformer_lens.patching as tlp

    from mechdemo.ioi import ioi_batch
    from mechdemo.models import load_model
    from mechdemo.patching import attribution_patching, patch_heads, prepare_ioi

    model = load_model(device="cpu")
    batch = ioi_batch(model, template=0, n=n_prompts)
    print(f"{model.cfg.model_name}: {model.cfg.n_layers * model.cfg.n_heads} heads, "
          f"{n_prompts} IOI prompts of {batch.tokens.shape[1]} tokens, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    run = prepare_ioi(model, batch)  # clean + corrupted runs, cached
    ours = patch_heads(run, "z")
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(batch.tokens)
        theirs = tlp.get_act_patch_attn_head_out_all_pos(model, batch.corrupted_tokens, clean_cache, run.metric)
    t_tl = time.perf_counter() - t0

    t0 = time.perf_counter()
    attribution_patching(run)
    t_attr = time.perf_counter() - t0

    diff = (ours - theirs.float()).abs().max().item()
    assert diff < 1e-3, f"results differ by {diff}"
    print(f"TransformerLens loop (get_act_patch_attn_head_out_all_pos): {t_tl:7.1f} s")
    print(f"mechdemo batched (prepare + patch_heads):                   {t_ours:7.1f} s   max |difference| {diff:.1e}")
    print(f"attribution patching (estimate, floor):                    {t_attr:7.1f} s")
    print(f"speed-up over TransformerLens: {t_tl / t_ours:.1f}x")


if __name__ == "__main__":
    main()
