"""Articulated motion fit (bones rotate about their joints), joint separation, seams, and articulated outputs."""

from __future__ import annotations

import numpy as np
import pytest

from backend.io.gltf import save_rigged_gltf
from backend.io import load_sequence
from backend.lbs import linear_blend_skinning
from backend.metrics import bone_distances, far_led_share, joint_separation
from backend.rigging.fit import FitConfig, fit_motion, reconstruction_error
from backend.rigging.fit.articulated import (ArticulatedGaussNewton, project_to_articulated, subtrees,
                                             update_articulated_transforms)
from backend.rigging.fit.sparse import blend_sparse, bone_groups, to_sparse_rows
from backend.rigging.pose import from_local_pose
from backend.rigging.result import RigResult
from backend.sequence import colocated_representatives
from backend.skeleton import bone_tails
from test_fit import tube_sequence
from test_io import _glb_parts


def branching_sequence(n_frames: int = 8, seed: int = 0):
    """The tube of :func:`test_fit.tube_sequence` with a second tube branching off its second joint
    (a tree, not a chain), articulated LBS of a known skeleton. Returns frames, faces, joints, parents, weights."""
    frames_a, faces_a, joints_a, parents_a, w_a = tube_sequence(n_frames=n_frames, n_bones=4, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rest_a = frames_a[0]
    # second tube: along +y from joint 1
    rest_b = rest_a[:, [1, 0, 2]] * np.array([1.0, 0.6, 1.0]) + joints_a[1]
    J = 6
    joints = np.concatenate([joints_a, joints_a[1] + np.array([[0.0, 0.2, 0.0], [0.0, 0.4, 0.0]])])
    parents = np.array([-1, 0, 1, 2, 1, 4])
    t = (rest_b[:, 1] - joints_a[1, 1]) / 0.6
    w_b = np.zeros((len(rest_b), J))
    w_b[:, 1] = np.clip(1 - t / 0.3, 0, 1)
    w_b[:, 5] = np.clip((t - 0.5) / 0.3, 0, 1)
    w_b[:, 4] = 1 - w_b[:, 1] - w_b[:, 5]
    w = np.concatenate([np.pad(w_a, ((0, 0), (0, 2))), w_b])
    rest = np.concatenate([rest_a, rest_b])
    faces = np.concatenate([faces_a, faces_a + len(rest_a)])
    time = np.linspace(0, 2 * np.pi, n_frames, endpoint=False)
    angle = 0.5 * np.sin(time[:, None] + 0.9 * np.arange(J)[None]) * (time[:, None] > 0)
    axis = rng.normal(size=(J, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    quat = np.concatenate([np.cos(angle / 2)[..., None], np.sin(angle / 2)[..., None] * axis[None]], -1)
    local_t = np.zeros((n_frames, J, 3))
    local_t[:, 1:] = joints[1:] - joints[parents[1:]]
    local_t[:, 0] = joints[0] + 0.1 * np.sin(time)[:, None]
    T = from_local_pose(quat, local_t, joints, parents)
    return linear_blend_skinning(rest, w, T).astype(np.float64), faces, joints, parents, w, T


def test_joint_separation_zero_for_articulated_and_measures_free_motion():
    frames, faces, joints, parents, w, T = branching_sequence()
    assert joint_separation(T, joints, parents).max() < 1e-12
    moved = T.copy()
    moved[:, 3, :3, 3] += [0.0, 0.25, 0.0]  # bone 3 slides off its parent's joint
    sep = joint_separation(moved, joints, parents)
    np.testing.assert_allclose(sep[:, 3], 0.25, atol=1e-12)
    assert np.abs(np.delete(sep, 3, axis=1)).max() < 1e-12
    with pytest.raises(ValueError, match="disagree"):
        joint_separation(T[:, :3], joints, parents)


def test_projection_keeps_rotations_and_attaches_children():
    rng = np.random.default_rng(0)
    _, _, joints, parents, _, T = branching_sequence()
    noisy = T.copy()
    noisy[..., :3, 3] += 0.05 * rng.normal(size=noisy[..., :3, 3].shape)
    projected = project_to_articulated(noisy, joints, parents)
    assert joint_separation(projected, joints, parents).max() < 1e-12
    np.testing.assert_array_equal(projected[..., :3, :3], noisy[..., :3, :3])
    np.testing.assert_array_equal(projected[:, 0], noisy[:, 0])  # the root keeps its motion


def test_subtrees_of_a_branching_tree():
    assert [m.tolist() for m in subtrees(np.array([-1, 0, 1, 2, 1, 4]))] == [
        [0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [2, 3], [3], [4, 5], [5]]


def perturbed_start(T: np.ndarray, joints: np.ndarray, parents: np.ndarray, rng: np.random.Generator,
                    scale: float) -> np.ndarray:
    """The generating transforms ``T [K, J, 4, 4]`` with every frame but the first turned by one random
    rotation (``scale`` of noise), projected back onto the articulated motions."""
    start = T.copy()
    start[1:, :, :3, :3] = start[1:, :, :3, :3] @ np.linalg.qr(np.eye(3) + scale * rng.normal(size=(3, 3)))[0]
    start[..., :3, :3] *= np.sign(np.linalg.det(start[..., :3, :3]))[..., None, None]
    return project_to_articulated(start, joints, parents)


def test_articulated_updates_are_exact_and_never_raise_the_error():
    """Both transform updates lower the error monotonically from a perturbed start, keep the bones attached,
    keep the residual they carry equal to the true one, and reach the generating motion (GT weights)."""
    frames, faces, joints, parents, w, T = branching_sequence()
    start = perturbed_start(T, joints, parents, np.random.default_rng(3), 0.15)
    anchor = frames[0]
    xv = np.ascontiguousarray(frames.transpose(1, 0, 2))
    groups = bone_groups(*to_sparse_rows(w, 4), len(parents))
    for mode in ("block", "lm"):
        transforms = start.copy()
        resid = xv - blend_sparse(anchor, groups, transforms)
        errors = [float(np.sum(resid ** 2))]
        lm = ArticulatedGaussNewton(anchor, xv, groups, joints, parents)
        for _ in range(30 if mode == "block" else 16):
            if mode == "block":
                update_articulated_transforms(anchor, resid, groups, transforms, joints, parents)
            else:
                transforms, resid = lm.run(transforms, resid, iters=1)
            errors.append(float(np.sum(resid ** 2)))
            np.testing.assert_allclose(resid, xv - blend_sparse(anchor, groups, transforms), atol=1e-9)
            assert joint_separation(transforms, joints, parents).max() < 1e-9
        assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:])), (mode, errors)
        assert errors[-1] < 0.5 * errors[0]
        if mode == "lm":  # the joint step recovers the generating motion
            assert errors[-1] < 1e-10 * errors[0]
            np.testing.assert_allclose(transforms, T, atol=1e-3)  # thin leaf bones: the spin is weakly determined


def test_block_update_from_the_prediction_equals_the_sum_over_the_subtree():
    """Given the frames, a subtree's part is the prediction minus the other bones' part: the same update as the
    sum over the subtree's bones, to rounding, on overlapping (four-influence) weights."""
    frames, faces, joints, parents, w, T = branching_sequence()
    rng = np.random.default_rng(5)
    start = perturbed_start(T, joints, parents, rng, 0.2)
    anchor = frames[0]
    xv = np.ascontiguousarray(frames.transpose(1, 0, 2))
    w_blend = np.clip(w + 0.2 * rng.random(w.shape), 0, None)
    w_blend /= w_blend.sum(1, keepdims=True)
    groups = bone_groups(*to_sparse_rows(w_blend, 4), len(parents))
    out = []
    for given in (None, xv):
        transforms = start.copy()
        resid = xv - blend_sparse(anchor, groups, transforms)
        for _ in range(3):
            update_articulated_transforms(anchor, resid, groups, transforms, joints, parents, frames_vm=given)
        out.append((transforms, resid))
    assert np.abs(out[0][1]).max() > 1e-3  # not converged: the comparison is not between two exact fits
    np.testing.assert_allclose(out[1][0], out[0][0], atol=1e-12)
    np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-12)

