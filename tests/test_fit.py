"""Motion fitting (backend/rigging/fit/): rigid starts, monotone refinement, sparse simplex weights, local poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.rigging.fit import (
    FitCancelled,
    FitConfig,
    candidate_bones,
    fit_motion,
    match_clusters_to_bones,
    motion_candidate_bones,
    project_simplex,
    prune_weights,
    reconstruction_error,
    split_motion_clusters,
)
from backend.rigging.fit.solve import _simplex_qp_on_support
from backend.rigging.fit.sparse import to_sparse_rows
from backend.rigging.pose import from_local_pose, matrix_to_quaternion, quaternion_to_matrix, to_local_pose
from backend.lbs import linear_blend_skinning

REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
REAL_FILES = sorted(REALDATA.glob("*.npz"))


def random_rotations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    q = rng.normal(size=shape + (4,))
    return quaternion_to_matrix(q)


def tube_sequence(n_frames: int = 10, rings: int = 24, around: int = 10, n_bones: int = 6, seed: int = 0):
    """A bending tube skinned to a bone chain by linear LBS of its own rest pose (frame 0 = rest).

    Returns ``frames [K, V, 3]``, ``faces``, ``joints [J, 3]``, ``parents [J]``, GT ``weights [V, J]``.
    """
    rng = np.random.default_rng(seed)
    xs = np.linspace(0.0, 1.0, rings)
    th = np.linspace(0.0, 2 * np.pi, around, endpoint=False)
    r = 0.06 * (1 + 0.2 * np.sin(7 * xs))[:, None]
    rest = np.stack([np.repeat(xs[:, None], around, 1), r * np.cos(th), r * np.sin(th)], -1).reshape(-1, 3)
    faces = []
    for i in range(rings - 1):
        for j in range(around):
            a, b = i * around + j, i * around + (j + 1) % around
            faces += [[a, b, b + around], [a, b + around, a + around]]
    faces = np.asarray(faces, dtype=np.int32)
    joints = np.stack([np.linspace(0, 1, n_bones, endpoint=False), np.zeros(n_bones), np.zeros(n_bones)], 1)
    parents = np.arange(-1, n_bones - 1)
    t = rest[:, 0] * n_bones - 0.5
    lo = np.clip(np.floor(t).astype(int), 0, n_bones - 1)
    hi = np.clip(lo + 1, 0, n_bones - 1)
    f = np.clip(t - lo, 0, 1)
    w = np.zeros((len(rest), n_bones))
    np.add.at(w, (np.arange(len(rest)), lo), 1 - f)
    np.add.at(w, (np.arange(len(rest)), hi), f)
    time = np.linspace(0, 2 * np.pi, n_frames, endpoint=False)
    angle = 0.4 * np.sin(time[:, None] + 0.7 * np.arange(n_bones)[None]) * (time[:, None] > 0)
    axis = rng.normal(size=(n_bones, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    quat = np.concatenate([np.cos(angle / 2)[..., None], np.sin(angle / 2)[..., None] * axis[None]], -1)
    local_t = np.zeros((n_frames, n_bones, 3))
    local_t[:, 1:] = joints[1:] - joints[parents[1:]]
    local_t[:, 0] = joints[0] + 0.05 * np.sin(time)[:, None]
    T = from_local_pose(quat, local_t, joints, parents)
    frames = linear_blend_skinning(rest, w, T)
    return frames.astype(np.float64), faces, joints, parents.astype(np.int32), w


def parts_sequence(n_parts: int = 4, per_part: int = 40, n_frames: int = 8, seed: int = 0):
    """Separate rigid blobs in a row, each moved by its own random rigid motion (frame 0 = rest).

    Returns ``frames [K, V, 3]``, ``rest [V, 3]``, ``part int [V]``, part ``centres [P, 3]``.
    """
    rng = np.random.default_rng(seed)
    centres = np.stack([np.arange(n_parts, dtype=np.float64), np.zeros(n_parts), np.zeros(n_parts)], 1)
    rest = np.concatenate([c + 0.2 * rng.normal(size=(per_part, 3)) for c in centres])
    part = np.repeat(np.arange(n_parts), per_part)
    rot = random_rotations(rng, (n_frames, n_parts))
    rot[0] = np.eye(3)
    trans = 0.3 * rng.normal(size=(n_frames, n_parts, 3))
    trans[0] = 0.0
    frames = np.einsum("kvab,vb->kva", rot[:, part], rest) + trans[:, part]
    return frames, rest, part, centres


def load_real(path: Path):
    d = np.load(path)
    parents = d["parents"].copy()
    roots = np.flatnonzero(parents < 0)
    parents[roots[1:]] = roots[0]  # the horse's IK bones hang off the root: make one tree
    return d, parents


# ---------------------------------------------------------------------------------------------


def test_prune_weights_top_k_and_simplex():
    rng = np.random.default_rng(0)
    w = rng.random((50, 9))
    w[3] = 0.0  # a row with no weight
    w[4, :] = -1.0
    w[4, 7] = -0.5
    p = prune_weights(w, 4)
    assert p.dtype == np.float32
    assert np.allclose(p.sum(1), 1.0, atol=1e-6)
    assert ((p > 0).sum(1) <= 4).all()
    assert (p >= 0).all()
    # the kept entries are the four largest of the row
    row = w[10]
    assert set(np.flatnonzero(p[10])) == set(np.argsort(-row)[:4])
    assert p[4, 7] == 1.0  # all-negative row goes to its largest raw value
    with pytest.raises(ValueError, match="max_influences"):
        prune_weights(w, 0)


def test_project_simplex_matches_definition():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 6))
    mask = rng.random((200, 6)) < 0.7
    mask[:, 0] = True
    x = project_simplex(y, mask)
    assert np.allclose(x.sum(1), 1.0)
    assert (x[~mask] == 0).all() and (x >= 0).all()
    # optimality: no feasible random point on the masked simplex is closer to y
    for _ in range(50):
        z = rng.random((200, 6)) * mask
        z /= z.sum(1, keepdims=True)
        assert (np.sum((x - y) ** 2, 1) <= np.sum((z - y) ** 2, 1) + 1e-12).all()


@pytest.mark.skipif(not REAL_FILES, reason="no real sequences in ../shared/realdata")
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.stem for p in REAL_FILES])
def test_fit_reproduces_real_frames_from_gt_rig(path):
    """Given the artist's weights and skeleton, the rigid fit reproduces every frame, and after a few
    transform sweeps it is at least as good as the artist's own bone motion re-expressed with the anchor
    as rest pose (T_k = S_k S_0^-1)."""
    d, parents = load_real(path)
    verts = d["verts"].astype(np.float64)
    diag = np.linalg.norm(np.ptp(verts[0], 0))
    start = fit_motion(verts[0], verts, d["weights"], parents, d["joints"][0], d["faces"], FitConfig(refine_iters=0))
    err0 = reconstruction_error(verts[0], verts, start.weights, start.transforms) / diag
    assert err0.mean() < 0.005  # Kabsch start alone: < 0.5 % of the diagonal on average
    fit = fit_motion(verts[0], verts, d["weights"], parents, d["joints"][0], d["faces"],
                     FitConfig(refine_iters=5, refine_weights=False))
    err = reconstruction_error(verts[0], verts, fit.weights, fit.transforms) / diag
    assert err.mean() < 0.003 and err.mean() <= err0.mean() + 1e-9
    skin = np.zeros(d["skin_mats"].shape[:2] + (4, 4))
    skin[..., :3, :] = d["skin_mats"]
    skin[..., 3, 3] = 1.0
    gt_T = skin @ np.linalg.inv(skin[0])[None]
    err_gt = reconstruction_error(verts[0], verts, d["weights"], gt_T) / diag
    assert np.sqrt((err ** 2).mean()) <= np.sqrt((err_gt ** 2).mean()) + 1e-6
    # transforms are rigid: orthonormal rotations with det +1, last row [0, 0, 0, 1]
    R = fit.transforms[..., :3, :3]
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-9)
    assert np.allclose(fit.transforms[..., 3, :], [0, 0, 0, 1])


def test_refinement_never_raises_error_and_keeps_sparse_simplex_rows():
    frames, faces, joints, parents, w_gt = tube_sequence()
    anchor = frames[0]
    # a crude start: Gaussian falloff from the joints, far from the true weights
    d = np.linalg.norm(anchor[:, None] - joints[None], axis=-1)
    logits = -(d / 0.15) ** 2
    w0 = np.exp(logits - logits.max(1, keepdims=True))
    w0 /= w0.sum(1, keepdims=True)
    cfg = FitConfig(max_influences=3, refine_iters=6, tol=0.0, candidates="tree", motion_init_rounds=0)
    fit = fit_motion(anchor, frames, w0, parents, joints, faces, cfg)
    hist = np.asarray(fit.rmse_history)
    assert len(hist) == 7
    assert (np.diff(hist) <= 1e-12 * hist[0]).all(), hist
    assert hist[-1] < 0.5 * hist[0]
    W = fit.weights
    assert W.shape == w0.shape and (W >= 0).all()
    assert np.allclose(W.sum(1), 1.0, atol=1e-5)
    assert ((W > 0).sum(1) <= 3).all()
    # with candidates="tree" the support stays inside the initial (pruned) support + tree neighbours
    p0 = prune_weights(w0, 3)
    cand, mask = candidate_bones(*to_sparse_rows(p0, 3), parents)
    allowed = np.zeros_like(W, dtype=bool)
    for c in range(cand.shape[1]):
        allowed[np.flatnonzero(mask[:, c]), cand[mask[:, c], c]] = True
    assert not (W > 0)[~allowed].any()
    # the reported history is the real error of the returned rig
    err = reconstruction_error(anchor, frames, W, fit.transforms)
    assert np.isclose(np.sqrt((err.astype(np.float64) ** 2).mean()), hist[-1], rtol=1e-4)


def test_motion_clustering_and_candidates_escape_a_wrong_start():
    """Blurry weights (every bone spread over half the tube): the Kabsch start mixes the parts' motions and
    the refinement limited to the tree neighbours of that support stays far off; the motion clustering
    start and the motion candidates find the bone that really moves each part."""
    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=12, n_bones=6)
    anchor = frames[0]
    logits = -(np.linalg.norm(anchor[:, None] - joints[None], axis=-1) / 0.3) ** 2
    w_bad = np.exp(logits - logits.max(1, keepdims=True))
    diag = np.linalg.norm(np.ptp(anchor, 0))
    err = {}
    for mode in ("tree", "motion"):
        cfg = FitConfig(refine_iters=10, tol=0.0, candidates=mode, motion_init_rounds=5 if mode == "motion" else 0)
        fit = fit_motion(anchor, frames, w_bad, parents, joints, faces, cfg)
        hist = np.asarray(fit.rmse_history)
        assert (np.diff(hist) <= 1e-12 * hist[0]).all(), hist
        err[mode] = reconstruction_error(anchor, frames, fit.weights, fit.transforms).mean() / diag
        assert np.allclose(fit.weights.sum(1), 1.0, atol=1e-5) and ((fit.weights > 0).sum(1) <= 4).all()
    assert err["motion"] < 1e-4, err  # the tube moves by exact LBS: near-exact recovery
    assert err["motion"] < 0.1 * err["tree"], err


def test_split_clustering_finds_the_rigid_parts():
    frames, rest, part, _ = parts_sequence(n_parts=4)
    labels = split_motion_clusters(rest, np.ascontiguousarray(frames.transpose(1, 0, 2)), n_clusters=4)
    assert labels.shape == part.shape and labels.max() == 3
    for p in range(4):  # one cluster per part, and every part is one cluster
        assert len(np.unique(labels[part == p])) == 1
    assert len(np.unique(labels)) == 4


def test_clusters_go_to_the_bones_they_overlap_most():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    weights = np.zeros((8, 4))
    dominant = [3, 3, 1, 0, 0, 1, 1, 1]  # cluster 0 -> bone 3, cluster 1 -> bone 0, cluster 2 -> bone 1
    weights[np.arange(8), dominant] = 0.7
    weights += 0.1
    assert match_clusters_to_bones(labels, weights).tolist() == [3, 3, 3, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="clusters"):
        match_clusters_to_bones(np.arange(5), weights)


def test_split_start_frees_bones_that_the_weights_stack_on_one_part():
    """Two bones placed on the same rigid part and none on the last part (a misplaced predicted skeleton):
    clustering from the given regions keeps the wasted bone; the split start gives every part its own
    bone, recovers the motion exactly, and is the start ``init="best"`` picks."""
    frames, rest, part, centres = parts_sequence(n_parts=4)
    joints = np.array([centres[0], centres[0] + [0.1, 0.0, 0.0], centres[1], centres[2]])
    parents = np.array([-1, 0, 0, 0])
    w = np.exp(-np.linalg.norm(rest[:, None] - joints[None], axis=-1) ** 2 / 0.5)
    diag = np.linalg.norm(np.ptp(rest, 0))
    err = {}
    for init in ("weights", "split", "best"):
        fit = fit_motion(rest, frames, w, parents, joints, None, FitConfig(init=init, tol=0.0))
        err[init] = reconstruction_error(rest, frames, fit.weights, fit.transforms).mean() / diag
        assert fit.start == ("weights" if init == "weights" else "split")
    assert err["split"] < 1e-9 and err["best"] < 1e-9, err
    assert err["weights"] > 1e-3, err


def test_motion_clustering_never_starts_worse_than_the_given_weights():
    """With the true weights the clustered (hard) start is worse and is not taken."""
    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=8)
    plain = fit_motion(frames[0], frames, w_gt, parents, joints, faces, FitConfig(refine_iters=0))
    fit = fit_motion(frames[0], frames, w_gt, parents, joints, faces, FitConfig(refine_iters=1))
    assert fit.rmse_history[0] == pytest.approx(plain.rmse_history[0]) and fit.start == "given"


def test_simplex_solve_stays_finite_when_every_candidate_is_exact():
    """A vertex that every candidate bone reproduces exactly has an all-zero residual Gram matrix; the
    exact solve must still return finite rows on the simplex (it used to overflow)."""
    H = np.zeros((3, 4, 4))
    H[1] = 1e-40 * np.eye(4)
    H[2, :2, :2] = [[1.0, 1.0], [1.0, 1.0]]  # two identical candidates, two exact ones
    with np.errstate(all="raise"):
        w = _simplex_qp_on_support(H, np.zeros((3, 4)), np.ones((3, 4), dtype=bool))
    assert np.isfinite(w).all() and (w >= 0).all()
    assert np.allclose(w.sum(1), 1.0)


def test_motion_candidates_hold_the_support_and_the_best_single_bones():
    errors = np.array([[5.0, 1.0, 3.0, 0.5, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    idx = np.array([[4, 0], [2, 0]])
    val = np.array([[1.0, 0.0], [0.6, 0.4]])
    cand, mask = motion_candidate_bones(errors, idx, val, n_extra=2)
    sets = [set(cand[i][mask[i]].tolist()) for i in range(2)]
    assert sets == [{4, 3, 1}, {2, 0, 1}]


def test_exact_lbs_motion_is_recovered():
    """Frames made by LBS of the anchor itself: the fit from the true weights drives the error to ~0."""
    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=8)
    fit = fit_motion(frames[0], frames, w_gt, parents, joints, faces,
                     FitConfig(refine_iters=10, tol=0.0, refine_weights=False))
    err = reconstruction_error(frames[0], frames, fit.weights, fit.transforms)
    assert err.max() < 1e-5  # the tube is 1 long
    assert fit.rmse_history[-1] < 1e-3 * fit.rmse_history[0]
    # alternating with the weights (no smoothing) also converges toward the exact rig
    fit = fit_motion(frames[0], frames, w_gt, parents, joints, faces,
                     FitConfig(refine_iters=10, tol=0.0, smoothness=0.0, smooth_slack=0.0))
    assert fit.rmse_history[-1] < 0.05 * fit.rmse_history[0]
    assert np.abs(fit.weights - w_gt).sum(1).mean() < 0.05


def test_weak_bones_borrow_parent_or_nearest_motion():
    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=6, n_bones=6)
    w = w_gt.copy()
    # bone 3 loses all its weight to bone 2, and the root loses its weight to bone 1
    w[:, 2] += w[:, 3]
    w[:, 3] = 0.0
    w[:, 1] += w[:, 0]
    w[:, 0] = 0.0
    fit = fit_motion(frames[0], frames, w, parents, joints, faces, FitConfig(refine_iters=0))
    assert fit.borrowed.tolist() == [True, False, False, True, False, False]
    assert np.allclose(fit.transforms[:, 3], fit.transforms[:, 2])  # parent
    assert np.allclose(fit.transforms[:, 0], fit.transforms[:, 1])  # nearest supported bone


def test_local_pose_round_trip_is_exact():
    rng = np.random.default_rng(3)
    J, K = 9, 7
    parents = np.array([-1, 0, 1, 1, 0, 4, 5, 2, 3])
    joints = rng.normal(size=(J, 3))
    T = np.zeros((K, J, 4, 4))
    T[..., :3, :3] = random_rotations(rng, (K, J))
    T[..., :3, 3] = rng.normal(size=(K, J, 3))
    T[..., 3, 3] = 1.0
    quat, trans = to_local_pose(T, joints, parents)
    assert quat.shape == (K, J, 4) and trans.shape == (K, J, 3)
    assert np.allclose(np.linalg.norm(quat, axis=-1), 1.0)
    assert np.abs(from_local_pose(quat, trans, joints, parents) - T).max() < 1e-12
    # the other direction (quaternions up to sign)
    q2, t2 = to_local_pose(from_local_pose(quat, trans, joints, parents), joints, parents)
    assert np.abs(np.abs(np.sum(q2 * quat, -1)) - 1).max() < 1e-12
    assert np.abs(t2 - trans).max() < 1e-12
    # hemisphere continuity over frames
    assert (np.sum(quat[1:] * quat[:-1], -1) >= 0).all()
    # rest pose: identity rotations, translations = offsets to the parent
    q_rest, t_rest = to_local_pose(np.broadcast_to(np.eye(4), (1, J, 4, 4)), joints, parents)
    assert np.allclose(q_rest, [1, 0, 0, 0])
    assert np.allclose(t_rest[0, 0], joints[0])
    assert np.allclose(t_rest[0, 1:], joints[1:] - joints[parents[1:]])


def test_quaternion_conversions_cover_all_branches():
    rng = np.random.default_rng(4)
    R = random_rotations(rng, (500,))
    # include 180-degree turns, where the trace branch fails
    R[:3] = np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])
    q = matrix_to_quaternion(R)
    assert (q[:, 0] >= 0).all()
    assert np.abs(quaternion_to_matrix(q) - R).max() < 1e-12


def test_fit_rejects_bad_input():
    frames, faces, joints, parents, w = tube_sequence(n_frames=3)
    with pytest.raises(ValueError, match="weights must have shape"):
        fit_motion(frames[0], frames, w[:, :3], parents, joints, faces)
    with pytest.raises(ValueError, match="frames must have shape"):
        fit_motion(frames[0], frames[:, :10], w, parents, joints, faces)
    bad = frames.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_motion(frames[0], bad, w, parents, joints, faces)
    with pytest.raises(ValueError, match="root"):
        fit_motion(frames[0], frames, w, np.zeros(len(parents), dtype=int), joints, faces)
    with pytest.raises(ValueError, match="init"):
        FitConfig(init="network")
    with pytest.raises(ValueError, match="split_seed_fraction"):
        FitConfig(split_seed_fraction=1.0)


def test_fit_is_deterministic():
    frames, faces, joints, parents, w = tube_sequence(n_frames=5)
    a = fit_motion(frames[0], frames, w, parents, joints, faces)
    b = fit_motion(frames[0], frames, w, parents, joints, faces)
    assert np.array_equal(a.transforms, b.transforms) and np.array_equal(a.weights, b.weights)


def test_keyframe_fit_reproduces_every_frame_of_a_long_clip():
    """Weights refined on 8 of 40 frames, then every frame's transforms fitted to them: the exact-LBS tube
    is still recovered on all frames; progress reaches 1 and cancelling inside the keyframe fit works."""
    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=40, n_bones=6)
    anchor = frames[0]
    logits = -(np.linalg.norm(anchor[:, None] - joints[None], axis=-1) / 0.3) ** 2
    w_bad = np.exp(logits - logits.max(1, keepdims=True))
    diag = np.linalg.norm(np.ptp(anchor, 0))
    seen = []
    fit = fit_motion(anchor, frames, w_bad, parents, joints, faces, FitConfig(max_fit_frames=8, tol=0.0),
                     progress=seen.append)
    assert fit.keyframes is not None and len(fit.keyframes) == 8 and fit.keyframes[0] == 0 and fit.keyframes[-1] == 39
    assert fit.transforms.shape == (40, 6, 4, 4)
    err = reconstruction_error(anchor, frames, fit.weights, fit.transforms) / diag
    assert err.mean() < 1e-4, err.mean()
    assert seen[-1] == 1.0 and all(b >= a - 1e-12 for a, b in zip(seen, seen[1:]))
    full = fit_motion(anchor, frames, w_bad, parents, joints, faces, FitConfig(max_fit_frames=0))
    assert full.keyframes is None
    calls = []
    with pytest.raises(FitCancelled):
        fit_motion(anchor, frames, w_bad, parents, joints, faces, FitConfig(max_fit_frames=8),
                   progress=calls.append, should_cancel=lambda: len(calls) >= 3)
    with pytest.raises(ValueError, match="max_fit_frames"):
        FitConfig(max_fit_frames=1)


def test_bones_in_reach_keep_near_bones_and_the_nearest_ones_tree_neighbours():
    from backend.rigging.fit.solve import bones_in_reach, tree_hops

    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])  # a chain along x: diagonal 3
    parents = np.array([-1, 0, 1, 2])
    points = np.array([[0.0, 0, 0], [0.2, 0.1, 0], [3.5, 0, 0.0]])
    reach = bones_in_reach(points, joints, parents, 0.1, diag=3.0)  # 0.3 units
    assert reach[0].tolist() == [True, True, False, False]  # bone 1 (from 1 to 2) as the second nearest
    assert reach[1].tolist() == [True, True, False, False]
    assert reach[2].tolist() == [False, False, True, True]  # beyond the leaf: the leaf and bone 2, which ends on it
    # with a hop limit the nearest bone's parent and children are always in reach instead of the second nearest
    hop_reach = bones_in_reach(points, joints, parents, 0.1, max_hops=3, diag=3.0)
    assert hop_reach[2].tolist() == [False, True, True, True]  # nearest: bone 2 (ties with the leaf, lower index)
    assert bones_in_reach(points, joints, parents, 10.0).all()
    # two legs from a root, the feet 0.36 apart: a point on the right foot keeps off the left leg with a hop limit
    joints = np.array([[0.0, 2, 0], [-0.2, 1, 0], [-0.3, 0, 0], [0.2, 1, 0], [0.05, 0, 0]])
    parents = np.array([-1, 0, 1, 0, 3])
    assert tree_hops(parents)[2].tolist() == [2, 1, 0, 3, 4]
    foot = np.array([[0.06, 0.0, 0.0]])  # nearest: the right shin (bone 3), which ends on the right foot's joint
    reach = lambda hops: bones_in_reach(foot, joints, parents, 0.4, max_hops=hops, diag=2.0)[0].tolist()  # noqa: E731
    assert reach(None) == [False, True, True, True, True]  # the root is 1.03 away, outside 0.8
    assert reach(2) == [True, True, False, True, True]  # the left thigh is two bones away, the left foot three
    assert reach(1) == [True, False, False, True, True]
    # a bone nearer than NEAR_ANY_BRANCH of the reach (0.32 here) stays in reach on any branch
    assert bones_in_reach(foot, joints, parents, 1.0, max_hops=1, diag=2.0)[0].tolist() == [True] * 5


def test_weights_keep_to_bones_in_reach_while_the_error_still_falls():
    """A bending tube: with a reach of 0.2 of the diagonal no vertex keeps weight on a far bone, except the one
    bone whose motion alone follows it best."""
    from backend.rigging.fit.solve import ResidualGram, bones_in_reach

    frames, faces, joints, parents, w_gt = tube_sequence(n_frames=8)
    anchor = frames[0]
    w0 = np.full(w_gt.shape, 1.0 / w_gt.shape[1])  # every bone everywhere
    free = fit_motion(anchor, frames, w0, parents, joints, faces, FitConfig(refine_iters=6))
    limited = fit_motion(anchor, frames, w0, parents, joints, faces, FitConfig(refine_iters=6, max_bone_distance=0.2))
    reach = bones_in_reach(anchor, joints, parents, 0.2, max_hops=2)
    single = ResidualGram(anchor, np.ascontiguousarray(frames.transpose(1, 0, 2)),
                          limited.transforms).single_bone_errors()
    reach[np.arange(len(anchor)), single.argmin(axis=1)] = True
    assert (free.weights[~reach] > 0).any()  # without the limit far bones help
    assert not (limited.weights[~reach] > 0).any()
    assert limited.rmse_history[-1] < 0.5 * limited.rmse_history[0]  # the fit still works within the reach


def test_ties_in_the_clustering_do_not_follow_float_rounding():
    """Two clusters that reproduce a vertex to the last bit are a tie: the vertex keeps its label, else takes the
    lowest cluster; a real difference still decides. The Khronos Fox (20 frames) in Blender's axes and the same
    clip stored Y-up under an object turned 90 degrees about X (world positions 4e-8 of the size apart) now cluster
    alike and get the same skeleton (before: 23 and 20 bones)."""
    from backend.rigging.fit.starts import stable_argmin

    errors = np.array([[3e-15, 1e-15, 0.5], [2e-3, 1e-3, 1e-15], [0.2, 0.1, 0.1 + 1e-16]])
    assert stable_argmin(errors).tolist() == [0, 2, 1]
    assert stable_argmin(errors, current=np.array([1, 0, 2])).tolist() == [1, 2, 2]
    assert stable_argmin(errors, current=np.array([2, -1, 0])).tolist() == [0, 2, 1]  # current not tied / none

    path = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "khronos_fox_run.npz"
    if not path.exists():
        pytest.skip("../shared/realdata not available")
    from backend.normalize import anchor_normalize
    from backend.rigging.skeleton_from_motion import skeleton_from_motion

    data = np.load(path)
    verts = data["verts"][:20].astype(np.float32)
    blender_axes = (verts.astype(np.float64) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T).astype(np.float32)
    cos90 = np.float32(-4.371139e-08)  # Blender's single-precision cos(90 degrees)
    turned = verts @ np.array([[1, 0, 0], [0, cos90, -1], [0, 1, cos90]], dtype=np.float32).T
    assert 0 < np.abs(turned - blender_axes).max() < 1e-5
    skeletons = [skeleton_from_motion(anchor_normalize(x, "z")[0], data["faces"]) for x in (blender_axes, turned)]
    assert skeletons[0].names == skeletons[1].names
