"""Rigging a large mesh through a proxy: the skeleton, the bone motion and the weights are solved on a few
thousand well-spread vertices, then every vertex of the full mesh gets its own weights against that motion.

1. :func:`build_proxy`: on the welded mesh (co-located vertices are one vertex), ``n_target`` seed vertices
   spread like the mesh's own vertices (every ``(U / n_target)``-th vertex along a Z-order curve through each
   connected piece, plus one in any piece too small to be stepped on): the reported error is a mean over the
   vertices, and a proxy spread evenly over the surface instead (one seed per voxel cell, until 2026-12-07) gave
   a densely modelled region (CesiumMan's head: 57 % of the vertices) a tenth of the fit, so the bone motion
   served the vertices less well (the same skeleton on the bench's 37k x 60 clip: 0.0618 % of the diagonal
   against 0.0489 % now and 0.0485 % without a proxy's shortened fit); every vertex belongs to its nearest seed
   along the mesh edges (a geodesic Voronoi partition, so cells never jump across a gap between parts);
   the proxy's connectivity is the cells' adjacency (faces whose corners fall in two or three cells).
   The proxy vertices are real vertices of the mesh: their trajectories are the input's own.
2. the caller runs the skeleton from motion and the motion fit on the proxy (``verts[:, proxy.vertices]``,
   ``proxy.faces``);
3. :func:`full_mesh_weights`: every welded vertex gets its weights from one small least-squares solve on the
   simplex against the proxy's bone motion (:func:`backend.rigging.fit.update_weights` with the transforms
   fixed, on the fit's keyframes), warm-started from its nearest proxy vertices' weights (inverse-distance
   blend, pruned to ``max_influences``), its candidate bones being those proxy vertices' bones plus the bones
   whose motion alone reproduces it best; a pull toward the warm start (``smoothness``) keeps ambiguous
   vertices with their neighbours. Vertices are processed in chunks (memory bounded; progress and
   cancellation per chunk); co-located vertices get their representative's row, so seams cannot open;
4. :func:`chunked_reconstruction_error`: the error on the full mesh, chunk by chunk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from backend.rigging.fit.solve import (ResidualGram, bones_in_reach, motion_candidate_bones, restrict_to_reach,
                                      untangle_rest, update_rest_pose, update_weights)
from backend.rigging.fit.sparse import prune_weights, to_sparse_rows

log = logging.getLogger(__name__)

CARRY_NEIGHBOURS = 16
"""Proxy vertices whose rest offsets are blended (Gaussian in the distance, the width the proxy's spacing) into a
vertex's start in the full-mesh pass."""


@dataclass
class MeshProxy:
    """A coarse stand-in for a mesh (see the module docstring).

    Attributes:
        vertices: int64 ``[P]`` the proxy's vertices, as indices into the full mesh (co-location
            representatives, ascending).
        faces: int64 ``[F_p, 3]`` the proxy's connectivity, indices into ``vertices``; a pair of adjacent cells
            that share no triangle with a third appears as ``(a, b, b)`` (an edge).
        cell: int64 ``[V]`` every full-mesh vertex's proxy vertex (index into ``vertices``); co-located vertices
            share their representative's cell.
        representatives: int64 ``[V]`` co-location representatives
            (:func:`backend.sequence.colocated_representatives`).
    """

    vertices: np.ndarray
    faces: np.ndarray
    cell: np.ndarray
    representatives: np.ndarray

    @property
    def size(self) -> int:
        return int(len(self.vertices))


def _welded_graph(anchor: np.ndarray, faces: np.ndarray, keep: np.ndarray,
                  compact: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Symmetric edge-length adjacency of the welded mesh (``[U, U]``) and its welded faces ``int64 [F, 3]``."""
    f = compact[np.asarray(faces, dtype=np.int64)]
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    ok = i != j
    i, j = i[ok], j[ok]
    a = anchor[keep]
    length = np.maximum(np.linalg.norm(a[i] - a[j], axis=1), 1e-12)
    U = len(keep)
    adj = sp.coo_matrix((np.concatenate([length, length]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                        shape=(U, U)).tocsr()
    adj.sum_duplicates()
    # duplicates (an edge shared by two faces) were summed: put the length back
    adj.data = np.maximum(np.linalg.norm(a[adj.indices] - a[np.repeat(np.arange(U), np.diff(adj.indptr))], axis=1),
                          1e-12)
    return adj, f


def _density_seeds(points: np.ndarray, piece: np.ndarray, n: int) -> np.ndarray:
    """About ``n`` seeds spread like the points themselves: every ``(U / n)``-th point along a Z-order (Morton)
    curve through each piece in turn (systematic sampling: a region holding a share of the points gets that share
    of the seeds, and the curve keeps them apart), plus one in each piece the step passed over.
    ``int64 [S]`` sorted; ``piece``: int ``[U]`` connected-piece labels."""
    U = len(points)
    lo = points.min(axis=0)
    extent = max(float(np.ptp(points, axis=0).max()), 1e-300)
    grid = np.clip(((points - lo) / extent * 1023.0).astype(np.int64), 0, 1023)  # 10 bits per axis
    code = np.zeros(U, dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((grid[:, axis] >> bit) & 1) << (3 * bit + axis)
    order = np.lexsort((np.arange(U), code, piece))
    picks = ((np.arange(n) + 0.5) * U / n).astype(np.int64)
    seeds = np.unique(order[np.minimum(picks, U - 1)])
    # a piece with fewer points than the sampling step may have been stepped over: its middle point along the curve
    sizes = np.bincount(piece)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    missing = np.setdiff1d(np.flatnonzero(sizes), piece[seeds])
    return np.union1d(seeds, order[starts[missing] + sizes[missing] // 2])


def build_proxy(anchor: np.ndarray, faces: np.ndarray, representatives: np.ndarray, n_target: int,
                progress: Callable[[float], None] | None = None) -> MeshProxy:
    """A proxy of about ``n_target`` vertices (see the module docstring).

    Args:
        anchor: float ``[V, 3]`` the anchor frame.
        faces: int ``[F, 3]``.
        representatives: int64 ``[V]`` from :func:`backend.sequence.colocated_representatives` on all frames.
        n_target: wanted proxy size (met within a few percent on meshes larger than it; a mesh with fewer
            welded vertices is its own proxy).
        progress: called with the fraction done between the steps (graph, seeds, partition); may raise to cancel.
    Returns:
        :class:`MeshProxy`.
    """
    if n_target < 16:
        raise ValueError(f"a proxy needs at least 16 vertices, got n_target={n_target}")
    a = np.asarray(anchor, dtype=np.float64)
    rep = np.asarray(representatives, dtype=np.int64)
    keep = np.flatnonzero(rep == np.arange(len(rep)))
    compact = np.searchsorted(keep, rep)  # [V] -> welded index
    tick = progress if progress is not None else (lambda fraction: None)
    adj, welded_faces = _welded_graph(a, faces, keep, compact)
    tick(0.2)
    U = len(keep)
    points = a[keep]
    if U <= n_target:
        seeds = np.arange(U)
    else:
        _, piece = connected_components(adj, directed=False)
        seeds = _density_seeds(points, piece, n_target)
    tick(0.5)
    if len(seeds) < U:
        _, _, sources = dijkstra(adj, directed=False, indices=seeds, min_only=True, return_predecessors=True)
        unreached = sources < 0
        if unreached.any():  # cannot happen (every piece holds a seed); kept as a guard for isolated vertices
            sources[unreached] = seeds[cKDTree(points[seeds]).query(points[unreached])[1]]
        cell_welded = np.searchsorted(seeds, sources)
    else:
        cell_welded = np.arange(U)
    tick(0.9)
    proxy_faces = _cell_faces(cell_welded[welded_faces])
    return MeshProxy(vertices=keep[seeds].astype(np.int64), faces=proxy_faces.astype(np.int64),
                     cell=cell_welded[compact].astype(np.int64), representatives=rep)


def _cell_faces(corner_cells: np.ndarray) -> np.ndarray:
    """The proxy's faces from the cells of the mesh's triangle corners (``int [F, 3]``, the mesh's winding): a
    triangle over three cells keeps its orientation (turned cyclically so its smallest cell comes first), so the
    proxy is a coarse oriented surface whose winding numbers tell inside from outside like the mesh's; one over
    two cells becomes the edge ``(a, b, b)`` (sorted; no area); duplicates are dropped. ``int64 [F_p, 3]``."""
    lab = np.asarray(corner_cells, dtype=np.int64).reshape(-1, 3)
    three = (lab[:, 0] != lab[:, 1]) & (lab[:, 1] != lab[:, 2]) & (lab[:, 0] != lab[:, 2])
    tri = lab[three]
    first = np.argmin(tri, axis=1)
    tri = tri[np.arange(len(tri))[:, None], (first[:, None] + np.arange(3)) % 3]
    edges = np.sort(lab[~three], axis=1)
    edges = edges[edges[:, 0] != edges[:, 2]]
    out = np.concatenate([tri, edges])
    return np.unique(out, axis=0) if len(out) else np.zeros((0, 3), dtype=np.int64)


def use_proxy(mode: str, n_verts: int, threshold: int) -> bool:
    """Whether :func:`backend.rigging.pipeline.rig_sequence` rigs through a proxy: ``mode`` ``on`` / ``off``,
    or ``auto`` (more than ``threshold`` vertices)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return n_verts > threshold


def fit_frames(n_frames: int, max_fit_frames: int) -> np.ndarray:
    """The frames a full-mesh weight pass solves on: the motion fit's keyframes (``FitConfig.max_fit_frames``
    evenly spaced, first and last included), or every frame."""
    if max_fit_frames <= 0 or n_frames <= max_fit_frames:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, max_fit_frames)).astype(np.int64))


