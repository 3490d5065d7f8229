"""skeleton_from_motion on small articulated sequences made by skinning a known skeleton (fixed seeds)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import pytest

from backend.lbs import linear_blend_skinning
from backend.rigging.naming import mirror_plane
from backend.rigging.skeleton_from_motion import (MotionSkeletonConfig, RigSkeleton, _merge_smooth_bends,
                                                  add_end_joints, centre_of_rotation, rotation_vectors,
                                                  skeleton_from_motion, split_bending_feet, weld_colocated)
from backend.skeleton import reorder, topological_order, validate_tree


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _tube(points: np.ndarray, radius: float, n_around: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """An open tube through ``points [R, 3]`` (one ring per point): verts ``[R * n, 3]``, faces."""
    verts, faces = [], []
    for r, p in enumerate(points):
        d = points[min(r + 1, len(points) - 1)] - points[max(r - 1, 0)]
        d = d / np.linalg.norm(d)
        u = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(d, u)
        for k in range(n_around):
            a = 2 * np.pi * k / n_around
            verts.append(p + radius * (np.cos(a) * u + np.sin(a) * v))
    n = n_around
    for r in range(len(points) - 1):
        for k in range(n):
            a, b, c, e = r * n + k, r * n + (k + 1) % n, (r + 1) * n + k, (r + 1) * n + (k + 1) % n
            faces += [[a, b, c], [b, e, c]]
    return np.asarray(verts), np.asarray(faces, dtype=np.int64)


def _animate(rest: np.ndarray, bone_of_vertex: np.ndarray, joints: np.ndarray, parents: np.ndarray,
             rotations: np.ndarray) -> np.ndarray:
    """Hard-skinned frames ``[K, V, 3]``; ``rotations [K, J, 3, 3]`` are local rotations about the joints."""
    K, J = rotations.shape[:2]
    world = np.zeros((K, J, 4, 4))
    for k in range(K):
        for j in range(J):
            local = np.eye(4)
            local[:3, :3] = rotations[k, j]
            local[:3, 3] = joints[j] - rotations[k, j] @ joints[j]
            world[k, j] = local if parents[j] < 0 else world[k, parents[j]] @ local
    weights = np.zeros((len(rest), J))
    weights[np.arange(len(rest)), bone_of_vertex] = 1.0
    return linear_blend_skinning(rest, weights, world)


def bending_chain(K: int = 16, seed: int = 0):
    """A tube along Y made of four rigid segments bending at three joints (random axes); frame 0 is the rest
    pose, so the anchor's joints are ``joints``."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(-0.45, 0.45, 37)
    rest, faces = _tube(np.stack([np.zeros_like(ys), ys, np.zeros_like(ys)], axis=1), 0.05)
    joints = np.array([[0, -0.45, 0], [0, -0.225, 0], [0, 0.0, 0], [0, 0.225, 0]], dtype=np.float64)
    parents = np.array([-1, 0, 1, 2])
    bone = np.clip(np.searchsorted(joints[:, 1], rest[:, 1], side="right") - 1, 0, 3)
    axes = rng.normal(size=(4, 3))
    amp = np.radians([0, 40, 35, 45])
    rot = np.stack([np.stack([_rotation(axes[j], amp[j] * np.sin(2 * np.pi * k / K * (1 + 0.3 * j))) for j in range(4)])
                    for k in range(K)])
    return _animate(rest, bone, joints, parents, rot), faces, joints


def two_legged(K: int = 16, separate: bool = False, hat: bool = False):
    """A body along Z with two two-bone legs at x = +-0.12 (mirror plane x = 0), walking in antiphase.

    With ``separate`` every bone is its own mesh piece (like a robot made of rigid parts); with ``hat`` a
    separate piece sits on the body and moves with it (an ornament of a rigid model). Frame 0 is the rest
    pose."""
    body, body_f = _tube(np.stack([np.zeros(31), np.full(31, 0.12), np.linspace(-0.2, 0.4, 31)], axis=1), 0.09)
    pieces = [(body, body_f, 0)]
    if hat:
        pieces.append((*_tube(np.stack([np.zeros(9), np.full(9, 0.26), np.linspace(0.0, 0.12, 9)], axis=1), 0.03), 0))
    joints = [np.array([0.0, 0.1, 0.0])]
    parents = [-1]
    for side in (1.0, -1.0):
        hip = np.array([0.12 * side, 0.05, 0.0])
        knee = np.array([0.12 * side, -0.18, 0.0])
        foot = np.array([0.12 * side, -0.42, 0.0])
        joints += [hip, knee]
        parents += [0, len(joints) - 2]
        if separate:
            for a, b, j in ((hip, knee - [0, 0.01, 0], len(joints) - 2), (knee, foot, len(joints) - 1)):
                ts = np.linspace(0, 1, 9)[:, None]
                pieces.append((*_tube(a + ts * (b - a), 0.04), j))
        else:
            ts = np.linspace(0, 1, 19)[:, None]
            v, f = _tube(hip + ts * (foot - hip), 0.04)
            pieces.append((v, f, -1 - len(joints)))  # split by height below
    rest_list, faces_list, bone_list, offset = [], [], [], 0
    joints = np.asarray(joints)
    for v, f, j in pieces:
        rest_list.append(v)
        faces_list.append(f + offset)
        if j >= 0:
            bone_list.append(np.full(len(v), j))
        else:
            hip_j = -1 - j - 2
            bone_list.append(np.where(v[:, 1] > joints[hip_j + 1][1], hip_j, hip_j + 1))
        offset += len(v)
    rest = np.concatenate(rest_list)
    faces = np.concatenate(faces_list)
    bone = np.concatenate(bone_list)
    parents = np.asarray(parents)
    J = len(parents)
    rot = np.tile(np.eye(3), (K, J, 1, 1))
    for k in range(K):
        phase = 2 * np.pi * k / K
        rot[k, 1] = _rotation(np.array([1.0, 0, 0]), np.radians(35) * np.sin(phase))
        rot[k, 3] = _rotation(np.array([1.0, 0, 0]), np.radians(35) * np.sin(phase + np.pi))
        rot[k, 2] = _rotation(np.array([1.0, 0, 0]), np.radians(40) * (1 - np.cos(phase)) / 2)
        rot[k, 4] = _rotation(np.array([1.0, 0, 0]), np.radians(40) * (1 - np.cos(phase)) / 2)
    return _animate(rest, bone, joints, parents, rot), faces, joints


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - targets[None], axis=2).min(axis=1)


def _check_skeleton(skel: RigSkeleton, V: int) -> None:
    J = len(skel.parents)
    validate_tree(skel.parents, n_joints=J)
    assert skel.joints.shape == (J, 3) and skel.tails.shape == (J, 3) and len(skel.names) == J
    for j in range(J):  # a bone with one child ends where the child starts (Blender connects them)
        kids = np.flatnonzero(skel.parents == j)
        if len(kids) == 1:
            np.testing.assert_allclose(skel.tails[j], skel.joints[kids[0]], atol=1e-9)
    assert len(set(skel.names)) == J
    assert skel.init_weights.shape == (V, J) and skel.init_weights.dtype == np.float32
    np.testing.assert_allclose(skel.init_weights.sum(axis=1), 1.0, atol=1e-6)
    assert (skel.init_weights >= 0).all()


def test_centre_of_rotation_recovers_a_ball_joint():
    rng = np.random.default_rng(1)
    centre = np.array([0.1, -0.2, 0.05])
    K = 10
    a = np.tile(np.eye(4), (K, 1, 1))
    b = np.tile(np.eye(4), (K, 1, 1))
    for k in range(K):
        R = _rotation(rng.normal(size=3), np.radians(30))
        b[k, :3, :3] = R
        b[k, :3, 3] = centre - R @ centre
    c, residual = centre_of_rotation(a, b, np.zeros(3), border_weight=1e-3)
    assert np.linalg.norm(c - centre) < 1e-2 and residual < 1e-2


def test_centre_of_rotation_keeps_a_wobbling_hinge_on_its_border():
    # a knee: flexing about the x axis through `centre`, with a 3 degree wobble about z through a point
    # 0.3 further along the axis; the border (the knee's cross-section) is centred on the true joint
    centre = np.array([0.05, -0.1, 0.02])
    wobble_at = centre + np.array([0.3, 0.0, 0.0])
    K = 24
    a = np.tile(np.eye(4), (K, 1, 1))
    b = np.tile(np.eye(4), (K, 1, 1))
    for k in range(K):
        flex = _rotation(np.array([1.0, 0, 0]), np.radians(40) * np.sin(2 * np.pi * k / K))
        wobble = _rotation(np.array([0, 0, 1.0]), np.radians(3.0) * np.cos(2 * np.pi * k / K))
        R = wobble @ flex
        b[k, :3, :3] = R
        b[k, :3, 3] = wobble @ (centre - flex @ centre) + wobble_at - wobble @ wobble_at
    slid, _ = centre_of_rotation(a, b, centre, border_weight=0.005)
    c, _ = centre_of_rotation(a, b, centre, border_weight=0.005, hinge_ratio=0.1)
    assert abs(slid[0] - centre[0]) > 0.03  # the weak pull alone lets the joint slide along the axis
    assert abs(c[0] - centre[0]) < 1e-9  # along the axis: the border's coordinate
    assert np.linalg.norm(c[1:] - centre[1:]) < 0.01  # across it: the motion's


