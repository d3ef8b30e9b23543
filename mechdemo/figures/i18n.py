"""The figures' one translation table: every figure is drawn in Spanish and in English.

A figure function computes its results once and returns a ``draw()`` callable; the registry calls
it once per language in :data:`LANGUAGES`, inside :func:`language`. Plotting code writes its text
in English through :func:`tr` (the English string is the key) and formats numbers with :func:`num`
(decimal comma and thousands point in Spanish, as the Spanish deck formats its numbers)::

    ax.set_ylabel(tr("cross-entropy loss (nats)"))
    ax.text(x, y, tr("first half: {loss} nats", loss=num(mean_first, ".2f")))

A string missing from the table stops the figure with an error naming it (the small-scale run of
``make test`` draws every figure in every language, so a missing translation never reaches a
slide). Technical terms stay in English in Spanish too, as is usual in the field (*head*,
*logit*, *residual stream*, *feature*, *SAE* ...). Tick labels are localised by the registry
(:func:`localize_ticks`).

Why a dictionary and not gettext: the deck has two languages and a few hundred short strings; a
Python table keeps them next to the code, reviewable in one file, with no build step.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterator

from mechdemo.errors import MechdemoError

LANGUAGES = ("es", "en")
SOURCE = "en"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("mechdemo_figure_language", default=SOURCE)


class MissingTranslation(MechdemoError):
    pass


@contextlib.contextmanager
def language(lang: str) -> Iterator[None]:
    """Draw in ``lang`` (one of :data:`LANGUAGES`) inside the block."""
    if lang not in LANGUAGES:
        raise MechdemoError(f"unknown figure language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    token = _current.set(lang)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def tr(text: str, **values: object) -> str:
    """``text`` (English, the key) in the current language, with ``{name}`` fields filled in.

    Pass numbers already formatted with :func:`num`, so that they follow the language too.
    """
    lang = _current.get()
    if lang == SOURCE:
        out = text
    else:
        try:
            out = TABLE[lang][text]
        except KeyError:
            raise MissingTranslation(
                f"no {lang!r} translation of figure text {text!r}: add it to mechdemo/figures/i18n.py"
            ) from None
    return out.format(**values) if values else out


def translations(strings: list[str], lang: str) -> dict[str, str]:
    """``{english: text in lang}`` for each of ``strings``, from this table (the feature browser's UI:
    its pages get their text as one JSON object). A missing string is an error, as in :func:`tr`."""
    with language(lang):
        return {s: tr(s) for s in strings}


def num(value: float, spec: str = "") -> str:
    """``format(value, spec)`` in the current language: ``num(0.5, ".2f")`` is '0,50' in Spanish.

    One rule per language, the deck's (``slides/build.mjs``): a number from 1000 up has its
    thousands grouped, 4-digit ones included, whether or not ``spec`` asks for it (``num(2400)`` is
    '2,400' in English, '2.400' in Spanish, as ``Intl.NumberFormat`` writes them on the slides).
    """
    text = format(value, spec)
    bare = _GROUPABLE.match(spec)
    if bare and re.search(r"\d{4}", text.split(".")[0]) and not re.search(r"[a-zA-Z]", text):
        text = format(value, bare["head"] + "," + bare["tail"])  # ".0f" -> ",.0f", "" -> ","
    return num_text(text) if _current.get() == "es" else text


# a format spec without a thousands separator whose type accepts one: [fill align][sign][z][#][0][width] | [.precision][type]
_GROUPABLE = re.compile(r"^(?P<head>(?:.?[<>=^])?[+\- ]?z?#?0?\d*)(?P<tail>(?:\.\d+)?[dfFgG%]?)$")


def localize_ticks(fig) -> None:
    """Numbers on every axis of ``fig`` in the current language's notation (after the plotting code):
    thousands grouped from 1000 up, as :func:`num` writes them (on matplotlib's own number ticks only:
    labels the plotting code wrote, with ``set_ticks(..., labels)`` or a formatter of its own, keep
    their digits, since they may be tokens or identifiers or already come from :func:`num`), and
    decimal commas in Spanish."""
    from matplotlib.ticker import Formatter, LogFormatter, ScalarFormatter

    spanish = _current.get() == "es"

    class Localized(Formatter):
        def __init__(self, inner):
            self.inner = inner
            self.group = isinstance(inner, (ScalarFormatter, LogFormatter))

        def set_axis(self, axis):
            super().set_axis(axis)
            self.inner.set_axis(axis)

        def set_locs(self, locs):
            self.inner.set_locs(locs)

        def _text(self, label):
            label = _grouped(label) if self.group else label
            return _number_text(label) if spanish else label

        def format_ticks(self, values):
            return [self._text(s) for s in self.inner.format_ticks(values)]

        def __call__(self, x, pos=None):
            return self._text(self.inner(x, pos))

        def get_offset(self):
            offset = self.inner.get_offset()
            return num_text(offset) if spanish else offset

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for get, set_ in ((axis.get_major_formatter, axis.set_major_formatter),
                              (axis.get_minor_formatter, axis.set_minor_formatter)):
                inner = get()
                if not isinstance(inner, Localized):
                    set_(Localized(inner))


def _grouped(label: str) -> str:
    """A computed tick label (English notation) with the thousands of its integer parts grouped:
    '20000' -> '20,000', '$\\mathdefault{1500}$' -> '$\\mathdefault{1,500}$'; decimals, exponents
    ('10^{4}') and labels with letters other than mathtext's as they are."""
    if re.search(r"[A-Za-z]", re.sub(r"\\mathdefault|\\times", "", label)):
        return label
    return re.sub(r"(?<![\d.,^])(?<!\^\{)\d{4,}(?!\d)", lambda m: f"{int(m.group()):,}", label)


