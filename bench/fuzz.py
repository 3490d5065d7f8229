"""Seeded fuzzing of every way a hostile file or request line enters the backend.

Generates hostile inputs (``.npz``, ``.glb``, ``.gltf`` with external buffers, OBJ folders, ``.ply``,
``.anime``, model checkpoints, ``sprig eval`` inputs), each a valid small file bent by one structural
mutation (huge declared counts, keyframe-time bombs, zip bombs, buffer URIs naming devices, FIFOs or
files outside the folder, NaN/overflowing values, wrong types) or by byte-level damage (flips,
truncation, insertions). Each case runs in a persistent worker process under an address-space limit
and a per-case alarm; a worker that dies or stops answering is replaced. Outcomes per case:

* ``ok``: loaded, and the result passed its checks (finite, in range, a GLB round trip);
* ``clean``: refused with the project's error (``SequenceError``, ``CheckpointError``, ...) and a message;
* ``traceback``: any other exception (or a dead worker);
* ``hang``: no answer within the timeout (30 s);
* ``wrong``: accepted but the output is bad, or the input file was modified.

Peak RSS is measured per case (the worker's high-water mark is reset before each case). Separate,
slower parts run the ``sprig`` CLI end to end on a slice of the files, send hostile lines to the
JSON-lines server, and SIGKILL ``sprig rig`` mid-run to check that an existing output survives.

    python -m bench.fuzz --cases 10000 --seed 0            # the loaders (worker processes)
    python -m bench.fuzz --cases 2000 --cli 40 --server 400 --kill 8
    make fuzz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("fuzz")

REPO = Path(__file__).resolve().parents[1]
KINDS = ("npz", "glb", "gltf", "obj", "ply", "anime", "checkpoint", "eval")
OUTCOMES = ("ok", "clean", "traceback", "hang", "wrong")
CASE_TIMEOUT_S = 30.0
WORKER_ADDRESS_LIMIT = 8 << 30  # RLIMIT_AS of a worker: torch maps ~2-3 GB of address space at import
RSS_TARGET_MB = 1024.0


# ============================================================================ base files

def base_sequence(rng: random.Random, n_frames: int | None = None):
    """A small moving grid mesh: ``verts float32 [K, V, 3]``, ``faces int32 [F, 3]``."""
    from backend.sequence import MeshSequence

    side = rng.randint(3, 6)
    n_frames = n_frames or rng.randint(2, 6)
    u, v = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side), indexing="ij")
    grid = np.stack([u.ravel(), v.ravel(), 0.1 * np.sin(3 * u.ravel())], axis=1)
    faces = []
    for i in range(side - 1):
        for j in range(side - 1):
            a, b, c, d = i * side + j, (i + 1) * side + j, (i + 1) * side + j + 1, i * side + j + 1
            faces += [(a, b, c), (a, c, d)]
    t = np.arange(n_frames)[:, None, None]
    verts = grid[None] + 0.05 * t * np.array([0.0, 0.0, 1.0]) * grid[None, :, :1]
    return MeshSequence(verts.astype(np.float32), np.asarray(faces, np.int32), fps=30.0, name="fuzz")


def _simple_rig(seq):
    """Two joints along x and weights blending between them: what :func:`save_rigged_gltf` needs."""
    anchor = seq.verts[0]
    joints = np.array([[0.0, 0.5, 0.0], [1.0, 0.5, 0.0]])
    w1 = np.clip(anchor[:, 0], 0, 1)
    weights = np.stack([1 - w1, w1], axis=1)
    K = seq.n_frames
    T = np.broadcast_to(np.eye(4), (K, 2, 4, 4)).copy()
    T[:, 1, 2, 3] = 0.05 * np.arange(K)
    return anchor, joints, np.array([-1, 0]), weights, T


# ============================================================================ byte-level damage

def damage_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One of: flip bytes, truncate, insert junk, zero a run, duplicate a run."""
    data = bytearray(data)
    how = rng.choice(("flip", "truncate", "insert", "zero", "duplicate"))
    if not data:
        return bytes(rng.randbytes(16)), "junk"
    if how == "flip":
        for _ in range(rng.choice((1, 1, 2, 8, 64))):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del data[rng.randrange(len(data)):]
    elif how == "insert":
        i = rng.randrange(len(data))
        data[i:i] = rng.randbytes(rng.choice((1, 4, 64, 1000)))
    elif how == "zero":
        i = rng.randrange(len(data))
        n = rng.choice((4, 16, 256))
        data[i:i + n] = bytes(len(data[i:i + n]))
    else:
        i = rng.randrange(len(data))
        data[i:i] = data[i:i + rng.choice((8, 64, 512))]
    return bytes(data), f"bytes-{how}"


HOSTILE_VALUES = (None, -1, 0, 2**31, 2**63, 10**20, 1e308, -1e308, 1e36, 1e-40, "x", "", [], {}, [1, 2],
                  [[0]] * 3, True, 3.5, {"a": 1})


def mutate_json_value(rng: random.Random, obj):
    """Replace one randomly chosen leaf (or container) of a JSON tree with a hostile value, in place."""
    path = []
    node = obj
    for _ in range(rng.randint(1, 6)):
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
        elif isinstance(node, list) and node:
            key = rng.randrange(len(node))
        else:
            break
        path.append((node, key))
        node = node[key]
    if not path:
        return "json-noop"
    parent, key = path[-1]
    value = rng.choice(HOSTILE_VALUES)
    parent[key] = value
    return f"json-{key}={str(value)[:12]}"


# ============================================================================ npz

