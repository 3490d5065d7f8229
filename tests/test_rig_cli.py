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

ROOT = Path(__file__).resolve().parent.parent


def sprig(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``sprig ARGS`` in a subprocess, run from the checkout (or from ``cwd``, with the checkout importable)."""
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    if cwd is not None:
        env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "backend.app.cli", *args], capture_output=True, text=True,
                          cwd=ROOT if cwd is None else cwd, env=env, timeout=300)


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
                "topology_flicker", "bones_without_skin", "bones_far_from_skin",
                "far_led_share", "models_loaded", "seconds"):
        assert key in summary
    assert [name.split(" ")[0] for name in summary["models_loaded"]] == ["skeleton_sprig.safetensors",
                                                                         "skinning_sprig.safetensors"]
    assert summary["frames"] == 5 and summary["vertices"] == seq.n_verts
    assert "skin_l1" not in summary  # never computed by a rig (sprig eval scores --per-frame output)
    assert summary["facing"] == "+z" and summary["bones"][0] == "root"
    assert (tmp_path / "r.html").read_text().lstrip().lower().startswith("<!doctype html")
    # The GLB plays back the input within the reported reconstruction error.
    back = load_sequence(out, fps=30.0)
    assert back.n_frames == 5
    diag = np.linalg.norm(np.ptp(seq.verts[0], axis=0))
    err = np.linalg.norm(back.verts - seq.verts, axis=-1) / diag
    assert err.max() <= summary["recon_max"] + 1e-4


def test_rig_folder_batch_reports_each_bad_file_and_continues(tmp_path, checkpoints):
    """One bad file does not abort a batch: each failure is one stderr line naming the file, the good files
    get their outputs, the exit status says something failed."""
    folder = tmp_path / "in"
    folder.mkdir()
    seq = multipart_sequence(n_frames=3)
    np.savez(folder / "a_good.npz", verts=seq.verts, faces=seq.faces)
    np.savez(folder / "bad_index.npz", verts=seq.verts, faces=seq.faces + 10_000)  # face index out of range
    np.savez(folder / "bad_huge.npz", verts=seq.verts * np.float32(1e30), faces=seq.faces)  # beyond 1e12
    (folder / "bad_bytes.glb").write_bytes(b"glTF" + bytes(range(256)) * 4)  # damaged GLB
    (folder / "bad_empty.anime").write_bytes(b"")
    np.savez(folder / "z_good.npz", verts=seq.verts[:, ::-1].copy(), faces=(seq.verts.shape[1] - 1 - seq.faces))
    proc = sprig("rig", str(folder), "-o", str(tmp_path / "out"), "--checkpoints", str(checkpoints), "-q")
    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good_rigged.glb", "z_good_rigged.glb"]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    bad = ["bad_bytes.glb", "bad_empty.anime", "bad_huge.npz", "bad_index.npz"]
    for name in bad:
        [line] = [line for line in lines if line.startswith("failed: ") and name in line]
        assert line.startswith(f"failed: {folder / name}: ")
    assert "face index out of range" in proc.stderr
    assert lines[-1] == f"4 of 6 sequences failed: {', '.join(str(folder / n) for n in bad)}"


def test_rig_folder_batch_goes_on_when_the_models_produce_nan(tmp_path, checkpoints):
    """Models whose outputs overflow to NaN/Inf on an input (finite but absurd weights) fail that
    sequence with a NonFiniteOutputError line, and the batch still tries every other file."""
    import torch

    from backend.models.checkpoint import load_model, save_model

    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "skeleton_sprig.safetensors").write_bytes((checkpoints / "skeleton_sprig.safetensors").read_bytes())
    skinning, _ = load_model(checkpoints / "skinning_sprig.safetensors")
    with torch.no_grad():
        skinning.proj_p.weight.fill_(1e30)
        skinning.proj_j.weight.fill_(1e30)
    save_model(skinning, broken / "skinning_sprig.safetensors", stage="untrained", provenance={"note": "overflows"})
    folder = tmp_path / "in"
    folder.mkdir()
    seq = multipart_sequence(n_frames=3)
    for name in ("a.npz", "b.npz"):
        np.savez(folder / name, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(folder), "-o", str(tmp_path / "out"), "--checkpoints", str(broken), "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: ")]
    assert [line.split(": ")[1] for line in failed] == [str(folder / "a.npz"), str(folder / "b.npz")]
    assert all("NaN/Inf" in line for line in failed), failed
    assert not any((tmp_path / "out").iterdir())


def test_rig_folder_into_itself_runs_again_and_overwrites_its_outputs(tmp_path, checkpoints):
    """``sprig rig clips/ -o clips/`` twice: the first run's ``*_rigged.glb`` (and ``--per-frame`` ``.npz``)
    files are outputs of the second run (replaced atomically), not inputs; the inputs are never touched."""
    clips = tmp_path / "clips"
    clips.mkdir()
    seq = multipart_sequence(n_frames=3)
    for name in ("walk.npz", "jump.npz"):
        np.savez(clips / name, verts=seq.verts, faces=seq.faces)
    inputs = {name: (clips / name).read_bytes() for name in ("walk.npz", "jump.npz")}
    args = ("rig", str(clips), "-o", str(clips), "--per-frame", str(clips), "--checkpoints", str(checkpoints), "-q")
    first = sprig(*args)
    assert first.returncode == 0, first.stderr
    outputs = ["jump_rigged.glb", "jump_rigged.npz", "walk_rigged.glb", "walk_rigged.npz"]
    assert sorted(p.name for p in clips.iterdir()) == sorted([*inputs, *outputs])
    inodes = {name: (clips / name).stat().st_ino for name in outputs}
    second = sprig(*args)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in clips.iterdir()) == sorted([*inputs, *outputs])  # no *_rigged_rigged.glb
    assert all((clips / name).stat().st_ino != inodes[name] for name in outputs)  # each replaced by a new file
    assert all((clips / name).read_bytes() == data for name, data in inputs.items())
    assert load_sequence(clips / "walk_rigged.glb", fps=30.0).n_frames == 3


def test_rig_folder_still_refuses_to_overwrite_a_real_input(tmp_path, checkpoints):
    """Two inputs with one stem would both write ``<stem>_rigged.glb``: refused before any work."""
    clips = tmp_path / "clips"
    clips.mkdir()
    seq = multipart_sequence(n_frames=2)
    np.savez(clips / "walk.npz", verts=seq.verts, faces=seq.faces)
    from backend.io import save_sequence

    save_sequence(load_sequence(clips / "walk.npz"), clips / "walk.glb")
    before = {p.name: p.read_bytes() for p in clips.iterdir()}
    proc = sprig("rig", str(clips), "-o", str(clips), "--checkpoints", str(checkpoints), "-q")
    assert proc.returncode == 2 and "is also the output" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in clips.iterdir()} == before


@pytest.mark.parametrize("args, message", [
    (["missing.npz", "-o", "x.glb"], "input not found"),
    (["{src}", "-o", "x.glb", "--frames", "a:b"], "--frames"),
    (["{src}", "-o", "x.glb", "--max-influences", "0"], "--max-influences"),
    (["{src}", "-o", "x.glb", "--checkpoints", "{empty}"], "missing"),
    (["{src}", "-o", "x.glb", "--facing", "+y"], "--facing +y is along the up axis (--up y)"),
    (["{src}", "-o", "rig.fbx"], "-o rig.fbx: this output is written as .glb (name the file rig.glb"),
    (["{src}", "-o", "x.glb", "--report", "r.glb"], "--report r.glb: this output is written as .html"),
    (["{src}", "-o", "x.glb", "--json", "s.html"], "--json s.html: this output is written as .json"),
    (["{folder}", "-o", "out", "--report", "out/r.html"], "--report must name a folder"),
    (["{folder}", "-o", "out", "--detail", "300"], "--detail: a detail bone count must be between 2 and 256"),
    (["{src}", "-o", "x.glb", "--max-influences", "100"], "--max-influences must be >= 1 and <= 64"),
    (["{src}", "-o", "x.glb", "--bone-reach", "20"], "--bone-reach must be a number in [0, 10]"),
    (["{src}", "-o", "x.glb", "--threads", "-1"], "--threads must be >= 0"),
    (["{src}", "-o", "x.glb", "--free-start", "-1"], "--free-start must be >= 0"),
])
def test_rig_bad_options_are_one_line_errors(tmp_path, args, message):
    seq = multipart_sequence(n_frames=2)
    src = tmp_path / "s.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    (tmp_path / "empty").mkdir()
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.npz", "b.npz"):
        np.savez(folder / name, verts=seq.verts, faces=seq.faces)
    args = [a.format(src=src, empty=tmp_path / "empty", folder=folder) for a in args]
    proc = sprig("rig", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.glb")) and not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("name", ["out", "out/"])
def test_rig_output_without_a_suffix_is_a_folder(tmp_path, checkpoints, name):
    """``-o out`` / ``-o out/`` (a folder that does not exist yet) writes ``out/<input>_rigged.glb``; it wrote a
    GLB file named ``out``."""
    seq = multipart_sequence(n_frames=3)
    src = tmp_path / "walk.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(src), "-o", str(tmp_path) + "/" + name, "--checkpoints", str(checkpoints), "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").is_dir() and (tmp_path / "out" / "walk_rigged.glb").is_file()


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


def test_still_clip_rigs_with_a_warning_and_no_progress_lines_in_a_log(tmp_path, checkpoints):
    """A clip that never moves still rigs (from its shape), with one warning saying so; with stderr going to a
    file (not a terminal) no progress-bar updates fill it."""
    seq = multipart_sequence(n_frames=4)
    src = tmp_path / "still.npz"
    np.savez(src, verts=np.repeat(seq.verts[:1], 4, axis=0), faces=seq.faces)
    proc = sprig("rig", str(src), "-o", str(tmp_path / "still.glb"), "--checkpoints", str(checkpoints))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "still.glb").is_file()
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "does not move over its 4 frames" in warnings[0]
    assert "%|" not in proc.stderr  # no tqdm bar lines
    moving = tmp_path / "moving.npz"
    np.savez(moving, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(moving), "-o", str(tmp_path / "moving.glb"), "--checkpoints", str(checkpoints))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_skin_notes_name_far_and_skinless_bones():
    from backend.app.rig_command import skin_notes

    assert skin_notes({"joints": 5, "bones_without_skin": [], "bones_far_from_skin": []}) == []
    lines = skin_notes({"joints": 5, "bones_without_skin": ["head", "toe.L"], "bones_far_from_skin": ["stray"]})
    assert lines == ["1 bones lie far from the mesh (over 15% of its size from every vertex): stray",
                     "2 of 5 bones lead no vertex (posing one moves skin only through small weights): head, toe.L"]


def test_demo_rigs_a_clip_and_scores_its_artist_rig(tmp_path, checkpoints):
    """`make demo`'s job on the first six frames of the bundled sample, with tiny untrained checkpoints."""
    from backend.app import demo

    with np.load(demo.SAMPLE) as data:
        clip = {k: data[k] for k in ("verts", "joints", "parents", "faces", "weights")}
    clip["verts"], clip["joints"] = clip["verts"][:6], clip["joints"][:6]
    src = tmp_path / "walk.npz"
    np.savez(src, **clip)
    proc = subprocess.run([sys.executable, "-m", "backend.app.demo", "--clip", str(src), "--out", str(tmp_path / "out"),
                           "--checkpoints", str(checkpoints)], capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rigged walk.npz:" in proc.stdout and "side by side" in proc.stdout
    for name in ("walk_rigged.glb", "walk_report.html", "walk_artist.json", "walk_jitter1pct.json"):
        assert (tmp_path / "out" / name).is_file()
    assert json.loads((tmp_path / "out" / "walk_artist.json").read_text())["n_frames"] == 6


def test_the_cli_default_bone_reach_is_the_pipeline_default():
    from backend.app.rig_command import RIG_DEFAULT_BONE_REACH
    from backend.rigging.pipeline import RigConfig

    assert RIG_DEFAULT_BONE_REACH == RigConfig().bone_reach


def test_rig_z_up_input_writes_a_y_up_glb_and_takes_a_facing_with_a_dash(tmp_path, checkpoints):
    """``--up z`` (an OBJ/PLY folder from Blender): the GLB is in glTF's axes (+Y up), not lying on its back; and
    ``--facing -y`` is read as a value (argparse took ``-y`` for an option before)."""
    from backend.normalize import Z_UP_TO_Y_UP

    seq = multipart_sequence(n_frames=4)
    src = tmp_path / "zup.npz"
    np.savez(src, verts=(seq.verts.astype(np.float64) @ Z_UP_TO_Y_UP).astype(np.float32), faces=seq.faces)
    out = tmp_path / "zup_rigged.glb"
    proc = sprig("rig", str(src), "-o", str(out), "--checkpoints", str(checkpoints), "--up", "z", "--facing", "-y",
                 "--json", str(tmp_path / "s.json"), "-q")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["facing"] == "-y" and len(summary["bones"]) == summary["joints"]
    back = load_sequence(out, fps=30.0)
    diag = np.linalg.norm(np.ptp(seq.verts[0], axis=0))
    err = np.linalg.norm(back.verts - seq.verts, axis=-1) / diag  # the Y-up original, not the Z-up input
    assert err.max() <= summary["recon_max"] + 1e-4


def test_rig_frames_from_the_end_with_a_dash(tmp_path, checkpoints):
    """``--frames -2:`` (the last two frames) parses like ``--frames=-2:``; argparse took ``-2:`` for an option."""
    seq = multipart_sequence(n_frames=5)
    src = tmp_path / "walk.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(src), "-o", str(tmp_path / "w.glb"), "--frames", "-2:", "--json",
                 str(tmp_path / "w.json"), "--checkpoints", str(checkpoints), "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "w.json").read_text())["frames"] == 2


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch without a CUDA device")
def test_rig_cuda_without_a_cuda_device_names_the_option(tmp_path):
    seq = multipart_sequence(n_frames=2)
    src = tmp_path / "s.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(src), "-o", str(tmp_path / "x.glb"), "--device", "cuda")
    assert proc.returncode == 2 and "--device cuda" in proc.stderr and "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.glb").exists()


def test_sprig_version():
    proc = sprig("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sprig "), proc.stdout + proc.stderr


def test_rig_frames_beyond_the_clip_warn(tmp_path, checkpoints):
    """``--frames 0:1000`` on a 4-frame clip rigs the 4 frames and says so (it was silent)."""
    seq = multipart_sequence(n_frames=4)
    src = tmp_path / "walk.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    proc = sprig("rig", str(src), "-o", str(tmp_path / "w.glb"), "--frames", "0:1000", "--checkpoints",
                 str(checkpoints))
    assert proc.returncode == 0, proc.stderr
    assert "--frames asks for 1000 frames, the clip has 4 there" in proc.stderr
    ok = sprig("rig", str(src), "-o", str(tmp_path / "v.glb"), "--frames", "1:3", "--checkpoints", str(checkpoints))
    assert ok.returncode == 0 and "--frames asks" not in ok.stderr


