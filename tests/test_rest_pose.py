"""The rig's rest shape (``FitConfig.solve_rest``, ``RigConfig.solve_rest``): a clip whose first frame is not
the pose its skin was bound in, where blending the anchor frame cannot reproduce the other frames and a solved
rest shape can."""

from __future__ import annotations

import numpy as np

from backend.lbs import linear_blend_skinning
from backend.rigging.fit import FitConfig, fit_motion, reconstruction_error
from backend.rigging.fit.sparse import to_sparse_rows
from backend.rigging.fit.solve import update_rest_pose
from backend.rigging.proxy import build_proxy, full_mesh_weights
from backend.sequence import colocated_representatives

from test_proxy import rotation_z, tube


def bent_first_clip(n_frames: int = 10):
    """The tube bound straight to a 3-bone chain (smooth blends at x = 1 and 2) and posed so that already its
    first frame bends at both joints: ``(bind [V, 3], faces, weights [V, 3], transforms [K, 3, 4, 4] bind ->
    frame, joints [3, 3] on the bind, frames [K, V, 3])``."""
    bind, faces = tube()
    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    x = bind[:, 0]
    t1, t2 = np.clip((x - 0.7) / 0.6, 0, 1), np.clip((x - 1.7) / 0.6, 0, 1)
    weights = np.stack([1 - t1, t1 * (1 - t2), t2], axis=1)
    T = np.tile(np.eye(4), (n_frames, 3, 1, 1))
    for k in range(n_frames):
        T[k, 0, :3, 3] = [0.03 * k, 0.01 * np.sin(k), 0]
        for j, angle in ((1, 0.6 + 0.4 * np.sin(0.7 * k)), (2, -0.5 + 0.5 * np.sin(0.5 * k))):
            local = np.eye(4)
            local[:3, :3] = rotation_z(angle)
            local[:3, 3] = joints[j] - local[:3, :3] @ joints[j]
            T[k, j] = T[k, j - 1] @ local
    return bind, faces, weights, T, joints, linear_blend_skinning(bind, weights, T)


def test_rest_solve_recovers_the_bind_pose_the_anchor_frame_cannot_stand_for():
    bind, _, weights, T, _, frames = bent_first_clip()
    diag = np.linalg.norm(np.ptp(frames[0], axis=0))
    idx, val = to_sparse_rows(weights, 3)
    frames_vm = np.ascontiguousarray(frames.transpose(1, 0, 2))
    # the transforms from the first frame (as a rig of the anchor has them): blending the bent anchor misses
    relative = T @ np.linalg.inv(T[0])[None]
    anchor_err = reconstruction_error(frames[0], frames, weights, relative) / diag
    assert anchor_err.max() > 2e-3
    # the rest shape solved for the bind transforms is the bind pose, started from and pulled toward the anchor
    rest = update_rest_pose(frames_vm, idx, val, T, frames[0], regularisation=1e-9, chunk=100)
    assert np.abs(rest - bind).max() < 1e-6 * diag
    # with the current positions given, a vertex only moves where that lowers its error
    kept = update_rest_pose(frames_vm, idx, val, T, frames[0], regularisation=1e-9, current=bind)
    assert np.abs(kept - bind).max() < 1e-6 * diag
    far = update_rest_pose(frames_vm, idx, val, T, 100.0 + frames[0], regularisation=10.0, current=bind)
    assert np.array_equal(far, bind)  # the pull toward a far prior would raise every error: nothing moves


def test_articulated_fit_with_rest_solve_follows_a_clip_bent_on_its_first_frame():
    _, faces, weights, _, joints, frames = bent_first_clip()
    # the bind joints carried to the first frame: the fit's joints live on the anchor
    diag = np.linalg.norm(np.ptp(frames[0], axis=0))
    cfg = FitConfig(articulated=True, refine_iters=40, tol=0.0, motion_init_rounds=0, max_fit_frames=0)
    anchor_joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0 + np.cos(0.6), np.sin(0.6), 0]])
    plain = fit_motion(frames[0], frames, weights, [-1, 0, 1], anchor_joints, faces, cfg)
    solved = fit_motion(frames[0], frames, weights, [-1, 0, 1], anchor_joints, faces,
                        FitConfig(**{**cfg.__dict__, "solve_rest": True}))
    assert plain.rest is None and solved.rest.shape == frames[0].shape
    err_plain = reconstruction_error(frames[0], frames, plain.weights, plain.transforms) / diag
    err_solved = reconstruction_error(solved.rest, frames, solved.weights, solved.transforms) / diag
    # the weights absorb most of what a bent anchor costs; the rest shape takes off a part the weights cannot
    # (measured: 7 %); on CesiumMan's walk, whose first frame is mid-stride, 21-27 % (docs/fitting.md)
    assert err_solved.mean() < 0.95 * err_plain.mean(), (err_solved.mean(), err_plain.mean())
    assert np.all(np.diff(solved.rmse_history) <= 1e-12)  # the error never rises
    assert np.linalg.norm(solved.rest - frames[0], axis=1).max() < 0.05 * diag  # a rest near the anchor


