"""The house's shape (CONTRIBUTING.md, "Layers"): imports run one way, one place asks which kind a model is,
no module grows past a reader's page count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "safcore"
#: The layers, lowest first; a module may import from its own layer and those before it.
LAYERS = ("runtime", "data", "generators", "defences", "adversary", "measures", "audit", "probe", "study", "__main__")
#: Model classes whose kind only the loader may test.
MODEL_KINDS = {"DiffusersModel", "MonaiModel", "ScoreModel", "SDEGenerator", "AUDITABLE", "SCHEDULED",
               "LatentModel"}
LOADER = PACKAGE / "generators" / "loader.py"
MAX_LINES = 600
MODULES = sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "safcore" and len(parts) > 1 and parts[1] in LAYERS else None


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_module_sits_in_a_layer():
    outside = [_name(p) for p in MODULES if _layer(_name(p)) is None and p.name != "__init__.py"]
    assert outside == [], f"modules outside the layers {LAYERS}: {outside}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_imports_run_one_way(path):
    me = _layer(_name(path))
    upward = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        upward += [t for t in targets if (_layer(t) or 0) > (me or 0)]
    assert upward == [], f"{_name(path)} (layer {LAYERS[me]}) imports from a layer above it: {upward}"


@pytest.mark.parametrize("path", [p for p in MODULES if p != LOADER], ids=_name)
def test_only_the_loader_asks_which_kind_a_model_is(path):
    asks = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if names & MODEL_KINDS:
                asks.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert asks == [], f"{_name(path)} tests the model kind (only safcore.generators.loader may): {asks}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines; split it along its jobs (≤ {MAX_LINES})"
