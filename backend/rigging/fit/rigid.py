"""Rigid-transform primitives of the motion fit: proper rotations (Kabsch) and per-bone weighted rigid fits."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def proper_rotation(cross: np.ndarray) -> np.ndarray:
    """Rotation ``R [..., 3, 3]`` maximising ``trace(R^T C)`` for ``cross C [..., 3, 3]`` (Kabsch, det = +1)."""
    u, _, vt = np.linalg.svd(cross)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    u = u.copy()
    u[..., :, 2] *= d[..., None]
    return u @ vt


def rigid_matrix(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Assemble ``[..., 4, 4]`` from ``rot [..., 3, 3]`` and ``trans [..., 3]``."""
    out = np.zeros(rot.shape[:-2] + (4, 4))
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1.0
    return out


def weighted_rigid_fits(anchor: np.ndarray, frames: np.ndarray | None, weights: np.ndarray,
                        frames_vm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bone and frame, the rigid transform best mapping the anchor onto the frame (weighted Kabsch).

    Minimises ``sum_v w_vj || R a_v + t - x_kv ||^2`` for each ``(k, j)``, all at once. The weighted
    cross-covariances are three sparse-times-dense products ``(W * a_b)^T X`` with the frames as a
    ``[V, 3K]`` matrix, so no per-vertex outer products are formed.

    Args:
        anchor: ``[V, 3]`` anchor vertices.
        frames: ``[K, V, 3]`` target vertices (may be None when ``frames_vm`` is given).
        weights: ``[V, J]`` non-negative per-vertex fit weights (dense or scipy sparse).
        frames_vm: the same frames vertex-major, float64 ``[V, K, 3]``, when the caller has them.
    Returns:
        ``transforms float64 [K, J, 4, 4]``, ``mass float64 [J]`` (summed weight per bone) and
        ``spread float64 [J]`` (second-largest eigenvalue of the weighted covariance of the bone's anchor
        vertices: ~0 when they are collinear and the rotation about that line is undetermined).
    """
    a = np.asarray(anchor, dtype=np.float64)
    if frames_vm is None:
        frames_vm = np.asarray(frames, dtype=np.float64).transpose(1, 0, 2)
    V, K, _ = frames_vm.shape
    X = np.ascontiguousarray(frames_vm, dtype=np.float64).reshape(V, K * 3)
    Wt = sp.csr_matrix(weights, dtype=np.float64).T.tocsr()  # [J, V]
    J = Wt.shape[0]
    mass = np.asarray(Wt.sum(axis=1)).ravel()
    safe = np.maximum(mass, 1e-300)
    a_bar = (Wt @ a) / safe[:, None]  # [J, 3]
    second = (Wt @ (a[:, :, None] * a[:, None, :]).reshape(V, 9)).reshape(J, 3, 3) / safe[:, None, None]
    cov = second - a_bar[:, :, None] * a_bar[:, None, :]
    spread = np.linalg.eigvalsh(cov)[:, 1]

    x_bar = (Wt @ X).reshape(J, K, 3) / safe[:, None, None]  # [J, K, 3]
    cross = np.stack([(Wt @ sp.diags(a[:, b]) @ X).reshape(J, K, 3) for b in range(3)], axis=-1)
    cross = cross / safe[:, None, None, None] - x_bar[:, :, :, None] * a_bar[:, None, None, :]  # [J, K, 3(x), 3(a)]
    rot = proper_rotation(cross)  # maps a-offsets to x-offsets
    trans = x_bar - np.einsum("jkab,jb->jka", rot, a_bar)
    return rigid_matrix(rot, trans).transpose(1, 0, 2, 3), mass, spread