def test_articulated_fit_reproduces_an_articulated_sequence_and_keeps_bones_attached():
    frames, faces, joints, parents, w, T = branching_sequence()
    rng = np.random.default_rng(1)
    w_start = np.clip(w + 0.3 * rng.random(w.shape), 0, None)
    w_start /= w_start.sum(1, keepdims=True)
    diag = float(np.linalg.norm(np.ptp(frames[0], axis=0)))
    free = fit_motion(frames[0], frames, w_start, parents, joints, faces, FitConfig())
    fit = fit_motion(frames[0], frames, w_start, parents, joints, faces, FitConfig(articulated=True))
    assert joint_separation(fit.transforms, fit.joints, parents).max() < 1e-9 * diag  # about the (refined) joints
    assert np.linalg.norm(fit.joints - joints, axis=1).max() < 0.02 * diag
    assert joint_separation(free.transforms, joints, parents).max() > 1e-3 * diag  # what it fixes
    assert all(b <= a * (1 + 1e-12) for a, b in zip(fit.rmse_history, fit.rmse_history[1:]))
    err = reconstruction_error(frames[0], frames, fit.weights, fit.transforms) / diag
    assert err.mean() < 2e-3 and err.max() < 2e-2
    # from the true weights, the motion itself is recovered
    exact = fit_motion(frames[0], frames, w, parents, joints, faces, FitConfig(articulated=True, refine_weights=False))
    assert (reconstruction_error(frames[0], frames, exact.weights, exact.transforms) / diag).max() < 1e-5
    kept = fit_motion(frames[0], frames, w_start, parents, joints, faces,
                      FitConfig(articulated=True, refine_joints=False))
    np.testing.assert_array_equal(kept.joints, joints)
    assert joint_separation(kept.transforms, joints, parents).max() < 1e-9 * diag


