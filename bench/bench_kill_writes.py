"""SIGKILL `sprig rig` and the server while they write, and check that nothing half-written is ever seen.

Each trial starts a real process that rigs a small sequence (tiny untrained checkpoints: the plumbing,
not rig quality) over outputs that already hold an earlier, different result, then SIGKILLs it: in
"write" trials as soon as one of its temporary files appears in the output folder (plus 0-3 ms), in
"random" trials at a uniformly random moment of a full run. After each kill:

* every output path holds either the earlier file, byte for byte, or a complete new one (the GLB loads
  with every frame, the JSON parses with its keys, the result .npz loads as a ``RigResult``);
* the input's SHA-256 is unchanged.

Temporary files a SIGKILL leaves behind (nothing can remove them in the killed process) are counted;
the next write to the same output removes them, which the last, uninterrupted run checks.

    python bench/bench_kill_writes.py [--kills 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.io import load_sequence  # noqa: E402
from backend.io.gltf import save_morph_gltf  # noqa: E402
from backend.rigging.result import RigResult  # noqa: E402
from backend.sequence import MeshSequence  # noqa: E402
from tests.test_server import wave_sequence, write_untrained_checkpoints  # noqa: E402

FAST = {"frames_for_report": 3, "skin_frames": 3, "refine_iters": 2, "device": "cpu"}
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def temp_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if ".sprig-" in name or name.endswith(".part")]


@dataclass
class Tally:
    """Counts over the trials of one target (``sprig rig`` or the server)."""

    kills: int = 0
    kills_while_temp_present: int = 0
    finished_before_kill: int = 0
    outputs_old: int = 0
    outputs_new_complete: int = 0
    outputs_missing_before_first_write: int = 0
    bad_outputs: list[str] = field(default_factory=list)
    inputs_changed: int = 0
    temps_left_after_kill: int = 0

    def line(self, name: str) -> str:
        return (f"{name}: {self.kills} kills ({self.kills_while_temp_present} with a temporary file being written, "
                f"{self.finished_before_kill} runs finished first); outputs afterwards: {self.outputs_old} earlier file "
                f"intact, {self.outputs_new_complete} complete new file, {len(self.bad_outputs)} half-written or corrupt; "
                f"inputs changed: {self.inputs_changed}; temporary files left by SIGKILL: {self.temps_left_after_kill}")


def _kill_when_writing(proc: subprocess.Popen, folder: Path, rng: random.Random, mode: str,
                       full_run_s: float, last_output: Path) -> tuple[bool, bool]:
    """SIGKILL ``proc`` (see the module doc) unless it exits or replaces ``last_output`` (its last write) first.

    Returns (killed, a temporary file of this run existed at the kill).
    """
    earlier = set(temp_files(folder))  # left by an earlier SIGKILL; this run removes them when it writes
    old_stat = os.stat(last_output)
    deadline = time.monotonic() + (rng.uniform(0.0, full_run_s) if mode == "random" else 60.0 + 10 * full_run_s)
    while proc.poll() is None:
        try:
            now = os.stat(last_output)
            if (now.st_ino, now.st_mtime_ns, now.st_size) != (old_stat.st_ino, old_stat.st_mtime_ns, old_stat.st_size):
                return False, False  # the run wrote its last output before a kill landed
        except FileNotFoundError:
            pass
        time.sleep(0.0002)  # poll without taking a whole core from the process under test
        seen = bool(set(temp_files(folder)) - earlier)
        if (mode == "write" and seen) or time.monotonic() >= deadline:
            if seen:
                time.sleep(rng.uniform(0.0, 0.003))
            seen = seen or bool(set(temp_files(folder)) - earlier)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return False, seen
            proc.wait()
            return True, seen
    return False, False


def check_glb(path: Path, n_frames: int) -> bool:
    try:
        return load_sequence(path, fps=30.0).n_frames == n_frames
    except Exception:  # noqa: BLE001 - any read failure means a broken file
        return False


def check_json(path: Path) -> bool:
    try:
        return "joints" in json.loads(path.read_text())
    except Exception:  # noqa: BLE001
        return False


def check_result(path: Path, n_frames: int) -> bool:
    try:
        return RigResult.load(path).n_frames == n_frames
    except Exception:  # noqa: BLE001
        return False


@dataclass
class Setup:
    folder: Path
    checkpoints: Path
    input: Path
    n_frames: int
    old_glb: bytes
    old_json: bytes
    old_result: bytes


def make_setup(folder: Path, n_frames: int = 12) -> Setup:
    """Checkpoints, an input .npz and the 'earlier results' each trial starts from."""
    checkpoints = write_untrained_checkpoints(folder / "checkpoints")
    verts, faces = wave_sequence(n_frames, rings=20, segments=20)
    src = folder / "input.npz"
    np.savez(src, verts=verts, faces=faces)
    scratch = folder / "scratch"
    scratch.mkdir()
    old_glb = save_morph_gltf(MeshSequence(verts, faces, fps=30.0, name="earlier"), scratch / "old.glb").read_bytes()
    old_json = json.dumps({"earlier": True, "joints": 1}).encode()
    old_result = b"an earlier result file (not an npz, so it can never pass for a new one)"
    return Setup(folder, checkpoints, src, n_frames, old_glb, old_json, old_result)


def _judge(tally: Tally, path: Path, old: bytes, complete) -> None:
    if not path.exists():
        tally.bad_outputs.append(f"{path.name} missing")
    elif path.read_bytes() == old:
        tally.outputs_old += 1
    elif complete(path):
        tally.outputs_new_complete += 1
    else:
        tally.bad_outputs.append(f"{path.name}: {path.stat().st_size} bytes, neither the earlier file nor complete")


def cli_trials(setup: Setup, kills: int, rng: random.Random, progress: bool = True) -> tuple[Tally, float]:
    """SIGKILL ``sprig rig IN -o out.glb --json out.json`` ``kills`` times; returns the tally and a full run's seconds."""
    out = setup.folder / "cli"
    out.mkdir(exist_ok=True)
    glb, summary = out / "out.glb", out / "out.json"
    command = [sys.executable, "-m", "backend.app.cli", "rig", str(setup.input), "-o", str(glb), "--json", str(summary),
               "--checkpoints", str(setup.checkpoints), "--device", "cpu", "-q"]
    input_hash = sha256(setup.input)
    start = time.monotonic()
    subprocess.run(command, env=ENV, cwd=ROOT, check=True, capture_output=True)
    full_run_s = time.monotonic() - start
    tally = Tally()
    bar = tqdm(total=kills, desc="sprig rig kills", disable=not progress)
    for trial in range(3 * kills):  # until `kills` kills landed (a random moment may fall after the run's end)
        if tally.kills >= kills:
            break
        glb.write_bytes(setup.old_glb)
        before = set(temp_files(out))
        summary.write_bytes(setup.old_json)
        proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed, during = _kill_when_writing(proc, out, rng, "write" if trial % 2 == 0 else "random", full_run_s,
                                            last_output=summary)
        proc.wait()
        tally.kills += killed
        bar.update(int(killed))
        tally.kills_while_temp_present += killed and during
        tally.finished_before_kill += not killed
        tally.temps_left_after_kill += len(set(temp_files(out)) - before)
        _judge(tally, glb, setup.old_glb, lambda p: check_glb(p, setup.n_frames))
        _judge(tally, summary, setup.old_json, check_json)
        tally.inputs_changed += sha256(setup.input) != input_hash
    bar.close()
    return tally, full_run_s


