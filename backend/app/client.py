"""Client for the subprocess backend (``python -m backend.app.server``).

Pure Python (standard library + numpy, no bpy, no torch), so the Blender add-on can use it inside
Blender's bundled Python; the extension build copies this file and ``rigging/result.py`` into the add-on.

Usage::

    with BackendClient("/path/to/venv/bin/python") as client:
        print(client.info()["torch"])
        result = client.rig(verts, faces, options={"max_influences": 4},
                            on_progress=lambda stage, fraction: print(stage, fraction))

A crash, kill or hang of the server becomes a :class:`BackendCrashed` / :class:`BackendHung` naming
what happened (exit status, signal, the last lines the server wrote to stderr).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..rigging.result import RigResult  # relative: the extension bundles a copy of both files

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]


class BackendError(RuntimeError):
    """The backend answered a request with an error, or could not be reached.

    Attributes:
        code: the server's error code (``invalid_sequence``, ``cancelled``, ...) or a client-side code
            (``not_started``, ``crashed``, ``hung``, ``start_failed``).
        message: a readable explanation.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class BackendStartError(BackendError):
    """The server process could not be started (missing Python, backend not importable, ...)."""


class BackendCrashed(BackendError):
    """The server process exited while a request was in flight."""


class BackendHung(BackendError):
    """The server sent nothing (not even a heartbeat) for longer than the client's hang timeout."""


class BackendCancelled(BackendError):
    """A rig request was cancelled."""


@dataclass
class ClientConfig:
    """How to start and talk to the server."""

    python: str  # Python executable that can import backend (and torch)
    backend_path: str | None = None  # folder holding the ``backend`` package, prepended to PYTHONPATH
    device: str = "auto"
    checkpoints: str | None = None  # checkpoint folder passed to the server
    start_timeout_s: float = 60.0  # time allowed for the server's "ready" line (imports numpy)
    hang_timeout_s: float = 30.0  # silence after which a running request counts as hung
    heartbeat_s: float = 2.0  # heartbeat period asked of the server (must be well below hang_timeout_s)
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables for the server
    preload: bool = False  # the server loads its models right after start (``--preload``)


