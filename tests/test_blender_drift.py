"""The Joint Drift (MCJD) heatmap mode (bpy wheel, headless): bone colours from the backend's per-joint drift,
restored on mode change, toggle-off and unregister."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from test_blender_scenes import (GLTF_TO_BLENDER, disable_addon, ground_truth_rig,  # noqa: E402
                                 realdata_sequence, reset_scene, shape_key_object)

from backend.metrics import motion_compensated_joint_drift  # noqa: E402

pytestmark = pytest.mark.blender
Q = 1.0 / 255  # Blender stores custom bone colours with 8 bits per channel


def drift_rig(n_frames: int = 8):
    """The fox's artist rig built in Blender, with stats holding the MCJD of its own per-frame joints.

    Returns ``(built, values [J], mcjd)``.
    """
    from sprig_blender import builder

    verts, faces, raw = realdata_sequence("khronos_fox_run", n_frames)
    result = ground_truth_rig(raw, verts)
    joints = raw["joints"][:n_frames].astype(np.float64) @ GLTF_TO_BLENDER[:3, :3].T  # [K, J, 3]
    drift = motion_compensated_joint_drift(verts, list(joints))
    stats = {**result.stats, "joint_drift": drift.per_joint.tolist(), "mcjd": drift.mean}
    source = shape_key_object("fox", verts, faces)
    built = builder.build_rig(bpy.context, source, result, list(range(1, n_frames + 1)), stats=stats)
    return built, drift.per_joint, drift.mean


def bone_colors(arm_obj, names) -> tuple[list[str], np.ndarray]:
    """Palette per pose bone and their custom normal colours ``[J, 3]``."""
    bones = arm_obj.pose.bones
    return ([bones[n].color.palette for n in names],
            np.array([tuple(bones[n].color.custom.normal) for n in names], dtype=np.float64))


def test_drift_mode_colours_bones_by_backend_values_and_restores_them(scene):
    from sprig_blender import convert, heatmap

    built, values, mcjd = drift_rig()
    arm = built.armature_object
    names = built.bone_names
    assert len(values) == len(names) and np.ptp(values) > 0
    assert list(arm[heatmap.BONE_NAMES_KEY]) == names
    first = arm.pose.bones[names[0]]
    first.color.palette = "THEME03"  # an artist's own colour, to be put back
    arm.data.show_bone_colors = False
    before = bone_colors(arm, names)
    settings = bpy.context.window_manager.sprig_heatmap

    settings.mode = "DRIFT"
    settings.enabled = True
    palettes, normal = bone_colors(arm, names)
    assert palettes == ["CUSTOM"] * len(names) and arm.data.show_bone_colors
    expected = convert.bone_heat_colors(values, float(values.max()))
    np.testing.assert_allclose(normal, expected[0], atol=Q)
    np.testing.assert_allclose([tuple(arm.pose.bones[n].color.custom.active) for n in names], expected[2], atol=Q)
    worst, best = int(np.argmax(values)), int(np.argmin(values))
    red, blue = convert.linear_to_srgb(convert.HEAT_STOPS[-1]), convert.linear_to_srgb(convert.HEAT_STOPS[0])
    np.testing.assert_allclose(normal[worst], red, atol=Q)  # the highest drift is full red
    redness = normal[:, 0] - normal[:, 2]
    assert int(np.argmax(redness)) == worst and redness[worst] > redness[best] + 0.5
    assert np.linalg.norm(normal[best] - blue) < np.linalg.norm(normal[worst] - blue)
    assert scene.display.shading.color_type == "MATERIAL"  # meshes are left alone in this mode

    vmax, lines = heatmap.legend(bpy.context)
    assert vmax == pytest.approx(values.max())
    assert f"{values.min():.4g} - {values.max():.4g}" in lines[1] and names[worst] in lines[1]
    assert f"{mcjd:.4g}" in lines[1] and "Joint drift (MCJD)" in lines[0]

    settings.scale_max = 2.0 * float(values.max())  # the scale follows Scale Max
    np.testing.assert_allclose(bone_colors(arm, names)[1][worst],
                               convert.bone_heat_colors([0.5], 1.0)[0][0], atol=Q)
    settings.scale_max = 0.0

    settings.mode = "RECON"  # back to a mesh mode: bones restored, meshes coloured
    assert bone_colors(arm, names)[0] == before[0] and not arm.data.show_bone_colors
    np.testing.assert_array_equal(bone_colors(arm, names)[1], before[1])
    assert scene.display.shading.color_type == "VERTEX"

    settings.mode = "DRIFT"  # and again: coloured, shading given back
    assert bone_colors(arm, names)[0] == ["CUSTOM"] * len(names)
    assert scene.display.shading.color_type == "MATERIAL"
    scene.frame_set(5)  # the drift is per clip: frame changes keep it
    np.testing.assert_allclose(bone_colors(arm, names)[1], expected[0], atol=Q)

    settings.enabled = False  # toggling off restores the artist's colours
    assert bone_colors(arm, names)[0] == before[0] and first.color.palette == "THEME03"
    assert not arm.data.show_bone_colors
    assert heatmap.on_frame_change not in bpy.app.handlers.frame_change_pre


def test_drift_mode_without_drift_stats_colours_nothing(scene):
    from sprig_blender import builder, heatmap

    verts, faces, raw = realdata_sequence("khronos_fox_run", 4)
    built = builder.build_rig(bpy.context, shape_key_object("fox", verts, faces), ground_truth_rig(raw, verts),
                              [1, 2, 3, 4])  # stats without joint_drift, like a single-frame rig
    assert "joint_drift" not in json.loads(built.armature_object["sprig_stats"])
    settings = bpy.context.window_manager.sprig_heatmap
    settings.mode = "DRIFT"
    settings.enabled = True
    assert heatmap.enable(bpy.context) == 0
    assert all(pb.color.palette == "DEFAULT" for pb in built.armature_object.pose.bones)
    assert heatmap.legend(bpy.context) is None


def test_unregister_in_drift_mode_restores_bones_and_leaves_nothing(scene):
    from sprig_blender import heatmap

    built, values, _ = drift_rig(4)
    arm = built.armature_object
    settings = bpy.context.window_manager.sprig_heatmap
    settings.mode = "DRIFT"
    settings.enabled = True
    assert all(pb.color.palette == "CUSTOM" for pb in arm.pose.bones)
    disable_addon()
    assert all(pb.color.palette == "DEFAULT" for pb in arm.pose.bones)
    assert not hasattr(bpy.types.WindowManager, "sprig_heatmap")
    for handlers in (bpy.app.handlers.frame_change_pre, bpy.app.handlers.load_pre):
        assert not [h for h in handlers if getattr(h, "__module__", "").startswith("sprig_blender")]
    assert heatmap._State.saved_bones == {} and heatmap._State.drift_cache == {}
    reset_scene()  # the fixture disables the add-on again
