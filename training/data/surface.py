"""Closed creature surfaces from implicit body parts.

Every body part is a signed distance function (negative inside): tapered capsules along bones,
ellipsoids for bodies and heads, and thick triangles ("slabs") for wings, fins and membranes. Parts
are merged one after another with a polynomial smooth minimum whose blend width is set per part,
so a finger blends into its palm with a small fillet and a thigh into the hips with a large one,
while parts that are farther apart than their blend width stay separate. The field is sampled on
a regular grid (only inside each part's bounding box), meshed with marching cubes and decimated
with quadric edge collapse to the requested vertex count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


class SurfaceError(RuntimeError):
    """Raised when a body plan cannot be turned into a usable closed mesh."""


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


@dataclass
class Capsule:
    """A tapered capsule: the segment ``a -> b`` swept by a radius going linearly from ``ra`` to ``rb``.

    Attributes:
        a, b: float ``[3]`` end points.
        ra, rb: radii at ``a`` and ``b``.
        owners: joints whose bones this part's surface follows (used for skinning).
        blend: smooth-union width with the parts built before it.
    """

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float
    owners: tuple[int, ...] = ()
    blend: float = 0.0

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Approximate signed distance ``[N]`` of points ``p [N, 3]`` (exact zero set)."""
        ab = self.b - self.a
        l2 = max(float(ab @ ab), 1e-12)
        t = np.clip(((p - self.a) @ ab) / l2, 0.0, 1.0)
        closest = self.a + t[:, None] * ab
        return np.linalg.norm(p - closest, axis=1) - (self.ra + (self.rb - self.ra) * t)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """A sphere cover ``centers [S, 3], radii [S]`` used for clearance checks."""
        length = float(np.linalg.norm(self.b - self.a))
        n = int(np.clip(np.ceil(length / max(0.5 * min(self.ra, self.rb), 1e-6)), 2, 40))
        t = np.linspace(0.0, 1.0, n)
        return self.a + t[:, None] * (self.b - self.a), self.ra + (self.rb - self.ra) * t

    def transformed(self, fn) -> "Capsule":
        return Capsule(fn(self.a), fn(self.b), self.ra, self.rb, self.owners, self.blend)

    def scaled(self, s: float) -> "Capsule":
        return Capsule(self.a * s, self.b * s, self.ra * s, self.rb * s, self.owners, self.blend * s)


@dataclass
class Ellipsoid:
    """An ellipsoid with semi-axes ``radii`` along the columns of ``rotation``.

    Attributes:
        center: float ``[3]``.
        radii: float ``[3]`` semi-axes.
        rotation: float ``[3, 3]`` whose columns are the ellipsoid axes in world space.
    """

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    owners: tuple[int, ...] = ()
    blend: float = 0.0

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """First-order signed distance ``[N]`` (exact zero set, accurate near the surface)."""
        q = (p - self.center) @ self.rotation  # local coordinates [N, 3]
        r = np.asarray(self.radii, dtype=np.float64)
        k0 = np.linalg.norm(q / r, axis=1)
        k1 = np.linalg.norm(q / (r * r), axis=1)
        safe = k1 > 1e-12
        d = np.empty(len(q))
        d[safe] = (k0[safe] - 1.0) * k0[safe] / k1[safe]
        d[~safe] = -float(r.min())
        return d

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.abs(self.rotation) @ np.asarray(self.radii, dtype=np.float64)
        return self.center - half, self.center + half

    def spheres(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.radii)
        long_axis = self.rotation[:, order[2]]
        long_r = float(self.radii[order[2]])
        small_r = float(self.radii[order[0]])
        n = int(np.clip(np.ceil(2 * long_r / max(0.5 * small_r, 1e-6)), 2, 30))
        s = np.linspace(-1.0, 1.0, n)
        # Spheres along the long axis, radius following the ellipse's width there (under-covers a bit).
        radius = np.sqrt(np.maximum(1.0 - s * s, 0.02)) * small_r
        return self.center + (s * long_r)[:, None] * long_axis, radius

    def transformed(self, fn, rot: np.ndarray | None = None) -> "Ellipsoid":
        rotation = self.rotation if rot is None else rot @ self.rotation
        return Ellipsoid(fn(self.center), self.radii.copy(), rotation, self.owners, self.blend)

    def scaled(self, s: float) -> "Ellipsoid":
        return Ellipsoid(self.center * s, self.radii * s, self.rotation, self.owners, self.blend * s)


