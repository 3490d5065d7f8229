"""Operators: Rig Sequence (modal, Esc cancels), Check Backend, heatmap refresh."""

from __future__ import annotations

import json
import logging

import bpy

from . import builder, export, heatmap, preferences, runner

log = logging.getLogger(__name__)


class _Active:
    """The running job (one at a time), so that unregister and file loads can cancel it."""

    job: runner.RigJob | None = None


def cancel_active_job() -> None:
    if _Active.job is not None:
        _Active.job.cancel()
        _Active.job = None


# (label, stats keys tried in order, formatter) of the key numbers shown after a run
_SUMMARY_ROWS = (
    ("Joints", ("joints",), lambda v: f"{int(v)}"),
    ("Recon error", ("recon_mean",), lambda v: f"{100.0 * v:.3f}% of diag"),
    ("Recon max", ("recon_max",), lambda v: f"{100.0 * v:.3f}% of diag"),
    ("PJDD (frames 0-2)", ("pjdd",), lambda v: f"{v:.4g}"),
    ("Topology flicker", ("topology_flicker", "flicker"), lambda v: f"{100.0 * v:.0f}% of frames"),
    ("Joint drift (MCJD)", ("mcjd",), lambda v: f"{v:.4g}"),
    ("Skin instability", ("skin_instability_mean",), lambda v: f"{v:.4g}"),
    ("Frames", ("frames",), lambda v: f"{int(v)}"),
)


def stats_summary(stats: dict) -> list[tuple[str, str]]:
    """Readable key numbers of a rig's stats (``RigResult.stats``): joints, reconstruction error, PJDD on the
    paper's 3-frame protocol, topology flicker, joint drift, skinning instability (those present)."""
    rows: list[tuple[str, str]] = []
    for label, keys, fmt in _SUMMARY_ROWS:
        value = next((stats[k] for k in keys if isinstance(stats.get(k), (int, float))), None)
        if value is not None:
            rows.append((label, fmt(value)))
    return rows


class SPRIG_OT_rig_sequence(bpy.types.Operator):
    """Rig the active animated mesh: armature, weights and an action reproducing its motion"""

    bl_idname = "sprig.rig_sequence"
    bl_label = "Rig Sequence"
    bl_options = {"REGISTER", "UNDO"}

    _timer = None

    @classmethod
    def poll(cls, context):
        if _Active.job is not None:
            cls.poll_message_set("a rig is already running")
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("switch to Object Mode")
            return False
        return True

    # -- shared steps -----------------------------------------------------------------------

    def _start(self, context) -> bool:
        """Export the frames and start the backend job. Reports and returns False on error."""
        obj = context.active_object
        settings = context.scene.sprig
        try:
            export.check_exportable(obj)
            frames = export.frame_list(*settings.frame_range(context.scene))
            exported = export.export_frames(context, obj, frames)
            backend = runner.get_backend(preferences.backend_settings(context))
        except (export.ExportError, runner.BackendSetupError) as exc:
            self.report({"ERROR"}, str(exc))
            return False
        self._source_name = obj.name
        self._exported = exported
        self._job = runner.RigJob(backend, exported.verts, exported.faces, settings.rig_options(),
                                  name=obj.name, fps=exported.fps)
        _Active.job = self._job
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = True, "starting backend", 0.0
        self._job.start()
        log.info("rigging %s: %d frames, %d vertices", obj.name, *exported.verts.shape[:2])
        return True

    def _finish(self, context) -> set[str]:
        """Build the rig from a finished job (or report why not)."""
        job = self._job
        _Active.job = None
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = False, "", 0.0
        if job.state == "cancelled":
            self.report({"WARNING"}, "SPRig: rigging cancelled; nothing was changed")
            return {"CANCELLED"}
        if job.state == "error":
            self.report({"ERROR"}, f"SPRig: {job.message}")
            return {"CANCELLED"}
        source = bpy.data.objects.get(self._source_name)
        if source is None:
            self.report({"ERROR"}, f"SPRig: the object '{self._source_name}' was removed while rigging")
            return {"CANCELLED"}
        try:
            built = builder.build_rig(context, source, job.result, self._exported.frames)
        except Exception as exc:
            log.exception("building the rig failed")
            self.report({"ERROR"}, f"SPRig: could not build the rig: {exc}")
            return {"CANCELLED"}
        context.scene.sprig.rig_object = built.mesh_object
        if context.window_manager.sprig_heatmap.enabled:
            heatmap.enable(context)
        numbers = ", ".join(f"{label} {value}" for label, value in
                            stats_summary(json.loads(built.mesh_object["sprig_stats"])))
        self.report({"INFO"}, f"SPRig: rigged '{source.name}' -> '{built.armature_object.name}' ({numbers})")
        return {"FINISHED"}

    # -- entry points -----------------------------------------------------------------------

    def execute(self, context):
        """Blocking run (scripts, background mode)."""
        if not self._start(context):
            return {"CANCELLED"}
        self._job.wait()
        return self._finish(context)

    def invoke(self, context, event):
        """Interactive run: the backend works in a thread; a timer polls it; Esc cancels."""
        if context.window is None:
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        self._status(context, "starting backend... (Esc to cancel)")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            self._status(context, "cancelling...")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self._job.poll()
        if not self._job.finished:
            runtime = context.window_manager.sprig_runtime
            runtime.stage, runtime.progress = self._job.stage, self._job.fraction
            context.window_manager.progress_update(int(100 * self._job.fraction))
            self._status(context, f"{self._job.stage} {100 * self._job.fraction:.0f}% (Esc to cancel)")
            _redraw_panels(context)
            return {"RUNNING_MODAL"}
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        self._status(context, None)
        result = self._finish(context)
        _redraw_panels(context)
        return result

    def _status(self, context, text: str | None) -> None:
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(None if text is None else f"SPRig: {text}")


class SPRIG_OT_check_backend(bpy.types.Operator):
    """Start the backend and report its versions, device and checkpoints"""

    bl_idname = "sprig.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        runtime = context.window_manager.sprig_runtime
        try:
            info = runner.check_backend(preferences.backend_settings(context))
        except Exception as exc:
            runtime.backend_status = f"Backend not available: {runner.describe_error(exc)}"
            self.report({"ERROR"}, runtime.backend_status)
            return {"CANCELLED"}
        lines = [
            f"{info['mode']} backend {info.get('backend_version')} on Python {info.get('python')}",
            f"torch {info.get('torch')}, numpy {info.get('numpy')}, device {info.get('device')}",
            f"rigger: {'ready' if info.get('rigger') else info.get('rigger_error', 'not available')}",
            f"checkpoints: {len(info.get('checkpoints', []))} file(s)"
            + (f" in {info['checkpoint_dir']}" if info.get("checkpoint_dir") else ""),
        ]
        runtime.backend_status = "\n".join(lines)
        self.report({"INFO"}, "; ".join(lines))
        return {"FINISHED"}


class SPRIG_OT_heatmap_refresh(bpy.types.Operator):
    """Recolour the rigged meshes for the current frame"""

    bl_idname = "sprig.heatmap_refresh"
    bl_label = "Refresh Heatmap"

    def execute(self, context):
        count = heatmap.enable(context) if context.window_manager.sprig_heatmap.enabled else 0
        self.report({"INFO"}, f"SPRig: heatmap on {count} mesh(es)")
        return {"FINISHED"}


def _redraw_panels(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


classes = (SPRIG_OT_rig_sequence, SPRIG_OT_check_backend, SPRIG_OT_heatmap_refresh)
