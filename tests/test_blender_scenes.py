"""Scenes for the Blender tests (animated meshes made in Blender, real rigs) and tests of the frame export.

The helpers here are imported by the other ``test_blender_*`` modules and by
``scripts/render_blender_docs.py``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.lbs import linear_blend_skinning  # noqa: E402
from backend.rigging.result import RigResult  # noqa: E402

# Backend servers started by these tests use one torch thread: the CI machine has two cores for everything.
os.environ.setdefault("OMP_NUM_THREADS", "1")
REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
ADDON = "sprig_blender"
# glTF is +Y up, Blender +Z up: (x, y, z) -> (x, -z, y), as Blender's glTF importer does.
GLTF_TO_BLENDER = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

pytestmark = pytest.mark.blender


# -- scene helpers ------------------------------------------------------------------------------


def reset_scene() -> None:
    """An empty factory scene with the add-on enabled from this checkout."""
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable(ADDON, default_set=True)


def disable_addon() -> None:
    import addon_utils

    addon_utils.disable(ADDON, default_set=True)


def set_backend(mode: str = "SUBPROCESS", python: str | None = None, checkpoints: str | Path = "") -> None:
    """Point the add-on preferences at this checkout's Python (and a checkpoint folder)."""
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.backend_mode = mode
    prefs.python_executable = sys.executable if python is None else python
    prefs.backend_path = str(ROOT)
    prefs.checkpoint_dir = str(checkpoints)


def data_counts() -> dict[str, int]:
    """Number of data-blocks of each kind the add-on could create."""
    d = bpy.data
    return {"objects": len(d.objects), "meshes": len(d.meshes), "armatures": len(d.armatures),
            "actions": len(d.actions), "collections": len(d.collections), "materials": len(d.materials),
            "scene_objects": len(bpy.context.scene.objects), "frame": bpy.context.scene.frame_current}


def evaluated_world_verts(obj) -> np.ndarray:
    """float32 ``[V, 3]`` world-space vertices of ``obj``'s evaluated mesh at the current frame."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    world = np.array(evaluated.matrix_world, dtype=np.float64)
    return (co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]).astype(np.float32)


def shape_key_object(name: str, verts: np.ndarray, faces: np.ndarray, first_frame: int = 1,
                     time_scale: float = 1.0):
    """A mesh whose shape keys replay ``verts [K, V, 3]`` at frames ``first_frame + time_scale * k`` (one key per
    frame with the default scale; another scale puts keys between frames, as a glTF imported at another frame
    rate than its own has them); the scene's range ends at the last key's frame, rounded up."""
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts[0].tolist(), [], np.asarray(faces).tolist())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    for k in range(1, len(verts)):
        key = obj.shape_key_add(name=f"frame_{k:03d}")
        key.data.foreach_set("co", np.asarray(verts[k], dtype=np.float32).ravel())
        for step, value in ((k - 1, 0.0), (k, 1.0), (k + 1, 0.0)):
            key.value = value
            key.keyframe_insert("value", frame=first_frame + time_scale * step)
    scene = bpy.context.scene
    scene.frame_start = first_frame
    scene.frame_end = int(np.ceil(first_frame + time_scale * (len(verts) - 1) - 1e-6))
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def armature_tube(name: str = "tube", n_frames: int = 8, rings: int = 12, segments: int = 12):
    """A tube bent by a 3-bone armature made here (vertex groups + Armature modifier + keyed rotations).

    Returns the mesh object (active and selected); the scene range covers the animation.
    """
    z = np.linspace(0.0, 3.0, rings)
    angle = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    verts = [(0.25 * np.cos(a), 0.25 * np.sin(a), zi) for zi in z for a in angle]
    faces = [(r * segments + s, r * segments + (s + 1) % segments, (r + 1) * segments + (s + 1) % segments,
              (r + 1) * segments + s) for r in range(rings - 1) for s in range(segments)]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    scene = bpy.context.scene
    scene.collection.objects.link(obj)

    arm = bpy.data.armatures.new(f"{name}_armature")
    arm_obj = bpy.data.objects.new(f"{name}_armature", arm)
    scene.collection.objects.link(arm_obj)
    bpy.context.view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    parent = None
    for i in range(3):
        bone = arm.edit_bones.new(f"seg{i}")
        bone.head, bone.tail = (0, 0, float(i)), (0, 0, float(i + 1))
        bone.parent, bone.use_connect = parent, parent is not None
        parent = bone
    bpy.ops.object.mode_set(mode="OBJECT")
    zs = np.array([v[2] for v in verts])
    for i in range(3):
        group = obj.vertex_groups.new(name=f"seg{i}")
        w = np.clip(1.0 - np.abs(zs - (i + 0.5)), 0.0, 1.0)
        for v in np.flatnonzero(w > 0):
            group.add([int(v)], float(w[v]), "REPLACE")
    modifier = obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = arm_obj
    for k in range(n_frames):
        for i, pose_bone in enumerate(arm_obj.pose.bones):
            pose_bone.rotation_mode = "XYZ"
            pose_bone.rotation_euler = (0.5 * np.sin(0.7 * k + i) * (i > 0), 0.3 * k / n_frames, 0.0)
            pose_bone.keyframe_insert("rotation_euler", frame=k + 1)
    arm_obj.location = (0.5, -0.2, 0.1)  # the rig is not at the origin: export must be in world space
    scene.frame_start, scene.frame_end = 1, n_frames
    scene.frame_set(1)
    for o in bpy.context.selected_objects:
        o.select_set(False)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def realdata_sequence(name: str, n_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A realdata clip in Blender's axes: ``verts float32 [K, V, 3]``, ``faces [F, 3]`` and the raw npz dict."""
    with np.load(REALDATA / f"{name}.npz") as data:
        raw = {k: data[k] for k in data.files}
    verts = raw["verts"][:n_frames].astype(np.float64) @ GLTF_TO_BLENDER[:3, :3].T
    return verts.astype(np.float32), raw["faces"], raw


