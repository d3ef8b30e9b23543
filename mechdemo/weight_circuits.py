"""QK and OV circuits of attention heads, from the weights (Elhage et al. 2021).

A head reads the residual stream twice and writes it once. With the weights of head ``h``:

* ``W_QK = W_Q W_K^T`` (d_model x d_model) is the bilinear form that scores a query residual
  vector against a key residual vector: *where* the head attends;
* ``W_OV = W_V W_O`` (d_model x d_model) maps the residual vector at the attended position to
  what the head adds at the query position: *what* it moves.

Both have rank ``d_head``, so they are kept factored (TransformerLens ``FactoredMatrix``).

**Grouped-query attention.** Llama-family models have fewer key/value heads than query heads;
query head ``h`` uses key/value head ``h // (n_heads // n_kv_heads)`` (Hugging Face's
``repeat_kv``). :func:`kv_head` is that map, and every circuit here uses it.

**Norms.** Each head reads ``norm(x) = γ ⊙ x / rms(x)`` (RMSNorm; LayerNorm also subtracts the
mean of x first), and the logits read ``final_norm(x) W_U``. With ``fold_norms=True`` (the default)
the norms' weights are folded into the circuits (``diag(γ) W_Q``, ``diag(γ_final) W_U``; for
LayerNorm also the centring projection), as TransformerLens's ``fold_ln`` does, so the circuits
act on unit-scale residual directions (:func:`mechdemo.readout.norm_map`, the readout's own fold). The per-token scale ``1 / rms(x)`` is dropped: it is a
positive number per position, so it changes no ranking and no sign. Biases are ignored.

**Full circuits** go from tokens to tokens: ``E W_OV U`` (``E`` the embedding of the source
token, ``U`` the unembedding) says which logits a head raises at the query when it attends to a
given token. A strong diagonal means the head *copies* the attended token: the OV half of an
induction head. We use the *effective* embedding ``E = W_E + MLP_0(W_E)`` (the embedding after
the first MLP, without attention), because in deep models the first MLP acts as part of the
embedding (Wang et al. 2022 do the same for GPT-2's name movers).

**Positions.** GPT-2 adds a learned ``W_pos`` to the residual stream, so its positional QK
circuit ``W_pos W_QK W_pos^T`` exists as a matrix. Rotary models (Llama, SmolLM2) have no
positional vectors: RoPE rotates queries and keys by an angle proportional to their position, so
the score of a (query, key) pair depends on the relative offset inside the QK product.
For those models :func:`mean_score_by_offset` measures instead what a positional QK circuit
would show: the head's average pre-softmax score as a function of the offset ``q - k``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import FactoredMatrix

from mechdemo.errors import OutOfRangeError
from mechdemo.interventions import run, site
from mechdemo.readout import folded_unembedding, norm_map

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_head(model: "TransformerBridge", layer: int, head: int | None = None) -> None:
    """Raise :class:`OutOfRangeError` naming the valid range for a bad layer or head index."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not 0 <= layer < n_layers:
        raise OutOfRangeError(f"layer {layer} is out of range: {model.cfg.model_name} has layers 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise OutOfRangeError(f"head {head} is out of range: {model.cfg.model_name} has heads 0..{n_heads - 1}")


def kv_head(model: "TransformerBridge", head: int) -> int:
    """The key/value head that query head ``head`` reads (itself without GQA)."""
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    return head // (model.cfg.n_heads // n_kv)


def head_weights(
    model: "TransformerBridge", fold_norms: bool = True
) -> dict[str, Float[Tensor, "n_layers n_heads ..."]]:
    """Per-query-head ``W_Q, W_K, W_V`` ([layer, head, d_model, d_head]) and ``W_O`` ([layer, head, d_head, d_model]).

    K and V are expanded from key/value heads to query heads with :func:`kv_head`.
    """
    cfg = model.cfg
    idx = torch.tensor([kv_head(model, h) for h in range(cfg.n_heads)])
    W_Q = model.W_Q.detach().float().cpu()
    W_K = model.W_K.detach().float().cpu()[:, idx]
    W_V = model.W_V.detach().float().cpu()[:, idx]
    W_O = model.W_O.detach().float().cpu()
    if fold_norms:
        folds = torch.stack([norm_map(model.blocks[l].ln1, cfg.d_model) for l in range(cfg.n_layers)])
        W_Q = torch.einsum("lde,lhef->lhdf", folds, W_Q)
        W_K = torch.einsum("lde,lhef->lhdf", folds, W_K)
        W_V = torch.einsum("lde,lhef->lhdf", folds, W_V)
    return {"W_Q": W_Q, "W_K": W_K, "W_V": W_V, "W_O": W_O}


def qk_circuit(model: "TransformerBridge", fold_norms: bool = True) -> FactoredMatrix:
    """``W_QK = W_Q W_K^T`` for every head: a FactoredMatrix of shape [n_layers, n_heads, d_model, d_model]."""
    w = head_weights(model, fold_norms)
    return FactoredMatrix(w["W_Q"], w["W_K"].transpose(-2, -1))


def ov_circuit(model: "TransformerBridge", fold_norms: bool = True) -> FactoredMatrix:
    """``W_OV = W_V W_O`` for every head: a FactoredMatrix of shape [n_layers, n_heads, d_model, d_model]."""
    w = head_weights(model, fold_norms)
    return FactoredMatrix(w["W_V"], w["W_O"])


def unembedding(model: "TransformerBridge", fold_norms: bool = True) -> Float[Tensor, "d_model d_vocab"]:
    """``W_U``, with the final norm folded in by default (:func:`mechdemo.readout.folded_unembedding`)."""
    return folded_unembedding(model) if fold_norms else model.W_U.detach().float().cpu()


def effective_embedding(
    model: "TransformerBridge", token_ids: Int[Tensor, " n"], through_mlp0: bool = True
) -> Float[Tensor, "n d_model"]:
    """Residual vectors of ``token_ids``: ``W_E`` plus, by default, what MLP 0 adds to it alone."""
    W_E = model.W_E.detach()[token_ids.to(model.W_E.device)]
    if not through_mlp0:
        return W_E.float().cpu()
    block = model.blocks[0]
    with torch.no_grad():
        extra = block.mlp.original_component(block.ln2.original_component(W_E[None]))[0]
    return (W_E + extra).float().cpu()


def _unit_rms(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()


def full_ov_circuit(
    model: "TransformerBridge", layer: int, head: int, token_ids: Int[Tensor, " n"]
) -> Float[Tensor, "n_src n_dst"]:
    """Logit change on each token of ``token_ids`` (columns) when the head attends to each (rows).

    ``norm(E) W_OV U`` restricted to ``token_ids``; the row of token ``t`` says which tokens the
    head promotes when it moves ``t``. Copying heads have the largest entry on the diagonal.
    """
    check_head(model, layer, head)
    E = _unit_rms(effective_embedding(model, token_ids))
    ov = ov_circuit(model)[layer, head]
    return (E @ ov.A) @ (ov.B @ unembedding(model)[:, token_ids.cpu()])


def copying_scores(
    model: "TransformerBridge", token_ids: Int[Tensor, " n"]
) -> Float[Tensor, "n_layers n_heads"]:
    """Fraction of ``token_ids`` whose own logit is the largest in their row of the full OV circuit.

    A random matrix scores about ``1 / len(token_ids)``; a perfect copying head scores 1.
    """
    E = _unit_rms(effective_embedding(model, token_ids))
    U = unembedding(model)[:, token_ids.cpu()]
    w = head_weights(model)
    # [layer, head, n, n] would be large; go layer by layer
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    diag_ids = torch.arange(len(token_ids))
    for layer in range(model.cfg.n_layers):
        left = torch.einsum("nd,hde->hne", E, w["W_V"][layer])  # [head, n, d_head]
        right = torch.einsum("hed,dm->hem", w["W_O"][layer], U)  # [head, d_head, n]
        circuit = left @ right  # [head, n, n]
        out[layer] = (circuit.argmax(-1) == diag_ids).float().mean(-1)
    return out


def ov_eigenvalue_scores(model: "TransformerBridge", token_ids: Int[Tensor, " n"]) -> Float[Tensor, "n_layers n_heads"]:
    """Elhage et al.'s copying measure: ``Σλ / Σ|λ|`` over the eigenvalues of ``E W_OV U``.

    +1: all eigenvalues positive (the head raises the logits of what it attends to, i.e. copies);
    -1: it suppresses them. The full circuit is factored, so eigenvalues cost d_head x d_head.
    """
    E = _unit_rms(effective_embedding(model, token_ids))
    U = unembedding(model)[:, token_ids.cpu()]
    ov = ov_circuit(model)
    full = FactoredMatrix(E @ ov.A, ov.B @ U)  # [layer, head, n, n] (never materialised)
    lam = full.eigenvalues
    return (lam.sum(-1).real / lam.abs().sum(-1)).float()


def k_composition_scores(model: "TransformerBridge", fold_norms: bool = True) -> Float[Tensor, "L H L H"]:
    """How much each head's output is read by each later head's keys (Elhage et al. 2021).

    ``||W_OV^1 W_QK^{2 T}||_F / (||W_OV^1||_F ||W_QK^2||_F)`` for head 1 in an earlier layer than head 2
    (0 elsewhere). Previous-token heads compose with induction heads through K: the induction head's
    key at position k then carries "the token before k".

    Same numbers as ``transformer_lens.utilities.composition_scores(OV, QK.T)``, computed by hand
    because that materialises a d_model x d_model product for every pair (40 s for 270 x 270 pairs
    here). With ``W_OV^1 W_QK^{2 T} = V_1 (O_1 K_2) Q_2^T`` and ``M = O_1 K_2`` (d_head x d_head),
    ``||.||_F^2 = tr(M^T (V_1^T V_1) M (Q_2^T Q_2))``: only d_head-sized products (under a second).
    """
    w = head_weights(model, fold_norms)
    V, O, Q, K = w["W_V"], w["W_O"], w["W_Q"], w["W_K"]
    gram_v = V.transpose(-2, -1) @ V  # [L, H, dh, dh]
    gram_q = Q.transpose(-2, -1) @ Q
    ov_norm = (gram_v * (O @ O.transpose(-2, -1))).sum((-2, -1)).sqrt()  # ||V O||_F
    qk_norm = (gram_q * (K.transpose(-2, -1) @ K)).sum((-2, -1)).sqrt()  # ||Q K^T||_F
    n_layers, n_heads = V.shape[:2]
    scores = torch.zeros(n_layers, n_heads, n_layers, n_heads)
    for l1 in range(n_layers - 1):
        M = torch.einsum("hid,mgdj->hmgij", O[l1], K[l1 + 1 :])  # [H, L', H, dh, dh]
        T = M.transpose(-2, -1) @ (gram_v[l1][:, None, None] @ M)
        comp = (T * gram_q[None, l1 + 1 :]).sum((-2, -1)).clamp_min(0).sqrt()
        scores[l1, :, l1 + 1 :] = comp / ov_norm[l1][:, None, None] / qk_norm[None, l1 + 1 :]
    return scores


def positional_qk(model: "TransformerBridge", layer: int, head: int, n_pos: int = 64) -> Float[Tensor, "q k"]:
    """``W_pos W_QK W_pos^T`` (learned positions only): the positional part of a head's scores."""
    check_head(model, layer, head)
    if model.cfg.positional_embedding_type != "standard":
        raise ValueError(
            f"{model.cfg.model_name} uses rotary positions: there is no W_pos; use mean_score_by_offset"
        )
    W_pos = model.pos_embed.W_pos.detach().float().cpu()[:n_pos]
    P = _unit_rms(W_pos)
    qk = qk_circuit(model)[layer, head]
    return (P @ qk.A) @ (qk.B @ P.T) / model.cfg.d_head**0.5


def mean_score_by_offset(
    model: "TransformerBridge", layer: int, head: int, tokens: Int[Tensor, "batch pos"], max_offset: int = 16
) -> Float[Tensor, " offset"]:
    """Mean pre-softmax attention score of a head for keys ``offset = q - k`` positions back (0..max_offset).

    Measured on ``tokens`` (e.g. random tokens, where content carries no signal): the positional
    preference of a head, for any kind of positional encoding.
    """
    check_head(model, layer, head)
    name = site("attn_scores", layer)
    with torch.no_grad():
        _, cache = run(model, tokens, stop_after=name)  # the later layers are not needed
    s = cache[name][:, head].float().cpu()  # [batch, q, k]
    return torch.stack([s.diagonal(offset=-o, dim1=-2, dim2=-1)[:, 1:].mean() for o in range(max_offset + 1)])
