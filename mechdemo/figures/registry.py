"""The figure registry: one registered function per figure; the registry writes the files.

A figure function takes a :class:`FigureContext` (the model, loaded once per run and shared by
every figure that needs it; the seed; the output folder) and returns a :class:`FigureOutput`: the
numbers the deck may cite, a ``draw()`` callable that draws the figure from them, optionally an
``html()`` page. It computes with the analysis modules and draws with
:mod:`mechdemo.figures.style`; it never writes files.

**Compute once, draw in every language.** :func:`run_figures` calls the figure function once,
then ``draw()`` once per language of :data:`mechdemo.figures.i18n.LANGUAGES`, with the text of
the translation table (:func:`mechdemo.figures.i18n.tr`): ``img/es/<name>.png`` for the Spanish
deck, ``img/en/<name>.png`` for the English one (and ``<lang>/<name>.html``). Analyses that
several figures show are computed once per run (:meth:`FigureContext.computed`) and each figure
draws its part: one message per figure, one computation per analysis.

**Made for the slide.** The registry refuses a figure whose smallest text would be under
:data:`mechdemo.figures.style.MIN_TEXT_PX` on the slide, and records each figure's size (inches)
and smallest font (pt) in the manifest, which the deck's render test checks against the slide.

PNG files carry their provenance in PNG text chunks (figure, language, model, seed, mechdemo
version, date), and ``manifest.json`` lists every figure with its generator, model, files,
results and the seconds it took.

**Threads.** Every figure runs on exactly ``FIGURE_THREADS`` torch threads (2, or
``$MECHDEMO_FIGURE_THREADS``), whatever the machine's core count: reductions split over another
number of threads round differently, and training loops (SAEs, toy models) amplify that into other
numbers. The count is recorded in the manifest. (SAE training and the extraction of its dataset pin
``mechdemo.sae.TRAIN_THREADS``, toy models ``mechdemo.superposition.TOY_THREADS``, so those results
do not follow this setting; ``$MECHDEMO_MAX_THREADS`` caps all of them, see :mod:`mechdemo.threads`.)

**Scale.** ``run_figures(scale="full")`` computes what the deck shows. ``scale="small"`` runs the
same code paths on small inputs (few prompts, few training steps): what ``make test`` uses to check
every figure function end to end. A figure function reads its sizes with
``ctx.pick(full, small)``; small-scale numbers are never compared with the committed manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mechdemo import __version__
from mechdemo.errors import MechdemoError
from mechdemo.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCALES = ("full", "small")
FIGURE_THREADS = 2
MAX_FLOAT64_BYTES = 4 * 2**30  # FigureContext.model64: larger models are not copied to float64


def check_scale(scale: str) -> None:
    """A clear error unless ``scale`` is one of :data:`SCALES`."""
    if scale not in SCALES:
        raise MechdemoError(f"unknown figure scale {scale!r}: choose one of {', '.join(SCALES)}")


def figure_threads() -> int:
    """Torch threads of a figure run: ``$MECHDEMO_FIGURE_THREADS`` or :data:`FIGURE_THREADS`."""
    value = os.environ.get("MECHDEMO_FIGURE_THREADS", str(FIGURE_THREADS))
    if not value.isdigit() or int(value) < 1:
        raise MechdemoError(f"MECHDEMO_FIGURE_THREADS must be a positive integer, not {value!r}")
    return int(value)


@dataclass
class FigureOutput:
    """What a figure function returns: how to draw it, and the numbers the deck may cite.

    ``draw()`` returns a matplotlib ``Figure``; the registry calls it once per language (text
    through :func:`mechdemo.figures.i18n.tr`). ``html()`` returns a self-contained page (no
    network), written as ``<lang>/<name>.html``, also once per language.

    A *site* figure (registered with ``site=True``: the SAE feature browser) draws no PNG
    (``draw`` is ``None``): ``site(folder, provenance)`` writes a static site, pages for every
    language, into ``<name>/`` and returns its files, relative to that folder.
    """

    draw: Callable[[], Any] | None
    html: Callable[[], str] | None = None
    results: dict[str, Any] = field(default_factory=dict)  # JSON-able numbers the deck may cite
    site: Callable[[Path, dict], list[str]] | None = None


class FigureTextTooSmall(MechdemoError):
    pass


@dataclass(frozen=True)
class FigureSpec:
    name: str
    func: Callable[["FigureContext"], Any]
    outputs: tuple[str, ...]  # files written into the output folder
    needs_model: bool
    seed: int
    description: str
    site: bool = False  # a static site in <name>/ (its pages: outputs), no PNG

    @property
    def generator(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"


FIGURES: dict[str, FigureSpec] = {}


def figure(
    name: str,
    *,
    description: str,
    html: bool = False,
    site: tuple[str, ...] = (),
    needs_model: bool = True,
    seed: int = 0,
) -> Callable:
    """Register ``func`` as the generator of ``img/<lang>/<name>.png`` (and ``.html`` if ``html``), or,
    with ``site`` (the pages every language gets, e.g. ``("index.html", "feature.html")``), of a static
    site ``img/<name>/`` with pages ``<name>/<lang>/<page>``."""
    from mechdemo.figures.i18n import LANGUAGES

    def register(func: Callable) -> Callable:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        if site:
            outputs = tuple(f"{name}/{lang}/{page}" for lang in LANGUAGES for page in site)
        else:
            outputs = tuple(f"{lang}/{name}.{ext}" for lang in LANGUAGES for ext in ("png",) + (("html",) if html else ()))
        FIGURES[name] = FigureSpec(name, func, outputs, needs_model, seed, description, site=bool(site))
        return func

    return register


class FigureContext:
    """What a figure function gets: the run's model (loaded on first use), seed and settings."""

    def __init__(self, model_name: str, seed: int, device: str | None, models: dict, memo: dict | None = None,
                 scale: str = "full"):
        check_scale(scale)
        self.model_name = model_name
        self.seed = seed
        self.device = device
        self.scale = scale
        self._models = models  # shared across the run: each model loads once
        self._memo = memo if memo is not None else {}  # shared across the run: results reused by several figures

    def pick(self, full: Any, small: Any) -> Any:
        """``full`` for the deck's figures, ``small`` for the quick end-to-end run of the tests."""
        return full if self.scale == "full" else small

    def computed(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run, model and seed; later figures asking for ``key`` reuse it."""
        full = (self.model_name, self.seed, self.scale, key)
        if full not in self._memo:
            self._memo[full] = compute()
        return self._memo[full]

    @property
    def model(self):
        if self.model_name not in self._models:
            from mechdemo.models import load_model

            log.info("Loading %s ...", self.model_name)
            self._models[self.model_name] = load_model(self.model_name, device=self.device)
        return self._models[self.model_name]

    @property
    def model64(self):
        """The run's model in float64 (a copy, made once per run), for the computations whose rounding
        the figure amplifies: SAE training data and t-SNE. MKL's float32 sums differ in their last bits
        between Intel and AMD CPUs (``MKL_CBWR=AVX2`` holds on Intel CPUs only; ``mechdemo.kernels``),
        and training or t-SNE turn that into other features and maps; float64 moves the differences to
        1e-16, below the bf16 rounding of an activation dataset and far below what the deck shows.
        A model over :data:`MAX_FLOAT64_BYTES` in float64 (Llama 3.2 1B: 10 GB) is used as it is."""
        key = (self.model_name, "float64")
        if key not in self._models:
            from mechdemo.models import to_float64

            model = self.model
            size = sum(p.numel() for p in model.parameters()) * 8
            if size > MAX_FLOAT64_BYTES:
                log.warning("%s is %.1f GB in float64: using it in its own dtype (numbers may then differ in "
                            "their last digits between CPU vendors)", self.model_name, size / 1e9)
                self._models[key] = model
            else:
                self._models[key] = to_float64(model)
        return self._models[key]

    @property
    def spec(self):
        from mechdemo.models import get_spec

        return get_spec(self.model_name)

    @property
    def model_label(self) -> str:
        """Human name of the model for titles, e.g. 'SmolLM2-135M-Instruct'."""
        return self.spec.display_name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_text_size(fig, name: str) -> tuple[tuple[float, float], float]:
    """(size in inches, smallest font in pt) of a drawn figure; an error if text is too small."""
    from mechdemo.figures import style

    inches = tuple(float(x) for x in fig.get_size_inches())
    size = tuple(round(x, 3) for x in inches)
    points, text = style.smallest_text(fig)
    px = points / 72 * style.shown_px_per_inch(inches)
    if px < style.MIN_TEXT_PX - 1e-6:
        raise FigureTextTooSmall(
            f"figure {name}: text {text!r} is {points:g} pt, {px:.1f} px on the slide (figure {size[0]:g} x "
            f"{size[1]:g} in); the floor is {style.MIN_TEXT_PX} px: enlarge the font or shrink the figure"
        )
    return size, float(points)


def default_out_dir(model_name: str) -> Path:
    """``img/`` of the source tree for the default model; ``img/<model>/`` for any other."""
    from mechdemo.models import DEFAULT_MODEL

    root = Path(__file__).resolve().parents[2]
    img = root / "img" if (root / "img").is_dir() else Path.cwd() / "img"
    return img if model_name == DEFAULT_MODEL else img / model_name.split("/")[-1]


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Exclusive lock of ``out``'s manifest: two runs writing into one folder (two terminals, two
    ``--only`` runs side by side) each add their entries instead of overwriting the other's."""
    import fcntl

    with open(out / ".manifest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"figures": {}}
    return read_json(path, "restore it with `git checkout img/manifest.json`, or delete it and run `mechdemo figures` "
                           "(every figure is then made again)")


def read_provenance(png: Path) -> dict:
    """The provenance a PNG written by :func:`run_figures` carries (its ``mechdemo`` text chunk)."""
    from PIL import Image

    with Image.open(png) as im:
        text = im.text.get("mechdemo")  # type: ignore[attr-defined]
    if text is None:
        raise MechdemoError(f"{png} carries no mechdemo provenance; regenerate it with `mechdemo figures`.")
    return json.loads(text)


def select(names: list[str] | None) -> list[FigureSpec]:
    if not names:
        return list(FIGURES.values())
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise MechdemoError(
            f"Unknown figure(s): {', '.join(unknown)}. Registered figures: {', '.join(FIGURES)} "
            "(`mechdemo figures --list` describes them)."
        )
    return [FIGURES[n] for n in names]


def _results_jsonable(results: dict) -> dict:
    return json.loads(json.dumps(results, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run_figures(
    names: list[str] | None = None,
    model_name: str | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    scale: str = "full",
    models: dict | None = None,
) -> dict[str, dict]:
    """Regenerate figures (all, or ``names``) on ``model_name``; return their manifest entries.

    Each entry records ``seconds``: the figure's wall time, including whatever shared computation
    (model load, an activation dataset) it was the first to ask for. ``models`` ({name: model}) lends
    already-loaded models to the run (the tests pass their session model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from mechdemo.figures import style
    from mechdemo.figures.i18n import LANGUAGES, language, localize_ticks
    from mechdemo.models import get_spec

    from mechdemo.threads import capped, fixed_threads

    spec_model = get_spec(model_name)  # validates the name before any work
    threads = capped(figure_threads())  # what fixed_threads will use
    check_scale(scale)  # before the model loads
    if scale != "full" and out_dir is None:
        raise MechdemoError(f"--scale {scale} figures are not the deck's: give them their own folder with --out DIR")
    specs = select(names)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec_model.name)
    out.mkdir(parents=True, exist_ok=True)
    if names is None:
        _forget_unregistered(out)
    models = dict(models or {})
    memo: dict = {}
    written: dict[str, dict] = {}
    bar = tqdm(specs, desc="figures", unit="fig", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        seed_everything(spec.seed)
        ctx = FigureContext(spec_model.name, spec.seed, device, models, memo, scale=scale)
        start = time.perf_counter()
        with style.projector_style(), fixed_threads(threads):
            output = spec.func(ctx)
            if not isinstance(output, FigureOutput):
                raise TypeError(f"figure {spec.name} must return a FigureOutput(draw=..., results=...)")
            date = datetime.now(timezone.utc).isoformat(timespec="seconds")
            model = spec_model.name if spec.needs_model else None
            provenance = {
                "figure": spec.name,
                "model": model,
                "seed": spec.seed,
                "mechdemo_version": __version__,
                "generator": spec.generator,
                "date": date,
            }
            files, sizes, smallest = [], set(), []
            if spec.site:
                if output.site is None or output.draw is not None:
                    raise RuntimeError(f"figure {spec.name} is registered as a site: return FigureOutput(None, site=...)")
                written_files = output.site(out / spec.name, provenance)
                files = [f"{spec.name}/{f}" for f in written_files]
                missing = set(spec.outputs) - set(files)
                if missing:
                    raise RuntimeError(f"figure {spec.name} did not write {sorted(missing)}")
            for lang in LANGUAGES if not spec.site else ():
                (out / lang).mkdir(exist_ok=True)
                with language(lang):
                    fig = output.draw()
                    localize_ticks(fig)
                    size, points = check_text_size(fig, f"{spec.name} ({lang})")
                    png = out / lang / f"{spec.name}.png"
                    fig.savefig(
                        png,
                        dpi=style.DPI,
                        metadata={
                            "Title": f"{spec.name}" + (f" ({spec_model.display_name})" if model else ""),
                            "Software": f"mechdemo {__version__}",
                            "Source": spec.generator,
                            "Creation Time": date,
                            "mechdemo": json.dumps({**provenance, "language": lang}),
                        },
                    )
                    plt.close(fig)
                    files.append(f"{lang}/{png.name}")
                    sizes.add(size)
                    smallest.append(points)
                    if f"{lang}/{spec.name}.html" in spec.outputs:
                        if output.html is None:
                            raise RuntimeError(f"figure {spec.name} is registered with html=True but returned none")
                        (out / lang / f"{spec.name}.html").write_text(output.html(), encoding="utf-8")
                        files.append(f"{lang}/{spec.name}.html")
            if len(sizes) != 1 and not spec.site:
                raise RuntimeError(f"figure {spec.name} is drawn at different sizes per language: {sorted(sizes)}")
        seconds = time.perf_counter() - start
        entry = {
            **provenance,
            "files": files,
            "languages": list(LANGUAGES),
            **({"bytes": sum((out / f).stat().st_size for f in files)} if spec.site
               else {"size_in": list(sizes.pop()), "min_font_pt": min(smallest)}),
            "description": spec.description,
            "results": _results_jsonable(output.results),
            "seconds": round(seconds, 1),
            "threads": threads,
        }
        if scale != "full":
            entry["scale"] = scale
        with _locked(out):  # after each figure: nothing done is lost
            manifest = read_manifest(out)
            manifest.setdefault("figures", {})[spec.name] = entry
            manifest["mechdemo_version"] = __version__
            manifest["model"] = spec_model.deck_facts()  # what the deck says about the model
            write_json_atomic(out / MANIFEST, manifest, fsync=False, ensure_ascii=False, newline=True)
        written[spec.name] = entry
    return written


def _forget_unregistered(out: Path) -> None:
    """Before a run of every figure: drop the manifest entries (and files) of figures no longer
    registered (renamed or split), so that the folder holds what the registry writes."""
    with _locked(out):
        manifest = read_manifest(out)
        stale = [name for name in manifest.get("figures", {}) if name not in FIGURES]
        for name in stale:
            for file in manifest["figures"].pop(name).get("files", []):
                (out / file).unlink(missing_ok=True)
            log.info("removed %s: no longer a registered figure", name)
        if stale:
            write_json_atomic(out / MANIFEST, manifest, fsync=False, ensure_ascii=False, newline=True)


def time_table(entries: dict[str, dict]) -> str:
    """The per-figure wall times of a run, slowest first, with the total."""
    rows = sorted(entries.items(), key=lambda kv: -kv[1].get("seconds", 0.0))
    total = sum(e.get("seconds", 0.0) for e in entries.values())
    width = max([len(n) for n in entries] + [6])
    lines = [f"{'figure':<{width}}  seconds  share"]
    for name, e in rows:
        s = e.get("seconds", 0.0)
        lines.append(f"{name:<{width}}  {s:7.1f}  {s / total if total else 0:5.0%}")
    lines.append(f"{'total':<{width}}  {total:7.1f}  ({total / 60:.1f} min)")
    return "\n".join(lines)
