"""Pure data conversion between a rig result and Blender's armature conventions (no bpy).

Kept apart from the Blender-facing code so it can be read and tested without Blender. Nothing here
fits or predicts a rig: it only re-expresses the backend's skeleton and bone transforms in the form
Blender stores them (bone heads/tails, pose-bone basis matrices) and maps per-vertex values to colours.

Conventions: the armature object and the rigged mesh sit at the world origin with identity transforms,
so armature space is world space. A bone's rest matrix ``B_j`` (Blender's ``Bone.matrix_local``) has
its head at joint ``j``; the backend's ``T_kj`` maps anchor (rest) space to frame ``k``.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np


def children_lists(parents: np.ndarray) -> list[list[int]]:
    """Children of each joint, from ``parents int [J]`` (``-1`` for roots; forests allowed)."""
    children: list[list[int]] = [[] for _ in range(len(parents))]
    for j, p in enumerate(np.asarray(parents).tolist()):
        if p >= 0:
            children[p].append(j)
    return children


def attached_bones(joints: np.ndarray, parents: np.ndarray, transforms: np.ndarray, tol: float) -> np.ndarray:
    """``bool [J]``: non-root bones whose joint stays where the parent's transform carries it on every frame
    (within ``tol``), i.e. whose motion is a pure rotation in the parent's frame; such a bone needs no
    location keys and may be connected to its parent. Roots are False.

    Args:
        joints: ``[J, 3]`` rest joints; parents: ``[J]``; transforms: ``[K, J, 4, 4]`` rest -> frame ``k``.
    """
    T = np.asarray(transforms, dtype=np.float64)
    c = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents)
    out = np.zeros(len(parents), dtype=bool)
    child = np.flatnonzero(parents >= 0)
    if len(child):
        own = np.einsum("kjab,jb->kja", T[:, child][..., :3, :3], c[child]) + T[:, child][..., :3, 3]
        par = T[:, parents[child]]
        carried = np.einsum("kjab,jb->kja", par[..., :3, :3], c[child]) + par[..., :3, 3]
        out[child] = np.linalg.norm(own - carried, axis=-1).max(axis=0) <= tol
    return out


def connected_bones(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, attached: np.ndarray,
                    tol: float) -> np.ndarray:
    """``bool [J]``: bones to connect to their parent (Blender's ``use_connect``): attached (see
    :func:`attached_bones`) and starting on the parent's tail (within ``tol``), which
    ``backend.skeleton.bone_tails`` gives a parent with one child."""
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents)
    tails = np.asarray(tails, dtype=np.float64)
    out = np.zeros(len(parents), dtype=bool)
    child = np.flatnonzero(parents >= 0)
    out[child] = attached[child] & (np.linalg.norm(tails[parents[child]] - joints[child], axis=1) <= tol)
    return out


def roll_reference_axes(heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """The world axis each bone's local Z should face (for ``EditBone.align_roll``), ``float64 [J, 3]``.

    Bones lying roughly horizontal get Z up (+Z); bones close to vertical get Z toward the front (-Y),
    Blender's usual rigging convention, so rolls are consistent across the skeleton.
    """
    direction = np.asarray(tails, dtype=np.float64) - np.asarray(heads, dtype=np.float64)
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    vertical = np.abs(direction[:, 2]) > 0.7
    return np.where(vertical[:, None], np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0]))


def needed_keys(frames: np.ndarray, values: np.ndarray, tol: float) -> np.ndarray:
    """``bool [K]``: the keys of ``values [K, C]`` at ``frames [K]`` that linear interpolation between the kept
    ones cannot leave out: every dropped key is reproduced within ``tol`` on each channel (Douglas-Peucker:
    a stretch keeps its worst key while that key is more than ``tol`` off the line between the stretch's
    ends). The first and the last key are always kept."""
    t = np.asarray(frames, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(len(t), -1)
    keep = np.zeros(len(t), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(t) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        s = ((t[a + 1:b] - t[a]) / (t[b] - t[a]))[:, None]
        off = np.abs(v[a + 1:b] - ((1.0 - s) * v[a] + s * v[b])).max(axis=1)
        m = int(off.argmax())
        if off[m] > tol:
            keep[a + 1 + m] = True
            stack += [(a, a + 1 + m), (a + 1 + m, b)]
    return keep


def pose_basis_matrices(rest: np.ndarray, parents: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Pose-bone basis matrices ``float64 [K, J, 4, 4]`` that reproduce the backend's bone transforms.

    Blender poses a bone as ``P_j = P_p (B_p^-1 B_j) L_j`` (``L_j`` = ``PoseBone.matrix_basis``) and
    deforms a vertex by ``P_j B_j^-1``. Requiring ``P_j B_j^-1 = T_kj`` gives the bone-local transform
    ``T_kp^-1 T_kj`` (inverse parent global times global), expressed in the bone's rest basis:
    ``L_j = B_j^-1 (T_kp^-1 T_kj) B_j`` (for a root, ``B_j^-1 T_kj B_j``).

    Args:
        rest: ``[J, 4, 4]`` rest matrices ``B_j`` in armature space (``Bone.matrix_local``).
        parents: ``[J]`` parent indices, ``-1`` for roots.
        transforms: ``[K, J, 4, 4]`` anchor-to-frame-k bone transforms ``T_kj``.
    """
    rest = np.asarray(rest, dtype=np.float64)
    transforms = np.asarray(transforms, dtype=np.float64)
    parents = np.asarray(parents)
    local = transforms.copy()
    has_parent = parents >= 0
    if has_parent.any():
        parent_inv = np.linalg.inv(transforms[:, parents[has_parent]])
        local[:, has_parent] = parent_inv @ transforms[:, has_parent]
    return np.linalg.inv(rest)[None] @ local @ rest[None]


