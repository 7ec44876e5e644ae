"""Every notebook is a jupytext pair (``.ipynb`` + ``py:percent``) and both sides say the same."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", ()))) for cell in notebook.cells]


def test_there_are_notebooks():
    assert IPYNBS, f"no notebooks in {NOTEBOOKS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_has_notebook(script):
    assert script.with_suffix(".ipynb").is_file(), f"{script.name} has no paired .ipynb: run jupytext --sync {script}"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_pair_in_sync(ipynb):
    script = ipynb.with_suffix(".py")
    assert script.is_file(), f"{ipynb.name} has no paired py:percent file: run jupytext --sync {ipynb}"
    from_ipynb = _cells(jupytext.read(ipynb))
    from_script = _cells(jupytext.read(script))
    assert from_ipynb == from_script, f"{ipynb.name} and {script.name} differ: run `jupytext --sync notebooks/*.ipynb`"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_has_papermill_parameters_cell(ipynb):
    tagged = [c for c in jupytext.read(ipynb).cells if "parameters" in c.metadata.get("tags", ())]
    assert len(tagged) == 1, f"{ipynb.name} needs exactly one cell tagged 'parameters' (papermill)"
