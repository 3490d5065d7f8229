"""MeshSequence validation, anchor normalization, surface sampling, LBS and skeleton utilities."""

import numpy as np
import pytest

from backend.lbs import linear_blend_skinning
from backend.normalize import Z_UP_TO_Y_UP, AnchorBox, anchor_normalize
from backend.sampling import barycentric_interpolate, points_on_frames, sample_surface
from backend.sequence import MeshSequence, SequenceError
from backend.skeleton import (Skeleton, SkeletonError, depths, reorder, topological_order, tree_distances,
                              validate_tree)

TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=np.int32)


def tetra_frames(k: int = 3) -> np.ndarray:
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    return np.stack([base + 0.1 * i for i in range(k)])


# --- MeshSequence rejections -------------------------------------------------------------------

@pytest.mark.parametrize("verts, faces, message", [
    (np.zeros((0, 4, 3)), TETRA_FACES, "no frames"),
    ([], TETRA_FACES, "no frames"),
    (np.random.rand(2, 3, 3), np.array([[0, 1, 2]]), "at least 4 vertices"),
    (tetra_frames(), np.zeros((0, 3), dtype=np.int32), "no faces"),
    (np.where(np.arange(36).reshape(3, 4, 3) == 7, np.nan, tetra_frames()), TETRA_FACES, "NaN or Inf"),
    (np.where(np.arange(36).reshape(3, 4, 3) == 30, np.inf, tetra_frames()), TETRA_FACES, "frame 2"),
    (tetra_frames(), TETRA_FACES + 1, "face index out of range"),
    (tetra_frames(), -TETRA_FACES, "face index out of range"),
    ([np.random.rand(4, 3), np.random.rand(5, 3)], TETRA_FACES, "vertex count changes"),
    (np.ones((2, 4, 3)), TETRA_FACES, "zero size"),
    (np.random.rand(2, 4, 2), TETRA_FACES, "shape [K, V, 3]"),
])
def test_sequence_rejections_name_the_problem(verts, faces, message):
    with pytest.raises(SequenceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MeshSequence(verts, faces, name="probe")


def test_sequence_accepts_and_casts():
    seq = MeshSequence(tetra_frames(5).astype(np.float64), TETRA_FACES.astype(np.int64), fps=24)
    assert seq.verts.dtype == np.float32 and seq.faces.dtype == np.int32
    assert (seq.n_frames, seq.n_verts, seq.n_faces) == (5, 4, 4)
    sub = seq.subset(slice(1, None, 2))
    assert sub.n_frames == 2 and np.allclose(sub.anchor, seq.verts[1])


# --- normalization -------------------------------------------------------------------------------

def test_anchor_normalize_maps_anchor_box_to_unit_and_inverts():
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(4, 50, 3)).astype(np.float32) * [3, 1, 0.5] + [10, -2, 7]
    norm, box = anchor_normalize(verts)
    lo, hi = norm[0].min(0), norm[0].max(0)
    assert np.isclose((hi - lo).max(), 1.0, atol=1e-6)
    assert np.allclose((hi + lo) / 2, 0, atol=1e-6)
    assert norm[0].min() >= -0.5 - 1e-6 and norm[0].max() <= 0.5 + 1e-6
    assert np.allclose(box.invert(norm), verts, atol=1e-4)


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_invert_transforms_matches_point_mapping(up_axis):
    box = AnchorBox(center=np.array([1.0, 2.0, 3.0]), scale=4.0, rotation=Z_UP_TO_Y_UP if up_axis == "z" else None)
    angle = 0.3
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    T[:3, 3] = [0.1, -0.2, 0.05]
    p_user = np.array([[5.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
    p_norm = box.apply(p_user)
    moved_norm = p_norm @ T[:3, :3].T + T[:3, 3]
    T_user = box.invert_transforms(T)
    moved_user = p_user @ T_user[:3, :3].T + T_user[:3, 3]
    assert np.allclose(box.invert(moved_norm), moved_user, atol=1e-5)


# --- sampling ------------------------------------------------------------------------------------

def test_sampling_is_seeded_area_weighted_and_corresponds_across_frames():
    # Two triangles: the second has 9x the area, so it gets ~90% of the samples.
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 3, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32)
    a = sample_surface(verts, faces, 4000, seed=3)
    b = sample_surface(verts, faces, 4000, seed=3)
    assert np.array_equal(a.face_index, b.face_index) and np.array_equal(a.barycentric, b.barycentric)
    assert abs((a.face_index == 1).mean() - 0.9) < 0.02
    assert np.allclose(a.barycentric.sum(1), 1, atol=1e-6) and (a.barycentric >= 0).all()
    # A rigid motion of the frame moves each sample with it (same (face, barycentric) pair).
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    frames = np.stack([verts, verts @ R.T + [1, 2, 3]])
    pts, nrm = points_on_frames(frames, faces, a)
    assert pts.shape == (2, 4000, 3)
    assert np.allclose(pts[1], pts[0] @ R.T + [1, 2, 3], atol=1e-5)
    assert np.allclose(np.linalg.norm(nrm, axis=-1), 1, atol=1e-5)
    assert np.allclose(nrm[1], nrm[0] @ R.T, atol=1e-5)


def test_barycentric_interpolation_of_weights_stays_on_simplex():
    verts = tetra_frames(1)[0]
    weights = np.eye(4, dtype=np.float32)[:, :3] + np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.5, 0.5, 0]])
    weights /= weights.sum(1, keepdims=True)
    s = sample_surface(verts, TETRA_FACES, 100, seed=0)
    w = barycentric_interpolate(weights, TETRA_FACES, s)
    assert w.shape == (100, 3) and np.allclose(w.sum(1), 1, atol=1e-6)


