"""Operators: Rig Sequence and Refit (modal; Esc or Cancel stops them), Cancel, Use Animated Range, Show Original,
Check Backend, heatmap refresh; the Object menu entry."""

from __future__ import annotations

import json
import logging
import time

import bpy

from . import builder, convert, export, heatmap, preferences, runner

log = logging.getLogger(__name__)


class _Active:
    """The running job (one at a time), so that unregister and file loads can cancel it; ``export`` is the
    frame export of an interactive run before its job starts (:func:`export.export_frames_stepwise`)."""

    job: runner.RigJob | None = None
    export = None
    cancel_requested = False  # the panel's Cancel: the running operator stops on its next event, as with Esc


def _stop_pressed(event) -> bool:
    """Esc, or the panel's Cancel since the last event: the running operator stops in any phase (export, backend
    job, building the rig)."""
    return _Active.cancel_requested or (event is not None and event.type == "ESC" and event.value == "PRESS")


def cancel_active_job() -> None:
    _Active.cancel_requested = False
    if _Active.export is not None:
        _Active.export.close()  # restores the scene's frame
        _Active.export = None
    if _Active.job is not None:
        _Active.job.cancel()
        _Active.job = None


EXPORT_SLICE_S = 0.2  # frames exported per timer tick of an interactive run: as many as fit in this time


def progress_text(stage: str, fraction: float) -> str:
    """The status bar's text for a running job: its stage and the whole run's share done, to a tenth of a
    percent so that a long stage visibly moves (``fraction`` 0: the stage alone, e.g. "starting backend...")."""
    return f"{stage or 'starting'} {100 * fraction:.1f}%" if fraction > 0 else f"{stage or 'starting'}..."


# (label, stats keys tried in order, formatter) of the key numbers shown after a run; "Net" rows rate the networks
# run on each frame by themselves (the stability report, the paper's protocol), not the rig, which keeps one
# skeleton and one set of weights on every frame
_SUMMARY_ROWS = (
    ("Joints", ("joints",), lambda v: f"{int(v)}"),
    ("Recon error", ("recon_mean",), lambda v: f"{100.0 * v:.3f}% of diag"),
    ("Recon max", ("recon_max",), lambda v: f"{100.0 * v:.3f}% of diag"),
    ("Rest shape vs first frame", ("rest_moved_max",), lambda v: f"at most {100.0 * v:.2f}% of diag"),
    ("Skin led by far bones", ("far_led_share",), lambda v: f"{100.0 * v:.1f}% of vertices"),
    ("Net PJDD (frames 0-2)", ("pjdd",), lambda v: f"{v:.4g}"),
    ("Net topology flicker", ("topology_flicker", "flicker"), lambda v: f"{100.0 * v:.0f}% of frames"),
    ("Net joint drift (MCJD)", ("mcjd",), lambda v: f"{v:.4g}"),
    ("Net skin instability", ("skin_instability_mean",), lambda v: f"{v:.4g}"),
    ("Frames", ("frames",), lambda v: f"{int(v)}"),
)


# Plain-word verdicts: (label, stats key, formatter, good below, fair below, note)
_PLAIN_ROWS = (
    ("Matches the animation", "recon_mean", lambda v: f"{100.0 * v:.2f}% off", 0.01, 0.03,
     "mean distance between the rig's playback and the input, as a share of the model's size"),
    ("Worst vertex", "recon_max", lambda v: f"{100.0 * v:.1f}% off", 0.05, 0.15,
     "the largest such distance on any vertex and frame"),
    ("Error vs movement", "recon_vs_motion", lambda v: f"{100.0 * v:.0f}% of the movement", 0.10, 0.30,
     "the mean playback error as a share of how far the vertices move from the first frame on average: how much "
     "of the animation the rig leaves out (a small error on a clip that barely moves can still be most of it)"),
    ("Weight steadiness", "skin_instability_mean", lambda v: f"{100.0 * v:.0f}% of weight moves", 0.10, 0.25,
     "how much the predicted weights change over the clip (lower: steadier skinning)"),
)


