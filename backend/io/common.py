"""Helpers shared by the sequence loaders: frame selection, fps estimation, final validation."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from backend.sequence import MeshSequence, SequenceError, validate_arrays

log = logging.getLogger(__name__)

@dataclass
class LoadLimits:
    """Ceilings the loaders check against what a file declares, before allocating anything.

    Attributes:
        max_vertex_frames: most vertex positions (frames x vertices) one loaded sequence may hold
            (10 million: 120 MB as float32). Every other size limit derives from it: animation
            timelines, node transforms per frame, dense skin weights, morph targets, zero-filled
            glTF accessors and npy arrays. The environment variable ``SPRIG_MAX_VERTEX_FRAMES``
            overrides it.
        max_frames: most frames a glTF animation timeline may be sampled into before a frame
            selection picks some (one million).
        max_compression_ratio: largest uncompressed/compressed size ratio accepted for a zip member
            bigger than 1 MB (a zip bomb exceeds it by orders of magnitude).
    """

    max_vertex_frames: int = 10_000_000
    max_frames: int = 1_000_000
    max_compression_ratio: float = 200.0

    @property
    def max_array_bytes(self) -> int:
        """Largest single array a loader materializes: the vertex ceiling as float64 ``[N, 3]``."""
        return self.max_vertex_frames * 3 * 8


def _limits_from_env() -> LoadLimits:
    limits = LoadLimits()
    raw = os.environ.get("SPRIG_MAX_VERTEX_FRAMES")
    if raw:
        try:
            limits.max_vertex_frames = max(1, int(float(raw)))
        except ValueError:
            log.warning("SPRIG_MAX_VERTEX_FRAMES=%r is not a number; keeping %d", raw, limits.max_vertex_frames)
    return limits


MIN_FPS, MAX_FPS = 1e-3, 1e5
"""Frame rates a loaded sequence may declare: beyond them frame times overflow or lose all precision."""

LIMITS = _limits_from_env()
"""The ceilings every loader checks (one object; change its fields to raise or lower them)."""


def check_size(count: int, limit: int, what: str, source: str | Path, needed: int | None = None) -> None:
    """Raise :class:`SequenceError` when ``count`` elements exceed ``limit`` (checked before allocating).

    Args:
        count: what the file declares (e.g. frames x vertices), as a Python int (no overflow).
        limit: the ceiling, usually derived from :data:`LIMITS`.
        what: the quantity, for the message (``"frames x vertices"``).
        needed: the ``SPRIG_MAX_VERTEX_FRAMES`` value that would load the file, named in the message when known.
    """
    if count > limit:
        how = ("; set SPRIG_MAX_VERTEX_FRAMES to raise the ceiling, or select fewer frames)" if needed is None else
               f"): set SPRIG_MAX_VERTEX_FRAMES={needed} or more to load it, or select fewer frames")
        raise SequenceError(f"{source}: {what} = {count:,} is above the limit of {limit:,} "
                            f"(a corrupt or hostile file, or a clip too large to load at once{how}")


def check_vertex_frames(n_frames: int, n_verts: int, source: str | Path) -> None:
    """The vertex-positions ceiling of :data:`LIMITS` for a ``[K, V, 3]`` sequence; the message names the
    ``SPRIG_MAX_VERTEX_FRAMES`` value that would load it."""
    count = int(n_frames) * int(n_verts)
    check_size(count, LIMITS.max_vertex_frames, f"frames x vertices ({n_frames} x {n_verts})", source, needed=count)


def read_regular_file(path: str | Path, max_bytes: int | None = None, what: str = "file") -> bytes:
    """Read a whole regular file, refusing devices, FIFOs and sockets and reading at most ``max_bytes``.

    ``stat`` follows symlinks, so a link to ``/dev/zero`` is refused too. The read stops one byte past
    the size ``stat`` reported, so a file that grows while being read cannot exhaust memory.

    Raises:
        SequenceError: missing, not a regular file, larger than ``max_bytes``, or unreadable.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SequenceError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise SequenceError(f"{path}: {what} is not a regular file (a device, FIFO or socket); refusing to read it")
    if max_bytes is not None and st.st_size > max_bytes:
        raise SequenceError(f"{path}: {what} has {st.st_size:,} bytes, above the limit of {max_bytes:,}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(st.st_size + 1)
    except OSError as exc:
        raise SequenceError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if len(data) > st.st_size:
        raise SequenceError(f"{path}: {what} grew while it was read; refusing a file that changes")
    return data


FrameSelection = Union[slice, Sequence[int], np.ndarray, None]
"""Which frames to load: ``None`` (all), a ``slice`` or a list/array of frame indices."""


def frame_indices(n_frames: int, frames: FrameSelection, source: str | Path) -> np.ndarray:
    """Resolve a frame selection to int64 ``[K']`` indices into ``n_frames`` frames.

    Raises:
        SequenceError: for an index out of range or an empty selection.
    """
    if frames is None:
        return np.arange(n_frames, dtype=np.int64)
    if isinstance(frames, slice):
        idx = np.arange(n_frames, dtype=np.int64)[frames]
    else:
        idx = np.asarray(frames).reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise SequenceError(f"{source}: frame indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        idx = np.where(idx < 0, idx + n_frames, idx)
        bad = np.flatnonzero((idx < 0) | (idx >= n_frames))
        if len(bad):
            raise SequenceError(
                f"{source}: frame index {int(np.asarray(frames).reshape(-1)[bad[0]])} is out of range "
                f"(the file has {n_frames} frames)")
    if idx.size == 0:
        raise SequenceError(f"{source}: the frame selection {frames!r} picks no frames "
                            f"(the file has {n_frames} frames)")
    return idx


def fps_from_times(times: np.ndarray) -> float | None:
    """Frames per second from frame times ``[K]`` in seconds (median spacing), or None if unknown."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size < 2 or not np.all(np.isfinite(times)):
        return None
    dt = np.diff(times)
    if np.any(dt <= 0):
        log.warning("frame times are not strictly increasing; fps left unknown")
        return None
    return float(1.0 / np.median(dt))


def build_sequence(verts: np.ndarray, faces: np.ndarray, source: str | Path, fps: float | None,
                   extras: dict | None = None, name: str | None = None) -> MeshSequence:
    """Validate arrays (errors name the file) and wrap them in a :class:`MeshSequence`.

    Args:
        verts: ``[K, V, 3]`` frames; faces: ``[F, 3]``.
        source: the file or folder the arrays came from, used in error messages.
        name: the sequence name; defaults to the file stem.
    """
    verts, faces = validate_arrays(verts, faces, name=str(source))
    if fps is not None:
        try:
            fps = float(fps)
        except (TypeError, ValueError) as exc:
            raise SequenceError(f"{source}: fps must be one positive number, got {fps!r}") from exc
        if not np.isfinite(fps) or not MIN_FPS <= fps <= MAX_FPS:
            raise SequenceError(f"{source}: fps must be a number in [{MIN_FPS:g}, {MAX_FPS:g}], got {fps:g}")
    return MeshSequence(verts, faces, fps=fps, name=name or Path(source).stem or "sequence",
                        extras=dict(extras or {}))
