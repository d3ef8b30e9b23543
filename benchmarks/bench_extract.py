"""Activation extraction speed on the offline model, MLP output of layer 8, real corpus batches.

Three rates, same batches (``--batch-size`` x ``--seq-len`` chunks of the python-docs corpus), same
model, same threads, measured in this run:

* **ours**: what ``mechdemo extract`` does per batch: forward pass stopped after layer 8, keep
  the non-special tokens, convert to bf16 bit patterns;
* **course**: the course's method: the full forward pass of the Hugging Face model with a forward
  hook on ``layers[8].mlp`` (every layer and the unembedding run), same conversion;
* **matmul bound**: the time of the matrix multiplications that layers 0..8 must do for the batch
  (Q/K/V and output projections, attention scores and mixing, the gated MLP), as plain GEMMs on
  random tensors of the same shapes and dtype: no layer can run faster than its matmuls.

Then the end-to-end rate of ``extract()`` (tokenising, computing, writing shards) on a fresh folder.
Goal: ours >= 4x the course's method and >= 85 % of the matmul bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _time(fn, rounds: int) -> float:
    """Median seconds of ``rounds`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_bound_seconds(cfg, batch: int, seq_len: int, n_layers: int, rounds: int) -> float:
    """Time of the GEMMs of ``n_layers`` Llama-style layers on ``batch`` x ``seq_len`` tokens."""
    d, heads, kv_heads, d_mlp = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    d_head = d // heads
    n = batch * seq_len
    g = torch.Generator().manual_seed(0)
    x, hidden = torch.randn(n, d, generator=g), torch.randn(n, d_mlp, generator=g)
    w_qkv = torch.randn(d, d + 2 * kv_heads * d_head, generator=g)
    w_o, w_gate_up, w_down = torch.randn(d, d, generator=g), torch.randn(d, 2 * d_mlp, generator=g), torch.randn(d_mlp, d, generator=g)
    q, k_t = torch.randn(batch * heads, seq_len, d_head, generator=g), torch.randn(batch * heads, d_head, seq_len, generator=g)
    pattern, v = torch.randn(batch * heads, seq_len, seq_len, generator=g), torch.randn(batch * heads, seq_len, d_head, generator=g)

    def gemms():
        for _ in range(n_layers):
            x @ w_qkv, x @ w_o, x @ w_gate_up, hidden @ w_down, torch.bmm(q, k_t), torch.bmm(pattern, v)

    return _time(gemms, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="corpus batches per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from mechdemo.activations import record
    from mechdemo.data import ExtractConfig, _activations, extract, plan_shards, to_uint16
    from mechdemo.models import load_model

    model = load_model(device="cpu")
    hf = model.original_model
    cfg = ExtractConfig(model="smollm2-135m", layer=args.layer, corpus="python-docs", seq_len=args.seq_len,
                        batch_size=args.batch_size, shard_size=10**9,
                        max_tokens=args.batches * args.batch_size * (args.seq_len - 1))
    batches = next(plan_shards(model, cfg)).batches[: args.batches]
    tokens = sum(b.rows for b in batches)
    positions = len(batches) * args.batch_size * args.seq_len
    print(f"{model.cfg.model_name}, MLP output of layer {args.layer}/{model.cfg.n_layers}; {len(batches)} batches of "
          f"{args.batch_size} x {args.seq_len} python-docs tokens ({tokens:,} stored); {torch.get_num_threads()} threads")

    def ours():
        for batch in batches:
            _activations(model, batch, args.layer)

    def course():  # full forward of the HF model, hook on the MLP, as in the course's script
        for batch in batches:
            ids = torch.tensor([c.ids for c in batch.chunks])
            with record(model, layers=[args.layer]) as store, torch.no_grad():
                hf(input_ids=ids, use_cache=False)
            to_uint16(store[f"mlp.{args.layer}"][torch.from_numpy(batch.keep)])

    t_ours = _time(ours, args.rounds)
    t_course = _time(course, args.rounds)
    t_bound = len(batches) * matmul_bound_seconds(hf.config, args.batch_size, args.seq_len, args.layer + 1, args.rounds)
    # rates in positions per second (every position is computed; ~all of them are stored)
    rate = {k: positions / t for k, t in (("ours", t_ours), ("course", t_course), ("bound", t_bound))}
    print(f"course's method (full forward + hook): {rate['course']:8,.0f} positions/s")
    print(f"mechdemo extract (stop after layer):    {rate['ours']:8,.0f} positions/s")
    print(f"matmul bound (GEMMs of layers 0..{args.layer}):   {rate['bound']:8,.0f} positions/s")
    print(f"ours / course's method: {t_course / t_ours:.2f}x   (goal >= 4x)")
    print(f"ours / matmul bound:    {t_bound / t_ours:.0%}    (goal >= 85 %)")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = extract(cfg, out, model=model, progress=False)
        elapsed = time.perf_counter() - start
    print(f"extract() end to end (tokenise, compute, write shards): {manifest['tokens'] / elapsed:,.0f} stored tokens/s")


if __name__ == "__main__":
    main()
