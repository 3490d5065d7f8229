"""The extension package: manifest validation and build, install/enable via Blender's extension API,
register/unregister hygiene, and the preferences' Check Backend."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

from test_blender_scenes import ADDON, ROOT, disable_addon, reset_scene, set_backend  # noqa: E402

pytestmark = pytest.mark.blender
sys.path.insert(0, str(ROOT / "scripts"))
import build_extension  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Built as the README says (the command line), staged in a temporary folder: nothing lands in the checkout."""
    folder = tmp_path_factory.mktemp("extension")
    had_build = (ROOT / "build").exists()
    assert build_extension.main(["--output-dir", str(folder / "dist")]) == 0
    assert (ROOT / "build").exists() == had_build
    (zip_path,) = (folder / "dist").glob("sprig-*.zip")
    return zip_path


def test_extension_validates_and_builds(archive):
    assert archive.name == "sprig-0.1.0.zip"
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = zf.read("blender_manifest.toml").decode()
    assert {"blender_manifest.toml", "__init__.py", "operators.py", "builder.py", "heatmap.py", "export.py",
            "_backend/app/client.py", "_backend/rigging/result.py", "_backend/skeleton.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    import tomllib

    meta = tomllib.loads(manifest)
    assert meta["schema_version"] == "1.0.0" and meta["type"] == "add-on"
    assert meta["license"] == ["SPDX:GPL-3.0-or-later"] and meta["blender_version_min"] == "4.2.0"
    assert "files" in meta["permissions"]
    # the bundled client must not need the backend package (only stdlib + numpy; the copies import each other
    # relatively): a Blender's own Python has no backend package
    for name in build_extension.VENDORED:
        source = (ROOT / "backend" / name).read_text()
        assert not re.search(r"^\s*(from|import) (backend|torch)\b", source, re.MULTILINE), name


INSTALL_SCRIPT = r"""
import json, sys
sys.modules["backend"] = None  # as in a Blender whose Python has no backend package: only the bundled copy imports
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
out = {}
bpy.ops.extensions.package_install_files(filepath=sys.argv[-1], repo="user_default", enable_on_install=True)
module = "bl_ext.user_default.sprig"
out["enabled"] = module in bpy.context.preferences.addons
out["operator"] = hasattr(bpy.types, "SPRIG_OT_rig_sequence") and bpy.ops.sprig.rig_sequence.poll()
out["panel"] = hasattr(bpy.types, "SPRIG_PT_main")
out["scene_prop"] = hasattr(bpy.types.Scene, "sprig")
prefs = bpy.context.preferences.addons[module].preferences
out["prefs_mode"] = prefs.backend_mode
ext = sys.modules[module]
out["bundled_client"] = ext.runner.backend_client.__name__
import numpy as np
from bl_ext.user_default.sprig._backend.rigging import result as bundled_result
tails = bundled_result.default_tails(np.eye(3), np.array([[0.0, 0, 0], [0, 1, 0]]), np.array([-1, 0]))
out["bundled_tail"] = [round(float(x), 6) for x in tails[0]]  # the root's tail on its only child's head
bpy.ops.preferences.addon_disable(module=module)
out["after_disable"] = [hasattr(bpy.types, "SPRIG_OT_rig_sequence"), hasattr(bpy.types.Scene, "sprig"),
                        module in bpy.context.preferences.addons]
print("RESULT" + json.dumps(out))
"""


def test_extension_installs_and_enables_through_blenders_extension_api(archive, tmp_path):
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"))  # never the real user config
    proc = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(archive)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out == {"enabled": True, "operator": True, "panel": True, "scene_prop": True, "prefs_mode": "AUTO",
                   "bundled_client": "bl_ext.user_default.sprig._backend.app.client", "bundled_tail": [0.0, 1.0, 0.0],
                   "after_disable": [False, False, False]}
    assert (tmp_path / "blender_user" / "extensions" / "user_default" / "sprig" / "blender_manifest.toml").exists()


def _snapshot() -> dict:
    handlers = {name: list(getattr(bpy.app.handlers, name)) for name in dir(bpy.app.handlers)
                if not name.startswith("_") and isinstance(getattr(bpy.app.handlers, name), list)}
    return {
        "handlers": {k: [getattr(f, "__module__", "") + "." + getattr(f, "__name__", "") for f in v]
                     for k, v in handlers.items()},
        "types": sorted(n for n in dir(bpy.types) if n.upper().startswith("SPRIG")),
        "scene": hasattr(bpy.types.Scene, "sprig"),
        "wm": [hasattr(bpy.types.WindowManager, n) for n in ("sprig_heatmap", "sprig_runtime")],
        "timers": bpy.app.timers.is_registered,
    }


def test_unregister_leaves_no_classes_handlers_or_properties():
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    clean = _snapshot()
    assert clean["types"] == [] and not clean["scene"]
    for _ in range(2):  # enable/disable twice: nothing accumulates
        addon_utils.enable(ADDON, default_set=True)
        on = _snapshot()
        assert {"SPRIG_OT_rig_sequence", "SPRIG_PT_main", "SPRIG_PT_heatmap"} <= set(on["types"])
        assert on["scene"] and on["wm"] == [True, True]
        assert any(h.endswith("on_load_pre") for h in on["handlers"]["load_pre"])
        bpy.context.window_manager.sprig_heatmap.enabled = True  # installs the frame handler
        assert any(h.endswith("on_frame_change") for h in _snapshot()["handlers"]["frame_change_pre"])
        addon_utils.disable(ADDON, default_set=True)
        off = _snapshot()
        assert off["types"] == [] and not off["scene"] and off["wm"] == [False, False]
        assert off["handlers"] == clean["handlers"]
    # the package's own register()/unregister() (without the add-on machinery) are just as clean
    import sprig_blender

    sprig_blender.register()
    sprig_blender.unregister()
    assert _snapshot()["handlers"] == clean["handlers"] and _snapshot()["types"] == []


def test_check_backend_reports_versions_and_device():
    reset_scene()
    try:
        set_backend("SUBPROCESS")
        assert bpy.ops.sprig.check_backend() == {"FINISHED"}
        status = bpy.context.window_manager.sprig_runtime.backend_status
        import numpy
        import torch

        assert f"torch {torch.__version__}, numpy {numpy.__version__}, device cpu" in status
        assert status.startswith("subprocess backend 0.1.0 on Python 3.11")
        from sprig_blender import runner

        server = runner._BACKEND.client.process
        assert server.poll() is None  # kept running for the next rig (models stay loaded)
        set_backend("SUBPROCESS", python="/no/such/python")
        with pytest.raises(RuntimeError, match="Backend not available: backend Python executable not found"):
            bpy.ops.sprig.check_backend()
        assert server.wait(10) is not None  # the old server was shut down when the settings changed
    finally:
        disable_addon()
