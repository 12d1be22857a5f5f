"""The library never imports UI packages; the CLI never does SQL or numpy math itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "catalog").rglob("*.py")), ids=str)
def test_catalog_does_not_import_ui(path: Path) -> None:
    assert not _imports(path) & {"typer", "rich", "click"}


@pytest.mark.parametrize("path", sorted((ROOT / "cli").rglob("*.py")), ids=str)
def test_cli_does_no_sql_or_numpy(path: Path) -> None:
    assert not _imports(path) & {"sqlalchemy", "numpy", "sqlite3", "click"}