def test_joint_refinement_moves_misplaced_joints_toward_the_pivots():
    """Joints given off the true pivots (as a network may place them): the fit moves them back toward the
    pivots and reproduces the frames better than with the joints held."""
    frames, faces, joints, parents, w, T = branching_sequence()
    diag = float(np.linalg.norm(np.ptp(frames[0], axis=0)))
    off = joints + 0.06 * np.random.default_rng(4).normal(size=joints.shape)
    held = fit_motion(frames[0], frames, w, parents, off, faces, FitConfig(articulated=True, refine_joints=False))
    moved = fit_motion(frames[0], frames, w, parents, off, faces, FitConfig(articulated=True))
    err = lambda f: float(reconstruction_error(frames[0], frames, f.weights, f.transforms).mean())  # noqa: E731
    assert err(moved) < err(held)
    assert np.linalg.norm(moved.joints - joints, axis=1).mean() < np.linalg.norm(off - joints, axis=1).mean()
    assert joint_separation(moved.transforms, moved.joints, parents).max() < 1e-9 * diag
    assert all(b <= a * (1 + 1e-12) for a, b in zip(moved.rmse_history, moved.rmse_history[1:]))
    with pytest.raises(ValueError, match="needs the skeleton's joints"):
        fit_motion(frames[0], frames, w, parents, None, faces, FitConfig(articulated=True))