def test_chain_joints_at_the_centres_of_rotation():
    verts, faces, joints = bending_chain()
    skel = skeleton_from_motion(verts, faces)
    _check_skeleton(skel, verts.shape[1])
    moving = joints[1:]  # the three bending joints
    assert _nearest(moving, skel.joints).max() < 0.03
    assert skel.stats["n_moving_parts"] >= 3


def test_colocated_vertices_get_identical_rows():
    verts, faces, _ = bending_chain()
    V = verts.shape[1]
    dup = np.arange(0, V, 7)  # a seam: copies of every 7th vertex, used by some faces
    verts2 = np.concatenate([verts, verts[:, dup]], axis=1)
    copy_of = {int(v): V + i for i, v in enumerate(dup)}
    faces2 = faces.copy()
    for f in range(0, len(faces2), 2):
        faces2[f] = [copy_of.get(int(v), int(v)) for v in faces2[f]]
    rep, group = weld_colocated(verts2)
    assert len(rep) == V and (group[V:] == group[dup]).all()
    skel = skeleton_from_motion(verts2, faces2)
    _check_skeleton(skel, verts2.shape[1])
    np.testing.assert_array_equal(skel.init_weights[V:], skel.init_weights[dup])


@pytest.mark.parametrize("separate", [False, True])
def test_two_legged_creature_mirrored_names(separate):
    verts, faces, joints = two_legged(separate=separate)
    plane = mirror_plane(verts[0])
    assert plane is not None and abs(abs(plane[0][0]) - 1.0) < 1e-6 and abs(plane[1]) < 0.02
    skel = skeleton_from_motion(verts, faces)
    _check_skeleton(skel, verts.shape[1])
    assert _nearest(joints[[2, 4]], skel.joints).max() < 0.04  # knees
    assert _nearest(joints[[1, 3]], skel.joints).max() < 0.05  # hips
    left = {n[:-2] for n in skel.names if n.endswith(".L")}
    right = {n[:-2] for n in skel.names if n.endswith(".R")}
    assert left and left == right
    assert any(n.startswith("leg") for n in skel.names)


@pytest.mark.parametrize("shape", ["two_legged", "one_leg_moved", "asymmetric"])
def test_bounded_mirror_search_equals_the_unbounded_one(shape, monkeypatch):
    """The plane search stops its nearest-point look-ups at a bound (several times faster away from a mirror);
    the plane it returns (or None) is the one an unbounded search returns, bit for bit."""
    from backend.rigging import naming

    verts, _, _ = two_legged()
    anchor = verts[0].astype(np.float64)
    if shape == "one_leg_moved":  # still symmetric within the tolerance for most of the body
        anchor = anchor + np.where(anchor[:, :1] > 0.05, [0.0, 0.0, 0.03], 0.0)
    elif shape == "asymmetric":  # a conical helix: no mirror plane, the coarse step widens its bound twice
        t = np.linspace(0.0, 6.0 * np.pi, 3000)
        radius = 0.2 + 0.3 * t / (6.0 * np.pi)
        anchor = np.stack([radius * np.cos(t), t / (6.0 * np.pi) - 0.5, radius * np.sin(t)], axis=1)
    bounded = mirror_plane(anchor)
    unbounded_mismatch = naming._mirror_mismatch
    monkeypatch.setattr(naming, "_mirror_mismatch",
                        lambda points, tree, normal, offset, bound=np.inf: unbounded_mismatch(points, tree, normal,
                                                                                               offset))
    exact = mirror_plane(anchor)
    assert (bounded is None) == (exact is None)
    if exact is not None:
        assert np.array_equal(bounded[0], exact[0]) and bounded[1] == exact[1]
    if shape == "two_legged":
        assert exact is not None
    if shape == "asymmetric":
        assert exact is None


def test_bounded_mirror_mismatch_is_exact_up_to_half_the_bound():
    from scipy.spatial import cKDTree

    from backend.rigging.naming import _mirror_mismatch

    points = np.random.default_rng(0).normal(size=(400, 3))
    tree = cKDTree(points)
    normal = np.array([1.0, 0.0, 0.0])
    exact = _mirror_mismatch(points, tree, normal, 0.1)
    assert _mirror_mismatch(points, tree, normal, 0.1, bound=2.0 * exact + 1e-9) == exact
    assert _mirror_mismatch(points, tree, normal, 0.1, bound=0.5 * exact) == np.inf


@pytest.mark.parametrize("proxy_size", [100, 300])
def test_mirror_plane_of_a_proxy_is_searched_on_the_full_mesh(proxy_size):
    """A proxy's vertices (one per grid cell) are not a mirror-symmetric sampling: searched on them alone the
    plane came out along the body (normal z) and the legs were ``bone1_*`` / ``bone2_*``; searched on the full
    mesh's vertices (``surface_points``) it is x = 0 and the legs pair as ``.L`` / ``.R``."""
    from backend.rigging.proxy import build_proxy
    from backend.sequence import colocated_representatives

    verts, faces, _ = two_legged()
    proxy = build_proxy(verts[0], faces, colocated_representatives(verts), proxy_size)
    skel = skeleton_from_motion(verts[:, proxy.vertices], proxy.faces, surface_points=verts[0])
    _check_skeleton(skel, proxy.size)
    plane = skel.stats["mirror_plane"]
    assert plane is not None and abs(plane["normal"][0]) > 0.999 and abs(plane["offset"]) < 0.01
    left = {n[:-2] for n in skel.names if n.endswith(".L")}
    right = {n[:-2] for n in skel.names if n.endswith(".R")}
    assert len(left & right) >= 3  # (the coarse proxy's legs may differ by a tip bone)
    # no side chain goes unnamed (a chain along the middle of this headless body may: it is neither spine nor tail)
    side = np.abs(skel.joints[:, 0]) > 0.02
    assert not any(n.startswith("bone") for n, s in zip(skel.names, side) if s)


def test_separate_piece_moving_with_its_neighbour_gets_no_bone():
    """A separate mesh piece that never moves relative to the body (a robot's head plate, an ornament) is part
    of the body's bone, as a rigger weights it; separate pieces that move (the legs) keep their own bones."""
    verts, faces, _ = two_legged(separate=True, hat=True)
    skel = skeleton_from_motion(verts, faces)
    _check_skeleton(skel, verts.shape[1])
    bone = skel.init_weights.argmax(axis=1)
    hat_bones = np.unique(bone[310:400])  # the hat's 90 vertices follow the body's 310
    assert len(hat_bones) == 1 and hat_bones[0] in bone[:310]  # one bone, shared with the body
    assert _nearest(skel.joints, verts[0, 310:400]).min() > 0.05  # no joint in or at the hat
    assert len(set(bone[400:].tolist()) - set(bone[:310].tolist())) >= 4  # the four leg pieces keep bones


def test_detail_controls_the_bone_count():
    verts, faces, _ = two_legged()
    coarse = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(detail="coarse"))
    fine = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(detail="fine"))
    few = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(detail=4))
    many = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(detail=16))
    assert len(coarse.parents) < len(fine.parents)
    assert len(few.parents) < len(many.parents)
    assert abs(len(few.parents) - 4) <= 2 and abs(len(many.parents) - 16) <= 4


def test_static_parts_get_shape_chains():
    """A tube that never bends still gets a chain along its length (spaced by ``spacing``)."""
    verts, faces, _ = bending_chain()
    still = np.repeat(verts[:1], 6, axis=0)
    skel = skeleton_from_motion(still, faces, config=MotionSkeletonConfig(spacing=0.2))
    _check_skeleton(skel, verts.shape[1])
    assert len(skel.parents) >= 3
    assert np.ptp(skel.joints[:, 1]) > 0.4  # spread along the tube, not bunched at its centre


