"""Rigid alignment and joint correspondence for the skeleton metrics (paper §10 "Notation").

The paper writes ``X~_k = Procrustes(X^_k, X^_0)``: the joints of frame ``k`` rigidly moved onto the
anchor joints (rotation + translation, no scale, proper rotation). That needs a joint-to-joint
correspondence. When a frame has as many joints as the anchor the paper's convention is used (joint
``i`` of frame ``k`` is joint ``i`` of the anchor); when the counts differ, or when asked to, joints
are matched by Hungarian assignment on rigidly aligned coordinates (see :func:`match_joints`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

CORRESPONDENCE_MODES = ("auto", "index", "match")


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares proper rigid motion taking ``src`` onto ``dst`` (Kabsch / orthogonal Procrustes).

    Minimises ``sum_i w_i ||R src_i + t - dst_i||^2`` over rotations ``R`` (``det R = +1``, no
    reflection, no scale) and translations ``t``. Batched over leading axes.

    Args:
        src: float ``[..., N, 3]`` source points.
        dst: float ``[..., N, 3]`` target points, row ``i`` corresponding to ``src[..., i, :]``.
        weights: optional non-negative ``[..., N]`` point weights (uniform if omitted).
    Returns:
        ``R float64 [..., 3, 3]`` and ``t float64 [..., 3]`` with ``dst ~= src @ R.T + t``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"kabsch: src and dst must both be [..., N, 3], got {src.shape} and {dst.shape}")
    if weights is None:
        weights = np.ones(src.shape[:-1])
    w = np.asarray(weights, dtype=np.float64)[..., None]  # [..., N, 1]
    total = np.maximum(w.sum(axis=-2, keepdims=True), 1e-300)
    c_src = (w * src).sum(axis=-2, keepdims=True) / total
    c_dst = (w * dst).sum(axis=-2, keepdims=True) / total
    cov = np.swapaxes(w * (src - c_src), -1, -2) @ (dst - c_dst)  # [..., 3, 3]
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    d = np.where(d == 0, 1.0, d)
    fix = np.broadcast_to(np.eye(3), cov.shape).copy()
    fix[..., 2, 2] = d
    rot = np.swapaxes(vt, -1, -2) @ fix @ np.swapaxes(u, -1, -2)
    trans = c_dst[..., 0, :] - (rot @ c_src[..., 0, :, None])[..., 0]
    return rot, trans


def apply_rigid(points: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Apply ``x -> R x + t`` to ``points [..., N, 3]`` (``R [..., 3, 3]``, ``t [..., 3]``); float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.swapaxes(rot, -1, -2) + np.asarray(trans)[..., None, :]


def procrustes_align(joints: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``Procrustes(X_k, X_0)`` of paper §10: rigidly move ``joints [J, 3]`` onto ``anchor [J, 3]``.

    Rows correspond (joint ``i`` to joint ``i``). Rotation + translation only, ``det R = +1``.
    Returns float64 ``[J, 3]``.
    """
    joints = np.asarray(joints, dtype=np.float64)
    anchor = np.asarray(anchor, dtype=np.float64)
    if joints.shape != anchor.shape:
        raise ValueError(f"procrustes_align: joints {joints.shape} and anchor {anchor.shape} must match; "
                         "use match_joints first when joint counts differ")
    rot, trans = kabsch(joints, anchor)
    return apply_rigid(joints, rot, trans)


@dataclass(frozen=True)
class JointMatching:
    """A correspondence between the joints of one frame and the anchor joints.

    Attributes:
        frame_index: int64 ``[P]`` joint indices in the frame.
        anchor_index: int64 ``[P]`` the anchor joints they correspond to (one-to-one pairs).
        rotation: float64 ``[3, 3]`` rigid rotation taking frame joints onto the anchor.
        translation: float64 ``[3]``.
        rms: root mean squared distance of the pairs after alignment.
    """

    frame_index: np.ndarray
    anchor_index: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    rms: float

    def aligned(self, joints: np.ndarray) -> np.ndarray:
        """The frame's joints ``[J_k, 3]`` moved onto the anchor (float64)."""
        return apply_rigid(joints, self.rotation, self.translation)


def _pca_rotations(frame: np.ndarray, anchor: np.ndarray) -> list[np.ndarray]:
    """Candidate proper rotations taking the frame's principal axes onto the anchor's (4 sign choices)."""
    def axes(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=0)
        _, vecs = np.linalg.eigh(x.T @ x)
        return vecs[:, ::-1]  # columns: major -> minor

    if len(frame) < 3 or len(anchor) < 3:
        return []
    a, f = axes(anchor), axes(frame)
    out = []
    for s0 in (1.0, -1.0):
        for s1 in (1.0, -1.0):
            signs = np.array([s0, s1, 1.0])
            rot = a @ np.diag(signs) @ f.T
            if np.linalg.det(rot) < 0:
                rot = a @ np.diag([s0, s1, -1.0]) @ f.T
            out.append(rot)
    return out