def _npy_bytes(shape, descr: str = "<f4", data: bytes = b"") -> bytes:
    """A ``.npy`` stream whose header declares ``shape`` (the data may be shorter: a lying header)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _npz_from(arrays: dict, compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


_BOMB_CACHE: dict[tuple, bytes] = {}


def _zip_bomb(n_bytes: int, extra: dict) -> bytes:
    """An npz whose ``verts`` member inflates to ``n_bytes`` of zeros (built once per size, then cached)."""
    key = (n_bytes, tuple(sorted(extra)))
    if key not in _BOMB_CACHE:
        n_verts = max(4, n_bytes // (4 * 3 * 4))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            with zf.open("verts.npy", "w", force_zip64=True) as fh:
                fh.write(_npy_bytes((4, n_verts, 3)))
                chunk = bytes(1 << 20)
                left = 4 * n_verts * 3 * 4
                while left > 0:
                    fh.write(chunk[:min(left, len(chunk))])
                    left -= len(chunk)
            for name, arr in extra.items():
                b = io.BytesIO()
                np.save(b, arr)
                zf.writestr(name + ".npy", b.getvalue())
        _BOMB_CACHE[key] = buf.getvalue()
    return _BOMB_CACHE[key]


def _flip_deflate(rng: random.Random, data: bytes) -> bytes:
    """Flip bytes inside the compressed data of a deflated zip (past the first local header)."""
    data = bytearray(data)
    lo, hi = 64, max(65, len(data) // 2)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(lo, hi)
        data[i] ^= 0xFF
    return bytes(data)


def make_npz(rng: random.Random, folder: Path) -> tuple[Path, str]:
    seq = base_sequence(rng)
    arrays = {"verts": seq.verts, "faces": seq.faces, "fps": np.float64(30.0)}
    path = folder / "case.npz"
    m = rng.choice(("bytes", "bytes", "deflate", "huge_header", "huge_header_k", "bomb", "fps", "nonfinite",
                    "scale", "faces", "shape", "dtype", "missing", "extras", "times", "big_k_frames"))
    compressed = rng.random() < 0.5
    if m == "bytes":
        data, m = damage_bytes(rng, _npz_from(arrays, compressed))
    elif m == "deflate":
        data = _flip_deflate(rng, _npz_from(arrays, True))
    elif m in ("huge_header", "huge_header_k"):
        shape = (rng.choice((10**6, 2**40, 10**12)), rng.choice((10**6, 4, 2**31)), 3) if m == "huge_header" \
            else (10**9, seq.n_verts, 3)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
            zf.writestr("verts.npy", _npy_bytes(shape, data=seq.verts.tobytes()))
            b = io.BytesIO()
            np.save(b, seq.faces)
            zf.writestr("faces.npy", b.getvalue())
        data = buf.getvalue()
    elif m == "bomb":
        data = _zip_bomb(rng.choice((300 << 20, 1600 << 20)), {"faces": seq.faces})
    elif m == "fps":
        arrays["fps"] = rng.choice((np.array([1, 2]), np.array("thirty"), np.float64(-5), np.float64(np.nan),
                                    np.float64(np.inf), np.zeros((2, 2)), np.float64(1e-300)))
        data = _npz_from(arrays, compressed)
    elif m == "nonfinite":
        v = seq.verts.copy()
        v.flat[rng.randrange(v.size)] = rng.choice((np.nan, np.inf, -np.inf))
        arrays["verts"] = v
        data = _npz_from(arrays, compressed)
    elif m == "scale":
        arrays["verts"] = seq.verts * np.float32(rng.choice((1e36, 1e30, 1e20, 1e13, 1e-30, 1e-20, 0.0)))
        data = _npz_from(arrays, compressed)
    elif m == "faces":
        f = seq.faces.astype(np.int64)
        f.flat[rng.randrange(f.size)] = rng.choice((-1, seq.n_verts, 2**40, -2**40))
        arrays["faces"] = rng.choice((f, f.astype(np.float64) + 0.5, np.zeros((0, 3)), f[:, :2], f.astype(np.uint64)))
        data = _npz_from(arrays, compressed)
    elif m == "shape":
        arrays["verts"] = rng.choice((seq.verts[0], seq.verts[..., :2], seq.verts[None], seq.verts[:, :3],
                                      np.zeros((0, 5, 3), np.float32), seq.verts.reshape(-1)))
        data = _npz_from(arrays, compressed)
    elif m == "dtype":
        arrays["verts"] = rng.choice((seq.verts.astype(np.complex64), seq.verts.astype("U8"),
                                      seq.verts.astype(np.float16), seq.verts.astype(bool)))
        data = _npz_from(arrays, compressed)
    elif m == "missing":
        del arrays[rng.choice(("verts", "faces"))]
        data = _npz_from(arrays, compressed)
    elif m == "extras":
        arrays[rng.choice(("joints", "parents", "joint_names", "weights", "name", "rest_verts"))] = rng.choice((
            np.zeros((0,)), np.array(["a", "b"]), np.full((3, 3), np.nan), np.arange(7), np.array(3.0)))
        data = _npz_from(arrays, compressed)
    elif m == "times":
        arrays["times"] = rng.choice((np.full(seq.n_frames, np.nan), np.zeros(seq.n_frames),
                                      np.arange(seq.n_frames)[::-1] * 1.0, np.array([1e308, -1e308]),
                                      np.arange(seq.n_frames) * 1e9))
        del arrays["fps"]
        data = _npz_from(arrays, compressed)
    else:  # many frames declared by a lying stored header, read with a frame subset
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("verts.npy", _npy_bytes((2**33, seq.n_verts, 3), data=seq.verts.tobytes()))
            b = io.BytesIO()
            np.save(b, seq.faces)
            zf.writestr("faces.npy", b.getvalue())
        data = buf.getvalue()
    path.write_bytes(data)
    return path, m


# ============================================================================ glTF / GLB

def _split_glb(data: bytes) -> tuple[dict, bytearray]:
    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + json_len])
    bin_len = struct.unpack_from("<I", data, 20 + json_len)[0]
    start = 20 + json_len + 8
    return doc, bytearray(data[start:start + bin_len])


def _join_glb(doc: dict, blob: bytes) -> bytes:
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    blob = bytes(blob) + b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text
            + struct.pack("<II", len(blob), 0x004E4942) + blob)


def _add_accessor(doc: dict, blob: bytearray, values: np.ndarray, kind: str = "SCALAR") -> int:
    """Append float32 ``values`` to the binary blob as a new bufferView + accessor; returns the accessor."""
    blob.extend(b"\0" * (-len(blob) % 4))
    raw = np.asarray(values, "<f4").tobytes()
    doc.setdefault("bufferViews", []).append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(raw)})
    blob.extend(raw)
    doc["buffers"][0]["byteLength"] = len(blob)
    n = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[kind]
    doc.setdefault("accessors", []).append({"bufferView": len(doc["bufferViews"]) - 1, "componentType": 5126,
                                            "count": int(np.size(values) // n), "type": kind})
    return len(doc["accessors"]) - 1


def _base_glb(rng: random.Random, folder: Path) -> bytes:
    from backend.io import save_morph_gltf, save_rigged_gltf

    seq = base_sequence(rng)
    path = folder / "base.glb"
    if rng.random() < 0.5:
        save_morph_gltf(seq, path)
    else:
        anchor, joints, parents, weights, T = _simple_rig(seq)
        save_rigged_gltf(path, anchor, seq.faces, joints, parents, None, weights, T)
    data = path.read_bytes()
    path.unlink()
    return data


def _mutate_gltf_doc(rng: random.Random, doc: dict, blob: bytearray, folder: Path) -> str:
    """Apply one structural mutation to a parsed glTF (JSON dict + binary blob); returns its name."""
    accessors = doc.get("accessors", [])
    m = rng.choice(("count", "count_noview", "time_bomb", "uri", "stride", "view", "scale", "json", "json",
                    "sparse", "node_graph", "matrix"))
    if m == "count":
        accessors[rng.randrange(len(accessors))]["count"] = rng.choice((10**8, 3 * 10**8, 2**31, -1, 2**62))
    elif m == "count_noview":
        pos = doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
        acc = accessors[pos]
        acc.pop("bufferView", None)
        acc["count"] = rng.choice((10**8, 3 * 10**8, 10**7, 2**40))
    elif m == "time_bomb" and doc.get("animations"):
        sampler = doc["animations"][0]["samplers"][0]
        n = accessors[sampler["input"]]["count"]
        end = rng.choice((1e6, 1e9, 3e38, 1e5))
        sampler["input"] = _add_accessor(doc, blob, np.linspace(0.0, end, n))
        m = f"time_bomb-{end:g}"
    elif m == "uri":
        target = rng.choice(("/etc/passwd", "../secret.bin", "/dev/zero", "/dev/urandom", "fifo.bin",
                             "link.bin", "http://example.com/x.bin", "file:///etc/passwd", "%2e%2e/secret.bin",
                             "sub/../../secret.bin", "missing.bin", "data:application/octet-stream;base64,@@@"))
        if target == "fifo.bin":
            os.mkfifo(folder / "fifo.bin")
        elif target == "link.bin":
            os.symlink(rng.choice(("/dev/zero", "/etc/passwd", "/dev/urandom")), folder / "link.bin")
        doc["buffers"][0]["uri"] = target
        m = f"uri-{target[:20]}"
    elif m == "stride":
        view = doc["bufferViews"][rng.randrange(len(doc["bufferViews"]))]
        view["byteStride"] = rng.choice((1, 2, 0, 255, 2**31))
    elif m == "view":
        view = doc["bufferViews"][rng.randrange(len(doc["bufferViews"]))]
        key = rng.choice(("byteOffset", "byteLength", "buffer"))
        view[key] = rng.choice((-4, 2**31, 2**62, 7, 99))
    elif m == "scale":
        node = doc["nodes"][0]
        node["scale"] = [rng.choice((1e36, 1e20, 1e-30, 0.0))] * 3
        node.pop("matrix", None)
    elif m == "sparse":
        pos = doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
        idx = _add_accessor(doc, blob, np.zeros(1))
        view = doc["accessors"][idx]["bufferView"]
        accessors[pos]["sparse"] = {"count": rng.choice((1, 10**9, -1)),
                                    "indices": {"bufferView": view, "componentType": 5125},
                                    "values": {"bufferView": view}}
    elif m == "node_graph":
        nodes = doc["nodes"]
        i = rng.randrange(len(nodes))
        nodes[i]["children"] = rng.choice(([i], [0], [len(nodes) + 5], [-1]))
    elif m == "matrix":
        doc["nodes"][0]["matrix"] = rng.choice(([1e36] * 16, [0.0] * 16, [1.0] * 15, [1.0] * 16))
        doc["nodes"][0].pop("translation", None)
    else:
        m = mutate_json_value(rng, doc)
    return m


def make_glb(rng: random.Random, folder: Path) -> tuple[Path, str]:
    data = _base_glb(rng, folder)
    path = folder / "case.glb"
    if rng.random() < 0.3:
        data, m = damage_bytes(rng, data)
    else:
        doc, blob = _split_glb(data)
        m = _mutate_gltf_doc(rng, doc, blob, folder)
        data = _join_glb(doc, blob)
    _plant_secret(folder)
    path.write_bytes(data)
    return path, m


def _plant_secret(folder: Path) -> None:
    """A readable file one level above the input folder: what a ``../secret.bin`` URI would reach."""
    secret = folder.parent / "secret.bin"
    if not secret.exists():
        secret.write_bytes(b"S" * 4096)


def make_gltf(rng: random.Random, folder: Path) -> tuple[Path, str]:
    """A ``.gltf`` JSON file with its buffer in an external ``.bin`` next to it."""
    doc, blob = _split_glb(_base_glb(rng, folder))
    path = folder / "case.gltf"
    if rng.random() < 0.25:
        doc["buffers"][0]["uri"] = "case.bin"
        (folder / "case.bin").write_bytes(bytes(blob))
        data, m = damage_bytes(rng, json.dumps(doc).encode())
        if rng.random() < 0.5:
            data = json.dumps(doc).encode()
            blob_d, m = damage_bytes(rng, bytes(blob))
            (folder / "case.bin").write_bytes(blob_d)
            m = "bin-" + m
    else:
        m = _mutate_gltf_doc(rng, doc, blob, folder)
        buffers = doc.get("buffers") if isinstance(doc, dict) else None
        if isinstance(buffers, list) and buffers and isinstance(buffers[0], dict) and "uri" not in buffers[0]:
            buffers[0]["uri"] = "case.bin"
        (folder / "case.bin").write_bytes(bytes(blob))
        data = json.dumps(doc).encode()
    _plant_secret(folder)
    path.write_bytes(data)
    return path, m


# ============================================================================ OBJ folders, PLY, .anime

def make_obj(rng: random.Random, folder: Path) -> tuple[Path, str]:
    from backend.io import save_mesh_folder

    seq = base_sequence(rng)
    frames = folder / "frames"
    save_mesh_folder(seq, frames, fmt="obj")
    files = sorted(frames.iterdir())
    victim = rng.choice(files)
    text = victim.read_text()
    m = rng.choice(("bytes", "bytes", "face_index", "vertex", "count", "junk", "empty", "polygon", "special"))
    if m == "bytes":
        data, m = damage_bytes(rng, text.encode())
        victim.write_bytes(data)
    elif m == "face_index":
        bad = rng.choice(("99999999999999999999", "-99999999999999999999", "0", "4294967297", "1/2/3/4", "x"))
        victim.write_text(text + f"f 1 2 {bad}\n")
        m = f"face_index-{bad[:8]}"
    elif m == "vertex":
        bad = rng.choice(("1e400 0 0", "nan 0 0", "inf inf inf", "1e36 1e36 1e36", "1", "a b c", "1 2 3 4 5"))
        lines = text.splitlines()
        lines[0] = "v " + bad
        victim.write_text("\n".join(lines) + "\n")
        m = f"vertex-{bad[:8]}"
    elif m == "count":
        lines = text.splitlines()
        del lines[rng.randrange(len(lines))]
        victim.write_text("\n".join(lines) + "\n")
    elif m == "junk":
        victim.write_bytes(rng.randbytes(rng.choice((10, 1000, 100000))))
    elif m == "empty":
        victim.write_bytes(b"")
    elif m == "polygon":
        victim.write_text(text + "f " + " ".join(str(1 + i % seq.n_verts) for i in range(200000)) + "\n")
    else:
        os.unlink(victim)
        kind = rng.choice(("fifo", "devzero", "dir"))
        if kind == "fifo":
            os.mkfifo(victim)
        elif kind == "devzero":
            os.symlink("/dev/zero", victim)
        else:
            victim.mkdir()
        m = f"special-{kind}"
    if rng.random() < 0.15:  # also the single-file path
        return victim, "single-" + m
    return frames, m


def make_ply(rng: random.Random, folder: Path) -> tuple[Path, str]:
    from backend.io.mesh_folder import write_ply

    seq = base_sequence(rng, 1)
    path = folder / "case.ply"
    write_ply(path, seq.verts[0], seq.faces)
    data = path.read_bytes()
    m = rng.choice(("bytes", "bytes", "count"))
    if m == "bytes":
        data, m = damage_bytes(rng, data)
    else:
        which = rng.choice((b"element vertex ", b"element face "))
        i = data.find(which) + len(which)
        j = data.find(b"\n", i)
        n = rng.choice((b"1000000000", b"99999999999999", b"-5", b"0", b"3000000"))
        data = data[:i] + n + data[j:]
        m = f"count-{which.split()[1].decode()}={n.decode()}"
    path.write_bytes(data)
    return path, m


def make_anime(rng: random.Random, folder: Path) -> tuple[Path, str]:
    from backend.io import save_anime

    seq = base_sequence(rng)
    path = folder / "case.anime"
    save_anime(seq, path)
    data = bytearray(path.read_bytes())
    m = rng.choice(("bytes", "header", "header", "scale"))
    if m == "bytes":
        data, m = damage_bytes(rng, bytes(data))
    elif m == "header":
        slot = rng.randrange(3)
        struct.pack_into("<i", data, 4 * slot, rng.choice((-1, 0, 2**31 - 1, 10**8, 1)))
        m = f"header-{('nf', 'nv', 'nt')[slot]}"
    else:
        arr = np.frombuffer(bytes(data[12:12 + seq.n_verts * 12]), "<f4") * np.float32(1e36)
        data[12:12 + seq.n_verts * 12] = arr.astype("<f4").tobytes()
    path.write_bytes(bytes(data))
    return path, m


# ============================================================================ checkpoints

_CKPT_CACHE: dict[str, bytes] = {}


def _tiny_checkpoint(kind: str, folder: Path) -> bytes:
    """A small real checkpoint of ``kind`` (built once, then cached)."""
    if kind not in _CKPT_CACHE:
        import torch

        from backend.models.checkpoint import save_model
        from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
        from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig

        torch.manual_seed(0)
        if kind == "skeleton_generator":
            model = SkeletonGenerator(SkeletonGeneratorConfig(d_model=32, n_heads=2, n_latents=8, n_enc_layers=1,
                                                              n_dec_layers=1, max_joints=8))
        else:
            model = SkinningNetwork(SkinningNetworkConfig(d_model=32, n_heads=2, n_latents=8, n_shape_layers=1,
                                                          n_joint_layers=1, n_point_layers=1))
        path = folder / f"tiny_{kind}.safetensors"
        save_model(model, path, stage="fuzz")
        _CKPT_CACHE[kind] = path.read_bytes()
        path.unlink()
    return _CKPT_CACHE[kind]


def _resign(path: Path, tensors: dict, meta: dict) -> None:
    """Rewrite a checkpoint with a recomputed sha256 (what an attacker who knows the format can do)."""
    from safetensors.torch import save_file

    from backend.models.checkpoint import _digest

    meta = dict(meta)
    meta["sha256"] = _digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def make_checkpoint(rng: random.Random, folder: Path) -> tuple[Path, str]:
    import torch
    from safetensors import safe_open

    kind = rng.choice(("skeleton_generator", "skinning_network"))
    path = folder / "case.safetensors"
    path.write_bytes(_tiny_checkpoint(kind, folder))
    m = rng.choice(("bytes", "bytes", "config_bomb", "config_json", "nan", "shape", "header_len", "meta"))
    if m == "bytes":
        data, m = damage_bytes(rng, path.read_bytes())
        path.write_bytes(data)
        return path, m
    if m == "header_len":
        data = bytearray(path.read_bytes())
        struct.pack_into("<Q", data, 0, rng.choice((2**63, 2**40, 0, 7)))
        path.write_bytes(bytes(data))
        return path, m
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    if m == "config_bomb":
        field_name = rng.choice(sorted(k for k, v in cfg.items() if isinstance(v, int)))
        cfg[field_name] = rng.choice((65536, 10**6, 2**40, -1))
        meta["config"] = json.dumps(cfg)
        m = f"config_bomb-{field_name}"
    elif m == "config_json":
        m = mutate_json_value(rng, cfg)
        meta["config"] = json.dumps(cfg)
    elif m == "nan":
        name = rng.choice(sorted(k for k, t in tensors.items() if t.is_floating_point()))
        t = tensors[name].clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice((float("nan"), float("inf")))
        if rng.random() < 0.3:
            t.fill_(float("nan"))
        tensors[name] = t
    elif m == "shape":
        name = rng.choice(sorted(tensors))
        tensors[name] = torch.zeros(tuple(s + 1 for s in tensors[name].shape) or (2,))
    else:
        meta[rng.choice(sorted(meta))] = rng.choice(("", "{", "null", "[1]", "x" * 10000))
        m = "meta"
    _resign(path, tensors, meta)
    return path, m


# ============================================================================ sprig eval inputs

def make_eval(rng: random.Random, folder: Path) -> tuple[Path, str]:
    seq = base_sequence(rng, rng.randint(3, 4))
    K, V = seq.n_frames, seq.n_verts
    J = 3
    arrays: dict[str, np.ndarray] = {"verts": seq.verts, "faces": seq.faces}
    joints = np.array([[0.0, 0.5, 0.0], [0.5, 0.5, 0.0], [1.0, 0.5, 0.0]], np.float32)
    w = np.abs(np.random.default_rng(rng.randrange(2**31)).normal(size=(V, J))).astype(np.float32)
    w /= w.sum(axis=1, keepdims=True)
    for k in range(K):
        arrays[f"joints_{k}"] = joints + 0.01 * k
        arrays[f"parents_{k}"] = np.array([-1, 0, 1], np.int32)
        arrays[f"weights_{k}"] = w
    arrays.update(gt_joints=joints, gt_parents=np.array([-1, 0, 1], np.int32), gt_weights=w)
    path = folder / "case.npz"
    m = rng.choice(("valid", "bytes", "zero_weights", "weights", "parents", "joints", "missing", "bomb",
                    "huge_header", "deflate"))
    compressed = rng.random() < 0.5
    if m == "zero_weights":
        arrays[rng.choice(("weights_0", "weights_1", "gt_weights"))] = np.zeros((V, J), np.float32)
    elif m == "weights":
        bad = w.copy()
        how = rng.choice(("nan", "neg", "double", "inf", "shape"))
        if how == "nan":
            bad[0, 0] = np.nan
        elif how == "neg":
            bad[0, 0] = -0.5
        elif how == "double":
            bad *= 2
        elif how == "inf":
            bad[1, 1] = np.inf
        else:
            bad = bad[:, :2]
        arrays[f"weights_{rng.randrange(K)}"] = bad
        m = f"weights-{how}"
    elif m == "parents":
        arrays[f"parents_{rng.randrange(K)}"] = rng.choice((np.array([0, 0, 1]), np.array([1, 2, 0]),
                                                            np.array([-1, 5, 0]), np.array([-1, 0]),
                                                            np.array([-1.5, 0, 1])))
    elif m == "joints":
        arrays[f"joints_{rng.randrange(K)}"] = rng.choice((np.full((3, 3), np.nan, np.float32), np.zeros((0, 3)),
                                                           joints * np.float32(1e36), joints[:, :2]))
    elif m == "missing":
        del arrays[rng.choice(sorted(arrays))]
    if m == "bomb":
        data = _zip_bomb(1600 << 20, {"faces": seq.faces})
    elif m == "huge_header":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for key, arr in arrays.items():
                b = io.BytesIO()
                np.save(b, arr)
                zf.writestr(key + ".npy", b.getvalue())
            zf.writestr("weights_0.npy", _npy_bytes((2**31, 2**20), data=w.tobytes()))
        data = buf.getvalue()
    elif m == "deflate":
        data = _flip_deflate(rng, _npz_from(arrays, True))
    else:
        data = _npz_from(arrays, compressed)
        if m == "bytes":
            data, m = damage_bytes(rng, data)
    path.write_bytes(data)
    return path, m


MAKERS = {"npz": make_npz, "glb": make_glb, "gltf": make_gltf, "obj": make_obj, "ply": make_ply,
          "anime": make_anime, "checkpoint": make_checkpoint, "eval": make_eval}


# ============================================================================ running one case (in a worker)

def _check_sequence(seq, scratch: Path) -> str | None:
    """What is wrong with a loaded sequence (None when nothing): values, ranges, and a GLB round trip."""
    from backend.io import load_gltf, save_morph_gltf
    from backend.sequence import MAX_ABS_COORDINATE

    v, f = seq.verts, seq.faces
    if not np.all(np.isfinite(v)) or np.abs(v).max() > MAX_ABS_COORDINATE:
        return "non-finite or overflowing vertices accepted"
    if f.min() < 0 or f.max() >= seq.n_verts:
        return "face index out of range accepted"
    if seq.n_verts * seq.n_frames <= 200_000:
        out = scratch / "roundtrip.glb"
        save_morph_gltf(seq, out)
        back = load_gltf(out)
        if back.verts.shape != v.shape or not np.allclose(back.verts, v, rtol=1e-4,
                                                        atol=1e-5 * max(1.0, float(np.abs(v).max()))):
            return "GLB round trip changed the vertices"
        out.unlink()
    return None


def run_case(kind: str, path: Path, scratch: Path) -> tuple[str, str]:
    """Load one hostile input the way the product does; returns ``(outcome, detail)``."""
    from backend.app.evaluate import evaluate, load_eval_input
    from backend.io import load_sequence
    from backend.models.checkpoint import CheckpointError, load_model
    from backend.sequence import SequenceError

    try:
        if kind == "checkpoint":
            model, _ = load_model(path)
            bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
            return ("wrong", f"non-finite tensors accepted: {bad[:3]}") if bad else ("ok", "")
        if kind == "eval":
            res = evaluate(load_eval_input(path))
            skin = res.get("skin_l1")
            if skin is not None and (not np.isfinite(skin) or skin < 0):
                return "wrong", f"skin_l1 = {skin}"
            for key in ("skin_precision", "skin_recall"):
                val = res.get(key)
                if isinstance(val, float) and not np.isfinite(val):
                    return "wrong", f"{key} = {val}"
            return "ok", ""
        seq = load_sequence(path)
        problem = _check_sequence(seq, scratch)
        return ("wrong", problem) if problem else ("ok", "")
    except (SequenceError, CheckpointError) as exc:
        message = str(exc)
        if not message.strip():
            return "traceback", f"{type(exc).__name__} without a message"
        return "clean", message[:200]
    except _CaseTimeout:
        return "hang", f"no result within {CASE_TIMEOUT_S:.0f} s"
    except BaseException as exc:  # everything else is a bug: a traceback the user would see
        return "traceback", f"{type(exc).__name__}: {str(exc)[:200]}"


class _CaseTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _CaseTimeout()


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def worker_main() -> None:
    """Read cases (JSON lines) from stdin, answer one JSON line each; runs under RLIMIT_AS and an alarm."""
    logging.disable(logging.CRITICAL)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_LIMIT, WORKER_ADDRESS_LIMIT))
    signal.signal(signal.SIGALRM, _on_alarm)
    import backend.app.evaluate  # noqa: F401  (imports torch etc. once, outside the measured cases)
    import backend.io  # noqa: F401
    import backend.models.checkpoint  # noqa: F401
    out = sys.stdout
    sys.stdout = sys.stderr
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        case = json.loads(line)
        scratch = Path(case["scratch"])
        _reset_peak_rss()
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
        try:
            outcome, detail = run_case(case["kind"], Path(case["path"]), scratch)
        except _CaseTimeout:
            outcome, detail = "hang", f"no result within {CASE_TIMEOUT_S:.0f} s"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps({"outcome": outcome, "detail": detail, "seconds": time.perf_counter() - start,
                              "peak_rss_mb": _peak_rss_mb()}) + "\n")
        out.flush()
        if outcome == "hang":  # interrupted mid-computation: library state may be inconsistent; start afresh
            os._exit(0)


class Worker:
    """A persistent worker subprocess; replaced when it dies or stops answering."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fuzz", "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
                                     text=True, bufsize=1)
        ready = self._read(120.0)
        if ready is None:
            raise RuntimeError("the fuzz worker did not start")

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def run(self, case: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self.start()
            self.restarts += 1
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self._read(CASE_TIMEOUT_S + 10.0)
        if answer is None:
            died = self.proc.poll() is not None
            code = self.proc.returncode
            self.stop()
            if died:
                return {"outcome": "traceback", "detail": f"worker died (exit {code})", "seconds": float("nan"),
                        "peak_rss_mb": float("nan")}
            return {"outcome": "hang", "detail": "worker stopped answering (killed)", "seconds": CASE_TIMEOUT_S,
                    "peak_rss_mb": float("nan")}
        return answer


# ============================================================================ the loader campaign

@dataclass
class CaseResult:
    index: int
    kind: str
    mutation: str
    outcome: str
    detail: str
    seconds: float
    peak_rss_mb: float
    input_bytes: int


def _tree_digest(path: Path) -> str:
    """sha256 over names, modes and contents of regular files under ``path`` (FIFOs/devices by name only)."""
    h = hashlib.sha256()
    items = [path] if not path.is_dir() else sorted(path.rglob("*"))
    for p in items:
        st = os.lstat(p)
        h.update(f"{p.name}|{st.st_mode}|{st.st_size}\n".encode())
        if os.path.isfile(p) and not os.path.islink(p):
            h.update(p.read_bytes())
    return h.hexdigest()


def _input_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(os.lstat(p).st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())
    return os.lstat(path).st_size if not path.is_symlink() else 0


def generate_case(index: int, seed: int, root: Path) -> tuple[str, Path, str, Path]:
    """Build case ``index`` of the campaign ``seed`` under ``root``: ``(kind, input path, mutation, scratch)``."""
    rng = random.Random(f"{seed}-{index}")
    kind = KINDS[index % len(KINDS)]
    folder = root / f"case_{index:06d}" / "in"
    folder.mkdir(parents=True)
    scratch = folder.parent / "scratch"
    scratch.mkdir()
    path, mutation = MAKERS[kind](rng, folder)
    return kind, path, mutation, scratch


def run_loader_campaign(n_cases: int, seed: int, root: Path, progress: bool = True) -> list[CaseResult]:
    """Generate and run ``n_cases`` loader cases in a persistent worker; returns one result per case."""
    from tqdm import tqdm

    worker = Worker()
    worker.start()
    results: list[CaseResult] = []
    try:
        for index in tqdm(range(n_cases), disable=not progress, desc="loader cases", mininterval=5):
            kind, path, mutation, scratch = generate_case(index, seed, root)
            before = _tree_digest(path.parent)
            answer = worker.run({"kind": kind, "path": str(path), "scratch": str(scratch)})
            outcome, detail = answer["outcome"], answer["detail"]
            if _tree_digest(path.parent) != before:
                outcome, detail = "wrong", "the input was modified: " + detail
            results.append(CaseResult(index, kind, mutation, outcome, detail, answer["seconds"],
                                      answer["peak_rss_mb"], _input_bytes(path)))
            shutil.rmtree(path.parent.parent, ignore_errors=True)
    finally:
        worker.stop()
    log.info("worker restarts: %d", worker.restarts)
    return results


# ============================================================================ CLI, server, SIGKILL parts

def _cli_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _run_measured(command: list[str], timeout: float) -> tuple[int | None, str, float]:
    """Run ``command`` (the CLI environment, stdout discarded); ``(exit status or None on timeout, stderr,
    peak RSS of the process in MB)`` -- the RSS is the kernel's high-water mark, read with ``os.wait4``."""
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err_file, env=_cli_env(), cwd=REPO)
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8", "replace")
    return None if timed_out else proc.returncode, stderr, usage.ru_maxrss / 1024.0


