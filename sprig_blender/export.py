"""Export the evaluated mesh of an object at a range of frames (world space) for the backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass

import bpy
import numpy as np

from . import convert


class ExportError(RuntimeError):
    """The object cannot be exported as a mesh sequence (the message says why)."""


@dataclass
class ExportedFrames:
    """Frames read from Blender.

    Attributes:
        verts: float32 ``[K, V, 3]`` world-space vertex positions of the evaluated mesh per frame.
        faces: int32 ``[F, 3]`` triangles (Blender's loop triangles of the anchor frame).
        frames: ``[K]`` scene frame numbers (whole frames, or an animation's own key times, which may fall
            between frames: :func:`sample_frames`); ``frames[0]`` is the anchor.
        fps: the sequence's frames per second (the scene's rate over the median spacing of ``frames``).
        name: the object's name.
        local_change: largest change of an object-space vertex coordinate from the anchor frame (0: the
            mesh itself never deforms; any motion comes from the object's transform).
        parent_matrices: float64 ``[K, 4, 4]`` the world matrix of the object's parent per frame when that is
            an Empty (:func:`kept_parent`: the rig is parented to it too), else None.
        left_axis: the object's own X axis in world space on the anchor frame (:func:`object_left_axis`), the
            character's left for the backend.
    """

    verts: np.ndarray
    faces: np.ndarray
    frames: list[float]
    fps: float
    name: str
    local_change: float = 0.0
    parent_matrices: np.ndarray | None = None
    left_axis: list[float] | None = None


def kept_parent(obj: bpy.types.Object) -> bpy.types.Object | None:
    """``obj``'s parent when the rig keeps it (an Empty, parented as an object: an Alembic import's transform
    node, an artist's placement Empty), else None (no parent, or a bone, vertex or armature parent, whose
    motion the rig bakes in)."""
    parent = obj.parent
    if parent is not None and parent.type == "EMPTY" and obj.parent_type == "OBJECT":
        return parent
    return None


# Modifiers kept after the rig's Armature modifier when they end the stack (:func:`surface_modifiers`)
SURFACE_MODIFIERS = {"SUBSURF"}

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


def set_scene_frame(scene: bpy.types.Scene, frame: float) -> None:
    """Go to scene ``frame``, which may fall between two frames (an animation key at 12.6: frame 12, subframe
    0.6)."""
    whole = int(np.floor(frame))
    scene.frame_set(whole, subframe=float(frame - whole))


def frame_text(frame: float) -> str:
    """``12`` for a whole frame, ``12.6`` for one between frames (messages)."""
    return f"{int(frame)}" if float(frame).is_integer() else f"{frame:.2f}".rstrip("0")


def _fcurves(owner) -> list:
    """The F-curves of the Action ``owner`` (an ID) plays, or [] (Blender 4.4+'s slotted Actions and the older
    flat ones)."""
    anim = getattr(owner, "animation_data", None)
    if anim is None or anim.action is None:
        return []
    try:
        from bpy_extras.anim_utils import animdata_get_channelbag_for_assigned_slot
    except ImportError:  # before Blender 4.4
        return list(getattr(anim.action, "fcurves", []))
    bag = animdata_get_channelbag_for_assigned_slot(anim)
    return list(bag.fcurves) if bag is not None else []


# Modifiers that change nothing over time by themselves: a shape-key animation under them is still played
# pose by pose at its keys
STATIC_MODIFIERS = {"SUBSURF", "TRIANGULATE", "EDGE_SPLIT", "WEIGHTED_NORMAL", "MIRROR", "SOLIDIFY", "BEVEL",
                    "DATA_TRANSFER", "NORMAL_EDIT", "SMOOTH_BY_ANGLE"}


def shape_key_frames(obj: bpy.types.Object, start: int, end: int) -> list[float] | None:
    """The scene frames in ``[start, end]`` where ``obj``'s shape-key animation has keys (with the keys of its own
    and its parents' transform animation), when keyed shape keys are all that deform it: the poses the
    animation was made from. None when something else deforms the mesh (an armature, a cache, a modifier that
    can change over time), when it has no shape-key keys, or when fewer than two fall in the range.

    Between its keys a shape-key animation is a blend of two poses, not a pose: a limb turning between two keys
    shrinks toward the chord, and a clip imported at another frame rate than its own (a 26.67 fps glTF in a
    27 fps scene) is made of such blends on nearly every frame, which changes the skeleton found from it.
    """
    keys = getattr(obj.data, "shape_keys", None)
    if keys is None:
        return None
    if any(m.show_viewport and m.type not in STATIC_MODIFIERS for m in obj.modifiers):
        return None
    times = [point.co[0] for curve in _fcurves(keys) for point in curve.keyframe_points]
    if not times:
        return None
    owner = obj
    while owner is not None:  # the object's (and its parents') own keys, which move it between the shape keys
        times += [point.co[0] for curve in _fcurves(owner) for point in curve.keyframe_points]
        owner = owner.parent
    inside = np.unique(np.round(np.asarray(times, dtype=np.float64), 4))
    inside = inside[(inside >= start - 1e-4) & (inside <= end + 1e-4)]
    return [float(t) for t in inside] if len(inside) >= 2 else None


def sample_frames(obj: bpy.types.Object, start: int, end: int, step: int, at_keys: bool = True) -> list[float]:
    """The frames Rig Sequence reads: with ``at_keys``, a shape-key animation's own keys in ``[start, end]``
    (every ``step``-th, and the last; :func:`shape_key_frames`), else (or when there are none) the scene frames
    ``start, start + step, ..., end`` (:func:`frame_list`)."""
    frames = frame_list(start, end, step)
    keyed = shape_key_frames(obj, start, end) if at_keys else None
    if keyed is None:
        return frames
    picked = keyed[::step]
    if picked[-1] != keyed[-1]:
        picked.append(keyed[-1])
    return picked


def topology_modifiers(obj: bpy.types.Object) -> list[str]:
    """``'name' (Type)`` of ``obj``'s viewport-enabled modifiers that can change its topology over time."""
    return [f"'{m.name}' ({m.type.replace('_', ' ').title()})" for m in obj.modifiers
            if m.type in TOPOLOGY_MODIFIERS and m.show_viewport]


