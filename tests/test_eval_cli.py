"""``sprig eval``: the eval-input format, the metric dictionary, the table and error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.app.evaluate import (
    CLIP_KEYS,
    METRIC_KEYS,
    EvalConfig,
    EvalInput,
    EvalInputError,
    evaluate,
    format_report,
    load_eval_input,
    save_eval_input,
)
from backend.metrics import motion_compensated_joint_drift, pjdd
from backend.normalize import AnchorBox

REPO = Path(__file__).resolve().parents[1]
HORSE = REPO.parent / "shared" / "realdata" / "quaternius_horse_gallop.npz"

CHAIN4 = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=float)
STRETCHED = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=float)
CHAIN_PARENTS = np.array([-1, 0, 1, 2])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.app.cli", "eval", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def box_mesh(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4 x 1 x 1 box (8 vertices, 12 triangles) repeated over ``n_frames``."""
    v = np.array([[x, y, z] for x in (-0.5, 4.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int32)
    return np.repeat(v[None], n_frames, axis=0), f


def chain_input(**extra) -> EvalInput:
    verts, faces = box_mesh(2)
    return EvalInput(verts=verts, faces=faces, joints=[CHAIN4, STRETCHED], parents=[CHAIN_PARENTS] * 2, **extra)


@pytest.fixture(scope="module")
def horse_file(tmp_path_factory) -> tuple[Path, dict]:
    if not HORSE.is_file():
        pytest.skip(f"real clip not found: {HORSE}")
    data = dict(np.load(HORSE))
    k = len(data["verts"])
    inp = EvalInput(verts=data["verts"], faces=data["faces"], joints=list(data["joints"]),
                    parents=[data["parents"]] * k, name="horse")
    path = save_eval_input(tmp_path_factory.mktemp("eval") / "horse_gt.npz", inp)
    return path, data


def test_cli_on_an_artist_forest_rig_matches_direct_metric_calls(horse_file, tmp_path):
    path, data = horse_file
    assert (data["parents"] == -1).sum() == 5  # the horse rig is a forest
    out = tmp_path / "out.json"
    proc = run_cli(path, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "PJDD (Eq. 28)" in proc.stdout and "paper protocol" in proc.stdout
    res = json.loads(out.read_text())
    for key in METRIC_KEYS + CLIP_KEYS:
        assert key in res, key
    assert res["topology_flicker"] == 0 and res["topology_flicker_clip"] == 0
    joints = np.load(path)  # exactly what the CLI read (float32)
    k = len(joints["verts"])
    box = AnchorBox.fit(joints["verts"][0])
    frames = [box.apply(joints[f"joints_{i}"]) for i in range(k)]
    assert res["pjdd"] == pytest.approx(np.mean([pjdd(frames[i], frames[0]) for i in (1, 2)]), rel=1e-9)
    assert res["pjdd_clip"] == pytest.approx(np.mean([pjdd(frames[i], frames[0]) for i in range(1, k)]), rel=1e-9)
    direct = motion_compensated_joint_drift(joints["verts"], [joints[f"joints_{i}"] for i in range(k)])
    assert res["mcjd"] == pytest.approx(direct.mean, rel=1e-5)
    assert res["protocol_frames"] == [0, 1, 2] and res["n_frames"] == k
    assert len(res["per_frame"]["pjdd"]) == k and res["per_frame"]["pjdd"][0] is None
    for key in ("mpjpe_anchor", "cd_j2j", "skin_l1", "skin_precision"):  # no ground truth, no weights
        assert res[key] is None, key


def test_cli_frames_option_crops_the_clip(horse_file, tmp_path):
    path, _ = horse_file
    out = tmp_path / "crop.json"
    proc = run_cli(path, "--frames", "4:7", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    res = json.loads(out.read_text())
    assert res["frames"] == [4, 5, 6] and res["n_frames"] == 3
    assert res["pjdd"] == pytest.approx(res["pjdd_clip"])


def test_hand_computed_chain_through_the_file_format(tmp_path):
    path = save_eval_input(tmp_path / "chain.npz", chain_input())
    res = evaluate(load_eval_input(path))
    # Scale-free metrics survive the anchor-box normalization (see test_metrics for the derivations).
    assert res["pjdd"] == pytest.approx(4 / 9, rel=1e-6)
    assert res["blrd"] == pytest.approx(1 / 3, rel=1e-6)
    assert res["gsd"] == pytest.approx(1 / 12, rel=1e-6)
    assert res["jad"] == pytest.approx(0.0, abs=1e-6)
    # The mesh does not move, so the carried joints stay put: MCJD = Chamfer(stretched, chain) / box side 5.
    # x = 0,1,3,4 -> nearest of 0,1,2,3: (0,0,0,1); x = 0,1,2,3 -> nearest of 0,1,3,4: (0,0,1,0)
    # -> (1/4 + 1/4) / 2 / 5 = 0.05
    assert res["mcjd"] == pytest.approx(0.05, rel=1e-6)
    assert json.loads(json.dumps(res)) == res  # JSON-ready


def test_ground_truth_weights_and_joint_count_changes():
    verts, faces = box_mesh(3)
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(4), size=8)
    shrunk = STRETCHED[:3]
    inp = EvalInput(verts=verts, faces=faces, joints=[CHAIN4, CHAIN4 + 0.01, shrunk],
                    parents=[CHAIN_PARENTS, CHAIN_PARENTS, CHAIN_PARENTS[:3]],
                    weights=[w, w, w[:, :3] / w[:, :3].sum(1, keepdims=True)],
                    gt_joints=CHAIN4, gt_parents=CHAIN_PARENTS, gt_weights=w)
    res = evaluate(inp, EvalConfig(protocol_frames=2))
    assert res["topology_flicker"] == 0.0 and res["topology_flicker_clip"] == pytest.approx(0.5)
    assert res["per_frame"]["topology_flicker"] == [False, False, True]
    assert res["per_frame"]["n_joints"] == [4, 4, 3]
    assert res["mpjpe_anchor"] == pytest.approx(0.0) and res["cd_j2j"] == pytest.approx(0.0)
    assert res["skin_l1"] == pytest.approx(0.0, abs=1e-6) and res["skin_l1_clip"] > 0.0
    assert 0.0 < res["skin_recall"] <= 1.0 and res["skin_precision"] == pytest.approx(1.0)
    assert len(res["per_joint"]["skin_cons"]) == 4
    table = format_report(res)
    assert "MPJPE@Anchor" in table and "frames 0-1" in table


def test_gt_joints_per_frame_gives_per_frame_accuracy():
    verts, faces = box_mesh(2)
    res = evaluate(EvalInput(verts=verts, faces=faces, joints=[CHAIN4, CHAIN4], parents=[CHAIN_PARENTS] * 2,
                             gt_joints=np.stack([CHAIN4, CHAIN4 + np.array([0.5, 0, 0])])))
    # frame 1: pred x = 0,1,2,3 vs gt x = .5,1.5,2.5,3.5 -> 0.5 both ways -> 0.5 / box side 5 = 0.1
    assert res["per_frame"]["cd_j2j"] == pytest.approx([0.0, 0.1])
    assert res["cd_j2j_clip"] == pytest.approx(0.05)


@pytest.mark.parametrize("case, message", [
    ("missing_joints", "missing key 'joints_1'"),
    ("bad_weights", "weights_0 must have shape [V, J] = [8, 4]"),
    ("bad_parents", "parents_1 has a parent index outside"),
    ("partial_weights", "weights_k given for 1 of 2 frames"),
])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, case, message):
    verts, faces = box_mesh(2)
    arrays = {"verts": verts, "faces": faces, "joints_0": CHAIN4, "parents_0": CHAIN_PARENTS,
              "joints_1": STRETCHED, "parents_1": CHAIN_PARENTS}
    if case == "missing_joints":
        del arrays["joints_1"]
    elif case == "bad_weights":
        arrays["weights_0"] = np.ones((8, 3))
        arrays["weights_1"] = np.ones((8, 4))
    elif case == "bad_parents":
        arrays["parents_1"] = np.array([-1, 0, 1, 7])
    elif case == "partial_weights":
        arrays["weights_0"] = np.ones((8, 4))
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    proc = run_cli(path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_missing_file_bad_frames_and_non_npz_exit_2(tmp_path):
    proc = run_cli(tmp_path / "nope.npz")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    proc = run_cli(junk)
    assert proc.returncode == 2 and "not a readable .npz" in proc.stderr and "Traceback" not in proc.stderr
    path = save_eval_input(tmp_path / "chain.npz", chain_input())
    for spec in ("a:b", "5:9"):
        proc = run_cli(path, "--frames", spec)
        assert proc.returncode == 2 and "--frames" in proc.stderr and "Traceback" not in proc.stderr


def test_in_memory_validation_errors_name_the_problem():
    verts, faces = box_mesh(2)
    with pytest.raises(EvalInputError, match="cycle"):
        EvalInput(verts=verts, faces=faces, joints=[CHAIN4, CHAIN4],
                  parents=[CHAIN_PARENTS, np.array([-1, 2, 3, 1])])
    with pytest.raises(EvalInputError, match="2 mesh frames but 1 joint sets"):
        EvalInput(verts=verts, faces=faces, joints=[CHAIN4], parents=[CHAIN_PARENTS])
    with pytest.raises(EvalInputError, match="joints_1 must be finite"):
        EvalInput(verts=verts, faces=faces, joints=[CHAIN4, CHAIN4 * np.nan], parents=[CHAIN_PARENTS] * 2)
