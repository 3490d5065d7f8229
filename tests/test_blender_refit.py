"""Refit in Blender (bpy wheel, headless): edit a rig's bones, refit through the subprocess backend, check that the
edited bones are kept, none separates on any frame and the reported error is the edited rig's."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from test_blender_rig import check_playback, weight_sums  # noqa: E402
from test_blender_scenes import (data_counts, disable_addon, ground_truth_rig, realdata_sequence,  # noqa: E402
                                 reset_scene, set_backend, shape_key_object)

pytestmark = pytest.mark.blender
N_FRAMES = 10


@pytest.fixture
def fox_rig():
    """The Fox (first frames, shape keys) rigged with its artist's rig by the builder (no backend needed)."""
    reset_scene()
    from sprig_blender import builder, export

    verts, faces, raw = realdata_sequence("khronos_fox_run", N_FRAMES)
    source = shape_key_object("fox", verts, faces)
    frames = export.frame_list(1, N_FRAMES, 1)
    exported = export.export_frames(bpy.context, source, frames)
    built = builder.build_rig(bpy.context, source, ground_truth_rig(raw, verts), exported.frames)
    bpy.context.scene.sprig.refine_motion = True
    yield source, built
    from sprig_blender import runner

    runner.discard_backend()
    disable_addon()


def edit_bones(arm_obj, edit) -> None:
    """Run ``edit(edit_bones)`` in Edit Mode of ``arm_obj`` (left in Edit Mode: Refit must write the edits back)."""
    for obj in bpy.context.selected_objects:
        obj.select_set(False)
    bpy.context.view_layer.objects.active = arm_obj
    arm_obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    edit(arm_obj.data.edit_bones)


def pose_separation(arm_obj, frames: list[int]) -> float:
    """Largest distance, over ``frames`` and child bones, between a child's posed head and where its parent's pose
    carries the child's rest head (0 when no bone separates from its parent)."""
    worst = 0.0
    for frame in frames:
        bpy.context.scene.frame_set(frame)
        for pose_bone in arm_obj.pose.bones:
            parent = pose_bone.parent
            if parent is None:
                continue
            carried = parent.matrix @ parent.bone.matrix_local.inverted() @ pose_bone.bone.head_local
            worst = max(worst, (pose_bone.head - carried).length)
            if pose_bone.bone.use_connect:  # a connected child's head sits on the parent's tail
                worst = max(worst, (pose_bone.head - parent.tail).length)
    return worst