def _topology_hint(obj: bpy.types.Object) -> str:
    """What to do about a topology change: generative modifiers can be applied, disabled or waited out; a mesh
    cache (Alembic) reads its topology from its file, which must then be written again."""
    names = topology_modifiers(obj)
    caches = [n for n in names if n.endswith("(Mesh Sequence Cache)")]
    others = [n for n in names if n not in caches]
    hint = "rigging needs the same vertices and faces on every frame"
    if others:
        hint += (f"; the modifier(s) {', '.join(others)} can change them: apply or disable them, or pick frames "
                 "where they are finished")
    if caches:
        hint += (f"; the cache {', '.join(caches)} reads them from its file, whose frames differ: export the "
                 "animation again with one vertex count for the whole clip (modifiers that change the topology, "
                 "such as a remesh, applied before the animation or left out)")
    return hint


def surface_modifiers(obj: bpy.types.Object) -> list:
    """The viewport-enabled modifiers of :data:`SURFACE_MODIFIERS` types that end ``obj``'s stack (after every
    other enabled modifier: the bottom of Blender's modifier panel). What gets rigged is the cage under them, and
    the rigged copy gets them again after its Armature modifier: an artist's subdivision levels stay adjustable,
    and the rig is made on the cage rather than on the subdivided mesh (a new user's Fox: 290 vertices, not
    1,730)."""
    found = []
    for modifier in reversed(obj.modifiers):
        if not modifier.show_viewport:
            continue
        if modifier.type not in SURFACE_MODIFIERS:
            break
        found.append(modifier)
    return found[::-1]


