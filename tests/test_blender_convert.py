"""The add-on's pure data conversion (no bpy): bone layout, pose-bone basis, heat colours."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sprig_blender import convert  # noqa: E402  (pure numpy: no bpy needed)
from backend.skeleton import bone_tails  # noqa: E402


def random_rigid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random rotations + translations ``[*shape, 4, 4]``."""
    q, r = np.linalg.qr(rng.normal(size=(*shape, 3, 3)))
    q *= np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    out = np.tile(np.eye(4), (*shape, 1, 1))
    out[..., :3, :3] = q
    out[..., :3, 3] = rng.normal(size=(*shape, 3))
    return out


def blender_pose(rest: np.ndarray, parents: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Blender's pose evaluation, ``P_j = P_p (B_p^-1 B_j) L_j`` (root: ``B_j L_j``), for ``basis [J, 4, 4]``."""
    pose = np.zeros_like(basis)
    for j, p in enumerate(parents):
        pose[j] = rest[j] @ basis[j] if p < 0 else pose[p] @ np.linalg.inv(rest[p]) @ rest[j] @ basis[j]
    return pose


def test_pose_basis_reproduces_the_bone_transforms():
    rng = np.random.default_rng(0)
    parents = np.array([-1, 0, 1, 1, 0, 4, -1, 6])  # a forest, like the artist horse rig
    rest = random_rigid(rng, (8,))
    transforms = random_rigid(rng, (5, 8))
    basis = convert.pose_basis_matrices(rest, parents, transforms)
    for k in range(5):
        pose = blender_pose(rest, parents, basis[k])
        # Blender deforms with P_j B_j^-1: it must equal the backend's T_kj
        np.testing.assert_allclose(pose @ np.linalg.inv(rest), transforms[k], atol=1e-9)
        np.testing.assert_allclose(pose, convert.global_pose_matrices(rest, transforms)[k], atol=1e-9)
    identity = convert.pose_basis_matrices(rest, parents, np.tile(np.eye(4), (1, 8, 1, 1)))
    np.testing.assert_allclose(identity, np.tile(np.eye(4), (1, 8, 1, 1)), atol=1e-12)  # rest pose = identity keys
    # rigid in, rigid out: a basis has no scale, so it decomposes into location + quaternion
    rot = basis[..., :3, :3]
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)


def test_bone_tails_follow_children_and_never_vanish():  # the rule lives in the backend core (RigResult.tails)
    joints = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [1, 0, 2], [-1, 0, 2], [0, 0, 1.0000001]], dtype=float)
    parents = np.array([-1, 0, 1, 2, 2, 1])
    tails = bone_tails(joints, parents, min_length=0.01)
    np.testing.assert_allclose(tails[0], joints[1])  # one child: tail on it
    np.testing.assert_allclose(tails[2], [0, 0, 2.5])  # children all around: continues the parent bone
    np.testing.assert_allclose(tails[3], [1.5, 0, 2])  # leaf: continues the parent bone, half its length
    assert np.linalg.norm(tails[5] - joints[5]) >= 0.01  # a leaf on top of its parent still has a length
    np.testing.assert_allclose(bone_tails(np.zeros((1, 3)), np.array([-1]), 0.1), [[0, 0, 0.1]])  # lone root
    hips = np.array([[0, 0, 0], [1, 0, 0], [-2, 0, 0]], dtype=float)
    np.testing.assert_allclose(bone_tails(hips, np.array([-1, 0, 0]), 0.01)[0], [-0.5, 0, 0])  # mean
    sym = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0]], dtype=float)
    np.testing.assert_allclose(bone_tails(sym, np.array([-1, 0, 0]), 0.01)[0], [1, 0, 0])  # farthest
    lengths = np.linalg.norm(tails - joints, axis=1)
    assert lengths.min() >= 0.01 - 1e-12
    axes = convert.roll_reference_axes(joints, tails)
    np.testing.assert_allclose(axes[0], [0, -1, 0])  # vertical bone: Z to the front
    np.testing.assert_allclose(axes[3], [0, 0, 1])  # horizontal bone: Z up


def test_heat_colors_and_frame_lookup():
    colors = convert.heat_colors(np.array([0.0, 0.5, 1.0, 2.0, -1.0]), vmax=1.0)
    assert colors.shape == (5, 4) and colors.dtype == np.float32
    np.testing.assert_allclose(colors[0, :3], convert.HEAT_STOPS[0])  # blue = stable
    np.testing.assert_allclose(colors[2, :3], convert.HEAT_STOPS[-1])  # red = unstable
    np.testing.assert_allclose(colors[3], colors[2])  # clipped above
    np.testing.assert_allclose(colors[4], colors[0])  # and below
    assert np.all(colors[:, 3] == 1.0)
    assert colors[0, 2] > colors[0, 0] and colors[2, 0] > colors[2, 2]
    values = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]])
    frames = np.array([10, 12, 16])
    np.testing.assert_allclose(convert.values_at_frame(frames, values, 12), [1.0, 3.0])  # exact on keys
    np.testing.assert_allclose(convert.values_at_frame(frames, values, 14), [1.5, 4.0])  # linear between
    np.testing.assert_allclose(convert.values_at_frame(frames, values, 3), [0.0, 1.0])  # held before
    np.testing.assert_allclose(convert.values_at_frame(frames, values, 99), [2.0, 5.0])  # and after
    assert convert.auto_heat_max(np.zeros((3, 4))) == 1.0
    assert convert.auto_heat_max(np.linspace(0, 1, 101)[None]) == pytest.approx(0.99)


def test_bone_heat_colors_use_the_mesh_ramp_in_srgb():
    np.testing.assert_allclose(convert.linear_to_srgb(np.array([0.0, 0.0031308, 0.5, 1.0])),
                               [0.0, 0.04045, 0.735357, 1.0], atol=1e-5)
    normal, select, active = convert.bone_heat_colors(np.array([0.0, 0.2, np.nan, 0.4]), vmax=0.4)
    assert normal.shape == select.shape == active.shape == (4, 3)
    np.testing.assert_allclose(normal, convert.linear_to_srgb(convert.heat_colors([0.0, 0.2, 0.0, 0.4], 0.4)[:, :3]))
    np.testing.assert_allclose(normal[3], convert.linear_to_srgb(convert.HEAT_STOPS[-1]))  # top value: red
    np.testing.assert_allclose(normal[2], normal[0])  # a missing value is drawn as 0
    assert np.all(active >= select) and np.all(select >= normal)  # selected/active: lighter
