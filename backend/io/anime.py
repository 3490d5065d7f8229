"""DeformingThings4D ``.anime`` files: reader and writer.

Layout (little-endian, no padding)::

    int32   nf, nv, nt                 frames, vertices, triangles
    float32 anchor   [nv, 3]           frame 0
    int32   faces    [nt, 3]
    float32 offsets  [nf - 1, nv, 3]   frame k = anchor + offsets[k - 1]

The format stores no frame rate. Offsets are memory-mapped, so loading a frame subset reads only
those frames from disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.io.common import FrameSelection, build_sequence, check_vertex_frames, frame_indices
from backend.sequence import MeshSequence, SequenceError

log = logging.getLogger(__name__)

_HEADER = np.dtype("<i4")
_FLOAT = np.dtype("<f4")
_INT = np.dtype("<i4")


@dataclass(frozen=True)
class AnimeHeader:
    """Sizes and byte offsets of the sections of an ``.anime`` file."""

    n_frames: int
    n_verts: int
    n_faces: int

    @property
    def anchor_offset(self) -> int:
        return 12

    @property
    def faces_offset(self) -> int:
        return 12 + self.n_verts * 12

    @property
    def offsets_offset(self) -> int:
        return self.faces_offset + self.n_faces * 12

    @property
    def file_size(self) -> int:
        return self.offsets_offset + (self.n_frames - 1) * self.n_verts * 12


def read_anime_header(path: str | Path) -> AnimeHeader:
    """Read and check the header against the file size.

    Raises:
        SequenceError: for a missing, truncated or corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise SequenceError(f"{path}: no such file")
    if not path.is_file():
        raise SequenceError(f"{path}: not a regular file (a device, FIFO or socket); refusing to read it")
    size = path.stat().st_size
    if size < 12:
        raise SequenceError(f"{path}: truncated .anime file: {size} bytes, the header alone needs 12")
    nf, nv, nt = (int(x) for x in np.fromfile(path, dtype=_HEADER, count=3))
    if nf < 1 or nv < 0 or nt < 0:
        raise SequenceError(f"{path}: corrupt .anime header: frames={nf}, vertices={nv}, triangles={nt}")
    header = AnimeHeader(nf, nv, nt)
    if size < header.file_size:
        raise SequenceError(
            f"{path}: truncated .anime file: the header announces {nf} frames x {nv} vertices and {nt} triangles "
            f"({header.file_size} bytes) but the file has {size} bytes")
    if size > header.file_size:
        raise SequenceError(
            f"{path}: corrupt .anime file: {size - header.file_size} bytes more than the header "
            f"({nf} frames x {nv} vertices, {nt} triangles) accounts for")
    return header


def load_anime(path: str | Path, fps: float | None = None, frames: FrameSelection = None) -> MeshSequence:
    """Load a DeformingThings4D ``.anime`` file.

    Args:
        path: the file.
        fps: frames per second (the format does not store one).
        frames: optional frame selection (slice or indices); only those frames are read.
    Returns:
        :class:`MeshSequence` with ``verts float32 [K, V, 3]`` (anchor + offsets) and ``faces int32 [F, 3]``.
    Raises:
        SequenceError: truncated/corrupt file or a contract violation.
    """
    path = Path(path)
    h = read_anime_header(path)
    idx = frame_indices(h.n_frames, frames, path)
    check_vertex_frames(len(idx), h.n_verts, path)
    anchor = np.fromfile(path, dtype=_FLOAT, count=h.n_verts * 3, offset=h.anchor_offset).reshape(h.n_verts, 3)
    faces = np.fromfile(path, dtype=_INT, count=h.n_faces * 3, offset=h.faces_offset).reshape(h.n_faces, 3)
    verts = np.empty((len(idx), h.n_verts, 3), dtype=np.float32)
    moving = idx > 0
    verts[~moving] = anchor
    if moving.any() and h.n_verts > 0:
        offsets = np.memmap(path, dtype=_FLOAT, mode="r", offset=h.offsets_offset,
                            shape=(h.n_frames - 1, h.n_verts, 3))
        for out_row, k in zip(np.flatnonzero(moving), idx[moving]):
            np.add(anchor, offsets[k - 1], out=verts[out_row])
        del offsets
    return build_sequence(verts, faces, path, fps)


def save_anime(seq: MeshSequence, path: str | Path) -> Path:
    """Write a sequence as ``.anime`` (anchor, faces, per-frame offsets from the anchor).

    ``fps``, ``name`` and extras are not part of the format and are dropped. Returns the written path.
    """
    path = Path(path)
    verts = np.asarray(seq.verts, dtype=np.float32)
    faces = np.asarray(seq.faces, dtype=np.int32)
    anchor = verts[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        np.asarray([verts.shape[0], verts.shape[1], faces.shape[0]], dtype=_HEADER).tofile(fh)
        anchor.astype(_FLOAT, copy=False).tofile(fh)
        faces.astype(_INT, copy=False).tofile(fh)
        for k in range(1, verts.shape[0]):  # one frame at a time: no [K, V, 3] temporary
            (verts[k] - anchor).astype(_FLOAT, copy=False).tofile(fh)
    tmp.replace(path)
    return path