def test_end_joints_only_at_the_tips_of_long_chains():
    """A five-bone limb gets an end joint at its tip; a two-bone stub off the same root does not."""
    joints = np.array([[0, 0, 0], [0, 0.1, 0], [0, 0.2, 0], [0, 0.3, 0], [0, 0.4, 0], [0.1, 0, 0], [0.2, 0, 0]],
                      dtype=np.float64)
    parents = np.array([-1, 0, 1, 2, 3, 0, 5])
    tails = np.concatenate([joints[1:5], [[0, 0.5, 0]], [[0.2, 0, 0], [0.3, 0, 0]]])
    j2, p2, t2, ends = add_end_joints(joints, parents, tails, spacing=0.1, min_chain=4, min_length=0.5)
    assert ends.tolist() == [4] and p2.tolist() == parents.tolist() + [4]
    np.testing.assert_allclose(j2[-1], [0, 0.5, 0])
    assert t2.shape == j2.shape and t2[-1, 1] > 0.5
    validate_tree(p2, n_joints=len(j2))
    assert len(add_end_joints(joints, parents, tails, 0.1, 0, 0.5)[1]) == len(parents)  # 0: none
    # a short limb whose tip is on the ground (a foot) gets one however short its chain
    low = tails.copy()
    low[6] = [0.3, -0.2, 0]
    _, p3, _, ends3 = add_end_joints(joints, parents, low, 0.1, 4, 0.5, ground=-0.15)
    assert ends3.tolist() == [4, 6] and p3.tolist() == parents.tolist() + [4, 6]
    assert add_end_joints(joints, parents, low, 0.1, 4, 0.5)[3].tolist() == [4]  # no ground: no foot
    verts, faces, _ = bending_chain()
    plain = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(end_chain=0))
    ended = skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(end_chain=1))
    _check_skeleton(ended, verts.shape[1])
    assert len(ended.parents) > len(plain.parents) and ended.stats["n_end_bones"] >= 1
    assert (ended.init_weights[:, len(plain.parents):] == 0).all()  # end bones hold no vertices


def test_smooth_bend_parts_merge_but_separate_joints_stay():
    """Three parts in a chain: the last one bending along with the middle one (a blended joint cut in two)
    joins it; bending about another axis out of phase, it stays."""
    K = 12
    t = np.linspace(0, 2 * np.pi, K)
    z, x = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])

    def chain(second_axis, second_angles):
        T = np.tile(np.eye(4), (K, 3, 1, 1))  # [K, 3 parts, 4, 4]: root, middle, tip
        for k in range(K):
            T[k, 1, :3, :3] = _rotation(z, 0.5 * np.sin(t[k]))
            T[k, 2, :3, :3] = T[k, 1, :3, :3] @ _rotation(second_axis, second_angles[k])
        return T

    parts = np.repeat(np.arange(3), 5)
    parents = np.array([-1, 0, 1])
    joints = np.array([[0.0, 0, 0], [0.0, 0.1, 0], [0.0, 0.13, 0]])
    args = (0, 0.95, 5.0, 0.06)
    merged = _merge_smooth_bends(parts, parents, joints, chain(z, 0.3 * np.sin(t)), *args)
    assert merged[1].tolist() == [-1, 0] and (merged[0][10:] == merged[0][5]).all()
    kept = _merge_smooth_bends(parts, parents, joints, chain(x, 0.5 * np.cos(t)), *args)
    assert kept[1].tolist() == [-1, 0, 1]
    far = joints.copy()
    far[2, 1] = 0.3  # a long middle part: its own bone even when it bends alike
    assert _merge_smooth_bends(parts, parents, far, chain(z, 0.3 * np.sin(t)), *args)[1].tolist() == [-1, 0, 1]
    np.testing.assert_allclose(rotation_vectors(_rotation(x, 0.4)[None]), [[0.4, 0, 0]], atol=1e-9)


def test_bad_inputs_raise_clear_errors():
    verts, faces, _ = bending_chain(K=4)
    with pytest.raises(ValueError, match=r"verts must be float \[K, V, 3\]"):
        skeleton_from_motion(verts[0], faces)
    with pytest.raises(ValueError, match=r"faces must be int \[F, 3\]"):
        skeleton_from_motion(verts, faces[:, :2])
    with pytest.raises(ValueError, match="outside"):
        skeleton_from_motion(verts, faces + verts.shape[1])
    with pytest.raises(ValueError, match="non-finite"):
        bad = verts.copy()
        bad[1, 3, 0] = np.nan
        skeleton_from_motion(bad, faces)
    with pytest.raises(ValueError, match="detail"):
        skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(detail="medium"))
    with pytest.raises(ValueError, match="foot_height"):
        skeleton_from_motion(verts, faces, config=MotionSkeletonConfig(foot_height=-0.1))
    with pytest.raises(ValueError, match="together"):
        skeleton_from_motion(verts, faces, prior_joints=np.zeros((3, 3)))


def test_mirrored_chains_get_the_same_bone_count():
    """A posed body whose left leg came out as three bones and right leg as two: the right leg is re-cut at the
    left one's arc-length fractions, its vertices go to the new bones, a branch off it follows, names pair up."""
    from backend.rigging.naming import name_bones
    from backend.rigging.symmetry import equalize_mirrored_chains

    plane = (np.array([1.0, 0.0, 0.0]), 0.0)
    joints = np.array([[0.0, 0.2, 0.0],  # 0 root
                       [0.1, 0.1, 0.0], [0.1, -0.1, 0.05], [0.1, -0.3, 0.0],  # 1-3 left leg: hip, knee, ankle
                       [-0.1, 0.1, 0.0], [-0.1, -0.3, -0.05],  # 4-5 right leg (bent the other way): hip, ankle
                       [-0.1, 0.15, 0.15]])  # 6 a small right branch (a pouch) hanging off the right hip
    parents = np.array([-1, 0, 1, 2, 0, 4, 4])
    tails = np.array([[0, 0.3, 0], [0.1, -0.1, 0.05], [0.1, -0.3, 0], [0.1, -0.45, 0],
                      [-0.1, -0.3, -0.05], [-0.1, -0.45, -0.05], [-0.1, 0.17, 0.22]], dtype=np.float64)
    # vertices along the right leg, owned by its two bones today
    ys = np.linspace(0.1, -0.44, 30)
    right = np.stack([np.full(30, -0.1), ys, np.zeros(30)], axis=1)
    anchor = np.concatenate([right, right * [-1, 1, 1], [[0.0, 0.45, 0.0], [0.0, -0.5, 0.0]]])
    bone_of_vertex = np.concatenate([np.where(ys > -0.3, 4, 5), np.where(ys > -0.1, 1, np.where(ys > -0.3, 2, 3)),
                                     [0, 0]])
    j2, p2, b2, recut = equalize_mirrored_chains(joints, parents, tails, bone_of_vertex, anchor, plane)
    validate_tree(p2, n_joints=len(j2))
    assert recut == 1 and len(j2) == 8
    left = [j for j in range(len(j2)) if j2[j, 0] > 0.05]
    right_chain = [j for j in range(len(j2)) if j2[j, 0] < -0.05 and j2[j, 1] > -0.33]
    right_chain = [j for j in right_chain if j2[j, 2] < 0.1]  # not the branch
    assert len(left) == 3 and len(right_chain) == 3  # hip, knee, ankle on both sides
    knee = [j for j in right_chain if -0.2 < j2[j, 1] < 0.0]
    assert len(knee) == 1 and knee[0] in b2[:30]  # a new right knee, owning some right-leg vertices
    assert set(np.unique(b2[:30])) <= set(right_chain) and len(np.unique(b2[:30])) == 3
    branch = int(np.argmin(np.linalg.norm(j2 - joints[6], axis=1)))
    assert p2[branch] in right_chain
    names, _ = name_bones(j2, p2, anchor)
    stems = lambda s: sorted(n[:-2] for n in names if n.endswith(s))  # noqa: E731
    assert stems(".L") == [s for s in stems(".R") if s in stems(".L")] and len(stems(".L")) == 3
    # left alone: chains of very different lengths (two different limbs)
    far = tails.copy()
    far[3] = [0.1, -1.5, 0.0]
    assert equalize_mirrored_chains(joints, parents, far, bone_of_vertex, anchor, plane)[3] == 0


def test_pull_joints_inside_moves_only_the_joints_outside_the_mesh():
    from backend.metrics import winding_numbers
    from backend.rigging.skeleton_from_motion import pull_joints_inside

    # a closed tube along x (radius 0.1), like a limb; one joint inside, one just outside its skin
    xs = np.linspace(-0.4, 0.4, 17)
    verts, faces = _tube(np.stack([xs, np.zeros_like(xs), np.zeros_like(xs)], axis=1), 0.1, n_around=12)
    n = 12
    caps = []
    for end, centre in ((0, verts[:n].mean(axis=0)), (len(xs) - 1, verts[-n:].mean(axis=0))):
        c = len(verts) + len(caps)
        caps.append(centre)
        ring = end * n + np.arange(n)
        faces = np.concatenate([faces, np.stack([ring, np.roll(ring, -1), np.full(n, c)], axis=1)])
    verts = np.concatenate([verts, np.array(caps)])
    joints = np.array([[0.0, 0.02, 0.0], [0.1, 0.13, 0.0]])
    assert (np.abs(winding_numbers(joints, verts, faces)) >= 0.5).tolist() == [True, False]
    pulled, moved = pull_joints_inside(joints, verts, faces, spacing=0.1)
    assert moved == 1
    np.testing.assert_array_equal(pulled[0], joints[0])
    assert abs(winding_numbers(pulled[1:], verts, faces)[0]) >= 0.5
    assert np.linalg.norm(pulled[1] - joints[1]) < 0.15  # to the limb's axis nearby, not far along it