def run_cli_cases(n_cases: int, seed: int, root: Path) -> list[CaseResult]:
    """``sprig rig`` end to end on hostile loader inputs (one process per case; slow, so few cases)."""
    results = []
    kinds = [k for k in KINDS if k not in ("checkpoint", "eval")]
    for index in range(n_cases):
        rng = random.Random(f"cli-{seed}-{index}")
        kind = kinds[index % len(kinds)]
        folder = root / f"cli_{index:04d}" / "in"
        folder.mkdir(parents=True)
        path, mutation = MAKERS[kind](rng, folder)
        out = folder.parent / "out.glb"
        before = _tree_digest(path.parent)
        start = time.perf_counter()
        returncode, stderr, peak_mb = _run_measured([sys.executable, "-m", "backend.app.cli", "rig", str(path), "-o",
                                                     str(out), "-q", "--device", "cpu", "--no-refine"], timeout=300)
        if returncode is None:
            outcome, detail = "hang", "sprig rig ran past 300 s"
        elif "Traceback" in stderr:
            outcome, detail = "traceback", stderr.strip().splitlines()[-1][:200]
        elif returncode == 0:
            outcome, detail = "ok", ""
            if out.is_file():
                from backend.io.gltf import read_accessor, read_document

                d = read_document(out)
                for i in range(len(d.doc.accessors or [])):
                    a = read_accessor(d, i)
                    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                        outcome, detail = "wrong", f"output accessor {i} is not finite"
                        break
        else:
            outcome, detail = "clean", (stderr.strip().splitlines() or [""])[-1][:200]
        if _tree_digest(path.parent) != before:
            outcome, detail = "wrong", "the input was modified"
        results.append(CaseResult(index, kind, mutation, outcome, detail, time.perf_counter() - start, peak_mb,
                                  _input_bytes(path)))
        shutil.rmtree(folder.parent, ignore_errors=True)
    return results