def ground_truth_rig(raw: dict, verts: np.ndarray) -> RigResult:
    """The artist's rig of a realdata clip as a RigResult in Blender's axes.

    The anchor-space bone transforms are ``T_kj = S_kj S_0j^-1`` (``skin_mats`` as 4x4, bind pose ->
    frame k), so frame 0 is the rest pose. ``recon_error`` is measured: LBS of the anchor with the
    artist weights and these transforms against the clip, / anchor box diagonal. The artist weights do
    not change over time, so ``skin_instability`` is 0.
    """
    K = len(verts)
    skin = raw["skin_mats"][:K].astype(np.float64)
    J = skin.shape[1]
    S = np.tile(np.eye(4), (K, J, 1, 1))
    S[..., :3, :] = skin
    C = GLTF_TO_BLENDER
    T = C[None, None] @ (S @ np.linalg.inv(S[0])[None]) @ np.linalg.inv(C)[None, None]
    anchor = verts[0]
    weights = raw["weights"].astype(np.float32)
    posed = linear_blend_skinning(anchor, weights, T)
    diag = float(np.linalg.norm(anchor.max(axis=0) - anchor.min(axis=0)))
    recon = (np.linalg.norm(posed - verts, axis=-1) / diag).astype(np.float32)
    joints = raw["joints"][0].astype(np.float64) @ C[:3, :3].T
    return RigResult(anchor_verts=anchor.astype(np.float32), faces=raw["faces"].astype(np.int32),
                     joints=joints.astype(np.float32), parents=raw["parents"].astype(np.int32),
                     joint_names=[str(n) for n in raw["joint_names"]], weights=weights,
                     bone_transforms=T.astype(np.float32), frame_joints_count=np.full(K, J, dtype=np.int32),
                     recon_error=recon, skin_instability=np.zeros_like(recon), fps=24.0,
                     stats={"joints": J, "frames": K, "recon_mean": float(recon.mean()),
                            "recon_max": float(recon.max()), "source": "artist rig (ground truth)"})


# -- tests of the frame export ------------------------------------------------------------------


