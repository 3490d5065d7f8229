"""The no-learning k-means control skeleton (backend.metrics.controls)."""

import numpy as np
import pytest

from backend.metrics import cd_j2j, kmeans_joints, kmeans_skeleton
from backend.skeleton import validate_tree


def blobs(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [-1, 1, 0], [0, 2, 0]], dtype=np.float64)
    pts = np.concatenate([c + 0.05 * rng.normal(size=(n_per, 3)) for c in centres])
    return pts, centres


def test_kmeans_joints_find_separated_clusters():
    pts, centres = blobs()
    found = kmeans_joints(pts, len(centres))
    assert found.shape == (5, 3)
    assert cd_j2j(found, centres) < 0.05
    assert np.array_equal(found, kmeans_joints(pts, len(centres)))  # seeded: deterministic


def test_kmeans_skeleton_is_a_tree_rooted_near_the_middle():
    pts, centres = blobs()
    joints, parents = kmeans_skeleton(pts, 5)
    validate_tree(parents, n_joints=5)  # one root, parents before children
    assert joints.dtype == np.float32 and parents.dtype == np.int32
    assert np.linalg.norm(joints[0] - [0, 1, 0]) < 0.1  # the centre nearest the points' mean is the root
    # minimum spanning tree: every non-root joint hangs off its nearest neighbour in this layout
    for j in range(1, 5):
        assert np.linalg.norm(joints[j] - joints[parents[j]]) < 1.1


def test_kmeans_control_rejects_impossible_requests():
    pts, _ = blobs()
    with pytest.raises(ValueError, match="n_joints"):
        kmeans_joints(pts, 0)
    with pytest.raises(ValueError, match="distinct vertices"):
        kmeans_joints(np.zeros((10, 3)), 3)