def hostile_server_lines(rng: random.Random, n: int, root: Path) -> list[tuple[str, str, object]]:
    """``(mutation, line, id)`` request lines: broken JSON, wrong types, hostile paths and options."""
    valid = root / "valid.npz"
    from backend.io import save_npz

    save_npz(base_sequence(rng), valid)
    fifo = root / "fifo.npz"
    if not fifo.exists():
        os.mkfifo(fifo)
    lines = []
    for i in range(n):
        rid = 1000 + i
        m = rng.choice(("junk", "json_types", "method", "rig_path", "rig_options", "deep", "long", "binary"))
        if m == "junk":
            line = rng.choice(("{", "}", "[]", "null", "1", '"x"', "{\"id\": ", "\t", "NaN", "{'id': 1}"))
        elif m == "json_types":
            req = {"id": rng.choice((rid, [1], {"a": 1}, None, 1e308, True)), "method": rng.choice(("ping", "info", 5)),
                   "params": rng.choice(({}, [], "x", None, 3))}
            line = json.dumps(req)
        elif m == "method":
            line = json.dumps({"id": rid, "method": rng.choice(("", "RIG", "__init__", "_rig", "send", "x" * 10000)),
                               "params": {}})
        elif m == "rig_path":
            line = json.dumps({"id": rid, "method": "rig", "params": {
                "input": rng.choice(("/dev/zero", "/dev/urandom", str(fifo), "/etc/passwd", "", "../../x.npz",
                                     str(root), 5, None)),
                "output": rng.choice((str(root / "o.npz"), "/dev/full", "/", "", None))}})
        elif m == "rig_options":
            key = rng.choice(("n_points", "max_joints", "batch_frames", "max_influences", "refine_iters", "models",
                              "up_axis", "unknown"))
            value = rng.choice((2_000_000, -1, 0, 1e308, "x", None, [1], 2**63))
            line = json.dumps({"id": rid, "method": "rig", "params": {"input": str(valid),
                                                                       "options": {key: value}}})
            m = f"rig_options-{key}={str(value)[:10]}"
        elif m == "deep":
            line = "[" * 100000 + "]" * 100000
        elif m == "long":
            line = json.dumps({"id": rid, "method": "ping", "params": {"pad": "x" * 5_000_000}})
        else:
            line = rng.randbytes(200).decode("latin1").replace("\n", " ")
        lines.append((m, line, rid))
    return lines


