"""Mesh-sequence loaders and writers.

:func:`load_sequence` picks the reader from the path: a folder of per-frame ``.obj``/``.ply`` files,
a single ``.obj``/``.ply`` mesh, ``.npz``, DeformingThings4D ``.anime``, or glTF ``.glb``/``.gltf``.
:func:`save_sequence` writes ``.npz``, ``.anime``, ``.glb`` (morph-target animation) or a folder of
``.obj``/``.ply`` frames. :func:`save_rigged_gltf` writes a rig as a skinned, animated GLB.

Every reader raises :class:`~backend.sequence.SequenceError` naming the file and the problem for
missing, truncated or corrupt input and for sequences that break the MeshSequence contract.
"""

from __future__ import annotations

from pathlib import Path

from backend.io.anime import load_anime, read_anime_header, save_anime
from backend.io.common import FrameSelection, fps_from_times, frame_indices
from backend.io.gltf import load_gltf, save_morph_gltf, save_rigged_gltf, top_k_influences
from backend.io.mesh_folder import (list_frame_files, load_mesh_file, load_mesh_folder, natural_key, read_obj,
                                    save_mesh_folder, write_obj)
from backend.io.npz import load_npz, read_npz_arrays, save_npz
from backend.sequence import MeshSequence, SequenceError

__all__ = [
    "SUPPORTED_SUFFIXES", "load_sequence", "save_sequence", "load_npz", "read_npz_arrays", "save_npz", "load_anime", "save_anime",
    "read_anime_header", "load_gltf", "save_morph_gltf", "save_rigged_gltf", "top_k_influences",
    "load_mesh_folder", "load_mesh_file", "save_mesh_folder", "list_frame_files", "natural_key", "read_obj",
    "write_obj", "fps_from_times", "frame_indices", "FrameSelection",
]

SUPPORTED_SUFFIXES = (".npz", ".anime", ".glb", ".gltf", ".obj", ".ply")


def load_sequence(path: str | Path, fps: float | None = None, *, frames: FrameSelection = None,
                  animation: int | str | None = None) -> MeshSequence:
    """Load an animated mesh from a file or folder, choosing the reader by extension.

    Args:
        path: ``.npz``, ``.anime``, ``.glb``/``.gltf``, a single ``.obj``/``.ply``, or a folder of
            per-frame ``.obj``/``.ply`` files.
        fps: frames per second. For glTF it is the sampling rate (default: the animation's keyframe
            rate, or 30); for the other formats it overrides what the file says (``.npz`` ``fps`` /
            ``times``), or sets it where the format stores none.
        frames: optional frame selection (slice or indices); for ``.anime``, folders and uncompressed
            ``.npz`` only the selected frames are read from disk.
        animation: glTF only: which animation (index or name) to sample; default the first.
    Returns:
        A validated :class:`MeshSequence` (``verts float32 [K, V, 3]``, ``faces int32 [F, 3]``).
    Raises:
        SequenceError: unknown format, missing/truncated/corrupt file, or a contract violation.
    """
    path = Path(path)
    if path.is_dir():
        return load_mesh_folder(path, fps=fps, frames=frames)
    if not path.exists():
        raise SequenceError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if animation is not None and suffix not in (".glb", ".gltf"):
        raise SequenceError(f"{path}: 'animation' only applies to glTF files")
    if suffix == ".npz":
        return load_npz(path, fps=fps, frames=frames)
    if suffix == ".anime":
        return load_anime(path, fps=fps, frames=frames)
    if suffix in (".glb", ".gltf"):
        return load_gltf(path, fps=fps, frames=frames, animation=animation)
    if suffix in (".obj", ".ply"):
        if frames is not None:
            frame_indices(1, frames, path)
        return load_mesh_file(path, fps=fps)
    raise SequenceError(f"{path}: unsupported file type {suffix!r}; supported: "
                        f"{', '.join(SUPPORTED_SUFFIXES)} or a folder of per-frame .obj/.ply files")


def save_sequence(seq: MeshSequence, path: str | Path) -> Path:
    """Write a sequence; the format follows the path.

    ``.npz`` (all extras kept), ``.anime`` (geometry only), ``.glb`` (morph-target animation), or a
    path without suffix: a folder of per-frame ``.obj`` files (``<folder>/<name>_0000.obj`` ...).
    Returns the written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return save_npz(seq, path)
    if suffix == ".anime":
        return save_anime(seq, path)
    if suffix == ".glb":
        return save_morph_gltf(seq, path)
    if suffix == "" or path.is_dir():
        return save_mesh_folder(seq, path, fmt="obj")
    raise SequenceError(f"{path}: cannot write {suffix!r}; use .npz, .anime, .glb or a folder path")
