"""Issue #18, the server half: one hostile line never stops the server; outputs follow the output-path policy.

A real ``python -m backend.app.server`` process is driven with raw bytes (what no client would send)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backend.app.server import Server, ServerConfig
from backend.rigging.result import RigResult
from tests.hostile_lines import KINDS, hostile_lines
from tests.test_server import FAST, wave_sequence

ROOT = Path(__file__).resolve().parent.parent
ERROR_CODES = {"bad_json", "bad_request", "unknown_method", "invalid_params", "file_not_found", "bad_file",
               "invalid_sequence", "busy", "cancelled", "rigger_unavailable", "models_unavailable", "rig_failed"}


class ByteServer:
    """The server process, fed raw bytes; replies are read one JSON line at a time."""

    def __init__(self, checkpoints: Path, workdir: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.app.server", "--heartbeat", "0.5",
                                      "--checkpoints", str(checkpoints), "--workdir", str(workdir)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.ready = self.read()

    def send(self, line: bytes) -> None:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60.0) -> dict:
        """The next reply that is not a heartbeat or progress message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.proc.stdout.readline()
            assert raw, f"the server closed its output (exit status {self.proc.wait(10)})"
            message = json.loads(raw)
            if message.get("type") not in ("heartbeat", "progress"):
                return message
        raise AssertionError("no reply in time")

    def ask(self, line: bytes | str | dict) -> dict:
        if isinstance(line, dict):
            line = json.dumps(line)
        self.send(line.encode() if isinstance(line, str) else line)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def server(tmp_path, checkpoints):
    s = ByteServer(checkpoints, tmp_path / "work")
    yield s
    s.close()


@pytest.fixture
def npz_input(tmp_path) -> Path:
    verts, faces = wave_sequence(4)
    path = tmp_path / "in.npz"
    np.savez(path, verts=verts, faces=faces)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_alive(server: ByteServer) -> None:
    reply = server.ask({"id": "alive", "method": "ping"})
    assert reply["type"] == "result" and reply["result"]["pong"] is True


# -- lines that used to end the process ---------------------------------------------------------


@pytest.mark.parametrize("line, code, words", [
    (b"[" * 1000 + b"]" * 1000, "bad_json", "nested too deeply"),
    (b"[" * 100000 + b"]" * 100000, "bad_json", "nested too deeply"),  # the line that ended the server in the fuzz
    (b'{"a":' * 100000 + b"1" + b"}" * 100000, "bad_json", "nested too deeply"),
    (b'{"id":1,"method":"cancel","params":{"id":NaN}}', "bad_json", "NaN is not allowed"),
    (b'{"id":1,"method":"cancel","params":{"id":Infinity}}', "bad_json", "Infinity is not allowed"),
    (b'{"id":1,"method":"cancel","params":{"id":-Infinity}}', "bad_json", "-Infinity is not allowed"),
    (b'{"id":1,"method":"cancel","params":{"id":1e999}}', "bad_json", "must be finite"),
    (b'{"id":' + b"9" * 5000 + b',"method":"ping"}', "bad_json", "too long"),
    (b'{"id":1,"method":"cancel","params":{"id":[1]}}', "invalid_params", "cancel's 'id'"),
    (b'{"id":1,"method":"rig","params":{"input":"in\xff.npz"}}', "bad_json", "not valid UTF-8"),
    (b"\xc3", "bad_json", "not valid UTF-8"),
    (b"42", "bad_request", "must be a JSON object"),
    (b'"ping"', "bad_request", "must be a JSON object"),
    (b'{"id":1,"method":"ping","params":{"pad":"' + b"a" * (1 << 21) + b'"}}', "bad_request", "line too long"),
])
def test_a_hostile_line_gets_a_structured_error_and_the_server_lives(server, line, code, words):
    reply = server.ask(line)
    assert reply["type"] == "error" and reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"], reply
    assert_alive(server)


@pytest.mark.parametrize("options, words", [({"n_points": 1e300}, "'n_points' is out of range"),
                                            ({"seed": 2**70}, "'seed' is out of range"),
                                            ({"seed": -(2**40)}, "'seed' is out of range"),
                                            ({"max_joints": 1e20}, "'max_joints' is out of range")])
