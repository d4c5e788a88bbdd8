"""The edge never imports the hub; the shared `outpost` package imports neither side; the
hub imports the edge only through one declared seam, the model self-test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The one seam from the hub into the agent's package: an uploaded model is loaded and its
# sample run by the agent's own runner (`Releases._check`), so the hub refuses at the door
# a model no device could run. Exactly these modules, from exactly this file: any other
# import of `edge` under hub/ fails the test below, and so does a seam that moved.
# The second: the hub explains an input with the same release and the same code as the
# agent's POST /v1/explain (hub/api/explain.py), so the two never disagree.
HUB_TO_EDGE_SEAM: dict[str, set[str]] = {
    "hub/models/releases.py": {"edge.inference.runner", "edge.inference.runtime"},
    "hub/api/explain.py": {
        "edge.inference.explaining",
        "edge.inference.runner",
        "edge.inference.runtime",
        "edge.inference.tensors",
    },
}


def imported_modules(path: Path) -> set[str]:
    """Return the module named by every absolute import in `path` (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def imported_packages(path: Path) -> set[str]:
    """Return the top-level package of every absolute import in `path`."""
    return {module.split(".")[0] for module in imported_modules(path)}


def sources(package: str) -> list[Path]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def offenders(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    bad = {}
    for path in sources(package):
        hits = imported_packages(path) & forbidden
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_imported_packages_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import hub\n"
        "import os.path, hub.fleet.pki as p\n"
        "from hub.store import Store\n"
        "from . import sibling\n"
        "def late():\n"
        "    from edge import agent\n"
        "    import importlib\n"
        "    importlib.import_module('hub.web')\n"
    )
    assert imported_packages(sample) == {"hub", "os", "edge", "importlib"}
    assert imported_modules(sample) == {
        "hub",
        "os.path",
        "hub.fleet.pki",
        "hub.store",
        "edge",
        "importlib",
        "hub.web",
    }


@pytest.mark.parametrize("package", ["edge", "outpost"])
def test_nothing_but_the_hub_imports_the_hub(package: str) -> None:
    assert offenders(package, {"hub"}) == {}


def test_outpost_imports_neither_edge_nor_hub() -> None:
    assert offenders("outpost", {"edge", "hub"}) == {}


def test_the_hub_imports_the_edge_only_through_the_model_self_test() -> None:
    found = {}
    for path in sources("hub"):
        edge = {m for m in imported_modules(path) if m.split(".")[0] == "edge"}
        if edge:
            found[str(path.relative_to(REPO))] = edge
    assert found == HUB_TO_EDGE_SEAM, (
        "the hub reaches into the agent's package (edge) outside its declared seam; "
        "go through outpost/, or, if this is a new seam on purpose, declare it in "
        "HUB_TO_EDGE_SEAM with why"
    )


def test_relative_imports_stay_inside_their_package() -> None:
    # `from .. import x` at a package's top would escape it; the tree uses absolute imports.
    for package in ("edge", "outpost"):
        for path in sources(package):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            levels = [n.level for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert all(level <= 1 for level in levels), path
