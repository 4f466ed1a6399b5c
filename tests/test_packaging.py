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
