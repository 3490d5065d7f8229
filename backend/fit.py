"""Motion fitting: per-frame rigid bone transforms (and refined weights) that reproduce a mesh sequence.

Given the anchor mesh (the rest pose of the rig), skinning weights and a skeleton, we look for rigid
transforms ``T_kj`` (anchor space -> frame ``k``) such that linear blend skinning of the anchor,
``x_kv ~= sum_j w_vj T_kj [a_v, 1]``, reproduces every frame.

1. **Start**: a weighted rigid (Kabsch) fit per bone and frame, bone ``j``'s vertices weighted by
   ``w_vj ** init_power``. Bones with too little (or degenerate, e.g. collinear) support borrow the
   motion of the closest well-supported ancestor, else of the closest well-supported bone in the tree.
   When the weights are refined, *motion clustering* follows (rigid k-means, the classic start of
   smooth skinning decomposition): every vertex goes to the bone whose rigid motion reproduces it best
   and every bone is re-fitted to its vertices. By default the clusters are grown by splitting from one
   global motion (:func:`split_motion_clusters`) and each is then given to the bone whose region in the
   given weights it overlaps most (:func:`match_clusters_to_bones`), so bones keep their identity; a
   second clustering starts each bone from the region the given weights assign it. These and the given
   weights' own start, when close to the best of them, are each refined for a few trial alternations,
   and the refinement goes on from the best (``FitConfig.start_trial_ratio``).
2. **Refinement** (optional), alternating:

   * transforms: block-coordinate descent, one bone at a time; each bone's update is the exact
     weighted Procrustes minimiser of the squared LBS error with the other bones fixed, so the error
     never rises;
   * weights: per vertex, a small quadratic program on the simplex (non-negative, sum to one) over its
     candidate bones -- its current support plus the bones whose own rigid motion reproduces that vertex
     best (``candidates="motion"``), or the initial support plus its tree neighbours (``"tree"``) --
     with a Laplacian term pulling each row toward its mesh neighbours' mean, then pruned to
     ``max_influences`` and re-projected. A row is only accepted where it does not raise that vertex's
     squared error, so the total never rises;
   * smoothing: a few steps of Laplacian smoothing of the weights on the mesh graph, re-projected onto
     the candidates, ``max_influences`` and the simplex, kept where they give back at most part of the
     error decrease the weight solve just made (the error still never rises).

Transforms stay rigid (rotation + translation), so an armature can be keyed from them; the skeleton's
joints and topology are never changed. :func:`to_local_pose` / :func:`from_local_pose` convert between
these anchor-space deformation matrices and per-bone local rotations/translations relative to the parent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import scipy.sparse as sp

from backend.skeleton import tree_distances, validate_tree

log = logging.getLogger(__name__)


class FitCancelled(RuntimeError):
    """Raised inside :func:`fit_motion` when its ``should_cancel`` callback returns True."""


@dataclass
class FitConfig:
    """Options of :func:`fit_motion`.

    Attributes:
        max_influences: at most this many non-zero weights per vertex (4 like glTF / game engines).
        refine_iters: alternations of (transform sweep, weight solve); 0 keeps the Kabsch start.
        refine_weights: when False only the transforms are refined and the given weights are kept
            (after pruning to ``max_influences``).
        transform_sweeps: block-coordinate sweeps over the bones per alternation.
        init_power: bone ``j``'s Kabsch fit weights vertex ``v`` by ``w_vj ** init_power``; > 1 favours
            the vertices a bone dominates over those it shares.
        min_bone_mass: a bone whose summed weight (in vertices) is below this borrows another bone's motion.
        smoothness: strength of the pull toward the mesh neighbours' mean weights inside each vertex's
            weight solve, relative to that vertex's current error (0 turns it off).
        smooth_steps: Laplacian smoothing steps on the mesh graph after each weight solve (then
            re-projected onto the candidates, ``max_influences`` and the simplex).
        smooth_slack: a smoothed row is kept where it gives back at most this fraction of the error
            decrease the weight solve made at that vertex (0 disables the smoothing steps).
        motion_init_rounds: rounds of motion clustering after the Kabsch start (0: start from the given
            weights); only used when the weights are refined.
        init: where the motion clustering starts when the weights are refined: ``"split"`` (clusters
            grown by splitting from one global motion, as smooth skinning decomposition does, then
            matched to the bones by their overlap with the given weights; see
            :func:`split_motion_clusters`), ``"weights"`` (each bone from the region the given weights
            assign it) or ``"best"`` (both). Which start is refined: see ``start_trial_ratio``.
        split_seed_fraction: when a cluster splits, the new cluster starts from this fraction of its
            vertices nearest to its worst-reproduced vertex.
        start_trial_ratio, start_trial_iters: the starts (the given weights' Kabsch start and the
            clustered ones) whose squared error is within ``start_trial_ratio`` of the lowest are each
            refined for ``start_trial_iters`` alternations, and the refinement goes on from the best;
            the others are dropped.
        max_fit_frames: when the weights are refined and the clip has more frames than this (> 0), the
            start and the alternations use this many evenly spaced keyframes (the first and the last
            included); then, with the weights fixed, every frame's transforms get a Kabsch start (the
            keyframes keep their refined ones) and ``keyframe_sweeps`` block-coordinate sweeps. 0: all
            frames.
        candidates: a vertex's candidate bones in the weight solve: ``"motion"`` (its current support plus
            the ``motion_candidates`` bones whose rigid motion alone reproduces it best, re-chosen every
            alternation) or ``"tree"`` (its initial support plus, with ``neighbour_candidates``, their
            tree neighbours).
        motion_candidates: extra candidate bones per vertex for ``candidates="motion"``.
        neighbour_candidates: add the tree neighbours (parent, children) of a vertex's initial support to
            its candidate bones (``candidates="tree"``).
        qp_iters: projected-gradient steps that pick each vertex's support before its exact solve.
        tol: stop refining when one alternation lowers the RMS error by less than this fraction.
        chunk: at most this many vertices per batch in the weight solve (bounds memory).
    """

    max_influences: int = 4
    refine_iters: int = 15
    refine_weights: bool = True
    transform_sweeps: int = 1
    init_power: float = 2.0
    min_bone_mass: float = 0.5
    smoothness: float = 0.1
    smooth_steps: int = 2
    smooth_slack: float = 0.5
    motion_init_rounds: int = 5
    init: str = "best"
    split_seed_fraction: float = 0.5
    start_trial_ratio: float = 4.0
    start_trial_iters: int = 2
    max_fit_frames: int = 32
    keyframe_sweeps: int = 5
    candidates: str = "motion"
    motion_candidates: int = 6
    neighbour_candidates: bool = True
    qp_iters: int = 10
    tol: float = 1e-3
    chunk: int = 16384

    def __post_init__(self) -> None:
        if self.candidates not in ("motion", "tree"):
            raise ValueError(f"candidates must be 'motion' or 'tree', got {self.candidates!r}")
        if self.init not in ("split", "weights", "best"):
            raise ValueError(f"init must be 'split', 'weights' or 'best', got {self.init!r}")
        if self.max_fit_frames < 0 or (0 < self.max_fit_frames < 2) or self.keyframe_sweeps < 0:
            raise ValueError("max_fit_frames must be 0 or >= 2 and keyframe_sweeps >= 0")
        if self.start_trial_ratio < 1.0 or self.start_trial_iters < 0:
            raise ValueError("start_trial_ratio must be >= 1 and start_trial_iters >= 0")
        if not 0.0 < self.split_seed_fraction < 1.0:
            raise ValueError(f"split_seed_fraction must be in (0, 1), got {self.split_seed_fraction}")
        if self.motion_init_rounds < 0 or self.motion_candidates < 0:
            raise ValueError("motion_init_rounds and motion_candidates must be >= 0")


@dataclass
class MotionFit:
    """Result of :func:`fit_motion`.

    Attributes:
        transforms: float64 ``[K, J, 4, 4]`` rigid transforms from anchor space to frame ``k``.
        weights: float32 ``[V, J]`` rows on the simplex, at most ``max_influences`` non-zero.
        borrowed: bool ``[J]`` bones whose motion was borrowed from another bone at the start.
        rmse_history: RMS per-vertex error (input units) after the start and after each alternation;
            non-increasing.
        seconds: wall time of the fit.
        start: the start that was refined: ``given`` (the given weights' Kabsch start), ``weights`` or
            ``split`` (the motion clusterings of :class:`FitConfig` ``init``).
        keyframes: the frames the weights were refined on (``FitConfig.max_fit_frames``), or None for all;
            ``rmse_history`` is then measured on them.
    """

    transforms: np.ndarray
    weights: np.ndarray
    borrowed: np.ndarray
    rmse_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    start: str = "given"
    keyframes: list[int] | None = None


# ---------------------------------------------------------------------------------------------
# Sparse weights


def prune_weights(weights: np.ndarray, max_influences: int = 4) -> np.ndarray:
    """Keep the ``max_influences`` largest weights per row and renormalize to sum one.

    Args:
        weights: ``[V, J]`` non-negative weights (negative entries are clipped to 0).
        max_influences: at most this many non-zero entries per row are kept.
    Returns:
        float32 ``[V, J]`` rows on the simplex. A row with no positive weight gets all its weight on
        the bone with the largest raw value (the first bone on ties).
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if w.ndim != 2:
        raise ValueError(f"weights must have shape [V, J], got {list(w.shape)}")
    if max_influences < 1:
        raise ValueError(f"max_influences must be >= 1, got {max_influences}")
    V, J = w.shape
    if J > max_influences:
        drop = np.argpartition(-w, max_influences - 1, axis=1)[:, max_influences:]
        np.put_along_axis(w, drop, 0.0, axis=1)
    total = w.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    if np.any(empty):
        raw = np.asarray(weights, dtype=np.float64)[empty]
        w[empty] = 0.0
        w[np.flatnonzero(empty), np.argmax(raw, axis=1)] = 1.0
        total = w.sum(axis=1, keepdims=True)
    return (w / total).astype(np.float32)


def _to_sparse_rows(weights: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``[V, J]`` -> (``idx int64 [V, width]``, ``val float64 [V, width]``), padding with weight 0."""
    w = np.asarray(weights, dtype=np.float64)
    width = min(width, w.shape[1])
    idx = np.argsort(-w, axis=1, kind="stable")[:, :width]
    val = np.take_along_axis(w, idx, axis=1)
    return idx.astype(np.int64), val


def _to_dense(idx: np.ndarray, val: np.ndarray, n_joints: int) -> np.ndarray:
    """Sparse rows (``idx [V, M]``, ``val [V, M]``) -> dense float64 ``[V, J]`` (duplicates summed)."""
    V = idx.shape[0]
    dense = np.zeros((V, n_joints))
    np.add.at(dense, (np.repeat(np.arange(V), idx.shape[1]), idx.ravel()), val.ravel())
    return dense


def _rms_vertex_error(resid: np.ndarray) -> float:
    """RMS per-vertex error (``MotionFit.rmse_history``) of a residual ``[V, K, 3]``."""
    return float(np.sqrt(np.mean(np.sum(resid ** 2, axis=-1))))


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """Hard weights: ``labels int [V]`` -> float64 ``[V, n]`` with a single 1 per row."""
    hard = np.zeros((len(labels), n))
    hard[np.arange(len(labels)), labels] = 1.0
    return hard


# ---------------------------------------------------------------------------------------------
# Rigid fits


def _proper_rotation(cross: np.ndarray) -> np.ndarray:
    """Rotation ``R [..., 3, 3]`` maximising ``trace(R^T C)`` for ``cross C [..., 3, 3]`` (Kabsch, det = +1)."""
    u, _, vt = np.linalg.svd(cross)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    u = u.copy()
    u[..., :, 2] *= d[..., None]
    return u @ vt


def _rigid(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Assemble ``[..., 4, 4]`` from ``rot [..., 3, 3]`` and ``trans [..., 3]``."""
    out = np.zeros(rot.shape[:-2] + (4, 4))
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1.0
    return out


def weighted_rigid_fits(anchor: np.ndarray, frames: np.ndarray | None, weights: np.ndarray,
                        frames_vm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bone and frame, the rigid transform best mapping the anchor onto the frame (weighted Kabsch).

    Minimises ``sum_v w_vj || R a_v + t - x_kv ||^2`` for each ``(k, j)``, all at once. The weighted
    cross-covariances are three sparse-times-dense products ``(W * a_b)^T X`` with the frames as a
    ``[V, 3K]`` matrix, so no per-vertex outer products are formed.

    Args:
        anchor: ``[V, 3]`` anchor vertices.
        frames: ``[K, V, 3]`` target vertices (may be None when ``frames_vm`` is given).
        weights: ``[V, J]`` non-negative per-vertex fit weights (dense or scipy sparse).
        frames_vm: the same frames vertex-major, float64 ``[V, K, 3]``, when the caller has them.
    Returns:
        ``transforms float64 [K, J, 4, 4]``, ``mass float64 [J]`` (summed weight per bone) and
        ``spread float64 [J]`` (second-largest eigenvalue of the weighted covariance of the bone's anchor
        vertices: ~0 when they are collinear and the rotation about that line is undetermined).
    """
    a = np.asarray(anchor, dtype=np.float64)
    if frames_vm is None:
        frames_vm = np.asarray(frames, dtype=np.float64).transpose(1, 0, 2)
    V, K, _ = frames_vm.shape
    X = np.ascontiguousarray(frames_vm, dtype=np.float64).reshape(V, K * 3)
    Wt = sp.csr_matrix(weights, dtype=np.float64).T.tocsr()  # [J, V]
    J = Wt.shape[0]
    mass = np.asarray(Wt.sum(axis=1)).ravel()
    safe = np.maximum(mass, 1e-300)
    a_bar = (Wt @ a) / safe[:, None]  # [J, 3]
    second = (Wt @ (a[:, :, None] * a[:, None, :]).reshape(V, 9)).reshape(J, 3, 3) / safe[:, None, None]
    cov = second - a_bar[:, :, None] * a_bar[:, None, :]
    spread = np.linalg.eigvalsh(cov)[:, 1]

    x_bar = (Wt @ X).reshape(J, K, 3) / safe[:, None, None]  # [J, K, 3]
    cross = np.stack([(Wt @ sp.diags(a[:, b]) @ X).reshape(J, K, 3) for b in range(3)], axis=-1)
    cross = cross / safe[:, None, None, None] - x_bar[:, :, :, None] * a_bar[:, None, None, :]  # [J, K, 3(x), 3(a)]
    rot = _proper_rotation(cross)  # maps a-offsets to x-offsets
    trans = x_bar - np.einsum("jkab,jb->jka", rot, a_bar)
    return _rigid(rot, trans).transpose(1, 0, 2, 3), mass, spread


def _borrow_sources(strong: np.ndarray, parents: np.ndarray, joints: np.ndarray | None) -> np.ndarray:
    """For each bone, the bone whose motion it uses: itself if strong, else the closest strong ancestor,
    else the closest strong bone by tree distance (ties: by joint distance, then index). ``-1`` if none."""
    J = len(parents)
    src = np.full(J, -1, dtype=np.int64)
    if not strong.any():
        return src
    dist = tree_distances(parents)
    for j in range(J):
        if strong[j]:
            src[j] = j
            continue
        p = int(parents[j])
        while p >= 0 and not strong[p]:
            p = int(parents[p])
        if p >= 0:
            src[j] = p
            continue
        cand = np.flatnonzero(strong)
        eu = np.zeros(len(cand)) if joints is None else np.linalg.norm(joints[cand] - joints[j], axis=1)
        order = np.lexsort((cand, eu, dist[j, cand]))
        src[j] = cand[order[0]]
    return src


def initial_transforms(anchor: np.ndarray, frames: np.ndarray, weights: np.ndarray, parents: np.ndarray,
                       joints: np.ndarray | None = None, power: float = 2.0,
                       min_bone_mass: float = 0.5,
                       frames_vm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Kabsch start: per bone weighted rigid fits, weak bones borrowing a neighbour's motion.

    Args:
        anchor: ``[V, 3]``; frames: ``[K, V, 3]``; weights: ``[V, J]`` skinning weights.
        parents: ``[J]`` skeleton tree; joints: ``[J, 3]`` anchor joints (tie-break only).
        power: fit weights are ``weights ** power``.
        min_bone_mass: bones with ``sum_v w_vj`` below this (or with collinear support) borrow motion.
        frames_vm: the frames vertex-major ``[V, K, 3]`` when the caller has them (saves a transpose).
    Returns:
        ``transforms float64 [K, J, 4, 4]`` and ``borrowed bool [J]``.
    """
    w = np.asarray(weights, dtype=np.float64)
    fit_w = np.where(w > 0, w, 0.0) ** power
    transforms, _, spread = weighted_rigid_fits(anchor, frames, sp.csr_matrix(fit_w), frames_vm)
    mass = w.sum(axis=0)
    scale = float(np.ptp(np.asarray(anchor, dtype=np.float64), axis=0).max())
    strong = (mass >= min_bone_mass) & (spread > (1e-3 * scale) ** 2)
    src = _borrow_sources(strong, np.asarray(parents), None if joints is None else np.asarray(joints))
    if (src < 0).any():  # no bone is usable: one global rigid fit for every bone
        glob, _, _ = weighted_rigid_fits(anchor, frames, np.ones((len(anchor), 1)), frames_vm)
        transforms = np.repeat(glob, len(parents), axis=1)
        log.warning("no bone has enough skinning support; every bone follows one global rigid fit")
        return transforms, np.ones(len(parents), dtype=bool)
    borrowed = src != np.arange(len(parents))
    if borrowed.any():
        log.debug("bones borrowing motion: %s", {int(j): int(src[j]) for j in np.flatnonzero(borrowed)})
    return transforms[:, src], borrowed


# ---------------------------------------------------------------------------------------------
# Refinement: transforms


def _bone_groups(idx: np.ndarray, val: np.ndarray, n_joints: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sparse rows ``idx/val [V, M]`` regrouped per bone: ``J`` pairs (vertex ids ``[n_j]``, weights ``[n_j]``)
    holding the positive weights only; a vertex appears at most once per bone."""
    V, M = idx.shape
    rows = np.repeat(np.arange(V), M)
    flat_idx, flat_val = idx.ravel(), val.ravel()
    keep = flat_val > 0
    rows, flat_idx, flat_val = rows[keep], flat_idx[keep], flat_val[keep]
    order = np.argsort(flat_idx, kind="stable")
    rows, flat_idx, flat_val = rows[order], flat_idx[order], flat_val[order]
    bounds = np.searchsorted(flat_idx, np.arange(n_joints + 1))
    return [(rows[bounds[j]:bounds[j + 1]], flat_val[bounds[j]:bounds[j + 1]]) for j in range(n_joints)]


def _apply(transforms: np.ndarray, points_h: np.ndarray) -> np.ndarray:
    """``[K, 4, 4]`` transforms applied to homogeneous ``points_h [n, 4]`` -> vertex-major ``[n, K, 3]``.

    One GEMM with the 3x4 blocks laid out as ``[4, K*3]`` (faster than a 3-column product plus a
    broadcast translation)."""
    K = transforms.shape[0]
    mats = np.ascontiguousarray(transforms[:, :3, :].transpose(2, 0, 1).reshape(4, K * 3))
    return (points_h @ mats).reshape(len(points_h), K, 3)


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def _blend(anchor: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], transforms: np.ndarray) -> np.ndarray:
    """LBS with per-bone sparse weights (see :func:`_bone_groups`): vertex-major ``[V, K, 3]`` float64."""
    out = np.zeros((anchor.shape[0], transforms.shape[0], 3))
    ah = _homogeneous(anchor)
    for j, (v, w) in enumerate(groups):
        if len(v):
            part = _apply(transforms[:, j], ah[v])
            part *= w[:, None, None]
            out[v] += part
    return out


def update_transforms(anchor: np.ndarray, resid: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                      transforms: np.ndarray, min_mass: float = 1e-6) -> None:
    """One block-coordinate sweep over bones: each bone's rigid transforms (all frames) set to the exact
    minimiser of the squared LBS error with the other bones fixed (weighted Procrustes).

    Updates ``transforms float64 [K, J, 4, 4]`` and the residual ``resid = frames - LBS`` (vertex-major
    float64 ``[V, K, 3]``) in place.

    Args:
        anchor: ``[V, 3]`` float64.
        groups: per-bone sparse weights from :func:`_bone_groups`.
        min_mass: bones with ``sum_v w_vj^2`` below this (or fewer than 3 vertices) are left unchanged.
    """
    K = transforms.shape[0]
    for j, (v, w) in enumerate(groups):
        n = len(v)
        if n < 3:
            continue
        s = w * w
        s_sum = s.sum()
        if s_sum < min_mass:
            continue
        a = anchor[v]  # [n, 3]
        old = transforms[:, j]  # [K, 4, 4]
        R_old, t_old = old[:, :3, :3], old[:, :3, 3]
        # Bone j should contribute target_n = resid_n + w_n T_old a_n; minimise
        # sum_n || w_n (R a_n + t) - target_n ||^2 (weighted Procrustes with weights w_n^2). The T_old part
        # of the target reduces to closed forms, so only the residual rows are read:
        #   y_bar = sum_n w_n target_n / s = (w . resid) / s + R_old a_bar + t_old
        #   cross = sum_n target_n (w_n (a_n - a_bar))^T = resid^T b + R_old A,  A = sum_n w_n^2 a_n (a_n - a_bar)^T
        a_bar = (s[:, None] * a).sum(0) / s_sum  # [3]
        b = w[:, None] * (a - a_bar)  # [n, 3]
        A = (w[:, None] * a).T @ b  # [3, 3]
        r = resid[v].reshape(n, K * 3)
        y_bar = (w @ r).reshape(K, 3) / s_sum + R_old @ a_bar + t_old  # [K, 3]
        cross = (r.T @ b).reshape(K, 3, 3) + R_old @ A  # [K, 3, 3]
        # a tiny pull toward the current rotation keeps rotations about a degenerate axis unchanged
        cross += 1e-9 * max(float(np.abs(cross).max()), 1e-12) * R_old
        rot = _proper_rotation(cross)
        trans = y_bar - rot @ a_bar
        delta = _rigid(rot - R_old, trans - t_old)  # affine difference; _apply is linear in it
        resid[v] -= w[:, None, None] * _apply(delta, _homogeneous(a))
        transforms[:, j] = _rigid(rot, trans)


# ---------------------------------------------------------------------------------------------
# Refinement: weights


def mesh_neighbours(faces: np.ndarray, n_verts: int) -> sp.csr_matrix:
    """Row-normalised vertex adjacency ``[V, V]`` of a triangle mesh (uniform Laplacian averaging);
    isolated vertices average to themselves."""
    f = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n_verts, n_verts))
    adj.data[:] = 1.0  # duplicates -> 1
    deg = np.asarray(adj.sum(axis=1)).ravel()
    lonely = np.flatnonzero(deg == 0)
    if len(lonely):
        adj = adj + sp.csr_matrix((np.ones(len(lonely)), (lonely, lonely)), shape=(n_verts, n_verts))
        deg[lonely] = 1.0
    return sp.diags(1.0 / deg) @ adj


def candidate_bones(idx: np.ndarray, val: np.ndarray, parents: np.ndarray,
                    with_neighbours: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex, the bones its weights may use: its support plus (optionally) their tree neighbours.

    Returns ``cand int64 [V, C]`` and ``mask bool [V, C]`` (padding is ``False``).
    """
    parents = np.asarray(parents)
    J = len(parents)
    support = _to_dense(idx, val, J) > 0  # [V, J]
    if with_neighbours:
        adj = np.zeros((J, J), dtype=bool)
        child = np.flatnonzero(parents >= 0)
        adj[child, parents[child]] = True
        adj[parents[child], child] = True
        support = support | ((support.astype(np.int32) @ adj.astype(np.int32)) > 0)
    return _candidates_from_mask(support)


def _candidates_from_mask(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``allowed bool [V, J]`` -> ``cand int64 [V, C]`` (allowed bones in index order) and ``mask bool [V, C]``."""
    count = allowed.sum(axis=1)
    C = int(max(count.max(), 1))
    order = np.argsort(~allowed, axis=1, kind="stable")[:, :C]
    mask = np.arange(C)[None, :] < count[:, None]
    cand = np.where(mask, order, 0)
    return cand.astype(np.int64), mask


def motion_candidate_bones(single_errors: np.ndarray, idx: np.ndarray, val: np.ndarray,
                           n_extra: int) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex, its current support plus the ``n_extra`` bones whose rigid motion alone reproduces it best.

    Args:
        single_errors: ``[V, J]`` squared error of each vertex moved by each bone alone (summed over frames).
        idx, val: current sparse weight rows ``[V, M]``.
        n_extra: bones added per vertex (0: the support only).
    Returns:
        ``cand int64 [V, C]`` and ``mask bool [V, C]`` as in :func:`candidate_bones`.
    """
    V, J = single_errors.shape
    allowed = _to_dense(idx, val, J) > 0
    n_extra = min(n_extra, J)
    if n_extra > 0:
        best = np.argpartition(single_errors, n_extra - 1, axis=1)[:, :n_extra]
        np.put_along_axis(allowed, best, True, axis=1)
    return _candidates_from_mask(allowed)


def project_simplex(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``y [B, C]`` onto the simplex over its ``mask`` entries
    (masked-out entries become 0)."""
    big = np.where(mask, y, -np.inf)
    s = -np.sort(-big, axis=1)
    s_fin = np.where(np.isfinite(s), s, 0.0)
    css = np.cumsum(s_fin, axis=1)
    r = np.arange(1, y.shape[1] + 1)[None, :]
    cond = np.isfinite(s) & (s - (css - 1.0) / r > 0)
    rho = np.maximum(cond.sum(axis=1), 1)
    theta = (np.take_along_axis(css, rho[:, None] - 1, axis=1) - 1.0) / rho[:, None]
    return np.where(mask, np.maximum(y - theta, 0.0), 0.0)


def _simplex_qp(H: np.ndarray, g: np.ndarray, w0: np.ndarray, mask: np.ndarray, iters: int) -> np.ndarray:
    """Minimise ``w^T H w - 2 g^T w`` on the masked simplex, batched: accelerated projected gradient.

    ``H [B, C, C]`` symmetric PSD, ``g [B, C]``, start ``w0 [B, C]``, ``mask bool [B, C]``.
    """
    L = np.sqrt(np.einsum("bij,bij->b", H, H))  # Frobenius norm >= largest eigenvalue (H is PSD)
    step = 1.0 / np.maximum(2.0 * L, 1e-300)
    w = project_simplex(w0, mask)
    z, t = w.copy(), 1.0
    for _ in range(iters):
        grad = 2.0 * (np.matmul(H, z[:, :, None])[:, :, 0] - g)
        w_next = project_simplex(z - step[:, None] * grad, mask)
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        z = w_next + ((t - 1.0) / t_next) * (w_next - w)
        w, t = w_next, t_next
    return w


def _batched_spd_solve(A: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``A x = rhs`` for small symmetric positive (semi-)definite ``A [B, C, C]``, ``rhs [B, C, R]``.

    A batched Cholesky factorisation written out over the (small) dimension ``C``; pivots are clamped
    to a tiny positive floor, so a semi-definite block never fails (it gets a least-norm-like answer).
    Plain numpy loops over ``C`` avoid per-matrix LAPACK calls, which are slow for many tiny systems.
    """
    B, C, _ = A.shape
    # relative to each system's scale; an all-zero system (a vertex every candidate reproduces exactly) gets
    # a ridge that keeps the solve finite
    floor = 1e-13 * np.maximum(np.einsum("bcc->b", A) / C, 1e-30)
    L = np.zeros_like(A)
    for j in range(C):
        d = A[:, j, j] - np.einsum("bk,bk->b", L[:, j, :j], L[:, j, :j])
        L[:, j, j] = np.sqrt(np.maximum(d, floor))
        if j + 1 < C:
            below = A[:, j + 1:, j] - np.einsum("bik,bk->bi", L[:, j + 1:, :j], L[:, j, :j])
            L[:, j + 1:, j] = below / L[:, j, j, None]
    y = np.zeros_like(rhs)
    for i in range(C):
        y[:, i] = (rhs[:, i] - np.einsum("bk,bkr->br", L[:, i, :i], y[:, :i])) / L[:, i, i, None]
    x = np.zeros_like(rhs)
    for i in range(C - 1, -1, -1):
        x[:, i] = (y[:, i] - np.einsum("bk,bkr->br", L[:, i + 1:, i], x[:, i + 1:])) / L[:, i, i, None]
    return x


def _simplex_qp_on_support(H: np.ndarray, g: np.ndarray, support: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Minimiser of ``w^T H w - 2 g^T w`` with ``sum w = 1`` on a small ``support [B, C]``: with ``H y = g``
    and ``H z = 1`` on the support, ``w = y + a z`` with ``a`` making ``sum w = 1``. Entries that come out
    negative are dropped and the rest re-solved, up to ``rounds`` times; leftovers are clipped. Rows whose
    support is empty return zeros."""
    B, C = support.shape
    eye = np.eye(C)[None]
    act = support.copy()
    w = np.zeros((B, C))
    for _ in range(rounds):
        both = act[:, :, None] & act[:, None, :]
        A = np.where(both, H, eye)
        rhs = np.stack([np.where(act, g, 0.0), act.astype(np.float64)], axis=-1)  # [B, C, 2]
        sol = _batched_spd_solve(A, rhs)
        y, z = sol[..., 0], sol[..., 1]
        denom = z.sum(axis=1)
        alpha = (1.0 - y.sum(axis=1)) / np.where(np.abs(denom) > 1e-300, denom, 1.0)
        w = np.where(act, y + alpha[:, None] * z, 0.0)
        neg = act & (w < 0)
        if not neg.any():
            break
        act &= ~neg
    w = np.where(np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    total = w.sum(axis=1, keepdims=True)
    return np.where(total > 0, w / np.maximum(total, 1e-300), 0.0)


class _ResidualGram:
    """Per-vertex residual Gram matrices of the candidate bones, for fixed transforms.

    For vertex ``v`` with candidates ``c`` and residuals ``r_c = (T_kc [a_v, 1] - x_kv)_k`` stacked over
    frames, ``R_v[c, d] = r_c . r_d``; on the simplex the vertex's squared LBS error is ``w^T R_v w``.
    Built from ``Q[i, j] = sum_k M_ki^T M_kj`` and ``Z[v, j] = sum_k M_kj^T x_kv`` (one GEMM each), so the
    cost does not grow with ``K * C`` per vertex.
    """

    def __init__(self, anchor: np.ndarray, frames_vm: np.ndarray, transforms: np.ndarray):
        V, K, _ = frames_vm.shape
        J = transforms.shape[1]
        self.M3 = transforms[:, :, :3, :]  # [K, J, 3, 4]
        self.J = J
        self._A = self.M3.transpose(0, 2, 1, 3).reshape(K * 3, J * 4)  # [(k, a), (j, b)] = M_kj[a, b]
        self._Q: np.ndarray | None = None
        self.Z = (frames_vm.reshape(V, K * 3) @ self._A).reshape(V, J, 4)
        self.xx = np.einsum("vka,vka->v", frames_vm, frames_vm)
        self.ah = np.concatenate([anchor, np.ones((V, 1))], axis=1)  # [V, 4]

    @property
    def Q(self) -> np.ndarray:
        """``[J * J, 16]``: ``Q[i, j] = sum_k M_ki^T M_kj`` (4x4 blocks, flattened), one GEMM, built on first use."""
        if self._Q is None:
            J = self.J
            self._Q = (self._A.T @ self._A).reshape(J, 4, J, 4).transpose(0, 2, 1, 3).reshape(J * J, 16)
        return self._Q

    def single_bone_errors(self) -> np.ndarray:
        """``[V, J]``: each vertex's squared error over all frames when bone ``j`` alone moves it (``R_v[j, j]``)."""
        Q_diag = np.einsum("kjab,kjac->jbc", self.M3, self.M3).reshape(self.J, 16)  # the diagonal blocks only
        aa = (self.ah[:, :, None] * self.ah[:, None, :]).reshape(-1, 16)
        err = aa @ Q_diag.T - 2.0 * np.einsum("vjc,vc->vj", self.Z, self.ah) + self.xx[:, None]
        return np.maximum(err, 0.0)

    def chunk(self, s: int, e: int, cand: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``R [B, C, C]`` for vertices ``s:e`` (``cand/mask [B, C]``); masked rows/columns are 0."""
        a, J = self.ah[s:e], self.J
        B, C = cand.shape
        G_all = (a[:, :, None] * a[:, None, :]).reshape(B, 16) @ self.Q.T  # [B, J*J]: a^T Q[i, j] a
        G = np.take_along_axis(G_all, (cand[:, :, None] * J + cand[:, None, :]).reshape(B, C * C), axis=1)
        h = np.matmul(np.take_along_axis(self.Z[s:e], cand[:, :, None], axis=1), a[:, :, None])[:, :, 0]
        # exact on the simplex, and far better conditioned than G itself
        R = G.reshape(B, C, C) - h[:, :, None] - h[:, None, :] + self.xx[s:e, None, None]
        R = 0.5 * (R + R.transpose(0, 2, 1))
        return np.where(mask[:, :, None] & mask[:, None, :], R, 0.0)


def _quad(w: np.ndarray, R: np.ndarray) -> np.ndarray:
    return np.einsum("bc,bcd,bd->b", w, R, w)


def _top_k(w: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest positive masked entries per row (at least the largest one)."""
    top = np.argsort(-np.where(mask, w, -np.inf), axis=1, kind="stable")[:, :k]
    keep = np.zeros_like(mask)
    np.put_along_axis(keep, top, True, axis=1)
    keep &= mask & (w > 0)
    none = ~keep.any(axis=1)
    if none.any():
        keep[none] = mask[none] & (np.arange(mask.shape[1])[None, :] == top[none, :1])
    return keep


def update_weights(anchor: np.ndarray, frames_vm: np.ndarray, idx: np.ndarray, val: np.ndarray,
                   transforms: np.ndarray, cand: np.ndarray | None, cand_mask: np.ndarray | None,
                   neighbours: sp.csr_matrix | None, max_influences: int, smoothness: float,
                   smooth_steps: int = 2, smooth_slack: float = 0.5, qp_iters: int = 10,
                   chunk: int = 16384, motion_candidates: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve every vertex's weights with the transforms fixed, then smooth them over the mesh.

    1. Per vertex, minimise its squared LBS error ``w^T R_v w`` (see :class:`_ResidualGram`) plus
       ``mu_v || w - wbar_v ||^2`` on the simplex over its candidate bones, where ``wbar_v`` is the mean
       of its mesh neighbours' current weights and ``mu_v = smoothness * (current error of v)``;
       projected gradient finds the support, which is pruned to ``max_influences`` and solved exactly.
       Rows that would raise the vertex's error keep their old value.
    2. Smoothing (when ``neighbours`` is given): ``smooth_steps`` steps of uniform Laplacian smoothing
       ``W <- (W + N W) / 2`` on the mesh graph, re-projected onto each vertex's candidates, top
       ``max_influences`` and the simplex. A smoothed row is kept where its error stays within
       ``smooth_slack`` of the improvement step 1 made for that vertex, so the error never rises.

    When ``cand`` is None the candidates are chosen here by :func:`motion_candidate_bones` (current
    support plus ``motion_candidates`` bones) for the current transforms.

    Returns new sparse rows ``idx int64 [V, max_influences]``, ``val float64 [V, max_influences]``.
    """
    V = frames_vm.shape[0]
    J = transforms.shape[1]
    gram = _ResidualGram(anchor, frames_vm, transforms)
    if cand is None:
        cand, cand_mask = motion_candidate_bones(gram.single_bone_errors(), idx, val, motion_candidates)
    dense_old = _to_dense(idx, val, J)
    wbar = None if neighbours is None or smoothness <= 0 else neighbours @ dense_old  # [V, J]
    C = cand.shape[1]
    chunk = max(256, min(chunk, int(1e7 // (J * J + 16 * C * C))))  # ~80 MB of float64 temporaries
    W_new = np.zeros((V, C))  # in candidate coordinates
    err_old = np.zeros(V)
    err_new = np.zeros(V)
    for s in range(0, V, chunk):
        e = min(s + chunk, V)
        c, m = cand[s:e], cand_mask[s:e]
        R = gram.chunk(s, e, c, m)
        w_old = np.take_along_axis(dense_old[s:e], c, axis=1) * m
        e_old = _quad(w_old, R)
        mu = smoothness * np.maximum(e_old, 0.0)
        H = R + mu[:, None, None] * np.eye(C)[None]
        g = mu[:, None] * (np.take_along_axis(wbar[s:e], c, axis=1) * m) if wbar is not None else np.zeros_like(w_old)
        w = _simplex_qp(H, g, w_old, m, qp_iters)  # finds the support
        keep = _top_k(w, m, max_influences)
        w_exact = _simplex_qp_on_support(H, g, keep)  # exact on that support
        objective = lambda x: _quad(x, H) - 2.0 * np.einsum("bc,bc->b", g, x)  # noqa: E731
        use_exact = (objective(w_exact) <= objective(w)) | (m.sum(1) > max_influences)
        w = np.where((use_exact & (w_exact.sum(axis=1) > 0.5))[:, None], w_exact, w)
        e_new = _quad(w, R)
        worse = ~(e_new <= e_old)  # guard: never raise a vertex's error (NaN counts as worse)
        w[worse], e_new[worse] = w_old[worse], e_old[worse]
        W_new[s:e], err_old[s:e], err_new[s:e] = w, e_old, e_new

    if neighbours is not None and smooth_steps > 0 and smooth_slack > 0:
        dense = np.zeros((V, J))
        for col in range(C):
            rows = np.flatnonzero(cand_mask[:, col])
            dense[rows, cand[rows, col]] = W_new[rows, col]
        for _ in range(smooth_steps):
            dense = 0.5 * (dense + neighbours @ dense)
        Ws = np.take_along_axis(dense, cand, axis=1) * cand_mask
        Ws = np.where(_top_k(Ws, cand_mask, max_influences), Ws, 0.0)
        Ws /= np.maximum(Ws.sum(1, keepdims=True), 1e-300)
        allowed = err_new + smooth_slack * (err_old - err_new)
        for s in range(0, V, chunk):
            e = min(s + chunk, V)
            R = gram.chunk(s, e, cand[s:e], cand_mask[s:e])
            ok = _quad(Ws[s:e], R) <= allowed[s:e]
            W_new[s:e][ok] = Ws[s:e][ok]

    top = np.argsort(-W_new, axis=1, kind="stable")[:, :max_influences]
    new_idx = np.zeros((V, max_influences), dtype=np.int64)
    new_val = np.zeros((V, max_influences))
    new_idx[:, :top.shape[1]] = np.take_along_axis(cand, top, axis=1)
    new_val[:, :top.shape[1]] = np.take_along_axis(W_new, top, axis=1)
    new_val /= new_val.sum(axis=1, keepdims=True)
    return new_idx, new_val


def cluster_by_motion(anchor: np.ndarray, frames: np.ndarray, transforms: np.ndarray, parents: np.ndarray,
                      joints: np.ndarray | None = None, rounds: int = 5, min_bone_mass: float = 0.5,
                      frames_vm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Motion clustering (rigid k-means): alternately give every vertex to the bone whose rigid motion
    reproduces it best, and re-fit every bone's rigid motion to its vertices (Kabsch).

    Bones keep their identity: the first assignment uses the given ``transforms`` (usually fitted to the
    predicted weights), so each bone starts from its predicted region. A bone left with too few (or
    collinear) vertices borrows a neighbour's motion as in :func:`initial_transforms`.

    Args:
        anchor: ``[V, 3]``; frames: ``[K, V, 3]``; transforms: ``[K, J, 4, 4]`` start.
        parents: ``[J]``; joints: ``[J, 3]`` (tie-break when borrowing).
        rounds: at most this many assignment / re-fit rounds (stops early when no vertex changes bone).
        frames_vm: the frames as vertex-major float64 ``[V, K, 3]`` when the caller already has them.
    Returns:
        ``labels int64 [V]`` (each vertex's bone), ``transforms float64 [K, J, 4, 4]``, ``borrowed bool [J]``.
    """
    a = np.asarray(anchor, dtype=np.float64)
    x = np.asarray(frames, dtype=np.float64)
    xv = np.ascontiguousarray(x.transpose(1, 0, 2)) if frames_vm is None else frames_vm
    V, J = a.shape[0], transforms.shape[1]
    labels = np.full(V, -1, dtype=np.int64)
    borrowed = np.zeros(J, dtype=bool)
    for _ in range(rounds):
        new = _ResidualGram(a, xv, transforms).single_bone_errors().argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        transforms, borrowed = initial_transforms(a, x, _one_hot(labels, J), parents, joints, power=1.0,
                                                  min_bone_mass=min_bone_mass, frames_vm=xv)
    return labels, transforms, borrowed


def split_motion_clusters(anchor: np.ndarray, frames_vm: np.ndarray, n_clusters: int, rounds: int = 5,
                          seed_fraction: float = 0.5, min_size: int = 6) -> np.ndarray:
    """Motion clusters grown by splitting, the start of smooth skinning decomposition (Le & Deng 2012).

    Starting from one cluster (one global rigid motion), every phase splits the clusters with the
    largest squared error (all of them while fewer than ``n_clusters / 2``): a new cluster is seeded
    with the ``seed_fraction`` of the cluster's vertices nearest (on the anchor) to its worst-reproduced
    vertex and gets their rigid motion. Rigid k-means rounds (each vertex to the motion that reproduces
    it best, each motion re-fitted to its vertices) follow every phase. Unlike a start from predicted
    weights, no two clusters end up sharing one motion while a moving part has none.

    Args:
        anchor: ``[V, 3]``; frames_vm: the frames vertex-major, float64 ``[V, K, 3]``.
        n_clusters: at most this many clusters (fewer when clusters get smaller than ``min_size``).
        rounds: k-means rounds per phase (stops early when no vertex changes cluster).
    Returns:
        ``labels int64 [V]`` in ``[0, m)``, ``m <= n_clusters``.
    """
    a = np.asarray(anchor, dtype=np.float64)
    V = a.shape[0]
    scale = float(np.ptp(a, axis=0).max())
    labels = np.zeros(V, dtype=np.int64)
    transforms = weighted_rigid_fits(a, None, np.ones((V, 1)), frames_vm)[0]
    while transforms.shape[1] < n_clusters:
        m = transforms.shape[1]
        own = _ResidualGram(a, frames_vm, transforms).single_bone_errors()[np.arange(V), labels]
        total = np.bincount(labels, own, minlength=m)
        seeds = []
        for c in np.argsort(-total, kind="stable")[:min(m, n_clusters - m)]:
            members = np.flatnonzero(labels == c)
            if len(members) < min_size or total[c] <= 0:
                continue
            worst = members[np.argmax(own[members])]
            d = np.linalg.norm(a[members] - a[worst], axis=1)
            region = np.zeros((V, 1))
            region[members[d <= np.quantile(d, seed_fraction)]] = 1.0
            seeds.append(weighted_rigid_fits(a, None, region, frames_vm)[0])
        if not seeds:
            break
        transforms = np.concatenate([transforms, *seeds], axis=1)
        m = transforms.shape[1]
        for _ in range(rounds):
            new = _ResidualGram(a, frames_vm, transforms).single_bone_errors().argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            refit, mass, spread = weighted_rigid_fits(a, None, _one_hot(labels, m), frames_vm)
            ok = (mass >= 3) & (spread > (1e-3 * scale) ** 2)  # an empty or degenerate cluster keeps its motion
            transforms[:, ok] = refit[:, ok]
    return labels


def match_clusters_to_bones(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Give each motion cluster to one bone: the assignment (Hungarian) that maximises the number of
    vertices whose cluster's bone is also their dominant bone in ``weights``.

    Args:
        labels: int ``[V]`` cluster per vertex (at most ``J`` clusters); weights: ``[V, J]``.
    Returns:
        ``int64 [V]``: the bone of each vertex's cluster.
    """
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels, dtype=np.int64)
    J = weights.shape[1]
    m = int(labels.max()) + 1
    if m > J:
        raise ValueError(f"{m} clusters for {J} bones")
    dominant = np.asarray(weights).argmax(axis=1)
    overlap = np.bincount(labels * J + dominant, minlength=m * J).reshape(m, J).astype(np.float64)
    rows, cols = linear_sum_assignment(-overlap)
    bone_of = np.empty(m, dtype=np.int64)
    bone_of[rows] = cols
    return bone_of[labels]


# ---------------------------------------------------------------------------------------------
# Driver


def skin_anchor(anchor: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """LBS of the anchor with sparse-aware blending (cost ~ non-zero weights, not ``V * J``).

    Args:
        anchor: ``[V, 3]``; weights: ``[V, J]`` (mostly zeros); transforms: ``[K, J, 4, 4]``.
    Returns:
        float64 ``[K, V, 3]``.
    """
    a = np.asarray(anchor, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    T = np.asarray(transforms, dtype=np.float64)
    width = int(max((w > 0).sum(axis=1).max(), 1))
    idx, val = _to_sparse_rows(w, width)
    return _blend(a, _bone_groups(idx, val, w.shape[1]), T).transpose(1, 0, 2)


def reconstruction_error(anchor: np.ndarray, frames: np.ndarray, weights: np.ndarray,
                         transforms: np.ndarray) -> np.ndarray:
    """Per-vertex per-frame distance ``[K, V]`` float32 between LBS of the anchor and the frames (input units).

    Args:
        anchor: ``[V, 3]``; frames: ``[K, V, 3]``; weights: ``[V, J]``; transforms: ``[K, J, 4, 4]``.
    """
    posed = skin_anchor(anchor, weights, transforms)
    return np.linalg.norm(posed - np.asarray(frames, dtype=np.float64).reshape(posed.shape), axis=-1).astype(np.float32)


@dataclass
class _FitState:
    """One start of the refinement: sparse weight rows, per-bone groups, transforms and residual."""

    name: str
    idx: np.ndarray
    val: np.ndarray
    groups: list
    transforms: np.ndarray
    borrowed: np.ndarray
    resid: np.ndarray
    cand: np.ndarray | None = None
    cand_mask: np.ndarray | None = None
    rmse: list[float] = field(default_factory=list)
    converged: bool = False

    def __post_init__(self) -> None:
        self.sq_err = float(np.sum(self.resid ** 2))
        self.rmse.append(float(np.sqrt(self.sq_err / (self.resid.shape[0] * self.resid.shape[1]))))


def _fit_on_keyframes(a: np.ndarray, x: np.ndarray, weights: np.ndarray, parents: np.ndarray,
                      joints: np.ndarray | None, faces: np.ndarray | None, cfg: FitConfig,
                      tick: Callable[[float], None], start: float) -> MotionFit:
    """:func:`fit_motion` with the weights refined on ``cfg.max_fit_frames`` evenly spaced keyframes, then
    every frame's transforms fitted to those weights (see ``FitConfig.max_fit_frames``)."""
    K = x.shape[0]
    keys = np.unique(np.round(np.linspace(0, K - 1, cfg.max_fit_frames)).astype(np.int64))
    share = 0.85  # of the progress bar: the keyframe fit; the rest: the sweeps over all frames
    sub = fit_motion(a, x[keys], weights, parents, joints, faces, replace(cfg, max_fit_frames=0),
                     progress=lambda f: tick(share * f))
    xv = np.ascontiguousarray(x.transpose(1, 0, 2))
    w = sub.weights.astype(np.float64)
    J = len(parents)
    transforms, _ = initial_transforms(a, x, w, parents, joints, cfg.init_power, cfg.min_bone_mass, xv)
    transforms[keys] = sub.transforms
    idx, val = _to_sparse_rows(w, min(cfg.max_influences, J))
    groups = _bone_groups(idx, val, J)
    resid = xv - _blend(a, groups, transforms)
    for s in range(cfg.keyframe_sweeps):
        tick(share + (1.0 - share) * s / max(cfg.keyframe_sweeps, 1))
        update_transforms(a, resid, groups, transforms)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("keyframe fit: %d of %d frames, all-frame rmse %.3g", len(keys), K, _rms_vertex_error(resid))
    tick(1.0)
    return MotionFit(transforms=transforms, weights=sub.weights, borrowed=sub.borrowed, rmse_history=sub.rmse_history,
                     seconds=time.perf_counter() - start, start=sub.start, keyframes=keys.tolist())


def fit_motion(anchor: np.ndarray, frames: np.ndarray, weights: np.ndarray, parents: np.ndarray,
               joints: np.ndarray | None = None, faces: np.ndarray | None = None,
               config: FitConfig | None = None,
               progress: Callable[[float], None] | None = None,
               should_cancel: Callable[[], bool] | None = None) -> MotionFit:
    """Fit per-frame rigid bone transforms (and optionally refine the weights) so that LBS of the anchor
    reproduces every frame.

    Args:
        anchor: float ``[V, 3]`` rest (anchor) vertices.
        frames: float ``[K, V, 3]`` target frames (frame 0 is usually the anchor itself).
        weights: float ``[V, J]`` initial skinning weights (any non-negative rows; pruned here).
        parents: int ``[J]`` skeleton tree (parents precede children).
        joints: float ``[J, 3]`` anchor joints (used only to break ties when a bone borrows motion).
        faces: int ``[F, 3]``; needed for the Laplacian smoothing of the weight refinement.
        config: :class:`FitConfig`.
        progress: called with a fraction in [0, 1].
        should_cancel: polled between steps; when it returns True, :class:`FitCancelled` is raised.
    Returns:
        :class:`MotionFit`.
    """
    cfg = config or FitConfig()
    start = time.perf_counter()
    a = np.asarray(anchor, dtype=np.float64)
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    w_in = np.asarray(weights, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"anchor must have shape [V, 3], got {list(a.shape)}")
    if x.ndim != 3 or x.shape[1:] != a.shape:
        raise ValueError(f"frames must have shape [K, {a.shape[0]}, 3], got {list(x.shape)}")
    if w_in.shape != (a.shape[0], len(parents)):
        raise ValueError(f"weights must have shape [V, J] = [{a.shape[0]}, {len(parents)}], got {list(w_in.shape)}")
    if not (np.isfinite(a).all() and np.isfinite(x).all() and np.isfinite(w_in).all()):
        raise ValueError("anchor, frames and weights must be finite")
    validate_tree(parents)
    if joints is not None and np.shape(joints) != (len(parents), 3):
        raise ValueError(f"joints must have shape [J, 3] = [{len(parents)}, 3], got {list(np.shape(joints))}")

    def tick(frac: float) -> None:
        if should_cancel is not None and should_cancel():
            raise FitCancelled("motion fit cancelled")
        if progress is not None:
            progress(float(frac))

    K, V, _ = x.shape
    J = len(parents)
    M = min(cfg.max_influences, J)
    if cfg.refine_iters > 0 and cfg.refine_weights and 0 < cfg.max_fit_frames < K:
        return _fit_on_keyframes(a, x, w_in, parents, joints, faces, cfg, tick, start)
    w0 = prune_weights(w_in, M).astype(np.float64)
    idx, val = _to_sparse_rows(w0, M)
    tick(0.0)
    xv = np.ascontiguousarray(x.transpose(1, 0, 2))  # vertex-major [V, K, 3]
    transforms, borrowed = initial_transforms(a, x, w0, parents, joints, cfg.init_power, cfg.min_bone_mass, xv)
    scale = float(np.ptp(a, axis=0).max())
    groups = _bone_groups(idx, val, J)
    resid = xv - _blend(a, groups, transforms)
    refining_weights = cfg.refine_iters > 0 and cfg.refine_weights
    starts = [_FitState("given", idx, val, groups, transforms, borrowed, resid)]
    if refining_weights and cfg.motion_init_rounds > 0 and J > 1:
        seeds = {}
        if cfg.init in ("weights", "best"):
            seeds["weights"] = transforms
        if cfg.init in ("split", "best"):
            bone = match_clusters_to_bones(split_motion_clusters(a, xv, J, cfg.motion_init_rounds,
                                                                 cfg.split_seed_fraction), w0)
            seeds["split"], _ = initial_transforms(a, x, _one_hot(bone, J), parents, joints, 1.0, cfg.min_bone_mass, xv)
        for name, t_seed in seeds.items():
            labels, t_c, borrowed_c = cluster_by_motion(a, x, t_seed, parents, joints, cfg.motion_init_rounds,
                                                        cfg.min_bone_mass, frames_vm=xv)
            idx_c = np.zeros((V, M), dtype=np.int64)
            val_c = np.zeros((V, M))
            idx_c[:, 0], val_c[:, 0] = labels, 1.0
            groups_c = _bone_groups(idx_c, val_c, J)
            starts.append(_FitState(name, idx_c, val_c, groups_c, t_c, borrowed_c, xv - _blend(a, groups_c, t_c)))
    starts.sort(key=lambda st: st.sq_err)
    log.debug("motion fit starts (squared error): %s", {st.name: st.sq_err for st in starts})
    # starts close to the best one are tried for a few alternations (a lower start error does not
    # always lead to a lower final error); the rest are dropped
    starts = [st for st in starts if st.sq_err <= cfg.start_trial_ratio * starts[0].sq_err]
    for st in starts:  # a start that already reproduces the frames (to float noise) is not refined
        st.converged = st.rmse[0] <= 1e-7 * scale
    tick(1.0 / (cfg.refine_iters + 1))

    neighbours = None
    smoothing = cfg.smoothness > 0 or (cfg.smooth_steps > 0 and cfg.smooth_slack > 0)
    if refining_weights and faces is not None and smoothing:
        neighbours = mesh_neighbours(faces, V)
    if refining_weights and cfg.candidates == "tree":
        for st in starts:
            st.cand, st.cand_mask = candidate_bones(st.idx, st.val, parents, cfg.neighbour_candidates)

    def alternate(st: _FitState) -> None:
        """One alternation on ``st`` in place (appends to ``st.rmse``, sets ``st.converged``)."""
        for _ in range(cfg.transform_sweeps):
            update_transforms(a, st.resid, st.groups, st.transforms)
        if cfg.refine_weights:
            st.idx, st.val = update_weights(a, xv, st.idx, st.val, st.transforms, st.cand, st.cand_mask, neighbours,
                                            M, cfg.smoothness, cfg.smooth_steps, cfg.smooth_slack, cfg.qp_iters,
                                            cfg.chunk, cfg.motion_candidates)
            st.groups = _bone_groups(st.idx, st.val, J)
            st.resid = xv - _blend(a, st.groups, st.transforms)
        st.rmse.append(_rms_vertex_error(st.resid))
        st.converged = st.rmse[-2] - st.rmse[-1] <= cfg.tol * st.rmse[-2] or st.rmse[-1] <= 1e-7 * scale

    if len(starts) > 1 and cfg.refine_iters > 0:
        trial = min(cfg.start_trial_iters, cfg.refine_iters)
        for st in starts:
            while len(st.rmse) - 1 < trial and not st.converged:
                tick(1.0 / (cfg.refine_iters + 1))  # polls cancellation
                alternate(st)
        log.debug("after %d trial alternations: %s", trial, {st.name: st.rmse[-1] for st in starts})
        starts.sort(key=lambda st: st.rmse[-1])
    best = starts[0]
    log.debug("motion fit start: %s, rmse %.3g", best.name, best.rmse[0])
    while len(best.rmse) - 1 < cfg.refine_iters and not best.converged:
        alternate(best)
        log.debug("motion fit alternation %d: rmse %.3g", len(best.rmse) - 1, best.rmse[-1])
        tick(len(best.rmse) / (cfg.refine_iters + 1))
    idx, val, transforms, borrowed, rmse = best.idx, best.val, best.transforms, best.borrowed, best.rmse
    weights_out = _to_dense(idx, val, J).astype(np.float32)
    return MotionFit(transforms=transforms, weights=weights_out, borrowed=borrowed, rmse_history=rmse,
                     seconds=time.perf_counter() - start, start=best.name)


# ---------------------------------------------------------------------------------------------
# Local pose (armature keys)


def matrix_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternions ``wxyz [..., 4]`` (``w >= 0``) of rotation matrices ``[..., 3, 3]`` (Shepperd's method)."""
    R = np.asarray(rot, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    trace = m00 + m11 + m22
    d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    s01, s02, s12 = R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1]
    cands = np.stack([
        np.stack([1 + trace, d21, d02, d10], -1),
        np.stack([d21, 1 + m00 - m11 - m22, s01, s02], -1),
        np.stack([d02, s01, 1 - m00 + m11 - m22, s12], -1),
        np.stack([d10, s02, s12, 1 - m00 - m11 + m22], -1),
    ], axis=-2)  # [..., 4, 4]; row i is 4 q_i q
    pick = np.argmax(np.stack([trace, m00, m11, m22], -1), axis=-1)
    q = np.take_along_axis(cands, pick[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``wxyz [..., 4]`` (normalised first)."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def to_local_pose(bone_transforms: np.ndarray, joints: np.ndarray,
                  parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-space deformation matrices -> per-bone rotations/translations relative to the parent.

    Bone ``j``'s rest frame is a translation to its joint (identity rotation), so its posed global frame
    is ``G_kj = T_kj @ translate(joints_j)`` and its local frame is ``G_kp^-1 @ G_kj`` (parent ``p``; the
    root's local frame is its global frame). At rest the local translation is ``joints_j - joints_p``.

    Args:
        bone_transforms: float ``[K, J, 4, 4]`` rigid transforms (anchor space -> frame k).
        joints: float ``[J, 3]`` anchor joint positions.
        parents: int ``[J]``, parents precede children.
    Returns:
        ``local_rotations float64 [K, J, 4]`` unit quaternions ``wxyz`` (sign chosen continuous over
        frames, first frame ``w >= 0``) and ``local_translations float64 [K, J, 3]``.
    """
    T = np.asarray(bone_transforms, dtype=np.float64)
    X = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    if T.ndim != 4 or T.shape[1:] != (len(parents), 4, 4):
        raise ValueError(f"bone_transforms must have shape [K, {len(parents)}, 4, 4], got {list(T.shape)}")
    validate_tree(parents, n_joints=len(X))
    R = T[..., :3, :3]  # global rotation of each bone (rest rotation is identity)
    head = np.einsum("kjab,jb->kja", R, X) + T[..., :3, 3]  # posed joint positions [K, J, 3]
    local_R = R.copy()
    local_t = head.copy()
    child = np.flatnonzero(parents >= 0)
    p = parents[child]
    Rp_T = np.swapaxes(R[:, p], -1, -2)
    local_R[:, child] = Rp_T @ R[:, child]
    local_t[:, child] = np.einsum("kjab,kjb->kja", Rp_T, head[:, child] - head[:, p])
    quat = matrix_to_quaternion(local_R)
    # hemisphere continuity over frames so keyframe interpolation takes the short way
    for k in range(1, quat.shape[0]):
        flip = np.sum(quat[k] * quat[k - 1], axis=-1) < 0
        quat[k, flip] *= -1
    return quat, local_t


def from_local_pose(local_rotations: np.ndarray, local_translations: np.ndarray, joints: np.ndarray,
                    parents: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_local_pose`: forward kinematics back to anchor-space deformation matrices.

    Args:
        local_rotations: ``[K, J, 4]`` quaternions ``wxyz``; local_translations: ``[K, J, 3]``.
        joints: ``[J, 3]`` anchor joints; parents: ``[J]`` (parents precede children).
    Returns:
        float64 ``[K, J, 4, 4]`` rigid transforms from anchor space to frame ``k``.
    """
    X = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    validate_tree(parents, n_joints=len(X))
    local_R = quaternion_to_matrix(local_rotations)
    local_t = np.asarray(local_translations, dtype=np.float64)
    K, J = local_R.shape[:2]
    R = np.empty((K, J, 3, 3))
    head = np.empty((K, J, 3))
    for j in range(J):
        p = int(parents[j])
        if p < 0:
            R[:, j], head[:, j] = local_R[:, j], local_t[:, j]
        else:
            R[:, j] = R[:, p] @ local_R[:, j]
            head[:, j] = np.einsum("kab,kb->ka", R[:, p], local_t[:, j]) + head[:, p]
    trans = head - np.einsum("kjab,jb->kja", R, X)
    return _rigid(R, trans)