def plain_summary(stats: dict) -> list[tuple[str, str, str]]:
    """``(label, value, verdict)`` rows in plain words for a rig's stats: how closely playback follows the
    input and how steady the predicted weights are, each with ``good`` / ``fair`` / ``poor``. The weight row is
    left out when the rig was made without the heatmap stage (no weights predicted on later frames). The skeleton
    network's per-frame topology flicker is not a verdict here: it rates the network run on each frame by itself
    (the stability report), not the rig, which keeps one skeleton on every frame (it stays under Details)."""
    config = stats.get("config") if isinstance(stats.get("config"), dict) else {}
    rows = []
    if isinstance(stats.get("joints"), (int, float)):
        rows.append(("Bones", f"{int(stats['joints'])}", ""))
    for label, key in (("Bones far from the mesh", "bones_far_from_skin"), ("Bones leading no vertex",
                                                                           "bones_without_skin")):
        bones = stats.get(key)
        if isinstance(bones, list) and bones:
            rows.append((label, f"{len(bones)}: {', '.join(bones[:6])}" + (", ..." if len(bones) > 6 else ""), ""))
    for label, key, fmt, good, fair, _note in _PLAIN_ROWS:
        value = stats.get(key)
        if not isinstance(value, (int, float)) or (key == "skin_instability_mean" and config.get("heatmap") is False):
            continue
        verdict = "good" if value < good else "fair" if value < fair else "poor"
        rows.append((label, fmt(value), verdict))
    return rows


def plain_note(label: str) -> str:
    """What a :func:`plain_summary` row measures (for tooltips and the docs)."""
    return next((row[5] for row in _PLAIN_ROWS if row[0] == label), "")


def stats_summary(stats: dict) -> list[tuple[str, str]]:
    """Readable key numbers of a rig's stats (``RigResult.stats``): joints, reconstruction error, PJDD on the
    paper's 3-frame protocol, topology flicker, joint drift, skinning instability (those present)."""
    rows: list[tuple[str, str]] = []
    config = stats.get("config") if isinstance(stats.get("config"), dict) else {}
    for label, keys, fmt in _SUMMARY_ROWS:
        if keys[0] == "skin_instability_mean" and config.get("heatmap") is False:
            continue  # not computed without Weight Stability Data (the stored 0 is no measurement)
        value = next((stats[k] for k in keys if isinstance(stats.get(k), (int, float))), None)
        if value is not None:
            rows.append((label, fmt(value)))
    return rows


def rig_target(context) -> bpy.types.Object:
    """The object Rig Sequence works on: the selected active object, or, when that is a rig SPRig made
    (rigged mesh or armature), the original it was made from (so running again re-rigs it).

    Raises:
        export.ExportError: nothing active or selected, or not a mesh.
    """
    obj = context.active_object
    if obj is None or not obj.select_get():
        selected = len(context.selected_objects)
        if obj is not None:
            reason = f"the active object '{obj.name}' is not selected"
        else:
            reason = f"no active object ({selected} selected)" if selected else "no animated mesh selected"
        raise export.ExportError(f"{reason}: Rig Sequence rigs the active object; click the mesh to rig in the "
                                 "viewport or outliner")
    source = builder.source_of(obj)
    target = source if source is not None else obj
    export.check_exportable(target)
    return target


def other_selected_meshes(context, target: bpy.types.Object) -> list[str]:
    """``'name'`` of the selected meshes besides the active one and the rig target (a rig of the target, its
    rigged mesh or armature, does not count): Rig Sequence rigs one object and leaves these alone."""
    active = context.active_object
    return [f"'{o.name}'" for o in context.selected_objects
            if o.type == "MESH" and o not in (active, target) and builder.source_of(o) is not target]


