"""The MeshSequence data contract and its validation.

A sequence is ``K`` frames of one triangle mesh with constant topology; frame 0 is the anchor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class SequenceError(ValueError):
    """Raised when an input sequence (or file holding one) breaks the data contract."""


MAX_ABS_COORDINATE = 1e12
"""Largest vertex coordinate magnitude accepted: squared lengths and cross products (normals, areas,
distances) of coordinates beyond it overflow float32 (max 3.4e38) once summed over many vertices."""

# Extras whose first axis is the frame axis (``[K, ...]``): they follow a frame selection.
PER_FRAME_EXTRAS = ("joints", "times", "skin_mats", "bone_transforms")


@dataclass
class MeshSequence:
    """An animated triangle mesh with constant topology.

    Attributes:
        verts: float32 ``[K, V, 3]`` vertex positions per frame; frame 0 is the anchor.
        faces: int32 ``[F, 3]`` triangle vertex indices shared by every frame.
        fps: frames per second of the clip, if known.
        name: a readable name (file stem, object name).
        extras: optional side data a loader found (e.g. ground-truth ``joints [K,J,3]``,
            ``parents [J]``, ``joint_names``, ``weights [V,J]``); never required.
    """

    verts: np.ndarray
    faces: np.ndarray
    fps: float | None = None
    name: str = "sequence"
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verts, self.faces = validate_arrays(self.verts, self.faces, self.name)

    @property
    def n_frames(self) -> int:
        return int(self.verts.shape[0])

    @property
    def n_verts(self) -> int:
        return int(self.verts.shape[1])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def anchor(self) -> np.ndarray:
        """float32 ``[V, 3]`` anchor-frame vertices."""
        return self.verts[0]

    def subset(self, frames: slice | np.ndarray) -> "MeshSequence":
        """A new sequence holding only the chosen frames (the first chosen frame becomes the anchor)."""
        verts = self.verts[frames]
        extras = dict(self.extras)
        for key in PER_FRAME_EXTRAS:
            if key in extras and np.ndim(extras[key]) >= 1 and len(extras[key]) == self.n_frames:
                extras[key] = np.asarray(extras[key])[frames]
        return MeshSequence(verts, self.faces, self.fps, self.name, extras)


def integer_valued(values: np.ndarray) -> np.ndarray | None:
    """``values`` as an integer array when they are integers or integer-valued floats, else None."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values
    if np.issubdtype(values.dtype, np.floating) and np.all(np.mod(values, 1) == 0):
        return values.astype(np.int64)
    return None


