"""Local pose for armature keys: anchor-space bone transforms <-> per-bone rotations/translations relative
to the parent, and quaternion conversions."""

from __future__ import annotations

import numpy as np

from backend.skeleton import validate_tree

from .fit.rigid import rigid_matrix


def matrix_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternions ``wxyz [..., 4]`` (``w >= 0``) of rotation matrices ``[..., 3, 3]`` (Shepperd's method)."""
    R = np.asarray(rot, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    trace = m00 + m11 + m22
    d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    s01, s02, s12 = R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1]
    cands = np.stack([
        np.stack([1 + trace, d21, d02, d10], -1),
        np.stack([d21, 1 + m00 - m11 - m22, s01, s02], -1),
        np.stack([d02, s01, 1 - m00 + m11 - m22, s12], -1),
        np.stack([d10, s02, s12, 1 - m00 - m11 + m22], -1),
    ], axis=-2)  # [..., 4, 4]; row i is 4 q_i q
    pick = np.argmax(np.stack([trace, m00, m11, m22], -1), axis=-1)
    q = np.take_along_axis(cands, pick[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``wxyz [..., 4]`` (normalised first)."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def to_local_pose(bone_transforms: np.ndarray, joints: np.ndarray,
                  parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-space deformation matrices -> per-bone rotations/translations relative to the parent.

    Bone ``j``'s rest frame is a translation to its joint (identity rotation), so its posed global frame
    is ``G_kj = T_kj @ translate(joints_j)`` and its local frame is ``G_kp^-1 @ G_kj`` (parent ``p``; the
    root's local frame is its global frame). At rest the local translation is ``joints_j - joints_p``.

    Args:
        bone_transforms: float ``[K, J, 4, 4]`` rigid transforms (anchor space -> frame k).
        joints: float ``[J, 3]`` anchor joint positions.
        parents: int ``[J]``, parents precede children.
    Returns:
        ``local_rotations float64 [K, J, 4]`` unit quaternions ``wxyz`` (sign chosen continuous over
        frames, first frame ``w >= 0``) and ``local_translations float64 [K, J, 3]``.
    """
    T = np.asarray(bone_transforms, dtype=np.float64)
    X = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    if T.ndim != 4 or T.shape[1:] != (len(parents), 4, 4):
        raise ValueError(f"bone_transforms must have shape [K, {len(parents)}, 4, 4], got {list(T.shape)}")
    validate_tree(parents, n_joints=len(X))
    R = T[..., :3, :3]  # global rotation of each bone (rest rotation is identity)
    head = np.einsum("kjab,jb->kja", R, X) + T[..., :3, 3]  # posed joint positions [K, J, 3]
    local_R = R.copy()
    local_t = head.copy()
    child = np.flatnonzero(parents >= 0)
    p = parents[child]
    Rp_T = np.swapaxes(R[:, p], -1, -2)
    local_R[:, child] = Rp_T @ R[:, child]
    local_t[:, child] = np.einsum("kjab,kjb->kja", Rp_T, head[:, child] - head[:, p])
    quat = matrix_to_quaternion(local_R)
    # hemisphere continuity over frames so keyframe interpolation takes the short way
    for k in range(1, quat.shape[0]):
        flip = np.sum(quat[k] * quat[k - 1], axis=-1) < 0
        quat[k, flip] *= -1
    return quat, local_t


def from_local_pose(local_rotations: np.ndarray, local_translations: np.ndarray, joints: np.ndarray,
                    parents: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_local_pose`: forward kinematics back to anchor-space deformation matrices.

    Args:
        local_rotations: ``[K, J, 4]`` quaternions ``wxyz``; local_translations: ``[K, J, 3]``.
        joints: ``[J, 3]`` anchor joints; parents: ``[J]`` (parents precede children).
    Returns:
        float64 ``[K, J, 4, 4]`` rigid transforms from anchor space to frame ``k``.
    """
    X = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    validate_tree(parents, n_joints=len(X))
    local_R = quaternion_to_matrix(local_rotations)
    local_t = np.asarray(local_translations, dtype=np.float64)
    K, J = local_R.shape[:2]
    R = np.empty((K, J, 3, 3))
    head = np.empty((K, J, 3))
    for j in range(J):
        p = int(parents[j])
        if p < 0:
            R[:, j], head[:, j] = local_R[:, j], local_t[:, j]
        else:
            R[:, j] = R[:, p] @ local_R[:, j]
            head[:, j] = np.einsum("kab,kb->ka", R[:, p], local_t[:, j]) + head[:, p]
    trans = head - np.einsum("kjab,jb->kja", R, X)
    return rigid_matrix(R, trans)