def test_names_raised_leg_pairs_with_its_twin_and_hips_carry_the_hind_legs():
    """A running quadruped at its anchor: one foreleg raised off the ground is still the twin of the other
    (both ``leg``, one number, ``.L`` / ``.R``), and the chain behind the root that the hind legs leave is the
    hips up to them, then the tail."""
    from backend.rigging.naming import name_bones

    joints = np.array([[0, 0.5, 0],  # 0 root
                       [0, 0.55, 0.2], [0, 0.6, 0.35], [0, 0.7, 0.45],  # 1-3 spine, neck, head
                       [0, 0.5, -0.2], [0, 0.55, -0.35], [0, 0.6, -0.5],  # 4-6 behind the root, then the tail
                       [0.1, 0.45, -0.2], [0.1, 0.2, -0.2], [0.1, 0.0, -0.2],  # 7-9 hind leg L
                       [-0.1, 0.45, -0.2], [-0.1, 0.2, -0.2], [-0.1, 0.0, -0.2],  # 10-12 hind leg R
                       [0.1, 0.5, 0.2], [0.1, 0.25, 0.2], [0.1, 0.02, 0.2],  # 13-15 foreleg L, on the ground
                       [-0.1, 0.5, 0.2], [-0.1, 0.4, 0.429], [-0.1, 0.45, 0.6535]],  # 16-18 foreleg R, raised
                      dtype=np.float64)
    parents = np.array([-1, 0, 1, 2, 0, 4, 5, 4, 7, 8, 4, 10, 11, 1, 13, 14, 1, 16, 17])
    body = np.stack([np.zeros(40), np.full(40, 0.55), np.linspace(-0.5, 0.45, 40)], axis=1)
    legs = np.concatenate([np.stack([np.full(20, x), np.linspace(0.0, 0.5, 20), np.full(20, z)], axis=1)
                           for x in (0.1, -0.1) for z in (0.2, -0.2)])
    names, mirror = name_bones(joints, parents, np.concatenate([body, legs]))
    assert mirror is not None
    fore_l, fore_r = names[13], names[16]
    assert fore_l == "foreleg_01.L" and fore_r == "foreleg_01.R"  # two leg pairs: fore (nearer the head), hind
    assert names[7] == "hindleg_01.L" and names[10] == "hindleg_01.R"
    assert names[4] == "hips_01" and names[5:7] == ["tail_01", "tail_02"]
    assert names[1:4] == ["spine_01", "neck", "head"]


def _body_on_four_legs() -> np.ndarray:
    """Anchor points of a quadruped along +Z (mirror plane x = 0): a body line at y = 0.5 and four vertical legs
    at x = +-0.1, z = +-0.2, down to the ground (y = 0)."""
    body = np.stack([np.zeros(40), np.full(40, 0.5), np.linspace(-0.45, 0.3, 40)], axis=1)
    legs = np.concatenate([np.stack([np.full(20, x), np.linspace(0.0, 0.5, 20), np.full(20, z)], axis=1)
                           for x in (0.1, -0.1) for z in (0.2, -0.2)])
    return np.concatenate([body, legs])


def test_names_a_head_turned_to_one_side_at_the_anchor_is_still_the_head():
    """A standing quadruped whose head is turned to its right at the anchor: the neck leaves the chest (a girdle
    the forelegs leave too) already off the mirror plane. With no twin it is the spine's end, neck and head,
    not a right arm."""
    from backend.rigging.naming import name_bones

    joints = np.array([[0, 0.5, 0],  # 0 root
                       [0, 0.5, 0.2],  # 1 chest: the forelegs and the neck leave it
                       [0.1, 0.45, 0.2], [0.1, 0.2, 0.2], [0.1, 0.0, 0.2],  # 2-4 foreleg L
                       [-0.1, 0.45, 0.2], [-0.1, 0.2, 0.2], [-0.1, 0.0, 0.2],  # 5-7 foreleg R
                       [-0.06, 0.6, 0.28], [-0.14, 0.72, 0.32],  # 8-9 neck and head, turned right
                       [0.1, 0.45, -0.2], [0.1, 0.2, -0.2], [0.1, 0.0, -0.2],  # 10-12 hind leg L
                       [-0.1, 0.45, -0.2], [-0.1, 0.2, -0.2], [-0.1, 0.0, -0.2],  # 13-15 hind leg R
                       [0, 0.5, -0.3], [0, 0.45, -0.45]], dtype=np.float64)  # 16-17 tail
    parents = np.array([-1, 0, 1, 2, 3, 1, 5, 6, 1, 8, 0, 10, 11, 0, 13, 14, 0, 16])
    names, mirror = name_bones(joints, parents, _body_on_four_legs())
    assert mirror is not None
    assert names[8:10] == ["neck", "head"] and names[1] == "chest"
    assert names[2] == "foreleg_01.L" and names[5] == "foreleg_01.R"
    assert names[16:18] == ["tail_01", "tail_02"]


def test_limb_kinds_a_long_armed_biped_s_hanging_arms_are_arms():
    """Two limb pairs that both reach the lowest share of the height: on an upright body the pair leaving it
    clearly higher (shoulders) are arms; on a body longer than tall (a quadruped) both pairs are legs."""
    from backend.rigging.naming import limb_kinds

    joints = np.array([[0.1, -0.1, 0.0], [0.1, -0.5, 0.0],  # left leg: hip to foot
                       [-0.1, -0.1, 0.0], [-0.1, -0.5, 0.0],  # right leg
                       [0.2, 0.1, 0.0], [0.3, -0.4, 0.0],  # left arm: shoulder to a hand hanging low
                       [-0.2, 0.1, 0.0], [-0.3, -0.4, 0.0]])  # right arm
    chains = [[0, 1], [2, 3], [4, 5], [6, 7]]
    upright = np.array([[0.0, -0.5, 0.0], [0.0, 0.5, 0.0], [0.35, 0.0, 0.2], [-0.35, 0.0, -0.2]])
    assert limb_kinds(chains, joints, upright) == ["leg", "leg", "arm", "arm"]
    long_body = upright[:, [2, 1, 0]] * np.array([1.0, 0.5, 3.0])  # longer along z than tall
    assert limb_kinds(chains, joints, long_body) == ["leg", "leg", "leg", "leg"]