def run_server_cases(n_cases: int, seed: int, root: Path) -> list[CaseResult]:
    """Send hostile lines to one ``backend.app.server`` (restarted when it dies); each must get an answer.

    A line counts as answered when any reply arrives and a following ``ping`` is answered too (the
    server still works); a reply or stderr carrying a Python traceback counts as ``traceback``.
    """
    rng = random.Random(f"server-{seed}")
    root.mkdir(parents=True, exist_ok=True)
    cases = hostile_server_lines(rng, n_cases, root)
    results = []
    proc = None

    def start():
        p = subprocess.Popen([sys.executable, "-m", "backend.app.server", "--device", "cpu"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_cli_env(), cwd=REPO, bufsize=0)
        os.set_blocking(p.stdin.fileno(), False)
        _read_reply(p, None, 120.0)
        return p

    for index, (mutation, line, rid) in enumerate(cases):
        if proc is None or proc.poll() is not None:
            proc = start()
        start_t = time.perf_counter()
        ping = json.dumps({"id": f"ping-{index}", "method": "ping", "params": {}}).encode()
        sent = _send(proc, line.encode("utf-8", "surrogateescape") + b"\n" + ping + b"\n", CASE_TIMEOUT_S)
        reply = _read_reply(proc, f"ping-{index}", CASE_TIMEOUT_S) if sent else None
        if reply is None:
            try:
                proc.wait(timeout=3.0)  # a server that just died is reaped here, not mistaken for a hang
            except subprocess.TimeoutExpired:
                pass
            alive = proc.poll() is None
            err = _drain(proc.stderr) if not alive else b""
            outcome = "hang" if alive else "traceback"
            detail = "no answer" if alive else f"server died (exit {proc.returncode}): {err[-200:]!r}"
            proc.kill()
            proc.wait()
            proc = None
        else:
            text = json.dumps(reply["seen"])
            if "Traceback" in text:
                outcome, detail = "traceback", text[:200]
            elif any(r.get("type") == "error" for r in reply["seen"]):
                outcome, detail = "clean", text[:200]
            else:
                outcome, detail = "ok", text[:200]
        results.append(CaseResult(index, "server", mutation, outcome, detail, time.perf_counter() - start_t,
                                  float("nan"), len(line)))
    if proc is not None:
        proc.kill()
        proc.wait()
    return results


def _send(proc: subprocess.Popen, data: bytes, timeout: float) -> bool:
    """Write ``data`` to the server's stdin without ever blocking longer than ``timeout``; False if it did not drain."""
    fd = proc.stdin.fileno()
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _, writable, _ = select.select([], [fd], [], left)
        if not writable:
            return False
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
        except OSError:  # the server went away
            return False
    return True


def _drain(stream) -> bytes:
    try:
        os.set_blocking(stream.fileno(), False)
        return stream.read() or b""
    except (OSError, ValueError):
        return b""


def _read_reply(proc: subprocess.Popen, until_id, timeout: float) -> dict | None:
    """Read reply lines until one with ``id == until_id`` (or the ready line when None); None on timeout/EOF."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            return None
        raw = proc.stdout.readline()
        if not raw:
            return None
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            msg = {"type": "garbage", "line": raw[:200].decode("utf-8", "replace")}
        if msg.get("type") in ("heartbeat", "progress"):
            continue
        if until_id is None and msg.get("type") == "ready":
            return {"seen": [msg]}
        if until_id is not None and msg.get("id") == until_id:
            return {"seen": seen}
        seen.append(msg)


def run_kill_cases(n_cases: int, seed: int, root: Path) -> list[CaseResult]:
    """SIGKILL ``sprig rig`` at a random moment: an existing output must stay intact or be fully replaced."""
    from backend.io import save_npz
    from backend.io.gltf import read_document

    rng = random.Random(f"kill-{seed}")
    results = []
    for index in range(n_cases):
        folder = root / f"kill_{index:03d}"
        folder.mkdir(parents=True)
        src = save_npz(base_sequence(rng, 8), folder / "in.npz")
        out = folder / "out.glb"
        old = b"previous output, must survive"
        out.write_bytes(old)
        delay = rng.uniform(0.5, 15.0)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "backend.app.cli", "rig", str(src), "-o", str(out), "-q",
                                 "--device", "cpu"], env=_cli_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        data = out.read_bytes() if out.exists() else None
        leftovers = sorted(p.name for p in folder.iterdir() if p.name not in ("in.npz", "out.glb"))
        if data == old:
            outcome, detail = "clean", f"killed after {delay:.1f} s; old output intact"
        elif data is None:
            outcome, detail = "wrong", "the existing output was deleted"
        else:
            try:
                read_document(out)
                outcome, detail = "ok", f"finished within {delay:.1f} s; new output complete"
            except Exception as exc:  # a half-written file
                outcome, detail = "wrong", f"half-written output: {exc}"[:200]
        if leftovers and outcome != "wrong":
            outcome, detail = "wrong", f"temporary files left behind: {leftovers[:3]}"
        results.append(CaseResult(index, "sigkill", f"kill@{delay:.1f}s", outcome, detail,
                                  time.perf_counter() - start, float("nan"), 0))
        shutil.rmtree(folder, ignore_errors=True)
    return results


# ============================================================================ report

def summarize(results: list[CaseResult], title: str) -> str:
    """A Markdown table: outcomes per input kind, plus peak RSS and the worst cases."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    rss: dict[str, float] = defaultdict(float)
    for r in results:
        by_kind[r.kind][r.outcome] += 1
        if np.isfinite(r.peak_rss_mb):
            rss[r.kind] = max(rss[r.kind], r.peak_rss_mb)
    lines = [f"**{title}**", "", "| kind | cases | " + " | ".join(OUTCOMES) + " | peak RSS (MB) |",
             "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|"]
    total = Counter()
    for kind in sorted(by_kind):
        c = by_kind[kind]
        total.update(c)
        peak = f"{rss[kind]:.0f}" if kind in rss else "-"
        lines.append(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + f" | {peak} |")
    peak_all = f"{max(rss.values()):.0f}" if rss else "-"
    lines.append(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES)
                 + f" | {peak_all} |")
    bad = [r for r in results if r.outcome in ("traceback", "hang", "wrong")]
    big = [r for r in results if np.isfinite(r.peak_rss_mb) and r.peak_rss_mb > RSS_TARGET_MB
           and r.input_bytes < 10 << 20]
    if bad or big:
        lines += ["", "Failures (grouped by kind, mutation family and outcome; first case shown):", ""]
        groups: dict[tuple, list[CaseResult]] = defaultdict(list)
        for r in bad + big:
            groups[(r.kind, r.mutation.split("-")[0], r.outcome)].append(r)
        for (kind, family, outcome), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            r = rs[0]
            rss_note = f", {r.peak_rss_mb:.0f} MB" if np.isfinite(r.peak_rss_mb) else ""
            lines.append(f"- {len(rs)} x {kind} `{family}`: {outcome}{rss_note} (first #{r.index}): "
                         f"{r.detail[:240]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="loader cases (run in worker processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cli", type=int, default=0, help="sprig rig cases (one process each)")
    parser.add_argument("--server", type=int, default=0, help="hostile server lines")
    parser.add_argument("--kill", type=int, default=0, help="SIGKILL cases of sprig rig")
    parser.add_argument("--json", type=Path, help="write every case result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sections: list[tuple[str, list[CaseResult]]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sprig-fuzz-") as tmp:
        root = Path(tmp)
        campaigns = (("Loaders", args.cases, run_loader_campaign, "loaders"),
                     ("sprig rig CLI", args.cli, run_cli_cases, "cli"),
                     ("Server lines", args.server, run_server_cases, "server"),
                     ("SIGKILL during sprig rig", args.kill, run_kill_cases, "kill"))
        for title, count, run, folder in campaigns:
            if count:
                t0 = time.perf_counter()
                res = run(count, args.seed, root / folder)
                sections.append((f"{title}: {len(res)} cases, {time.perf_counter() - t0:.0f} s", res))
    command = "python -m bench.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# fuzz run: `{command}`, seed {args.seed}, wall time {time.perf_counter() - start:.0f} s\n")
    for title, res in sections:
        print(summarize(res, title) + "\n")
    if args.json:
        args.json.write_text(json.dumps({title: [asdict(r) for r in res] for title, res in sections}, indent=1))
    failed = any(r.outcome in ("traceback", "hang", "wrong") for _, res in sections for r in res)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