def test_huge_option_values_are_invalid_params(server, npz_input, tmp_path, options, words):
    reply = server.ask({"id": 3, "method": "rig", "params": {"input": str(npz_input), "output": str(tmp_path / "o.npz"),
                                                             "options": options}})
    assert reply["error"]["code"] == "invalid_params" and words in reply["error"]["message"], reply
    assert not (tmp_path / "o.npz").exists()


# -- hostile input files: read by the project's npz reader (limits, no FIFO) -----------------------


def _zip_bomb_npz(path: Path, n_bytes: int) -> Path:
    """An npz whose ``verts`` member declares [4, V, 3] float32 and inflates to ``n_bytes`` of zeros."""
    n_verts = n_bytes // (4 * 3 * 4)
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (4, n_verts, 3)}).encode("latin1")
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("verts.npy", "w", force_zip64=True) as fh:
            fh.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
            chunk = bytes(1 << 20)
            for start in range(0, 4 * n_verts * 3 * 4, len(chunk)):
                fh.write(chunk[:min(len(chunk), 4 * n_verts * 3 * 4 - start)])
        zf.writestr("faces.npy", b"")
    return path


def test_hostile_input_files_are_refused_by_the_loader_limits(server, tmp_path):
    """The server's ``rig`` reads its input with the project's npz reader: a zip bomb, a header declaring
    more data than the member holds, a FIFO (which would block ``np.load`` forever) and out-of-range
    coordinates are each refused at once, and the server keeps answering."""
    verts, faces = wave_sequence(4)
    bomb = _zip_bomb_npz(tmp_path / "bomb.npz", 600 << 20)  # 600 MB of zeros in a ~600 KB file
    lying = tmp_path / "lying.npz"
    np.savez(lying, verts=verts, faces=faces)
    with zipfile.ZipFile(lying) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["verts.npy"] = members["verts.npy"].replace(b"'shape': (4, ", b"'shape': (9, ", 1)  # more frames than held
    with zipfile.ZipFile(lying, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.npz"
    np.savez(huge, verts=verts * np.float32(1e30), faces=faces)
    cases = [(bomb, "bad_file", "above the limit"), (lying, "bad_file", "declares shape"),
             (fifo, "bad_file", "not a regular file"), (huge, "invalid_sequence", "")]
    for path, code, words in cases:
        start = time.monotonic()
        reply = server.ask({"id": 4, "method": "rig", "params": {"input": str(path), "output": str(tmp_path / "o.npz")}})
        assert reply["type"] == "error" and reply["error"]["code"] == code, (path.name, reply)
        assert words in reply["error"]["message"] and str(path) in reply["error"]["message"], reply
        assert time.monotonic() - start < 10
    assert not (tmp_path / "o.npz").exists()
    assert_alive(server)


# -- outputs ------------------------------------------------------------------------------------


def test_output_equal_to_input_is_refused_and_the_input_kept(server, npz_input, tmp_path):
    before = digest(npz_input)
    (tmp_path / "link.npz").symlink_to(npz_input)
    os.link(npz_input, tmp_path / "hard.npz")
    for output in (npz_input, tmp_path / "link.npz", tmp_path / "hard.npz", tmp_path / "x" / ".." / "in.npz"):
        if not output.parent.exists():
            (tmp_path / "x").mkdir()
        reply = server.ask({"id": 1, "method": "rig", "params": {"input": str(npz_input), "output": str(output)}})
        assert reply["error"]["code"] == "invalid_params" and "is the input" in reply["error"]["message"], reply
    time.sleep(0.2)
    assert digest(npz_input) == before
    assert_alive(server)


def test_outputs_that_are_folders_devices_or_unwritable_are_refused_before_the_rig(server, npz_input, tmp_path):
    (tmp_path / "dir").mkdir()
    cases = [(tmp_path / "dir", "existing folder"), ("/proc/result.npz", "not writable")]
    if Path("/dev/full").exists():
        cases.append(("/dev/full", "not a regular file"))
    for output, words in cases:
        start = time.monotonic()
        reply = server.ask({"id": 2, "method": "rig", "params": {"input": str(npz_input), "output": str(output)}})
        assert reply["error"]["code"] == "invalid_params" and words in reply["error"]["message"], reply
        assert time.monotonic() - start < 5
    assert not (tmp_path / "dir.npz").exists() and not Path("/proc/result.npz").exists()
    assert_alive(server)


def test_the_reply_names_the_file_written_exactly(server, npz_input, tmp_path):
    output = tmp_path / "result.bin"  # np.savez(path) would have written result.bin.npz
    reply = server.ask({"id": 5, "method": "rig", "params": {"input": str(npz_input), "output": str(output),
                                                             "options": FAST}})
    assert reply["type"] == "result", reply
    assert reply["result"]["output"] == str(output.resolve())
    assert output.is_file() and not (tmp_path / "result.bin.npz").exists()
    assert RigResult.load(output).n_frames == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "result.bin"]  # no temporary file left