def test_full_mesh_pass_solves_every_vertex_rest():
    """The pipeline's order with a proxy: the fit (with or without the rest solve) on the proxy's vertices,
    then every vertex's weights (and rest) against the fitted motion."""
    _, faces, weights, _, _, frames = bent_first_clip()
    diag = np.linalg.norm(np.ptp(frames[0], axis=0))
    proxy = build_proxy(frames[0], faces, colocated_representatives(frames), n_target=60)
    anchor_joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0 + np.cos(0.6), np.sin(0.6), 0]])
    errors = {}
    for solve in (False, True):
        cfg = FitConfig(articulated=True, refine_iters=40, tol=0.0, motion_init_rounds=0, max_fit_frames=0,
                        solve_rest=solve)
        fit = fit_motion(frames[0, proxy.vertices], frames[:, proxy.vertices], weights[proxy.vertices], [-1, 0, 1],
                         anchor_joints, proxy.faces, cfg)
        got, rest = full_mesh_weights(frames.astype(np.float32), proxy, fit.weights, fit.transforms,
                                      np.arange(len(frames)), chunk=100, proxy_rest=fit.rest,
                                      rest_rounds=int(solve))
        assert (rest is None) == (not solve)
        errors[solve] = (reconstruction_error(frames[0] if rest is None else rest, frames, got, fit.transforms)
                         / diag).mean()
    assert errors[True] < 0.95 * errors[False], errors


def test_untangle_walks_turned_faces_back_toward_the_anchor():
    """A rest shape whose one vertex crosses the opposite edge turns its faces over; those faces' vertices are
    walked back until no face is turned more than the limit, and faces that were fine are left alone."""
    from backend.rigging.fit import untangle_rest

    anchor, faces = tube()
    rest = anchor + 1e-3  # a small shift moves no face
    same, moved = untangle_rest(anchor, rest, faces)
    assert moved == 0 and np.array_equal(same, rest)
    v = 200
    ring_neighbour = v + 12  # the next ring's vertex: crossing past it turns the faces between them over
    rest[v] = anchor[v] + 1.5 * (anchor[ring_neighbour] - anchor[v])
    fixed, moved = untangle_rest(anchor, rest, faces)
    assert 1 <= moved <= 8
    n0 = np.cross(anchor[faces[:, 1]] - anchor[faces[:, 0]], anchor[faces[:, 2]] - anchor[faces[:, 0]])
    n1 = np.cross(fixed[faces[:, 1]] - fixed[faces[:, 0]], fixed[faces[:, 2]] - fixed[faces[:, 0]])
    cos = np.einsum("fc,fc->f", n0, n1) / np.linalg.norm(n0, axis=1) / np.linalg.norm(n1, axis=1)
    assert cos.min() > np.cos(np.radians(30))
    far = np.linalg.norm(anchor - anchor[v], axis=1) > 0.5
    assert np.array_equal(fixed[far], rest[far])  # nothing away from the fold moved


def test_untangle_keeps_seams_closed():
    """A flat-shaded mesh (every face its own corners): with ``seams`` a turned face's corners are walked back
    together with their copies on the neighbouring faces, so co-located vertices keep one rest position (walking
    back only the copy on the turned face opened the flat-shaded Fox's seams by 0.3 % of its size)."""
    from backend.rigging.fit import untangle_rest
    from backend.sequence import colocated_representatives

    anchor, faces = tube()
    flat = anchor[faces.reshape(-1)]  # [3F, 3]: every face's corners copied
    flat_faces = np.arange(len(flat)).reshape(-1, 3)
    seams = colocated_representatives(flat[None])
    v = 200
    rest = anchor.copy()
    rest[v] = anchor[v] + 1.5 * (anchor[v + 12] - anchor[v])  # turns the faces around v over
    rest_flat = rest[faces.reshape(-1)]
    fixed, moved = untangle_rest(flat, rest_flat, flat_faces, seams=seams)
    assert moved >= 1
    assert np.array_equal(fixed, fixed[seams])  # every copy where its representative is
    unwelded, _ = untangle_rest(flat, rest_flat, flat_faces)
    assert not np.array_equal(unwelded, unwelded[seams])  # what it fixes