def _number_text(label: str) -> str:
    """A tick label in Spanish notation if it is a number (or mathtext); labels with letters as written:
    tokens such as '.', and text whose numbers are already formatted with :func:`num`."""
    numeric = any(c.isdigit() for c in label) and not re.search(r"[A-Za-z]", label)
    return num_text(label) if numeric or label.startswith("$") else label


def num_text(text: str) -> str:
    """A number already written in English notation, in Spanish notation ('1,234.5' -> '1.234,5')."""
    return text.replace(",", "\0").replace(".", ",").replace("\0", ".")


# ---- the table: English (key) -> Spanish ------------------------------------------------------
# One section per figure module, in the order of the deck. Keep technical terms in English.

ES: dict[str, str] = {
    # ---- shared (style helpers, several figures)
    "head": "head",
    "layer": "capa",
    "{model}": "{model}",
    # ---- architecture
    "{n} M": "{n} M",
    "residual stream  (d_model = {d})": "residual stream  (d_model = {d})",
    "tokens (BPE)\n→ ids": "tokens (BPE)\n→ ids",
    "Embedding $W_E$\n{v} × {d}": "Embedding $W_E$\n{v} × {d}",
    "× {n} layers": "× {n} capas",
    "Grouped-query attention\n{h} query heads, {kv} K/V\nd_head = {dh}, RoPE": "Grouped-query attention\n{h} heads de Q, {kv} de K/V\nd_head = {dh}, RoPE",
    "Multi-head attention\n{h} heads, d_head = {dh}": "Multi-head attention\n{h} heads, d_head = {dh}",
    "MLP ({act})\n{d} → {m} → {d}": "MLP ({act})\n{d} → {m} → {d}",
    "final {norm}": "{norm} final",
    "Unembedding\n$W_U = W_E^T$": "Unembedding\n$W_U = W_E^T$",
    "Unembedding\n$W_U$": "Unembedding\n$W_U$",
    "logits →\nnext token": "logits →\nsiguiente token",
    "Layers": "Capas",
    "Query / K/V heads": "Heads de query / K/V",
    "Vocabulary": "Vocabulario",
    "Context": "Contexto",
    "Norm": "Norma",
    "Positions": "Posiciones",
    "learned": "aprendidas",
    "gated {act}": "{act} con gate",
    "Tied $W_E$ / $W_U$": "$W_E$ y $W_U$ compartidas",
    "yes": "sí",
    "no": "no",
    "Parameters": "Parámetros",
    "{model}: MLP": "{model}: MLP",
    "output": "salida",
    "$W_{{out}}\\,\\mathrm{{{act}}}(W_{{in}}\\,x)$    2 matrices: {p} parameters per layer": "$W_{{out}}\\,\\mathrm{{{act}}}(W_{{in}}\\,x)$    2 matrices: {p} de parámetros por capa",
    "{model}: gated MLP ({kind})": "{model}: MLP con gate ({kind})",
    "$W_{{down}}\\,(\\mathrm{{{act}}}(W_{{gate}}\\,x) \\odot W_{{up}}\\,x)$    3 matrices: {p} parameters per layer": "$W_{{down}}\\,(\\mathrm{{{act}}}(W_{{gate}}\\,x) \\odot W_{{up}}\\,x)$    3 matrices: {p} de parámetros por capa",
    "Gated MLP\n({kind})\n{d} → {m} → {d}": "MLP con gate\n({kind})\n{d} → {m} → {d}",
    # ---- attention (head scores, attention patterns)
    "previous-token head": "previous-token head",
    "current-token head": "current-token head",
    "first-token head": "first-token head",
    "duplicate-token head": "duplicate-token head",
    "induction head": "induction head",
    "score: share of attention on the keys the rule names": "score: fracción de la atención en las keys que nombra la regla",
    "key (attended to)": "key (token atendido)",
    "query": "query",
    "attention weight": "peso de atención",
    "keys the rule names": "keys que nombra la regla",
    "Attention patterns of the best head of each type — {model}": "Patrones de atención de la mejor head de cada tipo — {model}",
    "Sentence: \"{sentence}\". Click a head to enlarge it; hover a token to see where it attends. Works offline.": "Frase: \"{sentence}\". Un clic en una head la amplía; al pasar el mouse sobre un token se ve adónde mira. Funciona offline.",
    # ---- induction
    "loss per token": "pérdida por token",
    "position of the predicted token": "posición del token predicho",
    "cross-entropy loss (nats)": "cross-entropy loss (nats)",
    "mean over {n} sequences": "media de {n} secuencias",
    "25–75 % of sequences": "25–75 % de las secuencias",
    "uniform guess ln({vocab}) = {value}": "predicción uniforme ln({vocab}) = {value}",
    "first R: {loss} nats": "primera R: {loss} nats",
    "repeated R: {loss} nats": "R repetida: {loss} nats",
    "repeat starts": "empieza la repetición",
    "induction score": "induction score",
    # ---- circuits (QK / OV)
    "logit raised (output token)": "logit que sube (token de salida)",
    "attended token": "token atendido",
    "logit change (row-centred)": "cambio de logit (centrado por fila)",
    "top {n} induction heads": "las {n} mejores induction heads",
    "top {n} copying heads": "las {n} heads que más copian",
    "induction score (attention: where it looks)": "induction score (atención: adónde mira)",
    "copying score (OV: what it writes)": "copying score (OV: qué escribe)",
    "top {n} induction heads (keys that read)": "las {n} mejores induction heads (keys que leen)",
    "previous-token heads\n(output written)": "previous-token heads\n(salida escrita)",
    "no outlier dimension: the largest is {ratio}× the median": "ninguna dimensión atípica: la mayor es {ratio}× la mediana",
    "no name mover found: path patching finds no IOI circuit on this model":
        "ningún name mover encontrado: el path patching no encuentra un circuito IOI en este modelo",
    "no name mover found: no path to their queries to scan":
        "ningún name mover encontrado: no hay caminos a sus queries que medir",
    "no previous-token head shown sits in an earlier layer than these induction heads":
        "ninguna previous-token head de las mostradas está en una capa anterior a estas induction heads",
    "mean of all pairs: {value}": "media de todos los pares: {value}",
    "key position": "posición de la key",
    "query position": "posición de la query",
    "positional score": "score posicional",
    "offset q − k (0 = the query itself, 1 = the previous token)": "offset q − k (0 = la propia query, 1 = el token anterior)",
    "mean score (pre-softmax)": "score medio (antes del softmax)",
    # ---- ioi
    "clean": "limpio",
    "corrupted": "corrompido",
    "mean LD {ld}": "LD medio {ld}",
    "copy ONE clean activation\n(one layer, one position or head)": "se copia UNA activación limpia\n(una capa, una posición o una head)",
    "LD = logit(IO) − logit(S), mean over the {n} prompts of the batch": "LD = logit(IO) − logit(S), media de los {n} prompts del batch",
    "score = (LD patched − LD corrupted) / (LD clean − LD corrupted)": "score = (LD con patch − LD corrompido) / (LD limpio − LD corrompido)",
    "1 = the clean answer is back;  0 = no effect": "1 = vuelve la respuesta limpia;  0 = sin efecto",
    "patching score (1 = clean)": "score de patching (1 = limpio)",
    "other heads": "otras heads",
    "MLPs": "MLPs",
    "embeddings": "embeddings",
    "logit diff": "logit diff",
    "logit(IO) − logit(S)": "logit(IO) − logit(S)",
    "heads → logits": "heads → logits",
    "heads → name movers' queries": "heads → queries de los name movers",
    "effect": "efecto",
    "after the\nname movers": "después de los\nname movers",
    "logits": "logits",
    "{kind}-composition": "{kind}-composition",
    "previous-token": "previous-token",
    "duplicate-token": "duplicate-token",
    "induction": "induction",
    "S-inhibition": "S-inhibition",
    "name mover": "name mover",
    "backup name mover": "backup name mover",
    "negative name mover": "negative name mover",
    "copy suppression": "copy suppression",
    "other direct effects": "otros efectos directos",
    "each head's output": "salida de cada head",
    "residual stream": "residual stream",
    "{name}: r = {r}": "{name}: r = {r}",
    "other positions: r = {r}": "otras posiciones: r = {r}",
    "position S2": "posición S2",
    "activation patching (exact)": "activation patching (exacto)",
    "attribution patching (estimate)": "attribution patching (estimación)",
    # ---- superposition
    "S = {s}: {n} of {total} features": "S = {s}: {n} de {total} features",
    "orthogonal": "ortogonales",
    "antipodal pairs": "pares antipodales",
    "pentagon": "pentágono",
    "no regular shape": "sin forma regular",
    "correlated: present together": "correlacionadas: aparecen juntas",
    "anticorrelated: never together": "anticorrelacionadas: nunca juntas",
    "cos(x0, x1) = {a}   cos(x2, x3) = {b}": "cos(x0, x1) = {a}   cos(x2, x3) = {b}",
    "pentagons": "pentágonos",
    "each feature: Dᵢ": "cada feature: Dᵢ",
    "whole model": "modelo entero",
    "1 / (1 − S): how rare each feature is": "1 / (1 − S): cuán rara es cada feature",
    "dimensions per feature": "dimensiones por feature",
    # ---- sae
    "top activations, distinct passages (held-out text)": "activaciones máximas, pasajes distintos (texto held-out)",
    "other tokens": "otros tokens",
    "where it fires": "dónde se activa",
    "tokens": "tokens",
    "ablated (×{s})": "ablacionada (×{s})",
    "×{s}": "×{s}",
    "feature {f} (“{t}”)": "feature {f} (“{t}”)",
    "random direction, same norm": "dirección aleatoria, misma norma",
    "next-token KL where it fires (nats)": "KL del siguiente token donde se activa (nats)",
    "> {p}% dead or dense features": "> {p} % de features muertas o densas",
    "TopK": "TopK",
    "ReLU + L1": "ReLU + L1",
    "JumpReLU": "JumpReLU",
    "explained variance": "varianza explicada",
    "loss recovered": "loss recovered",
    "L0: active features per token (held-out text)": "L0: features activas por token (texto held-out)",
    "{p}%": "{p} %",
    # ---- mlp
    "AI & education": "IA y educación",
    "biology": "biología",
    "mathematics": "matemáticas",
    "art": "arte",
    "MLP output of layer {layer}": "salida de la MLP de la capa {layer}",
    "Gaussian with the same mean and variance": "gaussiana con la misma media y varianza",
    "activation value": "valor de activación",
    "density (log scale)": "densidad (escala log)",
    "beyond ±{k} σ:\n{share} of the values\n(Gaussian: {g})": "más allá de ±{k} σ:\n{share} de los valores\n(gaussiana: {g})",
    "dim {dim}: {ratio}× the median\n(largest on {token})": "dim {dim}: {ratio}× la mediana\n(máximo en {token})",
    "median dimension: {value}": "dimensión mediana: {value}",
    "residual-stream dimension": "dimensión del residual stream",
    "mean |activation|": "|activación| media",
    "activation value (central range)": "valor de activación (rango central)",
    "density": "densidad",
    "PC 1 ({share} of the variance)": "PC 1 ({share} de la varianza)",
    "PC 2 ({share})": "PC 2 ({share})",
    "text tokens (mean)": "tokens del texto (media)",
    "BOS token": "token BOS",
    "‖MLP output‖ (log scale)": "‖salida de la MLP‖ (escala log)",
    "if spread evenly ({share})": "si se repartiera por igual ({share})",
    "layer {layer}\n(previous figures)": "capa {layer}\n(figuras anteriores)",
    "% of the squared norm": "% de la norma al cuadrado",
    "the {k} largest of {d} dimensions": "las {k} mayores de {d} dimensiones",
    "dim {dim}: {ratio}× the median": "dim {dim}: {ratio}× la mediana",
    "all {n} peak on the token {token}": "las {n} tienen su máximo en el token {token}",
    # ---- generation
    "{p}   (logit {z})": "{p}   (logit {z})",
    "probability = softmax(logits), over {n} tokens": "probabilidad = softmax(logits), sobre {n} tokens",
    "generation step (greedy takes the top row)": "paso de generación (greedy toma la fila de arriba)",
    "1st": "1.º",
    "2nd": "2.º",
    "3rd": "3.º",
    "with the cache: one token per step": "con cache: un token por paso",
    "without the cache: the whole sequence per step": "sin cache: toda la secuencia en cada paso",
    "{what} ({s} s in total)": "{what} ({s} s en total)",
    "position of the generated token": "posición del token generado",
    "ms per token (CPU)": "ms por token (CPU)",
    "2 × layers × K/V heads × d_head × tokens × bytes": "2 × capas × heads K/V × d_head × tokens × bytes",
    "  {mb} MB ({ratio}× too much)": "  {mb} MB ({ratio}× de más)",
    "KV cache for {n} tokens (MB)": "KV cache para {n} tokens (MB)",
    "the same with query heads": "lo mismo con las heads de query",
    # ---- circuit discovery
    "random edges": "edges al azar",
    "{edges} edges ({share} of the graph)": "{edges} edges ({share} del grafo)",
    "path-patching circuit ({n} heads)": "circuito de path patching ({n} heads)",
    "edges in the circuit (log scale; the whole graph: {n})": "edges en el circuito (escala log; el grafo entero: {n})",
    "faithfulness": "faithfulness",
    # ---- the SAE feature browser's pages (mechdemo/sites/assets/browser.js: UI_STRINGS)
    "model": "modelo",
    "SAE": "SAE",
    "features": "features",
    "{shown} of {total}": "{shown} de {total}",
    "held-out tokens": "tokens held-out",
    "dead features": "features muertas",
    "dense features": "features densas",
    "dead": "muerta",
    "dense": "densa",
    "never fires on the held-out tokens": "nunca se activa en los tokens held-out",
    "fires on more than {pct} of the held-out tokens": "se activa en más del {pct} de los tokens held-out",
    "Each row is one feature of the sparse autoencoder: how often it fires on the held-out tokens (density), its largest activation, a histogram of its nonzero activations and the tokens it fires on most. Click a number to open the feature's page.": "Cada fila es una feature del sparse autoencoder: con qué frecuencia se activa en los tokens held-out (densidad), su activación máxima, un histograma de sus activaciones no nulas y los tokens en los que más se activa. Un clic en el número abre la página de la feature.",
    "filter": "filtrar",
    "token text or feature number": "texto de un token o número de feature",
    "sort by": "ordenar por",
    "feature number": "número de feature",
    "density (high first)": "densidad (mayor primero)",
    "max activation (high first)": "activación máxima (mayor primero)",
    "hide dead features": "ocultar features muertas",
    "features listed": "features en la lista",
    "showing the first {n}": "se muestran las primeras {n}",
    "no feature matches the filter": "ninguna feature coincide con el filtro",
    "feature": "feature",
    "max activation": "activación máxima",
    "top tokens": "tokens principales",
    "activations": "activaciones",
    "fraction of the held-out tokens on which the feature fires": "fracción de los tokens held-out en los que se activa la feature",
    "histogram of its nonzero activations, from 0 to its maximum": "histograma de sus activaciones no nulas, de 0 a su máximo",
    "{n} times among its top contexts": "{n} veces entre sus contextos de activación máxima",
    "dataset": "dataset",
    "all features": "todas las features",
    "previous": "anterior",
    "next": "siguiente",
    "Feature {id}": "Feature {id}",
    "feature {id} · {title}": "feature {id} · {title}",
    "loading feature {id}…": "cargando la feature {id}…",
    "no feature {id}: this browser has features 0 to {max}": "no hay feature {id}: este navegador tiene las features 0 a {max}",
    "could not load {file}": "no se pudo cargar {file}",
    "This feature never fired on the held-out tokens: only its logit effect and nearest features are shown.": "Esta feature nunca se activó en los tokens held-out: solo se muestran su efecto en los logits y sus vecinas.",
    "{n} of {total} held-out tokens": "{n} de {total} tokens held-out",
    "how to read this page": "cómo leer esta página",
    "Histogram: how strongly the feature fires when it fires (its nonzero activations).": "Histograma: con qué fuerza se activa la feature cuando se activa (sus activaciones no nulas).",
    "Top activations: the texts where it fires most. The outlined token is where the value on the left was measured; each token is shaded by the feature's activation there (hover to read it).": "Top activations: los textos donde más se activa. El token recuadrado es donde se midió el valor de la izquierda; cada token se colorea según la activación de la feature en él (el mouse muestra el valor).",
    "Lower activations: samples from weaker quantile bands of its activations. Does it mean the same when it fires weakly?": "Activaciones más bajas: muestras de los cuantiles más débiles de sus activaciones. ¿Significa lo mismo cuando se activa poco?",
    "Logit effect: the output tokens its decoder direction pushes up or down most, directly.": "Efecto en los logits: los tokens de salida que su dirección del decoder sube o baja más, directamente.",
    "Nearest features: those with the most similar decoder directions (cosine).": "Vecinas: las features con la dirección del decoder más parecida (coseno).",
    "activation histogram": "histograma de activaciones",
    "activation": "activación",
    "count": "cantidad",
    "top activations": "activaciones máximas",
    "lower activations": "activaciones más bajas",
    "between {lo} and {hi} (quantiles {q0}–{q1})": "entre {lo} y {hi} (cuantiles {q0}–{q1})",
    "too few activations to sample lower bands": "muy pocas activaciones para muestrear bandas más bajas",
    "no contexts": "sin contextos",
    "logit effect": "efecto en los logits",
    "promoted": "promovidos",
    "suppressed": "suprimidos",
    "nearest features (decoder cosine)": "features vecinas (coseno del decoder)",
    "decoder cosine": "coseno del decoder",
}

TABLE: dict[str, dict[str, str]] = {"es": ES}
