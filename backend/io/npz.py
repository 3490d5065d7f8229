"""``.npz`` mesh sequences: ``verts [K, V, 3]`` + ``faces [F, 3]`` and optional ground truth.

The layout is the one of the bundled real rigs (``realdata/*.npz``): besides ``verts`` and
``faces``, any of ``joints [K, J, 3]``, ``parents [J]``, ``joint_names [J]``, ``weights [V, J]``,
``rest_verts [V, 3]``, ``times [K]``, ``fps`` and string metadata may be present; they end up in
:attr:`MeshSequence.extras` unchanged (a parent array that forms a forest stays a forest).

Arrays stored without compression (what :func:`save_npz` writes) are memory-mapped when only some
frames are requested, so a frame subset of a big file reads only those frames from disk.
"""

from __future__ import annotations

import logging
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from backend.io.common import (LIMITS, FrameSelection, build_sequence, check_vertex_frames, fps_from_times,
                               frame_indices)
from backend.sequence import PER_FRAME_EXTRAS, MeshSequence, SequenceError

log = logging.getLogger(__name__)
_RESERVED = ("verts", "faces", "fps", "name")
_READ_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, struct.error, RuntimeError, zlib.error,
                OverflowError, NotImplementedError)
_SMALL_MEMBER = 1 << 20  # compression ratios are only checked above this uncompressed size


def load_npz(path: str | Path, fps: float | None = None, frames: FrameSelection = None) -> MeshSequence:
    """Load a mesh sequence from an ``.npz`` file.

    Args:
        path: file with ``verts float [K, V, 3]`` and ``faces int [F, 3]``.
        fps: frames per second; overrides the file's ``fps`` field or the rate implied by ``times [K]``.
        frames: optional frame selection (slice or indices); per-frame extras follow it.
    Returns:
        A validated :class:`MeshSequence`; every other array of the file is in ``extras``
        (``joint_names`` as ``list[str]``, string scalars as ``str``).
    Raises:
        SequenceError: missing/corrupt/truncated file, missing ``verts``/``faces``, or a contract violation.
    """
    path = Path(path)
    with _open_archive(path, sliced="verts.npy") as zf:
        members = {(n[:-4] if n.endswith(".npy") else n): n for n in zf.namelist()}
        for key in ("verts", "faces"):
            if key not in members:
                raise SequenceError(f"{path}: the .npz has no '{key}' array (it holds: {sorted(members)})")
        verts_shape = _member_shape(path, zf, members["verts"])
        if len(verts_shape) != 3:
            raise SequenceError(f"{path}: 'verts' must have shape [K, V, 3], got {list(verts_shape)}")
        idx = None if frames is None else frame_indices(verts_shape[0], frames, path)
        check_vertex_frames(verts_shape[0] if idx is None else len(idx), verts_shape[1], path)
        arrays = {"verts": _read_member(path, zf, members["verts"], idx)}
        for key, member in members.items():
            if key == "verts":
                continue
            value = _read_member(path, zf, member)
            rows = idx if key in PER_FRAME_EXTRAS else None
            if rows is not None and value.ndim >= 1 and value.shape[0] == verts_shape[0]:
                value = value[rows]
            arrays[key] = value
    return sequence_from_npz_arrays(path, arrays, fps=fps)


