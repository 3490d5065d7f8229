"""Rig Sequence in Blender (bpy wheel, headless): builder, heatmap, error paths, end to end via the subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from test_blender_scenes import (armature_tube, data_counts, evaluated_world_verts, ground_truth_rig,  # noqa: E402
                                 realdata_sequence, reset_scene, set_backend, shape_key_object)

pytestmark = pytest.mark.blender
HAS_RIGGER = importlib.util.find_spec("backend.rigging.pipeline") is not None
needs_rigger = pytest.mark.skipif(not HAS_RIGGER, reason="rigger not available")


def weight_sums(mesh_obj) -> np.ndarray:
    """Sum of vertex-group weights per vertex, ``[V]``."""
    return np.array([sum(g.weight for g in v.groups) for v in mesh_obj.data.vertices])


def playback_error(source, rigged, frames: list[float]) -> np.ndarray:
    """Per-vertex distance between the rigged mesh and the source at each frame (may fall between frames), /
    anchor box diagonal ``[K, V]``."""
    from sprig_blender.export import set_scene_frame

    scene = bpy.context.scene
    set_scene_frame(scene, frames[0])
    anchor = evaluated_world_verts(source)
    diag = float(np.linalg.norm(anchor.max(axis=0) - anchor.min(axis=0)))
    errors = []
    for frame in frames:
        set_scene_frame(scene, frame)
        errors.append(np.linalg.norm(evaluated_world_verts(rigged) - evaluated_world_verts(source), axis=1) / diag)
    return np.array(errors)


def check_rig(built_mesh, armature, source, joints: int, names: list[str] | None = None) -> None:
    """Structure every rig must have: bones, hierarchy, groups on the simplex, modifier, action, names."""
    assert built_mesh.name == f"{source.name}_rigged" and armature.type == "ARMATURE"
    assert len(armature.data.bones) == joints
    if names is not None:
        assert [b.name for b in armature.data.bones] == names
    assert all(b.length > 0 for b in armature.data.bones)
    assert sorted(g.name for g in built_mesh.vertex_groups) == sorted(b.name for b in armature.data.bones)
    np.testing.assert_allclose(weight_sums(built_mesh), 1.0, atol=1e-4)
    modifiers = [m for m in built_mesh.modifiers if m.type == "ARMATURE"]
    assert len(modifiers) == 1 and modifiers[0].object == armature
    action = armature.animation_data.action
    assert action is not None and action.name == f"{source.name}_motion"
    assert built_mesh.users_collection[0] == armature.users_collection[0] != source.users_collection[0]


def check_playback(source, rigged, stats: dict, frames: list[float]) -> None:
    """The rigged mesh plays the source back up to the backend's measured reconstruction error: the mean
    exactly (from the stats), per vertex within the stored heat values' 8-bit step."""
    from sprig_blender import heatmap

    err = playback_error(source, rigged, frames)
    assert err.mean() == pytest.approx(stats["recon_mean"], abs=1e-5)
    stored = heatmap.heat_data(rigged.data, "RECON")
    assert np.abs(err - stored.values).max() < 1e-4 + stored.level_values[-1] / 255


# -- builder from a real artist rig -------------------------------------------------------------


def test_builder_reproduces_an_artist_rig(scene):
    from sprig_blender import builder, export

    verts, faces, raw = realdata_sequence("khronos_fox_run")
    result = ground_truth_rig(raw, verts)
    source = shape_key_object("fox", verts, faces)
    source_keys = len(source.data.shape_keys.key_blocks)
    frames = export.frame_list(1, len(verts), 1)
    exported = export.export_frames(bpy.context, source, frames)
    before = data_counts()
    start = time.perf_counter()
    built = builder.build_rig(bpy.context, source, result, exported.frames)
    build_s = time.perf_counter() - start

    check_rig(built.mesh_object, built.armature_object, source, joints=len(result.joint_names),
              names=result.joint_names)
    after = data_counts()
    assert {k: after[k] - before[k] for k in after} == {
        "objects": 2, "meshes": 1, "armatures": 1, "actions": 1, "collections": 1, "materials": 0,
        "scene_objects": 2, "frame": 0}
    bones = built.armature_object.data.bones
    for j, p in enumerate(result.parents):  # hierarchy follows the backend's parents
        assert (bones[j].parent.name if bones[j].parent else None) == (result.joint_names[p] if p >= 0 else None)
    np.testing.assert_allclose(np.array([b.head_local for b in bones]), result.joints, atol=1e-3)
    from sprig_blender import convert

    children = convert.children_lists(result.parents)
    min_length = 1e-3 * np.linalg.norm(np.ptp(result.anchor_verts, axis=0))
    for j, kids in enumerate(children):  # a bone with one child ends on it (unless they coincide)
        if len(kids) == 1 and np.linalg.norm(result.joints[kids[0]] - result.joints[j]) > min_length:
            np.testing.assert_allclose(bones[j].tail_local, result.joints[kids[0]], atol=1e-3)
    tails = np.array([b.tail_local for b in bones])
    reference = convert.roll_reference_axes(result.joints, tails)
    z_axes = np.array([b.matrix_local.col[2][:3] for b in bones])
    assert np.all(np.einsum("ij,ij->i", z_axes, reference) > 0)  # rolls: local Z toward the reference axis
    # vertex groups hold the backend's weights
    groups = {g.index: g.name for g in built.mesh_object.vertex_groups}
    column = {name: j for j, name in enumerate(built.bone_names)}
    for v in (0, 100, 289):
        dense = np.zeros(len(bones))
        for g in built.mesh_object.data.vertices[v].groups:
            dense[column[groups[g.group]]] = g.weight
        np.testing.assert_allclose(dense, result.weights[v], atol=1e-6)
    # keys at every exported frame: quaternions on every bone, locations only on roots and on bones whose joint
    # leaves the one their parent carries (the artist's rig has such a bone, the articulated fit none)
    curves = list(built.action.layers[0].strips[0].channelbag(built.action.slots[0]).fcurves)
    diag = float(np.linalg.norm(np.ptp(result.anchor_verts, axis=0)))
    attached = convert.attached_bones(result.joints, result.parents, result.bone_transforms, 1e-5 * diag)
    assert not attached[result.parents < 0].any() and 0 < (~attached).sum() < len(bones)
    assert len(curves) == 4 * len(bones) + 3 * int((~attached).sum())
    located = {c.data_path.split('"')[1] for c in curves if c.data_path.endswith(".location")}
    assert located == {built.bone_names[j] for j in np.flatnonzero(~attached)}
    # keys where the channel carries information: the first and last frame always, the others unless linear
    # interpolation reproduces them (convert.needed_keys); the artist's rig keeps most of them
    keyed = [[k.co[0] for k in c.keyframe_points] for c in curves]
    assert all(k[0] == frames[0] and k[-1] == frames[-1] and set(k) <= set(frames) for k in keyed)
    assert 0.5 * len(frames) * len(curves) < sum(map(len, keyed)) <= len(frames) * len(curves)
    # playback equals the input up to the rig's own (measured) reconstruction error
    err = playback_error(source, built.mesh_object, frames)
    assert np.abs(err - result.recon_error).max() < 1e-5
    # the source is untouched
    assert source.modifiers[:] == [] and len(source.data.shape_keys.key_blocks) == source_keys
    assert source.parent is None and not source.vertex_groups
    assert build_s < 5.0