class BackendClient:
    """Starts ``python -m backend.app.server`` and exchanges JSON lines with it.

    Thread-safety: one request at a time is awaited (:meth:`request` holds a lock), while :meth:`cancel`
    may be called from any thread during a :meth:`rig` call.
    """

    def __init__(self, python: str | ClientConfig, **kwargs: Any):
        self.config = python if isinstance(python, ClientConfig) else ClientConfig(python=python, **kwargs)
        self.process: subprocess.Popen | None = None
        self.server_info: dict = {}
        self._ids = itertools.count(1)
        self._messages: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._write_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._active_id: int | None = None
        self._tempdir: tempfile.TemporaryDirectory | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "BackendClient":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> dict:
        """Start the server and wait for its ``ready`` line. Returns that line.

        Raises:
            BackendStartError: the executable is missing, or the server exits / stays silent at start.
        """
        if self.running:
            return self.server_info
        python = self.config.python
        resolved = shutil.which(python) if python else None
        if not python or resolved is None and not Path(python).is_file():
            raise BackendStartError("start_failed", f"backend Python executable not found: {python!r} "
                                                    "(set it in the add-on preferences)")
        if not os.access(resolved or python, os.X_OK):
            raise BackendStartError("start_failed", f"backend Python executable is not executable: {python!r}")
        env = dict(os.environ)
        for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):  # Blender's own settings
            env.pop(key, None)
        if self.config.backend_path:
            env["PYTHONPATH"] = str(self.config.backend_path)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.config.env)
        cmd = [resolved or python, "-m", "backend.app.server", "--device", self.config.device,
               "--heartbeat", str(self.config.heartbeat_s)]
        if self.config.checkpoints:
            cmd += ["--checkpoints", str(self.config.checkpoints)]
        if self.config.preload:
            cmd.append("--preload")
        cwd = self.config.backend_path if self.config.backend_path and Path(self.config.backend_path).is_dir() else None
        try:
            self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            cwd=cwd, env=env, text=True, encoding="utf-8", errors="replace",
                                            bufsize=1)
        except OSError as exc:
            raise BackendStartError("start_failed", f"could not start the backend with {python!r}: {exc}") from exc
        self._messages = queue.Queue()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True, name="sprig-backend-stdout"),
                         threading.Thread(target=self._read_stderr, daemon=True, name="sprig-backend-stderr")]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise BackendStartError("start_failed", f"the backend did not start within {self.config.start_timeout_s:.0f} s"
                                        + self._stderr_hint())
            try:
                message = self._messages.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if message is None:  # stdout closed: the process died at start
                code = self._wait_exit(5.0)
                raise BackendStartError("start_failed", self._missing_module_hint(python)
                                        + f"the backend exited at start ({_describe_exit(code)})"
                                        + self._stderr_hint())
            if message.get("type") == "ready":
                self.server_info = message
                log.info("backend started: pid %s, version %s", message.get("pid"), message.get("version"))
                return message

    def close(self, timeout: float = 5.0) -> None:
        """Ask the server to shut down; kill it if it does not exit in ``timeout`` seconds."""
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    self._send({"id": next(self._ids), "method": "shutdown", "params": {}})
                    self.process.stdin.close()
                except (OSError, ValueError):
                    pass
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    if stream is not None:
                        stream.close()
                except (OSError, ValueError):
                    pass
            self.process = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    # -- requests ---------------------------------------------------------------------------

    def request(self, method: str, params: dict | None = None, on_progress: ProgressCallback | None = None,
                timeout: float | None = None) -> dict:
        """Send one request and wait for its result.

        Args:
            on_progress: called with ``(stage, fraction)`` for each progress message.
            timeout: overall limit in seconds (None: none; a silent server still counts as hung after
                ``hang_timeout_s``).
        Raises:
            BackendError: the server's structured error (``code``, ``message``); BackendCancelled for
                ``cancelled``; BackendCrashed / BackendHung when the process dies or goes silent.
        """
        if not self.running:
            if self.process is None:
                self.start()
            else:
                raise BackendCrashed("crashed", f"the backend is not running ({_describe_exit(self.process.poll())})"
                                     + self._stderr_hint())
        with self._request_lock:
            request_id = next(self._ids)
            self._active_id = request_id
            try:
                self._send({"id": request_id, "method": method, "params": params or {}})
                return self._await(request_id, on_progress, timeout)
            finally:
                self._active_id = None

    def ping(self, timeout: float = 10.0) -> dict:
        return self.request("ping", timeout=timeout)

    def info(self, timeout: float = 60.0) -> dict:
        """Versions, device and checkpoints of the backend (see ``backend.app.server.collect_info``)."""
        return self.request("info", timeout=timeout)

    def rig_file(self, input_path: str | Path, output_path: str | Path | None = None, options: dict | None = None,
                 on_progress: ProgressCallback | None = None, timeout: float | None = None) -> dict:
        """Rig the sequence stored in ``input_path``; returns the server's result (``output``, ``stats``)."""
        params: dict[str, Any] = {"input": str(input_path), "options": options or {}}
        if output_path is not None:
            params["output"] = str(output_path)
        return self.request("rig", params, on_progress=on_progress, timeout=timeout)

    def rig(self, verts: np.ndarray, faces: np.ndarray, options: dict | None = None, fps: float | None = None,
            name: str = "sequence", on_progress: ProgressCallback | None = None,
            timeout: float | None = None) -> RigResult:
        """Rig a sequence given as arrays.

        Args:
            verts: float32 ``[K, V, 3]`` frames (frame 0 is the anchor).
            faces: int32 ``[F, 3]`` triangles.
            options: rig options (fields of ``backend.rigging.pipeline.RigConfig``).
        Returns:
            the :class:`RigResult`, read from the server's output file (which is then deleted).
        """
        return self._with_arrays("rig", {"options": options or {}}, verts, faces, fps, name, on_progress, timeout)

    def refit(self, verts: np.ndarray, faces: np.ndarray, skeleton: dict, options: dict | None = None,
              fps: float | None = None, name: str = "sequence", on_progress: ProgressCallback | None = None,
              timeout: float | None = None) -> RigResult:
        """Fit weights and motion again for an edited skeleton (the server's ``refit``; no networks).

        Args:
            verts, faces: the frames, as for :meth:`rig`.
            skeleton: ``{"names": [J], "parents": [J names or None], "heads": [J, 3], "tails": [J, 3]}`` in the
                frames' space (lists or arrays).
        Returns:
            the :class:`RigResult`; its ``joint_names`` are the given names, reordered parents first.
        """
        payload = {key: (np.asarray(value).tolist() if isinstance(value, np.ndarray) else value)
                   for key, value in skeleton.items()}
        return self._with_arrays("refit", {"options": options or {}, "skeleton": payload}, verts, faces, fps, name,
                                 on_progress, timeout)

    def _with_arrays(self, method: str, params: dict, verts: np.ndarray, faces: np.ndarray, fps: float | None,
                     name: str, on_progress: ProgressCallback | None, timeout: float | None) -> RigResult:
        """Write the frames to a temporary ``.npz``, run ``method`` on it, read and delete the result file."""
        folder = self._workdir()
        stamp = f"{os.getpid()}_{next(self._ids)}"
        input_path = folder / f"input_{stamp}.npz"
        output_path = folder / f"result_{stamp}.npz"
        arrays: dict[str, Any] = {"verts": np.ascontiguousarray(verts, dtype=np.float32),
                                  "faces": np.ascontiguousarray(faces, dtype=np.int32), "name": np.asarray(str(name))}
        if fps is not None:
            arrays["fps"] = np.float32(fps)
        np.savez(input_path, **arrays)
        try:
            reply = self.request(method, {**params, "input": str(input_path), "output": str(output_path)},
                                 on_progress=on_progress, timeout=timeout)
            return RigResult.load(reply.get("output", output_path))
        finally:
            for path in (input_path, output_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    def cancel(self) -> None:
        """Ask the server to cancel the running rig (safe to call from another thread; no reply awaited).

        The pending :meth:`rig` call then raises :class:`BackendCancelled`.
        """
        if self.running and self._active_id is not None:
            try:
                self._send({"id": f"cancel-{self._active_id}", "method": "cancel", "params": {"id": self._active_id}})
            except BackendError:
                pass

    # -- plumbing ---------------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self._tempdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="sprig_client_")
        return Path(self._tempdir.name)

    def _send(self, message: dict) -> None:
        line = json.dumps(message) + "\n"
        with self._write_lock:
            try:
                self.process.stdin.write(line)
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                code = self._wait_exit(2.0)
                raise BackendCrashed("crashed", f"the backend stopped ({_describe_exit(code)}); could not send "
                                     f"{message.get('method')!r}" + self._stderr_hint()) from exc

    def _await(self, request_id: int, on_progress: ProgressCallback | None, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        last_heard = time.monotonic()
        while True:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise BackendHung("hung", f"the backend gave no answer within {timeout:.0f} s")
            if now - last_heard > self.config.hang_timeout_s:
                raise BackendHung("hung", f"the backend has been silent for {now - last_heard:.0f} s "
                                  "(no progress or heartbeat); it may be stuck" + self._stderr_hint())
            try:
                message = self._messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if message is None:  # stdout closed
                code = self._wait_exit(5.0)
                raise BackendCrashed("crashed", f"the backend stopped during the request ({_describe_exit(code)})"
                                     + self._stderr_hint())
            last_heard = time.monotonic()
            kind = message.get("type")
            if kind == "heartbeat":
                continue
            if message.get("id") != request_id:
                if kind == "error" and message.get("id") is None:  # the server could not read our line
                    err = message.get("error", {})
                    raise BackendError(err.get("code", "error"), err.get("message", "backend error"))
                continue  # e.g. the reply to a cancel request
            if kind == "progress":
                if on_progress is not None:
                    on_progress(str(message.get("stage", "")), float(message.get("fraction", 0.0)))
            elif kind == "result":
                return message.get("result", {})
            elif kind == "error":
                err = message.get("error", {})
                code, text = err.get("code", "error"), err.get("message", "backend error")
                if code == "cancelled":
                    raise BackendCancelled(code, text)
                raise BackendError(code, text)

    def _read_stdout(self) -> None:
        stream = self.process.stdout
        try:
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    self._stderr_tail.append(f"(stdout) {line[:200]}")
                    continue
                if isinstance(message, dict):
                    self._messages.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self._messages.put(None)

    def _read_stderr(self) -> None:
        try:
            for line in self.process.stderr:
                line = line.rstrip()
                if line:
                    self._stderr_tail.append(line)
                    log.debug("backend: %s", line)
        except (OSError, ValueError):
            pass

    def _wait_exit(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self._wait_exit(5.0)

    def _missing_module_hint(self, python: str) -> str:
        """A plain first sentence when the server died because ``python`` lacks a package (a system Python
        instead of the project's environment), else ""."""
        time.sleep(0.05)  # let the stderr reader catch the last lines
        for line in reversed(self._stderr_tail):
            match = re.search(r"ModuleNotFoundError: No module named '([^']+)'", line)
            if match:
                module = match.group(1).split(".")[0]
                what = ("the backend's own code (set Backend folder to the checkout, or pip install it there)"
                        if module == "backend" else f"the package {module!r}")
                return (f"the backend Python {python!r} cannot import {what}: choose the Python of an environment "
                        f"where the project is installed (e.g. <checkout>/.venv/bin/python after 'make setup'); ")
        return ""

    def _stderr_hint(self) -> str:
        time.sleep(0.05)  # let the stderr reader catch the last lines
        lines = [line for line in self._stderr_tail if line.strip()]
        if not lines:
            return ""
        return "\nlast backend output:\n  " + "\n  ".join(lines[-8:])


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running or exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit status {code}"