class _BackendJobOperator:
    """What Rig Sequence and Refit share: a backend job in a worker thread, polled by a timer (modal) or waited
    on (``execute``); Esc or the panel's Cancel stops it. Subclasses define ``_start`` (start ``self._job``,
    return False after reporting an error) and ``_apply`` (use the finished job's result), or ``_apply_steps``
    (the same one step at a time, so that an interactive run shows each step and Esc stops between them)."""

    _timer = None
    _verb = "rigging"
    _apply_steps = None  # a generator function (context, job): yields status texts, returns the result set
    _applying = None  # the running _apply_steps generator of an interactive run
    _stopping = False  # Esc or Cancel was pressed while the backend job ran

    @classmethod
    def poll(cls, context):
        if _Active.job is not None or _Active.export is not None:
            cls.poll_message_set("a rig is already running")
            return False
        return True

    def _export_plan(self, context) -> tuple[bpy.types.Object, list[float]] | None:
        """The object whose frames the job needs and the frame numbers; reports and returns None on error."""
        raise NotImplementedError

    def _begin(self, context, obj: bpy.types.Object, exported: export.ExportedFrames) -> bool:
        """Start the backend job on the exported frames (:meth:`_launch`); reports and returns False on error."""
        raise NotImplementedError

    def _start(self, context) -> bool:
        """Export every frame at once and start the job (the blocking path). Reports and returns False on error."""
        plan = self._export_plan(context)
        if plan is None:
            return False
        obj, frames = plan
        try:
            exported = export.export_frames(context, obj, frames)
        except export.ExportError as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return False
        return self._begin(context, obj, exported)

    def _launch(self, context, job: runner.RigJob) -> None:
        self._job = job
        _Active.job = job
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = True, "starting backend", 0.0
        job.start()

    def _finish(self, context) -> set[str]:
        """Report a cancelled or failed job, else :meth:`_apply` its result."""
        job = self._job
        _Active.job = None
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = False, "", 0.0
        if job.state == "done" and self._apply_steps is not None:
            return convert.run_to_end(self._apply_steps(context, job), context)
        if job.state == "cancelled":
            self.report({"WARNING"}, f"SPRig: {self._verb} cancelled; nothing was changed")
            return {"CANCELLED"}
        if job.state == "error":
            self.report({"ERROR"}, f"SPRig: {job.message}")
            return {"CANCELLED"}
        return self._apply(context, job)

    def execute(self, context):
        """Blocking run (scripts, background mode)."""
        if not self._start(context):
            return {"CANCELLED"}
        self._job.wait()
        return self._finish(context)

    def invoke(self, context, event):
        """Interactive run: the frames are exported a few per timer tick (progress shown, Esc stops it), then
        the backend works in a thread; a timer polls it; Esc or the panel's Cancel stops it."""
        if context.window is None:
            return self.execute(context)
        plan = self._export_plan(context)
        if plan is None:
            return {"CANCELLED"}
        obj, frames = plan
        self._job, self._export_object, self._export_total = None, obj, len(frames)
        runner.warm_up(preferences.backend_settings(context))  # the server starts while the frames export
        _Active.export = export.export_frames_stepwise(context, obj, frames)
        _Active.cancel_requested = False
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = True, "exporting frames", 0.0  # the panel shows Cancel
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        self._status(context, f"exporting frames 0/{len(frames)} (Esc to cancel)")
        return {"RUNNING_MODAL"}

    def _end_modal(self, context) -> None:
        _Active.cancel_requested = False
        runtime = context.window_manager.sprig_runtime
        runtime.running, runtime.stage, runtime.progress = False, "", 0.0
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        self._status(context, None)

    def _modal_export(self, context, event) -> set[str]:
        """One timer tick of the frame export: frames for up to ``EXPORT_SLICE_S``, then the job starts."""
        if _stop_pressed(event):
            cancel_active_job()
            self._end_modal(context)
            self.report({"WARNING"}, f"SPRig: {self._verb} cancelled while exporting frames; nothing was changed")
            return {"CANCELLED"}
        if event.type != "TIMER" or _Active.export is None:
            return {"PASS_THROUGH"}
        until = time.monotonic() + EXPORT_SLICE_S
        try:
            while True:
                done = next(_Active.export)
                if time.monotonic() >= until:
                    break
        except StopIteration as finished:
            _Active.export = None
            if not self._begin(context, self._export_object, finished.value):
                self._end_modal(context)
                return {"CANCELLED"}
            self._status(context, "starting backend... (Esc to cancel)")
            return {"RUNNING_MODAL"}
        except Exception as exc:  # ExportError, or the object removed while exporting
            cancel_active_job()
            self._end_modal(context)
            self.report({"ERROR"}, f"SPRig: {exc}" if isinstance(exc, export.ExportError) else f"SPRig: export failed: {exc}")
            return {"CANCELLED"}
        context.window_manager.progress_update(int(100 * done / self._export_total))
        self._status(context, f"exporting frames {done}/{self._export_total} (Esc to cancel)")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if self._job is None:
            return self._modal_export(context, event)
        if self._applying is not None:
            return self._modal_apply(context, event)
        if _stop_pressed(event):
            _Active.cancel_requested = False
            self._stopping = True  # a result that arrives anyway is not applied
            self._job.cancel()
            context.window_manager.sprig_runtime.stage = "cancelling"
            self._status(context, "cancelling...")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self._job.poll()
        if not self._job.finished:
            runtime = context.window_manager.sprig_runtime
            if self._stopping:
                return {"RUNNING_MODAL"}  # "cancelling" stays shown until the backend stops
            runtime.stage, runtime.progress = self._job.stage, self._job.fraction
            context.window_manager.progress_update(int(100 * self._job.fraction))
            self._status(context, f"{progress_text(self._job.stage, self._job.fraction)} (Esc to cancel)")
            _redraw_panels(context)
            return {"RUNNING_MODAL"}
        if self._job.state == "done" and self._stopping:  # finished just as it was stopped
            _Active.job = None
            self._end_modal(context)
            self.report({"WARNING"}, f"SPRig: {self._verb} cancelled; nothing was changed")
            _redraw_panels(context)
            return {"CANCELLED"}
        if self._job.state == "done" and self._apply_steps is not None:
            self._applying = self._apply_steps(context, self._job)
            return self._modal_apply(context, None)
        self._end_modal(context)
        result = self._finish(context)
        _redraw_panels(context)
        return result

    def _modal_apply(self, context, event) -> set[str]:
        """One step of :meth:`_apply_steps` per timer tick (``event`` None: its first step, now); Esc removes
        what the steps made so far (so does the panel's Cancel)."""
        runtime = context.window_manager.sprig_runtime
        if event is not None and _stop_pressed(event):
            self._applying.close()
            result = {"CANCELLED"}
            self.report({"WARNING"}, f"SPRig: {self._verb} cancelled; nothing was changed")
        elif event is not None and event.type != "TIMER":
            return {"PASS_THROUGH"}
        else:
            try:
                text = next(self._applying) if event is None else self._applying.send(context)
                runtime.stage = text
                self._status(context, f"{text} (Esc to cancel)")
                _redraw_panels(context)
                return {"RUNNING_MODAL"}
            except StopIteration as finished:
                result = finished.value
        self._applying = None
        _Active.job = None
        self._end_modal(context)
        _redraw_panels(context)
        return result

    def _status(self, context, text: str | None) -> None:
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(None if text is None else f"SPRig: {text}")


