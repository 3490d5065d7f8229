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