class ProbeServer(Server):
    """The real in-process server, noting whether it is still busy when each final rig reply goes out."""

    def __init__(self, config: ServerConfig):
        super().__init__(config, io.StringIO(), io.StringIO())
        self.busy_at_reply: list[bool] = []

    def send(self, message: dict) -> None:
        if message.get("type") in ("result", "error") and message.get("id") == "r":
            self.busy_at_reply.append(self._busy())
        super().send(message)


def test_the_server_is_free_when_a_failed_rig_is_answered(tmp_path, npz_input):
    """After a rig fails in the worker, its error reply goes out only once the next rig can start."""
    server = ProbeServer(ServerConfig(checkpoints=tmp_path / "no_checkpoints", workdir=tmp_path / "work"))
    for n in range(1, 4):
        server.handle_line(json.dumps({"id": "r", "method": "rig", "params": {"input": str(npz_input)}}))
        deadline = time.monotonic() + 60
        while len(server.busy_at_reply) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    replies = [json.loads(line) for line in server.stdout.getvalue().splitlines()]
    assert [r["error"]["code"] for r in replies if r.get("type") == "error"] == ["models_unavailable"] * 3
    assert server.busy_at_reply == [False, False, False]


def test_after_an_error_reply_the_server_is_ready_at_once(tmp_path, npz_input):
    """A rig that fails in the worker (no checkpoints) frees the server before its error reply is sent."""
    server = ByteServer(tmp_path / "no_checkpoints", tmp_path / "work")
    try:
        codes = []
        for i in range(20):
            reply = server.ask({"id": i, "method": "rig", "params": {"input": str(npz_input),
                                                                     "output": str(tmp_path / "o.npz")}})
            codes.append(reply["error"]["code"])
        assert codes == ["models_unavailable"] * 20
    finally:
        server.close()


# -- a thousand hostile lines to one process ----------------------------------------------------


def test_a_thousand_hostile_lines_then_ping(tmp_path, npz_input, checkpoints):
    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "in_link.npz").symlink_to(npz_input)
    os.link(npz_input, folder / "in_hard.npz")
    (folder / "not_npz.txt").write_text("not an npz")
    before = digest(npz_input)
    lines = hostile_lines(1000, seed=18, npz_input=npz_input, folder=folder)
    assert {kind for kind, _ in lines} == set(KINDS)
    # No checkpoints: a line that happens to be a valid rig request fails fast in the worker.
    server = ByteServer(tmp_path / "no_checkpoints", tmp_path / "work")
    codes: dict[str, int] = {}
    try:
        for kind, line in lines:
            reply = server.ask(line)
            assert reply.get("type") in ("error", "result"), (kind, line[:200], reply)
            if reply["type"] == "error":
                assert reply["error"]["code"] in ERROR_CODES, (kind, line[:200], reply)
                codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
        assert_alive(server)
        assert server.proc.poll() is None
    finally:
        server.close()
    assert digest(npz_input) == before
    assert codes.get("bad_json", 0) > 100 and codes.get("invalid_params", 0) > 100, codes