def match_joints(frame: np.ndarray, anchor: np.ndarray, max_iter: int = 20) -> JointMatching:
    """Hungarian matching of a frame's joints to the anchor joints on rigidly aligned coordinates.

    Alternates a one-to-one assignment (``scipy.optimize.linear_sum_assignment`` on squared
    distances) with a Kabsch fit on the matched pairs until the assignment stops changing. It starts
    from the centred coordinates and from the four proper principal-axis alignments, and keeps the
    start with the lowest final error, so a frame that is globally turned is still matched.
    ``min(J_k, J_0)`` pairs are returned; with unequal counts the surplus joints stay unmatched.

    Args:
        frame: float ``[J_k, 3]`` joints of one frame.
        anchor: float ``[J_0, 3]`` anchor joints.
        max_iter: assignment/alignment rounds per start.
    """
    frame = np.asarray(frame, dtype=np.float64).reshape(-1, 3)
    anchor = np.asarray(anchor, dtype=np.float64).reshape(-1, 3)
    if len(frame) == 0 or len(anchor) == 0:
        raise ValueError("match_joints: a skeleton has no joints")
    c_frame, c_anchor = frame.mean(axis=0), anchor.mean(axis=0)
    starts = [np.eye(3)] + _pca_rotations(frame, anchor)
    best: JointMatching | None = None
    for rot0 in starts:
        rot, trans = rot0, c_anchor - rot0 @ c_frame
        prev = None
        for _ in range(max_iter):
            moved = frame @ rot.T + trans
            cost = ((moved[:, None, :] - anchor[None, :, :]) ** 2).sum(axis=-1)
            rows, cols = linear_sum_assignment(cost)
            key = (tuple(rows), tuple(cols))
            if key == prev:
                break
            prev = key
            if len(rows) >= 3:
                rot, trans = kabsch(frame[rows], anchor[cols])
            else:  # too few pairs to fix a rotation: translate only
                trans = anchor[cols].mean(axis=0) - (frame[rows] @ rot.T).mean(axis=0)
        moved = frame @ rot.T + trans
        rms = float(np.sqrt(((moved[rows] - anchor[cols]) ** 2).sum(axis=-1).mean()))
        if best is None or rms < best.rms - 1e-12:
            best = JointMatching(rows.astype(np.int64), cols.astype(np.int64), rot, trans, rms)
    assert best is not None
    return best


def correspond(frame: np.ndarray, anchor: np.ndarray, mode: str = "auto") -> JointMatching:
    """The joint correspondence used by the skeleton metrics.

    Modes:
        ``"auto"``: index correspondence (the paper's convention) when ``J_k == J_0``, otherwise
        :func:`match_joints`. ``"index"``: always index correspondence (counts must agree).
        ``"match"``: always :func:`match_joints` (for methods whose joint order is not stable
        across frames).
    """
    if mode not in CORRESPONDENCE_MODES:
        raise ValueError(f"unknown correspondence mode {mode!r}; expected one of {CORRESPONDENCE_MODES}")
    frame = np.asarray(frame, dtype=np.float64).reshape(-1, 3)
    anchor = np.asarray(anchor, dtype=np.float64).reshape(-1, 3)
    same = len(frame) == len(anchor)
    if mode == "index" and not same:
        raise ValueError(f"index correspondence needs equal joint counts, got {len(frame)} vs anchor {len(anchor)}")
    if mode == "match" or not same:
        return match_joints(frame, anchor)
    idx = np.arange(len(frame), dtype=np.int64)
    rot, trans = kabsch(frame, anchor)
    rms = float(np.sqrt(((apply_rigid(frame, rot, trans) - anchor) ** 2).sum(axis=-1).mean()))
    return JointMatching(idx, idx, rot, trans, rms)


def complete_correspondence(matching: JointMatching, frame_aligned: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """A frame joint for every anchor joint: ``int64 [J_0]`` indices into the frame.

    Anchor joints in the one-to-one matching keep their partner; anchor joints left unmatched
    (the frame has fewer joints) take the nearest aligned frame joint, so several anchor joints can
    share one frame joint (their bone then has zero length, which the metrics penalise).

    Args:
        matching: from :func:`correspond`.
        frame_aligned: float ``[J_k, 3]`` frame joints after the matching's rigid alignment.
        anchor: float ``[J_0, 3]``.
    """
    anchor = np.asarray(anchor, dtype=np.float64)
    frame_aligned = np.asarray(frame_aligned, dtype=np.float64)
    out = np.full(len(anchor), -1, dtype=np.int64)
    out[matching.anchor_index] = matching.frame_index
    missing = np.flatnonzero(out < 0)
    if len(missing):
        d = ((anchor[missing, None, :] - frame_aligned[None, :, :]) ** 2).sum(axis=-1)
        out[missing] = d.argmin(axis=1)
    return out