def sequence_from_npz_arrays(path: str | Path, arrays: dict[str, np.ndarray], fps: float | None = None) -> MeshSequence:
    """The :class:`MeshSequence` an ``.npz`` holds, from its arrays (as :func:`read_npz_arrays` returns them).

    Args:
        path: the file the arrays came from (named in errors; its stem is the default name).
        arrays: ``verts float [K, V, 3]``, ``faces int [F, 3]``, optional ``fps`` (one number), ``name``
            (string) and ``times [K]``; every other array becomes an extra.
        fps: overrides the ``fps`` array or the rate implied by ``times``.
    Raises:
        SequenceError: ``verts``/``faces`` missing, ``fps`` not one number, or a contract violation.
    """
    path = Path(path)
    for key in ("verts", "faces"):
        if key not in arrays:
            raise SequenceError(f"{path}: the .npz has no '{key}' array (it holds: {sorted(arrays)})")
    extras = {key: _to_python(key, value) for key, value in arrays.items() if key not in ("verts", "faces")}
    file_fps = extras.pop("fps", None)
    name = extras.pop("name", None)
    if fps is None:
        if file_fps is not None:
            if isinstance(file_fps, np.ndarray) or not isinstance(file_fps, (int, float)):
                raise SequenceError(f"{path}: 'fps' must be one number, got an array of shape "
                                    f"{list(np.shape(file_fps))} ({np.asarray(file_fps).dtype})")
            fps = float(file_fps)
        elif "times" in extras:
            fps = fps_from_times(extras["times"])
    return build_sequence(arrays["verts"], arrays["faces"], path, fps, extras,
                          name=name if isinstance(name, str) and name else None)


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, each checked before it is read.

    Zip members are checked against :data:`~backend.io.common.LIMITS` (declared uncompressed size,
    compression ratio of members above 1 MB) and each ``.npy`` header against its member's size, so a
    zip bomb or a header declaring terabytes is refused before any allocation; no pickles are loaded.

    Raises:
        SequenceError: not a regular zip file, corrupt/truncated member, or a size above the limits.
    """
    path = Path(path)
    with _open_archive(path) as zf:
        return {(n[:-4] if n.endswith(".npy") else n): _read_member(path, zf, n) for n in zf.namelist()}


def save_npz(seq: MeshSequence, path: str | Path, compressed: bool = False) -> Path:
    """Write a sequence as ``.npz`` (``verts``, ``faces``, ``fps``, ``times``, ``name`` and its extras).

    Uncompressed by default so that :func:`load_npz` can memory-map frame subsets.
    Extras that are not plain arrays, numbers, strings or lists of those are skipped with a warning.
    Returns the written path.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "verts": np.asarray(seq.verts, dtype=np.float32),
        "faces": np.asarray(seq.faces, dtype=np.int32),
        "name": np.asarray(str(seq.name)),
    }
    if seq.fps is not None:
        arrays["fps"] = np.asarray(float(seq.fps), dtype=np.float64)
        arrays["times"] = (np.arange(seq.n_frames, dtype=np.float64) / float(seq.fps)).astype(np.float32)
    for key, value in seq.extras.items():
        if key in _RESERVED:
            log.warning("save_npz: extra %r clashes with a reserved field; skipped", key)
            continue
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            arr = np.asarray(None)
        if arr.dtype == object:
            log.warning("save_npz: extra %r (%s) is not an array, number or string; skipped",
                        key, type(value).__name__)
            continue
        arrays[key] = arr
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- internals

def _to_python(key: str, value: np.ndarray):
    """Turn string arrays and 0-d scalars into Python values; keep numeric arrays as they are."""
    if value.dtype.kind in "US":
        if value.ndim == 0:
            return str(value.item() if value.dtype.kind == "U" else value.item().decode("utf-8", "replace"))
        return [str(s) for s in value.reshape(-1).tolist()] if key.endswith("names") else value
    if value.ndim == 0 and value.dtype.kind in "iufb":
        return value.item()
    if key == "parents":
        return value.astype(np.int32, copy=False)
    return value


def _open_archive(path: Path, sliced: str | None = None) -> zipfile.ZipFile:
    """Open an ``.npz`` as a zip archive after checking it is a regular file and its members' sizes.

    ``sliced``: a member the caller reads through :func:`_read_member` only after checking its ``.npy`` header
    against the vertex ceiling for the frames it selects (``verts.npy`` in :func:`load_npz`); stored without
    compression it is memory-mapped, so its size on disk is not what gets loaded and is not checked here."""
    if not path.exists():
        raise SequenceError(f"{path}: no such file")
    if not path.is_file():
        raise SequenceError(f"{path}: not a regular file (a device, FIFO or socket); refusing to read it")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise SequenceError(f"{path}: not a readable .npz archive (truncated or corrupt?): {exc}") from exc
    try:
        total = 0
        for info in zf.infolist():
            if info.filename == sliced and info.compress_type == zipfile.ZIP_STORED:
                continue
            _check_member_size(path, info)
            total += info.file_size
        if total > 2 * LIMITS.max_array_bytes:
            raise SequenceError(f"{path}: the archive's members unpack to {total:,} bytes, above the limit of "
                                f"{2 * LIMITS.max_array_bytes:,} (zip bomb or a clip too large to load at once)")
    except BaseException:
        zf.close()
        raise
    return zf