def test_joint_refinement_keeps_joints_inside_when_told_where_inside_is():
    """``refine_joints(region=...)``: a joint whose free step would leave the allowed region stops at its edge
    (the others move as without the constraint), and the step still lowers the error."""
    from backend.rigging.fit.articulated import refine_joints

    frames, faces, joints, parents, w, T = branching_sequence()
    off = joints + 0.06 * np.random.default_rng(4).normal(size=joints.shape)
    held = fit_motion(frames[0], frames, w, parents, off, faces, FitConfig(articulated=True, refine_joints=False))
    anchor = frames[0].astype(np.float64)
    frames_vm = np.ascontiguousarray(frames.transpose(1, 0, 2)).astype(np.float64)
    J = len(parents)
    idx, val = to_sparse_rows(held.weights.astype(np.float64), 4)
    groups = bone_groups(idx, val, J)
    free = refine_joints(anchor, frames_vm, groups, held.transforms, off, off, parents, 1e-3)
    assert free is not None
    step = np.linalg.norm(free[1] - off, axis=1)
    j = int(np.argmax(step))
    radius = 0.5 * step[j]  # "inside": within half the free step of joint j's prior; everywhere for the others

    class Region:  # the interface of JointRegion, with a ball for joint j as its "mesh"
        prior_inside = np.ones(J, dtype=bool)

        def inside(self, pts: np.ndarray, which: np.ndarray) -> np.ndarray:
            return (which != j) | (np.linalg.norm(pts - off[j], axis=1) <= radius + 1e-12)

    kept = refine_joints(anchor, frames_vm, groups, held.transforms, off, off, parents, 1e-3, region=Region())
    assert kept is not None
    assert np.linalg.norm(kept[1][j] - off[j]) <= radius + 1e-6
    assert np.linalg.norm(kept[1][j] - off[j]) > 0.8 * radius  # at the edge, not back at the prior
    old_err = np.sum((frames_vm - blend_sparse(anchor, groups, held.transforms)) ** 2)
    assert np.sum(kept[2] ** 2) < old_err
    assert joint_separation(kept[0], kept[1], parents).max() < 1e-9


