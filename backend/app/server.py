"""The subprocess backend: rigging requests over stdin/stdout, one JSON message per line.

Blender's bundled Python has no torch, so the add-on starts this server with a configured Python::

    python -m backend.app.server [--device auto|cpu|cuda] [--checkpoints DIR] [--workdir DIR]

Protocol (every message is one JSON object on one line, UTF-8):

* Requests (client -> server): ``{"id": <int|str>, "method": <name>, "params": {...}}``.
* Replies (server -> client), each carrying the request's ``id``:

  - ``{"id": ..., "type": "result", "result": {...}}`` once per successful request;
  - ``{"id": ..., "type": "error", "error": {"code": ..., "message": ...}}`` once per failed request;
  - ``{"id": ..., "type": "progress", "stage": <str>, "fraction": <float in [0, 1]>}`` while a rig runs, and
    while its input is read ("reading frames", "checking frames", before a reply that may be an error);
  - ``{"type": "heartbeat", "busy": <bool>}`` every ``--heartbeat`` seconds while a rig runs, so that a
    client can tell a long computation from a hung process.

* On start the server writes ``{"type": "ready", "version": ..., "pid": ...}``.

Methods: ``ping``, ``info`` (versions, device, checkpoints), ``rig`` (``input``: path of an ``.npz`` with
``verts float32 [K, V, 3]`` and ``faces int32 [F, 3]`` (optional ``fps``, ``name``); ``output``: optional
path of the result ``.npz`` (default: a file in the server's temp folder); ``options``: rig options),
``refit`` (the same ``input``, ``output`` and ``options`` plus ``skeleton``: an edited skeleton as
``{"names": [J names], "parents": [J parent names or null], "heads": [[x, y, z] * J], "tails": [[x, y, z] * J]}``
in the input's space; weights and per-frame motion are fitted again for it by
:func:`backend.rigging.refit.refit_sequence`, without the networks; the result keeps the given bone names,
reordered parents first; exactly one root bone), ``cancel`` (the running rig or refit, or the one whose
``id`` is given) and ``shutdown``.

The server never dies on a bad request: bad JSON (also NaN/Infinity, oversized numbers, deep nesting,
invalid UTF-8, lines over ``MAX_LINE_CHARS``), an unknown method, a missing file or an invalid sequence
each give a structured error. Outputs follow :mod:`backend.app.output_paths` (never the input, checked
before the work, written atomically; the reply names the file written). Rigging runs in a worker thread so that ``cancel``, ``ping``
and ``info`` are answered while it works; the rigger (and the models it loads) lives as long as the
server, so consecutive requests do not reload checkpoints. One rig runs at a time (``busy`` otherwise).
End of input (the client went away) shuts the server down like ``shutdown``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from backend import REPO_ROOT, __version__
from backend.app.output_paths import OutputPathError, atomic_write, install_termination_cleanup, plan_outputs
from backend.sequence import MeshSequence, SequenceError

log = logging.getLogger("backend.app.server")

PROTOCOL_VERSION = 1
MAX_LINE_CHARS = 1 << 20  # a request line longer than this (requests are a few hundred bytes) is refused
MAX_NUMBER_CHARS = 40  # digits of a JSON number; longer ones are refused before Python converts them
MAX_OPTION_INT = 2**31 - 1  # integer rig options (and seeds) must fit in 32 bits


class ErrorCode:
    """The ``error.code`` values the server sends."""

    BAD_JSON = "bad_json"  # a line that is not JSON
    BAD_REQUEST = "bad_request"  # JSON, but not a request object (no method, params not an object, ...)
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"  # a parameter or rig option is missing, unknown or of the wrong type
    FILE_NOT_FOUND = "file_not_found"
    BAD_FILE = "bad_file"  # the input exists but is not a readable .npz with verts and faces
    INVALID_SEQUENCE = "invalid_sequence"  # the arrays break the MeshSequence contract
    BUSY = "busy"  # a rig is already running
    CANCELLED = "cancelled"
    RIGGER_UNAVAILABLE = "rigger_unavailable"  # backend.rigging.pipeline cannot be imported
    MODELS_UNAVAILABLE = "models_unavailable"  # the checkpoints are missing, corrupt or do not match
    RIG_FAILED = "rig_failed"  # the rigger raised
    INTERNAL = "internal"


_LONE_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, under surrogateescape


class _RejectedLine(Exception):
    """A request line that is not acceptable JSON (non-finite or oversized number, bad UTF-8, too deep)."""


def _reject_constant(name: str) -> Any:
    raise _RejectedLine(f"{name} is not allowed in a request (JSON numbers must be finite)")


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _RejectedLine(f"number {text[:20]}... is too long ({len(text)} characters)")
    value = float(text)
    if not math.isfinite(value):
        raise _RejectedLine(f"number {text} is out of range (JSON numbers must be finite)")
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _RejectedLine(f"number {text[:20]}... is too long ({len(text)} characters)")
    return int(text)


def parse_request_line(line: str) -> Any:
    """``json.loads`` for one request line, refusing what the protocol does not allow.

    Raises:
        RequestError: ``bad_json`` naming the problem: invalid JSON, NaN/Infinity, numbers that are not
            finite or longer than ``MAX_NUMBER_CHARS``, invalid UTF-8 (seen as lone surrogates after
            ``surrogateescape`` decoding) or nesting too deep for the parser.
    """
    if _LONE_SURROGATE.search(line):
        raise RequestError(ErrorCode.BAD_JSON, "request is not valid UTF-8")
    try:
        return json.loads(line, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise RequestError(ErrorCode.BAD_JSON, f"request is not valid JSON: {exc.msg} at column {exc.colno}") from None
    except _RejectedLine as exc:
        raise RequestError(ErrorCode.BAD_JSON, f"request is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise RequestError(ErrorCode.BAD_JSON, "request is nested too deeply") from None
    except (ValueError, MemoryError) as exc:  # e.g. an int longer than Python converts, a huge literal
        raise RequestError(ErrorCode.BAD_JSON, f"request is not acceptable JSON: {type(exc).__name__}: {exc}") from None


class RequestError(Exception):
    """A request failed; carries the structured ``code`` and a readable ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ServerConfig:
    """Command-line settings of the server."""

    device: str = "auto"  # default device for rigs: auto | cpu | cuda
    checkpoints: Path | None = None  # checkpoint folder handed to the rigger (None: its default)
    workdir: Path | None = None  # where result files go when a request names no output (None: a temp folder)
    heartbeat_s: float = 2.0  # seconds between heartbeats while a rig runs
    preload: bool = False  # after the ready line, import the pipeline and load the models in the background