def _check_member_size(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose declared uncompressed size or compression ratio is beyond :data:`LIMITS`."""
    if info.file_size > LIMITS.max_array_bytes + 4096:
        needed = -(-info.file_size // (LIMITS.max_array_bytes // LIMITS.max_vertex_frames))
        slicing = ("" if info.compress_type == zipfile.ZIP_STORED else
                   "; it is stored compressed, so selecting frames still unpacks all of it: re-save it without "
                   "compression (numpy.savez) to load a frame subset")
        raise SequenceError(f"{path}: member '{info.filename}' unpacks to {info.file_size:,} bytes, above the limit "
                            f"of {LIMITS.max_array_bytes:,} (a corrupt or hostile file, or a clip too large to load "
                            f"at once): set SPRIG_MAX_VERTEX_FRAMES={needed} or more to load it{slicing}")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _SMALL_MEMBER:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > LIMITS.max_compression_ratio:
            raise SequenceError(f"{path}: member '{info.filename}' expands {ratio:.0f}x ({info.compress_size:,} -> "
                                f"{info.file_size:,} bytes), above the limit of {LIMITS.max_compression_ratio:.0f}x "
                                "(zip bomb?)")


def _member_header(path: Path, zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data bytes)`` of an ``.npy`` member from its header only, checked against the member size."""
    info = zf.getinfo(member)
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = _read_header(fh, version)
            header_len = fh.tell()
    except _READ_ERRORS as exc:
        raise SequenceError(f"{path}: cannot read array '{member}' (truncated or corrupt file?): {exc}") from exc
    shape = tuple(int(s) for s in shape)
    if dtype.hasobject:
        raise SequenceError(f"{path}: cannot read array '{member}': it holds Python objects; refusing to unpickle")
    nbytes = dtype.itemsize
    for s in shape:
        nbytes *= s  # Python ints: no overflow for absurd shapes
    if nbytes > info.file_size - header_len:
        raise SequenceError(f"{path}: array '{member}' declares shape {list(shape)} ({nbytes:,} bytes of {dtype}) but "
                            f"the member holds {max(info.file_size - header_len, 0):,} bytes of data "
                            "(corrupt or truncated file)")
    return shape, dtype, nbytes


def _member_shape(path: Path, zf: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    """Shape of an ``.npy`` member, read from its header only."""
    return _member_header(path, zf, member)[0]


def _read_header(fh, version: tuple[int, int]):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    # numpy writes 3.0 only for utf-8 field names; its header layout is that of 2.0
    return np.lib.format.read_array_header_2_0(fh)


def _read_member(path: Path, zf: zipfile.ZipFile, member: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Read one ``.npy`` member; with ``rows`` and no compression, only those rows are read (memmap)."""
    info = zf.getinfo(member)
    _member_header(path, zf, member)
    try:
        if rows is not None and info.compress_type == zipfile.ZIP_STORED:
            mapped = _memmap_stored(path, info)
            if mapped is not None:
                return np.array(mapped[rows])
        with zf.open(member) as fh:
            arr = np.lib.format.read_array(fh, allow_pickle=False)
        return arr if rows is None else arr[rows]
    except SequenceError:
        raise
    except _READ_ERRORS as exc:
        raise SequenceError(f"{path}: cannot read array '{member}' (truncated or corrupt file?): {exc}") from exc
    except MemoryError as exc:
        raise SequenceError(f"{path}: not enough memory to read array '{member}'") from exc


def _memmap_stored(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member in place; None when that is not possible."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise SequenceError(f"{path}: corrupt zip entry for '{info.filename}'")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_start = info.header_offset + 30 + name_len + extra_len
        fh.seek(data_start)
        version = np.lib.format.read_magic(fh)
        shape, fortran, dtype = _read_header(fh, version)
        offset = fh.tell()
    if dtype.hasobject:
        raise SequenceError(f"{path}: array '{info.filename}' holds Python objects; refusing to unpickle")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - data_start + nbytes > info.file_size or data_start + info.file_size > path.stat().st_size:
        raise SequenceError(f"{path}: array '{info.filename}' is truncated "
                            f"(needs {nbytes} bytes of data, the entry holds {info.file_size - (offset - data_start)})")
    if nbytes == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                     order="F" if fortran else "C")
