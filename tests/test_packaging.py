"""The wheel holds every package and data file the code imports (an editable install hides gaps)."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lmpack").rglob("__init__.py")}
    assert found == listed


def test_default_model_files_are_package_data():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    from lmpack import default_model

    assert set(cfg["lmpack.default_model"]) == set(default_model.FILES)
    for name in default_model.FILES:
        assert (default_model.path() / name).is_file()


# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"yaml": "pyyaml", "jinja2": "jinja2"}


def test_runtime_dependencies_are_exactly_what_lmpack_imports():
    """A third-party module the package imports must be a declared dependency (else a fresh
    install breaks), and a declared dependency must be imported somewhere (else it is dead weight)."""
    import ast
    import re
    import sys

    imported = set()
    for path in (ROOT / "lmpack").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m != "lmpack" and m not in sys.stdlib_module_names}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps}
    used = {_DISTRIBUTIONS.get(m, m).lower() for m in third_party}
    optional = {"gguf"}  # imported only behind a clear message where the optional extra is missing
    assert used - optional <= declared, f"imported but not declared: {sorted(used - optional - declared)}"
    assert declared <= used, f"declared but never imported: {sorted(declared - used)}"
