"""Folders of per-frame ``.obj`` / ``.ply`` meshes (one file per frame), and single mesh files.

Files are ordered naturally (``frame_2`` before ``frame_10``). Vertex order is kept exactly as in the
files: OBJ is read by a small parser here (texture/normal indices are ignored, so UV seams do not
split vertices), PLY through trimesh with ``process=False``. Quads and n-gons are triangulated as
fans ``(v0, v_i, v_i+1)``; faces are read from the first frame only, so the triangulation is the
same on every frame.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np

from backend.io.common import (LIMITS, FrameSelection, build_sequence, check_size, check_vertex_frames,
                               frame_indices, read_regular_file)
from backend.sequence import MeshSequence, SequenceError

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".ply")
_MAX_INDEX = 2**31 - 1  # faces are stored as int32
_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame_2`` < ``frame_10``."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def list_frame_files(folder: str | Path) -> list[Path]:
    """The per-frame mesh files of a folder in natural order.

    Raises:
        SequenceError: missing folder, no mesh files, or a mix of ``.obj`` and ``.ply``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SequenceError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES]
    if not files:
        raise SequenceError(f"{folder}: the folder holds no .obj or .ply frame files")
    kinds = {p.suffix.lower() for p in files}
    if len(kinds) > 1:
        raise SequenceError(f"{folder}: the folder mixes .obj and .ply files; keep one format per sequence")
    return sorted(files, key=lambda p: natural_key(p.name))


def missing_frame_numbers(files: list[Path]) -> list[int]:
    """Frame numbers missing from a numbered file list (``walk_0009.obj``, ``walk_0011.obj``: ``[10]``).

    Each stem's last number is its frame number; the step is the smallest difference between consecutive
    numbers (so a folder written every other frame has no gap). Empty when the stems do not all share one
    prefix and suffix around a number, or when fewer than three files are numbered.
    """
    numbered = [re.fullmatch(r"(.*?)(\d+)(\D*)", p.stem) for p in files]
    if len(files) < 3 or not all(numbered) or len({(m.group(1), m.group(3)) for m in numbered}) != 1:
        return []
    numbers = np.unique([int(m.group(2)) for m in numbered])
    step = int(np.diff(numbers).min()) if len(numbers) > 1 else 1
    expected = np.arange(numbers[0], numbers[-1] + 1, step)
    return [int(n) for n in np.setdiff1d(expected, numbers)]


