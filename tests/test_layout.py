"""The layout shows the architecture: each part in the folder named for it, no import
from a lower part up to a higher one, sans-IO protocol code, modules under 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hqm"
#: Low to high: a module may import from its own part and the parts before it.
LAYERS = ("proto", "io", "queue", "ops", "worker", "ingress", "assembly", "config", "cli")
#: Modules that start the program: above every part.
ENTRY = ("__init__", "__main__")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(module: str) -> str:
    """'hqm.worker.retry' -> 'worker'; 'hqm.assembly' -> 'assembly'."""
    return module.split(".")[1]


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hqm module ``path`` imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("hqm.")}


def _rank(module: str) -> int:
    part = _part(module)
    return len(LAYERS) if part in ENTRY else LAYERS.index(part)


def test_every_module_is_in_a_known_part():
    for path in _modules():
        name = _name(path)
        if name == "hqm":
            continue
        assert _part(name) in LAYERS + ENTRY, f"{name}: not in a part of the data path"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_from_a_lower_part_up(path: Path):
    name = _name(path)
    if name == "hqm":
        return
    for imported in _imports(path):
        if imported.split(".")[1] not in LAYERS + ENTRY:
            continue  # e.g. "hqm.__version__"
        assert _rank(imported) <= _rank(name), f"{name} imports {imported}: upward"


def test_policy_above_io():
    """The retry policy decides; it must not import the pool that does the I/O. The
    pool needs an Address, not the configuration."""
    assert not {m for m in _imports(PACKAGE / "worker" / "retry.py") if "upstream" in m}
    assert not {m for m in _imports(PACKAGE / "worker" / "upstream.py") if ".config" in m}


def test_protocol_code_is_sans_io():
    banned = {"asyncio", "socket", "selectors", "time", "ssl", "threading"}
    for path in (PACKAGE / "proto").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not banned.intersection(names), f"{path.name} imports {names}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_comments_cite_only_files_in_the_repository():
    outside = "DESIGN" + ".md"  # the team's contract: not in this repository
    for path in [
        *_modules(),
        *ROOT.joinpath("tests").glob("*.py"),
        *ROOT.joinpath("bench").glob("*.py"),
    ]:
        assert outside not in path.read_text(), f"{path.relative_to(ROOT)} cites {outside}"
    assert (ROOT / "docs" / "architecture.md").is_file()