def _frames_chunk(verts: np.ndarray, frames: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Vertex-major float64 ``[B, len(frames), 3]`` of ``verts [K, V, 3]`` without copying any full frame."""
    return np.ascontiguousarray(np.asarray(verts[np.ix_(frames, ids)], dtype=np.float64).transpose(1, 0, 2))


def full_mesh_weights(verts: np.ndarray, proxy: MeshProxy, proxy_weights: np.ndarray, transforms: np.ndarray,
                      frames: np.ndarray, max_influences: int = 4, smoothness: float = 0.01, qp_iters: int = 10,
                      motion_candidates: int = 3, neighbours: int = 3, chunk: int = 8192,
                      progress: Callable[[float], None] | None = None, joints: np.ndarray | None = None,
                      parents: np.ndarray | None = None, max_bone_distance: float = 0.0,
                      max_bone_hops: int | None = None, proxy_rest: np.ndarray | None = None,
                      rest_rounds: int = 0, rest_regularisation: float = 1e-3,
                      rest_max_move: np.ndarray | None = None, faces: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Every vertex's weights (and rest position) against the proxy's bone motion (step 3 of the module docstring).

    Args:
        verts: float ``[K, V, 3]`` the frames (float32 is read as is; only ``[len(frames), chunk, 3]`` float64
            slices are made).
        proxy: the :class:`MeshProxy`.
        proxy_weights: float ``[P, J]`` the proxy's fitted weights.
        transforms: float64 ``[K, J, 4, 4]`` the fitted bone transforms (anchor -> frame).
        frames: int ``[K']`` frames the weights are solved on (:func:`fit_frames`).
        max_influences, qp_iters: as in :class:`backend.rigging.fit.FitConfig`.
        smoothness: pull of each row toward its warm start, relative to the warm start's error (as
            ``FitConfig.smoothness`` pulls toward the neighbours' mean); one pass only, so it is kept weaker than
            the fit's (its bias is not worked off by later alternations).
        motion_candidates: candidate bones added per vertex from its own motion.
        neighbours: proxy vertices blended into a vertex's warm start (inverse squared distance on the anchor).
        chunk: vertices per batch (bounds memory: about ``chunk * (len(frames) * 3 + J * 4) * 8`` bytes for the
            residual Gram, plus the weight solve's own temporaries).
        progress: called with the fraction done after every chunk; it may raise to cancel.
        joints, parents, max_bone_distance, max_bone_hops: with ``max_bone_distance > 0``, a vertex's weights use
            only the bones in its reach (``FitConfig.max_bone_distance`` and ``max_bone_hops``,
            :func:`~backend.rigging.fit.solve.bones_in_reach`).
        proxy_rest: float ``[P, 3]`` the proxy's rest positions when its fit solved them
            (``FitConfig.solve_rest``): the transforms pose those, so every vertex starts from the anchor moved
            by its nearest proxy vertices' blended offset (a smooth field, bounded by the proxy fit's own
            ``rest_max_edge_share`` of the proxy's edges), and its own rest solves stay near that start.
        rest_rounds: rest solves after the weight solve (:func:`~backend.rigging.fit.solve.update_rest_pose`),
            the weights solved again between two; 0 keeps the anchor (or, with ``proxy_rest``, its warm start)
            as the rest.
        rest_regularisation: as ``FitConfig.rest_regularisation``.
        rest_max_move: float ``[V]`` how far each vertex's rest solves may move it from its start (the anchor, or
            the proxy's rest carried to it; :func:`~backend.rigging.fit.solve.rest_move_limits` of the full mesh:
            a quarter of a vertex's shortest edge keeps neighbours from crossing); None: no limit.
        faces: int ``[F, 3]`` the mesh's faces: with a rest solved, faces the solves turned over are walked back
            toward their start (:func:`~backend.rigging.fit.solve.untangle_rest`).
    Returns:
        ``(weights, rest)``: float32 ``[V, J]`` rows on the simplex with at most ``max_influences`` non-zeros,
        and float64 ``[V, 3]`` rest positions (None when neither ``proxy_rest`` nor ``rest_rounds``);
        co-located vertices share identical rows and rest positions.
    """
    t0 = time.perf_counter()
    verts = np.asarray(verts)
    V = verts.shape[1]
    W_p = np.asarray(proxy_weights, dtype=np.float64)
    J = W_p.shape[1]
    M = min(max_influences, J)
    T = np.asarray(transforms, dtype=np.float64)[frames]
    anchor_p = np.asarray(verts[0, proxy.vertices], dtype=np.float64)
    tree = cKDTree(anchor_p)
    k_near = min(max(neighbours, 1), proxy.size)
    reps = np.flatnonzero(proxy.representatives == np.arange(V))
    limited = max_bone_distance > 0 and joints is not None and parents is not None and J > 1
    diag = float(np.linalg.norm(np.ptp(np.asarray(verts[0], dtype=np.float64), axis=0)))
    rows_idx = np.zeros((V, M), dtype=np.int64)
    rows_val = np.zeros((V, M))
    with_rest = proxy_rest is not None or rest_rounds > 0
    rest = np.zeros((V, 3)) if with_rest else None
    offset_p = None if proxy_rest is None else np.asarray(proxy_rest, dtype=np.float64) - anchor_p  # [P, 3]
    starts = np.zeros((V, 3)) if with_rest else None
    if offset_p is not None:  # the proxy's offsets are carried by a smooth kernel: no jump where the neighbours change
        k_carry = min(CARRY_NEIGHBOURS, proxy.size)
        spacing = float(np.median(tree.query(anchor_p, k=min(5, proxy.size))[0][:, -1])) or 1.0
    for s in range(0, len(reps), chunk):
        ids = reps[s:s + chunk]
        B = len(ids)
        anchor_b = np.asarray(verts[0, ids], dtype=np.float64)
        a = anchor_b
        dist, near = tree.query(a, k=k_near)
        dist, near = dist.reshape(B, k_near), near.reshape(B, k_near)
        inv = 1.0 / np.maximum(dist, 1e-9) ** 2
        inv /= inv.sum(axis=1, keepdims=True)
        if offset_p is not None:  # the proxy's rest shape, carried to these vertices: the rests' start and prior
            d_c, near_c = tree.query(anchor_b, k=k_carry)
            kernel = np.exp(-(d_c.reshape(B, k_carry) / spacing) ** 2) + 1e-12
            kernel /= kernel.sum(axis=1, keepdims=True)
            a = anchor_b + np.einsum("bn,bnc->bc", kernel, offset_p[near_c.reshape(B, k_carry)])
        start_b = a
        cap = None if rest_max_move is None else np.asarray(rest_max_move[ids], dtype=np.float64)
        # dense [B, J] blend of the nearest proxy rows (J is a skeleton's size: small)
        blend = np.einsum("bn,bnj->bj", inv, W_p[near])
        # the cell's own proxy vertex (nearest along the mesh) always takes part
        blend += 1e-3 * W_p[proxy.cell[ids]]
        reach = None
        if limited:
            reach = bones_in_reach(a, joints, parents, max_bone_distance, max_bone_hops, diag)
            blend = restrict_to_reach(blend, reach, a, joints, parents)
        warm_idx, warm_val = to_sparse_rows(prune_weights(blend, M), M)
        xv = _frames_chunk(verts, frames, ids)
        gram = ResidualGram(a, xv, T)
        cand, mask = motion_candidate_bones(gram.single_bone_errors(), *to_sparse_rows(blend, min(J, (k_near + 1) * M)),
                                            motion_candidates, reach)
        pull_to_start = sp.identity(B, format="csr")  # smoothness pulls each row toward its own start
        idx, val = update_weights(a, xv, warm_idx, warm_val, T, cand, mask, pull_to_start, M, smoothness,
                                  smooth_steps=0, smooth_slack=0.0, qp_iters=qp_iters, chunk=B)
        for r in range(rest_rounds):  # rest, (weights, rest), ...
            if r:
                idx, val = update_weights(a, xv, idx, val, T, cand, mask, pull_to_start, M, smoothness,
                                          smooth_steps=0, smooth_slack=0.0, qp_iters=qp_iters, chunk=B)
            a = update_rest_pose(xv, idx, val, T, start_b, rest_regularisation, current=a, max_move=cap)
        rows_idx[ids], rows_val[ids] = idx, val
        if with_rest:
            rest[ids], starts[ids] = a, start_b
        if progress is not None:
            progress(min(s + chunk, len(reps)) / len(reps))
    rep = proxy.representatives
    rows_idx, rows_val = rows_idx[rep], rows_val[rep]  # seams: every vertex takes its representative's row
    if with_rest:
        rest, starts = rest[rep], starts[rep]
        if faces is not None:
            rest, walked = untangle_rest(np.asarray(verts[0], dtype=np.float64), rest, faces, toward=starts, seams=rep,
                                         between=None if progress is None else lambda: progress(1.0))
            log.debug("full-mesh rest: %d vertices walked back from turned faces", walked)
    weights = np.zeros((V, J), dtype=np.float32)
    np.add.at(weights, (np.repeat(np.arange(V), M), rows_idx.ravel()), rows_val.ravel().astype(np.float32))
    log.debug("full-mesh weights: %d vertices (%d welded) on %d frames, %.2f s", V, len(reps), len(frames),
              time.perf_counter() - t0)
    return weights, rest


def chunked_reconstruction_error(anchor: np.ndarray, verts: np.ndarray, weights: np.ndarray, transforms: np.ndarray,
                                 chunk: int = 2048, progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Per-frame per-vertex distance ``float32 [K, V]`` between LBS of ``anchor [V, 3]`` (``weights [V, J]``,
    ``transforms [K, J, 4, 4]``) and ``verts [K, V, 3]``, ``chunk`` vertices at a time (no ``[K, V, 3]``
    float64 copy): each chunk's blended 3x4 matrices are one product with the weights, as in
    :func:`backend.lbs.linear_blend_skinning`. ``progress`` gets the fraction done after each chunk."""
    K, V = verts.shape[:2]
    T = np.asarray(transforms, dtype=np.float64)
    J = T.shape[1]
    flat = np.ascontiguousarray(T[:, :, :3, :].transpose(1, 0, 2, 3).reshape(J, K * 12))  # [J, K*12]
    out = np.empty((K, V), dtype=np.float32)
    for s in range(0, V, chunk):
        e = min(s + chunk, V)
        blended = (np.asarray(weights[s:e], dtype=np.float64) @ flat).reshape(e - s, K, 3, 4)
        posed = np.einsum("bkij,bj->bki", blended[..., :3], np.asarray(anchor[s:e], dtype=np.float64))
        posed += blended[..., 3]
        posed -= np.asarray(verts[:, s:e], dtype=np.float64).transpose(1, 0, 2)
        out[:, s:e] = np.sqrt(np.einsum("bkc,bkc->kb", posed, posed))
        if progress is not None and (e == V or (s // chunk) % 16 == 15):
            progress(e / V)
    return out
