"""Linear blend skinning, shared by the corpus generator, the motion fit and the glTF writer."""

from __future__ import annotations

import numpy as np


def linear_blend_skinning(rest_verts: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Pose a rest mesh: ``v_k = sum_j w_j * (T_kj @ [v, 1])``.

    Args:
        rest_verts: ``[V, 3]`` rest (or anchor) vertices.
        weights: ``[V, J]`` rows on the simplex (dense; zeros allowed).
        transforms: ``[J, 4, 4]`` or ``[K, J, 4, 4]`` bone transforms from rest to posed space.
    Returns:
        ``[V, 3]`` or ``[K, V, 3]`` float32.
    """
    transforms = np.asarray(transforms, dtype=np.float64)
    single = transforms.ndim == 3
    if single:
        transforms = transforms[None]
    rest = np.asarray(rest_verts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    # Blend the 3x4 matrices per vertex, then apply: cheaper than posing J copies of the mesh.
    K, J = transforms.shape[:2]
    flat = transforms[:, :, :3, :].transpose(1, 0, 2, 3).reshape(J, K * 12)  # [J, K*12]
    blended = (w @ flat).reshape(len(w), K, 3, 4).transpose(1, 0, 2, 3)  # [K, V, 3, 4], one BLAS product
    posed = np.einsum("kvab,vb->kva", blended[..., :3], rest) + blended[..., 3]
    posed = posed.astype(np.float32)
    return posed[0] if single else posed
