"""No-learning control skeletons that every evaluation prints beside the learned models.

A learned skeleton generator is only worth its training if it beats what a few lines of geometry give
without any learning. The control here is the one the issues measure against: ``n`` joints at the
k-means centres of the surface vertices (``n`` = the ground truth's joint count, so the control is even
told how many joints to place), connected by their Euclidean minimum spanning tree.
"""

from __future__ import annotations

import numpy as np

from backend.skeleton import reorder, topological_order

from .skeleton_stability import euclidean_mst


def kmeans_joints(verts: np.ndarray, n_joints: int, seed: int = 0) -> np.ndarray:
    """``n_joints`` k-means centres of ``verts [V, 3]`` (seeded k-means++): float64 ``[n, 3]``.

    Raises:
        ValueError: ``n_joints < 1`` or fewer distinct vertices than joints.
    """
    from scipy.cluster.vq import kmeans2

    x = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    if n_joints < 1:
        raise ValueError(f"n_joints must be >= 1, got {n_joints}")
    if len(np.unique(x, axis=0)) < n_joints:
        raise ValueError(f"k-means control needs at least {n_joints} distinct vertices, got {len(np.unique(x, axis=0))}")
    centres, _ = kmeans2(x, n_joints, minit="++", seed=seed)
    return centres


def kmeans_skeleton(verts: np.ndarray, n_joints: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k-means control as a skeleton: :func:`kmeans_joints` joined by their Euclidean minimum spanning
    tree, rooted at the centre nearest the vertices' mean, parents before children.

    Returns:
        ``joints float32 [n, 3]``, ``parents int32 [n]`` (``-1`` for the root).
    """
    centres = kmeans_joints(verts, n_joints, seed)
    n = len(centres)
    root = int(np.argmin(np.linalg.norm(centres - np.asarray(verts, dtype=np.float64).reshape(-1, 3).mean(axis=0),
                                        axis=1)))
    order = np.r_[root, np.delete(np.arange(n), root)]
    centres = centres[order]  # Prim's tree below grows from index 0
    parents = np.full(n, -1, dtype=np.int64)
    for u, v in euclidean_mst(centres):
        parents[v] = u
    joints, parents = reorder(centres, parents, topological_order(parents))
    return joints.astype(np.float32), parents.astype(np.int32)