class SPRIG_OT_rig_sequence(_BackendJobOperator, bpy.types.Operator):
    """Rig the selected animated mesh: armature, weights and an action reproducing its motion.
    With a rig made by SPRig selected, rig its original again"""

    bl_idname = "sprig.rig_sequence"
    bl_label = "Rig Sequence"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if not super().poll(context):
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("switch to Object Mode")
            return False
        return True

    def _export_plan(self, context) -> tuple[bpy.types.Object, list[float]] | None:
        """The selected mesh (or the original of a selected rig) and the frames to read in the panel's range (a
        shape-key animation's own keys with At Shape-Key Keys, :func:`export.sample_frames`)."""
        settings = context.scene.sprig
        try:
            obj = rig_target(context)
            frames = export.sample_frames(obj, *settings.frame_range(context.scene), at_keys=settings.at_shape_keys)
        except export.ExportError as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return None
        others = other_selected_meshes(context, obj)
        if others:
            which = "the active object" if obj is context.active_object else "the original of the active rig"
            self.report({"WARNING"}, f"SPRig: rigging only '{obj.name}', {which} (one object per run); also "
                                     f"selected and left as they are: {', '.join(others)}")
        buried = export.buried_subdivision(obj)
        if buried:
            self.report({"WARNING"}, f"SPRig: {buried}")
        return obj, frames

    def _begin(self, context, obj: bpy.types.Object, exported: export.ExportedFrames) -> bool:
        """Screen the exported frames (warnings for no or rigid-only motion) and start the rig job."""
        settings = context.scene.sprig
        try:
            exported, self._warnings = export.screen_motion(exported)
            backend = runner.get_backend(preferences.backend_settings(context))
        except (export.ExportError, runner.BackendSetupError) as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return False
        for warning in self._warnings:
            self.report({"WARNING"}, f"SPRig: {warning}")
        self._source_name = obj.name
        self._exported = exported
        options = settings.rig_options(heatmap_wanted=context.window_manager.sprig_heatmap.enabled)
        options["left_axis"] = exported.left_axis
        self._launch(context, runner.RigJob(backend, exported.verts, exported.faces, options, name=obj.name,
                                            fps=exported.fps))
        log.info("rigging %s: %d frames, %d vertices", obj.name, *exported.verts.shape[:2])
        return True

    def _apply_steps(self, context, job):
        """Build the rig from the finished job, a step at a time (:func:`builder.build_rig_steps`): yields
        status texts, takes each step's context by ``send``, returns the operator's result."""
        source = bpy.data.objects.get(self._source_name)
        if source is None:
            self.report({"ERROR"}, f"SPRig: the object '{self._source_name}' was removed while rigging")
            return {"CANCELLED"}
        steps = builder.build_rig_steps(context, source, job.result, self._exported.frames,
                                        parent_matrices=self._exported.parent_matrices)
        try:
            label = next(steps)
            while True:
                context = (yield f"building the rig: {label}") or context
                label = steps.send(context)
        except StopIteration as finished:
            built = finished.value
        except Exception as exc:
            log.exception("building the rig failed")
            self.report({"ERROR"}, f"SPRig: could not build the rig: {exc}")
            return {"CANCELLED"}
        finally:
            steps.close()  # closed early (Esc): removes what it made
        settings = context.scene.sprig
        if settings.replace_previous:
            builder.replace_previous(built, source)
        if settings.hide_original:
            builder.set_source_visible(source, False)
        settings.rig_object = built.mesh_object
        if context.window_manager.sprig_heatmap.enabled:
            heatmap.enable(context)
        stats = json.loads(built.mesh_object["sprig_stats"])
        numbers = ", ".join(f"{label} {value}" + (f" ({verdict})" if verdict else "") for label, value, verdict
                            in plain_summary(stats))
        warned = f"; {len(self._warnings)} warning(s): {' '.join(self._warnings)}" if self._warnings else ""
        self.report({"WARNING" if self._warnings or stats.get("bones_far_from_skin") else "INFO"},
                    f"SPRig: rigged '{source.name}' -> '{built.armature_object.name}' ({numbers}){warned}")
        return {"FINISHED"}