def _start_server(setup: Setup) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "backend.app.server", "--checkpoints", str(setup.checkpoints)],
                            env=ENV, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    ready = json.loads(proc.stdout.readline())
    assert ready["type"] == "ready", ready
    return proc


def _rig_request(proc: subprocess.Popen, setup: Setup, output: Path) -> None:
    proc.stdin.write(json.dumps({"id": 1, "method": "rig", "params": {"input": str(setup.input),
                                                                      "output": str(output), "options": FAST}}) + "\n")
    proc.stdin.flush()


def server_trials(setup: Setup, kills: int, rng: random.Random, progress: bool = True) -> tuple[Tally, float]:
    """SIGKILL the server ``kills`` times while it rigs onto an existing result; returns the tally and a rig's seconds."""
    out = setup.folder / "server"
    out.mkdir(exist_ok=True)
    result = out / "result.npz"
    input_hash = sha256(setup.input)
    proc = _start_server(setup)
    start = time.monotonic()
    _rig_request(proc, setup, result)
    while json.loads(proc.stdout.readline()).get("type") not in ("result", "error"):
        pass
    rig_s = time.monotonic() - start
    proc.kill()
    proc.wait()
    tally = Tally()
    bar = tqdm(total=kills, desc="server kills", disable=not progress)
    for trial in range(3 * kills):  # until `kills` kills landed
        if tally.kills >= kills:
            break
        result.write_bytes(setup.old_result)
        before = set(temp_files(out))
        proc = _start_server(setup)
        _rig_request(proc, setup, result)
        killed, during = _kill_when_writing(proc, out, rng, "write" if trial % 2 == 0 else "random", rig_s,
                                            last_output=result)
        if not killed:  # the rig finished; the server still runs
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except BrokenPipeError:
                pass
        tally.kills += killed
        bar.update(int(killed))
        tally.kills_while_temp_present += killed and during
        tally.finished_before_kill += not killed
        tally.temps_left_after_kill += len(set(temp_files(out)) - before)
        _judge(tally, result, setup.old_result, lambda p: check_result(p, setup.n_frames))
        tally.inputs_changed += sha256(setup.input) != input_hash
    bar.close()
    return tally, rig_s


def leftover_after_clean_run(setup: Setup) -> tuple[list[str], list[str]]:
    """Run each target once without a kill; returns the temporary files left in (cli, server) folders."""
    subprocess.run([sys.executable, "-m", "backend.app.cli", "rig", str(setup.input), "-o", str(setup.folder / "cli" / "out.glb"),
                    "--json", str(setup.folder / "cli" / "out.json"), "--checkpoints", str(setup.checkpoints),
                    "--device", "cpu", "-q"], env=ENV, cwd=ROOT, check=True, capture_output=True)
    proc = _start_server(setup)
    _rig_request(proc, setup, setup.folder / "server" / "result.npz")
    while json.loads(proc.stdout.readline()).get("type") not in ("result", "error"):
        pass
    proc.stdin.close()
    proc.wait(60)
    proc.stdout.close()
    return temp_files(setup.folder / "cli"), temp_files(setup.folder / "server")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs per target (sprig rig, server)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_kill_writes_") as tmp:
        setup = make_setup(Path(tmp))
        cli, cli_s = cli_trials(setup, args.kills, rng)
        server, server_s = server_trials(setup, args.kills, rng)
        left_cli, left_server = leftover_after_clean_run(setup)
    print(f"full run: sprig rig {cli_s:.1f} s, server rig {server_s:.1f} s")
    print(cli.line("sprig rig"))
    print(server.line("server"))
    print(f"temporary files left after one more uninterrupted run: sprig rig {len(left_cli)}, "
          f"server {len(left_server)} {left_cli + left_server}")
    for problem in cli.bad_outputs + server.bad_outputs:
        print("  BAD:", problem)
    ok = not (cli.bad_outputs or server.bad_outputs or cli.inputs_changed or server.inputs_changed
              or left_cli or left_server)
    print("all outputs whole, all inputs unchanged" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