def test_articulated_rig_bones_stay_attached_in_blender(scene):
    """The articulated fit of the Fox run (from the artist's skeleton and weights; the fit refines both and
    moves the joints to where the bones turn) built in Blender: on every frame each child's head stays where
    its parent carries it, one-child parents are connected, only the root has location keys, and playback
    matches the fit's own error."""
    from sprig_blender import builder, convert, export

    from backend.rigging.fit import FitConfig, fit_motion, reconstruction_error
    from backend.rigging.result import RigResult

    verts, faces, raw = realdata_sequence("khronos_fox_run")
    artist = ground_truth_rig(raw, verts)
    fit = fit_motion(verts[0], verts, artist.weights, artist.parents, artist.joints, faces,
                     FitConfig(articulated=True, refine_iters=2))
    diag = float(np.linalg.norm(np.ptp(verts[0], axis=0)))
    recon = (reconstruction_error(verts[0], verts, fit.weights, fit.transforms) / diag).astype(np.float32)
    result = RigResult(anchor_verts=verts[0], faces=faces.astype(np.int32), joints=fit.joints.astype(np.float32),
                       parents=artist.parents, joint_names=artist.joint_names, weights=fit.weights,
                       bone_transforms=fit.transforms.astype(np.float32), frame_joints_count=artist.frame_joints_count,
                       recon_error=recon, skin_instability=np.zeros_like(recon), fps=24.0)
    source = shape_key_object("fox", verts, faces)
    frames = export.frame_list(1, len(verts), 1)
    built = builder.build_rig(bpy.context, source, result, export.export_frames(bpy.context, source, frames).frames)
    arm = built.armature_object
    bones = arm.data.bones
    parents = result.parents
    children = convert.children_lists(parents)
    for j, p in enumerate(parents):  # one-child parents (with a distinct child joint) are connected to it
        if p >= 0 and len(children[p]) == 1 and np.linalg.norm(result.joints[j] - result.joints[p]) > 1e-3 * diag:
            assert bones[j].use_connect
    assert any(b.use_connect for b in bones)
    curves = list(built.action.layers[0].strips[0].channelbag(built.action.slots[0]).fcurves)
    located = {c.data_path.split('"')[1] for c in curves if c.data_path.endswith(".location")}
    assert located == {built.bone_names[j] for j in np.flatnonzero(parents < 0)}
    worst = 0.0
    for frame in frames:
        scene.frame_set(frame)
        for j, p in enumerate(parents):
            if p < 0:
                continue
            head = np.array(arm.pose.bones[j].head)  # armature space = world space here
            parent = arm.pose.bones[int(p)]
            carried = np.array(parent.matrix @ bones[int(p)].matrix_local.inverted() @ bones[j].head_local)
            worst = max(worst, float(np.linalg.norm(head - carried)))
    assert worst <= 1e-4 * diag
    err = playback_error(source, built.mesh_object, frames)
    assert np.abs(err - result.recon_error).max() < 1e-4


def test_builder_failure_leaves_nothing_behind(scene):
    from sprig_blender import builder

    verts, faces, raw = realdata_sequence("khronos_fox_run", 6)
    fox_result = ground_truth_rig(raw, verts)
    other_verts, other_faces, _ = realdata_sequence("khronos_cesiumman_walk", 6)
    source = shape_key_object("man", other_verts, other_faces)
    before = data_counts()
    with pytest.raises(builder.BuildError, match="2338 vertices at the anchor frame but the rig has 290"):
        builder.build_rig(bpy.context, source, fox_result, list(range(1, 7)))  # fails after creating data
    assert data_counts() == before
    assert bpy.context.view_layer.objects.active == source
    with pytest.raises(builder.BuildError, match="bone_transforms of shape"):
        builder.build_rig(bpy.context, source, fox_result, list(range(1, 4)))
    assert data_counts() == before


# -- heatmap --------------------------------------------------------------------------------------


