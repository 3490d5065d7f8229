"""Starts of the motion fit: each bone's first rigid motion, and motion clustering (rigid k-means, grown by
splitting) that gives the refinement better starting weights than the networks' own."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from backend.skeleton import tree_distances

from .rigid import weighted_rigid_fits
from .solve import ResidualGram
from .sparse import one_hot

log = logging.getLogger(__name__)


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


def cluster_by_motion(anchor: np.ndarray, frames: np.ndarray, transforms: np.ndarray, parents: np.ndarray,
                      joints: np.ndarray | None = None, rounds: int = 5, min_bone_mass: float = 0.5,
                      frames_vm: np.ndarray | None = None,
                      between: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        between: called before every round (progress and cancellation).
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
        if between is not None:
            between()
        new = ResidualGram(a, xv, transforms).single_bone_errors().argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        transforms, borrowed = initial_transforms(a, x, one_hot(labels, J), parents, joints, power=1.0,
                                                  min_bone_mass=min_bone_mass, frames_vm=xv)
    return labels, transforms, borrowed


TIE_FLOOR = 1e-12  # squared errors (normalized units, summed over frames) closer than this are a tie


def stable_argmin(errors: np.ndarray, current: np.ndarray | None = None, floor: float = TIE_FLOOR) -> np.ndarray:
    """The column of each row's smallest value, ties within ``floor`` going to ``current`` (a vertex's label
    so far) when it is among them, else to the lowest column.

    Two clusters with the same motion (a static region split in two, a rigid part seeded twice) reproduce
    their vertices equally well, to the last bit; a plain ``argmin`` then follows float rounding, so the same
    clip turned 90 degrees about X (the world positions 4e-8 of the size apart) gave the Khronos Fox another
    skeleton (20 bones instead of 23).

    Args:
        errors: float ``[V, m]``; current: int ``[V]`` or None.
    Returns:
        int64 ``[V]``.
    """
    best = errors.min(axis=1, keepdims=True)
    tied = errors <= best + floor
    pick = tied.argmax(axis=1)
    if current is not None:
        rows = np.arange(len(errors))
        keep = (current >= 0) & (current < errors.shape[1])
        keep[keep] = tied[rows[keep], current[keep]]
        pick = np.where(keep, current, pick)
    return pick.astype(np.int64)


def split_motion_clusters(anchor: np.ndarray, frames_vm: np.ndarray, n_clusters: int, rounds: int = 5,
                          seed_fraction: float = 0.5, min_size: int = 6,
                          between: Callable[[], None] | None = None) -> np.ndarray:
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
        between: called before every phase and round (progress and cancellation).
    Returns:
        ``labels int64 [V]`` in ``[0, m)``, ``m <= n_clusters``.
    """
    a = np.asarray(anchor, dtype=np.float64)
    V = a.shape[0]
    scale = float(np.ptp(a, axis=0).max())
    labels = np.zeros(V, dtype=np.int64)
    transforms = weighted_rigid_fits(a, None, np.ones((V, 1)), frames_vm)[0]
    while transforms.shape[1] < n_clusters:
        if between is not None:
            between()
        m = transforms.shape[1]
        own = ResidualGram(a, frames_vm, transforms).single_bone_errors()[np.arange(V), labels]
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
            if between is not None:
                between()
            new = stable_argmin(ResidualGram(a, frames_vm, transforms).single_bone_errors(), labels)
            if np.array_equal(new, labels):
                break
            labels = new
            refit, mass, spread = weighted_rigid_fits(a, None, one_hot(labels, m), frames_vm)
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