# ----------------------------------------------------------------------------------------------
# Reading the input
# ----------------------------------------------------------------------------------------------


def load_sequence_npz(path: str | os.PathLike, on_step: Callable[[str], None] | None = None) -> MeshSequence:
    """Read a request's input ``.npz`` into a validated :class:`MeshSequence` (``on_step`` is told "reading
    frames", then "checking frames": a production-size clip takes a second or two).

    The file holds ``verts float32 [K, V, 3]``, ``faces int32 [F, 3]`` and optionally ``fps`` (scalar),
    ``name`` (string scalar), ``times [K]`` and extras, read by the project's npz reader
    (:func:`backend.io.npz.read_npz_arrays`): a FIFO or device is refused without opening it, and zip
    members are checked against the loader limits (size, compression ratio, npy headers) before any
    allocation.

    Raises:
        RequestError: ``file_not_found``, ``bad_file`` (unreadable, over the limits, no ``verts``/``faces``)
            or ``invalid_sequence`` (the arrays break the MeshSequence contract), naming the problem.
    """
    from backend.io.npz import read_npz_arrays, sequence_from_npz_arrays  # here: the ready line comes sooner

    path = Path(path)
    if not path.exists():
        raise RequestError(ErrorCode.FILE_NOT_FOUND, f"input file not found: {path}")
    if on_step is not None:
        on_step("reading frames")
    try:
        arrays = read_npz_arrays(path)
    except SequenceError as exc:
        raise RequestError(ErrorCode.BAD_FILE, f"not a readable .npz file: {exc}") from None
    except MemoryError:
        raise RequestError(ErrorCode.BAD_FILE, f"{path}: not enough memory to read the file") from None
    missing = [k for k in ("verts", "faces") if k not in arrays]
    if missing:
        raise RequestError(ErrorCode.BAD_FILE,
                           f"{path}: missing array(s) {', '.join(missing)} (need verts [K,V,3] and faces [F,3])")
    if on_step is not None:
        on_step("checking frames")
    try:
        return sequence_from_npz_arrays(path, arrays)
    except SequenceError as exc:
        raise RequestError(ErrorCode.INVALID_SEQUENCE, str(exc)) from None