def test_heatmap_follows_frames_and_backend_values(scene):
    from sprig_blender import builder, convert, heatmap

    verts, faces, raw = realdata_sequence("khronos_fox_survey", 12)
    result = ground_truth_rig(raw, verts)
    result.skin_instability = np.random.default_rng(0).random(result.recon_error.shape).astype(np.float32) ** 4
    result.skin_instability[0] = 0.0
    source = shape_key_object("fox", verts, faces)
    built = builder.build_rig(bpy.context, source, result, list(range(1, 13)))
    mesh = built.mesh_object.data
    settings = bpy.context.window_manager.sprig_heatmap
    settings.mode = "RECON"
    settings.enabled = True
    assert heatmap.on_frame_change in bpy.app.handlers.frame_change_pre
    assert heatmap.VALUE_ATTRIBUTE not in mesh.attributes  # raw values only when asked for (playback cost)
    settings.write_values = True
    assert scene.display.shading.color_type == "VERTEX"
    vmax = convert.auto_heat_max(result.recon_error)

    def colors():
        out = np.empty(len(mesh.vertices) * 4, dtype=np.float32)
        mesh.color_attributes[heatmap.COLOR_ATTRIBUTE].data.foreach_get("color", out)
        return out.reshape(-1, 4)

    def values():
        out = np.empty(len(mesh.vertices), dtype=np.float32)
        mesh.attributes[heatmap.VALUE_ATTRIBUTE].data.foreach_get("value", out)
        return out

    # stored in 8 bits on a square-root scale: within 1/255 of the largest value (finer near 0)
    recon_tol = float(result.recon_error.max()) / 255
    stored = heatmap.heat_data(mesh, "RECON")
    step_at_vmax = 2 * np.sqrt(vmax * float(result.recon_error.max())) / 255  # one stored step there
    assert abs(stored.vmax - vmax) <= step_at_vmax  # the colour scale: the 99th percentile of the stored values
    seen = []
    for k in (3, 7, 11):
        scene.frame_set(k + 1)
        np.testing.assert_allclose(values(), result.recon_error[k], rtol=0, atol=recon_tol)
        np.testing.assert_allclose(colors(), convert.heat_colors(values(), stored.vmax), atol=1e-6)
        seen.append(colors())
    assert np.abs(seen[0] - seen[1]).max() > 0.05  # the colours change with the frame
    assert mesh.color_attributes.active_color.name == heatmap.COLOR_ATTRIBUTE
    heatmap.draw_legend()  # the viewport legend is a no-op in background mode (no GPU context)

    settings.mode = "INSTABILITY"  # mode switch recolours at once
    inst_tol = float(result.skin_instability.max()) / 255
    np.testing.assert_allclose(values(), result.skin_instability[11], rtol=0, atol=inst_tol)  # frame 12
    scene.frame_set(1)
    np.testing.assert_allclose(colors()[:, :3], np.broadcast_to(convert.HEAT_STOPS[0], (len(mesh.vertices), 3)),
                               atol=1e-6)  # anchor frame: all stable (blue)
    scene.frame_set(6)
    bpy.context.window_manager.sprig_heatmap.scale_max = 0.5
    np.testing.assert_allclose(values(), result.skin_instability[5], rtol=0, atol=inst_tol)
    np.testing.assert_allclose(colors(), convert.heat_colors(values(), 0.5), atol=1e-6)
    settings.write_values = False  # switched off: the attribute goes, it would hold a stale frame
    assert heatmap.VALUE_ATTRIBUTE not in mesh.attributes

    settings.enabled = False
    assert heatmap.on_frame_change not in bpy.app.handlers.frame_change_pre
    assert scene.display.shading.color_type == "MATERIAL"  # the factory setting, restored
    frozen = colors().copy()
    scene.frame_set(9)
    np.testing.assert_array_equal(colors(), frozen)