def test_joint_region_tests_inside_a_closed_box_with_a_safe_ball_per_joint():
    from backend.rigging.fit.articulated import JointRegion

    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    region = JointRegion(v, faces, np.array([[0.5, 0.5, 0.5], [0.9, 0.5, 0.5], [2.0, 0.5, 0.5]]))
    assert region.prior_inside.tolist() == [True, True, False]
    np.testing.assert_allclose(region.safe, [0.5, 0.1, 0.0])
    pts = np.array([[0.6, 0.6, 0.6], [1.05, 0.5, 0.5], [0.95, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert region.inside(pts, np.array([0, 1, 1, 2])).tolist() == [True, False, True, True]


def test_colocated_representatives_group_whole_trajectories():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 3))
    x[:, 4] = x[:, 1]  # duplicate on every frame
    x[:, 5] = x[:, 2]
    x[3, 5] += 0.1  # ... except one frame: not a seam
    np.testing.assert_array_equal(colocated_representatives(x), [0, 1, 2, 3, 1, 5])
    np.testing.assert_array_equal(colocated_representatives(x[0]), [0, 1, 2, 3, 1, 2])
    with pytest.raises(ValueError, match="tol"):
        colocated_representatives(x, tol=0.0)


def test_seam_vertices_get_identical_weights():
    """A flat-shaded copy of the tube (every face with its own three vertices): co-located vertices get the
    same weights and the reconstruction's seams stay closed."""
    frames, faces, joints, parents, w = tube_sequence(n_frames=8, n_bones=4)
    split = frames[:, faces.reshape(-1)]  # [K, 3F, 3]
    split_faces = np.arange(split.shape[1]).reshape(-1, 3)
    w_split = w[faces.reshape(-1)]
    rng = np.random.default_rng(0)
    w_start = np.clip(w_split + 0.3 * rng.random(w_split.shape), 0, None)  # different noise on each copy
    rep = colocated_representatives(split)
    assert (rep != np.arange(len(rep))).sum() == split.shape[1] - frames.shape[1]
    for articulated in (False, True):
        fit = fit_motion(split[0], split, w_start, parents, joints, split_faces, FitConfig(articulated=articulated))
        assert fit.welded == split.shape[1] - frames.shape[1]
        np.testing.assert_array_equal(fit.weights, fit.weights[rep])
        off = fit_motion(split[0], split, w_start, parents, joints, split_faces,
                         FitConfig(articulated=articulated, weld_seams=False))
        assert np.abs(off.weights - off.weights[rep]).max() > 1e-3  # without welding the copies differ


def test_glb_has_rotation_only_channels_on_articulated_non_roots(tmp_path):
    frames, faces, joints, parents, w, T = branching_sequence()
    path = save_rigged_gltf(tmp_path / "art.glb", frames[0], faces, joints, parents, None, w, T, fps=10.0)
    doc, _ = _glb_parts(path)
    joint_nodes = doc["skins"][0]["joints"]
    paths = {}
    for channel in doc["animations"][0]["channels"]:
        paths.setdefault(channel["target"]["node"], set()).add(channel["target"]["path"])
    assert paths[joint_nodes[0]] == {"translation", "rotation"}
    assert all(paths[joint_nodes[j]] == {"rotation"} for j in range(1, len(parents)))
    seq = load_sequence(path, fps=10.0)  # the round trip still reproduces every frame
    assert np.abs(seq.verts - frames).max() < 1e-4 * float(np.ptp(frames[0], axis=0).max())
    # a free (separating) motion keeps the translation channel of the bone that leaves its joint
    moved = T.copy()
    moved[3:, 3, :3, 3] += 0.05
    doc, _ = _glb_parts(save_rigged_gltf(tmp_path / "free.glb", frames[0], faces, joints, parents, None, w, moved))
    translated = {c["target"]["node"] for c in doc["animations"][0]["channels"] if c["target"]["path"] == "translation"}
    assert translated == {joint_nodes[0], joint_nodes[3]}


def test_rig_result_tails_default_and_old_files(tmp_path):
    frames, faces, joints, parents, w, T = branching_sequence(n_frames=3)
    K, V = frames.shape[:2]
    result = RigResult(anchor_verts=frames[0].astype(np.float32), faces=faces.astype(np.int32),
                       joints=joints.astype(np.float32), parents=parents.astype(np.int32),
                       joint_names=[f"b{j}" for j in range(len(parents))], weights=w.astype(np.float32),
                       bone_transforms=T.astype(np.float32), frame_joints_count=np.full(K, len(parents)),
                       recon_error=np.zeros((K, V), np.float32), skin_instability=np.zeros((K, V), np.float32))
    diag = float(np.linalg.norm(np.ptp(frames[0], axis=0)))
    np.testing.assert_allclose(result.tails, bone_tails(joints, parents, 1e-3 * diag), atol=1e-6)
    np.testing.assert_allclose(result.tails[2], joints[3], atol=1e-6)  # one child: ends on its joint
    result.tails = result.tails + 0.5  # custom tails survive save/load
    result.save(tmp_path / "r.npz")
    np.testing.assert_array_equal(RigResult.load(tmp_path / "r.npz").tails, result.tails)
    with np.load(tmp_path / "r.npz") as data:  # a file written before tails existed: computed on load
        old = {k: data[k] for k in data.files if k != "tails"}
    np.savez(tmp_path / "old.npz", **old)
    np.testing.assert_allclose(RigResult.load(tmp_path / "old.npz").tails, result.tails - 0.5, atol=1e-6)


def test_carry_tails_keeps_connections_and_directions() -> None:
    """Moved joints: a bone ending on its only child's joint still ends there; other tails move with the head."""
    from backend.skeleton import carry_tails

    joints = np.array([[0.0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 1, 0]])
    parents = np.array([-1, 0, 1, 1])  # root -> spine -> (head, arm): the spine branches
    tails = np.array([[0.0, 1, 0], [0, 1.5, 0], [0, 2.5, 0], [1.5, 1, 0]])
    moved = joints + np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]])
    out = carry_tails(tails, joints, moved, parents)
    np.testing.assert_allclose(out[0], moved[1])  # one child: stays connected
    np.testing.assert_allclose(out[1], tails[1] + [0.1, 0, 0])  # branching: moves with its head
    np.testing.assert_allclose(out[2], tails[2] + [0, 0.2, 0])  # leaves keep direction and length
    np.testing.assert_allclose(out[3], tails[3] + [0, 0, 0.3])


