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
from pathlib import Path

import numpy as np

from backend.io.common import FrameSelection, build_sequence, fps_from_times, frame_indices
from backend.sequence import PER_FRAME_EXTRAS, MeshSequence, SequenceError

log = logging.getLogger(__name__)
_RESERVED = ("verts", "faces", "fps", "name")


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
    if not path.is_file():
        raise SequenceError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise SequenceError(f"{path}: not a readable .npz archive (truncated or corrupt?): {exc}") from exc
    with zf:
        members = {(n[:-4] if n.endswith(".npy") else n): n for n in zf.namelist()}
        for key in ("verts", "faces"):
            if key not in members:
                raise SequenceError(f"{path}: the .npz has no '{key}' array (it holds: {sorted(members)})")
        verts_shape = _member_shape(path, zf, members["verts"])
        if len(verts_shape) != 3:
            raise SequenceError(f"{path}: 'verts' must have shape [K, V, 3], got {list(verts_shape)}")
        idx = None if frames is None else frame_indices(verts_shape[0], frames, path)
        verts = _read_member(path, zf, members["verts"], idx)
        faces = _read_member(path, zf, members["faces"])
        extras: dict = {}
        for key, member in members.items():
            if key in ("verts", "faces"):
                continue
            rows = idx if key in PER_FRAME_EXTRAS else None
            value = _read_member(path, zf, member)
            if rows is not None and value.ndim >= 1 and value.shape[0] == verts_shape[0]:
                value = value[rows]
            extras[key] = _to_python(key, value)

    file_fps = extras.pop("fps", None)
    name = extras.pop("name", None)
    if fps is None:
        if file_fps is not None:
            fps = float(file_fps)
        elif "times" in extras:
            fps = fps_from_times(extras["times"])
    return build_sequence(verts, faces, path, fps, extras, name=name if isinstance(name, str) and name else None)


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


def _member_shape(path: Path, zf: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    """Shape of an ``.npy`` member, read from its header only."""
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, _ = _read_header(fh, version)
        return tuple(int(s) for s in shape)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, struct.error) as exc:
        raise SequenceError(f"{path}: cannot read array '{member}' (truncated or corrupt file?): {exc}") from exc


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
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, struct.error, RuntimeError) as exc:
        raise SequenceError(f"{path}: cannot read array '{member}' (truncated or corrupt file?): {exc}") from exc


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