def global_pose_matrices(rest: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Armature-space pose matrices ``P_kj = T_kj B_j``, ``float64 [K, J, 4, 4]`` (what Blender should show)."""
    return np.asarray(transforms, dtype=np.float64) @ np.asarray(rest, dtype=np.float64)[None]


# Colour ramp for the heatmap: blue (stable / low error) -> red (unstable / high error). Linear RGB.
HEAT_STOPS = np.array([
    [0.02, 0.06, 0.55],
    [0.05, 0.35, 0.90],
    [0.20, 0.75, 0.55],
    [0.95, 0.80, 0.10],
    [0.85, 0.05, 0.04],
], dtype=np.float32)


def heat_colors(values: np.ndarray, vmax: float) -> np.ndarray:
    """Map values ``[V]`` on ``[0, vmax]`` to RGBA ``float32 [V, 4]`` (clipped; alpha 1)."""
    t = np.clip(np.asarray(values, dtype=np.float32) / max(float(vmax), 1e-12), 0.0, 1.0)
    pos = t * (len(HEAT_STOPS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(HEAT_STOPS) - 2)
    frac = (pos - lo)[:, None]
    rgb = HEAT_STOPS[lo] * (1.0 - frac) + HEAT_STOPS[lo + 1] * frac
    return np.concatenate([rgb, np.ones((len(t), 1), dtype=np.float32)], axis=1).astype(np.float32)


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """Linear RGB ``[..., 3]`` in [0, 1] -> sRGB-encoded (gamma) RGB, ``float32`` (the IEC 61966-2-1 curve)."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1.0 / 2.4) - 0.055).astype(np.float32)


def bone_heat_colors(values: np.ndarray, vmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bone colours for per-bone values ``[J]`` on ``[0, vmax]``, with the mesh heatmap's ramp.

    Blender stores custom bone colours sRGB-encoded, so the linear ramp of :func:`heat_colors` is
    encoded first. Missing values (NaN) are drawn as 0.

    Returns:
        ``(normal, select, active)``, each sRGB ``float32 [J, 3]``: the ramp colour, and the same colour
        moved 35% / 60% toward white for selected / active bones.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(-1), nan=0.0)
    linear = heat_colors(values, vmax)[:, :3].astype(np.float64)
    normal = linear_to_srgb(linear)
    select = linear_to_srgb(linear + 0.35 * (1.0 - linear))
    active = linear_to_srgb(linear + 0.60 * (1.0 - linear))
    return normal, select, active


def auto_heat_max(values: np.ndarray) -> float:
    """A colour-scale maximum for ``values [K, V]``: the 99th percentile (never 0)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 1.0
    top = float(np.percentile(values, 99.0))
    if not np.isfinite(top) or top <= 0:
        top = float(np.max(values)) if np.isfinite(np.max(values)) else 0.0
    return top if top > 0 else 1.0


def values_at_frame(frames: np.ndarray, values: np.ndarray, frame: float) -> np.ndarray:
    """Per-vertex values ``[V]`` at a scene ``frame`` from per-key values ``values [K, V]`` at ``frames [K]``.

    Exact on keyed frames, linear in between, held before the first and after the last key.
    """
    values = np.asarray(values)
    k, t = frame_blend(frames, frame)
    if t == 0.0:
        return values[k]
    return ((1.0 - t) * values[k] + t * values[k + 1]).astype(values.dtype)


def frame_blend(frames: np.ndarray, frame: float) -> tuple[int, float]:
    """``(k, t)`` such that the value at scene ``frame`` is ``(1 - t) * value[k] + t * value[k + 1]`` for
    per-key values at ``frames [K]`` (``t == 0`` on a key, before the first and after the last)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frame <= frames[0]:
        return 0, 0.0
    if frame >= frames[-1]:
        return len(frames) - 1, 0.0
    k = int(np.searchsorted(frames, frame, side="right")) - 1
    if frames[k] == frame:
        return k, 0.0
    return k, float((frame - frames[k]) / (frames[k + 1] - frames[k]))


# Compact storage of per-frame, per-vertex heat values ``[K, V]`` (saved with the rigged mesh): 8 bits per
# value on a square-root scale (fine steps near 0, where most values lie), each frame stored as its
# difference to the previous frame (mod 256; small numbers when values change smoothly in time), laid out
# vertex by vertex (each vertex's differences over time side by side) and LZMA-compressed (xz). Payloads of
# files saved before (frame by frame, deflated) are still read.
HEAT_LEVELS = 255
_XZ_MAGIC = b"\xfd7zXZ\x00"
HEAT_LZMA_PRESET = 2  # measured on 50k x 200 values: ~2.3x smaller than deflate, about 0.4-1.2 s per mode


def run_to_end(steps: Generator, value=None):
    """Run a step generator (``encode_heat_steps``, ``export_frames_stepwise``, ``build_rig_steps``) to its end,
    sending it ``value`` at every step after the first; returns its return value."""
    try:
        next(steps)
        while True:
            steps.send(value)
    except StopIteration as finished:
        return finished.value


def encode_heat(values: np.ndarray) -> tuple[bytes, float]:
    """Quantize and compress ``values float [K, V]`` (>= 0) -> ``(payload, scale)``: :func:`encode_heat_steps`
    run to its end."""
    return run_to_end(encode_heat_steps(values))


HEAT_SLICE_BYTES = 1 << 20  # bytes compressed per step of :func:`encode_heat_steps` (~0.1 s)


def encode_heat_steps(values: np.ndarray) -> Generator[float, None, tuple[bytes, float]]:
    """Quantize and compress ``values float [K, V]`` (>= 0) -> ``(payload, scale)`` (see the note above),
    compressing ``HEAT_SLICE_BYTES`` at a time: yields the share done (an interactive run stores a large
    clip's heat values over several timer ticks).

    ``scale`` is the largest value (1 when all are 0); a value ``v`` is stored as the byte
    ``round(255 * sqrt(v / scale))``, so the decoded value is within ``scale * (2 sqrt(v / scale) / 255
    + 1 / 255**2) / 2`` of ``v``. NaN and negative values are stored as 0.
    """
    import lzma

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"heat values must be [K, V], got shape {list(values.shape)}")
    top = float(values.max()) if values.size else 0.0
    if not np.isfinite(top):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max())
    scale = top if top > 0 else 1.0
    unit = values * np.float32(1.0 / scale)  # in place from here on: [K, V] float32
    np.clip(unit, 0.0, 1.0, out=unit)
    np.sqrt(unit, out=unit)
    unit *= np.float32(HEAT_LEVELS)
    unit += np.float32(0.5)
    levels = unit.astype(np.uint8)  # truncating x + 0.5 rounds
    deltas = levels.copy()
    deltas[1:] -= levels[:-1]  # uint8 arithmetic wraps mod 256
    raw = np.ascontiguousarray(deltas.T).tobytes()
    compressor = lzma.LZMACompressor(preset=HEAT_LZMA_PRESET, check=lzma.CHECK_NONE)
    parts = []
    for start in range(0, len(raw), HEAT_SLICE_BYTES):
        parts.append(compressor.compress(raw[start:start + HEAT_SLICE_BYTES]))
        yield min(start + HEAT_SLICE_BYTES, len(raw)) / len(raw)
    parts.append(compressor.flush())
    return b"".join(parts), scale