def test_export_shape_key_animation_matches_the_clip(scene):
    from sprig_blender import export

    verts, faces, _ = realdata_sequence("khronos_fox_run", 10)
    obj = shape_key_object("fox", verts, faces)
    obj.location = (1.0, 2.0, 3.0)
    obj.scale = (2.0, 2.0, 2.0)
    scene.frame_set(4)
    out = export.export_frames(bpy.context, obj, export.frame_list(1, 10, 1))
    expected = verts * 2.0 + np.array([1.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_allclose(out.verts, expected, rtol=0, atol=1e-3)
    assert out.faces.shape == faces.shape and out.faces.max() < verts.shape[1]
    assert out.frames == list(range(1, 11)) and scene.frame_current == 4  # current frame restored
    assert out.fps == pytest.approx(scene.render.fps / scene.render.fps_base)


def test_export_armature_driven_mesh_in_world_space_with_step(scene):
    from sprig_blender import export

    obj = armature_tube(n_frames=8)
    out = export.export_frames(bpy.context, obj, export.frame_list(1, 8, 2))
    assert out.verts.shape == (5, 144, 3) and out.frames == [1, 3, 5, 7, 8]  # the last frame is always kept
    for k, frame in enumerate(out.frames):
        scene.frame_set(frame)
        np.testing.assert_allclose(out.verts[k], evaluated_world_verts(obj), atol=1e-5)
    assert np.abs(out.verts[-1] - out.verts[0]).max() > 0.1  # it moves
    assert len(out.faces) == 2 * 11 * 12  # quads were triangulated


def test_export_stepwise_reports_each_frame_and_stops_cleanly(scene):
    from sprig_blender import export

    obj = armature_tube(n_frames=8)
    scene.frame_set(3)
    frames = export.frame_list(1, 8, 1)
    steps = export.export_frames_stepwise(bpy.context, obj, frames)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            out = done.value
            break
    assert seen == list(range(1, 9)) and scene.frame_current == 3
    np.testing.assert_array_equal(out.verts, export.export_frames(bpy.context, obj, frames).verts)
    # stopped after two frames (Esc in the modal operator): the scene's frame comes back
    steps = export.export_frames_stepwise(bpy.context, obj, frames)
    next(steps), next(steps)
    assert scene.frame_current == 2
    steps.close()
    assert scene.frame_current == 3


def test_export_rejects_topology_change_naming_the_frame(scene):
    from sprig_blender import export

    obj = armature_tube(n_frames=8)
    build = obj.modifiers.new("Build", "BUILD")  # adds faces (and vertices) over time
    build.frame_start, build.frame_duration = -5, 20
    with pytest.raises(export.ExportError, match=r"topology changes at frame 2: \d+ vertices, the anchor frame 1"):
        export.export_frames(bpy.context, obj, [1, 2, 3])
    assert scene.frame_current == 1


def test_frame_list_always_ends_on_the_last_frame():
    from sprig_blender import export

    assert export.frame_list(0, 28, 2) == list(range(0, 29, 2))
    assert export.frame_list(0, 28, 3) == [*range(0, 28, 3), 28]
    assert export.frame_list(1, 2, 5) == [1, 2]
    assert export.frame_list(4, 4, 1) == [4]


def test_build_modifier_is_named_as_a_topology_change(scene):
    from sprig_blender import export

    obj = armature_tube(n_frames=8)
    build = obj.modifiers.new("Grow", "BUILD")  # nothing of the mesh exists yet at frame 1
    build.frame_start, build.frame_duration = 1, 20
    with pytest.raises(export.ExportError, match=r"topology changes: 'tube' has 0 vertices and 0 faces at frame 1 "
                                                 r"\(the first frame\) but 144 vertices .*'Grow' \(Build\)"):
        export.export_frames(bpy.context, obj, [1, 2, 3])
    build.frame_start = -5  # part-built at frame 1, growing after it
    with pytest.raises(export.ExportError, match=r"topology changes at frame 2: .*'Grow' \(Build\) can change"):
        export.export_frames(bpy.context, obj, [1, 2, 3])


def test_a_mesh_cache_is_told_to_be_exported_again(scene):
    """An Alembic whose frames change their vertex count cannot be fixed by disabling its cache modifier: the
    hint says to write the file again (a new user was told to apply or disable it)."""
    from sprig_blender import export

    obj = armature_tube(n_frames=4)
    obj.modifiers.new("Cache", "MESH_SEQUENCE_CACHE")
    obj.modifiers.new("Grow", "BUILD")
    hint = export._topology_hint(obj)
    assert "'Grow' (Build) can change them: apply or disable them" in hint
    assert "'Cache' (Mesh Sequence Cache) reads them from its file" in hint and "export the animation again" in hint
    assert "'Cache' (Mesh Sequence Cache) can change" not in hint


def test_motion_screening(scene):
    """A still mesh is refused; object-level motion only and a range past the animation are warned about."""
    from sprig_blender import export

    verts, faces, _ = realdata_sequence("khronos_fox_run", 10)
    still = shape_key_object("still", np.repeat(verts[:1], 10, axis=0), faces)
    with pytest.raises(export.ExportError, match="'still' does not move over frames 1-10: nothing to rig"):
        export.screen_motion(export.export_frames(bpy.context, still, export.frame_list(1, 10, 1)))

    rigid = shape_key_object("rigid", verts[:1], faces)  # no shape animation: only the object moves
    for frame in range(1, 11):
        rigid.location = (0.1 * frame, 0.0, 0.0)
        rigid.rotation_euler = (0.0, 0.0, 0.2 * frame)
        rigid.keyframe_insert("location", frame=frame)
        rigid.keyframe_insert("rotation_euler", frame=frame)
    kept, warnings = export.screen_motion(export.export_frames(bpy.context, rigid, export.frame_list(1, 10, 1)))
    assert len(kept.frames) == 10 and len(warnings) == 1 and "'rigid' does not deform" in warnings[0]

    fox = shape_key_object("fox", verts, faces)  # animated on frames 1-11 (the last key returns to the basis)
    scene.frame_end = 40  # the default-range mistake: far past the clip
    kept, warnings = export.screen_motion(export.export_frames(bpy.context, fox, export.frame_list(1, 40, 1)))
    assert kept.frames == list(range(1, 12)) and kept.verts.shape[0] == 11
    assert warnings == ["'fox' stops moving at frame 11: frames 12-40 repeat it and were left out ('Use Animated "
                        "Range' sets the range to the animation)"]
    assert export.animated_range(bpy.context, fox) == (1, 11)  # from the shape keys' F-curves
    assert export.animated_range(bpy.context, rigid) == (1, 10)  # from the object's F-curves
    assert export.animated_range(bpy.context, still) == (1, 11)  # its shape keys are keyed (to the same pose)
    cached = shape_key_object("baked", verts[:6], faces, first_frame=3)
    cached.data.shape_keys.animation_data_clear()  # no keys: the range is found by evaluating the mesh
    cached.modifiers.new("cache", "MESH_CACHE")  # a cache modifier without a file leaves the mesh as it is
    assert export.animated_range(bpy.context, cached) is None


def test_export_names_the_frame_of_bad_coordinates(scene, recwarn):
    """NaN, Inf and coordinates the backend would refuse are named with the object and Blender's frame number."""
    from backend.sequence import MAX_ABS_COORDINATE
    from sprig_blender import export

    assert export.MAX_ABS_COORDINATE == MAX_ABS_COORDINATE
    verts, faces, _ = realdata_sequence("khronos_fox_run", 4)
    for value, message in ((np.nan, "NaN or infinite vertex positions at frame 3"),
                           (np.inf, "NaN or infinite vertex positions at frame 3"),
                           (1e30, r"vertex coordinates of 1e\+30 at frame 3; beyond 1e\+12")):
        bad = verts.copy()
        bad[2, 5, 0] = value  # the third key: Blender frame 3
        obj = shape_key_object(f"bad_{value}", bad, faces)
        with pytest.raises(export.ExportError, match=re.escape(f"'bad_{value}' has ") + message):
            export.export_frames(bpy.context, obj, export.frame_list(1, 4, 1))
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


def test_export_rejects_bad_input(scene):
    from sprig_blender import export

    with pytest.raises(export.ExportError, match="no active object"):
        export.check_exportable(None)
    empty = bpy.data.objects.new("empty", None)
    scene.collection.objects.link(empty)
    with pytest.raises(export.ExportError, match=r"'empty' is not a mesh \(it is an empty object\)"):
        export.export_frames(bpy.context, empty, [1, 2])
    obj = armature_tube(n_frames=4)
    with pytest.raises(export.ExportError, match="need at least 2 frames"):
        export.export_frames(bpy.context, obj, [1])
    with pytest.raises(export.ExportError, match="frame range is empty"):
        export.frame_list(5, 2, 1)


# -- the interactive (modal) path, driven as Blender's window manager drives it ----------------


@dataclass
class ModalEvent:
    """The two fields of a window-manager event the operators read."""

    type: str
    value: str = "NOTHING"


def window_override():
    """A context with the window, its screen and its 3D view (what a click on a panel button has)."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    return bpy.context.temp_override(window=window, screen=window.screen, area=area)


def invoke_rig_sequence():
    """Click Rig Sequence; returns the running operator. Background mode runs ``execute`` for
    ``INVOKE_DEFAULT`` (there is no event), so for this call ``execute`` hands over to ``invoke``; the modal
    handler ``invoke`` adds then owns the operator, as in an interactive session. The caller gives it its
    events (``op.modal(context, ModalEvent("TIMER"))``)."""
    from sprig_blender import operators

    cls = operators.SPRIG_OT_rig_sequence
    captured = []
    execute = cls.execute

    def invoking_execute(op, context):
        captured.append(op)
        return op.invoke(context, ModalEvent("LEFTMOUSE", "PRESS"))

    cls.execute = invoking_execute
    try:
        with window_override():
            returned = bpy.ops.sprig.rig_sequence("INVOKE_DEFAULT")
    finally:
        cls.execute = execute
    if returned != {"RUNNING_MODAL"}:
        raise RuntimeError(f"Rig Sequence did not start its modal run: {returned}")
    return captured[0]
