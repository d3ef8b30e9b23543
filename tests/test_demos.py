"""The attendees' demos: every ``demos/NN_*.py`` runs headless on the offline model, and its
committed ``.ipynb`` is in sync with it.

Execution: each demo (a Jupytext percent-format script) is converted in memory and run cell by
cell with nbclient in a fresh ipykernel of this interpreter, in a temporary folder, with the
environment of the suite (``HF_HUB_OFFLINE=1``, ``MECHDEMO_CACHE`` inherited, no
``MECHDEMO_DEMO_MODEL``: the demos choose the offline default). The exercise solutions, folded away
in Jupyter, run too. A failing cell (including the ``assert``s the demos make on their own results)
fails the test with that cell's traceback.

Time bound: each demo must finish (kernel start to last cell) within ``TIME_BOUND_S[name]``
seconds, 3x its measured time. The kernel runs torch on one thread (``OMP_NUM_THREADS=1``): on the
shared 2-core machine CI runs on, torch's default two threads slowed the demos down 3-9x whenever
another process held a core (measured: 286 s instead of 42 s for demo 01), while one thread runs
at the same speed whether the other core is busy or not, and costs little on an idle machine
(demos/README.md lists both measurements). The bound is also nbclient's per-cell timeout, so a
hung cell cannot stall the suite. Demos measured over 30 s are marked ``slow``.

Sync: each ``.py`` is converted with Jupytext and compared, cell by cell (type, source, metadata),
with the committed ``.ipynb``, which must carry no outputs. Regenerate with ``make demo-notebooks``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

DEMOS_DIR = Path(__file__).resolve().parent.parent / "demos"
DEMOS = sorted(DEMOS_DIR.glob("[0-9][0-9]_*.py"))
REGENERATE = "run `make demo-notebooks` (jupytext --update --to ipynb demos/NN_*.py) and commit the .ipynb files"

# Seconds measured here (notebook wall time, warm weights cache, one torch thread, the other core busy).
MEASURED_S = {
    "01_anatomia_y_generacion": 41,
    "02_activaciones_mlp": 17,
    "03_atencion_e_induccion": 21,
    "04_ioi": 87,
    "05_superposicion": 20,
    "06_sparse_autoencoders": 87,
}
TIME_BOUND_S = {name: 3 * seconds for name, seconds in MEASURED_S.items()}
RUNS = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if MEASURED_S.get(p.stem, 99) > 30 else [])
        for p in DEMOS]


def test_the_six_demos_exist_and_have_a_time_bound():
    names = [p.stem for p in DEMOS]
    assert len(names) >= 6, names
    assert sorted(names) == sorted(TIME_BOUND_S), "every demo needs a time bound in TIME_BOUND_S (and vice versa)"


def _cells(nb) -> list[tuple[str, str, dict]]:
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


@pytest.mark.parametrize("source", DEMOS, ids=[p.stem for p in DEMOS])
def test_notebook_is_in_sync_with_its_source(source: Path):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: {REGENERATE}"
    expected = jupytext.read(source)
    committed = nbformat.read(paired, as_version=4)
    nbformat.validate(committed)
    assert _cells(committed) == _cells(expected), f"{paired.name} differs from {source.name}: {REGENERATE}"
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"
    with_outputs = [i for i, c in enumerate(committed.cells)
                    if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not with_outputs, f"{paired.name} has outputs in cells {with_outputs}: clear them ({REGENERATE})"


def test_every_demo_follows_the_template():
    """First cell says what it shows and how long it takes; one line chooses the model; exercises
    come with folded solutions."""
    for source in DEMOS:
        nb = jupytext.read(source)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and "Qué muestra" in first.source and "Tiempo" in first.source, source.name
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        if "load_model(" in code:
            assert code.count('MODEL = os.environ.get("MECHDEMO_DEMO_MODEL", "smollm2-135m")') == 1, source.name
        shell = [line for line in code.splitlines() if line.lstrip().startswith(("!", "%"))]
        assert not shell, f"{source.name}: shell or magic lines would run in the notebook: {shell}"
        solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert solutions, f"{source.name} has no solution cells"
        for cell in solutions:
            assert cell.cell_type == "code" and cell.metadata.get("jupyter", {}).get("source_hidden") is True
        assert any("Ejercicio" in c.source for c in nb.cells if c.cell_type == "markdown"), source.name


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernel spec that runs this interpreter, found before any other (JUPYTER_PATH)."""
    from ipykernel.kernelspec import write_kernel_spec

    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(path=str(jupyter_dir / "kernels" / "python3"))  # argv: [sys.executable, -m, ipykernel_launcher, ...]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("MECHDEMO_DEMO_MODEL", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")  # see the module docstring
        yield


@pytest.mark.full  # `make check`: executing the six demos takes minutes
@pytest.mark.parametrize("source", RUNS)
def test_demo_runs_headless_within_its_time_bound(source: Path, kernel_env, tmp_path):
    from nbclient import NotebookClient

    bound = TIME_BOUND_S[source.stem]
    nb = jupytext.read(source)
    client = NotebookClient(nb, kernel_name="python3", timeout=bound, startup_timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    elapsed = time.perf_counter() - start
    print(f"{source.stem}: {elapsed:.0f} s (bound {bound} s)")
    assert elapsed < bound, f"{source.stem} took {elapsed:.0f} s, over its bound of {bound} s"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