class SPRIG_OT_refit(_BackendJobOperator, bpy.types.Operator):
    """Fit the weights and the animation again for the rig's armature as edited (bones moved, added, deleted or
    reparented in Edit Mode), from the same frames of the original; the bones are kept as they are"""

    bl_idname = "sprig.refit"
    bl_label = "Refit"
    bl_options = {"REGISTER", "UNDO"}
    _verb = "refit"
    _parent_matrices = None  # the original's Empty parent per frame (export.ExportedFrames.parent_matrices)

    @classmethod
    def poll(cls, context):
        if not super().poll(context):
            return False
        if builder.rig_objects(context.active_object) is None:
            cls.poll_message_set("select a rig made by Rig Sequence (its armature or rigged mesh)")
            return False
        if context.mode not in ("OBJECT", "EDIT_ARMATURE", "POSE"):
            cls.poll_message_set("switch to Object Mode")
            return False
        return True

    def _export_plan(self, context) -> tuple[bpy.types.Object, list[float]] | None:
        """Read the edited bones; the rig's original and the frames the rig was made from."""
        mesh_obj, arm_obj = builder.rig_objects(context.active_object)
        if context.mode != "OBJECT":  # leaving Edit Mode writes the edited bones to the armature
            bpy.ops.object.mode_set(mode="OBJECT")
        source = builder.source_of(mesh_obj)
        try:
            if source is None:
                raise export.ExportError(f"the original of '{mesh_obj.name}' ('{mesh_obj.get('sprig_source')}') "
                                         "is gone: a refit needs its frames")
            frames = builder.rig_frames(mesh_obj)
            self._skeleton = builder.edited_skeleton(arm_obj)
        except (export.ExportError, builder.BuildError) as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return None
        self._names = (mesh_obj.name, arm_obj.name)
        return source, frames

    def _begin(self, context, source: bpy.types.Object, exported: export.ExportedFrames) -> bool:
        """Check the original still matches the rig and start the refit job with the edited skeleton."""
        mesh_obj = bpy.data.objects.get(self._names[0])
        try:
            backend = runner.get_backend(preferences.backend_settings(context))
        except runner.BackendSetupError as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return False
        if mesh_obj is None:
            self.report({"ERROR"}, "SPRig: the rig was removed while exporting its frames")
            return False
        if exported.verts.shape[1] != len(mesh_obj.data.vertices):
            self.report({"ERROR"}, f"SPRig: '{source.name}' has {exported.verts.shape[1]} vertices now but the rig "
                                   f"has {len(mesh_obj.data.vertices)}; run Rig Sequence again")
            return False
        self._frames = exported.frames
        self._parent_matrices = exported.parent_matrices
        options = context.scene.sprig.refit_options()
        self._launch(context, runner.RigJob(backend, exported.verts, exported.faces, options, name=source.name,
                                            fps=exported.fps, skeleton=self._skeleton))
        log.info("refitting %s: %d bones, %d frames", self._names[1], len(self._skeleton["names"]),
                 len(exported.frames))
        return True

    def _apply(self, context, job) -> set[str]:
        mesh_obj, arm_obj = (bpy.data.objects.get(name) for name in self._names)
        if mesh_obj is None or arm_obj is None:
            self.report({"ERROR"}, "SPRig: the rig was removed while refitting")
            return {"CANCELLED"}
        try:
            builder.apply_refit(context, mesh_obj, arm_obj, job.result, self._frames, self._parent_matrices)
        except Exception as exc:
            log.exception("applying the refit failed")
            self.report({"ERROR"}, f"SPRig: could not apply the refit: {exc}")
            return {"CANCELLED"}
        if context.window_manager.sprig_heatmap.enabled:
            heatmap.enable(context)
        numbers = ", ".join(f"{label} {value}" + (f" ({verdict})" if verdict else "") for label, value, verdict
                            in plain_summary(job.result.stats))
        # a bone left far outside the mesh is a warning: the fit may use it to move skin far from it
        self.report({"WARNING" if job.result.stats.get("bones_far_from_skin") else "INFO"},
                    f"SPRig: refitted '{arm_obj.name}' ({numbers})")
        return {"FINISHED"}