@dataclass
class Slab:
    """A triangle ``tri [3, 3]`` thickened to half-thickness ``thickness`` (wings, fins, membranes)."""

    tri: np.ndarray
    thickness: float
    owners: tuple[int, ...] = ()
    blend: float = 0.0

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Distance ``[N]`` to the triangle minus the half-thickness."""
        return triangle_distance(p, self.tri) - self.thickness

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tri.min(axis=0) - self.thickness, self.tri.max(axis=0) + self.thickness

    def spheres(self) -> tuple[np.ndarray, np.ndarray]:
        u, v = np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 6))
        keep = (u + v) <= 1.0
        u, v = u[keep], v[keep]
        pts = self.tri[0] + u[:, None] * (self.tri[1] - self.tri[0]) + v[:, None] * (self.tri[2] - self.tri[0])
        return pts, np.full(len(pts), self.thickness)

    def transformed(self, fn) -> "Slab":
        return Slab(np.stack([fn(t) for t in self.tri]), self.thickness, self.owners, self.blend)

    def scaled(self, s: float) -> "Slab":
        return Slab(self.tri * s, self.thickness * s, self.owners, self.blend * s)


Primitive = Capsule | Ellipsoid | Slab


def triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Unsigned distance ``[N]`` from points ``p [N, 3]`` to the triangle ``tri [3, 3]``."""
    a, b, c = (np.asarray(t, dtype=np.float64) for t in tri)
    n = np.cross(b - a, c - a)
    n_len = np.linalg.norm(n)
    best = np.full(len(p), np.inf)
    for s0, s1 in ((a, b), (b, c), (c, a)):  # distance to the three edges
        e = s1 - s0
        t = np.clip(((p - s0) @ e) / max(float(e @ e), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (s0 + t[:, None] * e), axis=1))
    if n_len < 1e-12:
        return best
    n = n / n_len
    # Inside test: the projection lies on the inner side of all three edges.
    inside = np.ones(len(p), dtype=bool)
    for s0, s1 in ((a, b), (b, c), (c, a)):
        inside &= (np.cross(s1 - s0, p - s0) @ n) >= 0.0
    plane = np.abs((p - a) @ n)
    return np.where(inside, plane, best)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two distance fields with blend width ``k`` (``k = 0``: min)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


# --------------------------------------------------------------------------------------------
# Meshing
# --------------------------------------------------------------------------------------------


@dataclass
class SurfaceConfig:
    """How a body plan is meshed.

    Attributes:
        max_cells: grid cells along the longest side of the creature's box (upper bound).
        min_cells: grid cells along the longest side (lower bound).
        cells_per_radius: grid cells across the thinnest part's radius that the grid aims for.
        min_radius_cells: parts thinner than this many cells are thickened so they stay connected.
        target_verts: vertex count after decimation.
        verts_range: bounds that retried decimations stay within.
    """

    max_cells: int = 200
    min_cells: int = 80
    cells_per_radius: float = 1.6
    min_radius_cells: float = 1.25
    target_verts: int = 4000
    verts_range: tuple[int, int] = (4, 1_000_000)


@dataclass
class SurfaceMesh:
    """A closed triangle mesh: ``verts float32 [V, 3]``, ``faces int32 [F, 3]`` (outward normals)."""

    verts: np.ndarray
    faces: np.ndarray
    voxel: float  # grid spacing used by marching cubes


def min_feature_radius(parts: list[Primitive]) -> float:
    """The thinnest radius/half-thickness among the parts."""
    radii = []
    for p in parts:
        if isinstance(p, Capsule):
            radii.append(min(p.ra, p.rb))
        elif isinstance(p, Ellipsoid):
            radii.append(float(np.min(p.radii)))
        else:
            radii.append(p.thickness)
    return float(min(radii))


def choose_voxel(parts: list[Primitive], config: SurfaceConfig) -> float:
    """Grid spacing: fine enough for the thinnest part, within ``[min_cells, max_cells]`` cells."""
    lo, hi = parts_bounds(parts)
    extent = float((hi - lo).max())
    voxel = min_feature_radius(parts) / config.cells_per_radius
    return float(np.clip(voxel, extent / config.max_cells, extent / config.min_cells))


def thickened(parts: list[Primitive], min_radius: float) -> list[Primitive]:
    """Copies of ``parts`` whose radii / half-thickness are at least ``min_radius``."""
    out: list[Primitive] = []
    for p in parts:
        if isinstance(p, Capsule):
            out.append(Capsule(p.a, p.b, max(p.ra, min_radius), max(p.rb, min_radius), p.owners, p.blend))
        elif isinstance(p, Ellipsoid):
            out.append(Ellipsoid(p.center, np.maximum(p.radii, min_radius), p.rotation, p.owners, p.blend))
        else:
            out.append(Slab(p.tri, max(p.thickness, min_radius), p.owners, p.blend))
    return out


def prepare_parts(parts: list[Primitive], config: SurfaceConfig) -> tuple[list[Primitive], float]:
    """The grid spacing for ``parts`` and the parts thickened to be resolvable on that grid."""
    voxel = choose_voxel(parts, config)
    return thickened(parts, config.min_radius_cells * voxel), voxel


def parts_bounds(parts: list[Primitive]) -> tuple[np.ndarray, np.ndarray]:
    los, his = zip(*(p.bounds() for p in parts))
    return np.min(los, axis=0), np.max(his, axis=0)


