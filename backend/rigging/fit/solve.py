"""The alternating solve of the motion fit: the exact per-bone transform update and the per-vertex weight QP
(with its candidates, Laplacian smoothing and pruning)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from backend.metrics import bone_distances

from .rigid import proper_rotation, rigid_matrix
from .sparse import apply_transforms, homogeneous, sparse_to_dense


def update_transforms(anchor: np.ndarray, resid: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                      transforms: np.ndarray, min_mass: float = 1e-6) -> None:
    """One block-coordinate sweep over bones: each bone's rigid transforms (all frames) set to the exact
    minimiser of the squared LBS error with the other bones fixed (weighted Procrustes).

    Updates ``transforms float64 [K, J, 4, 4]`` and the residual ``resid = frames - LBS`` (vertex-major
    float64 ``[V, K, 3]``) in place.

    Args:
        anchor: ``[V, 3]`` float64.
        groups: per-bone sparse weights from :func:`bone_groups`.
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
        rot = proper_rotation(cross)
        trans = y_bar - rot @ a_bar
        delta = rigid_matrix(rot - R_old, trans - t_old)  # affine difference; apply_transforms is linear in it
        resid[v] -= w[:, None, None] * apply_transforms(delta, homogeneous(a))
        transforms[:, j] = rigid_matrix(rot, trans)


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


NEAR_ANY_BRANCH = 0.4  # with a hop limit, bones this share of the reach from a vertex stay in reach on any branch


def tree_hops(parents: np.ndarray) -> np.ndarray:
    """``int [J, J]``: the number of joints between two bones along the tree (0 on the diagonal, 1 parent/child,
    2 siblings or grandparent); bones of different trees are ``J`` apart."""
    from scipy.sparse.csgraph import shortest_path

    parents = np.asarray(parents).reshape(-1)
    J = len(parents)
    child = np.flatnonzero(parents >= 0)
    graph = sp.csr_matrix((np.ones(len(child)), (child, parents[child])), shape=(J, J))
    hops = shortest_path(graph, directed=False, unweighted=True)
    return np.where(np.isfinite(hops), hops, J).astype(np.int64)


def bones_in_reach(anchor: np.ndarray, joints: np.ndarray, parents: np.ndarray, max_distance: float,
                   max_hops: int | None = None, diag: float | None = None) -> np.ndarray:
    """``bool [V, J]``: the bones a vertex's weights may use: those within ``max_distance`` times the anchor box
    diagonal of it (a bone being its segments from its joint to its children's, a leaf its joint) and, with
    ``max_hops``, at most that many bones along the tree from its nearest bone unless within ``NEAR_ANY_BRANCH``
    of that distance (so a foot beside the other foot keeps off that leg's bones). Always in reach: the two
    nearest bones (no ``max_hops``), or the nearest bone, its parent and its children (with it).

    Args:
        anchor: float ``[V, 3]``; joints: float ``[J, 3]``; parents: int ``[J]``.
        diag: the whole anchor's box diagonal when ``anchor`` is a part of it (default: ``anchor``'s own).
    """
    a = np.asarray(anchor, dtype=np.float64)
    d = bone_distances(a, joints, joints, parents)  # [V, J]; a bone's own tail is its joint: leaves are points
    if diag is None:
        diag = float(np.linalg.norm(np.ptp(a, axis=0))) if len(a) else 0.0
    reach = d <= max_distance * diag
    if max_hops is None:  # the two nearest bones always
        nearest = np.argpartition(d, min(2, d.shape[1]) - 1, axis=1)[:, :2]
        np.put_along_axis(reach, nearest, True, axis=1)
        return reach
    hops = tree_hops(parents)[np.argmin(d, axis=1)]  # [V, J] from each vertex's nearest bone
    reach &= (hops <= max_hops) | (d <= NEAR_ANY_BRANCH * max_distance * diag)
    return reach | (hops <= 1)  # the nearest bone, its parent and its children always


def restrict_to_reach(weights: np.ndarray, reach: np.ndarray, anchor: np.ndarray, joints: np.ndarray,
                      parents: np.ndarray) -> np.ndarray:
    """``weights [V, J]`` with the weight on bones out of ``reach [V, J]`` removed and the rows renormalised; a row
    left empty goes to the vertex's nearest bone in reach. Returns float64 ``[V, J]``."""
    w = np.where(reach, np.asarray(weights, dtype=np.float64), 0.0)
    total = w.sum(axis=1)
    empty = np.flatnonzero(total <= 0)
    if len(empty):
        d = np.where(reach[empty], bone_distances(np.asarray(anchor)[empty], joints, joints, parents), np.inf)
        w[empty, d.argmin(axis=1)] = 1.0
        total[empty] = 1.0
    return w / total[:, None]


