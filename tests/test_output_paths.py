"""The output-path policy (backend/app/output_paths.py) and its use by `sprig rig` and `sprig eval`.

Issue #18: an output naming an input (by path, symbolic or hard link) or another output of the same run is
refused before any work and the input stays byte-identical; files appear whole or not at all; no temporary
file survives an error, Ctrl-C or SIGTERM; a folder that refuses new files is reported before the work."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.app.cli import main as sprig_main
from backend.app.output_paths import (OutputPathError, atomic_write, check_folder_writable, plan_outputs,
                                      remove_stale_temps, write_text_atomic)
from tests.test_rig import multipart_sequence

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the policy (or a writer's ``.part``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".sprig-" in p.name or p.name.endswith(".part"))


@pytest.fixture
def npz_input(tmp_path) -> Path:
    seq = multipart_sequence(n_frames=3)
    path = tmp_path / "in.npz"
    np.savez(path, verts=seq.verts, faces=seq.faces)
    return path


# -- the policy ---------------------------------------------------------------------------------


def test_output_equal_to_an_input_is_refused_by_path_symlink_and_hard_link(tmp_path, npz_input):
    link = tmp_path / "link.npz"
    link.symlink_to(npz_input)
    hard = tmp_path / "hard.npz"
    os.link(npz_input, hard)
    relative = Path(os.path.relpath(npz_input))
    for output in (npz_input, link, hard, relative, tmp_path / "sub" / ".." / "in.npz"):
        with pytest.raises(OutputPathError, match="is the input"):
            plan_outputs([output], inputs=[npz_input])


def test_two_outputs_of_one_run_must_differ(tmp_path):
    a = tmp_path / "a.glb"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b.glb")
    with pytest.raises(OutputPathError, match="is also the output"):
        plan_outputs([tmp_path / "same.glb", tmp_path / "same.glb"])
    with pytest.raises(OutputPathError, match="is also the output"):
        plan_outputs([a, tmp_path / "b.glb"])  # hard links: one file


def test_folders_devices_and_unwritable_folders_are_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputPathError, match="existing folder"):
        plan_outputs([tmp_path / "dir"])
    if Path("/dev/full").exists():
        with pytest.raises(OutputPathError, match="not a regular file"):
            plan_outputs(["/dev/full"])
    with pytest.raises(OutputPathError, match="does not exist"):
        plan_outputs([tmp_path / "missing" / "x.npz"])
    assert plan_outputs([tmp_path / "new" / "x.npz"], create_folders=True) == [tmp_path.resolve() / "new" / "x.npz"]
    if Path("/proc/self").is_dir():  # a folder that refuses new files even for root
        with pytest.raises(OutputPathError, match="not writable"):
            check_folder_writable(Path("/proc"))
    if not IS_ROOT:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(OutputPathError, match="not writable"):
                plan_outputs([locked / "x.glb"])
        finally:
            locked.chmod(0o755)
    assert leftovers(tmp_path) == []


def test_symlinked_output_is_written_through_and_reported_resolved(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    [dest] = plan_outputs([link])
    assert dest == target.resolve()
    write_text_atomic(dest, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_atomic_write_keeps_the_old_file_on_error_and_interrupt(tmp_path):
    dest = tmp_path / "summary.json"
    dest.write_text("old and good")
    for exc in (RuntimeError("writer failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_write(dest) as temp:
                temp.write_text("half")
                temp.with_name(temp.name + ".part").write_text("a writer's own temp")
                raise exc
        assert dest.read_text() == "old and good"
        assert leftovers(tmp_path) == []
    with pytest.raises(OutputPathError, match="produced no file"):
        with atomic_write(dest):
            pass
    assert dest.read_text() == "old and good"
    write_text_atomic(dest, "new")
    assert dest.read_text() == "new" and leftovers(tmp_path) == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dest = tmp_path / "out.glb"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".out.glb.sprig-{dead_pid}-0a1b2c3d.tmp", tmp_path / f".out.glb.sprig-{dead_pid}-0a1b2c3d.tmp.part",
             tmp_path / f".sprig-probe.sprig-{dead_pid}-0a1b2c3d.tmp"]  # a writability probe cut short
    alive = tmp_path / f".out.glb.sprig-{os.getppid()}-deadbeef.tmp"  # a running process's file stays
    other = tmp_path / f".other.glb.sprig-{dead_pid}-0a1b2c3d.tmp"  # another destination's file stays
    for p in (*stale, alive, other):
        p.write_bytes(b"partial")
    assert sorted(remove_stale_temps(dest)) == sorted(stale)
    assert alive.exists() and other.exists()


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    dest = tmp_path / "result.bin"
    dest.write_bytes(b"previous result")
    code = ("import sys, time\n"
            "from backend.app.output_paths import atomic_write, install_termination_cleanup\n"
            "install_termination_cleanup()\n"
            f"with atomic_write({str(dest)!r}) as temp:\n"
            "    temp.write_bytes(b'partial')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(leftovers(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    proc.stdout.close()
    assert dest.read_bytes() == b"previous result" and leftovers(tmp_path) == []


# -- sprig rig / sprig eval refuse before any work ----------------------------------------------


def run_sprig(*args: str, capsys) -> tuple[int, str]:
    code = sprig_main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option", ["-o", "--json", "--report", "--per-frame"])
def test_rig_refuses_to_overwrite_its_input(tmp_path, npz_input, capsys, option):
    before = digest(npz_input)
    args = ["rig", npz_input, "-o", tmp_path / "out.glb", "--checkpoints", tmp_path / "no_checkpoints"]
    if option == "-o":
        args[3] = npz_input
    else:
        args += [option, npz_input]
    code, err = run_sprig(*args, capsys=capsys)
    assert code == 2 and "is the input" in err and "refusing to overwrite" in err, err
    assert digest(npz_input) == before and not (tmp_path / "out.glb").exists()


def test_rig_refuses_a_glb_input_as_its_output_and_json_equal_to_glb(tmp_path, capsys):
    from backend.io.gltf import save_morph_gltf

    seq = multipart_sequence(n_frames=3)
    fox = save_morph_gltf(seq, tmp_path / "fox.glb")
    before = digest(fox)
    code, err = run_sprig("rig", fox, "-o", fox, capsys=capsys)
    assert code == 2 and "is the input" in err
    same = tmp_path / "same.glb"
    same.write_bytes(b"an earlier result")
    code, err = run_sprig("rig", fox, "-o", same, "--json", same, capsys=capsys)
    assert code == 2 and "is also the output" in err
    assert digest(fox) == before and same.read_bytes() == b"an earlier result"


def test_rig_reports_an_unwritable_folder_before_loading_models(tmp_path, npz_input, capsys):
    start = time.monotonic()
    code, err = run_sprig("rig", npz_input, "-o", "/proc/out.glb", capsys=capsys)
    assert code == 2 and "not writable" in err and time.monotonic() - start < 5


def test_eval_refuses_json_equal_to_its_input(tmp_path, npz_input, capsys):
    before = digest(npz_input)
    code, err = run_sprig("eval", npz_input, "--json", npz_input, capsys=capsys)
    assert code == 2 and "is the input" in err
    assert digest(npz_input) == before


def test_rig_into_an_existing_folder_writes_inside_it_and_leaves_no_part_file(tmp_path, npz_input, checkpoints, capsys):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    old_json = tmp_path / "s.json"
    old_json.write_text("{}")
    code, err = run_sprig("rig", npz_input, "-o", out_dir, "--checkpoints", checkpoints, "--json", old_json, "-q",
                          "--device", "cpu", capsys=capsys)
    assert code == 0, err
    assert [p.name for p in out_dir.iterdir()] == ["in_rigged.glb"]
    assert (out_dir / "in_rigged.glb").read_bytes()[:4] == b"glTF"
    assert '"joints"' in old_json.read_text()
    assert leftovers(out_dir) == [] and leftovers(tmp_path) == []


def test_skeleton_decoding_polls_cancel_every_step():
    import torch

    from backend.models.skeleton_generator import DecodingCancelled, SkeletonGenerator
    from tests.test_rig import TINY_SKEL

    torch.manual_seed(0)
    model = SkeletonGenerator(TINY_SKEL)
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) >= 5

    points = torch.rand(2, 64, 3)
    normals = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    with pytest.raises(DecodingCancelled, match="step 4"):
        model.generate(points, normals, max_joints=12, should_cancel=should_cancel)
    assert len(calls) == 5


def test_rig_cancel_lands_inside_the_skeleton_stage():
    """Cancel raised while decoding, not at the next stage boundary (33 s later on a CPU with real models)."""
    import torch

    from backend.models.inference import RiggerModels
    from backend.models.skeleton_generator import SkeletonGenerator
    from backend.models.skinning_network import SkinningNetwork
    from backend.rigging.pipeline import RigCancelled, RigConfig, rig_sequence
    from tests.test_rig import FAST, TINY_SKEL, TINY_SKIN

    torch.manual_seed(0)
    models = RiggerModels(skeleton=SkeletonGenerator(TINY_SKEL), skinning=SkinningNetwork(TINY_SKIN),
                          device=torch.device("cpu"))
    stages: list[str] = []
    polls_in_skeleton = []

    def should_cancel() -> bool:
        if stages and stages[-1] == "skeleton":
            polls_in_skeleton.append(1)
        return len(polls_in_skeleton) > 4  # a few decoding steps into the stage

    with pytest.raises(RigCancelled, match="during skeleton"):
        rig_sequence(multipart_sequence(n_frames=4), RigConfig(**FAST), progress=lambda s, f: stages.append(s),
                     should_cancel=should_cancel, models=models)
    assert stages[-1] == "skeleton"
