"""The layout on disk shows the layers: small modules, private internals, no reaching across.

See docs/architecture.md for the layers and which module owns what.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jacntk"
MAX_LINES = 550  # "no module over ~500 lines"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _subpackage(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else ""


def test_no_module_is_longer_than_about_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_imports_a_private_name_from_another_subpackage():
    """Shared helpers are public (e.g. jacntk.validation); ``_names`` stay inside their
    subpackage."""
    offences = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        here = _subpackage(path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:
                if not (node.module or "").startswith("jacntk."):
                    continue
                parts = node.module.split(".")[1:]
            else:
                base = list(path.relative_to(PACKAGE).parts[:-1])
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                parts = base + (node.module.split(".") if node.module else [])
            there = parts[0] if parts and (PACKAGE / parts[0]).is_dir() else ""
            if there == here:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    offences.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {alias.name}")
    assert not offences, "private names imported across subpackages:\n" + "\n".join(offences)