def buried_subdivision(obj: bpy.types.Object) -> str | None:
    """A note when a Subdivision Surface is followed by another enabled modifier (so it is not among the
    :func:`surface_modifiers` and the subdivided mesh is what gets rigged), else None."""
    enabled = [m for m in obj.modifiers if m.show_viewport]
    kept = set(surface_modifiers(obj))
    for i, modifier in enumerate(enabled):
        if modifier.type in SURFACE_MODIFIERS and modifier not in kept:
            after = enabled[i + 1]
            return (f"the Subdivision Surface '{modifier.name}' comes before '{after.name}' in the modifier stack, so "
                    f"the subdivided mesh is rigged and the copy keeps its viewport level only; move it to the "
                    "bottom of the stack to rig the cage under it and keep it on the rigged copy")
    return None


@contextmanager
def cage_of(obj: bpy.types.Object):
    """Evaluate ``obj`` without its :func:`surface_modifiers` inside the block (switched back on after it,
    whatever happens in it)."""
    switched = surface_modifiers(obj)
    for modifier in switched:
        modifier.show_viewport = False
    try:
        yield switched
    finally:
        for modifier in switched:
            modifier.show_viewport = True


def object_left_axis(obj: bpy.types.Object) -> list[float]:
    """The object's own X axis in world space (unit length), sent as the backend's ``left_axis`` (read on the
    anchor frame: :attr:`ExportedFrames.left_axis`): by Blender's convention a character is modelled facing -Y
    with its left at +X, so a turned object keeps its skeleton and its ``.L`` / ``.R`` names (they follow the
    object, not the world)."""
    axis = obj.matrix_world.to_3x3().col[0]
    return [float(a) for a in axis.normalized()] if axis.length > 1e-12 else [1.0, 0.0, 0.0]


def check_exportable(obj: bpy.types.Object | None) -> None:
    """Raise ExportError unless ``obj`` is an object whose evaluated form is a mesh."""
    if obj is None:
        raise ExportError("no active object: select the animated mesh to rig")
    if obj.type != "MESH":
        kind = obj.type.lower().replace("_", " ")
        article = "an" if kind[:1] in "aeiou" else "a"
        raise ExportError(f"'{obj.name}' is not a mesh (it is {article} {kind} object); select a mesh")


def export_frames(context: bpy.types.Context, obj: bpy.types.Object, frames: list[float]) -> ExportedFrames:
    """Read the evaluated mesh of ``obj`` at each of ``frames`` (shape keys, modifiers, caches applied).

    The scene's current frame is restored afterwards.

    Raises:
        ExportError: a non-mesh or empty object, fewer than two frames, or a topology change (naming the
            first frame whose vertex count or connectivity differs from the anchor's).
    """
    return convert.run_to_end(export_frames_stepwise(context, obj, frames))


