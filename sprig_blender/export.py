"""Export the evaluated mesh of an object at a range of frames (world space) for the backend."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import bpy
import numpy as np


class ExportError(RuntimeError):
    """The object cannot be exported as a mesh sequence (the message says why)."""


@dataclass
class ExportedFrames:
    """Frames read from Blender.

    Attributes:
        verts: float32 ``[K, V, 3]`` world-space vertex positions of the evaluated mesh per frame.
        faces: int32 ``[F, 3]`` triangles (Blender's loop triangles of the anchor frame).
        frames: int ``[K]`` scene frame numbers; ``frames[0]`` is the anchor.
        fps: scene frames per second (accounting for the frame step).
        name: the object's name.
        local_change: largest change of an object-space vertex coordinate from the anchor frame (0: the
            mesh itself never deforms; any motion comes from the object's transform).
    """

    verts: np.ndarray
    faces: np.ndarray
    frames: list[int]
    fps: float
    name: str
    local_change: float = 0.0


# Modifiers that can change the number of vertices or faces from frame to frame
TOPOLOGY_MODIFIERS = {"BUILD", "REMESH", "DECIMATE", "EXPLODE", "OCEAN", "PARTICLE_INSTANCE", "MASK", "BOOLEAN",
                      "WELD", "SKIN", "NODES", "MESH_SEQUENCE_CACHE", "MULTIRES", "SCREW", "ARRAY"}


def frame_list(start: int, end: int, step: int) -> list[int]:
    """Scene frames ``start, start + step, ...`` and always ``end`` (the last step may be shorter)."""
    if step < 1:
        raise ExportError(f"frame step must be at least 1, got {step}")
    if end < start:
        raise ExportError(f"frame range is empty: end {end} is before start {start}")
    frames = list(range(int(start), int(end) + 1, int(step)))
    if frames[-1] != int(end):
        frames.append(int(end))
    return frames


def topology_modifiers(obj: bpy.types.Object) -> list[str]:
    """``'name' (Type)`` of ``obj``'s viewport-enabled modifiers that can change its topology over time."""
    return [f"'{m.name}' ({m.type.replace('_', ' ').title()})" for m in obj.modifiers
            if m.type in TOPOLOGY_MODIFIERS and m.show_viewport]


def _topology_hint(obj: bpy.types.Object) -> str:
    names = topology_modifiers(obj)
    if not names:
        return "rigging needs the same vertices and faces on every frame"
    return (f"rigging needs the same vertices and faces on every frame; the modifier(s) {', '.join(names)} can "
            "change them: apply or disable them, or pick frames where they are finished")


def check_exportable(obj: bpy.types.Object | None) -> None:
    """Raise ExportError unless ``obj`` is an object whose evaluated form is a mesh."""
    if obj is None:
        raise ExportError("no active object: select the animated mesh to rig")
    if obj.type != "MESH":
        kind = obj.type.lower().replace("_", " ")
        article = "an" if kind[:1] in "aeiou" else "a"
        raise ExportError(f"'{obj.name}' is not a mesh (it is {article} {kind} object); select a mesh")


def export_frames(context: bpy.types.Context, obj: bpy.types.Object, frames: list[int]) -> ExportedFrames:
    """Read the evaluated mesh of ``obj`` at each of ``frames`` (shape keys, modifiers, caches applied).

    The scene's current frame is restored afterwards.

    Raises:
        ExportError: a non-mesh or empty object, fewer than two frames, or a topology change (naming the
            first frame whose vertex count or connectivity differs from the anchor's).
    """
    steps = export_frames_stepwise(context, obj, frames)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def export_frames_stepwise(context: bpy.types.Context, obj: bpy.types.Object,
                           frames: list[int]) -> Generator[int, None, ExportedFrames]:
    """:func:`export_frames` one frame at a time: yields the number of frames read so far after each one and
    returns the :class:`ExportedFrames` (``StopIteration.value``), so that a modal operator can show progress
    and stop between frames. Closing the generator early restores the scene's frame. Raises as
    :func:`export_frames` (from the step that finds the problem)."""
    check_exportable(obj)
    if len(frames) < 2:
        raise ExportError(f"need at least 2 frames to rig a sequence, the range gives {len(frames)}; "
                          "widen the frame range or lower the step")
    scene = context.scene
    original_frame, original_subframe = scene.frame_current, scene.frame_subframe
    verts: np.ndarray | None = None  # float32 [K, V, 3], allocated once the anchor's vertex count is known
    anchor_loops: np.ndarray | None = None
    anchor_local: np.ndarray | None = None
    local_change = 0.0  # largest change of an object-space coordinate from the anchor frame
    faces: np.ndarray | None = None
    try:
        for index, frame in enumerate(frames):
            scene.frame_set(frame)
            depsgraph = context.evaluated_depsgraph_get()
            evaluated = obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            try:
                n_verts = len(mesh.vertices)
                loops = np.empty(len(mesh.loops), dtype=np.int32)
                mesh.loops.foreach_get("vertex_index", loops)
                if index == 0:
                    if n_verts < 4 or len(mesh.polygons) == 0:
                        if topology_modifiers(obj) and len(obj.data.polygons) > 0:
                            raise ExportError(f"topology changes: '{obj.name}' has {n_verts} vertices and "
                                              f"{len(mesh.polygons)} faces at frame {frame} (the first frame) but "
                                              f"{len(obj.data.vertices)} vertices before modifiers; "
                                              + _topology_hint(obj))
                        raise ExportError(f"'{obj.name}' has {n_verts} vertices and {len(mesh.polygons)} faces at "
                                          f"frame {frame}; need a mesh with faces")
                    anchor_loops = loops
                    mesh.calc_loop_triangles()
                    faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
                    mesh.loop_triangles.foreach_get("vertices", faces)
                    faces = faces.reshape(-1, 3)
                else:
                    n_anchor = verts.shape[1]
                    if n_verts != n_anchor:
                        raise ExportError(f"topology changes at frame {frame}: {n_verts} vertices, the anchor frame "
                                          f"{frames[0]} has {n_anchor}; " + _topology_hint(obj))
                    if loops.shape != anchor_loops.shape or not np.array_equal(loops, anchor_loops):
                        raise ExportError(f"topology changes at frame {frame}: the faces differ from the anchor frame "
                                          f"{frames[0]}; " + _topology_hint(obj))
                co = np.empty(n_verts * 3, dtype=np.float32)
                mesh.vertices.foreach_get("co", co)
            finally:
                evaluated.to_mesh_clear()
            if index == 0:
                anchor_local = co.copy()
            else:
                local_change = max(local_change, float(np.abs(co - anchor_local).max()))
            world = np.array(evaluated.matrix_world, dtype=np.float64)
            co = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
            if not np.isfinite(co).all():
                raise ExportError(f"'{obj.name}' has NaN or infinite vertex positions at frame {frame}")
            if verts is None:
                verts = np.empty((len(frames), len(co), 3), dtype=np.float32)
            verts[index] = co
            yield index + 1
    finally:
        scene.frame_set(original_frame, subframe=original_subframe)
    step = frames[1] - frames[0]
    fps = scene.render.fps / scene.render.fps_base / step
    return ExportedFrames(verts=verts, faces=faces, frames=list(frames), fps=float(fps),
                          name=obj.name, local_change=local_change)


# -- is the input worth rigging? --------------------------------------------------------------------

MOTION_TOLERANCE = 1e-5  # a vertex moving less than this share of the anchor box diagonal is not moving


@dataclass
class MotionCheck:
    """What the exported frames show about the motion.

    Attributes:
        last_moving: index of the last exported frame that differs from the frame before it (0: nothing
            moves at all); frames after it repeat it.
        deforms: whether the mesh changes shape in object space (False: only the object's transform moves).
    """

    last_moving: int
    deforms: bool


def check_motion(exported: ExportedFrames) -> MotionCheck:
    """Look at the exported frames (``verts [K, V, 3]``, world space) for missing or trailing-still motion."""
    verts = exported.verts
    anchor = verts[0].astype(np.float64)
    diag = float(np.linalg.norm(anchor.max(axis=0) - anchor.min(axis=0))) or 1.0
    moving = np.flatnonzero(_frame_to_frame_change(verts) / diag > MOTION_TOLERANCE)
    last_moving = int(moving[-1]) + 1 if moving.size else 0
    return MotionCheck(last_moving=last_moving, deforms=exported.local_change / diag > MOTION_TOLERANCE)


def _frame_to_frame_change(verts: np.ndarray) -> np.ndarray:
    """Largest coordinate change of any vertex from each frame to the next, ``[K - 1]`` (one frame pair at a
    time: no ``[K, V, 3]`` temporary)."""
    return np.array([float(np.abs(verts[k + 1] - verts[k]).max()) for k in range(len(verts) - 1)])


def trim_frames(exported: ExportedFrames, count: int) -> ExportedFrames:
    """The first ``count`` exported frames."""
    return ExportedFrames(verts=exported.verts[:count], faces=exported.faces, frames=exported.frames[:count],
                          fps=exported.fps, name=exported.name, local_change=exported.local_change)


def screen_motion(exported: ExportedFrames) -> tuple[ExportedFrames, list[str]]:
    """The frames worth rigging and warnings about the input.

    Raises ExportError when nothing moves; drops trailing frames that repeat the last moving one (the
    Action holds its last key, so playback is the same) with a warning naming them; warns when the mesh
    does not deform (object-level motion only: a rig adds nothing to keys on the object).
    """
    check = check_motion(exported)
    frames = exported.frames
    if check.last_moving == 0:
        raise ExportError(f"'{exported.name}' does not move over frames {frames[0]}-{frames[-1]}: nothing to rig "
                          "(is the animation outside this frame range? 'Use Animated Range' finds it)")
    warnings = []
    if check.last_moving < len(frames) - 1:
        end = frames[check.last_moving]
        warnings.append(f"'{exported.name}' stops moving at frame {end}: frames {frames[check.last_moving + 1]}-"
                        f"{frames[-1]} repeat it and were left out ('Use Animated Range' sets the range to the "
                        "animation)")
        exported = trim_frames(exported, check.last_moving + 1)
    if not check.deforms:
        warnings.append(f"'{exported.name}' does not deform: it only moves as a whole (object, parent or "
                        "constraint animation), which a skeleton cannot improve on; the rig is likely meaningless")
    return exported, warnings


def animated_range(context: bpy.types.Context, obj: bpy.types.Object) -> tuple[int, int] | None:
    """Scene frames ``(first, last)`` over which ``obj``'s evaluated mesh is animated, or None if it is not.

    Keyframed animation is read from the F-curves that move the mesh: the object's own (and its parents')
    Action, its shape keys' Action, and the Actions of armatures and other objects its modifiers use.
    Caches (Mesh Cache, Mesh Sequence Cache) and anything else without keys are found by evaluating the
    mesh over the scene range and taking the first and last frames where it changes.
    """
    ranges = []
    owners = [obj, getattr(obj.data, "shape_keys", None)]
    parent = obj.parent
    while parent is not None:
        owners.append(parent)
        parent = parent.parent
    for modifier in obj.modifiers:
        target = getattr(modifier, "object", None)
        if isinstance(target, bpy.types.Object):
            owners.append(target)
    for owner in owners:
        action = owner.animation_data.action if owner is not None and owner.animation_data is not None else None
        if action is not None:
            start, end = action.frame_range
            ranges.append((int(np.floor(start)), int(np.ceil(end))))
    cached = any(m.type in {"MESH_CACHE", "MESH_SEQUENCE_CACHE"} for m in obj.modifiers)
    if ranges and not cached:
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    scene = context.scene
    frames = frame_list(scene.frame_start, scene.frame_end, 1)
    if len(frames) < 2:
        return None
    exported = export_frames(context, obj, frames)
    moving = np.flatnonzero(_frame_to_frame_change(exported.verts) > 0)
    if moving.size == 0:
        return None
    return frames[int(moving[0])], frames[int(moving[-1]) + 1]
