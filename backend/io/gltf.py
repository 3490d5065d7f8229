"""glTF 2.0 / GLB: animated meshes in, rigged or morph-animated meshes out.

Reading (:func:`load_gltf`) samples one animation of the scene at a fixed frame rate and returns
one :class:`MeshSequence` with every primitive merged into one vertex array (scene order, so the
vertex order is deterministic; duplicate vertices are not welded):

* skinned primitives follow the glTF skinning equation
  ``v = sum_i w_i * (world(joint_i) @ inverseBind_i) @ [p, 1]`` where ``p`` is the morphed bind
  position; the transform of the node holding a skinned mesh is ignored, as the spec says;
* other primitives are moved by their node's world matrix (after morph targets). When the scene has
  skins, only meshes that hang under a joint (rigid attachments) are kept besides the skinned ones;
  loose meshes (ground planes, props) are dropped with a log message;
* samplers: LINEAR (quaternions by slerp), STEP and CUBICSPLINE; sparse accessors, normalized
  integer accessors, triangle strips and fans are handled.

The file's own rig comes back as ground truth in ``extras``: ``joints [K, J, 3]`` (joint world
positions), ``parents [J]`` (-1 for roots; a forest is kept as is), ``joint_names``,
``weights [V, J]`` (rows renormalized to sum 1), ``rest_joints [J, 3]``, ``rest_verts [V, 3]`` and
``bone_transforms [K, J, 4, 4]`` (``world @ inverseBind``) so that
``linear_blend_skinning(rest_verts, weights, bone_transforms)`` reproduces the frames of meshes
without morph targets.

Writing: :func:`save_rigged_gltf` writes a skinned, animated GLB from a rig (anchor mesh, joints,
weights, per-frame bone transforms); :func:`save_morph_gltf` writes any sequence as a morph-target
animation (one target per frame).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pygltflib

from backend.io.common import (LIMITS, FrameSelection, build_sequence, check_size, check_vertex_frames,
                               frame_indices, read_regular_file)
from backend.lbs import linear_blend_skinning
from backend.sampling import vertex_normals
from backend.sequence import MeshSequence, SequenceError

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0

_GLB_MAGIC = b"glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942

_COMPONENT_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
                     5126: np.float32}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_NORMALIZE_DIVISOR = {np.int8: 127.0, np.uint8: 255.0, np.int16: 32767.0, np.uint16: 65535.0}

# glTF component types used by the writers
_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


# ============================================================================ quaternion / TRS math

def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` from unit quaternions ``[..., 4]`` in glTF order (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    x, y, z, w = np.moveaxis(q, -1, 0)
    m = np.empty(q.shape[:-1] + (3, 3))
    m[..., 0, 0] = 1 - 2 * (y * y + z * z)
    m[..., 0, 1] = 2 * (x * y - z * w)
    m[..., 0, 2] = 2 * (x * z + y * w)
    m[..., 1, 0] = 2 * (x * y + z * w)
    m[..., 1, 1] = 1 - 2 * (x * x + z * z)
    m[..., 1, 2] = 2 * (y * z - x * w)
    m[..., 2, 0] = 2 * (x * z - y * w)
    m[..., 2, 1] = 2 * (y * z + x * w)
    m[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[..., 4]`` (x, y, z, w; w >= 0) from rotation matrices ``[..., 3, 3]``."""
    m = np.asarray(m, dtype=np.float64)
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; use the one with the largest (best conditioned) pivot per matrix.
    pivots = np.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], axis=-1)
    case = np.argmax(pivots, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    r = np.sqrt(np.maximum(1.0 + trace, 1e-300)) * 2  # case 0: 4w
    c0 = case == 0
    q[c0] = np.stack([(m[c0, 2, 1] - m[c0, 1, 2]) / r[c0], (m[c0, 0, 2] - m[c0, 2, 0]) / r[c0],
                      (m[c0, 1, 0] - m[c0, 0, 1]) / r[c0], r[c0] / 4], axis=-1)
    for axis in range(3):
        sel = case == axis + 1
        if not sel.any():
            continue
        i, j, k = axis, (axis + 1) % 3, (axis + 2) % 3
        s = np.sqrt(np.maximum(1.0 + m[sel, i, i] - m[sel, j, j] - m[sel, k, k], 1e-300)) * 2
        v = np.empty((int(sel.sum()), 4))
        v[:, i] = s / 4
        v[:, j] = (m[sel, j, i] + m[sel, i, j]) / s
        v[:, k] = (m[sel, k, i] + m[sel, i, k]) / s
        v[:, 3] = (m[sel, k, j] - m[sel, j, k]) / s
        q[sel] = v
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def quat_slerp(q0: np.ndarray, q1: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation ``[..., 4]`` between unit quaternions along the shorter arc.

    Args:
        q0, q1: ``[..., 4]``; s: ``[...]`` in [0, 1].
    """
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_t = np.sin(theta)
    near = dot > 0.9995  # nearly parallel: lerp is exact enough and avoids 0/0
    safe = np.where(near, 1.0, sin_t)
    w0 = np.where(near, 1.0 - s, np.sin((1.0 - s) * theta) / safe)
    w1 = np.where(near, s, np.sin(s * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def trs_to_matrix(t: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` = T @ R @ S for translation ``[..., 3]``, quaternion ``[..., 4]``, scale ``[..., 3]``."""
    m = np.zeros(np.broadcast_shapes(t.shape[:-1], q.shape[:-1], s.shape[:-1]) + (4, 4))
    m[..., :3, :3] = quat_to_matrix(q) * np.asarray(s, np.float64)[..., None, :]
    m[..., :3, 3] = t
    m[..., 3, 3] = 1.0
    return m


def polar_rotation(m: np.ndarray) -> np.ndarray:
    """Nearest rotation ``[..., 3, 3]`` to each matrix ``[..., 3, 3]`` (polar decomposition via SVD)."""
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    u = u.copy()
    u[..., :, 2] *= d[..., None]
    return u @ vt


# ============================================================================ reading the file

@dataclass
class GltfDocument:
    """A parsed glTF file: the JSON document (pygltflib) and its buffers' bytes."""

    path: Path
    doc: pygltflib.GLTF2
    buffers: list[bytes]
    raw: dict  # the JSON as parsed by ``json`` (for fields pygltflib does not model, e.g. node weights)


def _err(path: Path, message: str) -> SequenceError:
    return SequenceError(f"{path}: {message}")


def read_document(path: str | Path) -> GltfDocument:
    """Parse a ``.glb`` or ``.gltf`` file and load its buffers (embedded, data-URI or external files).

    Raises:
        SequenceError: truncated container, invalid JSON, missing or short buffers.
    """
    path = Path(path)
    if not path.exists():
        raise _err(path, "no such file")
    data = read_regular_file(path)
    bin_chunk: bytes | None = None
    if data[:4] == _GLB_MAGIC:
        if len(data) < 20:
            raise _err(path, f"truncated GLB: {len(data)} bytes, a GLB header and JSON chunk need at least 20")
        version, length = struct.unpack_from("<II", data, 4)
        if version != 2:
            raise _err(path, f"unsupported GLB container version {version} (only glTF 2.0 is supported)")
        if length > len(data):
            raise _err(path, f"truncated GLB: the header announces {length} bytes but the file has {len(data)}")
        offset, json_text = 12, None
        while offset + 8 <= length:
            chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
            start, end = offset + 8, offset + 8 + chunk_len
            if end > length:
                raise _err(path, f"truncated GLB: a chunk at byte {offset} needs {chunk_len} bytes, "
                                 f"only {length - start} remain")
            if chunk_type == _CHUNK_JSON and json_text is None:
                json_text = data[start:end]
            elif chunk_type == _CHUNK_BIN and bin_chunk is None:
                bin_chunk = data[start:end]
            offset = end + (-end % 4)
        if json_text is None:
            raise _err(path, "corrupt GLB: no JSON chunk")
    elif path.suffix.lower() == ".glb":
        raise _err(path, f"not a GLB file: it starts with {data[:4]!r}, a GLB with b'glTF' (another format renamed "
                         "to .glb, or an empty or damaged file?)")
    else:
        json_text = data
    try:
        text = json_text.decode("utf-8")
        raw = json.loads(text)  # syntax check with a clear message before pygltflib sees it
        if not isinstance(raw, dict):
            raise json.JSONDecodeError("the top level is not a JSON object", text, 0)
        doc = pygltflib.GLTF2.from_json(text, infer_missing=True)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        kind = "GLB JSON chunk" if bin_chunk is not None or data[:4] == _GLB_MAGIC else "glTF JSON"
        raise _err(path, f"corrupt {kind} (not valid UTF-8 JSON; truncated file?): {exc}") from exc
    except Exception as exc:  # pygltflib/dataclasses_json raise many types for schema violations
        raise _err(path, f"the glTF JSON does not follow the glTF 2.0 schema: {exc}") from exc
    if doc.asset is None or not str(getattr(doc.asset, "version", "2.0")).startswith("2"):
        raise _err(path, "not a glTF 2.0 file (asset.version is not 2.x)")
    for ext in doc.extensionsRequired or []:
        if ext in ("KHR_draco_mesh_compression", "EXT_meshopt_compression"):
            raise _err(path, f"the file uses {ext} (compressed geometry), which this reader does not decode; "
                             "re-export it without mesh compression")

    buffers: list[bytes] = []
    for i, buf in enumerate(doc.buffers or []):
        uri = buf.uri
        if uri is None:
            if bin_chunk is None:
                raise _err(path, f"buffer {i} has no uri and the file has no GLB binary chunk")
            blob = bin_chunk
        elif uri.startswith("data:"):
            try:
                blob = base64.b64decode(uri.split(",", 1)[1], validate=False)
            except (ValueError, IndexError) as exc:
                raise _err(path, f"buffer {i}: corrupt base64 data URI: {exc}") from exc
        else:
            blob = read_regular_file(_external_buffer_path(path, i, uri), LIMITS.max_array_bytes,
                                     what=f"external buffer {i} of {path.name}")
        if buf.byteLength is not None and len(blob) < int(buf.byteLength):
            raise _err(path, f"truncated buffer {i}: it declares {buf.byteLength} bytes but holds {len(blob)}")
        buffers.append(blob)
    return GltfDocument(path, doc, buffers, raw)


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _external_buffer_path(path: Path, index: int, uri: str) -> Path:
    """The file an external buffer ``uri`` names, which must lie inside the glTF file's folder.

    Absolute paths, URLs and other schemes, ``..`` components, and links that resolve outside the
    folder are refused: a glTF file must not make the reader open arbitrary files (``/etc/passwd``).

    Raises:
        SequenceError: naming the buffer and the reason.
    """
    name = unquote(uri)
    parts = re.split(r"[/\\]", name)
    if not name or name.startswith(("/", "\\")) or _URI_SCHEME.match(name) or "\0" in name:
        raise _err(path, f"buffer {index}: uri {uri!r} is not a relative file name (absolute paths, URLs and "
                         "other schemes are refused; external buffers must lie next to the glTF file)")
    if ".." in parts:
        raise _err(path, f"buffer {index}: uri {uri!r} climbs out of the glTF file's folder with '..' (refused)")
    folder = path.parent.resolve()
    target = (folder / name).resolve()
    if target != folder and folder not in target.parents:
        raise _err(path, f"buffer {index}: uri {uri!r} resolves to {target}, outside the glTF file's folder "
                         f"{folder} (a link?); refused")
    return target


def _view_bytes(d: GltfDocument, view_index: int, what: str) -> tuple[bytes, int, int, int | None]:
    """``(buffer, start, length, stride)`` of a bufferView, checked against its buffer."""
    views = d.doc.bufferViews or []
    if not 0 <= view_index < len(views):
        raise _err(d.path, f"{what}: bufferView {view_index} does not exist")
    view = views[view_index]
    if not 0 <= view.buffer < len(d.buffers):
        raise _err(d.path, f"{what}: bufferView {view_index} points to missing buffer {view.buffer}")
    buf = d.buffers[view.buffer]
    start, length = int(view.byteOffset or 0), int(view.byteLength or 0)
    if start + length > len(buf):
        raise _err(d.path, f"{what}: bufferView {view_index} ends at byte {start + length} but buffer "
                           f"{view.buffer} has {len(buf)} bytes (truncated file?)")
    return buf, start, length, view.byteStride


def _strided(d: GltfDocument, view_index: int, byte_offset: int, count: int, dtype: np.dtype, n: int,
             what: str) -> np.ndarray:
    """Read ``count`` elements of ``n`` components from a bufferView: ``[count, n]`` (a copy)."""
    buf, start, length, stride = _view_bytes(d, view_index, what)
    elem = dtype.itemsize * n
    stride = int(stride or elem)
    if stride < elem:
        raise _err(d.path, f"{what}: bufferView {view_index} has byteStride {stride}, smaller than one "
                           f"element ({elem} bytes)")
    if count < 0 or byte_offset < 0:
        raise _err(d.path, f"{what}: negative count {count} or byteOffset {byte_offset}")
    need = byte_offset + (stride * (count - 1) + elem if count else 0)
    if need > length:
        raise _err(d.path, f"{what}: needs {need} bytes of bufferView {view_index}, which has {length} "
                           "(truncated or corrupt file)")
    if count == 0:
        return np.zeros((0, n), dtype=dtype)
    arr = np.ndarray((count, n), dtype=dtype.newbyteorder("<"), buffer=buf, offset=start + byte_offset,
                     strides=(stride, dtype.itemsize))
    return np.array(arr, dtype=dtype)


def read_accessor(d: GltfDocument, index: int, what: str = "accessor") -> np.ndarray:
    """Decode accessor ``index`` to ``[count, n]`` (float64 for floats/normalized ints, else the int type).

    Handles strides, sparse substitution and normalized integers. Matrices come back flat
    (column-major, as stored).
    """
    accessors = d.doc.accessors or []
    if index is None or not 0 <= int(index) < len(accessors):
        raise _err(d.path, f"{what}: accessor {index} does not exist")
    acc = accessors[int(index)]
    what = f"{what} (accessor {index})"
    if acc.componentType not in _COMPONENT_DTYPES or acc.type not in _TYPE_SIZES:
        raise _err(d.path, f"{what}: unsupported componentType {acc.componentType} / type {acc.type}")
    dtype = np.dtype(_COMPONENT_DTYPES[acc.componentType])
    n, count = _TYPE_SIZES[acc.type], int(acc.count or 0)
    if acc.type.startswith("MAT") and dtype.itemsize < 4:
        raise _err(d.path, f"{what}: byte/short matrices are not supported")
    if count < 0:
        raise _err(d.path, f"{what}: negative count {count}")
    if acc.bufferView is None:
        # zero-filled (e.g. a sparse morph target): nothing in the file backs the size, so bound it
        check_size(count * n, LIMITS.max_vertex_frames, f"{what}: zero-filled accessor elements (count {count} x {n})",
                   d.path)
        out = np.zeros((count, n), dtype=dtype)
    else:
        out = _strided(d, acc.bufferView, int(acc.byteOffset or 0), count, dtype, n, what)
    sparse = acc.sparse
    if sparse is not None and getattr(sparse, "count", 0):
        sc = int(sparse.count)
        if not 0 <= sc <= count:
            raise _err(d.path, f"{what}: sparse count {sc} is outside [0, {count}] (the accessor's count)")
        idx_dtype = np.dtype(_COMPONENT_DTYPES.get(sparse.indices.componentType, np.uint32))
        idx = _strided(d, sparse.indices.bufferView, int(sparse.indices.byteOffset or 0), sc, idx_dtype, 1,
                       f"{what} sparse indices")[:, 0].astype(np.int64)
        vals = _strided(d, sparse.values.bufferView, int(sparse.values.byteOffset or 0), sc, dtype, n,
                        f"{what} sparse values")
        if sc and (idx.min() < 0 or idx.max() >= count):
            raise _err(d.path, f"{what}: sparse index {int(idx.max())} out of range (count {count})")
        out[idx] = vals
    if dtype.kind == "f":
        out = out.astype(np.float64)
    elif acc.normalized:
        out = np.maximum(out.astype(np.float64) / _NORMALIZE_DIVISOR[dtype.type], -1.0)
    return out


# ============================================================================ animation sampling

@dataclass
class _Channel:
    node: int
    path: str  # translation | rotation | scale | weights
    times: np.ndarray  # float64 [n]
    values: np.ndarray  # float64 [n, c] or [n, 3, c] for CUBICSPLINE (in-tangent, value, out-tangent)
    interpolation: str


def sample_channel(times: np.ndarray, values: np.ndarray, interpolation: str, t: np.ndarray,
                   rotation: bool = False) -> np.ndarray:
    """Evaluate one animation sampler at times ``t [T]`` -> ``[T, c]``.

    Args:
        times: keyframe times ``[n]`` (non-decreasing).
        values: ``[n, c]`` for LINEAR/STEP, ``[n, 3, c]`` (in-tangent, value, out-tangent) for CUBICSPLINE.
        interpolation: ``LINEAR`` (slerp for rotations), ``STEP`` or ``CUBICSPLINE`` (Hermite).
        rotation: values are quaternions (result re-normalized).
    Times before the first / after the last key clamp to that key.
    """
    t = np.asarray(t, dtype=np.float64)
    n = len(times)
    cubic = interpolation == "CUBICSPLINE"
    key_vals = values[:, 1] if cubic else values
    if n == 1:
        out = np.repeat(key_vals[:1], len(t), axis=0)
        return _unit_rows(out) if rotation else out
    i0 = np.clip(np.searchsorted(times, t, side="right") - 1, 0, n - 2)
    i1 = i0 + 1
    dt = times[i1] - times[i0]
    s = np.clip(np.where(dt > 0, (t - times[i0]) / np.where(dt > 0, dt, 1.0), 0.0), 0.0, 1.0)
    if interpolation == "STEP":
        out = np.where((s >= 1.0)[:, None], key_vals[i1], key_vals[i0])
    elif cubic:
        s2, s3 = s * s, s * s * s
        h00, h10 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s
        h01, h11 = -2 * s3 + 3 * s2, s3 - s2
        out = (h00[:, None] * values[i0, 1] + (h10 * dt)[:, None] * values[i0, 2]
               + h01[:, None] * values[i1, 1] + (h11 * dt)[:, None] * values[i1, 0])
    elif rotation:
        out = quat_slerp(key_vals[i0], key_vals[i1], s)
    else:
        out = key_vals[i0] + s[:, None] * (key_vals[i1] - key_vals[i0])
    return _unit_rows(out) if rotation else out


def _unit_rows(q: np.ndarray) -> np.ndarray:
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def _read_channels(d: GltfDocument, anim_index: int) -> list[_Channel]:
    anim = d.doc.animations[anim_index]
    out: list[_Channel] = []
    n_nodes = len(d.doc.nodes or [])
    for ci, ch in enumerate(anim.channels or []):
        what = f"animation {anim_index} channel {ci}"
        target = ch.target
        if target is None or target.node is None or target.path not in ("translation", "rotation", "scale",
                                                                        "weights"):
            log.info("%s: %s targets no node property this reader animates; skipped", d.path, what)
            continue
        if not 0 <= target.node < n_nodes:
            raise _err(d.path, f"{what}: node {target.node} does not exist")
        if ch.sampler is None or not 0 <= ch.sampler < len(anim.samplers or []):
            raise _err(d.path, f"{what}: sampler {ch.sampler} does not exist")
        sampler = anim.samplers[ch.sampler]
        interp = (sampler.interpolation or "LINEAR").upper()
        if interp not in ("LINEAR", "STEP", "CUBICSPLINE"):
            raise _err(d.path, f"{what}: unknown interpolation {sampler.interpolation!r}")
        times = read_accessor(d, sampler.input, f"{what} input").reshape(-1).astype(np.float64)
        values = read_accessor(d, sampler.output, f"{what} output").astype(np.float64)
        if len(times) == 0:
            continue
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
            raise _err(d.path, f"{what}: keyframe times are not finite and increasing")
        per_key = 3 if interp == "CUBICSPLINE" else 1
        if target.path == "weights":
            total = values.size
            if total % (len(times) * per_key):
                raise _err(d.path, f"{what}: {total} morph weights do not divide into {len(times)} keyframes")
            values = values.reshape(len(times), per_key, -1)
        else:
            width = 4 if target.path == "rotation" else 3
            if values.shape[1] != width or values.shape[0] != len(times) * per_key:
                raise _err(d.path, f"{what}: output has shape {list(values.shape)}, expected "
                                   f"[{len(times) * per_key}, {width}] for {target.path}")
            values = values.reshape(len(times), per_key, width)
        values = values if per_key == 3 else values[:, 0]
        out.append(_Channel(int(target.node), target.path, times, values, interp))
    return out


def _keyframe_fps(channels: list[_Channel]) -> float:
    """The animation's own keyframe rate when its keys are evenly spaced, else :data:`DEFAULT_FPS`."""
    if not channels:
        return DEFAULT_FPS
    keys = np.unique(np.round(np.concatenate([c.times for c in channels]), 6))
    if len(keys) < 3:
        return DEFAULT_FPS
    gaps = np.diff(keys)
    med = float(np.median(gaps))
    if med <= 0 or float(gaps.max() - gaps.min()) > 0.01 * med:
        return DEFAULT_FPS
    fps = 1.0 / med
    return float(round(fps)) if abs(fps - round(fps)) < 1e-3 * fps else fps


# ============================================================================ scene evaluation

def _node_hierarchy(d: GltfDocument) -> tuple[np.ndarray, list[int]]:
    """``parent [N]`` (-1 for roots) and a depth-first order of all nodes (scene roots first)."""
    nodes = d.doc.nodes or []
    parent = np.full(len(nodes), -1, dtype=np.int64)
    for i, node in enumerate(nodes):
        for c in node.children or []:
            if not 0 <= c < len(nodes):
                raise _err(d.path, f"node {i} has a child {c} that does not exist")
            if parent[c] >= 0 or c == i:
                raise _err(d.path, f"node {c} has more than one parent (the node graph must be a tree)")
            parent[c] = i
    scenes = d.doc.scenes or []
    scene_index = d.doc.scene if d.doc.scene is not None else 0
    roots: list[int] = []
    if scenes:
        if not 0 <= scene_index < len(scenes):
            raise _err(d.path, f"scene {scene_index} does not exist")
        roots = [int(r) for r in scenes[scene_index].nodes or []]
    listed = set(roots)
    roots += [i for i in range(len(nodes)) if parent[i] < 0 and i not in listed]
    order: list[int] = []
    seen = np.zeros(len(nodes), dtype=bool)
    for root in roots:
        if not 0 <= root < len(nodes) or parent[root] >= 0:
            raise _err(d.path, f"scene root {root} is missing or has a parent")
        stack = [root]
        while stack:
            i = stack.pop()
            if seen[i]:
                raise _err(d.path, f"node {i} is reached twice (cycle in the node graph)")
            seen[i] = True
            order.append(i)
            stack.extend(reversed(list(nodes[i].children or [])))
    if not seen.all():
        raise _err(d.path, f"node {int(np.flatnonzero(~seen)[0])} is part of a cycle in the node graph")
    return parent, order


def _scene_roots_reachable(d: GltfDocument, parent: np.ndarray) -> np.ndarray:
    """bool ``[N]``: the node belongs to the active scene (all nodes when the file has no scenes)."""
    scenes = d.doc.scenes or []
    n = len(parent)
    if not scenes:
        return np.ones(n, dtype=bool)
    roots = set(int(r) for r in scenes[d.doc.scene if d.doc.scene is not None else 0].nodes or [])
    inside = np.zeros(n, dtype=bool)
    for i in range(n):
        j = i
        while parent[j] >= 0:
            j = int(parent[j])
        inside[i] = j in roots
    return inside


def _world_matrices(d: GltfDocument, parent: np.ndarray, order: list[int], channels: list[_Channel],
                    t: np.ndarray) -> np.ndarray:
    """World matrices ``[N, T, 4, 4]`` of every node at times ``t [T]``."""
    nodes = d.doc.nodes or []
    T = len(t)
    animated: dict[int, dict[str, np.ndarray]] = {}
    for ch in channels:
        if ch.path == "weights":
            continue
        animated.setdefault(ch.node, {})[ch.path] = sample_channel(
            ch.times, ch.values, ch.interpolation, t, rotation=ch.path == "rotation")
    world = np.empty((len(nodes), T, 4, 4))
    for i in order:
        node = nodes[i]
        anim = animated.get(i, {})
        if node.matrix is not None and len(node.matrix) == 16:
            local = np.broadcast_to(np.asarray(node.matrix, np.float64).reshape(4, 4).T, (T, 4, 4))
            if anim:
                log.warning("%s: node %d has a matrix and animated TRS; the matrix wins", d.path, i)
        else:
            tr = anim.get("translation", np.asarray(node.translation or [0, 0, 0], np.float64)[None])
            rot = anim.get("rotation", np.asarray(node.rotation or [0, 0, 0, 1], np.float64)[None])
            sc = anim.get("scale", np.asarray(node.scale or [1, 1, 1], np.float64)[None])
            local = np.broadcast_to(trs_to_matrix(tr, rot, sc), (T, 4, 4))
        world[i] = local if parent[i] < 0 else world[parent[i]] @ local
    if not np.all(np.isfinite(world)):
        raise _err(d.path, "node transforms contain NaN or Inf")
    return world


def _morph_weights(d: GltfDocument, node_index: int, n_targets: int, channels: list[_Channel],
                   t: np.ndarray) -> np.ndarray:
    """Morph target weights ``[T, n_targets]`` of a mesh node over time."""
    node = d.doc.nodes[node_index]
    mesh = d.doc.meshes[node.mesh]
    raw_nodes = d.raw.get("nodes") or []
    node_weights = raw_nodes[node_index].get("weights") if node_index < len(raw_nodes) else None
    base = node_weights if node_weights else mesh.weights
    w = np.zeros((len(t), n_targets))
    if base:
        base = np.asarray(base, np.float64)[:n_targets]
        w[:, :len(base)] = base
    for ch in channels:
        if ch.node == node_index and ch.path == "weights":
            vals = ch.values
            if vals.shape[-1] != n_targets:
                raise _err(d.path, f"node {node_index}: the weights animation has {vals.shape[-1]} values per key "
                                   f"but the mesh has {n_targets} morph targets")
            w = sample_channel(ch.times, vals, ch.interpolation, t)
    return w


def _triangles(d: GltfDocument, prim, n_verts: int, what: str) -> np.ndarray | None:
    """Triangle indices ``[F, 3]`` of a primitive (strips/fans converted); None for points/lines."""
    mode = 4 if prim.mode is None else int(prim.mode)
    if prim.indices is not None:
        idx = read_accessor(d, prim.indices, f"{what} indices").reshape(-1).astype(np.int64)
    else:
        idx = np.arange(n_verts, dtype=np.int64)
    if mode == 4:
        if len(idx) % 3:
            raise _err(d.path, f"{what}: {len(idx)} triangle indices is not a multiple of 3")
        tris = idx.reshape(-1, 3)
    elif mode == 5:  # strip: winding alternates
        k = np.arange(max(len(idx) - 2, 0))
        odd = k % 2 == 1
        tris = np.stack([idx[k], idx[k + 1 + odd], idx[k + 2 - odd]], axis=1)
    elif mode == 6:  # fan around the first index
        k = np.arange(1, max(len(idx) - 1, 1))
        tris = np.stack([idx[k], idx[k + 1], np.full_like(k, idx[0])], axis=1) if len(idx) >= 3 else \
            np.zeros((0, 3), np.int64)
    else:
        return None
    if tris.size and (tris.min() < 0 or tris.max() >= n_verts):
        raise _err(d.path, f"{what}: vertex index {int(tris.max())} out of range ({n_verts} vertices)")
    return tris


def _attribute(prim, name: str):
    attrs = prim.attributes
    if isinstance(attrs, dict):
        return attrs.get(name)
    return getattr(attrs, name, None)


def _skin_influences(d: GltfDocument, prim, n_verts: int, n_skin_joints: int,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
    """``joint_index int [V, S]`` and renormalized ``weight float [V, S]`` from JOINTS_n / WEIGHTS_n."""
    idx_sets, w_sets = [], []
    n = 0
    while _attribute(prim, f"JOINTS_{n}") is not None and _attribute(prim, f"WEIGHTS_{n}") is not None:
        ji = read_accessor(d, _attribute(prim, f"JOINTS_{n}"), f"{what} JOINTS_{n}")
        wi = read_accessor(d, _attribute(prim, f"WEIGHTS_{n}"), f"{what} WEIGHTS_{n}")
        if len(ji) != n_verts or len(wi) != n_verts:
            raise _err(d.path, f"{what}: JOINTS_{n}/WEIGHTS_{n} have {len(ji)}/{len(wi)} rows, "
                               f"POSITION has {n_verts}")
        idx_sets.append(ji.astype(np.int64))
        w_sets.append(np.asarray(wi, np.float64))
        n += 1
    if not n:
        raise _err(d.path, f"{what}: a skinned mesh without JOINTS_0/WEIGHTS_0")
    joint_idx = np.concatenate(idx_sets, axis=1)
    weight = np.concatenate(w_sets, axis=1)
    weight = np.where(weight > 0, weight, 0.0)
    used = weight > 0
    if np.any(joint_idx[used] >= n_skin_joints) or np.any(joint_idx < 0):
        raise _err(d.path, f"{what}: a JOINTS index is out of range (the skin has {n_skin_joints} joints)")
    joint_idx = np.where(used, joint_idx, 0)
    total = weight.sum(axis=1, keepdims=True)
    unweighted = total[:, 0] <= 0
    if unweighted.any():
        log.warning("%s: %s: %d vertices have no skin weight; they stay at their bind position",
                    d.path, what, int(unweighted.sum()))
    weight = np.where(total > 0, weight / np.where(total > 0, total, 1.0), 0.0)
    return joint_idx, weight


@dataclass
class _Instance:
    """One mesh primitive placed in the scene."""

    node: int
    prim: object
    what: str
    skin: int | None
    attach_joint: int | None = None  # rigid mesh under a joint node: that joint node


def _frame_times(channels: list[_Channel], fps: float, source: Path) -> np.ndarray:
    """Sample times ``[T]`` from the first to the last keyframe at ``fps``; T is checked before allocating."""
    if not channels:
        return np.zeros(1)
    t0 = min(float(c.times[0]) for c in channels)
    t1 = max(float(c.times[-1]) for c in channels)
    span = np.floor((t1 - t0) * fps + 1e-3) + 1
    if not np.isfinite(span) or span > LIMITS.max_frames:
        raise _err(source, f"the animation spans {t1 - t0:.6g} s (keyframes from {t0:.6g} to {t1:.6g} s), "
                           f"{span:.3g} frames at {fps:.6g} fps: above the limit of {LIMITS.max_frames:,} frames "
                           "(corrupt keyframe times, or pass a lower fps)")
    n = int(span)
    return t0 + np.arange(n, dtype=np.float64) / fps


def load_gltf(path: str | Path, fps: float | None = None, frames: FrameSelection = None,
              animation: int | str | None = None) -> MeshSequence:
    """Sample an animated glTF/GLB scene into a :class:`MeshSequence`.

    Args:
        path: ``.glb`` or ``.gltf`` file (external ``.bin`` files next to it are read).
        fps: sampling rate; default the animation's own keyframe rate when its keys are evenly
            spaced, else 30. Frames are ``t0 + k / fps`` from the first to the last keyframe.
        frames: optional selection of the sampled frames.
        animation: index or name of the animation to play (default the first); a file without
            animations gives one frame (the rest pose).
    Returns:
        ``verts float32 [K, V, 3]``, ``faces int32 [F, 3]``; ``extras`` holds ``times [K]``, ``animation``
        and, for skinned scenes, the file's rig (``joints [K, J, 3]``, ``parents [J]``, ``joint_names``,
        ``weights [V, J]``, ``rest_joints [J, 3]``, ``rest_verts [V, 3]``, ``bone_transforms [K, J, 4, 4]``).
    Raises:
        SequenceError: unreadable/truncated/corrupt file, no triangle meshes, unknown animation.
    """
    path = Path(path)
    d = read_document(path)
    try:
        return _sample_scene(d, fps, frames, animation)
    except SequenceError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            np.linalg.LinAlgError) as exc:
        # values of the wrong shape or type that the schema allows through (e.g. a 2-vector translation)
        raise _err(path, f"malformed glTF content: {type(exc).__name__}: {exc}") from exc
    except MemoryError as exc:  # a size no declared-size check foresaw: still a clean error
        raise _err(path, "not enough memory to sample the scene (sizes too large for this machine)") from exc


def _sample_scene(d: GltfDocument, fps: float | None, frames: FrameSelection,
                  animation: int | str | None) -> MeshSequence:
    """The body of :func:`load_gltf` for a parsed document."""
    path = d.path
    doc = d.doc
    nodes = doc.nodes or []
    parent, order = _node_hierarchy(d)
    in_scene = _scene_roots_reachable(d, parent)

    # --- which animation, at which times
    anims = doc.animations or []
    anim_index: int | None = None
    if anims:
        if animation is None:
            anim_index = 0
        elif isinstance(animation, str):
            names = [a.name for a in anims]
            if animation not in names:
                raise _err(path, f"no animation named {animation!r} (the file has {names})")
            anim_index = names.index(animation)
        else:
            anim_index = int(animation)
            if not 0 <= anim_index < len(anims):
                raise _err(path, f"animation {anim_index} does not exist (the file has {len(anims)})")
    elif animation is not None:
        raise _err(path, f"the file has no animations (asked for {animation!r})")
    channels = _read_channels(d, anim_index) if anim_index is not None else []
    rate = float(fps) if fps is not None else _keyframe_fps(channels)
    if not np.isfinite(rate) or rate <= 0:
        raise _err(path, f"fps must be a positive number, got {fps}")
    t_all = _frame_times(channels, rate, path)
    idx = frame_indices(len(t_all), frames, path)
    t = t_all[idx]

    # --- mesh instances in scene order
    skins = doc.skins or []
    instances: list[_Instance] = []
    for i in order:
        node = nodes[i]
        if node.mesh is None or not in_scene[i]:
            continue
        if not 0 <= node.mesh < len(doc.meshes or []):
            raise _err(path, f"node {i} refers to mesh {node.mesh}, which does not exist")
        if node.skin is not None and not 0 <= node.skin < len(skins):
            raise _err(path, f"node {i} refers to skin {node.skin}, which does not exist")
        for pi, prim in enumerate(doc.meshes[node.mesh].primitives or []):
            instances.append(_Instance(i, prim, f"mesh {node.mesh} ('{doc.meshes[node.mesh].name or ''}') "
                                                f"primitive {pi}", node.skin))
    skinned = any(inst.skin is not None for inst in instances)

    # --- the file's rig: union of the joints of all skins in use, in depth-first node order
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    joint_nodes: list[int] = []
    ibm_of: dict[int, np.ndarray] = {}
    skin_ibms: dict[int, np.ndarray] = {}
    if skinned:
        for s in sorted({inst.skin for inst in instances if inst.skin is not None}):
            skin = skins[s]
            jn = [int(j) for j in skin.joints or []]
            if not jn or min(jn) < 0 or max(jn) >= len(nodes):
                raise _err(path, f"skin {s} has no joints or a joint node out of range")
            if skin.inverseBindMatrices is not None:
                ibm = read_accessor(d, skin.inverseBindMatrices, f"skin {s} inverseBindMatrices")
                if ibm.shape != (len(jn), 16):
                    raise _err(path, f"skin {s}: {len(ibm)} inverse bind matrices for {len(jn)} joints")
                ibm = ibm.reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major storage
            else:
                ibm = np.broadcast_to(np.eye(4), (len(jn), 4, 4)).copy()
            skin_ibms[s] = ibm
            for j, m in zip(jn, ibm):
                ibm_of.setdefault(j, m)
        joint_nodes = sorted(ibm_of, key=lambda j: rank[j])
        joint_set = set(joint_nodes)
        kept = []
        for inst in instances:
            if inst.skin is not None:
                kept.append(inst)
                continue
            a = int(parent[inst.node]) if inst.node not in joint_set else inst.node
            while a >= 0 and a not in joint_set:
                a = int(parent[a])
            if a >= 0:
                inst.attach_joint = a
                kept.append(inst)
            else:
                log.info("%s: %s is neither skinned nor attached to a joint; left out", path, inst.what)
        instances = kept
    joint_col = {node: c for c, node in enumerate(joint_nodes)}

    # --- sizes the file declares, checked before anything of that size is allocated
    K = len(t)
    check_size(len(nodes) * K, LIMITS.max_vertex_frames // 8, f"nodes x frames ({len(nodes)} x {K})", path)
    declared_verts = 0
    for inst in instances:
        pos_acc = _attribute(inst.prim, "POSITION")
        if pos_acc is None:
            continue
        if not 0 <= int(pos_acc) < len(doc.accessors or []):
            raise _err(path, f"{inst.what} POSITION: accessor {pos_acc} does not exist")
        n_pos = int(doc.accessors[int(pos_acc)].count or 0)
        n_targets = len(inst.prim.targets or [])
        n_skin = len(skins[inst.skin].joints or []) if inst.skin is not None else 0
        check_size(n_pos * max(n_targets, n_skin, 1), LIMITS.max_vertex_frames,
                   f"{inst.what}: vertices x max(morph targets, skin joints) ({n_pos} x {max(n_targets, n_skin, 1)})",
                   path)
        declared_verts += n_pos
    check_vertex_frames(K, declared_verts, path)
    check_size(declared_verts * len(joint_nodes), LIMITS.max_vertex_frames,
               f"vertices x joints ({declared_verts} x {len(joint_nodes)})", path)
    world = _world_matrices(d, parent, order, channels, t)

    # --- evaluate every primitive on every frame
    all_verts, all_faces, all_rest, all_weights = [], [], [], []
    offset = 0
    for inst in instances:
        pos_acc = _attribute(inst.prim, "POSITION")
        if pos_acc is None:
            log.info("%s: %s has no POSITION; skipped", path, inst.what)
            continue
        base = read_accessor(d, pos_acc, f"{inst.what} POSITION")
        if base.shape[1] != 3:
            raise _err(path, f"{inst.what}: POSITION must be VEC3")
        tris = _triangles(d, inst.prim, len(base), inst.what)
        if tris is None:
            log.info("%s: %s is not made of triangles (mode %s); skipped", path, inst.what, inst.prim.mode)
            continue
        targets = inst.prim.targets or []
        deltas = []
        for ti, target in enumerate(targets):
            acc = target.get("POSITION") if isinstance(target, dict) else getattr(target, "POSITION", None)
            delta = np.zeros_like(base) if acc is None else read_accessor(d, acc, f"{inst.what} target {ti}")
            if delta.shape != base.shape:
                raise _err(path, f"{inst.what}: morph target {ti} has {len(delta)} rows, POSITION has {len(base)}")
            deltas.append(delta)
        if deltas:
            mw = _morph_weights(d, inst.node, len(deltas), channels, t)  # [K, n_targets]
            local = base[None] + np.einsum("kt,tvc->kvc", mw, np.stack(deltas))
        else:
            local = np.broadcast_to(base, (K,) + base.shape)

        V = len(base)
        if inst.skin is not None:
            skin_joints = [int(j) for j in skins[inst.skin].joints]
            ibm = skin_ibms[inst.skin]
            joint_idx, weight = _skin_influences(d, inst.prim, V, len(skin_joints), inst.what)
            dense = np.zeros((V, len(skin_joints)))
            np.add.at(dense, (np.repeat(np.arange(V), joint_idx.shape[1]), joint_idx.reshape(-1)),
                      weight.reshape(-1))
            unweighted = dense.sum(axis=1) <= 0
            mats = world[skin_joints].transpose(1, 0, 2, 3) @ ibm  # [K, Js, 4, 4]
            frames_out = np.empty((K, V, 3), dtype=np.float32)
            for k in range(K):
                frames_out[k] = linear_blend_skinning(local[k], dense, mats[k])
            frames_out[:, unweighted] = local[:, unweighted]
            # ground truth in the union joint space; rest positions in the canonical bind space
            cols = np.asarray([joint_col[j] for j in skin_joints])
            w_union = np.zeros((V, len(joint_nodes)))
            np.add.at(w_union, (slice(None), cols), dense)
            correction = np.stack([np.linalg.inv(ibm_of[j]) @ m for j, m in zip(skin_joints, ibm)])
            dominant = np.argmax(dense, axis=1)
            rest = np.einsum("vab,vb->va", correction[dominant][:, :3], np.c_[base, np.ones(V)])
        else:
            frames_out = np.empty((K, V, 3), dtype=np.float32)
            step = max(1, (1 << 20) // max(V, 1))  # frames per block: float64 temporaries stay small
            for s in range(0, K, step):
                frames_out[s:s + step] = (np.einsum("kab,kvb->kva", world[inst.node][s:s + step, :3, :3],
                                                    local[s:s + step])
                                          + world[inst.node][s:s + step, None, :3, 3])
            w_union = None
            rest = None
            if skinned:
                j = inst.attach_joint
                w_union = np.zeros((V, len(joint_nodes)))
                w_union[:, joint_col[j]] = 1.0
                # rest such that world(j) @ ibm(j) @ rest reproduces the frames
                to_rest = np.linalg.inv(world[j, 0] @ ibm_of[j]) @ world[inst.node, 0]
                rest = base @ to_rest[:3, :3].T + to_rest[:3, 3]
        all_verts.append(frames_out)
        all_faces.append(tris + offset)
        all_weights.append(w_union)
        all_rest.append(rest if rest is not None else (world[inst.node, 0, :3, :3] @ base.T).T
                        + world[inst.node, 0, :3, 3])
        offset += V

    if not all_verts:
        raise _err(path, "the scene holds no triangle mesh")
    verts = np.concatenate(all_verts, axis=1)
    faces = np.concatenate(all_faces, axis=0)
    extras: dict = {"times": t.astype(np.float32)}
    if anim_index is not None:
        extras["animation"] = anims[anim_index].name or f"animation_{anim_index}"
    if skinned:
        jn = np.asarray(joint_nodes, dtype=np.int64)
        parents = np.full(len(jn), -1, dtype=np.int32)
        for c, j in enumerate(jn):
            a = int(parent[j])
            while a >= 0 and a not in joint_col:
                a = int(parent[a])
            parents[c] = joint_col[a] if a >= 0 else -1
        ibm_stack = np.stack([ibm_of[j] for j in jn])
        extras.update(
            joints=world[jn][:, :, :3, 3].transpose(1, 0, 2).astype(np.float32),
            parents=parents,
            joint_names=[nodes[j].name or f"node_{j}" for j in jn],
            weights=np.concatenate(all_weights, axis=0).astype(np.float32),
            rest_joints=np.linalg.inv(ibm_stack)[:, :3, 3].astype(np.float32),
            rest_verts=np.concatenate(all_rest, axis=0).astype(np.float32),
            bone_transforms=(world[jn].transpose(1, 0, 2, 3) @ ibm_stack).astype(np.float32),
        )
    else:
        extras["rest_verts"] = np.concatenate(all_rest, axis=0).astype(np.float32)
    log.info("%s: %d frames at %.3g fps, %d vertices, %d faces%s", path, len(t), rate, verts.shape[1],
             len(faces), f", {len(joint_nodes)} joints" if skinned else "")
    return build_sequence(verts, faces, path, rate if channels else fps, extras)


# ============================================================================ writing

class _GlbBuilder:
    """Collects binary arrays as bufferViews/accessors of one GLB buffer."""

    def __init__(self) -> None:
        self.gl = pygltflib
        self.blob = bytearray()
        self.views: list = []
        self.accessors: list = []

    def add(self, array: np.ndarray, component: int, kind: str, target: int | None = None,
            normalized: bool = False, minmax: bool = False) -> int:
        """Append ``array [count, n]`` (or ``[count]``) as one accessor; returns its index.

        Raises:
            ValueError: a float array with NaN or Inf (after the cast to the component type, so values
                that overflow float32 are caught too): a viewer would show garbage.
        """
        dtype = np.dtype(_COMPONENT_DTYPES[component]).newbyteorder("<")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.ascontiguousarray(np.asarray(array), dtype=dtype)
        if dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0]
            raise ValueError(f"accessor {len(self.accessors)} ({kind}, {arr.shape[0]} rows) holds a non-finite "
                             f"value at row {int(bad[0])} (overflow or NaN): refusing to write it")
        count = arr.shape[0]
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        offset = len(self.blob)
        self.blob.extend(arr.tobytes())
        self.views.append(self.gl.BufferView(buffer=0, byteOffset=offset, byteLength=arr.nbytes, target=target))
        acc = self.gl.Accessor(bufferView=len(self.views) - 1, byteOffset=0, componentType=component,
                               normalized=normalized if normalized else None, count=count, type=kind)
        if minmax:
            flat = arr.reshape(count, -1)
            acc.min = [float(x) for x in flat.min(axis=0)]
            acc.max = [float(x) for x in flat.max(axis=0)]
        else:
            acc.min, acc.max = None, None
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def write(self, path: Path, doc) -> None:
        """Write ``doc`` (a pygltflib.GLTF2 without buffers) and the blob as a GLB container."""
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        doc.bufferViews = self.views
        doc.accessors = self.accessors
        doc.buffers = [self.gl.Buffer(byteLength=len(self.blob))]
        text = doc.gltf_to_json(separators=(",", ":"), indent=None).encode("utf-8")
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(self.blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<4sII", _GLB_MAGIC, 2, total))
            fh.write(struct.pack("<II", len(text), _CHUNK_JSON))
            fh.write(text)
            fh.write(struct.pack("<II", len(self.blob), _CHUNK_BIN))
            fh.write(bytes(self.blob))
        tmp.replace(path)


def top_k_influences(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest weights per row, renormalized: ``joint_index int [V, k]``, ``weight float [V, k]``.

    Rows with fewer than ``k`` joints are padded with (joint 0, weight 0).
    Raises:
        ValueError: a row with no positive weight (names the vertex), or negative / non-finite weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("skin weights contain NaN or Inf")
    if np.any(w < -1e-6):
        raise ValueError(f"skin weights must be non-negative (min {float(w.min()):.3g})")
    w = np.maximum(w, 0.0)
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, order, axis=1)
    total = top.sum(axis=1, keepdims=True)
    empty = np.flatnonzero(total[:, 0] <= 0)
    if len(empty):
        raise ValueError(f"vertex {int(empty[0])} has no positive skin weight ({len(empty)} such vertices)")
    top = top / total
    order = np.where(top > 0, order, 0)
    if order.shape[1] < k:
        pad = k - order.shape[1]
        order = np.pad(order, ((0, 0), (0, pad)))
        top = np.pad(top, ((0, 0), (0, pad)))
    return order, top


def _check_parents(parents: np.ndarray) -> list[int]:
    """Validate a parent array (forest allowed) and return a parents-first order."""
    J = len(parents)
    if np.any(parents >= J) or np.any(parents < -1) or np.any(parents == np.arange(J)):
        raise ValueError(f"parents must be -1 or an index of another joint (J = {J})")
    children: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(parents):
        if p >= 0:
            children[int(p)].append(j)
    order, stack = [], [j for j in range(J) if parents[j] < 0][::-1]
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(reversed(children[j]))
    if len(order) != J:
        raise ValueError("parents contain a cycle (some joints have no path to a root)")
    return order


def _default_material(gl):
    return gl.Material(name="sprig_default", doubleSided=True,
                       pbrMetallicRoughness=gl.PbrMetallicRoughness(baseColorFactor=[0.8, 0.8, 0.8, 1.0],
                                                                   metallicFactor=0.0, roughnessFactor=0.8))


ARTICULATION_TOL = 1e-5  # of the anchor box diagonal: a non-root joint within this of its rest offset is articulated


def save_rigged_gltf(path: str | Path, anchor_verts: np.ndarray, faces: np.ndarray, joints: np.ndarray,
                     parents: np.ndarray, names: list[str] | None, weights: np.ndarray,
                     bone_transforms: np.ndarray, fps: float = 30.0,
                     vertex_colors: np.ndarray | None = None, mesh_name: str = "mesh",
                     armature_name: str = "Armature", animation_name: str = "sprig") -> Path:
    """Write a skinned, animated GLB: the anchor mesh, a joint hierarchy, and one animation.

    The bind pose puts joint ``j`` at ``joints[j]`` with identity rotation (``Bind_j``), so its
    inverse bind matrix is a translation by ``-joints[j]``. Frame ``k`` poses joint ``j`` at
    ``global_kj = T_kj @ Bind_j`` and stores the LOCAL ``inverse(global_k,parent) @ global_kj`` as
    keyframes, so that skinning in any glTF viewer gives ``v_k = sum_j w_j T_kj [v, 1]`` (see
    :func:`backend.lbs.linear_blend_skinning`). Roots get translation + rotation channels. A non-root
    joint of an articulated motion (its joint stays where its parent carries it, as the articulated
    motion fit guarantees) keeps its rest offset from the parent on every frame, so it gets a rotation
    channel only; a translation channel is written for a non-root joint only when its local translation
    leaves the rest offset (free per-bone motions: the bones separate).

    Args:
        path: output ``.glb``.
        anchor_verts: float ``[V, 3]`` rest mesh (the rig's rest shape: the anchor frame, or the solved one).
        faces: int ``[F, 3]``.
        joints: float ``[J, 3]`` rest joint positions.
        parents: int ``[J]``, -1 for roots (several roots are allowed).
        names: ``J`` bone names (default ``joint_00`` ...).
        weights: float ``[V, J]``; the 4 largest per vertex are kept and renormalized.
        bone_transforms: float ``[K, J, 4, 4]`` rest -> frame ``k``; assumed rigid (the rotation part is
            projected to the nearest rotation).
        fps: keyframe rate of the animation.
        vertex_colors: optional float ``[V, 3|4]`` in [0, 1] (e.g. a stability heatmap), written as COLOR_0.
    Returns:
        The written path.
    Raises:
        ValueError: inconsistent shapes, bad parents, non-finite values, a vertex without weight.
    """
    gl = pygltflib
    path = Path(path)
    anchor = np.asarray(anchor_verts, dtype=np.float64)
    faces = np.asarray(faces)
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents, dtype=np.int64).reshape(-1)
    T = np.asarray(bone_transforms, dtype=np.float64)
    V, J = anchor.shape[0], joints.shape[0]
    if anchor.ndim != 2 or anchor.shape[1] != 3 or V < 1:
        raise ValueError(f"anchor_verts must be [V, 3], got {list(anchor.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) < 1:
        raise ValueError(f"faces must be [F, 3], got {list(faces.shape)}")
    if faces.min() < 0 or faces.max() >= V:
        raise ValueError(f"face index out of range [0, {V})")
    if joints.ndim != 2 or joints.shape[1] != 3 or J < 1:
        raise ValueError(f"joints must be [J, 3], got {list(joints.shape)}")
    if parents.shape != (J,):
        raise ValueError(f"parents must have {J} entries, got {parents.shape[0]}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (V, J):
        raise ValueError(f"weights must be [V, J] = [{V}, {J}], got {list(w.shape)}")
    if T.ndim != 4 or T.shape[1:] != (J, 4, 4) or T.shape[0] < 1:
        raise ValueError(f"bone_transforms must be [K, {J}, 4, 4], got {list(T.shape)}")
    for label, arr in (("anchor_verts", anchor), ("joints", joints), ("bone_transforms", T)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{label} contain NaN or Inf")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    names = list(names) if names is not None and len(names) else [f"joint_{j:02d}" for j in range(J)]
    if len(names) != J:
        raise ValueError(f"{len(names)} names for {J} joints")
    names = [str(n) for n in names]
    if len(set(names)) != J:
        log.warning("bone names are not unique; Blender will rename the duplicates")
    order = _check_parents(parents)
    joint_idx, joint_w = top_k_influences(w, 4)
    K = T.shape[0]

    # Animation: local TRS of every joint on every frame.
    rot = polar_rotation(T[:, :, :3, :3])  # [K, J, 3, 3]
    g_rot = rot  # global rotation of joint j = R_kj (its bind rotation is the identity)
    g_pos = np.einsum("kjab,jb->kja", rot, joints) + T[:, :, :3, 3]  # T_kj @ joint_j
    loc_t = np.empty((K, J, 3))
    loc_q = np.empty((K, J, 4))
    for j in order:
        p = int(parents[j])
        if p < 0:
            loc_t[:, j] = g_pos[:, j]
            loc_r = g_rot[:, j]
        else:
            pr_t = np.swapaxes(g_rot[:, p], -1, -2)
            loc_t[:, j] = np.einsum("kab,kb->ka", pr_t, g_pos[:, j] - g_pos[:, p])
            loc_r = pr_t @ g_rot[:, j]
        q = matrix_to_quat(loc_r)
        for k in range(1, K):  # keep consecutive keys on the same hemisphere
            if np.dot(q[k], q[k - 1]) < 0:
                q[k] = -q[k]
        loc_q[:, j] = q

    rest_offset = joints - np.where(parents[:, None] >= 0, joints[np.maximum(parents, 0)], 0.0)  # [J, 3]
    span = float(np.linalg.norm(np.ptp(anchor, axis=0)))
    moves = np.abs(loc_t - rest_offset[None]).max(axis=(0, 2)) > ARTICULATION_TOL * max(span, 1e-12)  # [J]
    translated = (parents < 0) | moves
    if (moves & (parents >= 0)).any():
        log.warning("%d non-root joints leave their rest offset from the parent (free per-bone motion); "
                    "they get translation channels", int((moves & (parents >= 0)).sum()))

    b = _GlbBuilder()
    pos = b.add(anchor.astype(np.float32), _FLOAT, "VEC3", _ARRAY_BUFFER, minmax=True)
    normals = vertex_normals(anchor.astype(np.float32), faces.astype(np.int64))
    attrs = gl.Attributes(POSITION=pos, NORMAL=b.add(normals, _FLOAT, "VEC3", _ARRAY_BUFFER))
    attrs.JOINTS_0 = b.add(joint_idx, _UBYTE if J <= 256 else _USHORT, "VEC4", _ARRAY_BUFFER)
    attrs.WEIGHTS_0 = b.add(joint_w.astype(np.float32), _FLOAT, "VEC4", _ARRAY_BUFFER)
    if vertex_colors is not None:
        colors = np.asarray(vertex_colors, dtype=np.float32)
        if colors.ndim != 2 or colors.shape[0] != V or colors.shape[1] not in (3, 4):
            raise ValueError(f"vertex_colors must be [V, 3] or [V, 4], got {list(colors.shape)}")
        attrs.COLOR_0 = b.add(np.clip(colors, 0.0, 1.0), _FLOAT, f"VEC{colors.shape[1]}", _ARRAY_BUFFER)
    indices = b.add(faces.reshape(-1).astype(np.uint32 if V > 65535 else np.uint16),
                    _UINT if V > 65535 else _USHORT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
    ibm = np.broadcast_to(np.eye(4), (J, 4, 4)).copy()
    ibm[:, :3, 3] = -joints
    ibm_acc = b.add(ibm.transpose(0, 2, 1).reshape(J, 16).astype(np.float32), _FLOAT, "MAT4")

    first_joint = 2
    joint_nodes = []
    for j in range(J):
        p = int(parents[j])
        rest_t = joints[j] - (joints[p] if p >= 0 else 0.0)
        joint_nodes.append(gl.Node(name=names[j], translation=[float(x) for x in rest_t],
                                   children=[first_joint + c for c in np.flatnonzero(parents == j).tolist()]))
    roots = [first_joint + j for j in range(J) if parents[j] < 0]
    nodes = [gl.Node(name=mesh_name, mesh=0, skin=0), gl.Node(name=armature_name, children=roots)] + joint_nodes

    times = b.add((np.arange(K, dtype=np.float64) / fps).astype(np.float32), _FLOAT, "SCALAR", minmax=True)
    samplers, channels = [], []
    for j in range(J):
        tracks = (("translation", loc_t[:, j], "VEC3"),) if translated[j] else ()
        for prop, values, kind in tracks + (("rotation", loc_q[:, j], "VEC4"),):
            out = b.add(values.astype(np.float32), _FLOAT, kind)
            samplers.append(gl.AnimationSampler(input=times, output=out, interpolation="LINEAR"))
            channels.append(gl.AnimationChannel(sampler=len(samplers) - 1,
                                                target=gl.AnimationChannelTarget(node=first_joint + j, path=prop)))

    doc = gl.GLTF2(
        asset=gl.Asset(generator="SPRig for Blender", version="2.0"),
        scene=0,
        scenes=[gl.Scene(name="Scene", nodes=[0, 1])],
        nodes=nodes,
        meshes=[gl.Mesh(name=mesh_name, primitives=[gl.Primitive(attributes=attrs, indices=indices, material=0)])],
        materials=[_default_material(gl)],
        skins=[gl.Skin(name=armature_name, joints=[first_joint + j for j in range(J)], inverseBindMatrices=ibm_acc)],
        animations=[gl.Animation(name=animation_name, samplers=samplers, channels=channels)],
    )
    b.write(path, doc)
    return path


def save_morph_gltf(seq: MeshSequence, path: str | Path, fps: float | None = None) -> Path:
    """Write a sequence as a morph-target animation GLB (the anchor mesh + one target per later frame).

    Frame ``k`` (k >= 1) is target ``k - 1`` at weight 1, all others 0; keyframes are LINEAR at ``fps``
    (default: the sequence's fps, else 30), so sampling at that rate gives the frames back. Blender
    imports it as shape keys.
    """
    gl = pygltflib
    path = Path(path)
    rate = float(fps if fps is not None else (seq.fps or DEFAULT_FPS))
    verts = np.asarray(seq.verts, dtype=np.float32)
    K, V = verts.shape[:2]
    b = _GlbBuilder()
    pos = b.add(verts[0], _FLOAT, "VEC3", _ARRAY_BUFFER, minmax=True)
    targets = [{"POSITION": b.add(verts[k] - verts[0], _FLOAT, "VEC3", _ARRAY_BUFFER, minmax=True)}
               for k in range(1, K)]
    faces = np.asarray(seq.faces)
    indices = b.add(faces.reshape(-1).astype(np.uint32 if V > 65535 else np.uint16),
                    _UINT if V > 65535 else _USHORT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
    prim = gl.Primitive(attributes=gl.Attributes(POSITION=pos), indices=indices, material=0, targets=targets)
    mesh = gl.Mesh(name=seq.name, primitives=[prim], weights=[0.0] * (K - 1) if K > 1 else None)
    animations = []
    if K > 1:
        times = b.add((np.arange(K) / rate).astype(np.float32), _FLOAT, "SCALAR", minmax=True)
        onehot = np.zeros((K, K - 1), dtype=np.float32)
        onehot[np.arange(1, K), np.arange(K - 1)] = 1.0
        out = b.add(onehot.reshape(-1), _FLOAT, "SCALAR")
        animations = [gl.Animation(name=seq.name,
                                   samplers=[gl.AnimationSampler(input=times, output=out, interpolation="LINEAR")],
                                   channels=[gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(
                                       node=0, path="weights"))])]
    doc = gl.GLTF2(asset=gl.Asset(generator="SPRig for Blender", version="2.0"), scene=0,
                   scenes=[gl.Scene(nodes=[0])], nodes=[gl.Node(name=seq.name, mesh=0)], meshes=[mesh],
                   materials=[_default_material(gl)], animations=animations)
    b.write(path, doc)
    return path