def test_rig_rest_solve_on_by_default_and_off_with_its_option(tmp_path, checkpoints):
    """The rig's rest shape is solved by default (``rest_moved_max`` > 0 on a clip that bends) and is the first
    frame with ``--no-rest-solve``; either way the GLB plays back within the reported error."""
    seq = multipart_sequence(n_frames=5)
    src = tmp_path / "walk.npz"
    np.savez(src, verts=seq.verts, faces=seq.faces)
    diag = np.linalg.norm(np.ptp(seq.verts[0], axis=0))
    moved = {}
    for flag in ("--rest-solve", "--no-rest-solve"):  # (the first also with the fit's free start)
        out, summary_path = tmp_path / f"{flag}.glb", tmp_path / f"{flag}.json"
        proc = sprig("rig", str(src), "-o", str(out), "--json", str(summary_path), "--checkpoints", str(checkpoints),
                     flag, "-q", *(["--free-start", "12"] if flag == "--rest-solve" else []))
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(summary_path.read_text())
        moved[flag] = summary["rest_moved_max"]
        back = load_sequence(out, fps=30.0)
        assert (np.linalg.norm(back.verts - seq.verts, axis=-1) / diag).max() <= summary["recon_max"] + 1e-4
    assert moved["--no-rest-solve"] == 0.0 < moved["--rest-solve"] < 0.05, moved
