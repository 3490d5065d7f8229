"""Undo in Blender (bpy wheel, headless): Rig Sequence and Refit are each one undo step.

The operators are called with ``undo=True`` (``bpy.ops.sprig.refit("EXEC_DEFAULT", True)``) in a window's
context: Blender then pushes an undo step when the operator finishes, as it does for a click on the panel's
button (a plain ``bpy.ops`` call from Python pushes none). The step is undone with ``bpy.ops.ed.undo`` in the
window's 3D view, as Ctrl+Z does. The interactive (modal) run pushes its step when the modal ends; the wheel has
no event loop to drive a modal operator, so that path is not run here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from test_blender_rig import HAS_RIGGER  # noqa: E402
from test_blender_scenes import (data_counts, disable_addon, realdata_sequence, reset_scene,  # noqa: E402
                                 set_backend, shape_key_object)

pytestmark = [pytest.mark.blender, pytest.mark.skipif(not HAS_RIGGER, reason="rigger not available")]
N_FRAMES = 6


@pytest.fixture
def scene():
    reset_scene()
    yield bpy.context.scene
    from sprig_blender import heatmap, runner

    runner.discard_backend()
    heatmap.disable(None)
    disable_addon()


def window_context():
    """The context of the wheel's one window. No area: with a 3D view in the context, the undo push after an
    operator with ``REGISTER`` and ``UNDO`` (ours, and ``object.mode_set`` alike) crashes the bpy module."""
    return bpy.context.temp_override(window=bpy.context.window_manager.windows[0])


def undo() -> None:
    """One Ctrl+Z in the window's 3D view."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    with bpy.context.temp_override(window=window, screen=window.screen, area=area):
        assert bpy.ops.ed.undo() == {"FINISHED"}


def redo() -> None:
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    with bpy.context.temp_override(window=window, screen=window.screen, area=area):
        assert bpy.ops.ed.redo() == {"FINISHED"}


def id_properties(block) -> dict:
    """A data-block's custom properties as plain Python values (heat payloads stay bytes)."""
    out = {}
    for key in block.keys():
        value = block[key]
        out[key] = value.to_list() if hasattr(value, "to_list") else value.to_dict() if hasattr(value, "to_dict") \
            else value
    return out


def scene_state(source_name: str) -> dict:
    """What Rig Sequence changes outside the rig: data-blocks, the original's visibility, selection, active."""
    source = bpy.data.objects[source_name]
    view_layer = bpy.context.view_layer
    return {"counts": data_counts(), "objects": sorted(o.name for o in bpy.data.objects),
            "armatures": sorted(a.name for a in bpy.data.armatures), "actions": sorted(a.name for a in bpy.data.actions),
            "collections": sorted(c.name for c in bpy.data.collections),
            "source_visible": (source.hide_get(), source.hide_render, source.hide_viewport),
            "selected": sorted(o.name for o in view_layer.objects if o.select_get()),
            "active": view_layer.objects.active.name if view_layer.objects.active else None,
            "rig_object": bpy.context.scene.sprig.rig_object.name if bpy.context.scene.sprig.rig_object else None}


def rig_state(mesh_name: str, arm_name: str) -> dict:
    """Everything a refit replaces, read back exactly: bones (edit bones in Edit Mode), vertex groups and
    weights, the Action's curves and keys, the custom properties (stats, heat data) of the mesh and armature."""
    mesh_obj, arm_obj = bpy.data.objects[mesh_name], bpy.data.objects[arm_name]
    if bpy.context.mode == "EDIT_ARMATURE":
        bones = {b.name: (tuple(b.head), tuple(b.tail), b.roll, b.parent.name if b.parent else None, b.use_connect)
                 for b in arm_obj.data.edit_bones}
    else:
        bones = {b.name: (tuple(b.head_local), tuple(b.tail_local), b.parent.name if b.parent else None,
                          b.use_connect) for b in arm_obj.data.bones}
    names = [g.name for g in mesh_obj.vertex_groups]
    weights = [sorted((names[g.group], g.weight) for g in v.groups) for v in mesh_obj.data.vertices]
    action = arm_obj.animation_data.action
    curves = {}
    for layer in action.layers:
        for strip in layer.strips:
            for bag in strip.channelbags:
                for curve in bag.fcurves:
                    curves[(curve.data_path, curve.array_index)] = [(tuple(k.co), k.interpolation)
                                                                    for k in curve.keyframe_points]
    return {"mode": bpy.context.mode, "bones": bones, "groups": names, "weights": weights, "action": action.name,
            "curves": curves, "modifiers": [(m.type, getattr(m, "object", None) and m.object.name)
                                            for m in mesh_obj.modifiers],
            "props": [id_properties(b) for b in (mesh_obj, mesh_obj.data, arm_obj, arm_obj.data)],
            "counts": data_counts()}


