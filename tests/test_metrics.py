"""The paper's metrics against hand-computed values on small skeletons, plus invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.metrics import (
    blrd,
    cd_b2b,
    cd_j2b,
    cd_j2j,
    cons_improvement,
    correspond,
    euclidean_mst,
    gsd,
    jad,
    joint_temporal_variance,
    kabsch,
    masked_average,
    masked_renormalize,
    match_joints,
    mpjpe_anchor,
    pjdd,
    procrustes_align,
    sample_bones,
    skeleton_stability,
    skin_consistency,
    static_skinning_quality,
    StabilityConfig,
    topk_mask,
)
from backend.metrics.skeleton_stability import laplacian_spectrum, resample_sorted

CHAIN3 = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)
CHAIN4 = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=float)
STAR = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)  # centre + 3 unit leaves
STAR_PARENTS = np.array([-1, 0, 0, 0])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def spread_skeleton(rng: np.random.Generator, n: int = 14) -> np.ndarray:
    """Joints on a jittered grid so that nearest neighbours are well separated."""
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(3), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    pick = rng.choice(len(grid), size=n, replace=False)
    return 0.25 * grid[pick] + rng.normal(0, 0.01, (n, 3))


# ---------------------------------------------------------------- alignment


def test_kabsch_recovers_a_proper_rotation_and_translation():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20, 3))
    rot, t = random_rotation(rng), rng.normal(size=3)
    r_est, t_est = kabsch(pts, pts @ rot.T + t)
    assert np.allclose(r_est, rot, atol=1e-10) and np.allclose(t_est, t, atol=1e-10)
    # A mirror image cannot be reached by a rotation: the fit stays proper (det = +1, no scale).
    r_mirror, _ = kabsch(pts, pts * np.array([-1.0, 1.0, 1.0]))
    assert np.linalg.det(r_mirror) == pytest.approx(1.0)
    assert np.allclose(r_mirror @ r_mirror.T, np.eye(3), atol=1e-12)


def test_procrustes_aligns_a_rigid_copy_onto_the_anchor_without_scaling():
    rng = np.random.default_rng(1)
    anchor = rng.normal(size=(10, 3))
    moved = 1.0 * anchor @ random_rotation(rng).T + np.array([3.0, -2.0, 1.0])
    assert np.allclose(procrustes_align(moved, anchor), anchor, atol=1e-10)
    scaled = 2.0 * anchor  # no scale is fitted: a doubled copy stays twice as large
    aligned = procrustes_align(scaled, anchor)
    assert np.linalg.norm(aligned - aligned.mean(0), axis=1).sum() == pytest.approx(
        2 * np.linalg.norm(anchor - anchor.mean(0), axis=1).sum())


def test_match_joints_recovers_a_permutation_of_a_turned_copy():
    rng = np.random.default_rng(2)
    anchor = spread_skeleton(rng)
    perm = rng.permutation(len(anchor))
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    frame = (anchor @ turn.T + 5.0)[perm] + rng.normal(0, 0.005, anchor.shape)
    m = match_joints(frame, anchor)
    assert np.array_equal(perm[m.frame_index], m.anchor_index)
    assert m.rms < 0.02


def test_correspondence_auto_uses_index_order_for_equal_counts_and_matching_otherwise():
    rng = np.random.default_rng(3)
    anchor = spread_skeleton(rng)
    m = correspond(anchor[::-1], anchor, "auto")
    assert np.array_equal(m.frame_index, m.anchor_index)
    fewer = anchor[:-2]
    m = correspond(fewer, anchor, "auto")
    assert len(m.frame_index) == len(fewer)
    assert np.array_equal(m.frame_index, m.anchor_index)  # the surviving joints find their partners
    with pytest.raises(ValueError, match="equal joint counts"):
        correspond(fewer, anchor, "index")


# ---------------------------------------------------------------- Eq. 28-31 by hand


def test_euclidean_mst_of_a_chain_and_a_star():
    # rows hold x = 2, 0, 3, 1: the chain is rows 1 - 3 - 0 - 2
    assert {tuple(sorted(e)) for e in euclidean_mst(CHAIN4[[2, 0, 3, 1]])} == {(1, 3), (0, 3), (0, 2)}
    assert {tuple(sorted(e)) for e in euclidean_mst(STAR)} == {(0, 1), (0, 2), (0, 3)}
    dup = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=float)  # coincident joints stay connected
    assert len(euclidean_mst(dup)) == 2


def test_three_joint_chain_bent_90_degrees():
    bent = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=float)
    # D_0 = [1, 1, 2] (median 1), D_1 = [1, 1, sqrt 2]  ->  PJDD = (2 - sqrt 2) / 3
    assert pjdd(bent, CHAIN3) == pytest.approx((2 - math.sqrt(2)) / 3)
    edges = euclidean_mst(CHAIN3)
    assert blrd(bent, CHAIN3, edges) == pytest.approx(0.0)  # both bones keep length 1
    # GSD of any connected 3-joint tree is 0: its normalized Laplacian spectrum is always {0, 1, 2}.
    assert np.allclose(laplacian_spectrum(bent, edges, 1.0), [0, 1, 2])
    assert gsd(bent, CHAIN3, edges) == pytest.approx(0.0, abs=1e-12)
    # JAD on given aligned coordinates: bone 0-1 keeps direction (0), bone 1-2 turns 90 deg (0.5).
    assert jad(bent, CHAIN3, edges) == pytest.approx(0.25)


def test_four_joint_chain_with_a_stretched_middle_bone():
    stretched = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=float)
    st = skeleton_stability([CHAIN4, stretched], [np.array([-1, 0, 1, 2])] * 2)
    # D_0 = [1,1,1,2,2,3] (median 1.5), D_1 = [1,1,2,3,3,4]: sum |diff| = 4 -> 4 / 6 / 1.5
    assert st.pjdd[1] == pytest.approx(4 / 9)
    # L_0 = [1,1,1], L_1 = [1,1,2] -> 1 / 3
    assert st.blrd[1] == pytest.approx(1 / 3)
    # Path P4 with weights (a, b, c): spectrum {0, 1 - s, 1 + s, 2}, s = sqrt(ac / ((a+b)(b+c))).
    # Anchor s = 1/2, stretched (1, 2, 1): s = 1/3 -> GSD = (|2/3 - 1/2| + |4/3 - 3/2|) / 4 = 1/12
    assert st.gsd[1] == pytest.approx(1 / 12)
    assert st.jad[1] == pytest.approx(0.0, abs=1e-9)  # every bone still points along +x
    assert np.isnan(st.pjdd[0]) and not st.flicker.any()


def test_pjdd_compares_lists_of_different_length_at_common_quantiles():
    two = CHAIN3[:2]  # D = [1], resampled to 3 quantiles [1, 1, 1] against D_0 = [1, 1, 2]
    assert np.allclose(resample_sorted(np.array([1.0]), 3), [1, 1, 1])
    assert np.allclose(resample_sorted(np.array([0.0, 1.0]), 3), [0, 0.5, 1])
    assert pjdd(two, CHAIN3) == pytest.approx(1 / 3)


def test_mpjpe_anchor_by_index_and_by_hungarian_matching():
    gt = CHAIN3
    pred = gt + np.array([[0, 0.1, 0], [0, 0, 0], [0, 0, 0.2]])
    assert mpjpe_anchor(pred, gt) == pytest.approx(0.1)
    extra = np.vstack([pred[::-1], [[5, 5, 5]]])  # shuffled, plus a joint that has no partner
    assert mpjpe_anchor(extra, gt) == pytest.approx(0.1)


def test_star_under_a_rigid_motion_and_an_invariant_spectrum():
    rng = np.random.default_rng(4)
    moved = STAR @ random_rotation(rng).T + np.array([1.0, 2.0, 3.0])
    st = skeleton_stability([STAR, moved], [STAR_PARENTS] * 2)
    for name in ("pjdd", "blrd", "gsd", "jad"):
        assert getattr(st, name)[1] == pytest.approx(0.0, abs=1e-9), name
    # Longer leaves keep GSD at 0: a star's normalized Laplacian spectrum is {0, 1, 1, 2} for any weights.
    long_leaf = STAR * np.array([[1], [3], [1], [1]])
    assert skeleton_stability([STAR, long_leaf]).gsd[1] == pytest.approx(0.0, abs=1e-12)
    assert skeleton_stability([STAR, long_leaf]).blrd[1] == pytest.approx(2 / 3)  # L = [1,1,3] vs [1,1,1]


# ---------------------------------------------------------------- invariances over a clip


def _clip(rng: np.random.Generator, n_frames: int, sigma: float) -> list[np.ndarray]:
    anchor = spread_skeleton(rng)
    frames = [anchor]
    for _ in range(n_frames - 1):
        noisy = anchor + rng.normal(0, sigma, anchor.shape)
        frames.append(noisy @ random_rotation(rng).T + rng.normal(size=3))
    return frames


def test_rigid_copies_score_zero():
    rng = np.random.default_rng(5)
    st = skeleton_stability(_clip(rng, 6, 0.0))
    for name in ("pjdd", "blrd", "gsd"):
        assert np.nanmax(getattr(st, name)) < 1e-9, name
    assert np.nanmax(st.jad) < 1e-6  # arccos near 1 turns 1e-16 rounding into ~1e-9


def test_relabelling_the_joints_leaves_the_metrics_unchanged():
    rng = np.random.default_rng(6)
    frames = _clip(rng, 5, 0.01)
    base = skeleton_stability(frames).summary()
    perm = rng.permutation(len(frames[0]))
    relabelled = skeleton_stability([f[perm] for f in frames]).summary()  # same order in every frame
    for key in ("pjdd", "blrd", "gsd", "jad"):
        assert relabelled[key] == pytest.approx(base[key], rel=1e-9), key
    # Each frame shuffled differently: with correspondence="match" the metrics do not notice.
    shuffled = [frames[0]] + [f[rng.permutation(len(f))] for f in frames[1:]]
    matched = skeleton_stability(shuffled, config=StabilityConfig(correspondence="match")).summary()
    for key in ("pjdd", "blrd", "gsd", "jad"):
        assert matched[key] == pytest.approx(base[key], rel=1e-6), key


def test_more_jitter_gives_larger_pjdd_blrd_jad():
    small = skeleton_stability(_clip(np.random.default_rng(7), 8, 0.005)).summary()
    large = skeleton_stability(_clip(np.random.default_rng(7), 8, 0.02)).summary()
    for key in ("pjdd", "blrd", "jad"):
        assert large[key] > 1.5 * small[key], key


def test_topology_flicker_counts_joint_count_and_tree_changes():
    rng = np.random.default_rng(8)
    anchor = spread_skeleton(rng, 6)
    parents = np.array([-1, 0, 1, 2, 0, 4])
    other_tree = np.array([-1, 0, 1, 1, 0, 4])
    frames = [anchor, anchor + 0.001, anchor[:5], anchor, anchor]
    parent_list = [parents, parents, parents[:5], other_tree, parents]
    st = skeleton_stability(frames, parent_list)
    assert st.flicker.tolist() == [False, False, True, True, False]
    assert st.summary()["topology_flicker"] == pytest.approx(0.5)
    assert st.summary(3)["topology_flicker"] == pytest.approx(0.5)  # frames 1, 2 of the protocol
    assert np.isfinite(st.blrd[2])  # a missing joint borrows its nearest neighbour: still scored
    # A shuffled frame with the same tree (parents relabelled with it) is not flicker under matching.
    perm = np.array([3, 1, 5, 0, 2, 4])
    inv = np.argsort(perm)
    shuffled_parents = np.where(parents[perm] < 0, -1, inv[np.maximum(parents[perm], 0)])
    st = skeleton_stability([anchor, anchor[perm]], [parents, shuffled_parents],
                            StabilityConfig(correspondence="match"))
    assert not st.flicker[1]


def test_forests_are_accepted():
    forest = np.array([-1, 0, -1, 2])  # two roots
    st = skeleton_stability([CHAIN4, CHAIN4 + 0.5], [forest, forest])
    assert not st.flicker[1] and st.pjdd[1] == pytest.approx(0.0)
    assert len(sample_bones(CHAIN4, forest)) == 2 * 201


# ---------------------------------------------------------------- static skeleton §10.6


def test_static_chamfer_metrics_on_a_star():
    assert len(sample_bones(STAR[:2], STAR_PARENTS[:2])) == 201  # ceil(1 / 0.005) + 1 points on a unit bone
    assert cd_j2j(STAR + np.array([0, 0.1, 0]), STAR) == pytest.approx(0.1)
    # Joints lie on the bones (0 one way); a bone sample at t is min(t, 1 - t) from a joint:
    # mean over t = i / 200, i = 0..200 is 10000 / 200 / 201 = 50 / 201, so CD-J2B = 25 / 201.
    assert cd_j2b(STAR, STAR, STAR_PARENTS) == pytest.approx(25 / 201)
    # Predicted star with a z bone the ground truth lacks: z samples are t from the origin (mean 1/2),
    # 1 bone of 3 -> 1/6 one way, 0 the other -> 1/12.
    assert cd_b2b(STAR, STAR_PARENTS, STAR[:3], STAR_PARENTS[:3]) == pytest.approx(1 / 12)
    assert cd_b2b(STAR, STAR_PARENTS, STAR, STAR_PARENTS) == pytest.approx(0.0)


# ---------------------------------------------------------------- skinning §8.1, §13


def test_topk_mask_renormalization_and_masked_average_by_hand():
    row = np.array([[0.5, 0.3, 0.15, 0.05]])
    assert topk_mask(row, k=2).tolist() == [[1, 1, 0, 0]]
    assert np.allclose(topk_mask(row, k=2, gamma=0.1), [[1, 1, 0.1, 0.1]])
    assert np.allclose(topk_mask(row, k=2, gamma=0.1, valid=np.array([1, 1, 0, 1])), [[1, 1, 0, 0.1]])
    assert np.allclose(masked_renormalize(row, topk_mask(row, k=2)), [[0.625, 0.375, 0, 0]])
    f = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    m = np.array([[1.0, 1, 0, 0], [1, 0, 0, 0]])
    assert masked_average(f, m) == pytest.approx(8 / 1.5)  # (1 + 2 + 5) / (3 / 2)


def test_masked_operators_accept_torch_and_pass_gradients():
    rng = np.random.default_rng(9)
    teacher = rng.dirichlet(np.ones(6), size=(2, 5))  # [B=2, N=5, J=6]
    pred = rng.dirichlet(np.ones(6), size=(2, 5))
    valid = np.array([1, 1, 1, 0, 1, 1])
    m_np = topk_mask(teacher, k=3, gamma=0.2, valid=valid)
    m_t = topk_mask(torch.tensor(teacher), k=3, gamma=0.2, valid=torch.tensor(valid))
    assert np.allclose(m_t.numpy(), m_np)
    p_t = torch.tensor(pred, requires_grad=True)
    out_t = masked_average(masked_renormalize(p_t, m_t), m_t)  # [B]
    out_np = masked_average(masked_renormalize(pred, m_np), m_np)
    assert out_t.shape == (2,) and np.allclose(out_t.detach().numpy(), out_np)
    out_t.sum().backward()
    assert p_t.grad is not None and torch.isfinite(p_t.grad).all() and p_t.grad.abs().sum() > 0
    assert torch.all(p_t.grad[..., 3] == 0)  # an invalid joint gets no gradient


def test_l1_symkl_entropy_on_two_points_by_hand():
    y = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # teacher = frame 0; K_s = 2 keeps joints {0,1} and {1,2}
    w = np.array([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
    res = skin_consistency(np.stack([y, w]), k=2)
    yt = [(7 / 9, 2 / 9), (2 / 9, 7 / 9)]  # masked, renormalized teacher
    wt = [(0.5, 0.5), (0.25, 0.75)]  # masked, renormalized prediction
    # L1: (5/18 + 5/18) + (1/36 + 1/36) = 11/18, divided by sum(m)/N = 4/2
    assert res.l1 == pytest.approx(11 / 36, rel=1e-6)
    sym = sum(a * math.log(a / b) + b * math.log(b / a) for ys, ws in zip(yt, wt) for a, b in zip(ys, ws))
    assert res.symkl == pytest.approx(sym / 2, rel=1e-6)
    ent = lambda rows: -sum(x * math.log(x) for r in rows for x in r) / 2  # noqa: E731
    assert res.per_frame_entropy[0] == pytest.approx(ent(yt), rel=1e-6)
    assert res.entropy == pytest.approx((ent(yt) + ent(wt)) / 2, rel=1e-6)
    same = skin_consistency(np.stack([y, y, y]), k=2)
    assert same.l1 == pytest.approx(0.0, abs=1e-7) and same.symkl == pytest.approx(0.0, abs=1e-6)


def test_cons_j_and_delta_j_by_hand():
    # One joint over 3 frames: point 0 goes 1 -> 0.5 -> 0 (mean 1/2, variance 1/6); point 1 stays at 1.
    w0 = np.array([[1.0, 0.0], [1.0, 0.0]])
    w1 = np.array([[0.5, 0.5], [1.0, 0.0]])
    w2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    cons = joint_temporal_variance(np.stack([w0, w1, w2]))
    assert cons[0] == pytest.approx((1 / 6 * 0.5 + 0.0 * 1.0) / 1.5)  # = 1/18
    assert cons[1] == pytest.approx(1 / 6)
    assert np.allclose(cons_improvement(cons, np.zeros(2)), cons)


def test_static_skinning_precision_recall_l1_by_hand():
    gt = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.3, 0.3, 0.3]])  # row 2 sums to 0.9: not scored
    pred = np.array([[0.9, 0.1, 0.0],  # 0.1 < 0.15 x 0.9 -> pruned -> [1, 0, 0]
                     [0.4, 0.4, 0.2],  # kept as is
                     [0.0, 0.0, 1.0]])
    q = static_skinning_quality(pred, gt)
    assert q.n_vertices == 2
    assert q.precision == pytest.approx(3 / 4) and q.recall == pytest.approx(1.0)
    assert q.avg_l1 == pytest.approx(0.4 / 2)
    tiny = np.array([[0.9995, 0.0005, 0.0], [0.5, 0.5, 0.0], [0, 0, 1.0]])  # 5e-4 < 1e-3 -> pruned
    assert static_skinning_quality(tiny, gt).precision == pytest.approx(1.0)


def test_winding_numbers_tell_inside_from_outside_of_a_closed_box():
    from backend.metrics import outside_fraction, winding_numbers

    # a unit cube, outward-oriented triangles
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    pts = np.array([[0.5, 0.5, 0.5], [0.1, 0.9, 0.2], [1.5, 0.5, 0.5], [0.5, -0.2, 0.5], [3.0, 3.0, 3.0]])
    w = winding_numbers(pts, v, faces, chunk=2)
    np.testing.assert_allclose(np.abs(w), [1, 1, 0, 0, 0], atol=1e-9)
    assert outside_fraction(pts, v, faces) == pytest.approx(0.6)
    # reversed orientation flips the sign only; the inside test uses |w|
    np.testing.assert_allclose(winding_numbers(pts, v, faces[:, ::-1]), -w, atol=1e-12)
    assert outside_fraction(np.zeros((0, 3)), v, faces) == 0.0


def test_fast_winding_numbers_match_the_exact_ones_away_from_the_surface():
    """The clustered far-field winding numbers agree with the exact sum to ~1e-2 on a finely triangulated closed
    sphere (many clusters, most of them far from any query point) and never disagree on inside vs outside
    except within a few percent of the radius from the surface; both orientations; any batch size."""
    from backend.metrics import FastWindingNumbers, winding_numbers

    n_lat, n_lon = 24, 48
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    phi = 2 * np.pi * np.arange(n_lon) / n_lon
    ring = np.stack([np.sin(theta)[:, None] * np.cos(phi), np.sin(theta)[:, None] * np.sin(phi),
                     np.cos(theta)[:, None] * np.ones_like(phi)], -1).reshape(-1, 3)
    v = np.concatenate([ring, [[0, 0, 1], [0, 0, -1]]])
    top, bottom = len(ring), len(ring) + 1
    faces = []
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [(a, c, b), (b, c, d)]
    for j in range(n_lon):
        faces += [(top, j, (j + 1) % n_lon)]
        last = (n_lat - 2) * n_lon
        faces += [(bottom, last + (j + 1) % n_lon, last + j)]
    faces = np.array(faces)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(400, 3))
    pts *= (rng.uniform(0.0, 2.0, size=400) / np.linalg.norm(pts, axis=1))[:, None]
    exact = winding_numbers(pts, v, faces)
    assert exact.max() > 0.99 and exact.min() > -0.01  # outward-oriented
    fast = FastWindingNumbers(v, faces, faces_per_cluster=16)
    assert len(fast.centre) > 50  # clustered: most clusters are far-field for most points
    approx = fast(pts, chunk=37)
    np.testing.assert_allclose(approx, exact, atol=0.05)
    radius = np.linalg.norm(pts, axis=1)
    away = np.abs(radius - 1.0) > 0.05
    assert ((np.abs(approx) >= 0.5) == (np.abs(exact) >= 0.5))[away].all()
    np.testing.assert_allclose(FastWindingNumbers(v, faces[:, ::-1])(pts[:5]), -winding_numbers(pts[:5], v, faces),
                               atol=0.05)
    assert FastWindingNumbers(v, faces)(np.zeros((0, 3))).shape == (0,)
    assert FastWindingNumbers(v, np.zeros((0, 3), dtype=np.int64))(pts[:3]).tolist() == [0.0, 0.0, 0.0]