def _voxel_surface(filled: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """The closed surface of a voxel set ``filled bool [X, Y, Z]`` (cells of edge ``size``): its exposed cell
    faces as triangles on shared corner vertices. ``(verts [V, 3], faces [F, 3])``."""
    quads = []
    for x, y, z in zip(*np.nonzero(filled)):
        for axis in range(3):
            for side in (0, 1):
                step = np.zeros(3, dtype=int)
                step[axis] = 1 if side else -1
                n = np.array([x, y, z]) + step
                if all(0 <= n[a] < filled.shape[a] for a in range(3)) and filled[tuple(n)]:
                    continue
                u, w = [a for a in range(3) if a != axis]
                base = np.array([x, y, z])
                base[axis] += side
                corners = []
                for du, dw in ((0, 0), (1, 0), (1, 1), (0, 1)):
                    c = base.copy()
                    c[u] += du
                    c[w] += dw
                    corners.append(tuple(c))
                quads.append(corners if side else corners[::-1])
    keys = sorted({c for q in quads for c in q})
    index = {c: i for i, c in enumerate(keys)}
    faces = [[index[q[0]], index[q[1]], index[q[2]]] for q in quads] + [[index[q[0]], index[q[2]], index[q[3]]]
                                                                        for q in quads]
    return np.asarray(keys, dtype=np.float64) * size, np.asarray(faces)


def test_a_leg_the_cuts_left_without_bones_gets_a_chain():
    """A table-like body on four legs whose skeleton has chains in two legs only: the other two feet get chains
    from the body's middle down to the ground, hung from the body's bone, holding their legs' vertices."""
    from backend.rigging.skeleton_from_motion import add_missing_legs, edge_graph

    filled = np.zeros((10, 8, 5), dtype=bool)
    filled[:, 5:8, :] = True  # the body
    for x in (0, 9):
        for z in (0, 4):
            filled[x, :5, z] = True  # four legs, one cell thick
    verts, faces = _voxel_surface(filled, 0.1)
    verts -= verts.mean(axis=0)
    adj = edge_graph(faces, len(verts))
    coo = adj.tocoo()
    adj_w = sp.csr_matrix((np.linalg.norm(verts[coo.row] - verts[coo.col], axis=1), (coo.row, coo.col)),
                          shape=adj.shape)
    leg_x = {0: verts[:, 0].min() + 0.05, 9: verts[:, 0].max() - 0.05}
    body_y = verts[:, 1].max() - 0.15
    joints = np.array([[0.0, body_y, 0.0],  # 0 the body's bone
                       [leg_x[0], body_y, verts[:, 2].min() + 0.05],  # 1-2 a chain in one front leg
                       [leg_x[0], verts[:, 1].min() + 0.1, verts[:, 2].min() + 0.05],
                       [leg_x[0], body_y, verts[:, 2].max() - 0.05],  # 3-4 the other front leg
                       [leg_x[0], verts[:, 1].min() + 0.1, verts[:, 2].max() - 0.05]])
    parents = np.array([-1, 0, 1, 0, 3])
    bone_of_vertex = np.zeros(len(verts), dtype=np.int64)
    new_joints, new_parents, new_bones, added = add_missing_legs(joints, parents, bone_of_vertex, verts, adj, adj_w,
                                                                 spacing=0.2, foot_share=0.15)
    assert added == 2 and len(new_parents) > len(parents)
    np.testing.assert_array_equal(new_joints[:5], joints)
    hind = verts[:, 0] > leg_x[9] - 0.1
    hind_legs = hind & (verts[:, 1] < verts[:, 1].min() + 0.45)
    assert (new_bones[hind_legs] >= 5).all()  # the hind legs' vertices went to the new chains
    for first in np.flatnonzero(new_parents[5:] == 0) + 5:  # each new chain starts at the body, goes down
        chain = [int(first)]
        while (kids := np.flatnonzero(new_parents == chain[-1])).size:
            chain.append(int(kids[0]))
        ys = new_joints[chain, 1]
        assert len(chain) >= 2 and np.all(np.diff(ys) < 0) and ys[0] > verts[:, 1].min() + 0.45
        assert new_joints[chain, 0].min() > leg_x[9] - 0.15  # in the hind legs
    # every leg with a joint already: nothing added
    assert add_missing_legs(new_joints, new_parents, new_bones, verts, adj, adj_w, 0.2, 0.15)[3] == 0


def test_a_limb_branching_off_the_other_sides_limb_hangs_from_the_body():
    """A left thigh hung under the right one (a crotch part holding both thigh tops) moves to the nearest
    ancestor that is central or on its own side; a chain that crosses the mirror plane with one child per
    joint (a tail swinging sideways) and same-side branches stay as they are."""
    from backend.rigging.symmetry import uncross_limbs

    plane = (np.array([1.0, 0.0, 0.0]), 0.0)  # x > 0: left
    joints = np.array([
        [0.0, 0.2, 0.0],     # 0 root (central)
        [-0.05, 0.0, 0.0],   # 1 crotch / right thigh top (R)
        [-0.08, -0.2, 0.0],  # 2 right knee (R), child of 1
        [0.06, -0.02, 0.0],  # 3 left thigh top (L), hung under 1: crossed
        [0.08, -0.2, 0.0],   # 4 left knee (L)
        [0.0, 0.1, -0.2],    # 5 tail base (central)
        [0.05, 0.1, -0.3],   # 6 tail (L)
        [-0.05, 0.1, -0.4],  # 7 tail (R), the only child of 6: a chain crossing the plane
        [0.1, 0.15, 0.0],    # 8 left arm (L)
        [0.2, 0.15, 0.0],    # 9 left forearm (L)
        [0.2, 0.05, 0.0],    # 10 left hand branch (L): same side, stays
    ])
    parents = np.array([-1, 0, 1, 1, 3, 0, 5, 6, 0, 8, 8])
    new, moved = uncross_limbs(joints, parents, plane)
    assert moved == 1
    assert new[3] == 0 and new[4] == 3  # the left thigh now hangs from the root, its knee still from it
    np.testing.assert_array_equal(np.delete(new, 3), np.delete(parents, 3))
    validate_tree(new, n_joints=len(joints))
    same, none = uncross_limbs(joints, parents, None)  # no mirror plane: no sides, nothing moves
    assert none == 0 and (same == parents).all()


def test_mirrored_limbs_hang_from_the_same_trunk_bone():
    """The left arm hangs from an upper-chest bone near the middle, the right arm from the root below it: the
    right arm moves to the chest bone. Twins whose parents are not one above the other, a parent off the trunk,
    and a twin that hangs from its own twin's chain (it must not become its own ancestor) stay as they are."""
    from backend.rigging.symmetry import share_twin_parents

    plane = (np.array([1.0, 0.0, 0.0]), 0.0)  # x > 0: left
    joints = np.array([
        [0.0, 0.0, 0.0],     # 0 root (hips)
        [0.03, 0.3, 0.0],    # 1 upper chest, 0.03 off the middle (within the trunk band)
        [0.15, 0.3, 0.0],    # 2 left arm, from 1
        [0.3, 0.3, 0.0],     # 3 left forearm
        [-0.15, 0.3, 0.0],   # 4 right arm, from the root
        [-0.3, 0.3, 0.0],    # 5 right forearm
        [0.0, 0.45, 0.0],    # 6 neck, from 1
    ])
    parents = np.array([-1, 0, 1, 2, 0, 4, 1])
    new, moved = share_twin_parents(joints, parents, plane)
    assert moved == 1 and new[4] == 1
    np.testing.assert_array_equal(np.delete(new, 4), np.delete(parents, 4))
    validate_tree(new, n_joints=len(joints), require_topological=False)
    assert share_twin_parents(joints, parents, None)[1] == 0  # no mirror plane: nothing moves
    # the chest bone far off the middle (a shoulder): not the trunk, nothing moves
    off = joints.copy()
    off[1, 0] = 0.08
    assert share_twin_parents(off, parents, plane)[1] == 0
    # the right arm hangs from the left arm's second joint, still near the middle: moving the left arm under
    # it would make a loop (37k CesiumMan hit this), so nothing moves
    looped_joints = np.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.4, 0.0],  # root, chest, neck
                              [0.03, 0.3, 0.0], [0.04, 0.28, 0.0], [0.15, 0.2, 0.0], [0.3, 0.1, 0.0],  # left arm
                              [-0.045, 0.28, 0.0], [-0.15, 0.2, 0.0], [-0.3, 0.1, 0.0]])  # right arm, from 4
    looped = np.array([-1, 0, 1, 1, 3, 4, 5, 4, 7, 8])
    out, n = share_twin_parents(looped_joints, looped, plane)
    assert n == 0 and (out == looped).all()


def _standing_quadruped_anchor(head_turn: float) -> np.ndarray:
    """Points of a quadruped standing along +Z with its mirror plane at x = 0.06 (a body, four legs, a tail
    behind, a head in front); the head (a fifth of the points) shifted ``head_turn`` to its left, which moves
    the points' mean off that plane."""
    rng = np.random.default_rng(0)

    def blob(n: int, centre: list[float], radii: list[float]) -> np.ndarray:
        d = rng.normal(size=(n, 3))
        return np.asarray(centre) + np.asarray(radii) * d / np.linalg.norm(d, axis=1, keepdims=True)

    body = blob(400, [0.06, 0.55, -0.1], [0.1, 0.08, 0.3])
    legs = np.concatenate([np.stack([0.06 + x + 0.02 * np.cos(t), np.linspace(0.0, 0.5, 60), z + 0.02 * np.sin(t)],
                                    axis=1) for x in (0.07, -0.07) for z in (0.1, -0.3)
                           for t in [rng.uniform(0, 2 * np.pi, 60)]])
    tail = np.stack([np.full(40, 0.06), np.linspace(0.5, 0.4, 40), np.linspace(-0.4, -0.6, 40)], axis=1)
    head = blob(170, [0.06 + head_turn, 0.75, 0.3], [0.06, 0.06, 0.08])
    return np.concatenate([body, legs, tail, head])


# a quadruped's trunk in the frame of ``_standing_quadruped_anchor`` (mirror plane x = 0.06): root, torso,
# spine / neck / head, tail, both hind legs; the naming tests hang forelegs on it
_TRUNK_JOINTS = np.array([[0.06, 0.52, -0.1], [0.06, 0.55, -0.1],  # 0 root, 1 torso
                          [0.06, 0.6, 0.15], [0.06, 0.7, 0.3], [0.06, 0.78, 0.42],  # 2-4 spine, neck, head
                          [0.06, 0.55, -0.35], [0.06, 0.5, -0.45],  # 5-6 tail
                          [0.16, 0.45, -0.35], [0.16, 0.2, -0.35], [0.16, 0.02, -0.35],  # 7-9 hind leg L
                          [-0.04, 0.45, -0.35], [-0.04, 0.2, -0.35], [-0.04, 0.02, -0.35]])  # 10-12 hind leg R
_TRUNK_PARENTS = np.array([-1, 0, 1, 2, 3, 1, 5, 1, 7, 8, 1, 10, 11])


def test_mirror_plane_through_the_body_when_the_head_is_turned():
    """The plane is searched, not taken through the points' mean: with the head turned 0.06 to one side the
    mean moves 0.008 off the body's middle, and the plane found still lies within 0.002 of x = 0.06."""
    anchor = _standing_quadruped_anchor(0.06)
    assert abs(anchor[:, 0].mean() - 0.06) > 0.006
    plane = mirror_plane(anchor)
    assert plane is not None
    normal, offset = plane
    assert abs(normal[0] - 1.0) < 1e-3 and abs(offset - 0.06) < 0.002


