"""Articulation of a rig's motion: do the bones stay attached at their joints?"""

from __future__ import annotations

import numpy as np


def joint_separation(bone_transforms: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Per frame and joint, the distance between a child's joint carried by its own transform and by its
    parent's: ``|| T_kj c_j - T_kp c_j ||`` (0 for roots). An articulated motion has 0 everywhere; a rig
    whose bones move freely shows its bones flying apart by this much.

    Args:
        bone_transforms: float ``[K, J, 4, 4]`` anchor -> frame ``k`` transforms.
        joints: float ``[J, 3]`` anchor joints ``c_j``.
        parents: int ``[J]``, ``-1`` for roots.
    Returns:
        float64 ``[K, J]`` in the transforms' units.
    """
    T = np.asarray(bone_transforms, dtype=np.float64)
    c = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    if T.ndim != 4 or T.shape[1:] != (len(parents), 4, 4) or c.shape != (len(parents), 3):
        raise ValueError(f"bone_transforms [K, J, 4, 4], joints [J, 3] and parents [J] disagree: "
                         f"{list(T.shape)}, {list(c.shape)}, {list(parents.shape)}")
    out = np.zeros(T.shape[:2])
    child = np.flatnonzero(parents >= 0)
    if len(child):
        own, par = T[:, child], T[:, parents[child]]
        by_own = np.einsum("kjab,jb->kja", own[..., :3, :3], c[child]) + own[..., :3, 3]
        by_parent = np.einsum("kjab,jb->kja", par[..., :3, :3], c[child]) + par[..., :3, 3]
        out[:, child] = np.linalg.norm(by_own - by_parent, axis=-1)
    return out


def bone_distances(points: np.ndarray, joints: np.ndarray, tails: np.ndarray, parents: np.ndarray,
                   chunk: int = 4096) -> np.ndarray:
    """Distance from every point to every bone, a bone being its segments from its joint to each child's joint
    and to its own tail.

    Args:
        points: float ``[V, 3]``; joints, tails: float ``[J, 3]`` (same space); parents: int ``[J]``.
    Returns:
        float64 ``[V, J]``.
    """
    p = np.asarray(points, dtype=np.float64)
    c = np.asarray(joints, dtype=np.float64)
    t = np.asarray(tails, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    J = len(parents)
    if c.shape != (J, 3) or t.shape != (J, 3):
        raise ValueError(f"joints and tails must have shape [J, 3] = [{J}, 3], got {list(c.shape)}, {list(t.shape)}")
    child = np.flatnonzero(parents >= 0)
    heads = np.concatenate([np.arange(J), parents[child]])  # the segment's bone
    ends = np.concatenate([t, c[child]])
    ab = ends - c[heads]
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-300)
    out = np.full((len(p), J), np.inf)
    for s in range(0, len(p), chunk):
        d = p[s:s + chunk, None, :] - c[heads][None]  # [B, S, 3]
        along = np.clip((d * ab[None]).sum(axis=2) / length2, 0.0, 1.0)
        gap = d - along[..., None] * ab[None]
        np.minimum.at(out[s:s + chunk].T, heads, np.sqrt((gap * gap).sum(axis=2)).T)
    return out


def far_led_share(points: np.ndarray, weights: np.ndarray, joints: np.ndarray, tails: np.ndarray,
                  parents: np.ndarray, nearest: int = 4, distances: np.ndarray | None = None) -> float:
    """Share of the points whose largest weight is on a bone that is not among the ``nearest`` bones closest to
    them (:func:`bone_distances`): skin that posing a far bone moves. The reconstruction error cannot see it
    when several bones move alike over the clip; an animator sees it as soon as a bone is posed.

    Args:
        points: float ``[V, 3]`` the anchor vertices; weights: ``[V, J]``; joints, tails: ``[J, 3]``;
            parents: ``[J]``; distances: their :func:`bone_distances` ``[V, J]`` when the caller has them.
    """
    d = bone_distances(points, joints, tails, parents) if distances is None else np.asarray(distances)
    w = np.asarray(weights)
    lead = np.argmax(w, axis=1)
    closer = (d < d[np.arange(len(d)), lead][:, None]).sum(axis=1)  # bones nearer than the leading one
    return float(np.mean(closer >= nearest)) if len(d) else 0.0
