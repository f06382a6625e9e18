"""The wheel carries every subpackage: an editable install maps the folders whole and would
hide a package missing from pyproject.toml's list."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    found = {"fastconv"}
    for init in (ROOT / "fastconv").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, folder in mapped.items():
        found.update(f"{name}." + ".".join(p.parent.relative_to(folder).parts)
                     for p in folder.rglob("__init__.py") if p.parent != folder)
        found.add(name)
    assert found == listed