@pytest.mark.parametrize("mode", ["SUBPROCESS", "IN_PROCESS"])
def test_refit_after_deleting_and_moving_bones(fox_rig, mode):
    from sprig_blender import builder, heatmap, operators

    source, built = fox_rig
    assert not [a.name for a in built.mesh_object.data.attributes if a.name.startswith(".select")]  # not copied
    set_backend(mode)  # no checkpoint folder: a refit does not use the networks
    arm_obj, mesh_obj = built.armature_object, built.mesh_object
    names_before = [b.name for b in arm_obj.data.bones]
    deleted, moved = names_before[5], names_before[14]
    diag = float(np.linalg.norm(np.ptp(np.array([v.co for v in mesh_obj.data.vertices]), axis=0)))
    children_of_deleted = [b.name for b in arm_obj.data.bones[deleted].children]
    parent_of_deleted = arm_obj.data.bones[deleted].parent.name

    def edit(bones):
        bones.remove(bones[deleted])
        bones[moved].use_connect = False
        for attr in ("head", "tail"):
            setattr(bones[moved], attr, getattr(bones[moved], attr) + type(bones[moved].head)((0, 0.03 * diag, 0)))

    edit_bones(arm_obj, edit)
    heads_edited = {b.name: b.head.copy() for b in arm_obj.data.edit_bones}
    tails_edited = {b.name: b.tail.copy() for b in arm_obj.data.edit_bones}
    old_action = arm_obj.animation_data.action
    assert "UNDO" in operators.SPRIG_OT_refit.bl_options  # the whole refit is one undo step
    assert bpy.ops.sprig.refit.poll()
    assert bpy.ops.sprig.refit() == {"FINISHED"}
    assert bpy.context.mode == "OBJECT"

    bones = arm_obj.data.bones
    assert deleted not in bones and len(bones) == len(names_before) - 1
    for name in children_of_deleted:  # Blender gave the deleted bone's children its parent; the refit kept that
        assert bones[name].parent.name == parent_of_deleted
    for name, head in heads_edited.items():  # the bones are where the user put them
        assert (bones[name].head_local - head).length < 1e-5 and (bones[name].tail_local - tails_edited[name]).length < 1e-5
    # weights: one group per bone (the deleted bone's group is gone), rows on the simplex, at most 4 influences
    assert sorted(g.name for g in mesh_obj.vertex_groups) == sorted(b.name for b in bones)
    np.testing.assert_allclose(weight_sums(mesh_obj), 1.0, atol=1e-4)
    assert max(len(v.groups) for v in mesh_obj.data.vertices) <= 4
    # a new action with the old name replaced the old one
    action = arm_obj.animation_data.action
    assert action is not None and action != old_action and action.name == "fox_motion"
    assert sorted(a.name for a in bpy.data.actions) == ["foxAction", "fox_motion"]  # (the shape keys' and the rig's)
    # no bone separates from its parent on any frame
    frames = list(range(1, N_FRAMES + 1))
    assert pose_separation(arm_obj, frames) < 1e-4 * diag
    # the reported error is the edited rig's: Blender's playback reproduces it, and the heat data holds it
    stats = json.loads(mesh_obj["sprig_stats"])
    assert stats["skeleton_source"] == "edited" and stats["joints"] == len(bones)
    assert json.loads(arm_obj["sprig_stats"]) == stats
    check_playback(source, mesh_obj, stats, frames)
    assert stats["recon_mean"] < 0.01
    assert heatmap.has_mode(mesh_obj, "RECON") and not heatmap.has_mode(mesh_obj, "INSTABILITY")
    assert builder.rig_objects(mesh_obj) == (mesh_obj, arm_obj) == builder.rig_objects(arm_obj)


def test_refit_errors_leave_the_rig_unchanged(fox_rig):
    source, built = fox_rig
    set_backend("SUBPROCESS")
    arm_obj, mesh_obj = built.armature_object, built.mesh_object
    top = [b.name for b in arm_obj.data.bones][:3]  # the fox's root, its one child, and the hip hub below it

    def delete_top(bones):
        for name in top:
            bones.remove(bones[name])

    edit_bones(arm_obj, delete_top)
    bpy.ops.object.mode_set(mode="OBJECT")
    roots = [b.name for b in arm_obj.data.bones if b.parent is None]
    assert len(roots) > 1  # the hub's children (spine, legs) are unparented now
    before = (data_counts(), arm_obj.animation_data.action.name, sorted(g.name for g in mesh_obj.vertex_groups),
              mesh_obj["sprig_stats"])
    with pytest.raises(RuntimeError, match=f"{len(roots)} root bones"):  # refused, naming the roots
        bpy.ops.sprig.refit()
    after = (data_counts(), arm_obj.animation_data.action.name, sorted(g.name for g in mesh_obj.vertex_groups),
             mesh_obj["sprig_stats"])
    assert after == before
    # nothing to refit: a mesh that is not a rig
    bpy.context.view_layer.objects.active = source
    assert not bpy.ops.sprig.refit.poll()


def test_refit_cancel_leaves_the_rig_unchanged(fox_rig):
    from sprig_blender import builder, export, preferences, runner

    source, built = fox_rig
    set_backend("SUBPROCESS")
    arm_obj, mesh_obj = built.armature_object, built.mesh_object
    before = (data_counts(), arm_obj.animation_data.action.name, mesh_obj["sprig_stats"])
    exported = export.export_frames(bpy.context, source, builder.rig_frames(mesh_obj))
    job = runner.RigJob(runner.get_backend(preferences.backend_settings(bpy.context)), exported.verts,
                        exported.faces, bpy.context.scene.sprig.refit_options(), name="fox",
                        skeleton=builder.edited_skeleton(arm_obj))
    job.start()
    while job.state == "running" and not job.stage:  # cancel once the backend reports progress
        job.poll()
        time.sleep(0.01)
    job.cancel()
    job.wait(timeout=120)
    assert job.state == "cancelled" and job.result is None
    assert (data_counts(), arm_obj.animation_data.action.name, mesh_obj["sprig_stats"]) == before
