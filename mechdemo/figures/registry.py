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

**Threads and scale**: :mod:`mechdemo.figures.context`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator


from mechdemo import __version__
from mechdemo.errors import MechdemoError
from mechdemo.figures.context import FigureContext, check_scale, figure_threads, seed_everything
from mechdemo.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


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
                           "(every figure is then made again)", {"figures": dict})


def read_provenance(png: Path) -> dict:
    """The provenance a PNG written by :func:`run_figures` carries (its ``mechdemo`` text chunk)."""
    from PIL import Image

    with Image.open(png) as im:
        text = im.text.get("mechdemo")  # type: ignore[attr-defined]
    try:
        provenance = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        provenance = None
    if not isinstance(provenance, dict):
        raise MechdemoError(f"{png} carries no readable mechdemo provenance; regenerate it with `mechdemo figures`.")
    return provenance


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
    from tqdm.auto import tqdm

    from mechdemo.figures import style
    from mechdemo.figures.i18n import LANGUAGES
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
    read_manifest(out)  # a damaged manifest stops the run before any figure is computed
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
            if spec.site:
                files, shape = _write_site(spec, output, out, provenance), {}
            else:
                files, shape = _draw_in_every_language(spec, output, out, provenance, spec_model.display_name)
        seconds = time.perf_counter() - start
        entry = {
            **provenance,
            "files": files,
            "languages": list(LANGUAGES),
            **(shape or {"bytes": sum((out / f).stat().st_size for f in files)}),
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


def _write_site(spec: FigureSpec, output: FigureOutput, out: Path, provenance: dict) -> list[str]:
    """A site figure: its ``site`` callable writes ``out/<name>/``; its files, relative to ``out``."""
    if output.site is None or output.draw is not None:
        raise RuntimeError(f"figure {spec.name} is registered as a site: return FigureOutput(None, site=...)")
    files = [f"{spec.name}/{f}" for f in output.site(out / spec.name, provenance)]
    missing = set(spec.outputs) - set(files)
    if missing:
        raise RuntimeError(f"figure {spec.name} did not write {sorted(missing)}")
    return files


def _draw_in_every_language(spec: FigureSpec, output: FigureOutput, out: Path, provenance: dict,
                            model_label: str) -> tuple[list[str], dict]:
    """Draw the figure once per language into ``out/<lang>/`` (PNG with its provenance, and the HTML page
    if registered); its files and ``{"size_in", "min_font_pt"}`` (the same size in every language)."""
    import matplotlib.pyplot as plt

    from mechdemo.figures import style
    from mechdemo.figures.i18n import LANGUAGES, language, localize_ticks

    files, sizes, smallest = [], set(), []
    for lang in LANGUAGES:
        (out / lang).mkdir(exist_ok=True)
        with language(lang):
            fig = output.draw()
            localize_ticks(fig)
            size, points = check_text_size(fig, f"{spec.name} ({lang})")
            png = out / lang / f"{spec.name}.png"
            fig.savefig(png, dpi=style.DPI, metadata={
                "Title": f"{spec.name}" + (f" ({model_label})" if provenance["model"] else ""),
                "Software": f"mechdemo {__version__}", "Source": spec.generator,
                "Creation Time": provenance["date"], "mechdemo": json.dumps({**provenance, "language": lang}),
            })
            plt.close(fig)
            files.append(f"{lang}/{png.name}")
            sizes.add(size)
            smallest.append(points)
            if f"{lang}/{spec.name}.html" in spec.outputs:
                if output.html is None:
                    raise RuntimeError(f"figure {spec.name} is registered with html=True but returned none")
                (out / lang / f"{spec.name}.html").write_text(output.html(), encoding="utf-8")
                files.append(f"{lang}/{spec.name}.html")
    if len(sizes) != 1:
        raise RuntimeError(f"figure {spec.name} is drawn at different sizes per language: {sorted(sizes)}")
    return files, {"size_in": list(sizes.pop()), "min_font_pt": min(smallest)}


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