class SPRIG_OT_cancel_rig(bpy.types.Operator):
    """Stop the running rig; nothing is changed in the file"""

    bl_idname = "sprig.cancel_rig"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return _Active.job is not None or _Active.export is not None

    def execute(self, context):
        _Active.cancel_requested = True  # seen by the running operator on its next timer tick (0.1 s)
        if _Active.job is not None and not _Active.job.finished:
            _Active.job.cancel()  # the backend stops now
        context.window_manager.sprig_runtime.stage = "cancelling"
        return {"FINISHED"}


class SPRIG_OT_use_animated_range(bpy.types.Operator):
    """Set the frame range to the frames where the selected mesh is animated (keys, shape keys, caches)"""

    bl_idname = "sprig.use_animated_range"
    bl_label = "Use Animated Range"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            obj = rig_target(context)
            found = export.animated_range(context, obj)
        except export.ExportError as exc:
            self.report({"ERROR"}, f"SPRig: {exc}")
            return {"CANCELLED"}
        if found is None:
            self.report({"ERROR"}, f"SPRig: '{obj.name}' is not animated in the scene range")
            return {"CANCELLED"}
        settings = context.scene.sprig
        settings.use_scene_range = False
        settings.frame_start, settings.frame_end = found
        self.report({"INFO"}, f"SPRig: frames {found[0]} - {found[1]} ('{obj.name}' is animated there)")
        return {"FINISHED"}


