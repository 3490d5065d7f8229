"""Export the evaluated mesh of an object at a range of frames (world space) for the backend."""

from __future__ import annotations

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
    """

    verts: np.ndarray
    faces: np.ndarray
    frames: list[int]
    fps: float
    name: str


def frame_list(start: int, end: int, step: int) -> list[int]:
    """Scene frames ``start, start + step, ... <= end``."""
    if step < 1:
        raise ExportError(f"frame step must be at least 1, got {step}")
    if end < start:
        raise ExportError(f"frame range is empty: end {end} is before start {start}")
    return list(range(int(start), int(end) + 1, int(step)))


def check_exportable(obj: bpy.types.Object | None) -> None:
    """Raise ExportError unless ``obj`` is an object whose evaluated form is a mesh."""
    if obj is None:
        raise ExportError("no active object: select the animated mesh to rig")
    if obj.type != "MESH":
        raise ExportError(f"'{obj.name}' is not a mesh (it is a {obj.type.lower()} object); select a mesh")


def export_frames(context: bpy.types.Context, obj: bpy.types.Object, frames: list[int]) -> ExportedFrames:
    """Read the evaluated mesh of ``obj`` at each of ``frames`` (shape keys, modifiers, caches applied).

    The scene's current frame is restored afterwards.

    Raises:
        ExportError: a non-mesh or empty object, fewer than two frames, or a topology change (naming the
            first frame whose vertex count or connectivity differs from the anchor's).
    """
    check_exportable(obj)
    if len(frames) < 2:
        raise ExportError(f"need at least 2 frames to rig a sequence, the range gives {len(frames)}; "
                          "widen the frame range or lower the step")
    scene = context.scene
    original_frame, original_subframe = scene.frame_current, scene.frame_subframe
    verts_per_frame: list[np.ndarray] = []
    anchor_loops: np.ndarray | None = None
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
                        raise ExportError(f"'{obj.name}' has {n_verts} vertices and {len(mesh.polygons)} faces at "
                                          f"frame {frame}; need a mesh with faces")
                    anchor_loops = loops
                    mesh.calc_loop_triangles()
                    faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
                    mesh.loop_triangles.foreach_get("vertices", faces)
                    faces = faces.reshape(-1, 3)
                else:
                    n_anchor = verts_per_frame[0].shape[0]
                    if n_verts != n_anchor:
                        raise ExportError(f"topology changes at frame {frame}: {n_verts} vertices, the anchor frame "
                                          f"{frames[0]} has {n_anchor}; rigging needs constant topology")
                    if loops.shape != anchor_loops.shape or not np.array_equal(loops, anchor_loops):
                        raise ExportError(f"topology changes at frame {frame}: the faces differ from the anchor frame "
                                          f"{frames[0]}; rigging needs constant topology")
                co = np.empty(n_verts * 3, dtype=np.float32)
                mesh.vertices.foreach_get("co", co)
            finally:
                evaluated.to_mesh_clear()
            world = np.array(evaluated.matrix_world, dtype=np.float64)
            co = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
            if not np.isfinite(co).all():
                raise ExportError(f"'{obj.name}' has NaN or infinite vertex positions at frame {frame}")
            verts_per_frame.append(co.astype(np.float32))
    finally:
        scene.frame_set(original_frame, subframe=original_subframe)
    step = frames[1] - frames[0]
    fps = scene.render.fps / scene.render.fps_base / step
    return ExportedFrames(verts=np.stack(verts_per_frame), faces=faces, frames=list(frames), fps=float(fps),
                          name=obj.name)
