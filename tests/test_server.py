"""The subprocess backend: protocol, structured errors, cancel, and crash/hang handling in the client."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.app.client import (BackendCancelled, BackendClient, BackendCrashed, BackendError, BackendHung,
                            BackendStartError)
from backend.rigging.result import RigResult

ROOT = Path(__file__).resolve().parent.parent
HAS_RIGGER = importlib.util.find_spec("backend.rigging.pipeline") is not None
needs_rigger = pytest.mark.skipif(not HAS_RIGGER, reason="rigger not available")


def write_untrained_checkpoints(folder: Path, seed: int = 1) -> Path:
    """Tiny, randomly initialised (untrained) SPRig checkpoints in ``folder``.

    They let the real pipeline run end to end in a test (skeleton decoding, skinning, motion fit,
    report) in seconds. They check the plumbing, not rig quality: the skeletons are arbitrary valid
    trees (seed 1 gives 17-22 joints on the realdata fox).
    """
    import torch

    from backend.models.checkpoint import save_model
    from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
    from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    skeleton = SkeletonGenerator(SkeletonGeneratorConfig(d_model=48, n_heads=4, n_latents=8, n_enc_layers=1,
                                                         n_dec_layers=2, n_freq=4, mlp_ratio=2, max_joints=24))
    skinning = SkinningNetwork(SkinningNetworkConfig(d_model=32, n_heads=4, n_latents=8, n_shape_layers=1,
                                                     n_joint_layers=1, n_point_layers=1, n_freq=4, mlp_ratio=2))
    provenance = {"note": "untrained, randomly initialised: test fixture"}
    save_model(skeleton, folder / "skeleton_sprig.safetensors", stage="untrained", provenance=provenance)
    save_model(skinning, folder / "skinning_sprig.safetensors", stage="untrained", provenance=provenance)
    return folder


# -- helpers ------------------------------------------------------------------------------------


class RawServer:
    """``python -m backend.app.server`` driven line by line (to send what a client never would)."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.app.server", "--heartbeat", "0.5"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.ready = self.read()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            assert line, "server closed its output"
            message = json.loads(line)
            if message.get("type") not in ("heartbeat", "progress"):
                return message

    def ask(self, line: str) -> dict:
        self.send(line)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


@pytest.fixture(scope="module")
def raw():
    server = RawServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    if not HAS_RIGGER:
        pytest.skip("rigger not available")
    return write_untrained_checkpoints(tmp_path_factory.mktemp("checkpoints"))


# Fewer report/skinning frames and refinement steps than the defaults: keeps each rig around a second.
FAST = {"frames_for_report": 3, "skin_frames": 3, "refine_iters": 2, "device": "cpu"}


@pytest.fixture
def client(request):
    folder = request.getfixturevalue("checkpoints") if HAS_RIGGER else None
    with BackendClient(sys.executable, backend_path=str(ROOT), hang_timeout_s=30.0, heartbeat_s=0.5,
                       checkpoints=str(folder) if folder else None, env={"OMP_NUM_THREADS": "1"}) as c:
        yield c


