"""Running the rig off Blender's UI thread: the subprocess client or the in-process pipeline.

A :class:`RigJob` runs one rig in a worker thread and is polled from a modal operator's timer (or
waited on in ``execute``). Progress, the result and errors travel through a queue; the job never
touches Blender data.
"""

from __future__ import annotations

import importlib
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # the copy bundled into the extension by scripts/build_extension.py
    from ._backend.app import client as backend_client
except ImportError:  # running from a source checkout, where the backend package is importable
    try:
        from backend.app import client as backend_client
    except ImportError:
        backend_client = None

log = logging.getLogger(__name__)


class BackendSetupError(RuntimeError):
    """The backend cannot be used as configured (the message says what to change)."""


@dataclass
class BackendSettings:
    """What the add-on preferences say about the backend."""

    mode: str = "AUTO"  # AUTO | SUBPROCESS | IN_PROCESS
    python: str = ""  # Python executable for the subprocess backend
    backend_path: str = ""  # folder holding the backend package (a source checkout), optional
    checkpoints: str = ""  # checkpoint folder, optional
    device: str = "auto"
    hang_timeout_s: float = 60.0

    def client_config(self) -> "backend_client.ClientConfig":
        # the server reads only frames this add-on exported: it may load production-size clips, which the
        # loaders' default ceiling (meant for files of unknown origin) refuses above 10 million positions
        return backend_client.ClientConfig(python=self.python, backend_path=self.backend_path or None,
                                           device=self.device, checkpoints=self.checkpoints or None,
                                           hang_timeout_s=self.hang_timeout_s, preload=True,
                                           env={"SPRIG_MAX_VERTEX_FRAMES": str(EXPORT_MAX_VERTEX_FRAMES)})


EXPORT_MAX_VERTEX_FRAMES = 100_000_000
"""Vertex positions (frames x vertices) the add-on's server accepts: 1.2 GB as float32, a 600k-vertex mesh over
160 frames."""


# -- backends -----------------------------------------------------------------------------------

_TORCH_IMPORTABLE: bool | None = None


def torch_importable() -> bool:
    """Whether ``import torch`` works inside this Python (checked once)."""
    global _TORCH_IMPORTABLE
    if _TORCH_IMPORTABLE is None:
        try:
            importlib.import_module("torch")
            _TORCH_IMPORTABLE = True
        except Exception as exc:  # ImportError, or a broken binary
            log.info("torch is not importable in Blender (%s); using the subprocess backend", exc)
            _TORCH_IMPORTABLE = False
    return _TORCH_IMPORTABLE


def _ensure_backend_path(settings: BackendSettings) -> None:
    if settings.backend_path and settings.backend_path not in sys.path:
        sys.path.insert(0, settings.backend_path)


def resolve_mode(settings: BackendSettings) -> str:
    """``SUBPROCESS`` or ``IN_PROCESS`` for the settings' mode (AUTO: in-process when torch and the
    backend's rig pipeline import inside Blender)."""
    if settings.mode != "AUTO":
        return settings.mode
    if torch_importable():
        _ensure_backend_path(settings)
        try:
            importlib.import_module("backend.rigging.pipeline")
            return "IN_PROCESS"
        except Exception as exc:
            log.info("backend.rigging.pipeline is not importable in Blender (%s); using the subprocess backend", exc)
    return "SUBPROCESS"


class SubprocessBackend:
    """The backend server, started once and kept (with its loaded models) until settings change."""

    def __init__(self, settings: BackendSettings):
        if backend_client is None:
            raise BackendSetupError("the backend client is missing from this add-on build; rebuild the extension")
        if not settings.python:
            raise BackendSetupError("set the backend Python executable in the SPRig add-on preferences")
        self.settings = settings
        self.client = backend_client.BackendClient(settings.client_config())
        self._start_lock = threading.Lock()  # a warm-up thread and the job may start it at once

    def start(self) -> None:
        with self._start_lock:
            self.client.start()

    def info(self) -> dict:
        return self.client.info()

    def rig(self, verts: np.ndarray, faces: np.ndarray, options: dict, name: str, fps: float,
            progress, cancel_event: threading.Event):
        return self.client.rig(verts, faces, options, fps=fps, name=name, on_progress=progress)

    def refit(self, verts: np.ndarray, faces: np.ndarray, skeleton: dict, options: dict, name: str, fps: float,
              progress, cancel_event: threading.Event):
        return self.client.refit(verts, faces, skeleton, options, fps=fps, name=name, on_progress=progress)

    def cancel(self) -> None:
        self.client.cancel()

    def alive(self) -> bool:
        return self._start_lock.locked() or self.client.running  # starting counts: it is not to be replaced

    def close(self) -> None:
        with self._start_lock:  # after a start in progress, so that no server is left running
            self.client.close()