def export_frames_stepwise(context: bpy.types.Context, obj: bpy.types.Object,
                           frames: list[float]) -> Generator[int, None, ExportedFrames]:
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
    parent = kept_parent(obj)
    parent_matrices = None if parent is None else np.empty((len(frames), 4, 4), dtype=np.float64)
    left_axis: list[float] | None = None
    try:
        for index, frame in enumerate(frames):
            set_scene_frame(scene, frame)
            with cage_of(obj):  # a Subdivision Surface on top stays out: the cage is rigged
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
                                                  f"{len(mesh.polygons)} faces at frame {frame_text(frame)} (the first "
                                                  f"frame) but {len(obj.data.vertices)} vertices before modifiers; "
                                                  + _topology_hint(obj))
                            raise ExportError(f"'{obj.name}' has {n_verts} vertices and {len(mesh.polygons)} faces at "
                                              f"frame {frame_text(frame)}; need a mesh with faces")
                        anchor_loops = loops
                        mesh.calc_loop_triangles()
                        faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
                        mesh.loop_triangles.foreach_get("vertices", faces)
                        faces = faces.reshape(-1, 3)
                    else:
                        n_anchor = verts.shape[1]
                        if n_verts != n_anchor:
                            raise ExportError(f"topology changes at frame {frame_text(frame)}: {n_verts} vertices, "
                                              f"the anchor frame {frame_text(frames[0])} has {n_anchor}; "
                                              + _topology_hint(obj))
                        if loops.shape != anchor_loops.shape or not np.array_equal(loops, anchor_loops):
                            raise ExportError(f"topology changes at frame {frame_text(frame)}: the faces differ from "
                                              f"the anchor frame {frame_text(frames[0])}; " + _topology_hint(obj))
                    co = np.empty(n_verts * 3, dtype=np.float32)
                    mesh.vertices.foreach_get("co", co)
                    world = np.array(evaluated.matrix_world, dtype=np.float64)
                    if index == 0:
                        left_axis = object_left_axis(evaluated)
                    if parent is not None:
                        parent_matrices[index] = np.array(parent.evaluated_get(depsgraph).matrix_world)
                finally:
                    evaluated.to_mesh_clear()
            if index == 0:
                anchor_local = co.copy()
            else:
                local_change = max(local_change, float(np.abs(co - anchor_local).max()))
            with np.errstate(invalid="ignore", over="ignore"):  # NaN / Inf are named just below
                co = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
            if not np.isfinite(co).all():
                raise ExportError(f"'{obj.name}' has NaN or infinite vertex positions at frame {frame_text(frame)}")
            largest = float(np.abs(co).max()) if len(co) else 0.0
            if largest > MAX_ABS_COORDINATE:
                raise ExportError(f"'{obj.name}' has vertex coordinates of {largest:.3g} at frame {frame_text(frame)}; "
                                  f"beyond {MAX_ABS_COORDINATE:.0e} they overflow single precision: rescale the mesh "
                                  "(wrong unit or a stray vertex?)")
            if verts is None:
                verts = np.empty((len(frames), len(co), 3), dtype=np.float32)
            verts[index] = co
            yield index + 1
    finally:
        scene.frame_set(original_frame, subframe=original_subframe)
    step = float(np.median(np.diff(np.asarray(frames, dtype=np.float64))))
    fps = scene.render.fps / scene.render.fps_base / step
    return ExportedFrames(verts=verts, faces=faces, frames=list(frames), fps=float(fps),
                          name=obj.name, local_change=local_change, parent_matrices=parent_matrices,
                          left_axis=left_axis)


# -- is the input worth rigging? --------------------------------------------------------------------

MAX_ABS_COORDINATE = 1e12  # the backend refuses larger coordinates (backend.sequence.MAX_ABS_COORDINATE)
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
    return dataclasses.replace(exported, verts=exported.verts[:count], frames=exported.frames[:count],
                               parent_matrices=None if exported.parent_matrices is None
                               else exported.parent_matrices[:count])


def screen_motion(exported: ExportedFrames) -> tuple[ExportedFrames, list[str]]:
    """The frames worth rigging and warnings about the input.

    Raises ExportError when nothing moves; drops trailing frames that repeat the last moving one (the
    Action holds its last key, so playback is the same) with a warning naming them; warns when the mesh
    does not deform (object-level motion only: a rig adds nothing to keys on the object).
    """
    check = check_motion(exported)
    frames = exported.frames
    if check.last_moving == 0:
        raise ExportError(f"'{exported.name}' does not move over frames {frame_text(frames[0])}-"
                          f"{frame_text(frames[-1])}: nothing to rig (is the animation outside this frame range? "
                          "'Use Animated Range' finds it)")
    warnings = []
    if check.last_moving < len(frames) - 1:
        end = frames[check.last_moving]
        warnings.append(f"'{exported.name}' stops moving at frame {frame_text(end)}: frames "
                        f"{frame_text(frames[check.last_moving + 1])}-{frame_text(frames[-1])} repeat it and were "
                        "left out ('Use Animated Range' sets the range to the animation)")
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
