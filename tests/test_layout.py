"""The layout's promises: imports point one way, and nothing at the root shadows the package.

``frontends → compiler → runtime``; ``serve`` and ``cli`` sit on top and may use all three
(ARCHITECTURE.md, "Layout"). Every module's imports are read from its syntax tree, including
imports inside functions, so a lazy wrong-way import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: What each layer may import (besides itself and third-party packages).
ALLOWED = {
    "runtime": {"runtime"},
    "compiler": {"compiler", "runtime"},
    "frontends": {"frontends", "compiler", "runtime"},
    "serve": {"serve", "frontends", "compiler", "runtime"},
    "cli": {"cli", "serve", "frontends", "compiler", "runtime"},
}


def _modules() -> list[Path]:
    return sorted(p for layer in ALLOWED for p in (REPO / layer).rglob("*.py"))


def _layer_of_import(path: Path, node: ast.AST) -> list[str]:
    """The comfyc layers an import statement reaches (``[]`` for third-party imports)."""
    layer = path.relative_to(REPO).parts[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # Relative: resolve against the module's package path.
            package = list(path.relative_to(REPO).parts[:-1])
            base = package[:len(package) - node.level + 1]
            return [base[0] if base else layer]
        names = [node.module or ""]
    else:
        return []
    found = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "comfyc":
            found.append(parts[1] if len(parts) > 1 else "comfyc")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_one_way(path: Path) -> None:
    """No module imports a layer above its own."""
    layer = path.relative_to(REPO).parts[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    wrong = []
    for node in ast.walk(tree):
        for target in _layer_of_import(path, node):
            if target in ALLOWED and target not in ALLOWED[layer]:
                wrong.append(f"line {node.lineno}: {layer} imports {target}")
    assert not wrong, wrong


def test_runtime_core_never_imports_torch_at_module_level() -> None:
    """Only the torch backend modules may import torch (and only they, lazily or not)."""
    offenders = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        if path.name.startswith("torch") and path.parent.name == "backends":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("torch", "diffusers", "transformers") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_no_root_folder_shadows_the_package() -> None:
    """A root `comfyc/` would be imported instead of the install when Python runs here."""
    assert not (REPO / "comfyc").exists()
    assert (REPO / "pkg" / "__init__.py").is_file()


def test_requires_python_is_what_the_code_needs() -> None:
    """The DSL's fast path uses atomic regex groups (Python 3.11+): the floor says so."""
    import re
    import sys

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', text)
    assert floor is not None and (int(floor[1]), int(floor[2])) >= (3, 11)
    assert sys.version_info >= (int(floor[1]), int(floor[2]))
    ruff = re.search(r'target-version\s*=\s*"py(\d)(\d+)"', text)
    assert ruff is not None and (int(ruff[1]), int(ruff[2])) == (int(floor[1]), int(floor[2]))
