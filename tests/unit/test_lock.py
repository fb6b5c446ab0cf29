"""The lock every install comes from: uv.lock pins and hashes the whole tree, and the uv pinned
in requirements/uv.txt is the one that builds the project itself (pyproject's [build-system])."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_locked_file_has_a_hash_and_only_the_project_is_local() -> None:
    packages = _lock()["package"]
    local = [p["name"] for p in packages if "registry" not in p["source"]]
    assert local == ["aaa-failover"]
    for package in packages:
        if package["name"] == "aaa-failover":
            continue
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, package["name"]
        for file in files:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", file["hash"]), (package["name"], file)


def test_the_lock_covers_the_runtime_and_every_extra() -> None:
    project = _pyproject()["project"]
    locked = next(p for p in _lock()["package"] if p["name"] == "aaa-failover")
    names = {d["name"] for d in locked["dependencies"]}
    assert names == {_name(r) for r in project["dependencies"]}
    extras = locked["optional-dependencies"]
    assert set(extras) == set(project["optional-dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        assert {d["name"] for d in extras[extra]} == {_name(r) for r in requirements}, extra


def test_the_pinned_uv_builds_the_project_itself() -> None:
    pinned = re.search(r"^uv==(\S+)", (ROOT / "requirements/uv.txt").read_text(), re.M)
    chosen = re.search(r"^uv==(\S+)", (ROOT / "requirements/uv.in").read_text(), re.M)
    assert pinned and chosen and pinned.group(1) == chosen.group(1), "run `make lock`"
    uv_txt = (ROOT / "requirements/uv.txt").read_text()
    assert uv_txt.count("--hash=sha256:") >= 2
    build = _pyproject()["build-system"]
    assert build["build-backend"] == "uv_build"
    (requirement,) = build["requires"]
    assert _name(requirement) == "uv-build"
    assert Version(pinned.group(1)) in SpecifierSet(requirement.split("uv_build", 1)[1])


def test_lower_bounds_keep_the_blastradius_countermeasures() -> None:
    dependencies = _pyproject()["project"]["dependencies"]
    assert "pyrad>=2.6" in dependencies


def _name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[._-]+", "-", name.group(0)).lower()