def heat_values(mesh_name: str, frames: list[int]) -> dict:
    """The heatmap's values per mode and frame (through its decoded cache, as the frame handler reads them)."""
    from sprig_blender import heatmap

    mesh_obj = bpy.data.objects[mesh_name]
    return {(mode, f): heatmap.heat_data(mesh_obj.data, mode).values_at(f).tolist()
            for mode in ("RECON", "INSTABILITY") if heatmap.has_mode(mesh_obj, mode) for f in frames}


@pytest.mark.parametrize("refit_from", ["EDIT", "OBJECT"])
def test_rig_sequence_and_refit_are_each_one_undo_step(scene, checkpoints, refit_from):
    """Refit from Edit Mode (it writes the edits back itself) or after leaving it (Tab: an Object Mode step)."""
    set_backend("IN_PROCESS", checkpoints=checkpoints)
    verts, faces, _ = realdata_sequence("khronos_fox_run", N_FRAMES)
    source = shape_key_object("fox", verts, faces)
    bpy.context.window_manager.sprig_heatmap.enabled = True  # the heatmap is on: instability is stored too
    bpy.context.window_manager.sprig_heatmap.write_values = True  # the raw values are read back below
    bpy.ops.ed.undo_push(message="fox")  # the state before Rig Sequence (Blender pushed one after the last edit)
    before_rig = scene_state("fox")
    assert before_rig["source_visible"] == (False, False, False) and before_rig["selected"] == ["fox"]

    with window_context():
        assert bpy.ops.sprig.rig_sequence("EXEC_DEFAULT", True) == {"FINISHED"}
    rigged = scene_state("fox")
    assert {"fox_rig", "fox_rigged"} <= set(rigged["objects"]) and rigged["source_visible"][0]
    assert rigged["active"] == "fox_rigged" and rigged["rig_object"] == "fox_rigged"
    rig_after_rig = rig_state("fox_rigged", "fox_rig")

    # (b) one undo removes the rig (armature, rigged copy, Action, collection) and shows and selects the original
    undo()
    assert scene_state("fox") == before_rig
    # and redo brings the same rig back
    redo()
    assert scene_state("fox") == rigged and rig_state("fox_rigged", "fox_rig") == rig_after_rig

    # (a) the user edits the armature: deletes a bone, moves another (Blender pushes an Edit Mode step)
    arm_obj = bpy.data.objects["fox_rig"]
    for obj in bpy.context.selected_objects:
        obj.select_set(False)
    bpy.context.view_layer.objects.active = arm_obj
    arm_obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    bones = arm_obj.data.edit_bones
    deleted = next(b.name for b in bones if b.parent is not None and b.children)
    bones.remove(bones[deleted])
    moved = next(b for b in bones if b.parent is not None and not b.children)
    moved.use_connect = False
    moved.head.x += 0.05
    moved.tail.x += 0.05
    bpy.ops.ed.undo_push(message="edit bones")
    if refit_from == "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
        bpy.ops.ed.undo_push(message="Toggle Edit Mode")
    frames = list(range(1, N_FRAMES + 1))
    before_refit = rig_state("fox_rigged", "fox_rig")
    heat_before = heat_values("fox_rigged", frames)
    assert before_refit["mode"] == {"EDIT": "EDIT_ARMATURE", "OBJECT": "OBJECT"}[refit_from]
    assert deleted not in before_refit["bones"]
    assert ("INSTABILITY", 1) in heat_before  # the Rig Sequence rig has both heat modes

    with window_context():
        assert bpy.ops.sprig.refit("EXEC_DEFAULT", True) == {"FINISHED"}
    refitted = rig_state("fox_rigged", "fox_rig")
    assert refitted["mode"] == "OBJECT" and json.loads(refitted["props"][0]["sprig_stats"])["skeleton_source"] == "edited"
    assert len(refitted["bones"]) == len(before_refit["bones"]) and deleted not in refitted["groups"]
    for key in ("groups", "weights", "curves", "props"):
        assert refitted[key] != before_refit[key], key  # the refit changed each of them
    heat_refitted = heat_values("fox_rigged", frames)  # the refit's values are decoded (and cached) now
    assert heat_refitted != heat_before and ("INSTABILITY", 1) not in heat_refitted

    # one undo: back in the mode the refit started from, with the bones as edited, the old weights, Action,
    # stats and heat data
    undo()
    assert rig_state("fox_rigged", "fox_rig") == before_refit
    assert heat_values("fox_rigged", frames) == heat_before  # not the refit's values still held in the cache
    mesh_obj = bpy.data.objects["fox_rigged"]
    bpy.context.scene.frame_set(3)  # the frame handler colours the mesh from the restored values
    from sprig_blender import heatmap

    shown = np.empty(len(mesh_obj.data.vertices), dtype=np.float32)
    mesh_obj.data.attributes[heatmap.VALUE_ATTRIBUTE].data.foreach_get("value", shown)
    mode = bpy.context.window_manager.sprig_heatmap.mode
    np.testing.assert_allclose(shown, heatmap.heat_data(mesh_obj.data, mode).values_at(3), rtol=1e-6)
