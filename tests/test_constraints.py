"""constraints.txt pins every package the README's install brings, at the versions pyproject asks.

The file is generated (`uv pip compile`, the command is in its header); these checks catch a
pyproject.toml edited without regenerating it, which would let a fresh clone install versions CI
never tested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, list[str]]:
    """name -> the pinned versions (several where a marker splits them)."""
    pins: dict[str, list[str]] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(\s*;.*)?", line)
        assert match, f"constraints.txt: {line!r} is not a `name==version` pin"
        name = canonicalize_name(match.group(1).split("[")[0])
        pins.setdefault(name, []).append(match.group(2))
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements() -> list[Requirement]:
    project = _project()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "ssaseg"]


def test_header_names_the_command_that_regenerates_it() -> None:
    header = (REPO / "constraints.txt").read_text().splitlines()[:3]
    assert any("uv pip compile pyproject.toml" in line for line in header)


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in constraints.txt; regenerate it"
        for version in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {req.name}=={version}, outside pyproject's {req}")


def test_tool_uv_pins_are_the_locked_versions() -> None:
    pins = _pins()
    for text in _project()["tool"]["uv"]["constraint-dependencies"]:
        req = Requirement(text)
        assert pins.get(canonicalize_name(req.name)) == [str(next(iter(req.specifier)).version)], (
            f"[tool.uv] pins {req}, constraints.txt has {pins.get(canonicalize_name(req.name))}")