def wave_sequence(n_frames: int = 6, rings: int = 6, segments: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A closed tube (``verts [K, V, 3]``, ``faces [F, 3]``) bending more on each frame."""
    rng = np.random.default_rng(seed)
    z = np.linspace(0.0, 1.0, rings)
    angle = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([0.1 * np.cos(angle), 0.1 * np.sin(angle)], axis=1)
    rest = np.concatenate([np.column_stack([ring, np.full(segments, zi)]) for zi in z])
    rest = np.vstack([rest, [[0, 0, 0], [0, 0, 1]]])
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            faces += [[a, b, b + segments], [a, b + segments, a + segments]]
    bottom, top = len(rest) - 2, len(rest) - 1
    for s in range(segments):
        faces += [[bottom, (s + 1) % segments, s], [top, (rings - 1) * segments + s, (rings - 1) * segments + (s + 1) % segments]]
    frames = []
    for k in range(n_frames):
        bend = 0.6 * k / max(n_frames - 1, 1)
        theta = bend * rest[:, 2]
        x = rest[:, 0] * np.cos(theta) + rest[:, 2] * np.sin(theta)
        zz = -rest[:, 0] * np.sin(theta) + rest[:, 2] * np.cos(theta)
        frames.append(np.column_stack([x, rest[:, 1], zz]))
    verts = np.stack(frames).astype(np.float32) + rng.normal(0, 1e-4, (n_frames, len(rest), 3)).astype(np.float32)
    return verts, np.asarray(faces, dtype=np.int32)


def save_input(path: Path, verts, faces, **extra) -> Path:
    np.savez(path, verts=verts, faces=faces, **extra)
    return path


# -- protocol and structured errors -------------------------------------------------------------


def test_ready_ping_and_info(raw):
    assert raw.ready["type"] == "ready" and raw.ready["pid"] == raw.proc.pid
    reply = raw.ask('{"id": 1, "method": "ping"}')
    assert reply == {"id": 1, "type": "result", "result": reply["result"]} and reply["result"]["pong"] is True
    info = raw.ask('{"id": "i", "method": "info"}')["result"]
    import torch

    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["device"] in ("cpu", "cuda", "mps") and isinstance(info["checkpoints"], list)
    assert info["rigger"] is HAS_RIGGER
    if HAS_RIGGER:  # which checkpoint files the default models need, and which of them are missing
        check = info["checkpoint_check"]
        assert check["models"] == "sprig"
        assert check["needed"] == ["skeleton_sprig.safetensors", "skinning_sprig.safetensors"]
        present = {c["name"] for c in info["checkpoints"]}
        assert check["missing"] == [n for n in check["needed"] if n not in present]


def test_checkpoint_check_names_missing_files(tmp_path):
    from backend.app.server import checkpoint_check

    (tmp_path / "skeleton_base.safetensors").write_bytes(b"")
    (tmp_path / "skinning_sprig.safetensors").write_bytes(b"")
    assert checkpoint_check(tmp_path, "sprig")["missing"] == ["skeleton_sprig.safetensors"]
    assert checkpoint_check(tmp_path, "base")["missing"] == ["skinning_base.safetensors"]
    auto = checkpoint_check(tmp_path, "auto")  # per model: SPRig when present, else base
    assert auto["needed"] == ["skeleton_base.safetensors", "skinning_sprig.safetensors"] and auto["missing"] == []
    assert checkpoint_check(None, "sprig")["missing"] == ["skeleton_sprig.safetensors", "skinning_sprig.safetensors"]


@pytest.mark.parametrize("line, code, words", [
    ("this is not json", "bad_json", "not valid JSON"),
    ('{"id": 1, "method": "ping"', "bad_json", "not valid JSON"),
    ("[1, 2, 3]", "bad_request", "JSON object"),
    ('{"id": 2}', "bad_request", "'method'"),
    ('{"id": 3, "method": 5}', "bad_request", "'method'"),
    ('{"id": [1], "method": "ping"}', "bad_request", "'id'"),
    ('{"id": 4, "method": "ping", "params": [1]}', "bad_request", "'params'"),
    ('{"id": 5, "method": "fly"}', "unknown_method", "unknown method 'fly'"),
    ('{"id": 6, "method": "rig", "params": {}}', "invalid_params", "'input'"),
    ('{"id": 7, "method": "rig", "params": {"input": "/no/such/file.npz"}}', "file_not_found", "/no/such/file.npz"),
    ('{"id": 8, "method": "rig", "params": {"input": "x.npz", "speed": 1}}', "invalid_params", "speed"),
    ('{"id": 9, "method": "rig", "params": {"input": "x.npz", "options": 3}}', "invalid_params", "'options'"),
])
def test_bad_requests_get_structured_errors(raw, line, code, words):
    reply = raw.ask(line)
    assert reply["type"] == "error", reply
    assert reply["error"]["code"] == code and words in reply["error"]["message"], reply
    assert raw.ask('{"id": "alive", "method": "ping"}')["result"]["pong"] is True  # still serving


def test_bad_input_files_get_structured_errors(raw, tmp_path):
    verts, faces = wave_sequence(3)
    cases = {
        "not_npz.npz": (None, "bad_file", "not a readable .npz"),
        "no_faces.npz": ({"verts": verts}, "bad_file", "missing array(s) faces"),
        "nan.npz": ({"verts": np.where(np.arange(verts.size).reshape(verts.shape) == 7, np.nan, verts), "faces": faces},
                    "invalid_sequence", "NaN"),
        "index.npz": ({"verts": verts, "faces": faces + 1000}, "invalid_sequence", "face index out of range"),
        "tiny.npz": ({"verts": verts[:, :3], "faces": faces[:1] % 3}, "invalid_sequence", "at least 4 vertices"),
        "flat.npz": ({"verts": np.zeros_like(verts), "faces": faces}, "invalid_sequence", "degenerate scale"),
        "pickle.npz": ({"verts": np.array([{"a": 1}], dtype=object), "faces": faces}, "bad_file", "not a readable"),
    }
    for name, (arrays, code, words) in cases.items():
        path = tmp_path / name
        if arrays is None:
            path.write_bytes(b"definitely not a zip archive")
        else:
            np.savez(path, **arrays)
        reply = raw.ask(json.dumps({"id": name, "method": "rig", "params": {"input": str(path)}}))
        assert reply["type"] == "error" and reply["id"] == name, reply
        assert reply["error"]["code"] == code and words in reply["error"]["message"], (name, reply)
    missing_dir = json.dumps({"id": "out", "method": "rig",
                              "params": {"input": str(tmp_path / "index.npz"), "output": "/no/such/dir/r.npz"}})
    assert raw.ask(missing_dir)["error"]["code"] == "file_not_found"


def test_cancel_without_a_running_rig_is_a_no_op(raw):
    reply = raw.ask('{"id": 11, "method": "cancel"}')
    assert reply["result"] == {"cancelled": False, "id": None}


def test_shutdown_and_end_of_input_stop_the_server():
    server = RawServer()
    assert server.ask('{"id": 1, "method": "shutdown"}')["result"] == {"shutdown": True}
    assert server.proc.wait(10) == 0
    server.close()
    server = RawServer()
    server.proc.stdin.close()  # the client went away
    assert server.proc.wait(10) == 0
    server.proc.stdout.close()


# -- client -------------------------------------------------------------------------------------


def test_client_ping_info_and_structured_error(client, tmp_path):
    assert client.ping()["pong"] is True
    assert client.info()["backend_version"] == client.server_info["version"]
    with pytest.raises(BackendError) as err:
        client.rig_file(tmp_path / "missing.npz")
    assert err.value.code == "file_not_found" and "missing.npz" in str(err.value)
    with pytest.raises(BackendError) as err:
        client.request("teleport")
    assert err.value.code == "unknown_method"
    assert client.ping()["pong"] is True


def test_client_missing_python_is_a_clear_start_error():
    with pytest.raises(BackendStartError, match="backend Python executable not found: '/no/such/python'"):
        BackendClient("/no/such/python").start()


def test_client_reports_a_backend_that_cannot_start(tmp_path):
    # An "interpreter" that fails the way a Python without the backend installed does.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'backend'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    client = BackendClient(str(fake), start_timeout_s=30)
    with pytest.raises(BackendStartError) as err:
        client.start()
    assert "exited at start (exit status 1)" in str(err.value) and "No module named 'backend'" in str(err.value)
    assert str(err.value).startswith(f"the backend Python {str(fake)!r} cannot import the backend's own code")
    client.close()
    # a system Python without numpy: the message says which package and what to choose instead
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                    "echo \"ModuleNotFoundError: No module named 'numpy.core'\" >&2\nexit 1\n")
    client = BackendClient(str(fake), start_timeout_s=30)
    with pytest.raises(BackendStartError) as err:
        client.start()
    assert "cannot import the package 'numpy': choose the Python of an environment" in str(err.value)
    client.close()
    not_executable = tmp_path / "python3"
    not_executable.write_text("")
    with pytest.raises(BackendStartError, match="not executable"):
        BackendClient(str(not_executable)).start()


def test_client_killed_mid_request_raises_crashed(client):
    """Stop the server, send a request, kill it while the request waits: a readable BackendCrashed."""
    os.kill(client.process.pid, signal.SIGSTOP)
    killer = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep(0.5); "
                               f"os.kill({client.process.pid}, signal.SIGKILL)"])
    with pytest.raises(BackendCrashed) as err:
        client.ping(timeout=20)
    killer.wait(10)
    assert err.value.code == "crashed" and "killed by SIGKILL" in str(err.value)
    with pytest.raises(BackendCrashed, match="not running"):
        client.ping()


def test_client_detects_a_hung_server():
    with BackendClient(sys.executable, backend_path=str(ROOT), hang_timeout_s=1.0) as client:
        os.kill(client.process.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(BackendHung, match="silent for 1 s"):
            client.ping(timeout=30)
        assert time.monotonic() - start < 5
        os.kill(client.process.pid, signal.SIGKILL)


# -- rigging through the server -----------------------------------------------------------------


@needs_rigger
def test_rig_roundtrip_progress_and_busy(client, tmp_path):
    verts, faces = wave_sequence(6)
    stages: list[tuple[str, float]] = []
    result = client.rig(verts, faces, options=FAST, fps=24, name="tube",
                        on_progress=lambda s, f: stages.append((s, f)))
    assert isinstance(result, RigResult)
    assert result.anchor_verts.shape == verts[0].shape and result.bone_transforms.shape[0] == len(verts)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-4)
    assert stages and all(0.0 <= f <= 1.0 for _, f in stages) and stages[-2:] == [("done", 1.0),
                                                                               ("writing the result", 1.0)]
    assert stages[:2] == [("reading frames", 0.0), ("checking frames", 0.0)]  # the input, before the rig starts
    assert [f for _, f in stages] == sorted(f for _, f in stages)  # overall progress never goes back
    assert {"skeleton_sprig.safetensors", "skinning_sprig.safetensors"} <= {c["name"] for c in client.info()["checkpoints"]}
    # a second request while one runs is refused with "busy"; the first still finishes
    path = save_input(tmp_path / "in.npz", verts, faces)
    client._send({"id": "first", "method": "rig",
                  "params": {"input": str(path), "output": str(tmp_path / "a.npz"), "options": FAST}})
    with pytest.raises(BackendError) as err:
        client.rig_file(path, tmp_path / "b.npz", options=FAST)
    assert err.value.code == "busy"
    deadline = time.monotonic() + 120
    while not (tmp_path / "a.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "a.npz").exists()
    assert client.ping()["pong"] is True


@needs_rigger
def test_rig_rejects_bad_options(client, tmp_path):
    verts, faces = wave_sequence(3)
    for options, words in (({"wings": 2}, "unknown rig option(s) wings"),
                           ({"max_influences": "four"}, "'max_influences' must be an integer"),
                           ({"max_influences": 0}, "max_influences must be >= 1"),
                           ({"refine": 1}, "'refine' must be true or false")):
        with pytest.raises(BackendError) as err:
            client.rig(verts, faces, options=options)
        assert err.value.code == "invalid_params" and words in str(err.value), err.value
    assert client.ping()["busy"] is False


@needs_rigger
def test_missing_checkpoints_are_a_structured_error(tmp_path):
    verts, faces = wave_sequence(3)
    with BackendClient(sys.executable, backend_path=str(ROOT), checkpoints=str(tmp_path)) as client:
        with pytest.raises(BackendError) as err:
            client.rig(verts, faces)
        assert err.value.code == "models_unavailable" and "skeleton_sprig.safetensors" in str(err.value)
        info = client.info()
        assert info["checkpoint_dir"] == str(tmp_path) and info["checkpoints"] == []
        assert client.ping()["pong"] is True


@needs_rigger
def test_preloading_server_rigs_and_reports_missing_models_at_the_rig(checkpoints, tmp_path):
    verts, faces = wave_sequence(3)
    with BackendClient(sys.executable, backend_path=str(ROOT), checkpoints=str(checkpoints), preload=True) as client:
        assert "--preload" in client.process.args
        result = client.rig(verts, faces, options=FAST)
        assert result.bone_transforms.shape[0] == len(verts)
    # a preload that fails (no checkpoints) is only logged: the rig still gets the structured error
    with BackendClient(sys.executable, backend_path=str(ROOT), checkpoints=str(tmp_path), preload=True) as client:
        with pytest.raises(BackendError) as err:
            client.rig(verts, faces)
        assert err.value.code == "models_unavailable"
        assert client.ping()["pong"] is True


@needs_rigger
def test_cancel_a_running_rig(client):
    verts, faces = wave_sequence(24, rings=24, segments=24)
    import threading

    seen = threading.Event()

    def on_progress(stage, fraction):
        if not seen.is_set():
            seen.set()
            client.cancel()

    start = time.monotonic()
    with pytest.raises(BackendCancelled):
        client.rig(verts, faces, options=FAST, on_progress=on_progress)
    assert seen.is_set() and time.monotonic() - start < 60
    assert client.ping()["pong"] is True and client.ping()["busy"] is False


@needs_rigger
def test_rig_killed_mid_request(client):
    verts, faces = wave_sequence(24, rings=24, segments=24)

    def on_progress(stage, fraction):
        client.process.kill()

    with pytest.raises(BackendCrashed, match="killed by SIGKILL"):
        client.rig(verts, faces, options=FAST, on_progress=on_progress)
