"""Batching helpers shared by the training stages: skeletons of different sizes padded to one batch.

A batch of skinning inputs holds skeletons with different joint counts ``n_b``. They are padded to
``J = max_b n_b`` joints; ``valid`` marks the real joints, padded parents are ``-1`` and padded tree
distances ``-1`` (the skinning network masks them out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from backend.skeleton import tree_distances


def pad_skeletons(joints: Sequence[np.ndarray], parents: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Pad ``B`` skeletons to the largest one.

    Args:
        joints: per skeleton float ``[n_b, 3]``.
        parents: per skeleton int ``[n_b]`` (-1 for the root), ``len(parents) == len(joints)``.
    Returns:
        ``{"joints": float32 [B, J, 3], "parents": int64 [B, J] (-1 padded), "valid": bool [B, J],
        "tree_dist": int64 [B, J, J] (-1 padded)}`` with ``J = max_b n_b``.
    """
    if len(joints) != len(parents):
        raise ValueError(f"pad_skeletons: {len(joints)} joint arrays but {len(parents)} parent arrays")
    if not parents:
        raise ValueError("pad_skeletons: empty batch")
    B, J = len(parents), max(len(p) for p in parents)
    out_joints = np.zeros((B, J, 3), np.float32)
    out_parents = np.full((B, J), -1, np.int64)
    valid = np.zeros((B, J), bool)
    dist_ = np.full((B, J, J), -1, np.int64)
    for b, (j, p) in enumerate(zip(joints, parents)):
        n = len(p)
        if np.shape(j) != (n, 3):
            raise ValueError(f"pad_skeletons: skeleton {b} has joints of shape {np.shape(j)} for {n} parents")
        out_joints[b, :n], out_parents[b, :n], valid[b, :n] = j, p, True
        dist_[b, :n, :n] = tree_distances(p)
    return {"joints": out_joints, "parents": out_parents, "valid": valid, "tree_dist": dist_}


def pad_joint_columns(weights: Sequence[np.ndarray], n_joints: int) -> np.ndarray:
    """Stack per-skeleton weight matrices, zero-padding their joint columns.

    Args:
        weights: per skeleton float ``[N, n_b]`` (same ``N`` for all).
        n_joints: ``J >= max_b n_b``, the padded joint count (from :func:`pad_skeletons`).
    Returns:
        float32 ``[B, N, J]``.
    """
    if not weights:
        raise ValueError("pad_joint_columns: empty batch")
    N = weights[0].shape[0]
    out = np.zeros((len(weights), N, n_joints), np.float32)
    for b, w in enumerate(weights):
        if w.shape[0] != N or w.shape[1] > n_joints:
            raise ValueError(f"pad_joint_columns: weights {b} have shape {w.shape}, expected [{N}, <= {n_joints}]")
        out[b, :, : w.shape[1]] = w
    return out
