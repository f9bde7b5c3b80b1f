"""What pyproject.toml promises holds for the code: the Python floor admits every module evolm imports."""

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Standard-library modules evolm uses that appeared in a given Python version.
NEWER_STDLIB = {"tomllib": (3, 11)}


def test_requires_python_admits_no_interpreter_that_lacks_an_imported_module():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"].strip())
    assert floor, project["requires-python"]
    floor = (int(floor.group(1)), int(floor.group(2)))
    sources = "\n".join(path.read_text() for path in (REPO / "evolm").rglob("*.py"))
    for module, since in NEWER_STDLIB.items():
        if re.search(rf"^\s*(import {module}\b|from {module}\b)", sources, re.MULTILINE):
            assert floor >= since, f"evolm imports {module} (Python {since}) but requires-python allows {floor}"
    assert sys.version_info[:2] >= floor
