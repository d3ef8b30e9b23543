"""Direct logit attribution (DLA): which components write the answer into the residual stream.

The final residual stream is a sum of what every component wrote:

    resid_final = embed (+ pos_embed) + Σ_layers [ Σ_heads head_out + attn_bias + mlp_out ]

with ``head_out = z_h W_O^h`` (the head's value-weighted mix times its output matrix). The logits
are ``final_norm(resid_final) W_U``. The final norm is not linear, but with its **scale frozen** at
the value it took on the actual run (cached from the clean forward pass) it is:

* RMSNorm:   ``norm(x) = γ ⊙ x / scale``;
* LayerNorm: ``norm(x) = γ ⊙ (x - mean(x)) / scale + β`` (centring is linear too).

So each component ``c`` contributes ``(γ ⊙ centre(c) / scale) · (W_U[:, IO] - W_U[:, S])`` to the
logit difference, and the contributions plus a constant (``β`` and the unembedding bias, zero for
Llama) add up to the model's logit difference exactly. The frozen readout is
:func:`mechdemo.readout.frozen_readout`, the one every linear reading of the residual stream uses. :func:`direct_logit_attribution` checks
that they do and raises if not.

DLA measures direct effects only: a head that matters through later heads (S-inhibition heads
in IOI) can have a small DLA. Activation and path patching measure the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdemo.interventions import run, site
from mechdemo.readout import answer_directions, frozen_readout, readout_constant

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class DLA:
    """Per-prompt contributions to the logit difference (sum over fields = ``total``)."""

    heads: Float[Tensor, "n n_layers n_heads"]
    attn_bias: Float[Tensor, "n n_layers"]
    mlp: Float[Tensor, "n n_layers"]
    embed: Float[Tensor, " n"]  # token (+ position) embedding
    constant: Float[Tensor, " n"]  # final-norm bias and unembedding bias
    total: Float[Tensor, " n"]  # the model's logit difference

    @classmethod
    def concatenate(cls, parts: "list[DLA]", order: Int[Tensor, " n"] | None = None) -> "DLA":
        """The prompts of several DLAs (one per batch) as one, in ``order`` if given (a permutation)."""
        fields = ("heads", "attn_bias", "mlp", "embed", "constant", "total")
        joined = [torch.cat([getattr(p, f) for p in parts]) for f in fields]
        return cls(*(j if order is None else j[order] for j in joined))

    def parts_sum(self) -> Float[Tensor, " n"]:
        return self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1) + self.embed + self.constant

    def mean(self) -> dict:
        """Means over prompts, as JSON-able lists (``dla_heads`` is n_layers x n_heads)."""
        return {
            "dla_heads": [[round(x, 4) for x in row] for row in self.heads.mean(0).tolist()],
            "dla_mlp": [round(x, 4) for x in self.mlp.mean(0).tolist()],
            "dla_attn_bias": [round(x, 4) for x in self.attn_bias.mean(0).tolist()],
            "dla_embed": round(self.embed.mean().item(), 4),
            "dla_constant": round(self.constant.mean().item(), 4),
            "logit_diff": round(self.total.mean().item(), 4),
        }


def _sites(model: "TransformerBridge") -> list[str]:
    names = [site("embed"), site("final_scale")]
    if model.cfg.positional_embedding_type == "standard":
        names.append(site("pos_embed"))
    for layer in range(model.cfg.n_layers):
        names += [site("z", layer), site("attn_out", layer), site("mlp_out", layer)]
    return names


def direct_logit_attribution(
    model: "TransformerBridge",
    tokens: Int[Tensor, "n pos"],
    correct: Int[Tensor, " n"],
    incorrect: Int[Tensor, " n"],
    atol: float = 1e-3,
    fwd_hooks: list = (),
) -> DLA:
    """Decompose the logit difference at the last position into embeddings, heads and MLPs.

    ``fwd_hooks`` (e.g. mean-ablation hooks) are active during the run being decomposed.
    """
    cfg = model.cfg
    with torch.no_grad():
        logits, cache = run(model, tokens, fwd_hooks, names=_sites(model))
    end = tokens.shape[1] - 1
    rows = torch.arange(tokens.shape[0])
    total = (logits[rows, end, correct.to(logits.device)] - logits[rows, end, incorrect.to(logits.device)]).float().cpu()
    unembed, bias_diff = answer_directions(model, correct, incorrect)  # [n, d_model], [n]
    scale = cache[site("final_scale")][:, end]  # [n, 1]: the final norm's scale on this run, frozen

    def project(x: Tensor) -> Tensor:  # x: [n, ..., d_model] at the end position
        return frozen_readout(model, x, scale, unembed)

    embed = cache[site("embed")][:, end]
    if site("pos_embed") in cache:
        embed = embed + cache[site("pos_embed")][:, end].to(embed.device)
    W_O = model.W_O.detach()  # [L, H, d_head, d_model]
    heads, attn_bias, mlp = [], [], []
    for layer in range(cfg.n_layers):
        z = cache[site("z", layer)][:, end]  # [n, H, d_head]
        out = torch.einsum("nhe,hed->nhd", z, W_O[layer].to(z.device))  # per-head output [n, H, d_model]
        heads.append(project(out))
        attn_bias.append(project(cache[site("attn_out", layer)][:, end] - out.sum(1)))
        mlp.append(project(cache[site("mlp_out", layer)][:, end]))
    constant = readout_constant(model, unembed, bias_diff)
    result = DLA(torch.stack(heads, 1), torch.stack(attn_bias, 1), torch.stack(mlp, 1), project(embed), constant, total)
    error = (result.parts_sum() - total).abs().max().item()
    if error > atol * max(1.0, total.abs().max().item()):
        raise RuntimeError(f"DLA parts sum to the logit difference only within {error:.2e}: the decomposition is wrong")
    return result