def test_mirror_plane_search_reports_progress_and_stops_when_asked():
    """The plane search is the skeleton's longest step on a large mesh (1.2 s on 37k vertices): it reports its
    progress every few dozen planes, in order, and a progress call that raises stops it there."""
    anchor = _standing_quadruped_anchor(0.0)
    seen: list[float] = []
    assert mirror_plane(anchor, progress=seen.append) is not None
    assert len(seen) >= 40 and seen == sorted(seen) and 0.0 < seen[0] and seen[-1] <= 1.0

    class Stop(Exception):
        pass

    def stop_at_half(fraction: float) -> None:
        if fraction >= 0.5:
            raise Stop

    with pytest.raises(Stop):
        mirror_plane(anchor, progress=stop_at_half)


def test_names_from_a_torso_hub_and_a_tucked_leg_pairs_with_its_twin():
    """A root whose only child branches into spine, tail and four legs: that child is the ``torso`` and the
    chains leaving it are named as if they left the root (spine / neck / head, tail, legs); a foreleg tucked
    under the middle (its joints within the central band) takes the side its twin leaves free."""
    from backend.rigging.naming import name_bones

    anchor = _standing_quadruped_anchor(0.0)
    # 13-15 foreleg R, 16-18 foreleg L tucked in (within the central band)
    joints = np.concatenate([_TRUNK_JOINTS, [[0.0, 0.45, 0.15], [0.0, 0.25, 0.12], [0.0, 0.05, 0.14],
                                            [0.075, 0.45, 0.15], [0.07, 0.25, 0.12], [0.075, 0.05, 0.14]]])
    parents = np.concatenate([_TRUNK_PARENTS, [2, 13, 14, 2, 16, 17]])
    names, mirror = name_bones(joints, parents, anchor)
    assert mirror is not None and abs(mirror["offset"] - 0.06) < 0.002
    assert names[:2] == ["root", "torso"]
    assert names[2:5] == ["spine_01", "neck", "head"]
    assert names[5].startswith("tail") and names[6].startswith("tail")
    assert names[7] == "hindleg_01.L" and names[10] == "hindleg_01.R"
    assert names[13] == "foreleg_01.R" and names[16] == "foreleg_01.L"


def test_names_a_head_chain_just_off_the_middle_is_central():
    """A neck and head whose joints all lie 0.03-0.04 to one side of the plane (past the side tolerance, as on
    a proxy's skeleton) with no mirror twin are still ``spine`` / ``neck`` / ``head``: a limb leaves the body
    further out. Before the central band they were one side's ``arm_*``."""
    from backend.rigging.naming import name_bones

    anchor = _standing_quadruped_anchor(0.0)
    joints = _TRUNK_JOINTS.copy()
    joints[2:5, 0] += [0.03, 0.035, 0.04]
    names, mirror = name_bones(joints, _TRUNK_PARENTS, anchor)
    assert mirror is not None and abs(mirror["offset"] - 0.06) < 0.002
    assert names[2:5] == ["spine_01", "neck", "head"]
    assert names[7] == "leg_01.L" and names[10] == "leg_01.R"


def test_root_of_an_upright_body_goes_to_the_hips():
    """A biped whose torso moved as one part has its root's joint in the chest; with the legs leaving below it
    and the neck and arms above, the joint goes to the hips (the legs' first joints' mean) and the tail to the
    chest (the others' mean). A pelvis child that both legs leave counts as both; a long body lying along Z (a
    quadruped) and a root with a leg above its joint keep theirs."""
    from backend.rigging.skeleton_from_motion import root_at_hips

    anchor = np.array([[-0.2, -0.5, -0.1], [0.2, 0.5, 0.1]])  # only the extent matters: upright
    joints = np.array([[0.0, 0.2, 0.0],  # 0 root (chest)
                       [0.0, 0.3, 0.0], [0.0, 0.4, 0.0],  # 1-2 neck, head
                       [0.1, 0.22, 0.0], [-0.1, 0.22, 0.0],  # 3-4 arms
                       [0.08, 0.0, 0.0], [0.08, -0.45, 0.0],  # 5-6 leg L
                       [-0.08, 0.0, 0.0], [-0.08, -0.45, 0.0]])  # 7-8 leg R
    parents = np.array([-1, 0, 1, 0, 0, 0, 5, 0, 7])
    tails = joints + [0.0, -0.02, 0.0]
    ground = -0.15
    out, out_tails, moved = root_at_hips(joints, parents, tails, anchor, ground)
    assert moved
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out_tails[0], joints[[1, 3, 4]].mean(axis=0))
    np.testing.assert_array_equal(out[1:], joints[1:])
    # both legs hang from a pelvis child of the root: the hips are the pelvis's joint
    pelvis = np.concatenate([joints, [[0.0, 0.05, 0.0]]])
    pelvis_parents = np.array([-1, 0, 1, 0, 0, 9, 5, 9, 7, 0])
    _, _, moved = root_at_hips(pelvis, pelvis_parents, np.concatenate([tails, [[0.0, 0.0, 0.0]]]), anchor, ground)
    assert moved
    # lying along Z (longer than tall): unchanged
    long_body = np.array([[-0.2, -0.3, -0.5], [0.2, 0.3, 0.5]])
    assert not root_at_hips(joints, parents, tails, long_body, ground)[2]
    # a leg that leaves above the root's joint: unchanged
    high = joints.copy()
    high[7] = [-0.08, 0.25, 0.0]
    assert not root_at_hips(high, parents, tails, anchor, ground)[2]


def test_leaf_tails_poking_out_of_the_mesh_are_shortened():
    """A leaf bone's tail past the surface (the stub beyond a foot's tip) moves back toward its joint until it is
    inside; a tail already inside and a bone ending on its only child's joint keep theirs."""
    from backend.metrics import winding_numbers
    from backend.rigging.skeleton_from_motion import pull_leaf_tails_inside

    verts, faces = _box([0.0, 0.0, 0.0], [1.0, 0.2, 0.2])
    joints = np.array([[0.1, 0.1, 0.1], [0.8, 0.1, 0.1], [0.5, 0.1, 0.1]])
    parents = np.array([-1, 0, 0])
    tails = np.array([[0.5, 0.1, 0.1], [1.3, 0.1, 0.1], [0.5, 0.15, 0.1]])  # 1: 0.3 past the end; 2: inside
    out, n = pull_leaf_tails_inside(joints, parents, tails, verts, faces)
    assert n == 1
    assert abs(winding_numbers(out[1:2], verts, faces)[0]) >= 0.5
    np.testing.assert_allclose(out[1], [0.8 + 0.25 * 0.5, 0.1, 0.1])  # half was still outside, a quarter is in
    np.testing.assert_array_equal(out[[0, 2]], tails[[0, 2]])


