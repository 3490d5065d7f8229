"""The backend's floors (backend/README.md): core < rigging < app, and backend never imports training or bpy.

Every ``import``/``from`` statement of every module is read from its syntax tree (including imports inside
functions), resolved to a module path, and compared by floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "backend"
FLOOR_NAMES = {0: "core", 1: "rigging", 2: "app"}


def floor_of(module: str) -> int | None:
    """0 core, 1 rigging, 2 app; None for modules outside ``backend``."""
    parts = module.split(".")
    if parts[0] != "backend":
        return None
    if len(parts) > 1 and parts[1] == "rigging":
        return 1
    if len(parts) > 1 and parts[1] == "app":
        return 2
    return 0


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from backend.app import client`` imports the submodule backend.app.client
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if (ROOT / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists()]
    return found


def test_floor_of() -> None:
    assert floor_of("backend.sequence") == 0 and floor_of("backend.models.inference") == 0
    assert floor_of("backend.rigging.fit.motion") == 1 and floor_of("backend.app.cli") == 2
    assert floor_of("numpy") is None


def test_relative_imports_resolve(tmp_path: Path) -> None:
    pkg = tmp_path / "backend" / "rigging"
    pkg.mkdir(parents=True)
    mod = pkg / "x.py"
    mod.write_text("from ..app import cli\nfrom .fit import motion\nimport backend.sequence\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert [m for _, m in imported_modules(mod)] == ["backend.app", "backend.rigging.fit", "backend.sequence"]
    finally:
        ROOT = saved


def test_no_upward_imports() -> None:
    offences = []
    modules = sorted(BACKEND.rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        own = floor_of(module_name(path))
        for line, target in imported_modules(path):
            root = target.split(".")[0]
            if root in ("training", "bpy", "sprig_blender"):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {target} (backend never imports {root})")
            other = floor_of(target)
            if other is not None and other > own:
                offences.append(f"{path.relative_to(ROOT)}:{line} ({FLOOR_NAMES[own]}) imports {target} "
                                f"({FLOOR_NAMES[other]})")
    assert not offences, "upward imports:\n" + "\n".join(offences)


def test_training_and_addon_stay_in_their_rooms() -> None:
    """training imports the backend but never the add-on; the add-on reaches the backend through its client or
    the pipeline, never the CLI or training."""
    for path in (ROOT / "training").rglob("*.py"):
        for line, target in imported_modules(path):
            assert not target.startswith(("sprig_blender", "bpy")), f"{path}:{line} imports {target}"
    for path in (ROOT / "sprig_blender").rglob("*.py"):
        for line, target in imported_modules(path):
            banned = ("backend.app.cli", "backend.app.rig_command", "backend.app.eval_command", "training")
            assert not any(target == b or target.startswith(b + ".") for b in banned), \
                f"{path}:{line} imports {target}"