def test_heatmap_handlers_are_removed_on_file_load(scene, tmp_path):
    from sprig_blender import builder, heatmap

    verts, faces, raw = realdata_sequence("khronos_fox_run", 4)
    source = shape_key_object("fox", verts, faces)
    builder.build_rig(bpy.context, source, ground_truth_rig(raw, verts), [1, 2, 3, 4])
    bpy.context.window_manager.sprig_heatmap.enabled = True
    assert heatmap.on_frame_change in bpy.app.handlers.frame_change_pre
    path = str(tmp_path / "rigged.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    assert heatmap.on_frame_change not in bpy.app.handlers.frame_change_pre
    assert not bpy.context.window_manager.sprig_heatmap.enabled
    rigged = bpy.data.objects["fox_rigged"]  # the heat data was saved with the mesh
    assert heatmap.has_heat_data(rigged)
    bpy.context.window_manager.sprig_heatmap.enabled = True  # and can be shown again after loading
    bpy.context.scene.frame_set(3)
    assert heatmap.on_frame_change in bpy.app.handlers.frame_change_pre


# -- errors leave the scene unchanged -----------------------------------------------------------


def run_operator() -> str:
    """Run Rig Sequence (blocking); return '' on success or the error it reported."""
    try:
        result = bpy.ops.sprig.rig_sequence()
    except RuntimeError as exc:
        return str(exc)
    return "" if result == {"FINISHED"} else f"returned {result}"


def test_other_selected_meshes_are_named_as_left_alone(scene):
    """Rig Sequence rigs the active object; a second selected mesh is named in a warning (a new user found it
    left unrigged without a word). A rig made from the target, or a non-mesh, is not counted."""
    from sprig_blender.operators import other_selected_meshes

    first = armature_tube("first", n_frames=3)
    second = armature_tube("second", n_frames=3)
    bpy.context.view_layer.objects.active = first
    first.select_set(True)
    second.select_set(True)
    assert other_selected_meshes(bpy.context, first) == ["'second'"]
    second["sprig_source"] = "first"  # as a rigged copy of 'first' carries it
    assert other_selected_meshes(bpy.context, first) == []


def test_a_subdivision_followed_by_another_modifier_is_named(scene):
    from sprig_blender import export

    obj = armature_tube(n_frames=3)
    assert export.buried_subdivision(obj) is None
    smooth = obj.modifiers.new("Smooth", "SUBSURF")
    assert export.buried_subdivision(obj) is None and export.surface_modifiers(obj) == [smooth]
    obj.modifiers.new("Bumps", "DISPLACE")
    note = export.buried_subdivision(obj)
    assert "'Smooth' comes before 'Bumps'" in note and "the subdivided mesh is rigged" in note
    assert export.surface_modifiers(obj) == []


def test_operator_errors_leave_the_scene_unchanged(scene):
    set_backend("SUBPROCESS")
    obj = armature_tube(n_frames=6)
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    checks = []

    def attempt(expect: str) -> None:
        before = data_counts()
        message = run_operator()
        checks.append((expect, message))
        assert expect in message, message
        assert data_counts() == before

    bpy.context.view_layer.objects.active = None
    attempt("no active object (1 selected): Rig Sequence rigs the active object")
    obj.select_set(False)
    for other in bpy.context.selected_objects:
        other.select_set(False)
    attempt("no animated mesh selected: Rig Sequence rigs the active object; click the mesh to rig")
    bpy.context.view_layer.objects.active = obj
    attempt("the active object 'tube' is not selected: Rig Sequence rigs the active object; click the mesh to rig "
            "in the viewport or outliner")
    bpy.context.view_layer.objects.active = camera
    camera.select_set(True)
    attempt("'camera' is not a mesh")
    camera.select_set(False)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    scene.sprig.use_scene_range = False
    scene.sprig.frame_start = scene.sprig.frame_end = 3
    attempt("need at least 2 frames")
    scene.sprig.use_scene_range = True
    build = obj.modifiers.new("Build", "BUILD")
    build.frame_start, build.frame_duration = -3, 20
    attempt("topology changes at frame 2")
    obj.modifiers.remove(build)
    set_backend("SUBPROCESS", python="/no/such/python")
    attempt("backend Python executable not found: '/no/such/python'")
    prefs = bpy.context.preferences.addons["sprig_blender"].preferences
    prefs.python_executable = ""
    attempt("set the backend Python executable")
    assert obj.modifiers[0].type == "ARMATURE" and len(obj.modifiers) == 1


# -- through the subprocess backend: needs the rigging pipeline ---------------------------------


def _source_for_job():
    verts, faces, _ = realdata_sequence("khronos_fox_survey", 6)
    return shape_key_object("walker", verts, faces)


def _run_job_and(source, interrupt: str):
    """Start a RigJob on ``source``; on the backend's first progress message (after the job's own "starting
    backend" and "sending frames") ``cancel`` it or ``kill`` the server."""
    from sprig_blender import export, preferences, runner

    exported = export.export_frames(bpy.context, source, export.frame_list(1, 6, 1))
    backend = runner.get_backend(preferences.backend_settings(bpy.context))
    job = runner.RigJob(backend, exported.verts, exported.faces, bpy.context.scene.sprig.rig_options(), name="walker")
    job.start()
    deadline = time.monotonic() + 120
    while job.state == "running" and job.stage in ("", "starting backend", "sending frames") \
            and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.01)
    assert job.stage, f"no progress before the job ended: {job.state} {job.message}"
    if interrupt == "cancel":
        job.cancel()
    else:
        os.kill(backend.client.process.pid, signal.SIGKILL)
    job.wait(timeout=120)
    return job


@needs_rigger
def test_cancel_leaves_the_scene_unchanged(scene, checkpoints):
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    source = _source_for_job()
    before = data_counts()
    job = _run_job_and(source, "cancel")
    assert job.state == "cancelled" and job.result is None
    assert data_counts() == before


@needs_rigger
def test_backend_crash_mid_run_gives_a_readable_error(scene, checkpoints):
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    source = _source_for_job()
    before = data_counts()
    job = _run_job_and(source, "kill")
    assert job.state == "error" and "the backend stopped during the request (killed by SIGKILL)" in job.message
    assert data_counts() == before
    from sprig_blender import runner

    assert runner._BACKEND is None  # the dead server is dropped; the next run starts a fresh one
    assert run_operator() == ""  # and rigging works again
    assert "walker_rigged" in bpy.data.objects


@needs_rigger
def test_end_to_end_generated_armature_mesh(scene, checkpoints):
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    source = armature_tube(n_frames=6)
    original = evaluated_world_verts(source)
    assert run_operator() == ""
    rigged = bpy.data.objects["tube_rigged"]
    armature = bpy.data.objects["tube_rig"]
    stats = json.loads(rigged["sprig_stats"])
    check_rig(rigged, armature, source, joints=stats["joints"])
    from sprig_blender import heatmap
    check_playback(source, rigged, stats, list(range(1, 7)))
    assert bpy.context.scene.sprig.rig_object == rigged
    bpy.context.scene.frame_set(1)
    np.testing.assert_allclose(evaluated_world_verts(source), original, atol=1e-6)  # source untouched
    assert [m.type for m in source.modifiers] == ["ARMATURE"] and len(source.vertex_groups) == 3
    # after the run: the rigged mesh is active and selected, the original hidden (a toggle shows it again)
    assert bpy.context.view_layer.objects.active == rigged and rigged.select_get()
    assert source.hide_get() and source.hide_render
    assert bpy.ops.sprig.show_original(show=True) == {"FINISHED"}
    assert not source.hide_get() and not source.hide_render
    # the heatmap stage was not asked for: no instability stored (reconstruction error only)
    assert stats["skin_frames"] == [] and stats["config"]["heatmap"] is False
    assert heatmap.has_mode(rigged, "RECON") and not heatmap.has_mode(rigged, "INSTABILITY")
    # running again with the rig selected re-rigs the original and replaces the previous result
    before = data_counts()
    assert run_operator() == ""
    assert data_counts() == before
    assert {o.name for o in bpy.data.objects} == {"tube", "tube_armature", "tube_rigged", "tube_rig"}
    assert "tube_SPRig" in bpy.data.collections and "tube_motion" in bpy.data.actions
    assert bpy.data.objects["tube_rigged"]["sprig_armature"] == "tube_rig"
    rigged = bpy.data.objects["tube_rigged"]
    check_rig(rigged, bpy.data.objects["tube_rig"], source, joints=json.loads(rigged["sprig_stats"])["joints"])
    # with replacing switched off both rigs are kept
    bpy.context.scene.sprig.replace_previous = False
    assert run_operator() == ""
    assert "tube_rigged.001" in bpy.data.objects and "tube_rigged" in bpy.data.objects