def candidate_bones(idx: np.ndarray, val: np.ndarray, parents: np.ndarray,
                    with_neighbours: bool = True, reach: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex, the bones its weights may use: its support plus (optionally) their tree neighbours, only
    those in ``reach`` (``bool [V, J]``, :func:`bones_in_reach`) when given.

    Returns ``cand int64 [V, C]`` and ``mask bool [V, C]`` (padding is ``False``).
    """
    parents = np.asarray(parents)
    J = len(parents)
    support = sparse_to_dense(idx, val, J) > 0  # [V, J]
    if with_neighbours:
        adj = np.zeros((J, J), dtype=bool)
        child = np.flatnonzero(parents >= 0)
        adj[child, parents[child]] = True
        adj[parents[child], child] = True
        support = support | ((support.astype(np.int32) @ adj.astype(np.int32)) > 0)
    if reach is not None:
        support &= reach
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
                           n_extra: int, reach: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex, its current support plus the ``n_extra`` bones whose rigid motion alone reproduces it best
    (among the bones in ``reach``, ``bool [V, J]``, when given, to which the best of all is added: a rigid piece
    that moves with a far bone still follows it).

    Args:
        single_errors: ``[V, J]`` squared error of each vertex moved by each bone alone (summed over frames).
        idx, val: current sparse weight rows ``[V, M]``.
        n_extra: bones added per vertex (0: the support only).
        reach: :func:`bones_in_reach`, or None for every bone.
    Returns:
        ``cand int64 [V, C]`` and ``mask bool [V, C]`` as in :func:`candidate_bones`.
    """
    V, J = single_errors.shape
    allowed = sparse_to_dense(idx, val, J) > 0
    if reach is not None:  # the bone whose motion alone follows the vertex best is always in its reach
        reach = reach.copy()
        reach[np.arange(V), np.argmin(single_errors, axis=1)] = True
        allowed &= reach
        single_errors = np.where(reach, single_errors, np.inf)
    n_extra = min(n_extra, J)
    if n_extra > 0:
        best = np.argpartition(single_errors, n_extra - 1, axis=1)[:, :n_extra]
        np.put_along_axis(allowed, best, True, axis=1)
        if reach is not None:  # fewer than n_extra bones in reach: the rest are not candidates
            allowed &= reach
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


class ResidualGram:
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
                   chunk: int = 16384, motion_candidates: int = 6,
                   between: Callable[[float], None] | None = None,
                   reach: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve every vertex's weights with the transforms fixed, then smooth them over the mesh.

    1. Per vertex, minimise its squared LBS error ``w^T R_v w`` (see :class:`ResidualGram`) plus
       ``mu_v || w - wbar_v ||^2`` on the simplex over its candidate bones, where ``wbar_v`` is the mean
       of its mesh neighbours' current weights and ``mu_v = smoothness * (current error of v)``;
       projected gradient finds the support, which is pruned to ``max_influences`` and solved exactly.
       Rows that would raise the vertex's error keep their old value.
    2. Smoothing (when ``neighbours`` is given): ``smooth_steps`` steps of uniform Laplacian smoothing
       ``W <- (W + N W) / 2`` on the mesh graph, re-projected onto each vertex's candidates, top
       ``max_influences`` and the simplex. A smoothed row is kept where its error stays within
       ``smooth_slack`` of the improvement step 1 made for that vertex, so the error never rises.

    When ``cand`` is None the candidates are chosen here by :func:`motion_candidate_bones` (current
    support plus ``motion_candidates`` bones, only bones in ``reach`` when given) for the current transforms. ``between(fraction)`` is called
    after every chunk of vertices (progress and cancellation).

    Returns new sparse rows ``idx int64 [V, max_influences]``, ``val float64 [V, max_influences]``.
    """
    V = frames_vm.shape[0]
    J = transforms.shape[1]
    gram = ResidualGram(anchor, frames_vm, transforms)
    if cand is None:
        cand, cand_mask = motion_candidate_bones(gram.single_bone_errors(), idx, val, motion_candidates, reach)
    dense_old = sparse_to_dense(idx, val, J)
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
        if between is not None:
            between(0.8 * e / V)

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
            if between is not None:
                between(0.8 + 0.2 * e / V)

    top = np.argsort(-W_new, axis=1, kind="stable")[:, :max_influences]
    new_idx = np.zeros((V, max_influences), dtype=np.int64)
    new_val = np.zeros((V, max_influences))
    new_idx[:, :top.shape[1]] = np.take_along_axis(cand, top, axis=1)
    new_val[:, :top.shape[1]] = np.take_along_axis(W_new, top, axis=1)
    new_val /= new_val.sum(axis=1, keepdims=True)
    return new_idx, new_val


def update_rest_pose(frames_vm: np.ndarray, idx: np.ndarray, val: np.ndarray, transforms: np.ndarray,
                     prior: np.ndarray, regularisation: float, current: np.ndarray | None = None,
                     max_move: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """Every vertex's rest position with its weights and the transforms fixed (a 3x3 least-squares solve each).

    LBS of a rest position ``r_v`` poses it by the blended matrix of its bones on frame ``k``,
    ``A_kv r_v + b_kv`` (``A_kv = sum_m val_vm R_k,idx_vm``, ``b_kv`` the same blend of the translations), so
    ``r_v`` minimising ``sum_k |A_kv r_v + b_kv - x_kv|^2 + regularisation * K * |r_v - prior_v|^2`` is one
    symmetric 3x3 solve. The anchor frame is a pose of the clip, not the pose the weights blend from: where
    bones meet, blending the anchor's skin by the transforms cannot reproduce the other frames exactly, and a
    rest position off the anchor's can. ``regularisation`` keeps the rest near ``prior`` (the anchor) where
    the data leave it free (a rigid part can turn as a whole with its transforms).

    Args:
        frames_vm: float64 vertex-major frames ``[V, K, 3]``.
        idx, val: sparse weight rows ``[V, M]``.
        transforms: float64 ``[K, J, 4, 4]`` rest -> frame ``k``.
        prior: float ``[V, 3]`` the positions the rest is pulled toward.
        regularisation: the pull's weight per frame, relative to a vertex's data term.
        current: float ``[V, 3]`` the rest positions now: when given, a vertex keeps its current position
            unless the solved one lowers its squared error over the frames (so the fit's error never rises).
        max_move: float ``[V]`` how far each rest position may be from its prior (the solve's step toward a
            farther point is cut to this length): a rest shape that keeps every vertex within a share of its
            shortest edge of the anchor (:func:`rest_move_limits`) cannot pinch or fold the surface.
        chunk: vertices per batch (about ``chunk * K * 12`` doubles per temporary).
    Returns:
        float64 ``[V, 3]``.
    """
    V, K, _ = frames_vm.shape
    M = idx.shape[1]
    J = transforms.shape[1]
    # each bone's 3x4 matrices on every frame in one row, so a vertex's blend is M row gathers
    flat = np.ascontiguousarray(np.asarray(transforms, dtype=np.float64)[:, :, :3, :].transpose(1, 0, 2, 3)
                                ).reshape(J, K * 12)  # [J, K*12]
    out = np.empty((V, 3))
    chunk = max(64, min(chunk, int(4e6 // max(K * 12, 1))))
    pull = regularisation * K
    for s in range(0, V, chunk):
        e = min(s + chunk, V)
        blended = val[s:e, :1] * flat[idx[s:e, 0]]
        for m in range(1, M):
            blended += val[s:e, m:m + 1] * flat[idx[s:e, m]]
        blended = blended.reshape(e - s, K, 3, 4)
        A = blended[..., :3].reshape(e - s, K * 3, 3)  # the frames' 3x3 blocks stacked
        target = (frames_vm[s:e] - blended[..., 3]).reshape(e - s, K * 3, 1)
        At = A.transpose(0, 2, 1)
        lhs = At @ A
        lhs[:, [0, 1, 2], [0, 1, 2]] += pull
        rhs = (At @ target)[..., 0] + pull * np.asarray(prior[s:e], dtype=np.float64)
        solved = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        if max_move is not None:
            base = np.asarray(prior[s:e], dtype=np.float64)
            step = solved - base
            length = np.linalg.norm(step, axis=1)
            cap = np.asarray(max_move[s:e], dtype=np.float64)
            cut = length > cap
            solved[cut] = base[cut] + step[cut] * (cap[cut] / length[cut])[:, None]
        if current is not None:
            now = np.asarray(current[s:e], dtype=np.float64)
            better = _stacked_sq_error(A, target, solved) < _stacked_sq_error(A, target, now)
            solved = np.where(better[:, None], solved, now)
        out[s:e] = solved
    return out


def _stacked_sq_error(A: np.ndarray, target: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``|A_b r_b - target_b|^2`` per row: ``A [B, 3K, 3]``, ``target [B, 3K, 1]``, ``r [B, 3]`` -> ``[B]``."""
    d = A @ r[..., None] - target
    return np.einsum("bki,bki->b", d, d)


def rest_move_limits(points: np.ndarray, faces: np.ndarray | None, share: float) -> np.ndarray | None:
    """``share`` of each vertex's shortest non-zero edge on ``points [V, 3]`` (``faces [F, 3]``): float64 ``[V]``,
    the farthest :func:`update_rest_pose` may move it (0 for a vertex on no edge). None without faces or when
    ``share`` is infinite (no limit)."""
    if faces is None or not np.isfinite(share):
        return None
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    p = np.asarray(points, dtype=np.float64)
    a, b = np.concatenate([f[:, 0], f[:, 1], f[:, 2]]), np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    length = np.linalg.norm(p[a] - p[b], axis=1)
    keep = length > 0
    shortest = np.full(len(p), np.inf)
    np.minimum.at(shortest, a[keep], length[keep])
    np.minimum.at(shortest, b[keep], length[keep])
    shortest[~np.isfinite(shortest)] = 0.0
    return share * shortest


def untangle_rest(anchor: np.ndarray, rest: np.ndarray, faces: np.ndarray | None, toward: np.ndarray | None = None,
                  max_turn_deg: float = 30.0, rounds: int = 8, seams: np.ndarray | None = None,
                  between: Callable[[], None] | None = None) -> tuple[np.ndarray, int]:
    """``rest [V, 3]`` with every face turned over, or turned by more than ``max_turn_deg`` against ``anchor [V, 3]``
    (its normal), walked back toward ``toward`` (default: the anchor, whose faces are not turned): each round
    halves those faces' vertices' distance to it, and after ``rounds`` rounds the vertices still on such faces are
    put on it. The rest solve moves each vertex on its own, so a thin face whose corners move differently can turn
    over, and a rig whose rest mesh has a turned face shows a dark streak in Rest Position. ``between()`` is
    called after every round (progress and cancellation on a large mesh). ``seams int [V]``
    (:func:`backend.sequence.colocated_representatives`): co-located vertices move as one (the faces are taken on
    their representatives) and every copy ends where its representative does, so a seam the fit closed stays
    closed (walking back only the copy on a turned face opened the flat-shaded Fox's seams by 0.3 % of its size).

    Returns:
        ``(float64 [V, 3], number of vertices walked back)``.
    """
    out = np.array(rest, dtype=np.float64)
    if faces is None or not len(faces):
        return out, 0
    a = np.asarray(anchor, dtype=np.float64)
    goal = a if toward is None else np.asarray(toward, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if seams is not None:
        f = np.asarray(seams, dtype=np.int64)[f]
    n0 = np.cross(a[f[:, 1]] - a[f[:, 0]], a[f[:, 2]] - a[f[:, 0]])
    len0 = np.linalg.norm(n0, axis=1)
    live = len0 > 0
    f, n0, len0 = f[live], n0[live], len0[live]
    cos_limit = np.cos(np.radians(max_turn_deg))
    touched = np.zeros(len(a), dtype=bool)
    for r in range(rounds + 1):
        n1 = np.cross(out[f[:, 1]] - out[f[:, 0]], out[f[:, 2]] - out[f[:, 0]])
        turned = np.einsum("fc,fc->f", n0, n1) <= cos_limit * len0 * np.linalg.norm(n1, axis=1)
        if not turned.any():
            break
        bad = np.unique(f[turned])
        touched[bad] = True
        out[bad] = goal[bad] if r == rounds else goal[bad] + 0.5 * (out[bad] - goal[bad])
        if between is not None:
            between()
    if seams is not None:
        out = out[np.asarray(seams, dtype=np.int64)]
    return out, int(touched.sum())
