"""`sprig rig`: single file, folder batch with one failure, option errors, and the GLB playing back.

Uses tiny untrained checkpoints written by the test (the contract, not rig quality)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.io import load_sequence
from tests.test_rig import multipart_sequence
from tests.test_server import write_untrained_checkpoints

ROOT = Path(__file__).resolve().parent.parent


def sprig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_untrained_checkpoints(tmp_path_factory.mktemp("ckpt"))


def test_rig_single_file_writes_glb_report_and_json(tmp_path, checkpoints):
    seq = multipart_sequence(n_frames=5)
    src = tmp_path / "robot.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    out = tmp_path / "robot_rigged.glb"
    proc = sprig("rig", str(src), "-o", str(out), "--checkpoints", str(checkpoints), "--report",
                 str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json"), "-q")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    for key in ("joints", "frames", "vertices", "recon_mean", "recon_max", "pjdd", "blrd", "gsd", "jad",
                "topology_flicker", "skin_l1", "skin_symkl", "seconds"):
        assert key in summary
    assert summary["frames"] == 5 and summary["vertices"] == seq.n_verts
    assert (tmp_path / "r.html").read_text().lstrip().lower().startswith("<!doctype html")
    # The GLB plays back the input within the reported reconstruction error.
    back = load_sequence(out, fps=30.0)
    assert back.n_frames == 5
    diag = np.linalg.norm(np.ptp(seq.verts[0], axis=0))
    err = np.linalg.norm(back.verts - seq.verts, axis=-1) / diag
    assert err.max() <= summary["recon_max"] + 1e-4


def test_rig_folder_batch_lists_failures_and_continues(tmp_path, checkpoints):
    folder = tmp_path / "in"
    folder.mkdir()
    seq = multipart_sequence(n_frames=3)
    np.savez(folder / "good.npz", verts=seq.verts, faces=seq.faces)
    np.savez(folder / "bad.npz", verts=seq.verts, faces=seq.faces + 10_000)  # face index out of range
    proc = sprig("rig", str(folder), "-o", str(tmp_path / "out"), "--checkpoints", str(checkpoints), "-q")
    assert proc.returncode == 1
    assert (tmp_path / "out" / "good_rigged.glb").is_file()
    assert not (tmp_path / "out" / "bad_rigged.glb").exists()
    assert "1 of 2 sequences failed" in proc.stdout and "face index out of range" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["missing.npz", "-o", "x.glb"], "input not found"),
    (["{src}", "-o", "x.glb", "--frames", "a:b"], "--frames"),
    (["{src}", "-o", "x.glb", "--max-influences", "0"], "--max-influences"),
    (["{src}", "-o", "x.glb", "--checkpoints", "{empty}"], "missing"),
])
def test_rig_bad_options_are_one_line_errors(tmp_path, args, message):
    seq = multipart_sequence(n_frames=2)
    src = tmp_path / "s.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    (tmp_path / "empty").mkdir()
    args = [a.format(src=src, empty=tmp_path / "empty") for a in args]
    proc = sprig("rig", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_rig_per_frame_writes_an_eval_input_that_sprig_eval_scores(tmp_path, checkpoints):
    seq = multipart_sequence(n_frames=4)
    src = tmp_path / "robot.npz"
    gt = np.repeat(seq.verts[:, :1], 2, axis=1)  # a 2-joint "ground truth" carried by the mesh
    np.savez(src, verts=seq.verts, faces=seq.faces, joints=gt, parents=np.array([-1, 0]))
    frames = tmp_path / "frames.npz"
    proc = sprig("rig", str(src), "-o", str(tmp_path / "r.glb"), "--checkpoints", str(checkpoints),
                 "--per-frame", str(frames), "-q")
    assert proc.returncode == 0, proc.stderr
    data = np.load(frames)
    for k in range(4):
        J = len(data[f"parents_{k}"])
        assert data[f"joints_{k}"].shape == (J, 3) and data[f"weights_{k}"].shape == (seq.n_verts, J)
        assert np.allclose(data[f"weights_{k}"].sum(1), 1, atol=1e-4)
    assert "gt_joints" in data.files
    scored = sprig("eval", str(frames), "--json", str(tmp_path / "e.json"), "-q")
    assert scored.returncode == 0, scored.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["topology_flicker"] is not None and result["skin_l1"] is not None