# ----------------------------------------------------------------------------------------------
# The rigger: backend.rigging.pipeline, loaded once and kept
# ----------------------------------------------------------------------------------------------


class Rigger:
    """Holds ``backend.rigging.pipeline`` for the server's lifetime and builds its ``RigConfig`` from request options."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._module = None
        self._import_error: str | None = None

    @property
    def module(self):
        """The imported ``backend.rigging.pipeline`` module. Raises RequestError(rigger_unavailable) if it cannot load."""
        if self._module is None:
            try:
                self._module = importlib.import_module("backend.rigging.pipeline")
            except Exception as exc:  # ImportError, or a failure while importing torch/models
                self._import_error = f"{type(exc).__name__}: {exc}"
                raise RequestError(ErrorCode.RIGGER_UNAVAILABLE,
                                   f"the rigging pipeline (backend.rigging.pipeline) cannot be loaded: {self._import_error}") from exc
        return self._module

    def option_names(self) -> list[str]:
        """The rig options a request may set (the fields of ``backend.rigging.pipeline.RigConfig``)."""
        return [f.name for f in dataclasses.fields(self.module.RigConfig)]

    def make_config(self, options: dict[str, Any]):
        """A ``RigConfig`` from the request's ``options``, the server's device and checkpoint folder.

        Raises:
            RequestError: ``invalid_params`` for an unknown option or a value of the wrong type.
        """
        config_cls = self.module.RigConfig
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise RequestError(ErrorCode.INVALID_PARAMS,
                               f"unknown rig option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}")
        defaults = config_cls()
        values: dict[str, Any] = {}
        for name, value in options.items():
            values[name] = _coerce_option(name, value, getattr(defaults, name))
        if "device" in fields and "device" not in values and self.config.device != "auto":
            values["device"] = self.config.device
        folder = self.checkpoint_dir()
        if folder is not None and "checkpoint_dir" in fields and "checkpoint_dir" not in values:
            values["checkpoint_dir"] = str(folder)
        try:
            config = dataclasses.replace(defaults, **values)
            if hasattr(config, "validate"):
                config.validate()
        except (TypeError, ValueError) as exc:
            raise RequestError(ErrorCode.INVALID_PARAMS, f"invalid rig options: {exc}") from exc
        return config

    def checkpoint_dir(self) -> Path | None:
        """The checkpoint folder rigs use: the server's ``--checkpoints``, else the rigger's default.

        A relative default (``checkpoints``) is looked up in the working directory, then in the
        checkout holding the ``backend`` package, so a server started from anywhere (e.g. by Blender)
        finds ``<checkout>/checkpoints``.
        """
        if self.config.checkpoints is not None:
            return Path(self.config.checkpoints).expanduser().resolve()
        try:
            default = getattr(self.module.RigConfig(), "checkpoint_dir", None)
        except RequestError:
            return None
        if not default:
            return None
        path = Path(default).expanduser()
        if path.is_absolute() or path.is_dir():
            return path.resolve()
        return (REPO_ROOT / path).resolve()

    def rig(self, seq: MeshSequence, options: dict[str, Any], progress: Callable[[str, float], None],
            should_cancel: Callable[[], bool]):
        """Run ``backend.rigging.pipeline.rig_sequence`` and return its ``RigResult``."""
        config = self.make_config(options)
        return self.module.rig_sequence(seq, config, progress=progress, should_cancel=should_cancel)

    def edited_skeleton(self, skeleton: dict):
        """A ``RigSkeleton`` (parents first) from a :func:`parse_skeleton` dict.

        Raises:
            RequestError: ``invalid_params`` naming what is wrong with the skeleton (a cycle, an unknown
                parent, a repeated name, a zero-length bone, ...).
        """
        self.module  # noqa: B018 - rigger_unavailable when the rigging code cannot load
        refit = importlib.import_module("backend.rigging.refit")
        try:
            return refit.skeleton_from_bones(skeleton["names"], skeleton["parents"], skeleton["heads"],
                                             skeleton["tails"])
        except refit.SkeletonInputError as exc:
            raise RequestError(ErrorCode.INVALID_PARAMS, f"invalid skeleton: {exc}") from None

    def refit(self, seq: MeshSequence, skeleton, options: dict[str, Any],
              progress: Callable[[str, float], None], should_cancel: Callable[[], bool]):
        """Run ``backend.rigging.refit.refit_sequence`` for ``skeleton`` (from :meth:`edited_skeleton`) and
        return its ``RigResult``."""
        config = self.make_config(options)
        refit = importlib.import_module("backend.rigging.refit")
        return refit.refit_sequence(seq, skeleton, config, progress=progress, should_cancel=should_cancel)

    def is_cancel_exception(self, exc: BaseException) -> bool:
        cancelled = getattr(self._module, "RigCancelled", None) if self._module is not None else None
        return cancelled is not None and isinstance(exc, cancelled)


MAX_SKELETON_BONES = 1024


def parse_skeleton(value: Any) -> dict:
    """The ``skeleton`` parameter of ``refit`` as ``{"names", "parents", "heads", "tails"}`` (lists checked for
    type and length; names and the tree are checked by :func:`backend.rigging.refit.skeleton_from_bones`).

    Raises:
        RequestError: ``invalid_params`` naming the first problem.
    """
    def bad(message: str) -> RequestError:
        return RequestError(ErrorCode.INVALID_PARAMS, f"invalid skeleton: {message}")

    if not isinstance(value, dict):
        raise bad("refit needs 'skeleton': an object with names, parents, heads and tails")
    unknown = sorted(set(value) - {"names", "parents", "heads", "tails"})
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}; expected names, parents, heads, tails")
    names = value.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("'names' must be a list of bone-name strings")
    if not names:
        raise bad("the skeleton has no bones")
    if len(names) > MAX_SKELETON_BONES:
        raise bad(f"{len(names)} bones; at most {MAX_SKELETON_BONES}")
    parents = value.get("parents")
    if not isinstance(parents, list) or not all(p is None or isinstance(p, str) for p in parents):
        raise bad("'parents' must be a list of parent bone names (null for a root)")
    if len(parents) != len(names):
        raise bad(f"{len(parents)} parents for {len(names)} bones")
    out = {"names": names, "parents": parents}
    for key in ("heads", "tails"):
        points = value.get(key)
        if (not isinstance(points, list) or len(points) != len(names)
                or not all(isinstance(p, list) and len(p) == 3
                           and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p)
                           for p in points)):
            raise bad(f"'{key}' must be a list of {len(names)} [x, y, z] number triples")
        out[key] = points
    return out


def _coerce_option(name: str, value: Any, default: Any) -> Any:
    """Check a JSON option value against the type of the config default (ints may be given as floats)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RequestError(ErrorCode.INVALID_PARAMS, f"option {name!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))):
            raise RequestError(ErrorCode.INVALID_PARAMS, f"option {name!r} must be an integer, got {value!r}")
        if abs(int(value)) > MAX_OPTION_INT:
            raise RequestError(ErrorCode.INVALID_PARAMS,
                               f"option {name!r} is out of range: {value!r} (at most {MAX_OPTION_INT} in magnitude)")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(ErrorCode.INVALID_PARAMS, f"option {name!r} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, (str, Path)):
        if not isinstance(value, str):
            raise RequestError(ErrorCode.INVALID_PARAMS, f"option {name!r} must be a string, got {value!r}")
        return type(default)(value) if isinstance(default, Path) else value
    if isinstance(default, (tuple, list)):
        if not isinstance(value, list):
            raise RequestError(ErrorCode.INVALID_PARAMS, f"option {name!r} must be a list, got {value!r}")
        return type(default)(value)
    return value


# ----------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """The rig request being worked on."""

    request_id: Any
    thread: threading.Thread
    cancel: threading.Event


class Server:
    """Reads requests from ``stdin``, writes replies to ``stdout`` (both text streams, one JSON per line)."""

    def __init__(self, config: ServerConfig, stdin: TextIO, stdout: TextIO):
        self.config = config
        self.stdin = stdin
        self.stdout = stdout
        self.rigger = Rigger(config)
        self._write_lock = threading.Lock()
        self._job_lock = threading.Lock()
        self._job: _Job | None = None
        self._stop = threading.Event()
        self._tempdir: tempfile.TemporaryDirectory | None = None
        self._methods: dict[str, Callable[[Any, dict], dict | None]] = {
            "ping": self._ping,
            "info": self._info,
            "rig": self._rig,
            "refit": self._refit,
            "cancel": self._cancel,
            "shutdown": self._shutdown,
        }

    # -- output -----------------------------------------------------------------------------

    def send(self, message: dict) -> None:
        """Write one message as one line (thread-safe). A message that cannot be encoded becomes an error."""
        try:
            line = json.dumps(message, allow_nan=False, default=_json_default)
        except (TypeError, ValueError, RecursionError) as exc:  # NaN in stats, an unknown type: a bug, not a crash
            log.error("cannot encode a reply: %s", exc)
            request_id = message.get("id")
            line = json.dumps({"id": request_id if isinstance(request_id, (int, str)) else None, "type": "error",
                               "error": {"code": ErrorCode.INTERNAL,
                                         "message": f"the reply could not be encoded as JSON: {exc}"}})
        with self._write_lock:
            try:
                self.stdout.write(line + "\n")
                self.stdout.flush()
            except (BrokenPipeError, ValueError, OSError):  # the client is gone
                self._stop.set()

    def _preload(self) -> None:
        """Import the pipeline and load the models for the server's defaults while the client is still busy
        (the add-on exports frames meanwhile); a failure is only logged: the first rig reports it."""
        try:
            self.rigger.module.get_models(self.rigger.make_config({}))
            log.info("models preloaded")
        except Exception as exc:  # RequestError (no pipeline), CheckpointError, ...
            log.warning("preloading the models failed: %s", exc)

    def send_error(self, request_id: Any, code: str, message: str) -> None:
        self.send(_error_reply(request_id, code, message))

    # -- main loop --------------------------------------------------------------------------

    def serve(self) -> int:
        """Answer requests until ``shutdown`` or end of input. Returns the process exit status."""
        self.send({"type": "ready", "protocol": PROTOCOL_VERSION, "version": __version__, "pid": os.getpid()})
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        if self.config.preload:
            threading.Thread(target=self._preload, name="preload", daemon=True).start()
        while not self._stop.is_set():
            try:
                line = self.read_line()
            except (OSError, ValueError) as exc:  # the input stream broke or was closed
                log.info("input failed (%s); shutting down", exc)
                break
            except Exception as exc:  # noqa: BLE001 - the reader must not take the server down
                log.error("reading a request failed: %s", traceback.format_exc())
                self.send_error(None, ErrorCode.INTERNAL, f"reading the request failed: {type(exc).__name__}: {exc}")
                continue
            if line is None:  # end of input: the client closed the pipe or died
                log.info("end of input; shutting down")
                break
            if line.strip():
                self.handle_line(line)
        self._stop.set()
        self._finish_job(cancel=True)
        if self._tempdir is not None:
            self._tempdir.cleanup()
        return 0

    def read_line(self) -> str | None:
        """The next request line; None at end of input.

        A line longer than ``MAX_LINE_CHARS`` is read to its end and discarded, and answered with a
        ``bad_request`` error, so a runaway client cannot make the server hold it in memory.
        """
        line = self.stdin.readline(MAX_LINE_CHARS + 1)
        if line == "":
            return None
        if len(line) <= MAX_LINE_CHARS or line.endswith("\n"):
            return line
        dropped = len(line)
        while True:
            rest = self.stdin.readline(MAX_LINE_CHARS)
            dropped += len(rest)
            if rest == "" or rest.endswith("\n"):
                break
        self.send_error(None, ErrorCode.BAD_REQUEST,
                        f"request line too long ({dropped} characters; at most {MAX_LINE_CHARS})")
        return ""

    def handle_line(self, line: str) -> None:
        """Parse and dispatch one request line; every failure becomes an error reply, never an exit."""
        try:
            self._handle_line(line)
        except Exception as exc:  # noqa: BLE001 - a bug in the handling itself: report it, keep serving
            log.error("internal error handling a request: %s", traceback.format_exc())
            self.send_error(None, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def _handle_line(self, line: str) -> None:
        try:
            request = parse_request_line(line)
        except RequestError as exc:
            self.send_error(None, exc.code, exc.message)
            return
        if not isinstance(request, dict):
            self.send_error(None, ErrorCode.BAD_REQUEST,
                            f"a request must be a JSON object with 'id' and 'method', got {type(request).__name__}")
            return
        request_id = request.get("id")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (int, str))):
            self.send_error(None, ErrorCode.BAD_REQUEST, "'id' must be an integer or a string")
            return
        method = request.get("method")
        if not isinstance(method, str):
            self.send_error(request_id, ErrorCode.BAD_REQUEST, "a request needs a 'method' string")
            return
        params = request.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            self.send_error(request_id, ErrorCode.BAD_REQUEST, "'params' must be a JSON object")
            return
        handler = self._methods.get(method)
        if handler is None:
            self.send_error(request_id, ErrorCode.UNKNOWN_METHOD,
                            f"unknown method {method!r}; known methods: {', '.join(self._methods)}")
            return
        try:
            result = handler(request_id, params)
        except RequestError as exc:
            self.send_error(request_id, exc.code, exc.message)
            return
        except MemoryError:
            self.send_error(request_id, ErrorCode.INTERNAL, f"out of memory while handling {method}")
            return
        except OSError as exc:  # a path the system refuses outright (too long, bad characters, ...)
            where = f" ({str(exc.filename)[:200]})" if exc.filename else ""
            self.send_error(request_id, ErrorCode.INVALID_PARAMS,
                            f"{method}: unusable path{where}: {exc.strerror or exc}")
            return
        except Exception as exc:  # a bug: report it, keep serving
            log.error("internal error in %s: %s", method, traceback.format_exc())
            self.send_error(request_id, ErrorCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")
            return
        if result is not None:
            self.send({"id": request_id, "type": "result", "result": result})

    # -- methods ----------------------------------------------------------------------------

    def _ping(self, request_id: Any, params: dict) -> dict:
        return {"pong": True, "time": time.time(), "busy": self._busy()}

    def _info(self, request_id: Any, params: dict) -> dict:
        return collect_info(self.config, self.rigger)

    def _rig(self, request_id: Any, params: dict) -> None:
        unknown = sorted(set(params) - {"input", "output", "options"})
        if unknown:
            raise RequestError(ErrorCode.INVALID_PARAMS,
                               f"unknown rig parameter(s) {', '.join(unknown)}; expected input, output, options")
        return self._start_job(request_id, params, "rig", self.rigger.rig)

    def _refit(self, request_id: Any, params: dict) -> None:
        unknown = sorted(set(params) - {"input", "output", "options", "skeleton"})
        if unknown:
            raise RequestError(ErrorCode.INVALID_PARAMS, f"unknown refit parameter(s) {', '.join(unknown)}; "
                                                         "expected input, output, options, skeleton")
        skeleton = self.rigger.edited_skeleton(parse_skeleton(params.get("skeleton")))  # checked before going busy

        def work(seq, options, progress, should_cancel):
            return self.rigger.refit(seq, skeleton, options, progress, should_cancel)

        return self._start_job(request_id, params, "refit", work)

    def _start_job(self, request_id: Any, params: dict, method: str, work: Callable) -> None:
        """Check a rig or refit request's ``input``, ``output`` and ``options`` and start ``work(seq, options,
        progress, should_cancel) -> RigResult`` in the worker thread (which sends the reply)."""
        source = params.get("input")
        if not isinstance(source, str) or not source:
            raise RequestError(ErrorCode.INVALID_PARAMS,
                               f"{method} needs 'input': the path of an .npz with verts and faces")
        output = params.get("output")
        if output is not None and not isinstance(output, str):
            raise RequestError(ErrorCode.INVALID_PARAMS, "'output' must be a path string")
        options = params.get("options", {})
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise RequestError(ErrorCode.INVALID_PARAMS, "'options' must be a JSON object")
        if "\0" in source or (output is not None and "\0" in output):
            raise RequestError(ErrorCode.INVALID_PARAMS, "paths must not contain NUL characters")
        if output is not None and not Path(output).parent.is_dir():
            raise RequestError(ErrorCode.FILE_NOT_FOUND, f"output folder does not exist: {Path(output).parent}")
        # Validate everything that is cheap before going busy, so that bad requests fail at once:
        # the output (never the input, a writable folder), the options, then the input file.
        try:
            [out_path] = plan_outputs([output if output else self._default_output(request_id)], inputs=[source])
        except OutputPathError as exc:
            raise RequestError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        self.rigger.make_config(options)
        seq = load_sequence_npz(source, on_step=lambda step: self.send(
            {"id": request_id, "type": "progress", "stage": step, "fraction": 0.0}))
        with self._job_lock:
            if self._job is not None and self._job.thread.is_alive():
                raise RequestError(ErrorCode.BUSY, f"a rig is already running (request {self._job.request_id!r})")
            cancel = threading.Event()
            thread = threading.Thread(target=self._run_rig, args=(request_id, seq, options, out_path, cancel, work),
                                      name=f"{method}-{request_id}", daemon=True)
            self._job = _Job(request_id, thread, cancel)
            thread.start()
        return None  # the worker sends the reply

    def _cancel(self, request_id: Any, params: dict) -> dict:
        target = params.get("id")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, str))):
            raise RequestError(ErrorCode.INVALID_PARAMS, "cancel's 'id' must be the integer or string id of a rig request")
        with self._job_lock:
            job = self._job
            running = job is not None and job.thread.is_alive()
            if not running or (target is not None and target != job.request_id):
                return {"cancelled": False, "id": target}
            job.cancel.set()
            return {"cancelled": True, "id": job.request_id}

    def _shutdown(self, request_id: Any, params: dict) -> dict:
        self._stop.set()
        self._finish_job(cancel=True)
        return {"shutdown": True}

    # -- rig worker -------------------------------------------------------------------------

    def _run_rig(self, request_id: Any, seq: MeshSequence, options: dict, out_path: Path,
                 cancel: threading.Event, work: Callable) -> None:
        last = {"t": 0.0, "stage": None}

        def progress(stage: str, fraction: float) -> None:
            fraction = float(min(max(fraction, 0.0), 1.0)) if np.isfinite(fraction) else 0.0
            now = time.monotonic()
            # At most ~20 messages a second, but always the first message of a stage and the last one.
            if stage != last["stage"] or fraction >= 1.0 or now - last["t"] > 0.05:
                last.update(t=now, stage=stage)
                self.send({"id": request_id, "type": "progress", "stage": str(stage), "fraction": fraction})

        start = time.monotonic()
        reply: dict
        try:
            result = work(seq, options, progress, cancel.is_set)
            if cancel.is_set():
                raise RequestError(ErrorCode.CANCELLED, "the rig was cancelled")
            progress("writing the result", 1.0)  # a production-size result takes a moment to write and read
            with atomic_write(out_path) as temp:
                result.save(temp)
            stats = dict(result.stats)
            stats.setdefault("joints", int(len(result.joint_names)))
            stats.setdefault("frames", int(result.n_frames))
            del result
            reply = {"id": request_id, "type": "result",
                     "result": {"output": str(out_path), "stats": stats, "seconds": time.monotonic() - start}}
        except RequestError as exc:
            reply = _error_reply(request_id, exc.code, exc.message)
        except Exception as exc:  # MemoryError included: the reply names it, the server stays up
            if self.rigger.is_cancel_exception(exc) or cancel.is_set():
                reply = _error_reply(request_id, ErrorCode.CANCELLED, "the rig was cancelled")
            elif isinstance(exc, SequenceError):
                reply = _error_reply(request_id, ErrorCode.INVALID_SEQUENCE, str(exc))
            elif type(exc).__name__ == "SkeletonInputError":  # the edited skeleton does not fit the frames
                reply = _error_reply(request_id, ErrorCode.INVALID_PARAMS, f"invalid skeleton: {exc}")
            elif type(exc).__name__ == "CheckpointError":
                reply = _error_reply(request_id, ErrorCode.MODELS_UNAVAILABLE,
                                     f"the rigging models cannot be loaded: {exc}")
            elif isinstance(exc, OSError):
                reply = _error_reply(request_id, ErrorCode.RIG_FAILED,
                                     f"cannot write {out_path}: {exc.strerror or exc}")
            else:
                log.error("rig failed: %s", traceback.format_exc())
                reply = _error_reply(request_id, ErrorCode.RIG_FAILED, f"rigging failed: {type(exc).__name__}: {exc}")
        # The server is ready for the next rig as soon as the client hears about this one.
        with self._job_lock:
            if self._job is not None and self._job.cancel is cancel:
                self._job = None
        self.send(reply)

    def _finish_job(self, cancel: bool, timeout: float = 30.0) -> None:
        with self._job_lock:
            job = self._job
        if job is None:
            return
        if cancel:
            job.cancel.set()
        job.thread.join(timeout)

    def _busy(self) -> bool:
        job = self._job
        return job is not None and job.thread.is_alive()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            if self._busy():
                self.send({"type": "heartbeat", "busy": True})

    def _default_output(self, request_id: Any) -> Path:
        if self.config.workdir is not None:
            folder = Path(self.config.workdir)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            if self._tempdir is None:
                self._tempdir = tempfile.TemporaryDirectory(prefix="sprig_server_")
            folder = Path(self._tempdir.name)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(request_id))
        return folder / f"rig_{safe}_{int(time.time() * 1000)}.npz"


