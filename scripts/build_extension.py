"""Build the installable Blender extension ``.zip`` with Blender's own extension tool.

    python scripts/build_extension.py                 # -> dist/sprig-<version>.zip
    python scripts/build_extension.py --output-dir out --blender-ext /path/to/blender_ext.py
    python scripts/build_extension.py --output-dir /tmp/out --staging-dir /tmp/stage   # a read-only checkout

Steps: stage ``blender_manifest.toml`` + the ``sprig_blender/`` package + the backend client it talks
through (``backend/app/client.py``, ``backend/rigging/result.py`` and ``backend/skeleton.py``, copied to
``_backend/``: standard library and numpy only, importing each other relatively) in a staging folder (a
temporary one unless ``--staging-dir`` is given; nothing is written into the checkout), then
run ``blender_ext.py validate`` and ``blender_ext.py build``.
``blender_ext.py`` is found inside the installed ``bpy`` package (or a Blender install given with
``--blender-ext``). Exits non-zero, printing the tool's message, when validation or the build fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sprig_blender"
MANIFEST = ROOT / "blender_manifest.toml"
VENDORED = ("app/client.py", "rigging/result.py", "skeleton.py")  # from backend/, copied to _backend/ (same folders)

log = logging.getLogger("build_extension")


def find_blender_ext() -> Path:
    """Locate ``blender_ext.py`` shipped inside the ``bpy`` wheel (``bpy/<ver>/scripts/addons_core/bl_pkg/cli``)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the bpy package is not installed; pass --blender-ext PATH to blender_ext.py")
    matches = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not matches:
        raise FileNotFoundError(f"blender_ext.py not found under {Path(spec.origin).parent}")
    return matches[-1]


def stage(staging: Path) -> Path:
    """Copy the extension's files into ``staging`` (emptied first). Returns ``staging``."""
    if staging.exists():
        shutil.rmtree(staging)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_backend")
    shutil.copytree(PACKAGE, staging, ignore=ignore)
    shutil.copy2(MANIFEST, staging / "blender_manifest.toml")
    vendor = staging / "_backend"
    vendor.mkdir()
    (vendor / "__init__.py").write_text(
        '"""Copy of the SPRig backend client (backend/app/client.py, backend/rigging/result.py, '
        'backend/skeleton.py) made by scripts/build_extension.py."""\n')
    for name in VENDORED:  # the client imports the result type relatively, so the sub-folders are kept
        target = vendor / name
        if not (target.parent / "__init__.py").exists():
            target.parent.mkdir(exist_ok=True)
            (target.parent / "__init__.py").write_text('"""Vendored by scripts/build_extension.py."""\n')
        shutil.copy2(ROOT / "backend" / name, target)
    return staging


def run_tool(blender_ext: Path, args: list[str]) -> str:
    """Run ``blender_ext.py`` with ``args``; raise RuntimeError with its output on failure."""
    proc = subprocess.run([sys.executable, str(blender_ext), *args], capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"blender_ext.py {args[0]} failed ({proc.returncode}):\n{output}")
    return output


def build(output_dir: Path, blender_ext: Path | None = None, staging: Path | None = None) -> Path:
    """Stage (into ``staging``, or a temporary folder removed afterwards), validate and build; returns the path
    of the ``.zip``."""
    blender_ext = blender_ext or find_blender_ext()
    if staging is None:
        with tempfile.TemporaryDirectory(prefix="sprig_extension_") as folder:
            return build(output_dir, blender_ext, Path(folder) / "extension")
    staging = stage(staging)
    log.info("validating %s", staging)
    log.info(run_tool(blender_ext, ["validate", str(staging)]))
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.glob("*.zip"))
    log.info(run_tool(blender_ext, ["build", "--source-dir", str(staging), "--output-dir", str(output_dir)]))
    built = sorted(set(output_dir.glob("*.zip")) - before) or sorted(output_dir.glob("sprig-*.zip"))
    if not built:
        raise RuntimeError(f"blender_ext.py build wrote no .zip into {output_dir}")
    archive = max(built, key=lambda p: p.stat().st_mtime)
    log.info(run_tool(blender_ext, ["validate", str(archive)]))
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, default=None, help="path of blender_ext.py (default: from bpy)")
    parser.add_argument("--staging-dir", type=Path, default=None,
                        help="folder the extension's files are gathered in (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        archive = build(args.output_dir, args.blender_ext, args.staging_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    log.info("built %s", archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