class InProcessBackend:
    """Calls ``backend.rigging.pipeline.rig_sequence`` inside Blender (when torch imports here)."""

    def __init__(self, settings: BackendSettings):
        _ensure_backend_path(settings)
        try:
            self.rig_module = importlib.import_module("backend.rigging.pipeline")
            self.sequence_module = importlib.import_module("backend.sequence")
        except Exception as exc:
            raise BackendSetupError(f"the in-process backend cannot import backend.rigging.pipeline: {exc}") from exc
        self.settings = settings

    def start(self) -> None:
        pass

    def _server_config(self):
        server = importlib.import_module("backend.app.server")
        return server, server.ServerConfig(device=self.settings.device, checkpoints=self.settings.checkpoints or None)

    def info(self) -> dict:
        server, config = self._server_config()
        return server.collect_info(config, server.Rigger(config))

    def rig(self, verts: np.ndarray, faces: np.ndarray, options: dict, name: str, fps: float,
            progress, cancel_event: threading.Event):
        seq = self.sequence_module.MeshSequence(verts, faces, fps=fps, name=name)
        server, config = self._server_config()
        rig_config = server.Rigger(config).make_config(options)
        return self.rig_module.rig_sequence(seq, rig_config, progress=progress, should_cancel=cancel_event.is_set)

    def refit(self, verts: np.ndarray, faces: np.ndarray, skeleton: dict, options: dict, name: str, fps: float,
              progress, cancel_event: threading.Event):
        seq = self.sequence_module.MeshSequence(verts, faces, fps=fps, name=name)
        server, config = self._server_config()
        rigger = server.Rigger(config)
        return rigger.refit(seq, rigger.edited_skeleton(server.parse_skeleton(skeleton)), options, progress,
                            cancel_event.is_set)

    def cancel(self) -> None:
        pass  # the cancel event passed to rig() is read by the pipeline

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


_BACKEND: SubprocessBackend | InProcessBackend | None = None
_BACKEND_KEY: tuple | None = None
_BACKEND_LOCK = threading.Lock()


def get_backend(settings: BackendSettings) -> SubprocessBackend | InProcessBackend:
    """The shared backend for these settings (a new one when settings changed or the old one died)."""
    global _BACKEND, _BACKEND_KEY
    mode = resolve_mode(settings)
    key = (mode, settings.python, settings.backend_path, settings.checkpoints, settings.device)
    with _BACKEND_LOCK:
        if _BACKEND is not None and (_BACKEND_KEY != key or not _BACKEND.alive()):
            _BACKEND.close()
            _BACKEND = None
        if _BACKEND is None:
            _BACKEND = SubprocessBackend(settings) if mode == "SUBPROCESS" else InProcessBackend(settings)
            _BACKEND_KEY = key
        return _BACKEND


def warm_up(settings: BackendSettings) -> None:
    """Start the shared backend in a background thread (the server then loads its models), so that a rig whose
    frames are still being exported does not wait for it afterwards. Errors are left for the rig to report."""
    try:
        backend = get_backend(settings)
    except BackendSetupError:
        return

    def start() -> None:
        try:
            backend.start()
        except Exception as exc:  # the job's own start reports it
            log.info("backend warm-up: %s", exc)

    threading.Thread(target=start, name="sprig-warm-up", daemon=True).start()


def discard_backend(backend: Any | None = None) -> None:
    """Stop the shared backend (all of it, or only if it is ``backend``)."""
    global _BACKEND, _BACKEND_KEY
    with _BACKEND_LOCK:
        if _BACKEND is not None and (backend is None or backend is _BACKEND):
            try:
                _BACKEND.close()
            finally:
                _BACKEND, _BACKEND_KEY = None, None


_LAST_INFO: dict | None = None

CHECKPOINT_HELP = ("get them by training (`python training/run.py` in the SPRig checkout writes checkpoints/) or "
                   "set Preferences > Checkpoints to the checkout's shipped checkpoints/ folder")


def last_info() -> dict | None:
    """The ``info`` of the last backend check or run (None before any): what the device list offers."""
    return _LAST_INFO


def check_backend(settings: BackendSettings) -> dict:
    """Start (or reuse) the backend and return its ``info`` (versions, device, checkpoints), remembered
    for :func:`last_info`."""
    backend = get_backend(settings)
    try:
        backend.start()
        return _remember_info(backend)
    except Exception:
        discard_backend(backend)
        raise


def _remember_info(backend: SubprocessBackend | InProcessBackend) -> dict:
    """Ask the started ``backend`` for its ``info`` and keep it for :func:`last_info`."""
    global _LAST_INFO
    info = backend.info()
    info["mode"] = "in-process" if isinstance(backend, InProcessBackend) else "subprocess"
    _LAST_INFO = info
    return info


def missing_checkpoints(info: dict) -> list[str]:
    """Checkpoint files the backend's default models need but its folder lacks (``info["checkpoint_check"]``)."""
    check = info.get("checkpoint_check")
    return list(check.get("missing", [])) if isinstance(check, dict) else []