def _error_reply(request_id: Any, code: str, message: str) -> dict:
    return {"id": request_id, "type": "error", "error": {"code": code, "message": message}}


def collect_info(config: ServerConfig, rigger: Rigger | None = None) -> dict:
    """Versions, compute device and checkpoint files, for ``info`` (and the add-on's "Check backend")."""
    info: dict[str, Any] = {
        "backend_version": __version__,
        "protocol": PROTOCOL_VERSION,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pid": os.getpid(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        cuda = bool(torch.cuda.is_available())
        info["cuda_available"] = cuda
        if cuda:
            info["cuda_device"] = torch.cuda.get_device_name(0)
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        info["device"] = config.device if config.device != "auto" else ("cuda" if cuda else "mps" if mps else "cpu")
    except Exception as exc:  # torch missing or broken: the server still answers
        info["torch"] = None
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
        info["device"] = "cpu"
    if rigger is not None:
        try:
            rigger.module  # noqa: B018 - imports backend.rigging.pipeline once
            info["rigger"] = True
            info["rig_options"] = rigger.option_names()
        except RequestError as exc:
            info["rigger"] = False
            info["rigger_error"] = exc.message
    folder = rigger.checkpoint_dir() if rigger is not None else config.checkpoints
    info["checkpoints"] = list_checkpoints(folder)
    if folder is not None:
        info["checkpoint_dir"] = str(folder)
    if info.get("rigger"):
        info["checkpoint_check"] = checkpoint_check(folder, getattr(rigger.module.RigConfig(), "models", "sprig"))
    return info


def checkpoint_check(folder: Path | None, models: str) -> dict:
    """Which checkpoint files rigs with ``models`` (``sprig`` | ``base`` | ``auto``) need in ``folder``:
    ``{"models", "needed": [file names], "missing": [file names]}`` (for ``auto`` a model counts as present
    when its SPRig or its base file exists)."""
    from backend.models.inference import CHECKPOINT_NAMES

    folder = Path(folder) if folder is not None else None
    present = (lambda name: folder is not None and (folder / name).is_file())
    if models == "auto":
        pairs = list(zip(CHECKPOINT_NAMES["sprig"], CHECKPOINT_NAMES["base"]))
        needed = [sprig if present(sprig) or not present(base) else base for sprig, base in pairs]
    else:
        needed = list(CHECKPOINT_NAMES.get(models, ()))
    return {"models": models, "needed": needed, "missing": [name for name in needed if not present(name)]}


def list_checkpoints(folder: Path | None) -> list[dict]:
    """The checkpoint files (``.safetensors``, ``.pt``, ``.pth``, ``.ckpt``) in ``folder`` with their sizes."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix in {".safetensors", ".pt", ".pth", ".ckpt"})
    return [{"name": str(p.relative_to(folder)), "bytes": p.stat().st_size} for p in files]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPRig backend server: JSON lines on stdin/stdout.")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder for the rigger")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for result files (default: a temp folder)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats while rigging")
    parser.add_argument("--preload", action="store_true",
                        help="load the models right after start (in the background), so the first rig need not wait")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # stdout carries the protocol only: anything else printed (by libraries) goes to stderr.
    protocol_out = io.TextIOWrapper(os.fdopen(os.dup(sys.stdout.fileno()), "wb"), encoding="utf-8",
                                    line_buffering=True)
    sys.stdout = sys.stderr
    os.dup2(sys.stderr.fileno(), 1)
    # surrogateescape: invalid UTF-8 reaches parse_request_line as lone surrogates and is answered there
    protocol_in = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = ServerConfig(device=args.device, checkpoints=args.checkpoints, workdir=args.workdir,
                          heartbeat_s=args.heartbeat, preload=args.preload)
    install_termination_cleanup()  # SIGTERM: no temporary result file left behind
    return Server(config, protocol_in, protocol_out).serve()


if __name__ == "__main__":
    sys.exit(main())