@needs_rigger
def test_a_subdivision_surface_on_top_stays_on_top(scene, checkpoints):
    """A mesh animated under a Subdivision Surface modifier: the cage is rigged (not the subdivided mesh, which
    a new user found baked into the copy, levels lost, 54 bones instead of 24 and 7x the time), the rigged
    copy gets the same subdivision on top of its Armature modifier, and the source keeps its modifier on."""
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    source = armature_tube(n_frames=6)
    subdivision = source.modifiers.new("Smooth", "SUBSURF")
    subdivision.levels, subdivision.render_levels = 1, 2
    cage = len(source.data.vertices)
    subdivided = evaluated_world_verts(source)
    assert len(subdivided) > cage
    assert run_operator() == ""
    rigged = bpy.data.objects["tube_rigged"]
    assert len(rigged.data.vertices) == cage
    assert [(m.type, m.name) for m in rigged.modifiers] == [("ARMATURE", "SPRig Armature"), ("SUBSURF", "Smooth")]
    assert (rigged.modifiers["Smooth"].levels, rigged.modifiers["Smooth"].render_levels) == (1, 2)
    assert subdivision.show_viewport and [m.type for m in source.modifiers] == ["ARMATURE", "SUBSURF"]
    stats = json.loads(rigged["sprig_stats"])
    size = float(np.ptp(subdivided, axis=0).max())
    for frame in (1, 4, 6):  # the subdivided playback follows the subdivided original
        bpy.context.scene.frame_set(frame)
        played, original = evaluated_world_verts(rigged), evaluated_world_verts(source)
        assert played.shape == original.shape
        assert np.linalg.norm(played - original, axis=1).mean() < 4 * stats["recon_mean"] * size + 1e-6


@needs_rigger
def test_end_to_end_realdata_sequence(scene, checkpoints):
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    verts, faces, raw = realdata_sequence("khronos_fox_run", 6)
    source = shape_key_object("fox", verts, faces)
    from sprig_blender import heatmap

    bpy.context.window_manager.sprig_heatmap.enabled = True  # the heatmap is on: its stage runs
    bpy.context.window_manager.sprig_heatmap.write_values = True
    assert run_operator() == ""
    rigged = bpy.data.objects["fox_rigged"]
    armature = bpy.data.objects["fox_rig"]
    stats = json.loads(rigged["sprig_stats"])
    check_rig(rigged, armature, source, joints=stats["joints"])
    check_playback(source, rigged, stats, list(range(1, 7)))
    # the instability is stored on the frames the backend predicted weights for, and shown for the frame
    assert stats["config"]["heatmap"] is True and len(stats["skin_frames"]) >= 2
    inst = heatmap.heat_data(rigged.data, "INSTABILITY")
    assert inst.frames.tolist() == [1 + k for k in stats["skin_frames"]]
    bpy.context.scene.frame_set(5)
    values = np.empty(len(rigged.data.vertices), dtype=np.float32)
    rigged.data.attributes[heatmap.VALUE_ATTRIBUTE].data.foreach_get("value", values)
    np.testing.assert_allclose(values, inst.values_at(5), rtol=1e-6)
    assert values.mean() == pytest.approx(stats["skin_instability_mean_per_frame"][4], abs=inst.values.max() / 255)


