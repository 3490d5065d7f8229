"""Motion-compensated joint drift (MCJD): whole-clip skeleton stability that needs no ground truth.

The paper's PJDD/BLRD/GSD/JAD compare every frame with the anchor after one global rigid
alignment, so over a whole clip they also count the creature's own articulation: a perfect rig
that follows a galloping horse scores high and a rig frozen in the anchor pose scores 0. MCJD
removes the articulation first. Each anchor joint is carried to frame ``k`` by the local rigid
motion of the mesh around it (a Kabsch fit on its nearest anchor vertices), and frame ``k``'s
predicted joints are compared with the carried ones by a symmetric Chamfer distance. A rig that
follows the mesh scores near 0; a frozen rig or a jittering one scores high. This is not one of
the paper's metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..normalize import AnchorBox
from .alignment import apply_rigid, kabsch

logger = logging.getLogger(__name__)


@dataclass
class DriftResult:
    """MCJD of one clip.

    Attributes:
        mean: MCJD, the mean of ``per_frame`` over the non-anchor frames (NaN when ``K == 1``).
        per_frame: float64 ``[K]``; entry 0 (anchor) is NaN.
        per_joint: float64 ``[J_0]``: for each anchor joint, the distance from its carried position to
            the nearest predicted joint, averaged over the non-anchor frames (anchor-box units).
        carried: float64 ``[K, J_0, 3]`` the anchor joints carried to every frame (input units).
    """

    mean: float
    per_frame: np.ndarray
    per_joint: np.ndarray
    carried: np.ndarray


def carry_joints(verts: np.ndarray, anchor_joints: np.ndarray, k_neighbors: int = 10) -> np.ndarray:
    """Carry anchor joints through the clip with the local rigid motion of the mesh around each.

    For anchor joint ``j`` let ``N_j`` be its ``k_neighbors`` nearest anchor vertices; the rigid
    motion ``(R_kj, t_kj)`` is the Kabsch fit from ``verts[0, N_j]`` to ``verts[k, N_j]`` and the
    carried joint is ``R_kj x_j + t_kj``.

    Args:
        verts: float ``[K, V, 3]`` mesh frames (frame 0 is the anchor).
        anchor_joints: float ``[J, 3]`` in the same units as ``verts``.
        k_neighbors: vertices per local fit (capped at ``V``).
    Returns:
        float64 ``[K, J, 3]``; frame 0 equals ``anchor_joints``.
    """
    verts = np.asarray(verts, dtype=np.float64)
    joints = np.asarray(anchor_joints, dtype=np.float64).reshape(-1, 3)
    k = int(min(max(k_neighbors, 3), verts.shape[1]))
    _, nbr = cKDTree(verts[0]).query(joints, k=k)  # [J, k]
    nbr = np.asarray(nbr).reshape(len(joints), k)
    src = verts[0][nbr]  # [J, k, 3]
    dst = verts[:, nbr]  # [K, J, k, 3]
    rot, trans = kabsch(np.broadcast_to(src, dst.shape), dst)  # [K, J, 3, 3], [K, J, 3]
    carried = apply_rigid(joints[None, :, None, :], rot, trans)[:, :, 0, :]
    carried[0] = joints
    return carried


def directed_chamfer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each point of ``a [N, 3]`` the distance ``[N]`` to its nearest point of ``b [M, 3]``."""
    return cKDTree(np.asarray(b, dtype=np.float64)).query(np.asarray(a, dtype=np.float64), k=1)[0]


def motion_compensated_joint_drift(verts: np.ndarray, joints_per_frame: list[np.ndarray],
                                   k_neighbors: int = 10) -> DriftResult:
    """MCJD: symmetric Chamfer between each frame's predicted joints and the mesh-carried anchor joints.

    ``MCJD_k = (mean_i min_j ||p_i - c_j|| + mean_j min_i ||c_j - p_i||) / 2 / s`` where ``p`` are
    the joints predicted on frame ``k``, ``c`` the anchor joints (``joints_per_frame[0]``) carried
    by :func:`carry_joints`, and ``s`` the longest side of the anchor mesh's bounding box.
    ``MCJD = mean_{k >= 1} MCJD_k``. Invariant to joint order and to a rigid motion of the whole
    clip; joint counts may differ per frame.

    Args:
        verts: float ``[K, V, 3]`` mesh frames.
        joints_per_frame: ``K`` arrays float ``[J_k, 3]`` in the units of ``verts``.
        k_neighbors: anchor vertices per local rigid fit.
    """
    verts = np.asarray(verts, dtype=np.float64)
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"motion_compensated_joint_drift: verts must be [K, V, 3], got {list(verts.shape)}")
    if len(joints_per_frame) != verts.shape[0]:
        raise ValueError(f"motion_compensated_joint_drift: {len(joints_per_frame)} joint frames for "
                         f"{verts.shape[0]} mesh frames")
    frames = [np.asarray(j, dtype=np.float64).reshape(-1, 3) for j in joints_per_frame]
    if any(len(f) == 0 for f in frames):
        raise ValueError("motion_compensated_joint_drift: a frame has no joints")
    scale = AnchorBox.fit(verts[0]).scale
    carried = carry_joints(verts, frames[0], k_neighbors)
    n = len(frames)
    per_frame = np.full(n, np.nan)
    per_joint = np.zeros(len(frames[0]))
    for k in range(1, n):
        to_carried = directed_chamfer(frames[k], carried[k])
        to_pred = directed_chamfer(carried[k], frames[k])
        per_frame[k] = 0.5 * (to_carried.mean() + to_pred.mean()) / scale
        per_joint += to_pred / scale
    if n > 1:
        per_joint /= n - 1
        mean = float(np.mean(per_frame[1:]))
    else:
        per_joint[:] = np.nan
        mean = float("nan")
    logger.debug("MCJD %.5f over %d frames", mean, n)
    return DriftResult(mean=mean, per_frame=per_frame, per_joint=per_joint, carried=carried)
