"""Where results may be written, and how: the one output-path policy of ``sprig`` and the server.

Policy (README, "Output files"):

1. Before any work, every output of a run is checked (:func:`plan_outputs`): it must not resolve
   (symbolic links followed, hard links compared by ``samefile``) to one of the run's inputs or to
   another output of the same run; it must not be an existing folder or a device/pipe; its folder must
   exist (or be creatable, where the caller allows) and accept a new file (probed by creating one).
   A refused output is a :class:`OutputPathError` naming the path and the reason; nothing is written.
2. Every file is written to a hidden temporary file in the destination's own folder
   (``.NAME.sprig-PID-TOKEN.tmp``), flushed to disk (``fsync``) and moved over the destination with
   ``os.replace`` (:func:`atomic_write`). Whoever reads the destination sees either the previous file
   or the complete new one, never a part, even if the process is killed mid-write.
3. The temporary file is removed on every way out: a normal error, ``KeyboardInterrupt``, ``SIGTERM``
   (:func:`install_termination_cleanup`) and interpreter exit. A ``SIGKILL`` cannot be caught; the
   next write to the same destination removes temporary files left by processes that no longer run.
4. The path reported back is the path actually written (the resolved destination).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_MARK = ".sprig-"  # temporary files are ".<name>.sprig-<pid>-<token>.tmp" (plus ".part" from some writers)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.sprig-(?P<pid>\d+)-[0-9a-f]+\.tmp(\.part)?$")

PROBE_NAME = "sprig-probe"  # the writability probe is a temporary file of this pseudo-destination
_live_temps: set[Path] = set()  # temporary files this process has open right now
_live_lock = threading.Lock()


class OutputPathError(ValueError):
    """An output path the policy refuses (same as an input, a folder, not writable, ...)."""


def _resolve(path: Path) -> Path:
    """Absolute path with symbolic links (also of a dangling final link) followed."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file: equal resolved paths, or one inode (hard links)."""
    if _resolve(a) == _resolve(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_folder_writable(folder: Path, create: bool = False) -> None:
    """Raise :class:`OutputPathError` unless a new file can be created in ``folder``.

    Args:
        folder: the destination folder.
        create: make the folder (and its parents) when it is missing.
    """
    folder = Path(folder)
    if not folder.exists():
        if not create:
            raise OutputPathError(f"output folder does not exist: {folder}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise OutputPathError(f"output folder is not a folder: {folder}")
    # Create a file rather than trust os.access: read-only mounts, ACLs and root all answer differently.
    probe = _temp_path(folder / PROBE_NAME)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OutputPathError(f"output folder is not writable: {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def plan_outputs(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike] = (),
                 create_folders: bool = False) -> list[Path]:
    """Check the outputs of one run against the policy; return where each will really be written.

    Args:
        outputs: the run's output paths, in order (the same file named twice is refused).
        inputs: the run's input files and folders (an output resolving to one of them is refused).
        create_folders: create missing destination folders (the CLI does; the server does not).
    Returns:
        the resolved destination of each output (symbolic links followed), in the same order.
    Raises:
        OutputPathError: naming the first refused output and why.
    """
    input_paths = [Path(p) for p in inputs]
    planned: list[Path] = []
    for raw in outputs:
        path = Path(raw)
        if str(raw) == "" or path.name in ("", ".", ".."):
            raise OutputPathError(f"output path {str(raw)!r} does not name a file")
        dest = _resolve(path)
        for source in input_paths:
            if _same_file(dest, source):
                raise OutputPathError(f"output {path} is the input {source}: refusing to overwrite an input")
        for earlier, other in zip(outputs, planned):
            if _same_file(dest, other):
                raise OutputPathError(f"output {path} is also the output {earlier}: each output needs its own file")
        try:
            mode = os.stat(dest).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise OutputPathError(f"cannot inspect output {path}: {exc.strerror or exc}") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise OutputPathError(f"output {path} is an existing folder, not a file")
        if mode is not None and not stat.S_ISREG(mode):
            raise OutputPathError(f"output {path} exists and is not a regular file (a device, pipe or socket)")
        check_folder_writable(dest.parent, create=create_folders)
        planned.append(dest)
    return planned


def _temp_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave its files alone
    return True


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove temporary files of ``dest`` (and writability probes) left by processes that no longer run.

    Such files are left only by a process killed with SIGKILL (or a power cut) while it wrote.

    Returns the removed paths.
    """
    dest = Path(dest)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or match["name"] not in (dest.name, PROBE_NAME) or _pid_running(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info("removed %d stale temporary file(s) of %s", len(removed), dest)
    return removed


def _discard(temp: Path) -> None:
    for leftover in (temp, temp.with_name(temp.name + ".part")):  # ".part": some writers' own temp file
        with contextlib.suppress(OSError):
            os.unlink(leftover)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it becomes ``dest`` in one ``os.replace``.

    The block writes the whole file to the yielded path (by name; any writer). On a clean exit the
    file is fsynced and moved over ``dest``; on any exception (``KeyboardInterrupt`` included) it is
    removed and ``dest`` is left as it was. Stale temporary files of ``dest`` from dead processes are
    removed first.

    Raises:
        OutputPathError: the block left no file at the temporary path.
    """
    dest = Path(dest)
    remove_stale_temps(dest)
    temp = _temp_path(dest)
    with _live_lock:
        _live_temps.add(temp)
    try:
        yield temp
        if not temp.is_file():
            raise OutputPathError(f"the writer of {dest} produced no file")
        _fsync_file(temp)
        os.replace(temp, dest)
        _fsync_folder(dest.parent)
    finally:
        _discard(temp)
        with _live_lock:
            _live_temps.discard(temp)


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` through :func:`atomic_write`; returns ``dest``."""
    with atomic_write(dest) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(dest)


def discard_live_temps() -> None:
    """Remove every temporary file this process is writing right now (exit and signal paths)."""
    with _live_lock:
        temps = list(_live_temps)
    for temp in temps:
        _discard(temp)


_installed = False


def install_termination_cleanup() -> None:
    """Make ``SIGTERM`` (and ``SIGHUP``) end the process like Ctrl-C: temporary files removed, exit 143.

    The handler removes the live temporary files at once (a worker thread may be writing one) and then
    raises ``SystemExit(128 + signal)`` in the main thread so that ``finally`` blocks run. Call it from
    the main thread of a program's entry point; it also registers an ``atexit`` cleanup.
    """
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(discard_live_temps)
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        discard_live_temps()
        raise SystemExit(128 + signum)

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, on_signal)