@needs_rigger
def test_a_mesh_under_an_animated_empty_keeps_its_parent(scene, checkpoints):
    """A mesh parented to an Empty that moves (an Alembic import's transform node): the armature hangs from the
    same Empty, its keys hold only the motion relative to it, playback matches the original in world space, and
    moving the Empty afterwards moves the rig with it (before, the Empty's motion was baked into the root bone
    and the armature was left unparented)."""
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    source = armature_tube(n_frames=6)
    empty = bpy.data.objects.new("xform", None)
    bpy.context.scene.collection.objects.link(empty)
    for frame, x in ((1, 0.0), (6, 2.0)):
        empty.location = (x, 0.5 * x, 0.0)
        empty.rotation_euler = (0.0, 0.0, 0.3 * x)
        empty.keyframe_insert("location", frame=frame)
        empty.keyframe_insert("rotation_euler", frame=frame)
    bpy.context.scene.frame_set(1)
    source.parent = empty
    tube_armature = bpy.data.objects["tube_armature"]
    tube_armature.parent = empty  # the tube's own deforming rig moves with the Empty too
    bpy.context.scene.frame_set(6)  # the playhead where the Empty has turned: the left axis is the anchor frame's
    assert run_operator() == ""
    rigged, armature = bpy.data.objects["tube_rigged"], bpy.data.objects["tube_rig"]
    assert armature.parent == empty and rigged.parent == armature
    stats = json.loads(rigged["sprig_stats"])
    np.testing.assert_allclose(stats["config"]["left_axis"], [1.0, 0.0, 0.0], atol=1e-6)
    check_playback(source, rigged, stats, list(range(1, 7)))
    root = armature.pose.bones[0]
    bpy.context.scene.frame_set(6)
    moved = np.linalg.norm(np.array(root.matrix.translation) - np.array(armature.data.bones[0].head_local))
    assert moved < 0.2 * np.hypot(2.0, 1.0)  # the root keeps the tube's own motion, not the Empty's 2.2 units
    empty.animation_data_clear()  # the artist moves the Empty: the rig follows
    empty.location = (5.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    np.testing.assert_allclose(evaluated_world_verts(rigged), evaluated_world_verts(source), atol=0.05)


@needs_rigger
def test_a_turned_object_keeps_its_bones_and_names(scene, checkpoints):
    """The same clip rigged with its object turned 180 degrees about Z: the add-on sends the object's X axis as
    the character's left, so the bones and names are those of the unturned object (before, a new user found
    every .L bone on the character's right and, on the Fox, 27 bones named leg1_* / bone1_* instead of 24)."""
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    verts, faces, _ = realdata_sequence("khronos_fox_run", 6)
    source = shape_key_object("fox", verts, faces)
    assert run_operator() == ""
    first = bpy.data.objects["fox_rig"]
    names = [b.name for b in first.data.bones]
    heads = np.array([first.matrix_world @ b.head_local for b in first.data.bones])
    source.rotation_euler = (0.0, 0.0, np.pi)
    bpy.context.view_layer.update()
    assert run_operator() == ""
    rigged, armature = bpy.data.objects["fox_rigged"], bpy.data.objects["fox_rig"]
    stats = json.loads(rigged["sprig_stats"])
    np.testing.assert_allclose(stats["config"]["left_axis"], [-1.0, 0.0, 0.0], atol=1e-6)
    assert [b.name for b in armature.data.bones] == names
    turned = np.array([armature.matrix_world @ b.head_local for b in armature.data.bones])
    size = float(np.ptp(verts[0], axis=0).max())
    np.testing.assert_allclose(turned * [-1.0, -1.0, 1.0], heads, atol=0.02 * size)  # the same bones, turned
    check_playback(source, rigged, stats, list(range(1, 7)))


@needs_rigger
def test_shape_keys_keyed_between_frames_are_read_at_their_keys(scene, checkpoints):
    """A clip imported at another frame rate than its own has its shape-key keys between frames: Rig Sequence
    reads the poses at the keys (not blends of two), and the rig plays them back there."""
    from sprig_blender import builder, export

    set_backend("SUBPROCESS", checkpoints=checkpoints)
    verts, faces, raw = realdata_sequence("khronos_fox_run", 6)
    source = shape_key_object("fox", verts, faces, time_scale=0.8)  # keys at 1, 1.8, 2.6, 3.4, 4.2, 5
    keys = [1.0 + 0.8 * k for k in range(6)]
    assert export.sample_frames(source, 1, 5, 1) == pytest.approx(keys)
    assert export.sample_frames(source, 1, 5, 2) == pytest.approx(keys[::2] + keys[-1:])
    assert export.sample_frames(source, 1, 5, 1, at_keys=False) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(export.export_frames(bpy.context, source, keys).verts, verts, atol=1e-5)
    blended = export.export_frames(bpy.context, source, [1, 2, 3, 4, 5]).verts  # what every frame gives
    assert np.abs(blended[1:4] - verts[1:4]).max() > 0.01 * np.ptp(verts[0], axis=0).max()

    assert run_operator() == ""
    rigged = bpy.data.objects["fox_rigged"]
    stats = json.loads(rigged["sprig_stats"])
    assert builder.rig_frames(rigged) == pytest.approx(keys) and stats["frames"] == 6
    check_playback(source, rigged, stats, keys)
    # an armature-driven mesh has no shape-key keys: it is read at every frame
    reset_scene()
    tube = armature_tube(n_frames=4)
    assert export.shape_key_frames(tube, 1, 4) is None and export.sample_frames(tube, 1, 4, 1) == [1, 2, 3, 4]


@needs_rigger
def test_in_process_backend_rigs_and_cancels(scene, checkpoints):
    """AUTO mode runs in-process when torch imports inside Blender (true for the bpy wheel in this venv)."""
    from sprig_blender import export, preferences, runner

    set_backend("AUTO", checkpoints=checkpoints)
    settings = preferences.backend_settings(bpy.context)
    assert runner.resolve_mode(settings) == "IN_PROCESS"
    verts, faces, _ = realdata_sequence("khronos_fox_run", 6)
    source = shape_key_object("fox", verts, faces)
    assert run_operator() == ""
    rigged = bpy.data.objects["fox_rigged"]
    stats = json.loads(rigged["sprig_stats"])
    check_rig(rigged, bpy.data.objects["fox_rig"], source, joints=stats["joints"])
    check_playback(source, rigged, stats, list(range(1, 7)))
    # cancel reaches the pipeline through should_cancel
    before = data_counts()
    exported = export.export_frames(bpy.context, source, [1, 2, 3, 4, 5, 6])
    job = runner.RigJob(runner.get_backend(settings), exported.verts, exported.faces, {"device": "cpu"}, name="fox")
    job.start()
    job.cancel()
    job.wait(timeout=60)
    assert job.state == "cancelled" and data_counts() == before


# -- step > 1, compact heat data, setup checks ----------------------------------------------------


def test_step_keys_the_last_frame_and_interpolates_in_between(scene):
    """Rigging every 3rd frame of the fox's run (the artist's rig as the result): keys sit on the sampled
    frames including the last one, and the frames in between follow the clip closely."""
    from sprig_blender import builder, export

    verts, faces, raw = realdata_sequence("khronos_fox_run")  # 28 frames
    source = shape_key_object("fox", verts, faces)
    frames = export.frame_list(1, 28, 3)
    assert frames[-1] == 28 and frames[-2] == 25
    rows = [f - 1 for f in frames]
    result = ground_truth_rig(raw, verts[rows])
    result.bone_transforms = ground_truth_rig(raw, verts).bone_transforms[rows]  # bind pose -> sampled frames
    built = builder.build_rig(bpy.context, source, result, frames)
    curves = list(built.action.layers[0].strips[0].channelbag(built.action.slots[0]).fcurves)
    assert all({k.co[0] for k in c.keyframe_points} <= set(frames) and c.keyframe_points[-1].co[0] == 28
               for c in curves)
    every = list(range(1, 29))
    err = playback_error(source, built.mesh_object, every)  # [28, V], / box diagonal
    full = ground_truth_rig(raw, verts).recon_error  # the artist rig's own error on every frame
    keyed = np.array(rows)
    between = np.array([f - 1 for f in every if f not in frames])
    assert np.abs(err[keyed] - full[keyed]).max() < 1e-5  # exact on the keys, the last frame included
    extra_mean = float(err[between].mean() - full[between].mean())
    extra_max = float(err[between].max())
    print(f"in-between frames (step 3): mean error {100 * err[between].mean():.2f}% of the diagonal "
          f"(rig's own {100 * full[between].mean():.2f}%), max {100 * extra_max:.2f}% (rig's own "
          f"{100 * full.max():.2f}%)")
    assert extra_mean < 0.01 and extra_max < 0.08  # measured: +0.55% mean, 4.7% max (the rig's own max 4.6%)


def test_heatmap_storage_is_compact_and_interpolates(scene, tmp_path):
    from sprig_blender import builder, convert, heatmap

    verts, faces, raw = realdata_sequence("khronos_fox_survey", 12)
    result = ground_truth_rig(raw, verts)
    smooth = np.linspace(0.0, 1.0, 12, dtype=np.float32)[:, None] * np.linspace(0.0, 0.8, verts.shape[1])[None]
    result.skin_instability = smooth.astype(np.float32)
    result.stats["skin_frames"] = [0, 5, 11]  # the backend predicted weights on these; linear in between
    source = shape_key_object("fox", verts, faces)
    built = builder.build_rig(bpy.context, source, result, list(range(1, 13)))
    mesh = built.mesh_object.data
    for key in heatmap.DATA_KEYS.values():
        assert isinstance(mesh[key], bytes)
    assert len(mesh[heatmap.DATA_KEYS["RECON"]]) < result.recon_error.size  # under a byte per value
    inst = heatmap.heat_data(mesh, "INSTABILITY")
    assert inst.frames.tolist() == [1, 6, 12] and inst.levels.shape == (3, verts.shape[1])
    tol = 0.8 / 255
    np.testing.assert_allclose(inst.values_at(6), smooth[5], atol=tol)
    np.testing.assert_allclose(inst.values_at(3.5), 0.5 * (smooth[0] + smooth[5]), atol=tol)  # 2.5 of 5 frames
    # colours on a stored frame come from a per-byte table: the same as computing them per vertex
    values, colors = inst.colors_at(6, 0.4)
    np.testing.assert_allclose(colors, convert.heat_colors(values, 0.4), atol=1e-6)
    # saved and loaded with the file
    path = str(tmp_path / "heat.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    heatmap.clear_cache()
    loaded = heatmap.heat_data(bpy.data.objects["fox_rigged"].data, "INSTABILITY")
    np.testing.assert_array_equal(loaded.levels, inst.levels)


def test_old_float_heat_properties_are_still_read(scene):
    """Files saved before the compact format hold float lists; they still show."""
    from sprig_blender import heatmap

    verts, faces, _ = realdata_sequence("khronos_fox_run", 3)
    obj = shape_key_object("old", verts, faces)
    values = np.random.default_rng(1).random((3, verts.shape[1])).astype(np.float32) * 0.1
    obj.data[heatmap.FRAMES_KEY] = [1, 2, 3]
    obj.data[heatmap.DATA_KEYS["RECON"]] = values.astype(np.float64).ravel().tolist()
    data = heatmap.heat_data(obj.data, "RECON")
    np.testing.assert_allclose(data.values_at(2), values[1], atol=0.1 / 255)


def test_needed_keys_leave_out_only_what_interpolation_reproduces():
    from sprig_blender import convert

    frames = np.array([1, 2, 3, 5, 8, 9, 10], dtype=np.float64)
    still = np.ones((7, 4))
    assert convert.needed_keys(frames, still, 1e-6).tolist() == [True] + [False] * 5 + [True]
    ramp = np.stack([0.1 * frames, -0.2 * frames], axis=1)  # linear in time (uneven frame steps): two keys
    assert convert.needed_keys(frames, ramp, 1e-9).sum() == 2
    kink = np.abs(frames - 5.0)[:, None]
    assert convert.needed_keys(frames, kink, 1e-9).tolist() == [True, False, False, True, False, False, True]
    noisy = np.random.default_rng(0).normal(0, 1, (7, 3))
    assert convert.needed_keys(frames, noisy, 1e-6).all()
    # whatever is left out is within the tolerance of the interpolated kept keys
    wave = np.sin(np.linspace(0, 3, 60))[:, None] * [1.0, 0.5]
    t = np.arange(60, dtype=np.float64)
    keep = convert.needed_keys(t, wave, 1e-3)
    assert keep.sum() < 0.8 * len(t)
    rebuilt = np.stack([np.interp(t, t[keep], wave[keep, c]) for c in range(2)], axis=1)
    assert np.abs(rebuilt - wave).max() <= 1e-3


def test_encode_heat_round_trip_bound():
    from sprig_blender import convert

    values = (np.random.default_rng(0).random((7, 500)) ** 3).astype(np.float32) * 0.3
    payload, scale = convert.encode_heat(values)
    decoded = convert.heat_level_values(scale)[convert.decode_heat_levels(payload, 7, 500)]
    assert scale == pytest.approx(values.max())
    bound = scale * (np.sqrt(values / scale) / 255 + 1 / (4 * 255 ** 2)) + 1e-7
    assert np.all(np.abs(decoded - values) <= bound)
    assert convert.decode_heat_levels(convert.encode_heat(np.zeros((2, 3)))[0], 2, 3).max() == 0
    with pytest.raises(ValueError, match="holds 21 values, expected 3 x 5"):
        convert.decode_heat_levels(convert.encode_heat(np.ones((3, 7)))[0], 3, 5)
    # payloads saved before the vertex-major LZMA layout (frame-major deltas, deflated) still decode
    levels = convert.decode_heat_levels(payload, 7, 500)
    deltas = levels.copy()
    deltas[1:] -= levels[:-1]
    import zlib

    np.testing.assert_array_equal(convert.decode_heat_levels(zlib.compress(deltas.tobytes()), 7, 500), levels)


def test_setup_problems_name_the_fix():
    from sprig_blender import runner

    info = {"rigger": True, "cuda_available": False, "torch": "2.5.1+cpu", "device": "cpu",
            "checkpoint_dir": "/ckpt", "checkpoint_check": {"models": "sprig", "needed": ["a", "b"],
                                                            "missing": ["b"]}}
    problems = runner.setup_problems(info, {"device": "cuda"})
    assert problems[0] == f"missing checkpoint file(s) b in /ckpt: {runner.CHECKPOINT_HELP}"
    assert "python training/run.py" in problems[0] and "checkpoints/" in problems[0]
    assert problems[1].startswith("CUDA is not available to the backend (torch 2.5.1+cpu, device cpu): set Device "
                                  "to Auto or CPU")
    assert runner.setup_problems({**info, "checkpoint_check": {"missing": []}}, {"device": "auto"}) == []


def test_check_backend_names_missing_checkpoints_and_hides_cuda(scene, tmp_path):
    from sprig_blender import properties, runner

    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    set_backend("SUBPROCESS", checkpoints=empty)
    with pytest.raises(RuntimeError, match=r"checkpoints: MISSING skeleton_sprig.safetensors, "
                                           r"skinning_sprig.safetensors in .*no_checkpoints"):
        bpy.ops.sprig.check_backend()
    status = bpy.context.window_manager.sprig_runtime.backend_status
    assert "NOT READY: missing checkpoint file(s)" in status and "python training/run.py" in status
    # the device list follows the backend: this one has no CUDA
    assert runner.last_info()["cuda_available"] is False
    assert [item[0] for item in properties._device_items(None, None)] == ["auto", "cpu"]
    # a rig fails at once (before loading models) with the same message
    verts, faces, _ = realdata_sequence("khronos_fox_run", 4)
    shape_key_object("fox", verts, faces)
    before = data_counts()
    start = time.perf_counter()
    message = run_operator()
    assert "missing checkpoint file(s) skeleton_sprig.safetensors, skinning_sprig.safetensors" in message
    assert data_counts() == before and time.perf_counter() - start < 30


@needs_rigger
def test_cuda_choice_on_a_cpu_backend_gives_a_clear_message(scene, checkpoints):
    from sprig_blender import runner

    set_backend("SUBPROCESS", checkpoints=checkpoints)
    runner._LAST_INFO = None  # before any check every device is offered
    verts, faces, _ = realdata_sequence("khronos_fox_run", 4)
    shape_key_object("fox", verts, faces)
    bpy.context.scene.sprig.device = "cuda"
    before = data_counts()
    message = run_operator()
    assert "CUDA is not available to the backend" in message and "set Device to Auto or CPU" in message
    assert "AssertionError" not in message and data_counts() == before
    assert bpy.ops.sprig.check_backend() == {"FINISHED"}  # the check puts the device back to Auto
    assert bpy.context.scene.sprig.device == "auto"


def test_menu_entry_cancel_and_plain_result_words(scene):
    from sprig_blender import operators

    draw_funcs = bpy.types.VIEW3D_MT_object._dyn_ui_initialize()
    assert operators.object_menu_entry in draw_funcs  # Object menu (and so F3 search)
    assert not bpy.ops.sprig.cancel_rig.poll()  # nothing running
    stats = {"joints": 9, "recon_mean": 0.0059, "recon_max": 0.2, "recon_vs_motion": 0.45, "topology_flicker": 0.67,
             "skin_instability_mean": 0.3, "pjdd": 0.01, "mcjd": 0.02, "config": {"heatmap": True}}
    assert operators.plain_summary(stats) == [
        ("Bones", "9", ""), ("Matches the animation", "0.59% off", "good"), ("Worst vertex", "20.0% off", "poor"),
        ("Error vs movement", "45% of the movement", "poor"),  # a small error that is most of a small motion
        ("Weight steadiness", "30% of weight moves", "poor")]  # no verdict on the network's per-frame topology
    stats["config"]["heatmap"] = False  # no weights predicted on later frames: no weight row
    assert [row[0] for row in operators.plain_summary(stats)][-1] == "Error vs movement"
    assert "Error vs movement" not in dict((r[0], r) for r in operators.plain_summary(
        {**stats, "recon_vs_motion": None}))  # a clip that does not move: no such verdict
    assert "predicted weights" in operators.plain_note("Weight steadiness")
    assert ("Net skin instability", "0.3") in operators.stats_summary({**stats, "config": {"heatmap": True}})
    assert "Net skin instability" not in dict(operators.stats_summary(stats))  # heatmap off: not measured
    # the rig's rest shape: how far it is from the first exported frame
    assert ("Rest shape vs first frame", "at most 0.25% of diag") in operators.stats_summary(
        {**stats, "rest_moved_max": 0.0025})
    from backend.rigging.pipeline import RigConfig

    settings = bpy.context.scene.sprig  # the panel's Bone Reach starts at the backend's default, for rig and refit
    assert settings.rig_options()["bone_reach"] == settings.refit_options()["bone_reach"] == RigConfig().bone_reach
    stats["bones_without_skin"] = ["head", "toe.L"]  # named after the bone count
    assert operators.plain_summary(stats)[:2] == [("Bones", "9", ""), ("Bones leading no vertex", "2: head, toe.L", "")]
