"""Skeleton temporal-stability metrics (paper §10.1-10.5, Eq. 28-32) and topology flicker.

Every metric compares a non-anchor frame ``k >= 1`` with the anchor frame 0 after rigid
(Procrustes) alignment. ``E_0`` is the Euclidean minimum spanning tree of the anchor joints. The
paper assumes the same joint count in every frame; the policy used when a frame differs
(documented in ``docs/metrics.md``):

- joints are put in correspondence with :func:`backend.metrics.alignment.correspond` (index order
  when the counts agree, Hungarian matching otherwise, or always when ``correspondence="match"``);
- the rigid alignment is fitted on the one-to-one pairs;
- for BLRD, GSD and JAD every anchor joint needs a partner: unmatched anchor joints take the nearest
  aligned frame joint (:func:`~backend.metrics.alignment.complete_correspondence`); surplus frame
  joints are ignored by these three metrics;
- PJDD compares the sorted pairwise-distance lists; lists of different length are compared at common
  quantiles (linear interpolation of each sorted list onto ``max(M_k, M_0)`` evenly spaced ranks);
- a frame "flickers" when its joint count differs from the anchor's or when its parent vector, mapped
  through the correspondence, differs from the anchor's.

Parents may describe a forest (several ``-1`` roots); no metric needs a single-rooted tree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from .alignment import JointMatching, complete_correspondence, correspond

logger = logging.getLogger(__name__)

EPS = 1e-8


@dataclass
class StabilityConfig:
    """Options of :func:`skeleton_stability`.

    Attributes:
        correspondence: ``"auto"`` | ``"index"`` | ``"match"`` (see ``alignment.correspond``).
        gsd_eigs: number ``N`` of smallest Laplacian eigenvalues in GSD (paper: 8).
        eps: numerical floor ``epsilon`` of Eq. 28-30.
    """

    correspondence: str = "auto"
    gsd_eigs: int = 8
    eps: float = EPS


def euclidean_mst(points: np.ndarray) -> np.ndarray:
    """Edges of the Euclidean minimum spanning tree of ``points [J, 3]`` (paper ``E_0``).

    Prim's algorithm on the complete graph; coincident points are connected with zero-length edges.
    Returns int64 ``[J-1, 2]`` pairs ``(u, v)`` with ``u`` already in the tree when ``v`` joined.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(points)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    dist = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = dist[0].copy()
    link = np.zeros(n, dtype=np.int64)
    edges = []
    for _ in range(n - 1):
        cand = np.where(in_tree, np.inf, best)
        v = int(np.argmin(cand))
        edges.append((int(link[v]), v))
        in_tree[v] = True
        closer = dist[v] < best
        best = np.where(closer, dist[v], best)
        link = np.where(closer, v, link)
    return np.asarray(edges, dtype=np.int64)


def sorted_pairwise_distances(points: np.ndarray) -> np.ndarray:
    """``D_k`` of paper §10: the ``M = J(J-1)/2`` joint-to-joint distances, sorted ascending (float64)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    iu = np.triu_indices(len(points), k=1)
    d = np.linalg.norm(points[iu[0]] - points[iu[1]], axis=-1)
    return np.sort(d)


def resample_sorted(values: np.ndarray, n: int) -> np.ndarray:
    """Resample a sorted list ``[M]`` to ``n`` values at evenly spaced quantiles (linear interpolation).

    With ``n == M`` the list is returned unchanged; this is how sorted lists of different length are
    compared (PJDD across a change of joint count).
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == n:
        return values
    if len(values) == 0:
        raise ValueError("cannot resample an empty list")
    if len(values) == 1:
        return np.full(n, values[0])
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(values)), values)


