"""Every notebook in notebooks/ is stored clean and runs top to bottom.

Two tests per notebook, found by globbing ``notebooks/*.ipynb`` (a new
notebook is picked up without touching this file):

1. it is committed WITHOUT outputs or execution counts (the policy; see
   notebooks/README.md for the one command that strips them);
2. it executes from the first cell to the last in a fresh ``python3`` kernel
   (nbclient), with the working directory ``notebooks/`` (as when a reader
   opens it in Jupyter), a headless matplotlib (``MPLBACKEND=Agg``) and the
   fast mode switched on (``MINIBERT4REC_FAST=1``: notebooks shrink slow work
   such as training, but never skip a cell). A failing cell fails the test
   with that cell's source and traceback.
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
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 600          # seconds per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")   # the colour codes of IPython tracebacks


def test_the_notebooks_are_found():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 4, f"expected the teaching notebooks in {NOTEBOOK_DIR}, found {names}"
    unnumbered = [n for n in names if not re.match(r"\d\d_", n)]
    assert not unnumbered, f"notebooks are named NN_topic.ipynb in teaching order: {unnumbered}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; "
                       f"strip them (see notebooks/README.md), e.g. "
                       f"jupyter nbconvert --clear-output --inplace notebooks/{path.name}")
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("MINIBERT4REC_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel imports minibert4rec from this checkout, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
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