def validate_arrays(verts, faces, name: str = "sequence") -> tuple[np.ndarray, np.ndarray]:
    """Check arrays against the MeshSequence contract and return them as float32/int32.

    Args:
        verts: ``[K, V, 3]`` (a single ``[V, 3]`` frame is accepted and gets K = 1), or a list of
            per-frame ``[V_k, 3]`` arrays (rejected if the vertex counts differ).
        faces: ``[F, 3]`` vertex indices.
    Raises:
        SequenceError: naming the problem.
    """
    if isinstance(verts, (list, tuple)):
        if len(verts) == 0:
            raise SequenceError(f"{name}: the sequence has no frames")
        counts = [np.asarray(v).shape[0] if np.ndim(v) == 2 else -1 for v in verts]
        for k, c in enumerate(counts):
            if c != counts[0]:
                raise SequenceError(
                    f"{name}: vertex count changes between frames: frame 0 has {counts[0]} vertices, "
                    f"frame {k} has {c} (topology must be constant)")
        verts = np.stack([np.asarray(v) for v in verts])
    verts = np.asarray(verts)
    if verts.ndim == 2:
        verts = verts[None]
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise SequenceError(f"{name}: verts must have shape [K, V, 3], got {list(verts.shape)}")
    if verts.shape[0] < 1:
        raise SequenceError(f"{name}: the sequence has no frames")
    if verts.shape[1] < 4:
        raise SequenceError(f"{name}: a mesh needs at least 4 vertices, got {verts.shape[1]}")
    if not np.issubdtype(verts.dtype, np.number):
        raise SequenceError(f"{name}: verts must be numeric, got dtype {verts.dtype}")
    verts = verts.astype(np.float32, copy=False)
    finite = np.isfinite(verts).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise SequenceError(f"{name}: vertex positions contain NaN or Inf (first in frame {bad})")

    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[-1] != 3:
        if faces.size == 0:
            raise SequenceError(f"{name}: the mesh has no faces")
        raise SequenceError(f"{name}: faces must have shape [F, 3] (triangles), got {list(faces.shape)}")
    if faces.shape[0] < 1:
        raise SequenceError(f"{name}: the mesh has no faces")
    as_int = integer_valued(faces)
    if as_int is None:
        raise SequenceError(f"{name}: face indices must be integers, got dtype {faces.dtype}")
    faces = as_int
    n_verts = verts.shape[1]
    if faces.min() < 0 or faces.max() >= n_verts:
        raise SequenceError(
            f"{name}: face index out of range: indices span [{int(faces.min())}, {int(faces.max())}] "
            f"but the mesh has {n_verts} vertices")
    faces = faces.astype(np.int32, copy=False)

    largest = float(np.abs(verts).max())
    if largest > MAX_ABS_COORDINATE:
        frame = int(np.flatnonzero(np.abs(verts).max(axis=(1, 2)) > MAX_ABS_COORDINATE)[0])
        raise SequenceError(
            f"{name}: vertex coordinates reach {largest:.3g} (first in frame {frame}); values beyond "
            f"{MAX_ABS_COORDINATE:.0e} overflow single precision in normals and distances: rescale the mesh "
            "(wrong unit or corrupt file?)")
    extent = verts[0].max(axis=0) - verts[0].min(axis=0)
    if float(extent.max()) <= 1e-8 * max(1.0, float(np.abs(verts[0]).max())):
        raise SequenceError(f"{name}: the anchor frame's bounding box has zero size (degenerate scale)")
    return verts, faces


def colocated_representatives(verts: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Vertices that share one position on every frame (seams of a flat-shaded or UV-split mesh), grouped.

    Trajectories are quantised on a grid of ``tol`` times the anchor's bounding-box diagonal and compared
    whole (all frames at once), so two vertices are grouped when they coincide (to the grid) on every
    frame. Exact duplicates, the usual case, always group; vertices a hair apart may fall on either side
    of a grid line.

    Args:
        verts: float ``[K, V, 3]`` (or one frame ``[V, 3]``).
        tol: grid step relative to the anchor box diagonal.
    Returns:
        int64 ``[V]``: for each vertex, the lowest index of its group (itself when it is alone), so
        ``rep[v] == v`` marks the representatives.
    """
    x = np.asarray(verts)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"verts must have shape [K, V, 3], got {list(x.shape)}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    anchor = np.asarray(x[0], dtype=np.float64)
    diag = float(np.linalg.norm(np.ptp(anchor, axis=0)))
    step = tol * max(diag, 1e-30)
    # vertices that coincide on every frame coincide on the anchor: group by the anchor first, then compare
    # whole trajectories only for the vertices that share an anchor position (no [V, 3K] key table)
    _, first, inverse = np.unique(np.round(anchor / step).astype(np.int64), axis=0, return_index=True,
                                  return_inverse=True)
    inverse = inverse.reshape(-1)
    rep = first[inverse].astype(np.int64)
    shared = np.flatnonzero(np.bincount(inverse)[inverse] > 1)
    if x.shape[0] == 1 or len(shared) == 0:
        return rep
    keys = np.round(np.asarray(x[:, shared], dtype=np.float64).transpose(1, 0, 2).reshape(len(shared), -1)
                    / step).astype(np.int64)  # [S, 3K]
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    rep[shared] = shared[first[inverse.reshape(-1)]]
    return rep
