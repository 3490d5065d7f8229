"""Ground-truth skinning weights by bone heat diffusion (Baran & Popovic 2007, "Pinocchio").

For every joint ``j`` the weights solve the heat equilibrium on the surface

    (-Laplacian + H) w_j = H p_j,

where ``H`` is diagonal with ``H_vv = c / d_v^2``, ``d_v`` the distance from vertex ``v`` to the
nearest bone that can "see" it, and ``p_j[v] = 1`` when that bone belongs to joint ``j``. The
Laplacian is the cotangent Laplacian with lumped (barycentric) vertex areas, so the system
``(L + M H) w_j = M H p_j`` is symmetric positive definite and is factorized once for all joints.

Visibility, which Pinocchio tests by casting rays, comes here from the construction: each vertex
belongs to the body part whose implicit surface it lies on (the part with the smallest signed
distance), and only the bones owning that part can see it. A vertex of the left hand therefore
never gets heat from a bone of the left thigh that happens to be close in space. Heat then
diffuses across joints, giving weights that fall off smoothly along and across bones.

Bones are parent -> child segments and belong to the parent joint (the joint whose transform moves
the segment), as in glTF and Blender rigs; leaf joints (tips) carry no weight. After solving, each
row keeps its ``max_influences`` largest weights (dropping those below ``min_weight``) and is
renormalized onto the simplex.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from .surface import Primitive

logger = logging.getLogger(__name__)


@dataclass
class SkinningConfig:
    """Bone-heat settings.

    Attributes:
        max_influences: non-zero weights kept per vertex (4 as in glTF / game engines).
        min_weight: weights below this are dropped before renormalizing.
        heat: the constant ``c`` in ``H = c / d^2`` (Pinocchio uses 1).
    """

    max_influences: int = 4
    min_weight: float = 0.01
    heat: float = 1.0


@dataclass
class SkinResult:
    """Weights ``float32 [V, J]`` (rows on the simplex) and each vertex's distance to its bone ``[V]``."""

    weights: np.ndarray
    bone_distance: np.ndarray


def bone_segments(joints: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every parent -> child bone: ``owner int [S]`` (the parent joint), ``start [S, 3]``, ``end [S, 3]``."""
    child = np.flatnonzero(np.asarray(parents) >= 0)
    owner = np.asarray(parents)[child].astype(np.int64)
    return owner, joints[owner].astype(np.float64), joints[child].astype(np.float64)


def point_segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distances ``[N, S]`` from ``points [N, 3]`` to the segments ``start -> end`` (``[S, 3]`` each)."""
    ab = end - start  # [S, 3]
    l2 = np.maximum(np.einsum("sd,sd->s", ab, ab), 1e-18)
    ap = points[:, None, :] - start[None, :, :]  # [N, S, 3]
    t = np.clip(np.einsum("nsd,sd->ns", ap, ab) / l2, 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab[None], axis=-1)


def cotangent_laplacian(verts: np.ndarray, faces: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Positive semi-definite cotangent Laplacian ``L [V, V]`` and lumped vertex areas ``[V]``.

    ``L_ij = -(cot a_ij + cot b_ij) / 2`` for an edge ``ij`` (cotangents clamped at 0 so the
    operator satisfies a maximum principle on poor triangles), ``L_ii = -sum_j L_ij``.
    """
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n = len(v)
    rows, cols, vals = [], [], []
    tri = v[f]  # [F, 3, 3]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    for k in range(3):
        i, j, o = f[:, (k + 1) % 3], f[:, (k + 2) % 3], f[:, k]  # edge (i, j) opposite corner o
        e1, e2 = v[i] - v[o], v[j] - v[o]
        cot = np.einsum("fd,fd->f", e1, e2) / np.maximum(area2, 1e-18)
        w = 0.5 * np.clip(cot, 0.0, 1e3)
        rows += [i, j]
        cols += [j, i]
        vals += [w, w]
    W = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    L = sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W
    mass = np.zeros(n)
    for k in range(3):
        np.add.at(mass, f[:, k], area2 / 6.0)
    return L.tocsr(), mass


def prune_weights(weights: np.ndarray, max_influences: int = 4, min_weight: float = 0.01) -> np.ndarray:
    """Keep each row's ``max_influences`` largest entries >= ``min_weight`` and renormalize to sum 1.

    A row left empty keeps its single largest entry.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    V, J = w.shape
    if J > max_influences:
        drop = np.argpartition(-w, max_influences, axis=1)[:, max_influences:]
        np.put_along_axis(w, drop, 0.0, axis=1)
    top = w.argmax(axis=1)
    w[w < min_weight] = 0.0
    empty = w.sum(axis=1) <= 0
    w[empty, top[empty]] = 1.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def vertex_owner_part(verts: np.ndarray, parts: list[Primitive]) -> np.ndarray:
    """Index ``[V]`` of the part whose surface each vertex lies on (smallest signed distance)."""
    d = np.stack([p.sdf(np.asarray(verts, dtype=np.float64)) for p in parts])  # [P, V]
    return d.argmin(axis=0)


def bone_heat_weights(verts: np.ndarray, faces: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                      parts: list[Primitive], config: SkinningConfig | None = None) -> SkinResult:
    """Bone-heat skinning weights for a rest mesh built from ``parts``.

    Args:
        verts: float ``[V, 3]`` rest vertices; ``faces`` int ``[F, 3]``.
        joints: float ``[J, 3]`` rest joints; ``parents`` int ``[J]``.
        parts: the implicit parts the mesh was built from (their ``owners`` name joints).
    Returns:
        :class:`SkinResult` with ``weights float32 [V, J]``: rows sum to 1, at most
        ``max_influences`` non-zero entries.
    """
    config = config or SkinningConfig()
    verts = np.asarray(verts, dtype=np.float64)
    J = len(parents)
    owner, start, end = bone_segments(np.asarray(joints, dtype=np.float64), parents)
    if len(owner) == 0:
        raise ValueError("a skeleton with a single joint has no bones to skin to")
    dist = point_segment_distance(verts, start, end)  # [V, S]

    # Visibility: only the bones of the part a vertex lies on.
    part_of = vertex_owner_part(verts, parts)
    visible = np.zeros((len(parts), len(owner)), dtype=bool)
    for i, p in enumerate(parts):
        visible[i] = np.isin(owner, p.owners)
    no_bone = ~visible.any(axis=1)
    visible[no_bone] = True  # a part owned only by leaves: every bone may see it
    masked = np.where(visible[part_of], dist, np.inf)
    nearest = masked.argmin(axis=1)
    d = np.maximum(masked[np.arange(len(verts)), nearest], 1e-6 * float(np.ptp(verts, axis=0).max()))
    target_joint = owner[nearest]

    L, mass = cotangent_laplacian(verts, faces)
    heat = config.heat / (d * d)
    A = (L + sp.diags(mass * heat)).tocsc()
    active = np.unique(target_joint)
    rhs = np.zeros((len(verts), len(active)))
    col = np.searchsorted(active, target_joint)
    rhs[np.arange(len(verts)), col] = mass * heat
    solved = splu(A).solve(rhs)
    weights = np.zeros((len(verts), J))
    weights[:, active] = solved
    weights = prune_weights(weights, config.max_influences, config.min_weight)
    return SkinResult(weights=weights, bone_distance=d.astype(np.float32))