def decode_heat_levels(payload: bytes, n_frames: int, n_verts: int) -> np.ndarray:
    """The stored bytes ``uint8 [K, V]`` of :func:`encode_heat`'s payload (map them with :func:`heat_level_values`).

    Raises:
        ValueError: the payload does not hold ``K * V`` values.
    """
    import lzma
    import zlib

    vertex_major = payload[:len(_XZ_MAGIC)] == _XZ_MAGIC
    deltas = np.frombuffer(lzma.decompress(payload) if vertex_major else zlib.decompress(payload), dtype=np.uint8)
    if deltas.size != n_frames * n_verts:
        raise ValueError(f"heat data holds {deltas.size} values, expected {n_frames} x {n_verts}")
    if vertex_major:
        return np.ascontiguousarray(np.cumsum(deltas.reshape(n_verts, n_frames), axis=1, dtype=np.uint8).T)
    return np.cumsum(deltas.reshape(n_frames, n_verts), axis=0, dtype=np.uint8)


def heat_level_values(scale: float) -> np.ndarray:
    """The value of each stored byte, ``float32 [256]`` (``scale * (b / 255)**2``)."""
    steps = np.arange(256, dtype=np.float64) / HEAT_LEVELS
    return (float(scale) * steps * steps).astype(np.float32)


def level_percentile(levels: np.ndarray, level_values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (nearest stored value at or above it) of the values of ``levels uint8 [...]``,
    from a histogram: exact for the stored values and far cheaper than sorting them."""
    counts = np.bincount(np.asarray(levels).ravel(), minlength=256)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    rank = int(np.ceil(q / 100.0 * total))
    return float(level_values[int(np.searchsorted(np.cumsum(counts), max(rank, 1)))])
