"""Refit: weights and motion fitted again for an edited skeleton (backend.rigging.refit and the server's refit)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.app.client import BackendClient, BackendError
from backend.lbs import linear_blend_skinning
from backend.metrics import joint_separation
from backend.rigging.pipeline import RigConfig
from backend.rigging.refit import SkeletonInputError, nearest_bone_weights, refit_sequence, skeleton_from_bones
from backend.sequence import MeshSequence
from backend.skeleton import bone_tails

ROOT = Path(__file__).resolve().parent.parent
REALDATA = ROOT.parent / "shared" / "realdata"
FAST = RigConfig(refine_iters=4)


def fox(n_frames: int = 12) -> tuple[MeshSequence, list[str], list[str | None], np.ndarray, np.ndarray]:
    """The Khronos Fox run (first frames) and its artist skeleton as bones: names, parent names, heads, tails."""
    path = REALDATA / "khronos_fox_run.npz"
    if not path.exists():
        pytest.skip("realdata fox not available")
    with np.load(path) as data:
        verts, faces = data["verts"][:n_frames].astype(np.float32), data["faces"]
        heads, parents = data["joints"][0].astype(np.float64), data["parents"]
        names = [str(n) for n in data["joint_names"]]
    diag = float(np.linalg.norm(np.ptp(verts[0], axis=0)))
    tails = bone_tails(heads, parents, 1e-2 * diag)
    return (MeshSequence(verts, faces, fps=24.0, name="fox"), names,
            [names[p] if p >= 0 else None for p in parents], heads, tails)


def delete_bone(names, parents, heads, tails, name):
    """What Blender's Delete does to a bone: it goes, its children take its parent."""
    j = names.index(name)
    keep = [i for i in range(len(names)) if i != j]
    new_parents = [parents[j] if parents[i] == name else parents[i] for i in keep]
    return [names[i] for i in keep], new_parents, heads[keep], tails[keep]


def check_refit(seq: MeshSequence, result, names: list[str], heads: np.ndarray) -> None:
    """The refit keeps the given bones (names, heads), no joint separates on any frame, and its reported error is
    the error of LBS with its own weights and transforms."""
    assert sorted(result.joint_names) == sorted(names)
    order = [names.index(n) for n in result.joint_names]
    np.testing.assert_allclose(result.joints, heads[order], atol=1e-5)
    assert np.all(result.parents < np.arange(len(order)))
    diag = float(np.linalg.norm(np.ptp(seq.verts[0], axis=0)))
    separation = joint_separation(result.bone_transforms, result.joints, result.parents) / diag
    assert separation.max() < 1e-5
    posed = linear_blend_skinning(result.anchor_verts, result.weights, result.bone_transforms)
    measured = np.linalg.norm(posed - seq.verts, axis=-1) / diag
    assert result.stats["recon_mean"] == pytest.approx(float(measured.mean()), rel=1e-3, abs=1e-6)
    np.testing.assert_allclose(result.recon_error, measured, atol=1e-5)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-4)
    assert (np.count_nonzero(result.weights, axis=1) <= FAST.max_influences).all()
    assert result.stats["skeleton_source"] == "edited" and result.stats["config"]["heatmap"] is False
    led = np.bincount(result.weights.argmax(axis=1), minlength=len(names))
    assert result.stats["bones_without_skin"] == [n for n, count in zip(result.joint_names, led) if count == 0]
    assert 0.0 <= result.stats["far_led_share"] <= 1.0


def test_skeleton_from_bones_orders_parents_first_and_names_problems():
    heads = np.array([[0, 0, 1.0], [0, 0, 0], [0, 0, 2.0]])
    tails = heads + [0, 0, 0.5]
    sk = skeleton_from_bones(["mid", "root", "tip"], ["root", None, "mid"], heads, tails)
    assert sk.names == ["root", "mid", "tip"] and sk.parents.tolist() == [-1, 0, 1]
    np.testing.assert_allclose(sk.joints, heads[[1, 0, 2]])
    for args, words in (
            (([], [], np.zeros((0, 3)), np.zeros((0, 3))), "no bones"),
            ((["a", "a"], [None, "a"], heads[:2], tails[:2]), "'a' is used twice"),
            ((["a", "b"], [None, "x"], heads[:2], tails[:2]), "parent 'x', which is not a bone"),
            ((["a", "b", "c"], [None, None, "a"], heads, tails), "2 root bones ('a', 'b'); a rig needs one"),
            ((["a", "b"], ["b", "a"], heads[:2], tails[:2]), "cycle"),
            ((["a", "b", "c"], [None, "c", "b"], heads, tails), "cycle through bone 'b'"),
            ((["a", "b"], [None, "a"], heads[:2], heads[:2]), "'a' has its tail on its head"),
            ((["a", "b"], [None, "a"], [[0, 0, np.nan], [0, 0, 1]], tails[:2]), "'a' has a non-finite head"),
            ((["a", "b"], [None, "a"], heads, tails[:2]), "heads must have shape [J, 3] = [2, 3]")):
        with pytest.raises(SkeletonInputError, match=re.escape(words)):
            skeleton_from_bones(*args)