# --- LBS ------------------------------------------------------------------------------------------

def test_lbs_identity_and_single_bone_rigid_motion():
    rng = np.random.default_rng(1)
    rest = rng.normal(size=(30, 3)).astype(np.float32)
    w = rng.random((30, 3))
    w /= w.sum(1, keepdims=True)
    eye = np.tile(np.eye(4), (2, 3, 1, 1))
    assert np.allclose(linear_blend_skinning(rest, w, eye), rest, atol=1e-6)
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    T[:3, 3] = [1, 2, 3]
    same = np.tile(T, (3, 1, 1))  # every bone moves the same way -> the mesh moves rigidly
    assert np.allclose(linear_blend_skinning(rest, w, same), rest @ T[:3, :3].T + T[:3, 3], atol=1e-5)


# --- skeleton -----------------------------------------------------------------------------------

def test_validate_tree_rejections():
    for parents, message in [([], "no joints"), ([-1, -1, 0], "exactly one root"), ([1, -1], "before its parent"),
                             ([-1, 5], "out of range"), ([-1, 1], "own parent")]:
        with pytest.raises(SkeletonError, match=message):
            validate_tree(np.array(parents))
    with pytest.raises(SkeletonError, match="cycle"):
        validate_tree(np.array([-1, 2, 1]), require_topological=False)


def test_reorder_and_tree_utilities():
    # Unordered tree: 2 is the root; 0 and 1 hang off it; 3 hangs off 0.
    parents = np.array([2, 2, -1, 0])
    joints = np.arange(12, dtype=np.float32).reshape(4, 3)
    order = topological_order(parents)
    new_joints, new_parents = reorder(joints, parents, order)
    skel = Skeleton(new_joints, new_parents)
    assert skel.parents[0] == -1 and np.allclose(skel.joints[0], joints[2])
    assert len(skel.bones()) == 3
    d = tree_distances(skel.parents)
    assert (d == d.T).all() and d.max() == 3  # joint 1 (old) to joint 3 (old): 1-2-0-3
    assert list(depths(skel.parents)) == sorted(depths(skel.parents))


def test_z_up_input_is_normalized_y_up():
    rng = np.random.default_rng(3)
    y_up = rng.normal(size=(2, 30, 3)) * [1.0, 3.0, 0.5]  # tallest along Y
    z_up = y_up @ Z_UP_TO_Y_UP  # the same shape as Blender would hold it: tallest along Z
    assert np.ptp(z_up[0], axis=0).argmax() == 2
    norm_y, _ = anchor_normalize(y_up)
    norm_z, box = anchor_normalize(z_up, up_axis="z")
    assert np.allclose(norm_z, norm_y, atol=1e-6)
    assert np.allclose(box.invert(norm_z), z_up, atol=1e-5)
    with pytest.raises(ValueError, match="up_axis"):
        anchor_normalize(y_up, up_axis="x")