def read_obj(path: str | Path, with_faces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read vertex positions (and triangulated faces) of a Wavefront OBJ file.

    Returns:
        ``verts float32 [V, 3]`` in file order, and ``faces int32 [F, 3]`` (None if ``with_faces`` is False).
        Polygons become fans; ``v/vt/vn`` references use the position index; negative (relative)
        indices are resolved.
    Raises:
        SequenceError: unreadable file, malformed vertex/face line, face index out of range.
    """
    verts, faces, _ = _parse_obj(Path(path), with_faces)
    return verts, faces


def _parse_obj(path: Path, with_faces: bool) -> tuple[np.ndarray, np.ndarray | None, int]:
    """:func:`read_obj` plus the number of polygon (``f``) lines, counted even when faces are skipped."""
    data = read_regular_file(path)
    vert_tokens: list[list[bytes]] = []
    tris: list[tuple[int, int, int]] = []
    n_polygons = 0
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        if line[0] in (32, 9):  # leading blank
            line = line.lstrip()
        head = line[:2]
        if head == b"v " or head == b"v\t":
            vert_tokens.append(line.split()[1:4])
        elif head == b"f " or head == b"f\t":
            n_polygons += 1
            if not with_faces:
                continue
            refs = line.split()[1:]
            if len(refs) < 3:
                raise SequenceError(f"{path}:{lineno}: a face needs at least 3 vertices: {line[:80]!r}")
            n_so_far = len(vert_tokens)
            try:
                ids = [int(r.split(b"/", 1)[0]) for r in refs]
            except ValueError as exc:
                raise SequenceError(f"{path}:{lineno}: malformed face line {line[:80]!r}") from exc
            if max(ids) > _MAX_INDEX or min(ids) < -_MAX_INDEX:
                raise SequenceError(f"{path}:{lineno}: face index out of range (beyond 2^31) in {line[:80]!r}")
            if 0 in ids:
                raise SequenceError(f"{path}:{lineno}: OBJ indices start at 1, found 0 in {line[:80]!r}")
            ids = [i - 1 if i > 0 else n_so_far + i for i in ids]  # 1-based, or relative when negative
            if min(ids) < 0:
                raise SequenceError(f"{path}:{lineno}: relative face index out of range in {line[:80]!r}")
            for i in range(1, len(ids) - 1):
                tris.append((ids[0], ids[i], ids[i + 1]))
    if not vert_tokens:
        raise SequenceError(f"{path}: no vertices ('v' lines) found; not an OBJ mesh or the file is empty")
    try:
        verts = np.array(vert_tokens, dtype=np.float64)
    except ValueError as exc:
        bad = next((i for i, t in enumerate(vert_tokens) if len(t) < 3), None)
        where = f" (vertex {bad + 1} has fewer than 3 coordinates)" if bad is not None else ""
        raise SequenceError(f"{path}: malformed vertex line{where}; truncated or corrupt file?") from exc
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise SequenceError(f"{path}: malformed vertex lines (expected 'v x y z')")
    faces = None
    if with_faces:
        faces = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
        if faces.size and faces.max() >= len(verts):
            raise SequenceError(f"{path}: face index {int(faces.max()) + 1} is out of range "
                                f"(the file has {len(verts)} vertices)")
        faces = faces.astype(np.int32)
    return verts.astype(np.float32), faces, n_polygons


def write_obj(path: str | Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Write ``verts [V, 3]`` and ``faces [F, 3]`` (0-based) as an OBJ file."""
    verts = np.asarray(verts, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64) + 1
    with open(path, "w", encoding="ascii") as fh:
        fh.write("".join("v %.9g %.9g %.9g\n" % tuple(v) for v in verts.tolist()))
        fh.write("".join("f %d %d %d\n" % tuple(f) for f in faces.tolist()))


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY mesh with trimesh (``process=False``: vertex order kept). Returns verts [V,3], faces [F,3]."""
    import trimesh

    path = Path(path)
    data = read_regular_file(path)
    _check_ply_header(path, data)
    try:
        mesh = trimesh.load_mesh(io.BytesIO(data), file_type="ply", process=False)
    except SequenceError:
        raise
    except Exception as exc:  # trimesh raises many different types for bad files
        raise SequenceError(f"{path}: cannot parse PLY file (truncated or corrupt?): {exc}") from exc
    verts = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float32)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    if verts.ndim != 2 or len(verts) == 0:
        raise SequenceError(f"{path}: the PLY file holds no vertices")
    return verts, faces.reshape(-1, 3).astype(np.int32)


def _check_ply_header(path: Path, data: bytes) -> None:
    """Check the element counts a PLY header declares against the bytes that follow it (before parsing).

    Every binary row needs at least its fixed-size properties (a list at least its count), every ASCII
    value at least one character, so a count the body cannot hold is a corrupt or hostile header.

    Raises:
        SequenceError: no header end, malformed element line, or counts the file cannot back.
    """
    end = data.find(b"end_header", 0, 1 << 16)
    if not data.startswith(b"ply") or end < 0:
        raise SequenceError(f"{path}: not a PLY file (no 'ply' magic or no 'end_header' in the first 64 KB)")
    body = len(data) - data.find(b"\n", end) - 1
    binary, elements = False, []  # [name, count, min bytes per row, values per row]
    for raw in data[:end].splitlines():
        words = raw.decode("ascii", "replace").split()
        if not words:
            continue
        if words[0] == "format" and len(words) > 1:
            binary = words[1].startswith("binary")
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise SequenceError(f"{path}: malformed PLY element line {raw[:80]!r}")
            elements.append([words[1], int(words[2]), 0, 0])
        elif words[0] == "property" and elements:
            size = _PLY_SIZES.get(words[2] if words[1] == "list" and len(words) > 2 else words[1], 1)
            elements[-1][2] += size
            elements[-1][3] += 1
    need = 0
    for name, count, row_bytes, n_values in elements:
        if name == "vertex":
            check_size(count, LIMITS.max_vertex_frames, "PLY vertex count", path)
        need += count * (row_bytes if binary else 2 * max(n_values, 1) - 1)
    if need > body:
        raise SequenceError(f"{path}: the PLY header declares {', '.join(f'{c:,} {n}' for n, c, _, _ in elements)}, "
                            f"which needs at least {need:,} bytes but the file holds {body:,} after the header "
                            "(truncated or corrupt file)")


def write_ply(path: str | Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Write a binary PLY mesh (vertex order kept)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    mesh.export(str(path), file_type="ply")


def read_mesh(path: str | Path, with_faces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one ``.obj``/``.ply`` mesh: ``verts float32 [V, 3]``, ``faces int32 [F, 3]`` (or None)."""
    verts, faces, _ = _read_frame(Path(path), with_faces)
    return verts, faces


def _read_frame(path: Path, with_faces: bool) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``(verts, faces or None, polygon count)``; the count lets later frames be checked cheaply."""
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return _parse_obj(path, with_faces)
    if suffix == ".ply":
        verts, faces = read_ply(path)
        return verts, (faces if with_faces else None), len(faces)
    raise SequenceError(f"{path}: unsupported mesh file type {suffix!r} (use .obj or .ply)")


def load_mesh_file(path: str | Path, fps: float | None = None) -> MeshSequence:
    """A single ``.obj``/``.ply`` mesh as a one-frame sequence."""
    verts, faces = read_mesh(path)
    return build_sequence(verts[None], faces, path, fps)


def load_mesh_folder(folder: str | Path, fps: float | None = None,
                     frames: FrameSelection = None) -> MeshSequence:
    """Load a folder of per-frame ``.obj`` or ``.ply`` files as one sequence.

    Args:
        folder: directory with one mesh file per frame (natural order).
        fps: frames per second (files carry none).
        frames: optional selection of frames (indices into the sorted file list); only those are read.
    Returns:
        :class:`MeshSequence` ``verts float32 [K, V, 3]``, faces of the first selected frame;
        ``extras["frame_files"]`` lists the file names used, ``extras["missing_frames"]`` the numbers missing
        from the files' numbering (:func:`missing_frame_numbers`; logged as a warning: the clip plays without
        those frames).
    Raises:
        SequenceError: no frames, unreadable file, or a vertex count that changes (names the first bad file).
    """
    folder = Path(folder)
    files = list_frame_files(folder)
    idx = frame_indices(len(files), frames, folder)
    first = files[idx[0]]
    v0, faces, n_poly = _read_frame(first, with_faces=True)
    check_vertex_frames(len(idx), v0.shape[0], folder)
    verts = np.empty((len(idx), v0.shape[0], 3), dtype=np.float32)
    verts[0] = v0
    for row, k in enumerate(idx[1:], start=1):
        vk, _, n_poly_k = _read_frame(files[k], with_faces=False)
        if vk.shape[0] != v0.shape[0]:
            raise SequenceError(
                f"{folder}: vertex count changes at frame {int(k)} ({files[k].name}: {vk.shape[0]} vertices) "
                f"but frame {int(idx[0])} ({first.name}) has {v0.shape[0]}; topology must be constant")
        if n_poly_k != n_poly:
            raise SequenceError(
                f"{folder}: face count changes at frame {int(k)} ({files[k].name}: {n_poly_k} faces) but frame "
                f"{int(idx[0])} ({first.name}) has {n_poly}; truncated file or different topology?")
        verts[row] = vk
    log.info("read %d frames from %s", len(idx), folder)
    missing = missing_frame_numbers(files)
    if missing:
        log.warning("%s: the frame files skip %s %s; the clip plays without %s", folder,
                    "numbers" if len(missing) > 1 else "number", _listed(missing),
                    "them" if len(missing) > 1 else "it")
    return build_sequence(verts, faces, folder, fps, {"frame_files": [files[k].name for k in idx],
                                                      "missing_frames": missing}, name=folder.resolve().name)


def _listed(numbers: list[int], shown: int = 8) -> str:
    """``10, 11, 14`` (the first ``shown``, then how many more)."""
    head = ", ".join(str(n) for n in numbers[:shown])
    return head + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


def save_mesh_folder(seq: MeshSequence, folder: str | Path, fmt: str = "obj") -> Path:
    """Write one ``.obj`` or ``.ply`` file per frame (``<name>_0000.obj`` ...) into ``folder``."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("obj", "ply"):
        raise ValueError(f"unsupported frame format {fmt!r} (use 'obj' or 'ply')")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(seq.n_frames - 1)))
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", seq.name) or "frame"
    writer = write_obj if fmt == "obj" else write_ply
    for k in range(seq.n_frames):
        writer(folder / f"{stem}_{k:0{width}d}.{fmt}", seq.verts[k], seq.faces)
    return folder
