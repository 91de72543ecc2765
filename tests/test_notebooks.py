"""notebooks/*.ipynb are stored without outputs and run top to bottom (code cells exec'd in order).

nbclient / ipykernel are not dependencies, so each notebook's code cells run in one fresh namespace,
and the value of a cell's last expression is kept, as Jupyter would display it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code_cells(path: Path) -> list[dict[str, Any]]:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def run_cell(source: str, namespace: dict[str, Any], name: str) -> Any:
    """Exec a cell; return the value of its last line when that is an expression (None otherwise)."""
    tree = ast.parse(source, filename=name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:3] == [
        "01_attention_maps.ipynb",
        "02_pca_features.ipynb",
        "03_crops_and_masks.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    for c in _code_cells(path):
        stripped = c["outputs"] == [] and c["execution_count"] is None
        assert stripped, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.chdir(path.parent)  # where Jupyter would run it
    namespace: dict[str, Any] = {"__name__": "__main__"}
    cells = _code_cells(path)
    results = [run_cell("".join(c["source"]), namespace, f"{path.name}[{i}]") for i, c in enumerate(cells)]
    assert isinstance(results[-1], Image.Image)  # every notebook ends on a picture
    assert min(results[-1].size) >= 128