def pjdd(frame_joints: np.ndarray, anchor_joints: np.ndarray, eps: float = EPS) -> float:
    """Pairwise Joint Distance Deviation of one frame, Eq. 28.

    ``PJDD_k = 1/M sum_m |D_k^(m) - D_0^(m)| / max(median(D_0), eps)`` with ``D`` the sorted
    pairwise joint distances. Distances are invariant to the rigid alignment and to joint order, so
    the raw joints can be passed. Different joint counts: both lists are resampled to
    ``max(M_k, M_0)`` quantiles.

    Args:
        frame_joints: float ``[J_k, 3]``.
        anchor_joints: float ``[J_0, 3]``.
    Returns:
        PJDD, or NaN when a skeleton has fewer than 2 joints.
    """
    d_k = sorted_pairwise_distances(frame_joints)
    d_0 = sorted_pairwise_distances(anchor_joints)
    if len(d_k) == 0 or len(d_0) == 0:
        return float("nan")
    m = max(len(d_k), len(d_0))
    d_k, d_0 = resample_sorted(d_k, m), resample_sorted(d_0, m)
    return float(np.mean(np.abs(d_k - d_0)) / max(float(np.median(d_0)), eps))


def edge_lengths(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``l_k(e)`` of paper §10: lengths ``[E]`` of ``edges [E, 2]`` over ``points [J, 3]``."""
    points = np.asarray(points, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(points[edges[:, 1]] - points[edges[:, 0]], axis=-1)


def blrd(frame_corr: np.ndarray, anchor_joints: np.ndarray, edges: np.ndarray, eps: float = EPS) -> float:
    """Bone Length Relative Deviation of one frame, Eq. 29.

    ``BLRD_k = 1/|E_0| sum_i |L_k^(i) - L_0^(i)| / max(median(L_0), eps)`` with ``L`` the sorted
    lengths of the anchor edges ``E_0``.

    Args:
        frame_corr: float ``[J_0, 3]`` the frame joint standing for each anchor joint.
        anchor_joints: float ``[J_0, 3]``.
        edges: int ``[E, 2]`` anchor edge set ``E_0``.
    Returns:
        BLRD, or NaN when ``E_0`` is empty.
    """
    if len(edges) == 0:
        return float("nan")
    l_k = np.sort(edge_lengths(frame_corr, edges))
    l_0 = np.sort(edge_lengths(anchor_joints, edges))
    return float(np.mean(np.abs(l_k - l_0)) / max(float(np.median(l_0)), eps))


def edge_weight_matrix(points: np.ndarray, edges: np.ndarray, scale: float) -> np.ndarray:
    """``W^(k)`` of paper §10.3: symmetric ``[J, J]`` with ``W_uv = ||x_u - x_v|| / scale`` on ``E_0``."""
    points = np.asarray(points, dtype=np.float64)
    w = np.zeros((len(points), len(points)))
    if len(edges):
        lengths = edge_lengths(points, edges) / scale
        w[edges[:, 0], edges[:, 1]] = lengths
        w[edges[:, 1], edges[:, 0]] = lengths
    return w


def normalized_laplacian(weights: np.ndarray) -> np.ndarray:
    """``L = I - D^-1/2 W D^-1/2`` for a symmetric ``weights [J, J]``; zero-degree nodes use ``D^-1/2 = 0``."""
    deg = weights.sum(axis=1)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return np.eye(len(weights)) - inv_sqrt[:, None] * weights * inv_sqrt[None, :]


def laplacian_spectrum(points: np.ndarray, edges: np.ndarray, scale: float, n_eigs: int = 8) -> np.ndarray:
    """The ``min(n_eigs, J)`` smallest eigenvalues (ascending) of the normalized Laplacian of ``W^(k)``."""
    lap = normalized_laplacian(edge_weight_matrix(points, edges, scale))
    return np.linalg.eigvalsh(lap)[: min(n_eigs, len(lap))]


def gsd(frame_corr: np.ndarray, anchor_joints: np.ndarray, edges: np.ndarray, n_eigs: int = 8,
        eps: float = EPS) -> float:
    """Graph Spectral Discrepancy of one frame, Eq. 30.

    ``GSD_k = 1/N sum_r |lambda_r^(k) - lambda_r^(0)|`` over the ``N`` smallest eigenvalues of the
    normalized Laplacians of the bone-length-weighted anchor graph (edge weights divided by
    ``max(median(L_0), eps)``). ``N = min(n_eigs, J_0)``.

    Args:
        frame_corr: float ``[J_0, 3]`` the frame joint standing for each anchor joint.
        anchor_joints: float ``[J_0, 3]``.
        edges: int ``[E, 2]`` anchor edge set.
    Returns:
        GSD, or NaN when ``E_0`` is empty.
    """
    if len(edges) == 0:
        return float("nan")
    scale = max(float(np.median(edge_lengths(anchor_joints, edges))), eps)
    lam_k = laplacian_spectrum(frame_corr, edges, scale, n_eigs)
    lam_0 = laplacian_spectrum(anchor_joints, edges, scale, n_eigs)
    return float(np.mean(np.abs(lam_k - lam_0)))


def jad(frame_aligned_corr: np.ndarray, anchor_joints: np.ndarray, edges: np.ndarray, eps: float = EPS) -> float:
    """Joint Angle Discrepancy of one frame, Eq. 31.

    ``JAD_k = 1/|E_0| sum_(u,v) arccos(<a_uv, b_uv>) / pi`` with ``a`` the unit anchor bone
    directions and ``b`` the unit directions of the aligned frame. Anchor edges of zero length have
    no direction and are skipped; a frame edge of zero length (two anchor joints sharing one frame
    joint) counts ``0.5``, the mean of the normalized angle between random directions.

    Args:
        frame_aligned_corr: float ``[J_0, 3]`` aligned frame joint for each anchor joint.
        anchor_joints: float ``[J_0, 3]``.
        edges: int ``[E, 2]``.
    Returns:
        JAD in ``[0, 1]``, or NaN when no anchor edge has a direction.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    a = anchor_joints[edges[:, 1]] - anchor_joints[edges[:, 0]]
    b = frame_aligned_corr[edges[:, 1]] - frame_aligned_corr[edges[:, 0]]
    la, lb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    keep = la > eps
    if not keep.any():
        return float("nan")
    a, b, la, lb = a[keep], b[keep], la[keep], lb[keep]
    cos = (a * b).sum(axis=-1) / (la * np.maximum(lb, eps))
    delta = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
    delta = np.where(lb > eps, delta, 0.5)
    return float(delta.mean())


def mpjpe_anchor(pred_joints: np.ndarray, gt_joints: np.ndarray, correspondence: str = "auto") -> float:
    """MPJPE@Anchor, Eq. 32: mean distance between predicted and ground-truth anchor joints.

    Both skeletons must be in the same (anchor-normalized) frame; no alignment is applied. With
    ``correspondence="auto"`` joints pair by index when the counts agree, otherwise (or with
    ``"match"``) by Hungarian assignment on Euclidean distance, averaging over the
    ``min(J_pred, J_gt)`` pairs.

    Args:
        pred_joints: float ``[J, 3]``.
        gt_joints: float ``[J_gt, 3]``.
    """
    pred = np.asarray(pred_joints, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_joints, dtype=np.float64).reshape(-1, 3)
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError("mpjpe_anchor: a skeleton has no joints")
    if correspondence == "index" and len(pred) != len(gt):
        raise ValueError(f"index correspondence needs equal joint counts, got {len(pred)} vs {len(gt)}")
    if correspondence in ("auto", "index") and len(pred) == len(gt):
        return float(np.linalg.norm(pred - gt, axis=-1).mean())
    dist = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    return float(dist[rows, cols].mean())


def parents_agree(matching: JointMatching, frame_parents: np.ndarray, anchor_parents: np.ndarray) -> bool:
    """True when the frame's parent vector, mapped through the correspondence, equals the anchor's.

    Needs a one-to-one matching covering every joint of both skeletons (equal counts); a root
    (``-1``) must map to a root.
    """
    frame_parents = np.asarray(frame_parents).reshape(-1)
    anchor_parents = np.asarray(anchor_parents).reshape(-1)
    if len(frame_parents) != len(anchor_parents) or len(matching.frame_index) != len(anchor_parents):
        return False
    to_anchor = np.full(len(frame_parents), -2, dtype=np.int64)
    to_anchor[matching.frame_index] = matching.anchor_index
    mapped = np.where(frame_parents[matching.frame_index] < 0, -1,
                      to_anchor[np.maximum(frame_parents[matching.frame_index], 0)])
    return bool(np.array_equal(mapped, anchor_parents[matching.anchor_index]))


@dataclass
class SkeletonStability:
    """Per-frame skeleton stability of one clip.

    Arrays are ``[K]`` over the frames; entry 0 (the anchor) is NaN for the metrics and False for
    ``flicker``.

    Attributes:
        pjdd, blrd, gsd, jad: float64 ``[K]`` Eq. 28-31 per frame.
        n_joints: int64 ``[K]`` joint count per frame.
        flicker: bool ``[K]`` joint count or (mapped) parent vector differs from the anchor's.
        edges: int64 ``[E, 2]`` the anchor MST ``E_0``.
        matchings: the correspondence of each frame to the anchor (entry 0 is the identity).
    """

    pjdd: np.ndarray
    blrd: np.ndarray
    gsd: np.ndarray
    jad: np.ndarray
    n_joints: np.ndarray
    flicker: np.ndarray
    edges: np.ndarray
    matchings: list[JointMatching] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(len(self.pjdd))

    def summary(self, n_frames: int | None = None) -> dict[str, float | None]:
        """Clip means over the non-anchor frames among the first ``n_frames`` (all when None).

        Returns keys ``pjdd, blrd, gsd, jad, topology_flicker``; a value is None when it is not
        computable (fewer than 2 frames, or NaN on every frame).
        """
        stop = self.n_frames if n_frames is None else min(n_frames, self.n_frames)
        out: dict[str, float | None] = {}
        for name in ("pjdd", "blrd", "gsd", "jad"):
            out[name] = _nanmean(getattr(self, name)[1:stop])
        out["topology_flicker"] = float(self.flicker[1:stop].mean()) if stop > 1 else None
        return out


def _nanmean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def skeleton_stability(joints_per_frame: list[np.ndarray], parents_per_frame: list[np.ndarray] | None = None,
                       config: StabilityConfig | None = None) -> SkeletonStability:
    """PJDD, BLRD, GSD, JAD (Eq. 28-31) and topology flicker of every non-anchor frame.

    Args:
        joints_per_frame: ``K`` arrays float ``[J_k, 3]`` (frame 0 is the anchor), in a common
            frame (normally anchor-box normalized; the metrics are scale-free).
        parents_per_frame: optional ``K`` arrays int ``[J_k]`` (``-1`` = root, forests allowed);
            without them flicker only counts joint-count changes.
        config: :class:`StabilityConfig`.
    """
    config = config or StabilityConfig()
    frames = [np.asarray(j, dtype=np.float64).reshape(-1, 3) for j in joints_per_frame]
    if not frames:
        raise ValueError("skeleton_stability: no frames")
    if parents_per_frame is not None and len(parents_per_frame) != len(frames):
        raise ValueError(f"{len(parents_per_frame)} parent vectors for {len(frames)} frames")
    anchor = frames[0]
    edges = euclidean_mst(anchor)
    n = len(frames)
    out = {name: np.full(n, np.nan) for name in ("pjdd", "blrd", "gsd", "jad")}
    flicker = np.zeros(n, dtype=bool)
    matchings = [correspond(anchor, anchor, "index")]
    for k in range(1, n):
        frame = frames[k]
        m = correspond(frame, anchor, config.correspondence)
        matchings.append(m)
        aligned = m.aligned(frame)
        corr = aligned[complete_correspondence(m, aligned, anchor)]
        out["pjdd"][k] = pjdd(frame, anchor, config.eps)
        out["blrd"][k] = blrd(corr, anchor, edges, config.eps)
        out["gsd"][k] = gsd(corr, anchor, edges, config.gsd_eigs, config.eps)
        out["jad"][k] = jad(corr, anchor, edges, config.eps)
        if len(frame) != len(anchor):
            flicker[k] = True
        elif parents_per_frame is not None:
            flicker[k] = not parents_agree(m, parents_per_frame[k], parents_per_frame[0])
    logger.debug("skeleton stability over %d frames: %d flicker", n, int(flicker.sum()))
    return SkeletonStability(out["pjdd"], out["blrd"], out["gsd"], out["jad"],
                             np.array([len(f) for f in frames], dtype=np.int64), flicker, edges, matchings)