def _box(lo: list[float], hi: list[float], n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A closed, outward-oriented box surface ``lo``..``hi`` with ``n`` segments per edge: verts, faces."""
    lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    verts, faces = [], []
    for axis in range(3):
        for side in (0, 1):
            u, v = [a for a in range(3) if a != axis]
            base = len(verts)
            for i in range(n + 1):
                for k in range(n + 1):
                    p = np.empty(3)
                    p[axis] = (lo_a, hi_a)[side][axis]
                    p[u] = lo_a[u] + (hi_a[u] - lo_a[u]) * i / n
                    p[v] = lo_a[v] + (hi_a[v] - lo_a[v]) * k / n
                    verts.append(p)
            for i in range(n):
                for k in range(n):
                    a, b, c, d = (base + i * (n + 1) + k, base + (i + 1) * (n + 1) + k,
                                  base + i * (n + 1) + k + 1, base + (i + 1) * (n + 1) + k + 1)
                    faces += [[a, b, c], [b, d, c]]
    verts_a = np.asarray(verts)
    faces_a = np.asarray(faces, dtype=np.int64)
    # orient every face outward (the box is convex: its normal points away from the centre)
    centre = 0.5 * (lo_a + hi_a)
    tri = verts_a[faces_a]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = ((tri.mean(axis=1) - centre) * normal).sum(axis=1) < 0
    faces_a[flip] = faces_a[flip][:, ::-1]
    return verts_a, faces_a


def test_legs_starting_under_a_thick_body_get_hip_joints():
    """A standing animal whose legs never move against the body: the legs' chains start where they leave the
    belly; each gets a joint up the leg at the body's middle (a hip / shoulder), the leg hangs from it, and
    the thigh's vertices inside the body go to it. A leg whose first joint is already in the body's middle
    (a hip the motion found) gets none."""
    from backend.rigging.skeleton_from_motion import add_limb_roots

    body_v, body_f = _box([-0.12, 0.0, -0.4], [0.12, 0.3, 0.4])
    verts, faces = [body_v], [body_f]
    feet = [(-0.08, -0.3), (0.08, -0.3), (-0.08, 0.3), (0.08, 0.3)]
    for x, z in feet:
        v, f = _box([x - 0.03, -0.4, z - 0.03], [x + 0.03, 0.02, z + 0.03], n=4)
        faces.append(f + sum(len(a) for a in verts))
        verts.append(v)
    anchor, faces_a = np.concatenate(verts), np.concatenate(faces)
    # root in the body; legs 1-4 start at the belly (y = 0), each one bone down to its foot
    joints = np.array([[0.0, 0.15, 0.0]] + [[x, 0.0, z] for x, z in feet])
    parents = np.array([-1, 0, 0, 0, 0])
    tails = np.array([[0.0, 0.15, 0.3]] + [[x, -0.4, z] for x, z in feet])
    bone_of_vertex = np.zeros(len(anchor), dtype=np.int64)
    for i, (x, z) in enumerate(feet):
        in_leg = (np.abs(anchor[:, 0] - x) <= 0.031) & (np.abs(anchor[:, 2] - z) <= 0.031) & (anchor[:, 1] < 0.0)
        bone_of_vertex[in_leg] = i + 1
    out_j, out_p, out_bov, added = add_limb_roots(joints, parents, tails, bone_of_vertex, anchor, faces_a,
                                                  spacing=0.1, ground=-0.2)
    assert added == 4
    hips = out_j[5:]
    np.testing.assert_allclose(hips[:, [0, 2]], joints[1:, [0, 2]], atol=1e-9)  # straight up each leg
    assert np.all(np.abs(hips[:, 1] - 0.15) <= 0.03)  # at the body's middle height
    assert out_p[1:5].tolist() == [5, 6, 7, 8] and out_p[5:].tolist() == [0, 0, 0, 0]
    for h in range(4):
        mine = anchor[out_bov == 5 + h]
        assert len(mine) > 0 and np.all(mine[:, 1] >= -1e-9)  # the thigh in the body, not the leg's own
    order = topological_order(out_p)
    validate_tree(reorder(out_j, out_p, order)[1], n_joints=9)

    # the hips already where the motion put them (the body's middle): nothing is added
    joints_hip = joints.copy()
    joints_hip[1:, 1] = 0.15
    tails_hip = tails.copy()
    _, _, _, added = add_limb_roots(joints_hip, parents, tails_hip, bone_of_vertex, anchor, faces_a,
                                    spacing=0.1, ground=-0.2)
    assert added == 0


def test_a_chest_two_legs_leave_is_not_part_of_either_leg():
    """Both forelegs hang from one central joint below the torso: that joint is the ``chest`` and the legs
    are mirrored twins from their first sided joint on (not ``leg_01.R`` for the chest and a shifted left)."""
    from backend.rigging.naming import name_bones

    anchor = _standing_quadruped_anchor(0.0)
    joints = np.concatenate([_TRUNK_JOINTS, [[0.06, 0.48, 0.15],  # 13 chest
                                            [-0.04, 0.45, 0.15], [-0.04, 0.2, 0.15], [-0.04, 0.02, 0.15],  # 14-16 R
                                            [0.16, 0.45, 0.15], [0.16, 0.2, 0.15], [0.16, 0.02, 0.15]]])  # 17-19 L
    parents = np.concatenate([_TRUNK_PARENTS, [1, 13, 14, 15, 13, 17, 18]])
    names, _ = name_bones(joints, parents, anchor)
    assert names[13] == "chest"
    assert names[14] == "foreleg_01.R" and names[17] == "foreleg_01.L"
    assert [n[:-2] for n in names[14:17]] == [n[:-2] for n in names[17:20]]


def test_a_pelvis_off_the_plane_two_legs_leave_is_not_part_of_either_leg():
    """The joint both hind legs leave sits 0.04 to the left of the mirror plane (a root part's centre leaning to
    one side, as on the proxies of CesiumMan subdivided to 9.3k and 84k vertices): it still belongs to neither leg,
    so neither leg is named after it nor hangs under the other's name (it was ``hindleg_01.L``, with the right leg
    under it)."""
    from backend.rigging.naming import name_bones

    anchor = _standing_quadruped_anchor(0.0)
    joints = np.concatenate([_TRUNK_JOINTS[:7], [[0.10, 0.48, -0.35],  # 7 pelvis, 0.04 left of x = 0.06
                                                 [0.16, 0.45, -0.35], [0.16, 0.2, -0.35], [0.16, 0.02, -0.35],  # L
                                                 [-0.04, 0.45, -0.35], [-0.04, 0.2, -0.35], [-0.04, 0.02, -0.35]]])
    parents = np.concatenate([_TRUNK_PARENTS[:7], [1, 7, 8, 9, 7, 11, 12]])
    names, _ = name_bones(joints, parents, anchor)
    assert not names[7].startswith(("leg", "hindleg", "foreleg"))
    assert names[8].endswith("_01.L") and names[11].endswith("_01.R")
    assert [n[:-2] for n in names[8:11]] == [n[:-2] for n in names[11:14]]


def test_no_hip_joints_under_a_thin_body():
    """A fin under a fish's tall, flat body (thinner than half a bone spacing): its vertical line runs far up
    the body, but there is no trunk to hang a hip in, so no joint is added."""
    from backend.rigging.skeleton_from_motion import add_limb_roots

    body_v, body_f = _box([-0.015, 0.0, -0.4], [0.015, 0.3, 0.4], n=24)
    fin_v, fin_f = _box([-0.005, -0.3, -0.33], [0.005, 0.02, -0.27], n=4)
    anchor, faces_a = np.concatenate([body_v, fin_v]), np.concatenate([body_f, fin_f + len(body_v)])
    joints = np.array([[0.0, 0.15, 0.0], [0.0, 0.0, -0.3]])
    tails = np.array([[0.0, 0.15, 0.3], [0.0, -0.3, -0.3]])
    bone_of_vertex = np.zeros(len(anchor), dtype=np.int64)
    bone_of_vertex[len(body_v):] = 1
    _, _, _, added = add_limb_roots(joints, np.array([-1, 0]), tails, bone_of_vertex, anchor, faces_a,
                                    spacing=0.1, ground=-0.2)
    assert added == 0


def test_a_turned_head_and_a_swung_tail_stay_spine_and_tail():
    """Neck and head turned to the left, the tail swung to the right: both chains leave the torso on its middle
    and have no mirror twin, so they are the spine (``spine_01``, ``neck``, ``head``) and the tail, not an
    ``arm.L`` and a ``leg.R``; the legs, which have twins, keep their sides."""
    from backend.rigging.naming import name_bones

    anchor = _standing_quadruped_anchor(0.0)
    joints = np.array([[0.06, 0.52, -0.1], [0.06, 0.55, -0.1],  # 0 root, 1 torso
                       [0.06, 0.6, 0.15], [0.12, 0.7, 0.28], [0.16, 0.78, 0.36],  # 2-4 spine, neck, head (turned)
                       [0.06, 0.55, -0.35], [0.0, 0.45, -0.45], [-0.04, 0.2, -0.5],  # 5-7 tail, swung right and down
                       [0.16, 0.45, -0.3], [0.16, 0.2, -0.3], [0.16, 0.02, -0.3],  # 8-10 hind leg L
                       [-0.04, 0.45, -0.3], [-0.04, 0.2, -0.3], [-0.04, 0.02, -0.3]],  # 11-13 hind leg R
                      dtype=np.float64)
    parents = np.array([-1, 0, 1, 2, 3, 1, 5, 6, 1, 8, 9, 1, 11, 12])
    names, _ = name_bones(joints, parents, anchor)
    assert names[1] == "torso" and names[2:5] == ["spine_01", "neck", "head"]
    assert all(n.startswith("tail") and "." not in n for n in names[5:8])
    assert names[8].endswith(".L") and names[11] == names[8][:-2] + ".R" and names[8].startswith("leg")


def test_motion_spacing_takes_the_leaves_when_short_links_are_blend_zones():
    from backend.rigging.skeleton_from_motion import motion_spacing

    # a hub with four short links (0.05) to four long end segments (0.2): a tentacle creature's smooth bends
    parents = np.array([-1, 0, 0, 0, 0, 1, 2, 3, 4])
    joints = np.zeros((9, 3))
    for i, direction in enumerate(np.eye(3)[[0, 1, 2, 0]] * np.array([[1], [1], [1], [-1]])):
        joints[1 + i] = 0.05 * direction
        joints[5 + i] = 0.25 * direction
    assert motion_spacing(joints, parents, 0.0, 0.11) == pytest.approx(0.125)  # the median of 4 x 0.05, 4 x 0.2
    assert motion_spacing(joints, parents, 1.3, 0.11) == pytest.approx(0.2)
    # leaves no longer than the median links: the median stays
    joints[5:] = joints[1:5] * 2.0
    assert motion_spacing(joints, parents, 1.3, 0.11) == pytest.approx(0.05)
    assert motion_spacing(joints[:2], parents[:2], 1.3, 0.11) == 0.11  # too few links: the default


def test_one_sided_share_tells_a_patch_of_skin_from_a_tube_or_a_closed_body():
    from backend.rigging.skeleton_from_motion import one_sided_share

    filled = np.zeros((4, 3, 2), dtype=bool)
    filled[:, :, :] = True
    box, box_faces = _voxel_surface(filled, 0.1)
    assert one_sided_share(box, box_faces) < 1e-9  # closed: every direction cancels
    ys = np.linspace(0.0, 0.4, 9)
    tube, tube_faces = _tube(np.stack([np.zeros_like(ys), ys, np.zeros_like(ys)], axis=1), 0.05)
    assert one_sided_share(tube, tube_faces) < 0.05  # open at both ends, but it faces all around
    top = box_faces[(box[box_faces][:, :, 1] > box[:, 1].max() - 1e-9).all(axis=1)]
    assert one_sided_share(box, top) == pytest.approx(1.0)  # the top of the box faces up
    assert one_sided_share(box, box_faces[:0]) == 0.0


def test_a_chain_that_is_a_patch_of_skin_is_dropped_and_a_limb_is_kept():
    """A box body with a leg under it: a chain in the leg stays; a chain holding only a patch of the body's
    top (a cut of the skin, with no volume around it) goes, and its vertices go to the bone it left."""
    from backend.rigging.skeleton_from_motion import drop_surface_patches

    filled = np.zeros((6, 7, 4), dtype=bool)
    filled[:, 4:7, :] = True  # the body
    filled[2:4, :4, 1:3] = True  # a leg under it, two cells thick
    verts, faces = _voxel_surface(filled, 0.1)
    body_y, top_y = 0.4, verts[:, 1].max()
    joints = np.array([[0.3, 0.55, 0.2],  # 0 the body
                       [0.3, body_y, 0.2], [0.3, 0.15, 0.2],  # 1-2 the leg
                       [0.1, top_y - 0.05, 0.2]])  # 3 the patch on the top
    parents = np.array([-1, 0, 1, 0])
    bone_of_vertex = np.zeros(len(verts), dtype=np.int64)
    bone_of_vertex[verts[:, 1] < body_y + 1e-9] = 1
    bone_of_vertex[verts[:, 1] < 0.2 + 1e-9] = 2
    patch = (verts[:, 1] > top_y - 1e-9) & (verts[:, 0] < 0.3 + 1e-9)
    bone_of_vertex[patch] = 3
    new_joints, new_parents, new_bones, dropped = drop_surface_patches(joints, parents, bone_of_vertex, verts, faces,
                                                                       max_share=0.6)
    assert dropped == 1
    np.testing.assert_array_equal(new_parents, [-1, 0, 1])
    np.testing.assert_array_equal(new_joints, joints[:3])
    assert (new_bones[patch] == 0).all()
    np.testing.assert_array_equal(new_bones[~patch], bone_of_vertex[~patch])
    # a chain leaving a joint with one child is never looked at
    assert drop_surface_patches(joints, np.array([-1, 0, 1, 2]), bone_of_vertex, verts, faces, 0.6)[3] == 0


def test_names_a_chain_crossing_the_mirror_plane_is_not_a_limb():
    """The head chain of a standing quadruped leaves the body just off its middle on the left and swings over
    to the right (a turned head on a noisy copy of the Fox survey): with no twin and joints on both sides of the
    mirror plane it is the spine's end, neck and head, not an arm; a limb stays on its side."""
    from backend.rigging.naming import name_bones

    joints = np.array([[0, 0.5, 0],  # 0 root
                       [0.1, 0.45, 0.2], [0.1, 0.2, 0.2], [0.1, 0.0, 0.2],  # 1-3 foreleg L
                       [-0.1, 0.45, 0.2], [-0.1, 0.2, 0.2], [-0.1, 0.0, 0.2],  # 4-6 foreleg R
                       [0.05, 0.55, 0.25], [-0.04, 0.62, 0.33], [-0.12, 0.72, 0.4],  # 7-9 neck and head
                       [0.1, 0.45, -0.2], [0.1, 0.2, -0.2], [0.1, 0.0, -0.2],  # 10-12 hind leg L
                       [-0.1, 0.45, -0.2], [-0.1, 0.2, -0.2], [-0.1, 0.0, -0.2],  # 13-15 hind leg R
                       [0, 0.5, -0.3], [0, 0.45, -0.45]], dtype=np.float64)  # 16-17 tail
    parents = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14, 0, 16])
    plane = (np.array([1.0, 0.0, 0.0]), 0.0)
    names, _ = name_bones(joints, parents, _body_on_four_legs(), plane)
    assert names[7:10] == ["spine_01", "neck", "head"]
    # two leg pairs on a body with a head: the pair nearer the head are the forelegs
    assert names[1:4] == ["foreleg_01.L", "foreleg_02.L", "foreleg_03.L"] and names[4] == "foreleg_01.R"
    assert names[10] == "hindleg_01.L" and names[13] == "hindleg_01.R"
    assert names[16:18] == ["tail_01", "tail_02"]


