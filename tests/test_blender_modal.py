"""Rig Sequence's interactive (modal) run, driven the way Blender's window manager drives it.

The bpy module runs no event loop: these tests invoke the operator as a click does (in background mode
``INVOKE_DEFAULT`` runs ``execute``, so for that call ``execute`` hands over to ``invoke``), then give the
running operator's ``modal`` a TIMER event every 0.1 s and, to stop it, an ESC press, as Blender would.
``bench/bench_blender_modal.py`` measures the same path on a 200k-vertex mesh.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

bpy = pytest.importorskip("bpy")

from test_blender_scenes import (ModalEvent, armature_tube, data_counts, ground_truth_rig,  # noqa: E402
                                 invoke_rig_sequence, realdata_sequence, reset_scene, set_backend, shape_key_object,
                                 window_override)

pytestmark = pytest.mark.blender
needs_rigger = pytest.mark.skipif(importlib.util.find_spec("backend.rigging.pipeline") is None,
                                  reason="rigger not available")


def drive(op, esc_when=None, cancel_when=None, timeout: float = 120.0) -> tuple[set[str], list[str]]:
    """Timer ticks until the operator ends (Esc on the first tick where ``esc_when(stage)`` is true; the panel's
    Cancel button pressed before the first tick where ``cancel_when(stage)`` is); returns its result and the
    stages it showed."""
    stages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        stage = bpy.context.window_manager.sprig_runtime.stage
        if not stages or stages[-1] != stage:
            stages.append(stage)
        if cancel_when is not None and cancel_when(stage):
            assert bpy.ops.sprig.cancel_rig.poll(), stage  # the button is live in this phase
            bpy.ops.sprig.cancel_rig()
            cancel_when = None
        event = ModalEvent("ESC", "PRESS") if esc_when is not None and esc_when(stage) else ModalEvent("TIMER")
        with window_override():
            result = op.modal(bpy.context, event)
        if result != {"RUNNING_MODAL"}:
            return result, stages
    raise AssertionError(f"the operator did not end within {timeout} s (stages {stages})")


def test_progress_text():
    from sprig_blender.operators import progress_text

    assert progress_text("fit", 0.4567) == "fit 45.7%"
    assert progress_text("starting backend", 0.0) == "starting backend..."
    assert progress_text("", 0.0) == "starting..."


def test_build_steps_closed_midway_leave_nothing(scene):
    from sprig_blender import builder, convert, export

    verts, faces, raw = realdata_sequence("khronos_fox_run", 6)
    source = shape_key_object("fox", verts, faces)
    frames = export.export_frames(bpy.context, source, export.frame_list(1, 6, 1)).frames
    before = data_counts()
    steps = builder.build_rig_steps(bpy.context, source, ground_truth_rig(raw, verts), frames)
    assert next(steps) == "armature"
    assert steps.send(bpy.context) == "vertex groups"  # the armature and the rigged mesh exist now
    assert data_counts() != before
    steps.close()  # Esc between two steps
    assert data_counts() == before
    # and run to its end, the same steps give the rig
    built = convert.run_to_end(builder.build_rig_steps(bpy.context, source, ground_truth_rig(raw, verts), frames),
                               bpy.context)
    assert len(built.armature_object.data.bones) == len(raw["parents"])


@needs_rigger
def test_interactive_run_shows_every_phase_and_esc_while_building_leaves_nothing(scene, checkpoints):
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    armature_tube(n_frames=6)
    before = data_counts()
    op = invoke_rig_sequence()
    result, stages = drive(op)
    assert result == {"FINISHED"}, stages
    assert "tube_rig" in bpy.data.objects and "tube_rigged" in bpy.data.objects
    for shown in ("starting backend", "fit", "building the rig: armature", "building the rig: vertex groups"):
        assert any(s.startswith(shown) for s in stages), (shown, stages)
    assert bpy.context.window_manager.sprig_runtime.running is False

    # again, from the original, with Esc once the rig is half built
    reset_scene()
    set_backend("SUBPROCESS", checkpoints=checkpoints)
    armature_tube(n_frames=6)
    before = data_counts()
    op = invoke_rig_sequence()
    result, stages = drive(op, esc_when=lambda stage: stage == "building the rig: animation")
    assert result == {"CANCELLED"} and stages[-1] == "building the rig: animation"
    assert data_counts() == before
    from sprig_blender.operators import _Active

    assert _Active.job is None and _Active.export is None
    assert bpy.context.window_manager.sprig_runtime.running is False


@needs_rigger
def test_panel_cancel_stops_the_export_and_the_build_and_leaves_nothing(scene, checkpoints):
    from sprig_blender.operators import _Active

    for phase in ("exporting frames", "building the rig: vertex groups"):
        reset_scene()
        set_backend("SUBPROCESS", checkpoints=checkpoints)
        armature_tube(n_frames=6)
        before = data_counts()
        op = invoke_rig_sequence()
        assert bpy.context.window_manager.sprig_runtime.running  # the panel shows the bar and Cancel at once
        result, stages = drive(op, cancel_when=lambda stage: stage == phase)
        assert result == {"CANCELLED"} and stages[-1] == phase, (phase, stages)
        assert data_counts() == before
        assert _Active.job is None and _Active.export is None and not _Active.cancel_requested
        assert bpy.context.window_manager.sprig_runtime.running is False
        assert not bpy.ops.sprig.cancel_rig.poll()


def test_interactive_run_with_a_missing_backend_python_fails_clearly_and_leaves_nothing(scene, tmp_path):
    set_backend("SUBPROCESS", python=str(tmp_path / "no_such_python"))
    armature_tube(n_frames=4)
    before = data_counts()
    op = invoke_rig_sequence()  # the warm-up's start fails in its thread; the job's own start reports it
    result, _ = drive(op)
    assert result == {"CANCELLED"}
    assert op._job.state == "error" and "backend Python executable not found" in op._job.message, op._job.message
    assert data_counts() == before
    from sprig_blender.operators import _Active

    assert _Active.job is None and _Active.export is None


def test_heat_values_compressed_in_slices_decode_like_one_piece(monkeypatch):
    import numpy as np

    from sprig_blender import convert

    values = np.random.default_rng(0).random((5, 301)).astype(np.float32) ** 3
    whole, scale = convert.encode_heat(values)
    monkeypatch.setattr(convert, "HEAT_SLICE_BYTES", 97)
    steps = convert.encode_heat_steps(values)
    shares = []
    while True:
        try:
            shares.append(next(steps))
        except StopIteration as finished:
            sliced, sliced_scale = finished.value
            break
    assert len(shares) == 16 and shares == sorted(shares) and shares[-1] == 1.0  # 5 x 301 bytes in 97-byte slices
    assert sliced_scale == scale
    np.testing.assert_array_equal(convert.decode_heat_levels(sliced, 5, 301), convert.decode_heat_levels(whole, 5, 301))