def setup_problems(info: dict, options: dict, needs_models: bool = True) -> list[str]:
    """What keeps the backend described by ``info`` from rigging with ``options`` (empty: ready).

    Names the missing checkpoint files (and how to get them), a CUDA device the backend does not have,
    and a rigging pipeline that cannot be imported. A refit (``needs_models=False``) uses no networks: only
    the pipeline matters.
    """
    problems = []
    if info.get("rigger") is False:
        problems.append(f"the rigging pipeline cannot be loaded: {info.get('rigger_error', 'unknown error')}")
    if not needs_models:
        return problems
    missing = missing_checkpoints(info)
    if missing:
        folder = info.get("checkpoint_dir") or "the backend's checkpoint folder"
        problems.append(f"missing checkpoint file(s) {', '.join(missing)} in {folder}: {CHECKPOINT_HELP}")
    if options.get("device") == "cuda" and not info.get("cuda_available", False):
        torch_version = info.get("torch") or "not installed"
        problems.append(f"CUDA is not available to the backend (torch {torch_version}, device "
                        f"{info.get('device', 'cpu')}): set Device to Auto or CPU, or use a backend Python whose "
                        "torch has CUDA")
    return problems


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for the user."""
    if backend_client is not None and isinstance(exc, backend_client.BackendError):
        return str(exc)
    message = getattr(exc, "message", None)  # the server's RequestError, in-process
    if isinstance(message, str):
        return message
    return str(exc) if isinstance(exc, (RuntimeError, ValueError)) else f"{type(exc).__name__}: {exc}"


# -- the job ------------------------------------------------------------------------------------


@dataclass
class JobEvent:
    kind: str  # progress | done | error | cancelled
    stage: str = ""
    fraction: float = 0.0
    result: Any = None
    message: str = ""


@dataclass
class RigJob:
    """One rig (or, with ``skeleton``, one refit) running in a worker thread.

    Attributes:
        verts: float32 ``[K, V, 3]``; faces: int32 ``[F, 3]``; options: rig options for the backend.
        skeleton: None for a rig; for a refit the edited skeleton ``{"names", "parents", "heads", "tails"}``
            (see the server's ``refit``).
    """

    backend: SubprocessBackend | InProcessBackend
    verts: np.ndarray
    faces: np.ndarray
    options: dict
    name: str = "sequence"
    fps: float = 24.0
    skeleton: dict | None = None
    state: str = "pending"  # pending | running | done | error | cancelled
    stage: str = ""
    fraction: float = 0.0
    result: Any = None
    message: str = ""
    _events: queue.Queue = field(default_factory=queue.Queue)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.state = "running"
        self._thread = threading.Thread(target=self._work, name="sprig-rig", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        def progress(stage: str, fraction: float) -> None:
            self._events.put(JobEvent("progress", stage=stage, fraction=fraction))

        try:
            progress("starting backend", 0.0)
            self.backend.start()
            problems = setup_problems(_remember_info(self.backend), self.options, needs_models=self.skeleton is None)
            if problems:
                raise BackendSetupError("; ".join(problems))
            progress("sending frames", 0.0)
            if self.skeleton is None:
                result = self.backend.rig(self.verts, self.faces, self.options, self.name, self.fps, progress,
                                          self._cancel)
            else:
                result = self.backend.refit(self.verts, self.faces, self.skeleton, self.options, self.name, self.fps,
                                            progress, self._cancel)
            if self._cancel.is_set():
                self._events.put(JobEvent("cancelled", message="rigging cancelled"))
            else:
                self._events.put(JobEvent("done", result=result))
        except Exception as exc:
            cancelled = self._cancel.is_set() or getattr(exc, "code", None) == "cancelled" or \
                type(exc).__name__ == "RigCancelled"
            if cancelled:
                self._events.put(JobEvent("cancelled", message="rigging cancelled"))
            else:
                log.warning("rig failed: %s", exc)
                if isinstance(self.backend, SubprocessBackend) and not self.backend.alive():
                    discard_backend(self.backend)
                elif backend_client is not None and isinstance(exc, backend_client.BackendHung):
                    discard_backend(self.backend)
                self._events.put(JobEvent("error", message=describe_error(exc)))

    def cancel(self) -> None:
        """Ask the backend to stop; the job ends in state ``cancelled`` shortly after."""
        if self.state == "running" and not self._cancel.is_set():
            self._cancel.set()
            try:
                self.backend.cancel()
            except Exception as exc:  # the backend may already be gone
                log.info("cancel: %s", exc)

    def poll(self) -> list[JobEvent]:
        """Drain the events that arrived since the last poll and update ``state``/``stage``/``fraction``."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            if event.kind == "progress":
                self.stage, self.fraction = event.stage, event.fraction
            else:
                self.state = {"done": "done", "error": "error", "cancelled": "cancelled"}[event.kind]
                self.result, self.message = event.result, event.message
        return events

    @property
    def finished(self) -> bool:
        return self.state in ("done", "error", "cancelled")

    def wait(self, timeout: float | None = None, on_event=None) -> None:
        """Block until the job finishes (for ``execute`` and scripts), forwarding events to ``on_event``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.finished:
                return
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(0.05)
