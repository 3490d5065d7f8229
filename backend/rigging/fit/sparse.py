"""Sparse skinning rows and the LBS they drive: the data layout every step of the motion fit shares.

Weights are held per vertex as ``idx int64 [V, M]`` / ``val float64 [V, M]`` (the ``M`` largest bones of a
row) and regrouped per bone (:func:`bone_groups`) so that blending costs ~ the non-zero weights, not ``V * J``.
"""

from __future__ import annotations

import numpy as np


def prune_weights(weights: np.ndarray, max_influences: int = 4) -> np.ndarray:
    """Keep the ``max_influences`` largest weights per row and renormalize to sum one.

    Args:
        weights: ``[V, J]`` non-negative weights (negative entries are clipped to 0).
        max_influences: at most this many non-zero entries per row are kept.
    Returns:
        float32 ``[V, J]`` rows on the simplex. A row with no positive weight gets all its weight on
        the bone with the largest raw value (the first bone on ties).
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if w.ndim != 2:
        raise ValueError(f"weights must have shape [V, J], got {list(w.shape)}")
    if max_influences < 1:
        raise ValueError(f"max_influences must be >= 1, got {max_influences}")
    V, J = w.shape
    if J > max_influences:
        drop = np.argpartition(-w, max_influences - 1, axis=1)[:, max_influences:]
        np.put_along_axis(w, drop, 0.0, axis=1)
    total = w.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    if np.any(empty):
        raw = np.asarray(weights, dtype=np.float64)[empty]
        w[empty] = 0.0
        w[np.flatnonzero(empty), np.argmax(raw, axis=1)] = 1.0
        total = w.sum(axis=1, keepdims=True)
    return (w / total).astype(np.float32)


def to_sparse_rows(weights: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``[V, J]`` -> (``idx int64 [V, width]``, ``val float64 [V, width]``), padding with weight 0."""
    w = np.asarray(weights, dtype=np.float64)
    width = min(width, w.shape[1])
    idx = np.argsort(-w, axis=1, kind="stable")[:, :width]
    val = np.take_along_axis(w, idx, axis=1)
    return idx.astype(np.int64), val


def sparse_to_dense(idx: np.ndarray, val: np.ndarray, n_joints: int) -> np.ndarray:
    """Sparse rows (``idx [V, M]``, ``val [V, M]``) -> dense float64 ``[V, J]`` (duplicates summed)."""
    V = idx.shape[0]
    dense = np.zeros((V, n_joints))
    np.add.at(dense, (np.repeat(np.arange(V), idx.shape[1]), idx.ravel()), val.ravel())
    return dense


def rms_vertex_error(resid: np.ndarray) -> float:
    """RMS per-vertex error (``MotionFit.rmse_history``) of a residual ``[V, K, 3]``."""
    return float(np.sqrt(np.mean(np.sum(resid ** 2, axis=-1))))


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """Hard weights: ``labels int [V]`` -> float64 ``[V, n]`` with a single 1 per row."""
    hard = np.zeros((len(labels), n))
    hard[np.arange(len(labels)), labels] = 1.0
    return hard


def bone_groups(idx: np.ndarray, val: np.ndarray, n_joints: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sparse rows ``idx/val [V, M]`` regrouped per bone: ``J`` pairs (vertex ids ``[n_j]``, weights ``[n_j]``)
    holding the positive weights only; a vertex appears at most once per bone."""
    V, M = idx.shape
    rows = np.repeat(np.arange(V), M)
    flat_idx, flat_val = idx.ravel(), val.ravel()
    keep = flat_val > 0
    rows, flat_idx, flat_val = rows[keep], flat_idx[keep], flat_val[keep]
    order = np.argsort(flat_idx, kind="stable")
    rows, flat_idx, flat_val = rows[order], flat_idx[order], flat_val[order]
    bounds = np.searchsorted(flat_idx, np.arange(n_joints + 1))
    return [(rows[bounds[j]:bounds[j + 1]], flat_val[bounds[j]:bounds[j + 1]]) for j in range(n_joints)]


def apply_transforms(transforms: np.ndarray, points_h: np.ndarray) -> np.ndarray:
    """``[K, 4, 4]`` transforms applied to homogeneous ``points_h [n, 4]`` -> vertex-major ``[n, K, 3]``.

    One GEMM with the 3x4 blocks laid out as ``[4, K*3]`` (faster than a 3-column product plus a
    broadcast translation)."""
    K = transforms.shape[0]
    mats = np.ascontiguousarray(transforms[:, :3, :].transpose(2, 0, 1).reshape(4, K * 3))
    return (points_h @ mats).reshape(len(points_h), K, 3)


def homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def blend_sparse(anchor: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], transforms: np.ndarray) -> np.ndarray:
    """LBS with per-bone sparse weights (see :func:`bone_groups`): vertex-major ``[V, K, 3]`` float64."""
    out = np.zeros((anchor.shape[0], transforms.shape[0], 3))
    ah = homogeneous(anchor)
    for j, (v, w) in enumerate(groups):
        if len(v):
            part = apply_transforms(transforms[:, j], ah[v])
            part *= w[:, None, None]
            out[v] += part
    return out


def skin_anchor(anchor: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """LBS of the anchor with sparse-aware blending (cost ~ non-zero weights, not ``V * J``).

    Args:
        anchor: ``[V, 3]``; weights: ``[V, J]`` (mostly zeros); transforms: ``[K, J, 4, 4]``.
    Returns:
        float64 ``[K, V, 3]``.
    """
    a = np.asarray(anchor, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    T = np.asarray(transforms, dtype=np.float64)
    width = int(max((w > 0).sum(axis=1).max(), 1))
    idx, val = to_sparse_rows(w, width)
    return blend_sparse(a, bone_groups(idx, val, w.shape[1]), T).transpose(1, 0, 2)


def reconstruction_error(anchor: np.ndarray, frames: np.ndarray, weights: np.ndarray,
                         transforms: np.ndarray) -> np.ndarray:
    """Per-vertex per-frame distance ``[K, V]`` float32 between LBS of the anchor and the frames (input units).

    Args:
        anchor: ``[V, 3]``; frames: ``[K, V, 3]``; weights: ``[V, J]``; transforms: ``[K, J, 4, 4]``.
    """
    posed = skin_anchor(anchor, weights, transforms)
    return np.linalg.norm(posed - np.asarray(frames, dtype=np.float64).reshape(posed.shape), axis=-1).astype(np.float32)