def _foot(bend: float, n_frames: int = 8):
    """A foot bone along x from its joint (0, 0, 0) to its tail (1, 0, 0) on the ground, its part beyond x = 0.6
    turning up to ``bend`` radians about the z axis through (0.6, 0, 0) over the frames, the whole foot lifted a
    little: ``(joints, parents, tails, bone_of_vertex, anchor, frames_vm)`` with a leg bone above it."""
    x = np.linspace(0.0, 1.0, 41)
    ring = np.array([[0.0, 0.0], [0.0, 0.05], [0.05, 0.0], [0.05, 0.05]]) - 0.025
    anchor = np.array([[xi, 0.025 + dy, dz] for xi in x for dy, dz in ring])
    frames = []
    for k in range(n_frames):
        angle = bend * np.sin(0.9 * k)
        c, s_ = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
        pivot = np.array([0.6, 0.0, 0.0])
        moved = np.where(anchor[:, :1] > 0.6, (anchor - pivot) @ rot.T + pivot, anchor)
        frames.append(moved + [0.0, 0.01 * k, 0.0])
    frames_vm = np.stack(frames, axis=1)
    joints = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    tails = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    return joints, np.array([-1, 0]), tails, np.ones(len(anchor), dtype=np.int64), anchor, frames_vm


def test_a_foot_that_bends_gets_a_toe_where_it_bends():
    """A walking foot rolls over its ball on a few frames, too little for the parts' merging to keep the toes
    apart: the foot bone is cut where two rigid motions fit it best, the toe leads the skin beyond the cut; a
    rigid foot, or one that bends less than ``min_rms``, is left whole."""
    joints, parents, tails, bone, anchor, frames_vm = _foot(0.3)
    j2, p2, t2, b2, added = split_bending_feet(joints, parents, tails, bone, anchor, frames_vm, ground=0.1,
                                              gain=0.5, min_rms=0.001)
    assert added == 1 and p2.tolist() == [-1, 0, 1]
    assert abs(j2[2, 0] - 0.6) < 0.06 and abs(j2[2, 1]) < 0.03  # the toe joint at the bend, inside the foot
    assert np.allclose(t2[1], j2[2]) and np.allclose(t2[2], [1.0, 0.0, 0.0])  # the foot ends where the toe starts
    assert (b2 == 2).sum() > 0.3 * len(anchor) and (anchor[b2 == 2, 0] > 0.55).all()
    assert split_bending_feet(*_foot(0.0), ground=0.1, gain=0.5, min_rms=0.001)[4] == 0  # rigid
    assert split_bending_feet(*_foot(0.002), ground=0.1, gain=0.5, min_rms=0.001)[4] == 0  # barely bends ...
    assert split_bending_feet(*_foot(0.002), ground=0.1, gain=0.5, min_rms=0.0)[4] == 1  # ... (the floor decides)
    # a leaf off the ground (a hand) is not a foot
    assert split_bending_feet(joints, parents, tails, bone, anchor, frames_vm, ground=-0.1, gain=0.5,
                              min_rms=0.001)[4] == 0


def test_a_foot_lifted_on_the_anchor_frame_gets_its_toe_when_it_touches_down_later():
    """The anchor frame of a walk catches one foot in the air: it is a foot all the same when its vertices come
    down to the ground on a later frame (the clip's lowest point, here a planted foot's); a leaf that never comes
    down (a hand) is not one."""
    joints, parents, tails, bone, anchor, frames_vm = _foot(0.3)
    K = frames_vm.shape[1]
    planted = np.array([[2.0, 0.0, 0.0], [2.1, 0.0, 0.0], [2.0, 0.0, 0.1], [2.1, 0.0, 0.1]])  # bone 0's, still
    lift = np.array([0.0, 0.5, 0.0])

    def clip(down_on_later_frames: bool):
        moved = frames_vm + lift  # every frame lifted ...
        if down_on_later_frames:
            moved[:, 1:] -= lift  # ... or only the anchor frame
        a = np.concatenate([anchor + lift, planted])
        f = np.concatenate([moved, np.repeat(planted[:, None], K, axis=1)])
        b = np.concatenate([bone, np.zeros(len(planted), dtype=np.int64)])
        return joints + lift, parents, tails + lift, b, a, f

    assert split_bending_feet(*clip(True), ground=0.05, gain=0.5, min_rms=0.001)[4] == 1
    assert split_bending_feet(*clip(False), ground=0.05, gain=0.5, min_rms=0.001)[4] == 0
