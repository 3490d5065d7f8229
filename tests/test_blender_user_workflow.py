"""What a user does, from the built zip: install the extension into a fresh user folder, open an Alembic-cached
animated mesh (Mesh Sequence Cache modifier), Rig Sequence, edit the armature (delete a bone, move another), Refit.

Runs Blender (the bpy wheel) in a subprocess with its own user folder, so nothing of this checkout's add-on is used:
only the installed extension and its bundled backend client, talking to this checkout's backend server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

from test_blender_scenes import ROOT  # noqa: E402

pytestmark = pytest.mark.blender
sys.path.insert(0, str(ROOT / "scripts"))
import build_extension  # noqa: E402

WORKFLOW_SCRIPT = r"""
import json, sys
import bpy
import numpy as np

archive, work, checkpoints, root = sys.argv[-4:]
sys.path.insert(0, root + "/tests")
from test_blender_scenes import armature_tube  # a tube bent by a 3-bone armature (the animation to cache)

out = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=archive, repo="user_default", enable_on_install=True)
module = "bl_ext.user_default.sprig"
out["enabled"] = module in bpy.context.preferences.addons
prefs = bpy.context.preferences.addons[module].preferences
prefs.backend_mode, prefs.python_executable, prefs.backend_path = "SUBPROCESS", sys.executable, root
prefs.checkpoint_dir = checkpoints

# an animated mesh cached to Alembic, then opened from the cache in an empty scene
tube = armature_tube(n_frames=8, rings=14, segments=10)
bpy.ops.wm.alembic_export(filepath=work + "/tube.abc", start=1, end=8, selected=True)
for store in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions):  # an empty scene
    for block in list(store):
        store.remove(block)
bpy.ops.wm.alembic_import(filepath=work + "/tube.abc", as_background_job=False)
cached = next(o for o in bpy.data.objects if o.type == "MESH")
out["cache_modifier"] = [m.type for m in cached.modifiers]
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, 8
for o in bpy.context.selected_objects:
    o.select_set(False)
bpy.context.view_layer.objects.active = cached
cached.select_set(True)

scene.sprig.detail = "count"
scene.sprig.bone_count = 6
out["rig"] = sorted(bpy.ops.sprig.rig_sequence())
mesh = bpy.context.view_layer.objects.active
arm = next(m.object for m in mesh.modifiers if m.type == "ARMATURE")
stats = json.loads(mesh["sprig_stats"])
out["rig_bones"] = len(arm.data.bones)
out["rig_detail"] = stats["config"]["detail"]

# edit: delete a bone that has a parent, move a leaf bone (disconnected first)
bpy.context.view_layer.objects.active = arm
bpy.ops.object.mode_set(mode="EDIT")
bones = arm.data.edit_bones
deleted = next(b.name for b in bones if b.parent is not None and b.children)
bones.remove(bones[deleted])
leaf = next(b for b in bones if b.parent is not None and not b.children)
leaf.use_connect = False
leaf.head.x += 0.05
leaf.tail.x += 0.05
moved = (leaf.name, list(leaf.head))
out["refit"] = sorted(bpy.ops.sprig.refit())  # from Edit Mode: the edits are written back first
out["mode_after"] = bpy.context.mode
out["deleted_gone"] = deleted not in arm.data.bones
out["moved_kept"] = float(np.linalg.norm(np.array(arm.data.bones[moved[0]].head_local) - moved[1]))
out["refit_bones"] = len(arm.data.bones)
out["groups_match"] = sorted(g.name for g in mesh.vertex_groups) == sorted(b.name for b in arm.data.bones)
refit_stats = json.loads(mesh["sprig_stats"])
out["refit_source"] = refit_stats["skeleton_source"]
out["refit_recon_mean"] = refit_stats["recon_mean"]
worst = 0.0
for frame in range(1, 9):
    scene.frame_set(frame)
    for pb in arm.pose.bones:
        if pb.parent is not None:
            carried = pb.parent.matrix @ pb.parent.bone.matrix_local.inverted() @ pb.bone.head_local
            worst = max(worst, (pb.head - carried).length)
out["separation"] = worst
print("RESULT" + json.dumps(out))
"""


def test_install_rig_edit_refit_from_the_zip_on_an_alembic_cache(tmp_path):
    from test_server import write_untrained_checkpoints

    archive = build_extension.build(tmp_path / "dist", staging=tmp_path / "stage")
    checkpoints = write_untrained_checkpoints(tmp_path / "checkpoints")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WORKFLOW_SCRIPT, str(archive), str(tmp_path), str(checkpoints),
                           str(ROOT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["enabled"] and out["cache_modifier"] == ["MESH_SEQUENCE_CACHE"]
    assert out["rig"] == ["FINISHED"] and out["rig_detail"] == "6" and out["rig_bones"] >= 3
    assert out["refit"] == ["FINISHED"] and out["mode_after"] == "OBJECT"
    assert out["deleted_gone"] and out["moved_kept"] < 1e-5 and out["refit_bones"] == out["rig_bones"] - 1
    assert out["groups_match"] and out["refit_source"] == "edited"
    assert out["separation"] < 1e-4  # no bone leaves its parent on any frame (the tube is 3 units long)
    assert out["refit_recon_mean"] < 0.05
