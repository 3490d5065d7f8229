"""Motion-compensated joint drift: hand cases on a generated mesh and acceptance on real artist rigs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.metrics import carry_joints, motion_compensated_joint_drift
from backend.normalize import AnchorBox

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CLIPS = sorted(REALDATA.glob("*.npz")) if REALDATA.is_dir() else []
needs_realdata = pytest.mark.skipif(not CLIPS, reason=f"real rigged clips not found in {REALDATA}")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def two_part_mesh(rng: np.random.Generator, n_frames: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Two rigid point blobs: a fixed 'body' and an 'arm' swinging about the origin.

    Returns verts ``[K, 80, 3]`` and joints ``[K, 2, 3]`` (one joint at each blob's centre).
    """
    body = rng.normal(0, 0.05, (40, 3)) + np.array([-0.3, 0, 0])
    arm = rng.normal(0, 0.05, (40, 3)) + np.array([0.3, 0, 0])
    joints0 = np.array([[-0.3, 0, 0], [0.3, 0, 0]])
    verts, joints = [], []
    for k in range(n_frames):
        a = 0.3 * k
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        verts.append(np.vstack([body, arm @ rot.T]))
        joints.append(np.vstack([joints0[0], joints0[1] @ rot.T]))
    return np.stack(verts), np.stack(joints)


def test_joints_that_follow_rigid_parts_score_zero():
    verts, joints = two_part_mesh(np.random.default_rng(0))
    carried = carry_joints(verts, joints[0], k_neighbors=10)
    assert np.allclose(carried, joints, atol=1e-9)
    res = motion_compensated_joint_drift(verts, list(joints))
    assert res.mean == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(res.per_frame[0]) and res.per_joint.shape == (2,)


def test_a_frozen_joint_on_a_translating_mesh_drifts_by_the_translation():
    rng = np.random.default_rng(1)
    anchor = rng.normal(size=(50, 3))
    scale = AnchorBox.fit(anchor).scale
    shift = np.array([0.2, 0.0, 0.0])
    verts = np.stack([anchor, anchor + shift, anchor + 2 * shift])
    joint = anchor[:1].copy()
    res = motion_compensated_joint_drift(verts, [joint, joint, joint])
    # carried joint sits at +shift (frame 1) and +2 shift (frame 2); one joint each way: Chamfer = distance
    assert res.per_frame[1:] == pytest.approx([0.2 / scale, 0.4 / scale])
    assert res.mean == pytest.approx(0.3 / scale)
    assert res.per_joint[0] == pytest.approx(0.3 / scale)


def test_single_frame_and_bad_input():
    verts, joints = two_part_mesh(np.random.default_rng(2), n_frames=1)
    assert np.isnan(motion_compensated_joint_drift(verts, list(joints)).mean)
    with pytest.raises(ValueError, match="joint frames"):
        motion_compensated_joint_drift(verts, [joints[0], joints[0]])


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    return data["verts"].astype(np.float64), data["joints"].astype(np.float64)


@needs_realdata
@pytest.mark.parametrize("path", CLIPS, ids=lambda p: p.stem)
def test_artist_rig_drift_is_small_and_a_frozen_rig_is_at_least_3x_higher(path):
    verts, joints = load(path)
    own = motion_compensated_joint_drift(verts, list(joints)).mean
    frozen = motion_compensated_joint_drift(verts, [joints[0]] * len(joints)).mean
    assert own <= 0.02
    assert frozen >= 3.0 * own


@needs_realdata
@pytest.mark.parametrize("path", CLIPS, ids=lambda p: p.stem)
def test_jitter_raises_drift_monotonically(path):
    verts, joints = load(path)
    scale = AnchorBox.fit(verts[0]).scale
    noise = np.random.default_rng(3).normal(size=joints.shape)
    noise[0] = 0.0  # anchor kept exact: the carried joints stay the artist's
    levels = [0.0, 0.005, 0.01, 0.02]  # fraction of the anchor box's longest side
    values = [motion_compensated_joint_drift(verts, list(joints + lvl * scale * noise)).mean for lvl in levels]
    assert all(b > a for a, b in zip(values, values[1:])), values


@needs_realdata
def test_rigid_motion_and_joint_permutation_leave_drift_unchanged():
    verts, joints = load(CLIPS[0])
    base = motion_compensated_joint_drift(verts, list(joints))
    rng = np.random.default_rng(4)
    t = rng.normal(size=3) * 10
    # A turn by 90 degrees about y plus a translation keeps the anchor box's longest side: same MCJD.
    turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    moved = motion_compensated_joint_drift(verts @ turn.T + t, list(joints @ turn.T + t))
    assert moved.mean == pytest.approx(base.mean, rel=1e-6)
    assert np.allclose(moved.per_frame[1:], base.per_frame[1:], rtol=1e-6)
    # Any rotation: the drift in input units (MCJD x box side) is unchanged; only the axis-aligned
    # box used for normalization (the paper's convention) changes size.
    rot = random_rotation(rng)
    moved = motion_compensated_joint_drift(verts @ rot.T + t, list(joints @ rot.T + t))
    scale, moved_scale = AnchorBox.fit(verts[0]).scale, AnchorBox.fit(verts[0] @ rot.T).scale
    assert moved.mean * moved_scale == pytest.approx(base.mean * scale, rel=1e-6)
    # Every frame's joints shuffled independently: the Chamfer comparison does not see the order.
    shuffled = [joints[0]] + [j[rng.permutation(len(j))] for j in joints[1:]]
    assert motion_compensated_joint_drift(verts, shuffled).mean == pytest.approx(base.mean, rel=1e-12)
    # Shuffling the anchor permutes the per-joint drift with it.
    perm = rng.permutation(joints.shape[1])
    relabelled = motion_compensated_joint_drift(verts, list(joints[:, perm]))
    assert relabelled.mean == pytest.approx(base.mean, rel=1e-9)
    assert np.allclose(relabelled.per_joint, base.per_joint[perm])
