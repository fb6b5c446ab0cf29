"""What each package may import (docs/architecture.md, "Packages and what they may import"),
read from every import statement of the code: no service imports another service's package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("aaa", "collector", "evaluator", "targeter", "notifier", "readmitter", "agent")
BASE = {"schemas", "services.runtime", "services.radius"}
PURE_FOR_TOOLS = ("evaluator", "targeter", "readmitter")
"""The services whose pure cores and logic the operator tools run (what-if)."""


def package_of(path: Path) -> str:
    """``schemas``, ``services.<package>`` or ``services.<module>`` of a source file."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0] if parts[0] == "schemas" else ".".join(parts[:2])


def project_imports(path: Path) -> Iterator[str]:
    """Every module of the project that the source file ``path`` imports."""
    return imports_in(path.read_text(), list(path.relative_to(ROOT).with_suffix("").parts))


def imports_in(source: str, module: list[str]) -> Iterator[str]:
    """Every module of the project that ``source``, the module ``module``, imports,
    relative imports resolved against it."""
    if module[-1] == "__init__":
        module = [*module[:-1], "_"]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = module[: len(module) - node.level] if node.level else []
            names = [".".join([*base, *([node.module] if node.module else [])])]
        else:
            continue
        yield from (n for n in names if n.split(".")[0] in ("schemas", "services"))


def allowed(importer: Path, imported: str) -> bool:
    """Whether the file ``importer`` may import the module ``imported``."""
    mine, theirs = package_of(importer), imported.split(".")
    target = theirs[0] if theirs[0] == "schemas" else ".".join(theirs[:2])
    if target == mine:
        return True
    if mine == "schemas":
        return False
    if mine in ("services.runtime", "services.radius"):
        return target == "schemas"
    if mine in {f"services.{s}" for s in SERVICES}:
        return target in BASE or (importer.name == "__main__.py" and target == "services.launch")
    if mine == "services.tools":
        pure = {f"services.{s}" for s in PURE_FOR_TOOLS}
        return target in {"schemas", "services.runtime"} or (
            target in pure and theirs[2:3] != ["service"]
        )
    return mine == "services.launch" or mine == "services.__init__"


def sources() -> list[Path]:
    return sorted([*(ROOT / "schemas").rglob("*.py"), *(ROOT / "services").rglob("*.py")])


def test_no_package_imports_what_its_layer_may_not() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources()
        for name in project_imports(path)
        if not allowed(path, name)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_a_service_importing_another() -> None:
    agent = ROOT / "services" / "agent" / "coa.py"
    assert not allowed(agent, "services.notifier.transports.coa")
    assert allowed(agent, "services.radius.notice") and allowed(agent, "services.agent.client")
    assert not allowed(ROOT / "services" / "agent" / "service.py", "services.launch.cli")
    assert allowed(ROOT / "services" / "agent" / "__main__.py", "services.launch.cli")
    assert not allowed(ROOT / "services" / "runtime" / "bus.py", "services.radius.packet")
    assert not allowed(ROOT / "schemas" / "events.py", "services.runtime.config")
    whatif = ROOT / "services" / "tools" / "whatif" / "simulation.py"
    assert allowed(whatif, "services.targeter.core")
    assert not allowed(whatif, "services.targeter.service")
    assert not allowed(whatif, "services.notifier.deliveries")


def test_imports_are_read_wherever_they_are_written() -> None:
    source = """
import services.notifier.service
from ..notifier import transports
from .tally import Tally
from schemas.events import Ack
def f():
    from services.runtime.config import Config
"""
    found = set(imports_in(source, ["services", "agent", "coa"]))
    assert found == {
        "services.notifier.service",
        "services.notifier",
        "services.agent.tally",
        "schemas.events",
        "services.runtime.config",
    }
    coa = ROOT / "services" / "agent" / "coa.py"
    assert not all(allowed(coa, name) for name in found)