def sample_field(parts: list[Primitive], voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the smooth union of ``parts`` on a grid.

    Returns:
        ``field float32 [X, Y, Z]`` (negative inside) and the grid origin ``[3]``.
    """
    lo, hi = parts_bounds(parts)
    pad = 3 * voxel
    origin = lo - pad
    shape = np.ceil((hi + pad - origin) / voxel).astype(int) + 1
    far = float(4 * voxel + max(p.blend for p in parts))
    grid = np.full(tuple(shape), far, dtype=np.float32)
    for part in parts:
        margin = 2.0 * part.blend + 2.0 * voxel
        plo, phi = part.bounds()
        i0 = np.maximum(np.floor((plo - margin - origin) / voxel).astype(int), 0)
        i1 = np.minimum(np.ceil((phi + margin - origin) / voxel).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        axes = [origin[d] + voxel * np.arange(i0[d], i1[d]) for d in range(3)]
        gx, gy, gz = np.meshgrid(*axes, indexing="ij")
        pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
        d = part.sdf(pts).reshape(gx.shape)
        block = grid[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]]
        grid[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]] = smooth_min(block, d, part.blend)
    return grid, origin


def largest_components(verts: np.ndarray, faces: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """Faces ``[F', 3]`` of the connected components holding at least ``min_fraction`` of all faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)
    if n_comp == 1:
        return faces
    face_label = label[faces[:, 0]]
    counts = np.bincount(face_label, minlength=n_comp)
    keep = counts >= max(min_fraction * len(faces), 1)
    dropped = int(counts[~keep].sum())
    if dropped:
        logger.debug("dropping %d faces in %d small components", dropped, int((~keep).sum()))
    return faces[keep[face_label]]


def compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unreferenced vertices; returns re-indexed ``(verts, faces)``."""
    used = np.unique(faces)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume of a closed mesh (positive when normals point outward)."""
    tri = np.asarray(verts, dtype=np.float64)[faces]
    return float(np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def mesh_parts(parts: list[Primitive], config: SurfaceConfig | None = None) -> SurfaceMesh:
    """Mesh the smooth union of ``parts`` and decimate it to ``config.target_verts`` vertices.

    Raises:
        SurfaceError: when the field has no surface or the result is degenerate.
    """
    from skimage.measure import marching_cubes
    import fast_simplification

    config = config or SurfaceConfig()
    if not parts:
        raise SurfaceError("a body plan without parts has no surface")
    parts, voxel = prepare_parts(parts, config)
    grid, origin = sample_field(parts, voxel)
    if grid.min() >= 0:
        raise SurfaceError("the implicit field is positive everywhere (no inside)")
    verts, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(voxel, voxel, voxel),
                                        gradient_direction="ascent", allow_degenerate=False)
    verts = verts + origin
    faces = largest_components(verts, faces.astype(np.int64))
    verts, faces = compact(verts, faces)
    target_faces = 2 * config.target_verts - 4  # a closed genus-0 mesh has V = F / 2 + 2
    if len(faces) > target_faces * 1.05:
        full_verts, full_faces = verts, faces
        lo, hi = 2 * config.verts_range[0], 2 * config.verts_range[1] - 4
        # quadric decimation rarely pinches a sheet (an edge of four triangles): retry around the target
        for attempt, offset in enumerate((0.0, -0.03, 0.03, -0.06, 0.06, -0.09, 0.09, -0.12)):
            count = int(np.clip(target_faces * (1.0 + offset), lo, hi))
            verts, faces = fast_simplification.simplify(
                full_verts.astype(np.float32), full_faces.astype(np.int32),
                target_count=min(count, len(full_faces)), agg=max(7.0 - 1.0 * attempt, 1.0))
            verts, faces = compact(np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64))
            faces = _drop_degenerate(verts, faces)
            verts, faces = compact(verts, faces)
            if is_closed(faces):
                break
        else:
            logger.debug("decimated mesh is not closed after 8 tries; %d open or shared edges", open_edges(faces))
    faces = _drop_degenerate(verts, faces)
    verts, faces = compact(verts, faces)
    if len(faces) < 4:
        raise SurfaceError("meshing produced fewer than 4 faces")
    if signed_volume(verts, faces) < 0:  # normals must point outward
        faces = faces[:, ::-1]
    return SurfaceMesh(verts.astype(np.float32), np.ascontiguousarray(faces, dtype=np.int32), voxel)


def _drop_degenerate(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces without repeated corners and without duplicates (both copies of a doubled face go)."""
    same = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    faces = faces[~same]
    _, inverse, counts = np.unique(np.sort(faces, axis=1), axis=0, return_inverse=True, return_counts=True)
    return faces[counts[inverse.ravel()] == 1]


def open_edges(faces: np.ndarray) -> int:
    """Number of edges not shared by exactly two triangles (0 for a closed 2-manifold)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts != 2).sum())


def is_closed(faces: np.ndarray) -> bool:
    """Whether every edge of ``faces [F, 3]`` is shared by exactly two triangles."""
    return open_edges(faces) == 0
