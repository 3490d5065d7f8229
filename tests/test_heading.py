"""A character turned to face another way gets the same skeleton and names, with .L on its own left
(``left_axis`` of ``skeleton_from_motion`` / ``RigConfig``, ``sprig rig --facing``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.app.errors import CommandError
from backend.app.rig_command import left_axis
from backend.normalize import anchor_normalize
from backend.rigging.pipeline import RigConfig
from backend.rigging.skeleton_from_motion import heading_turn, skeleton_from_motion
from tests.test_skeleton_from_motion import two_legged

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "quadruped_walk.npz"


def _turn_about_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def test_heading_turn_takes_the_left_axis_to_plus_x():
    assert heading_turn(None) is None and heading_turn([1.0, 0.0, 0.0]) is None
    assert heading_turn([0.2, 1.0, 0.1]) is None  # near vertical: no heading
    for left in ([0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.6, 0.3, -0.8]):
        turn = heading_turn(left)
        horizontal = np.array([left[0], 0.0, left[2]]) / np.hypot(left[0], left[2])
        np.testing.assert_allclose(turn @ horizontal, [1.0, 0.0, 0.0], atol=1e-12)
        np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(turn[1], [0.0, 1.0, 0.0])


@pytest.mark.parametrize("deg", [90.0, 180.0, 233.0])
def test_a_turned_character_gets_the_same_skeleton_and_names(deg):
    """The bundled quadruped turned about the vertical axis, its left axis turned with it: the same bones, names
    and (turned back) joints as facing the default way. Without the left axis its skeleton and names changed
    (a 180-degree turn: 27 bones instead of 24 on the Khronos Fox run, legs named ``leg1_*`` / ``bone1_*``)."""
    data = np.load(SAMPLE, allow_pickle=True)
    verts, faces = data["verts"].astype(np.float64), data["faces"]
    size = float(np.ptp(verts[0], axis=0).max())
    x0, box0 = anchor_normalize(verts)
    reference = skeleton_from_motion(x0, faces)
    turn = _turn_about_y(deg)
    x1, box1 = anchor_normalize(verts @ turn.T)
    turned = skeleton_from_motion(x1, faces, left_axis=turn @ np.array([1.0, 0.0, 0.0]))
    assert turned.names == reference.names
    np.testing.assert_array_equal(turned.parents, reference.parents)
    back = box1.invert(turned.joints).astype(np.float64) @ turn
    np.testing.assert_allclose(back, box0.invert(reference.joints), atol=0.02 * size)
    assert turned.stats["heading_turn_deg"] != 0.0 and "heading_turn_deg" not in reference.stats


def test_left_names_follow_the_characters_left():
    """Two legs at x = +-0.12 walking along Z: told that the character's left is -X (it faces -Z), the leg at
    x = -0.12 is the .L one; by default (+X) the one at x = +0.12."""
    verts, faces, _ = two_legged()
    for left, sign in (([1.0, 0.0, 0.0], 1.0), ([-1.0, 0.0, 0.0], -1.0)):
        skel = skeleton_from_motion(verts, faces, left_axis=np.array(left))
        lefts = [j for j, n in enumerate(skel.names) if n.endswith(".L")]
        rights = [j for j, n in enumerate(skel.names) if n.endswith(".R")]
        assert lefts and rights
        assert (sign * skel.joints[lefts, 0] > 0.05).all() and (sign * skel.joints[rights, 0] < -0.05).all()


def test_facing_option_gives_the_left_axis():
    assert left_axis(None, "y") is None
    assert left_axis("+z", "y") == (1.0, 0.0, 0.0)  # glTF's default facing: left +X
    assert left_axis("-y", "z") == (1.0, 0.0, 0.0)  # Blender's front view
    assert left_axis("+x", "y") == (0.0, 0.0, -1.0)
    assert left_axis("-z", "y") == (-1.0, 0.0, 0.0)
    with pytest.raises(CommandError, match="along the up axis"):
        left_axis("+y", "y")


@pytest.mark.parametrize("bad", [(0.0, 0.0, 0.0), (1.0, float("nan"), 0.0), (1.0, 0.0), ("x", 0, 0)])
def test_rig_config_refuses_a_bad_left_axis(bad):
    with pytest.raises(ValueError, match="left_axis"):
        RigConfig(left_axis=bad).validate()
    RigConfig(left_axis=[0.0, 0.0, 1.0]).validate()  # a JSON list is fine
