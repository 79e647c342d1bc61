"""Every notebook in notebooks/ and notebooks/exercises/ is stored clean and runs top to bottom.

Two tests per notebook, found by globbing ``notebooks/*.ipynb`` and
``notebooks/exercises/*.ipynb`` (a new notebook is picked up without touching
this file):

1. it is committed WITHOUT outputs or execution counts (the policy; see
   notebooks/README.md for the one command that strips them);
2. it executes from the first cell to the last in a fresh ``python3`` kernel
   (nbclient), with the working directory ``notebooks/`` (as when a reader
   opens it in Jupyter), a headless matplotlib (``MPLBACKEND=Agg``) and the
   fast mode switched on (``MINIBERT4REC_FAST=1``: notebooks shrink slow work
   such as training, but never skip a cell). A failing cell fails the test
   with that cell's source and traceback.

The exercise notebooks run twice: with ``MINIBERT4REC_SOLUTIONS=1``, where the
library's own backward passes replace the stubs and every grade must pass (a
failed grade stops the notebook), and as a student first opens them, stubs
unwritten, where every cell must still run (the grader reports, never raises).
"""
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXERCISE_DIR = NOTEBOOK_DIR / "exercises"
LESSONS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXERCISES = sorted(EXERCISE_DIR.glob("*.ipynb"))
NOTEBOOKS = LESSONS + EXERCISES
CELL_TIMEOUT = 600          # seconds per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")   # the colour codes of IPython tracebacks


def _id(path):
    return str(path.relative_to(NOTEBOOK_DIR))


def test_the_notebooks_are_found():
    names = [p.name for p in LESSONS]
    assert len(names) >= 4, f"expected the teaching notebooks in {NOTEBOOK_DIR}, found {names}"
    assert len(EXERCISES) >= 3, f"expected the exercise notebooks in {EXERCISE_DIR}"
    unnumbered = [n for n in names + [p.name for p in EXERCISES] if not re.match(r"\d\d_", n)]
    assert not unnumbered, f"notebooks are named NN_topic.ipynb in teaching order: {unnumbered}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; "
                       f"strip them (see notebooks/README.md), e.g. "
                       f"jupyter nbconvert --clear-output --inplace notebooks/{path.name}")
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def _execute(path, monkeypatch, solutions=False):
    """Run a notebook top to bottom in its own directory; fail with the cell that raised."""
    monkeypatch.setenv("MINIBERT4REC_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if solutions:
        monkeypatch.setenv("MINIBERT4REC_SOLUTIONS", "1")
    else:
        monkeypatch.delenv("MINIBERT4REC_SOLUTIONS", raising=False)
    # the kernel imports minibert4rec from this checkout, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    failure = None
    try:
        client.execute()
    except CellExecutionError as err:      # the message holds the cell's source and traceback
        failure = f"{path.name}: a cell raised an error\n{ANSI.sub('', str(err))}"
    except DeadKernelError as err:
        failure = f"{path.name}: the kernel died\n{err}"
    if failure:                            # failed outside the except: no chained duplicate
        pytest.fail(failure, pytrace=False)
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed), f"{path.name}: not every cell ran"
    return nb


def _printed(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    _execute(path, monkeypatch)


@pytest.mark.parametrize("path", EXERCISES, ids=_id)
def test_exercises_pass_with_the_solutions(path, monkeypatch):
    # the notebook itself stops at a failed grade when the solutions are on; check the reports too
    text = _printed(_execute(path, monkeypatch, solutions=True))
    assert "PASSED" in text and "FAILED" not in text and "WRONG" not in text, text


@pytest.mark.parametrize("path", EXERCISES, ids=_id)
def test_exercise_stubs_are_graded_not_raised(path, monkeypatch):
    # as a student first runs it: every cell runs, and every grade reports the missing backward
    text = _printed(_execute(path, monkeypatch, solutions=False))
    assert "FAILED" in text and "not written yet" in text and "PASSED" not in text, text