def test_bone_distances_and_far_led_share():
    """A straight 3-bone chain along x (joints at 0, 1, 2, the last bone's tail at 3): distances are to the
    segments, and skin led by a bone that is not among the nearest ones is counted."""
    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    tails = np.array([[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    parents = np.array([-1, 0, 1])
    points = np.array([[0.5, 1.0, 0], [1.5, 0.0, 2.0], [2.9, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    d = bone_distances(points, joints, tails, parents)
    np.testing.assert_allclose(d[0], [1.0, np.hypot(0.5, 1.0), np.hypot(1.5, 1.0)])
    np.testing.assert_allclose(d[1], [np.hypot(0.5, 2.0), 2.0, np.hypot(0.5, 2.0)])
    np.testing.assert_allclose(d[2], [1.9, 0.9, 0.0], atol=1e-12)  # bone 1 ends at 2, bone 2 at its tail 3
    np.testing.assert_allclose(d[3], [1.0, 2.0, 3.0])
    near = np.eye(3)[[0, 1, 2, 0]]  # every point led by its nearest bone
    assert far_led_share(points, near, joints, tails, parents, nearest=1) == 0.0
    far = np.eye(3)[[2, 1, 0, 2]]  # points 0, 2, 3 led by the bone farthest from them
    assert far_led_share(points, far, joints, tails, parents, nearest=1) == 0.75
    assert far_led_share(points, far, joints, tails, parents, nearest=2) == 0.75  # two bones nearer than the lead
    assert far_led_share(points, far, joints, tails, parents, nearest=3) == 0.0
    with pytest.raises(ValueError, match="tails"):
        bone_distances(points, joints, tails[:2], parents)


def test_free_motion_articulated_about_its_true_pivots():
    """``articulate_free_motion``: given the clip's own bone motions as a free fit's, joints started off the
    pivots (as a skeleton placed from the shape may be) move onto them (every bone here turns about one axis,
    so along it a joint may stay where it was), and the articulated motion about them reproduces the clip."""
    from backend.rigging.fit.articulated import articulate_free_motion

    frames, faces, joints, parents, w, T = branching_sequence()
    off = joints + 0.06 * np.random.default_rng(5).normal(size=joints.shape)
    frames_vm = np.ascontiguousarray(frames.transpose(1, 0, 2))
    idx, val = to_sparse_rows(w, 4)
    groups = bone_groups(idx, val, len(parents))
    found = articulate_free_motion(frames[0], frames_vm, groups, T, off, parents, 1e-9)
    posed = lambda c: blend_sparse(frames[0], groups, project_to_articulated(T, c, parents))  # noqa: E731
    assert np.abs(posed(off) - frames_vm).max() > 1e-2
    assert np.abs(posed(found) - frames_vm).max() < 1e-6


def test_free_start_moves_misplaced_joints_to_the_pivots_and_lowers_the_error():
    """``FitConfig.free_start_iters``: from joints well off the pivots and noisy weights, the articulated fit
    with a free start ends nearer the true joints and lower in error than without, bones attached, joints
    refined further by the articulated alternations."""
    frames, faces, joints, parents, w, T = branching_sequence()
    diag = float(np.linalg.norm(np.ptp(frames[0], axis=0)))
    rng = np.random.default_rng(6)
    off = joints + 0.08 * rng.normal(size=joints.shape)
    w_start = np.clip(w + 0.3 * rng.random(w.shape), 0, None)
    w_start /= w_start.sum(1, keepdims=True)
    cfg = FitConfig(articulated=True, refine_iters=20)
    plain = fit_motion(frames[0], frames, w_start, parents, off, faces, cfg)
    started = fit_motion(frames[0], frames, w_start, parents, off, faces, FitConfig(**{**cfg.__dict__,
                                                                                      "free_start_iters": 8}))
    err = lambda f: float(reconstruction_error(frames[0], frames, f.weights, f.transforms).mean())  # noqa: E731
    off_by = lambda f: float(np.linalg.norm(f.joints[1:] - joints[1:], axis=1).mean())  # noqa: E731
    assert err(started) < err(plain)
    assert off_by(started) < 0.7 * off_by(plain)
    assert joint_separation(started.transforms, started.joints, parents).max() < 1e-9 * diag
    assert len(started.rmse_history) - 1 <= 20 - 8  # the free alternations count toward refine_iters
    # joints held: no free start (it would move them)
    held = fit_motion(frames[0], frames, w_start, parents, off, faces,
                      FitConfig(articulated=True, refine_joints=False, free_start_iters=8))
    np.testing.assert_array_equal(held.joints, off)