def test_nearest_bone_weights_pick_the_nearest_segment():
    heads = np.array([[0, 0, 0.0], [0, 0, 1.0]])
    tails = np.array([[0, 0, 1.0], [1, 0, 1.0]])
    verts = np.array([[0.1, 0, 0.5], [0.6, 0, 1.1], [0, 0, -3.0]])
    assert nearest_bone_weights(verts, heads, tails).argmax(axis=1).tolist() == [0, 1, 0]


def test_refit_after_deleting_a_bone_and_moving_another_keeps_every_bone_attached():
    seq, names, parents, heads, tails = fox()
    names_e, parents_e, heads_e, tails_e = delete_bone(names, parents, heads, tails, names[5])
    moved = names_e.index(names[14])
    diag = float(np.linalg.norm(np.ptp(seq.verts[0], axis=0)))
    shift = np.array([0.0, 0.02 * diag, 0.0])
    heads_e, tails_e = heads_e.copy(), tails_e.copy()
    heads_e[moved] += shift
    result = refit_sequence(seq, skeleton_from_bones(names_e, parents_e, heads_e, tails_e), FAST)
    check_refit(seq, result, names_e, heads_e)
    assert names[5] not in result.joint_names and result.stats["joints"] == len(names) - 1
    assert result.stats["recon_mean"] < 0.01  # the fit still follows the clip closely (1% of the diagonal)
    # the reported error is the edited skeleton's: the unedited one gives a different number
    original = refit_sequence(seq, skeleton_from_bones(names, parents, heads, tails), FAST)
    check_refit(seq, original, names, heads)
    assert original.stats["recon_mean"] != result.stats["recon_mean"]


def test_refit_names_a_bone_added_far_outside_the_mesh():
    seq, names, parents, heads, tails = fox(6)
    diag = float(np.linalg.norm(np.ptp(seq.verts[0], axis=0)))
    far = heads[0] + np.array([0.0, 2.0 * diag, 0.0])  # two diagonals above the fox
    result = refit_sequence(seq, skeleton_from_bones(names + ["stray"], parents + [names[0]],
                                                     np.vstack([heads, far]), np.vstack([tails, far + 0.1 * diag])),
                            FAST)
    assert result.stats["bones_far_from_skin"] == ["stray"]  # the fit may still use it (a far pivot moves skin)


def test_server_refit_maps_by_name_and_refuses_bad_skeletons(tmp_path):
    seq, names, parents, heads, tails = fox(6)
    with BackendClient(sys.executable, backend_path=str(ROOT), hang_timeout_s=60.0,
                       env={"OMP_NUM_THREADS": "1"}) as client:
        stages = []
        reversed_bones = {"names": names[::-1], "parents": parents[::-1], "heads": heads[::-1], "tails": tails[::-1]}
        result = client.refit(seq.verts, seq.faces, reversed_bones, options={"refine_iters": 2}, fps=24, name="fox",
                              on_progress=lambda s, f: stages.append((s, f)))
        check_refit(seq, result, names, heads)
        assert stages[-2:] == [("done", 1.0), ("writing the result", 1.0)] and "fit" in {s for s, _ in stages}
        for skeleton, words in (
                ({**reversed_bones, "parents": ["nope"] * len(names)}, "which is not a bone"),
                ({"names": [], "parents": [], "heads": [], "tails": []}, "the skeleton has no bones"),
                ({**reversed_bones, "parents": [None] * len(names)}, f"{len(names)} root bones"),
                ({**reversed_bones, "heads": [[0, 0]] * len(names)}, "'heads' must be a list of"),
                ({**reversed_bones, "wings": 1}, "unknown field(s) wings")):
            with pytest.raises(BackendError) as err:
                client.refit(seq.verts, seq.faces, skeleton)
            assert err.value.code == "invalid_params" and words in str(err.value)
        assert client.ping()["pong"] is True
