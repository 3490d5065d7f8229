"""Helpers shared by the sequence loaders: frame selection, fps estimation, final validation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from backend.sequence import MeshSequence, SequenceError, validate_arrays

log = logging.getLogger(__name__)

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
        fps = float(fps)
        if not np.isfinite(fps) or fps <= 0:
            raise SequenceError(f"{source}: fps must be a positive number, got {fps}")
    return MeshSequence(verts, faces, fps=fps, name=name or Path(source).stem or "sequence",
                        extras=dict(extras or {}))
