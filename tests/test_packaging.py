"""Packaging (pyproject.toml, environment.yml, scripts/setup.sh): every import is declared, once.

* Every third-party module that ``safcore/`` imports when a module is imported is a distribution in
  ``[project.dependencies]``, so ``pip install -e .`` without extras imports ``safcore`` and runs the
  command line; a module imported only inside a function (or under ``TYPE_CHECKING``, or in a
  ``try``/``except ImportError``) may come with an extra instead.
* The notebooks' imports are in the dependencies or the ``notebooks`` extra, the tests' in ``test``.
* ``environment.yml`` installs the package with its extras and holds no second copy of the list.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Import names whose distribution is named otherwise, for modules that are not installed here
# (installed ones are looked up in importlib.metadata.packages_distributions()).
IMPORT_TO_DIST = {
    "PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "cv2": "opencv-python",
    "yaml": "pyyaml", "IPython": "ipython", "torch_fidelity": "torch-fidelity", "bs4": "beautifulsoup4",
}  # fmt: skip


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_of(module: str) -> str:
    """The (canonical) distribution that provides top-level ``module``."""
    installed = packages_distributions().get(module)
    if installed:
        return canonical(installed[0])
    return canonical(IMPORT_TO_DIST.get(module, module))


def declared(*groups: str) -> set[str]:
    """Canonical names declared in ``[project.dependencies]`` (group ``""``) and the named extras, self-references resolved."""
    names: set[str] = set()
    pending, seen = list(groups), set()
    while pending:
        group = pending.pop()
        if group in seen:
            continue
        seen.add(group)
        for line in PROJECT["dependencies"] if group == "" else PROJECT["optional-dependencies"][group]:
            requirement = Requirement(line)
            if canonical(requirement.name) == canonical(PROJECT["name"]):
                pending.extend(requirement.extras)
            else:
                names.add(canonical(requirement.name))
    return names


class _Imports(ast.NodeVisitor):
    """Top-level module names imported by a file: ``eager`` (run on import) and ``lazy`` (function bodies,
    ``if TYPE_CHECKING:`` blocks, ``try`` blocks that catch ImportError)."""

    def __init__(self) -> None:
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self._depth = 0

    def _add(self, name: str) -> None:
        (self.lazy if self._depth else self.eager).add(name.split(".")[0])

    def _nested(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self._nested(node)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        if catches & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"}:
            self._nested(node)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)


def third_party_imports(files) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(eager, lazy)``: third-party top-level module -> the files that import it (a module that is a file
    beside the importing one, e.g. the tests' ``conftest``, is local, not third-party)."""
    eager: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    files = list(files)
    local = {file.stem for file in files}
    for file in files:
        visitor = _Imports()
        visitor.visit(ast.parse(file.read_text(), filename=str(file)))
        for modules, into in ((visitor.eager, eager), (visitor.lazy - visitor.eager, lazy)):
            for module in modules:
                if module not in sys.stdlib_module_names and module not in {"safcore", "__future__", *local}:
                    into.setdefault(module, set()).add(str(file.relative_to(REPO)))
    return eager, lazy


def _undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    return sorted(
        f"{module} (distribution {distribution_of(module)}, imported by {', '.join(sorted(files))})"
        for module, files in imports.items()
        if distribution_of(module) not in allowed
    )


def test_ast_scan_sees_eager_and_lazy_imports(tmp_path):
    """The scanner itself: what runs on import is eager, the rest lazy."""
    source = tmp_path / "mod.py"
    source.write_text(textwrap.dedent("""
        import numpy as np
        from PIL import Image
        from . import sibling
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pandas import DataFrame
        try:
            import yaml
        except ImportError:
            yaml = None
        def f():
            import ipywidgets.widgets
    """))
    visitor = _Imports()
    visitor.visit(ast.parse(source.read_text()))
    assert visitor.eager == {"numpy", "PIL", "typing"} and visitor.lazy == {"pandas", "yaml", "ipywidgets"}
    assert distribution_of("PIL") == "pillow" and distribution_of("sklearn") == "scikit-learn"


def test_every_module_safcore_imports_is_declared():
    eager, lazy = third_party_imports(sorted((REPO / "safcore").rglob("*.py")))
    assert {"torch", "numpy", "seaborn"} <= set(eager) and {"PIL", "ipywidgets"} <= set(lazy)  # the scan sees them
    base = declared("")
    missing = _undeclared(eager, base)
    assert not missing, f"imported when safcore is imported but not in [project.dependencies]: {missing}"
    everything = declared("", *PROJECT["optional-dependencies"])
    missing = _undeclared(lazy, everything)
    assert not missing, f"imported inside safcore functions but declared nowhere (dependencies or an extra): {missing}"


def test_notebooks_and_tests_imports_are_declared():
    eager, lazy = third_party_imports(sorted((REPO / "notebooks").glob("*.py")))
    missing = _undeclared({**lazy, **eager}, declared("", "notebooks"))
    assert not missing, f"imported by the notebooks but not in the dependencies or the notebooks extra: {missing}"
    eager, lazy = third_party_imports(sorted((REPO / "tests").glob("*.py")))
    missing = _undeclared({**lazy, **eager}, declared("", "test"))
    assert not missing, f"imported by the tests but not in the test extra: {missing}"