class SPRIG_OT_show_original(bpy.types.Operator):
    """Show or hide the original object of the active rig"""

    bl_idname = "sprig.show_original"
    bl_label = "Show Original"
    bl_options = {"REGISTER", "UNDO"}

    show: bpy.props.BoolProperty(name="Show", default=True)
    rig: bpy.props.StringProperty(name="Rig", default="", description="Rigged object (default: the active one)")

    def execute(self, context):
        rigged = bpy.data.objects.get(self.rig) if self.rig else context.active_object
        source = builder.source_of(rigged)
        if source is None:
            self.report({"ERROR"}, "SPRig: select a rig made by SPRig (its original is shown or hidden)")
            return {"CANCELLED"}
        builder.set_source_visible(source, self.show)
        return {"FINISHED"}


class SPRIG_OT_check_backend(bpy.types.Operator):
    """Start the backend and check it can rig: versions, device, and the checkpoint files the models need"""

    bl_idname = "sprig.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        runtime = context.window_manager.sprig_runtime
        try:
            info = runner.check_backend(preferences.backend_settings(context))
        except Exception as exc:
            runtime.backend_status = f"Backend not available: {runner.describe_error(exc)}"
            self.report({"ERROR"}, f"SPRig: {runtime.backend_status}")
            return {"CANCELLED"}
        settings = getattr(context.scene, "sprig", None)
        device_note = ""
        if settings is not None and settings.device not in ("auto", "cpu") and not info.get("cuda_available"):
            settings.device = "auto"  # the CUDA choice is no longer offered
            device_note = " (Device set to Auto: the backend has no CUDA)"
        check = info.get("checkpoint_check") if isinstance(info.get("checkpoint_check"), dict) else {}
        folder = info.get("checkpoint_dir", "the backend's default folder")
        missing = runner.missing_checkpoints(info)
        if missing:
            checkpoints = f"checkpoints: MISSING {', '.join(missing)} in {folder}"
        elif check:
            checkpoints = f"checkpoints: {', '.join(check.get('needed', []))} found in {folder}"
        else:
            checkpoints = f"checkpoints: {len(info.get('checkpoints', []))} file(s) in {folder}"
        cuda = f"CUDA {info.get('cuda_device', 'available')}" if info.get("cuda_available") else "no CUDA"
        lines = [
            f"{info['mode']} backend {info.get('backend_version')} on Python {info.get('python')}",
            f"torch {info.get('torch')}, numpy {info.get('numpy')}, device {info.get('device')} ({cuda}){device_note}",
            f"rigger: {'loaded' if info.get('rigger') else info.get('rigger_error', 'not available')}",
            checkpoints,
        ]
        problems = runner.setup_problems(info, {})
        lines.append("ready to rig" if not problems else f"NOT READY: {'; '.join(problems)}")
        runtime.backend_status = "\n".join(lines)
        if problems:
            self.report({"ERROR"}, "SPRig: " + "; ".join(lines))
            return {"CANCELLED"}
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


def object_menu_entry(self, context) -> None:
    """Object menu entry (also what F3 search finds)."""
    self.layout.separator()
    self.layout.operator(SPRIG_OT_rig_sequence.bl_idname, icon="ARMATURE_DATA")


classes = (SPRIG_OT_rig_sequence, SPRIG_OT_refit, SPRIG_OT_cancel_rig, SPRIG_OT_use_animated_range, SPRIG_OT_show_original,
           SPRIG_OT_check_backend, SPRIG_OT_heatmap_refresh)
