"""Surface sampling with correspondences across frames (paper §4 "Setup", Eq. 5 and Eq. 33).

Points are drawn once on the anchor by triangle-area importance; each sample is a (face, barycentric)
pair, and the same pairs evaluated on every frame give pose-consistent correspondences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SurfaceSamples:
    """Samples on a triangle mesh: ``face_index int64 [N]`` and ``barycentric float32 [N, 3]``."""

    face_index: np.ndarray
    barycentric: np.ndarray

    def __len__(self) -> int:
        return int(self.face_index.shape[0])


def triangle_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas ``[F]`` of the triangles ``faces [F, 3]`` over ``verts [V, 3]``."""
    tri = np.asarray(verts, dtype=np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(anchor_verts: np.ndarray, faces: np.ndarray, n_points: int, seed: int = 0) -> SurfaceSamples:
    """Draw ``n_points`` samples on the anchor surface by triangle-area importance.

    Args:
        anchor_verts: ``[V, 3]`` anchor-frame vertices.
        faces: ``[F, 3]`` triangles.
        n_points: number of samples N.
        seed: random seed; the same seed gives the same samples.
    """
    areas = triangle_areas(anchor_verts, faces)
    total = areas.sum()
    rng = np.random.default_rng(seed)
    if total <= 0:  # every triangle degenerate: fall back to uniform over faces
        prob = np.full(len(faces), 1.0 / len(faces))
    else:
        prob = areas / total
    face_index = rng.choice(len(faces), size=n_points, p=prob)
    r1, r2 = rng.random(n_points), rng.random(n_points)
    s = np.sqrt(r1)  # uniform on the triangle
    bary = np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1).astype(np.float32)
    return SurfaceSamples(face_index=face_index.astype(np.int64), barycentric=bary)


def barycentric_interpolate(values: np.ndarray, faces: np.ndarray, samples: SurfaceSamples) -> np.ndarray:
    """Interpolate per-vertex values at the samples (Eq. 5 / Eq. 33 for positions, Eq. 6 / 34 for weights).

    Args:
        values: ``[..., V, C]`` per-vertex values (leading axes, e.g. frames, are kept).
        faces: ``[F, 3]``.
    Returns:
        ``[..., N, C]``.
    """
    corner = np.asarray(faces)[samples.face_index]  # [N, 3]
    gathered = np.asarray(values)[..., corner, :]  # [..., N, 3, C]
    return np.einsum("...nrc,nr->...nc", gathered, samples.barycentric.astype(gathered.dtype))


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[..., V, 3]`` for ``verts [..., V, 3]``."""
    verts = np.asarray(verts, dtype=np.float32)
    lead, n_verts = verts.shape[:-2], verts.shape[-2]
    tri = verts[..., faces, :]  # [..., F, 3, 3]
    face_n = np.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])  # area-weighted
    # Scatter-add each face normal to its three corners: one bincount per (frame, axis) row.
    flat = face_n.reshape(-1, face_n.shape[-2], 3)  # [B, F, 3]
    corners = np.asarray(faces).reshape(-1)  # [3F]
    normals = np.empty((flat.shape[0], n_verts, 3), dtype=np.float64)
    for b in range(flat.shape[0]):
        per_corner = np.repeat(flat[b], 3, axis=0)  # [3F, 3], rows in the order of `corners`
        for axis in range(3):
            normals[b, :, axis] = np.bincount(corners, weights=per_corner[:, axis], minlength=n_verts)
    return _unit(normals.reshape(*lead, n_verts, 3))


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit triangle normals ``[..., F, 3]``."""
    tri = np.asarray(verts, dtype=np.float32)[..., faces, :]
    return _unit(np.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]))


def points_on_frames(verts: np.ndarray, faces: np.ndarray, samples: SurfaceSamples) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the samples on every frame.

    Args:
        verts: ``[K, V, 3]`` (or ``[V, 3]``) frames, usually anchor-normalized.
        faces: ``[F, 3]``.
    Returns:
        ``points [K, N, 3]`` and unit ``normals [K, N, 3]`` (smooth: interpolated vertex normals,
        falling back to the triangle normal where those cancel out).
    """
    verts = np.asarray(verts, dtype=np.float32)
    single = verts.ndim == 2
    if single:
        verts = verts[None]
    points = barycentric_interpolate(verts, faces, samples).astype(np.float32)
    normals = barycentric_interpolate(vertex_normals(verts, faces), faces, samples)
    flat = face_normals(verts, faces)[:, samples.face_index]
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.where(length > 1e-6, normals / np.maximum(length, 1e-12), flat).astype(np.float32)
    if single:
        return points[0], normals[0]
    return points, normals


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)