def test_declared_distributions_are_installed_in_range():
    """Every declared name is a real distribution (installed here by scripts/setup.sh) at an allowed version."""
    groups = [PROJECT["dependencies"], PROJECT["optional-dependencies"]["notebooks"], PROJECT["optional-dependencies"]["test"]]
    problems = []
    for line in (line for group in groups for line in group):
        requirement = Requirement(line)
        if canonical(requirement.name) == canonical(PROJECT["name"]):
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            problems.append(f"{requirement.name}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} is outside {requirement.specifier}")
    assert not problems, problems


def test_notebook_tools_are_extras_not_dependencies():
    base = declared("")
    tools = {"jupyterlab", "papermill", "jupytext", "ipykernel", "ipywidgets", "pytest", "nbval"}
    assert not base & tools, f"notebook / test tools in [project.dependencies]: {sorted(base & tools)}"
    assert tools - {"pytest", "nbval"} <= declared("notebooks")
    assert tools <= declared("test")  # the test command runs the notebooks under nbval


def _environment_dependencies() -> list[str]:
    """The list entries under ``dependencies:`` in environment.yml (nested pip entries included), unquoted."""
    entries, inside = [], False
    for line in (REPO / "environment.yml").read_text().splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith((" ", "-")):  # a top-level key
            inside = line.startswith("dependencies:")
        elif inside and line.strip().startswith("- "):
            entries.append(line.strip()[2:].strip().strip("\"'"))
    return entries


def test_environment_yml_installs_the_package_not_a_copy_of_its_list():
    entries = _environment_dependencies()
    assert entries[:3] == ["python=3.11", "pip", "pip:"] and len(entries) == 4, (
        f"environment.yml should hold python, pip and one '-e .[extras]' line, nothing else: {entries}"
    )
    match = re.fullmatch(r"-e \.\[([a-z,]+)\]", entries[3])
    assert match, f"environment.yml's pip entry {entries[3]!r} is not '-e .[extras]'"
    extras = set(match.group(1).split(","))
    assert extras <= set(PROJECT["optional-dependencies"]) and {"notebooks", "test"} <= extras


def test_setup_script_installs_the_extras_the_test_command_needs():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    installs = re.findall(r'pip install [^\n]*-e "\.\[([a-z,]+)\]"', setup)
    assert len(installs) == 1, f"scripts/setup.sh should install the package once with extras: {installs}"
    assert "test" in installs[0].split(",") and set(installs[0].split(",")) <= set(PROJECT["optional-dependencies"])


# A fresh interpreter in which the extras' modules cannot be imported (``sys.modules[name] = None`` is
# how Python marks a module as absent: imports fail, importlib.util.find_spec returns None).
_WITHOUT_EXTRAS = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import pkgutil, importlib, safcore
for module in pkgutil.walk_packages(safcore.__path__, "safcore."):
    importlib.import_module(module.name)
from safcore.__main__ import main
try:
    main(["--help"])
except SystemExit as stop:
    assert stop.code == 0, stop.code
"""


def test_safcore_and_its_command_line_work_without_the_extras():
    blocked = ["ipywidgets", "IPython", "torch_fidelity", "jupytext", "papermill", "nbval", "pytest",
               "jupyterlab", "ipykernel", "jupyter_client", "nbformat"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS.format(blocked=blocked)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout and "demo" in result.stdout


def _ci_copy(tmp_path: Path, readme: str) -> Path:
    """A stand-in repository: the real .ci/run, the given README, a scripts/test.sh that reports what it got."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((REPO / ".ci" / "run").read_text())
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "test.sh").write_text('echo "root=$SAFCORE_DATA_ROOT cwd=$PWD"\n')
    (tmp_path / "README.md").write_text(readme)
    return tmp_path / ".ci" / "run"


def test_readme_has_one_test_command_for_ci():
    lines = re.findall(r"^SAFCORE_DATA_ROOT=\S+ bash scripts/test\.sh$", (REPO / "README.md").read_text(), re.MULTILINE)
    assert lines == ["SAFCORE_DATA_ROOT=../shared/data/medmnist bash scripts/test.sh"]


def test_ci_runs_the_readme_test_line_from_the_repo_root(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    readme = "# x\n\n```bash\nSAFCORE_DATA_ROOT=../data/here bash scripts/test.sh\n```\nSAFCORE_DATA_ROOT=x bash scripts/demo.sh\n"
    run = _ci_copy(repo, readme)
    result = subprocess.run(["bash", str(run)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "SAFCORE_DATA_ROOT": "/inherited/not/used"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"root=../data/here cwd={repo}"
    assert "running the README's test command: SAFCORE_DATA_ROOT=../data/here bash scripts/test.sh" in result.stderr


@pytest.mark.parametrize("count", [0, 2])
def test_ci_fails_loudly_without_exactly_one_test_line(tmp_path, count):
    run = _ci_copy(tmp_path, "# x\n" + "SAFCORE_DATA_ROOT=../a bash scripts/test.sh\n" * count)
    result = subprocess.run(["bash", str(run)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "expected exactly one line matching" in result.stderr and f"found {count}" in result.stderr
