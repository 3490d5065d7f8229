"""Articulated transforms: bone motions constrained by the skeleton's joints.

Every non-root bone moves by a rotation about its own joint, in its parent's frame, so on every frame
a child's joint sits exactly where its parent carries it (``T_kj c_j = T_kp c_j``); only roots translate
(skeleton-constrained smooth skinning decomposition, cf. Le & Deng 2014, "Robust and accurate skeletal
rigging from mesh sequences", where the joint constraint enters the transform update).

The transform update is block-coordinate descent over the bones' local rotations, parents first.
Rotating bone ``j`` by ``dR`` about its posed joint ``p_j`` (its descendants' local rotations fixed)
moves its whole subtree rigidly about ``p_j``. With, per vertex, ``s_v = sum_{b in subtree} w_vb``,
``u_v = sum_{b in subtree} w_vb (y_vb - p_j)`` (``y_vb`` the vertex posed by bone ``b``) and ``rest_v``
the other bones' part, the prediction is ``dR u_v + s_v p_j + rest_v``, so the best ``dR`` is an
unweighted Kabsch without translation between ``u_v`` and ``x_v - rest_v - s_v p_j`` (= residual +
``u_v``): the exact block minimiser, so the error never rises. A root also translates: its update is
the weighted rigid (Procrustes) fit of the same quantities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backend.metrics import FastWindingNumbers, surface_distance

from .rigid import proper_rotation, rigid_matrix
from .solve import _batched_spd_solve
from .sparse import apply_transforms, homogeneous


def subtrees(parents: np.ndarray) -> list[np.ndarray]:
    """Per bone, the bones of its subtree (itself and all descendants), ascending; parents precede children."""
    parents = np.asarray(parents).reshape(-1)
    members: list[list[int]] = [[j] for j in range(len(parents))]
    for j in range(len(parents) - 1, -1, -1):
        p = int(parents[j])
        if p >= 0:
            members[p].extend(members[j])
    return [np.asarray(sorted(m), dtype=np.int64) for m in members]


def posed_joints(transforms: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Each joint carried by its own bone's transform: ``float64 [K, J, 3]`` from ``transforms [K, J, 4, 4]``
    and anchor ``joints [J, 3]``."""
    T = np.asarray(transforms, dtype=np.float64)
    return np.einsum("kjab,jb->kja", T[..., :3, :3], np.asarray(joints, dtype=np.float64)) + T[..., :3, 3]


def project_to_articulated(transforms: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """The nearest articulated motion in the sense of the fit's start: every bone keeps its global rotation,
    roots keep their translation, and each child's translation is set (parents first) so that its joint
    lands where its (already projected) parent carries it.

    Args:
        transforms: float ``[K, J, 4, 4]`` rigid transforms (anchor -> frame ``k``).
        joints: ``[J, 3]`` anchor joints; parents: ``[J]``, parents precede children.
    Returns:
        float64 ``[K, J, 4, 4]`` satisfying ``T_kj c_j = T_kp c_j`` for every child ``j``.
    """
    T = np.array(transforms, dtype=np.float64)
    c = np.asarray(joints, dtype=np.float64)
    for j, p in enumerate(np.asarray(parents).reshape(-1).tolist()):
        if p < 0:
            continue
        carried = T[:, p, :3, :3] @ c[j] + T[:, p, :3, 3]  # [K, 3]
        T[:, j, :3, 3] = carried - T[:, j, :3, :3] @ c[j]
    return T


def update_articulated_transforms(anchor: np.ndarray, resid: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                                  transforms: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                                  members: list[np.ndarray] | None = None,
                                  frames_vm: np.ndarray | None = None,
                                  between: Callable[[float], None] | None = None) -> None:
    """One parents-first sweep of exact block updates of the bones' local rotations (roots: rigid motions).

    Updates ``transforms float64 [K, J, 4, 4]`` (articulated on entry, see :func:`project_to_articulated`;
    articulated on exit) and the residual ``resid = frames - LBS`` (vertex-major float64 ``[V, K, 3]``) in
    place. See the module docstring for the update.

    Args:
        anchor: ``[V, 3]`` float64.
        groups: per-bone sparse weights from :func:`bone_groups`.
        joints: ``[J, 3]`` anchor joints; parents: ``[J]`` (parents precede children).
        members: :func:`subtrees` of ``parents`` when the caller has them.
        frames_vm: the frames (vertex-major ``[V, K, 3]``) when the caller has them: a subtree's part ``u`` is
            then the prediction (frames minus residual) minus the other bones' part, which only the few
            bones that share the subtree's vertices (its parent's side of the joint) have, instead of a sum
            over every bone of the subtree (same result, far less work near the root).
        between: called with the share of bones done after every bone (progress and cancellation).
    """
    K, J = transforms.shape[:2]
    parents = np.asarray(parents).reshape(-1)
    c = np.asarray(joints, dtype=np.float64)
    members = subtrees(parents) if members is None else members
    ah = homogeneous(np.asarray(anchor, dtype=np.float64))
    V = ah.shape[0]
    slot = np.full(V, -1, dtype=np.int64)
    touching = row_mass = None
    in_subtree = np.zeros(J, dtype=bool)
    if frames_vm is not None:
        touching = np.zeros((V, J), dtype=bool)  # touching[v, b]: bone b weighs vertex v
        row_mass = np.zeros(V)
        for b, (v, w) in enumerate(groups):
            touching[v, b] = True
            row_mass[v] += w
    for j in range(J):
        if between is not None and j:
            between(j / J)
        bones = members[j]
        verts = np.unique(np.concatenate([groups[b][0] for b in bones]))
        if len(verts) < (3 if parents[j] < 0 else 2):
            continue
        slot[verts] = np.arange(len(verts))
        pivot = transforms[:, j, :3, :3] @ c[j] + transforms[:, j, :3, 3]  # [K, 3] posed joint
        if frames_vm is not None and len(bones) > 1:
            # the prediction minus the part of the bones outside the subtree (they share only its border)
            in_subtree[bones] = True
            u = frames_vm[verts] - resid[verts]
            s = row_mass[verts].copy()
            for b in np.flatnonzero(touching[verts].any(axis=0) & ~in_subtree):
                v, w = groups[b]
                shared = slot[v] >= 0
                v, w = v[shared], w[shared]
                rows = slot[v]
                u[rows] -= w[:, None, None] * apply_transforms(transforms[:, b], ah[v])
                s[rows] -= w
            in_subtree[bones] = False
        else:
            u = np.zeros((len(verts), K, 3))
            s = np.zeros(len(verts))
            for b in bones:
                v, w = groups[b]
                if len(v) == 0:
                    continue
                rows = slot[v]  # a vertex appears at most once per bone
                u[rows] += w[:, None, None] * apply_transforms(transforms[:, b], ah[v])
                s[rows] += w
        slot[verts] = -1
        u -= s[:, None, None] * pivot[None]
        target = resid[verts] + u  # what the subtree's part should be, relative to the pivot
        if parents[j] >= 0:
            cross = np.matmul(target.transpose(1, 2, 0), u.transpose(1, 0, 2))  # [K, 3, 3] = sum_v target u^T
            shift = np.zeros((K, 3))
        else:  # a root also translates: weighted Procrustes with weights s_v^2 on u_v / s_v -> target_v / s_v
            s2 = float(s @ s)
            u_bar = np.tensordot(s, u, axes=1) / s2
            t_bar = np.tensordot(s, target, axes=1) / s2
            cross = np.matmul((target - s[:, None, None] * t_bar).transpose(1, 2, 0),
                              (u - s[:, None, None] * u_bar).transpose(1, 0, 2))
        # a tiny pull toward no change keeps rotations about a degenerate axis (collinear support) unchanged
        cross += 1e-9 * max(float(np.abs(cross).max()), 1e-12) * np.eye(3)[None]
        rot = proper_rotation(cross)  # [K, 3, 3]
        if parents[j] < 0:
            shift = t_bar - np.einsum("kab,kb->ka", rot, u_bar)
        moved = np.matmul(u.transpose(1, 0, 2), rot.transpose(0, 2, 1)).transpose(1, 0, 2)
        moved += s[:, None, None] * shift[None]
        resid[verts] -= moved - u
        step = rigid_matrix(rot, pivot + shift - np.einsum("kab,kb->ka", rot, pivot))  # [K, 4, 4]
        transforms[:, bones] = step[:, None] @ transforms[:, bones]


def _hat_sum(N: np.ndarray) -> np.ndarray:
    """``sum_v r_v x u_v`` from ``N = sum_v r_v u_v^T`` (``[..., 3, 3]`` -> ``[..., 3]``)."""
    return np.stack([N[..., 1, 2] - N[..., 2, 1], N[..., 2, 0] - N[..., 0, 2], N[..., 0, 1] - N[..., 1, 0]], -1)


def _rotation_exp(omega: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrices ``[..., 3, 3]`` of rotation vectors ``omega [..., 3]``."""
    angle = np.linalg.norm(omega, axis=-1)[..., None, None]
    small = angle < 1e-12
    axis = omega / np.where(small[..., 0], 1.0, angle[..., 0])
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    hat = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    eye = np.broadcast_to(np.eye(3), hat.shape)
    rot = eye + np.sin(angle) * hat + (1.0 - np.cos(angle)) * (hat @ hat)
    return np.where(small, eye, rot)


class ArticulatedGaussNewton:
    """Levenberg-Marquardt steps on all the bones' local rotations (and the roots' translations) at once.

    The block update (:func:`update_articulated_transforms`) is exact per bone but, on a chain of bones that
    share vertices, block-coordinate descent creeps: a parent's best rotation depends on its children's and
    the other way round. Frame by frame, the squared LBS error is a function of ``3 J`` rotation parameters
    (plus 3 per root), so a damped Gauss-Newton step on all of them converges in a few steps.

    Linearisation: turning subtree ``j`` by a small ``omega_j`` about its posed joint ``p_j`` moves vertex
    ``v`` by ``omega_j x u_vj`` with ``u_vj = sum_{b in subtree(j)} w_vb (T_b - p_j e4^T) [a_v, 1]``. Every
    product the normal equations need is a sum over vertices of such terms, so it reduces to the
    frame-independent anchor moments ``M_bb' = sum_v w_vb w_vb' [a_v, 1] [a_v, 1]^T`` (bone pairs sharing
    vertices) pushed through the transforms and summed over subtrees: the cost per step does not grow with
    the vertex count, except for one blend to measure the new error. A frame's step is kept only where it
    lowers that frame's error (else its damping grows), so the error never rises.

    Args:
        anchor: ``[V, 3]``; frames_vm: ``[V, K, 3]``; groups: per-bone sparse weights (:func:`bone_groups`);
        joints: ``[J, 3]``; parents: ``[J]`` (parents precede children); members: :func:`subtrees`.
    """

    def __init__(self, anchor: np.ndarray, frames_vm: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                 joints: np.ndarray, parents: np.ndarray, members: list[np.ndarray] | None = None):
        import scipy.sparse as sp

        self.anchor = np.asarray(anchor, dtype=np.float64)
        self.frames_vm = frames_vm
        self.groups = groups
        self.joints = np.asarray(joints, dtype=np.float64)
        self.parents = np.asarray(parents).reshape(-1)
        self.members = subtrees(self.parents) if members is None else members
        V, J = len(self.anchor), len(self.parents)
        rows = np.concatenate([g[0] for g in groups])
        cols = np.concatenate([np.full(len(g[0]), b) for b, g in enumerate(groups)])
        vals = np.concatenate([g[1] for g in groups])
        self.W = sp.csr_matrix((vals, (rows, cols)), shape=(V, J))
        ah = homogeneous(self.anchor)
        self.ah = ah
        Wt = self.W.T.tocsr()
        moments = np.zeros((J, J, 4, 4))
        for x in range(4):
            for y in range(x, 4):
                block = (Wt @ sp.diags(ah[:, x] * ah[:, y]) @ self.W).toarray()
                moments[:, :, x, y] = block
                moments[:, :, y, x] = block
        # only bone pairs that share vertices have non-zero moments
        self.pair_b, self.pair_c = np.nonzero(np.abs(moments).max(axis=(2, 3)) > 0)
        self.pair_moments = moments[self.pair_b, self.pair_c]  # [n_pairs, 4, 4]
        self.mass = np.asarray(Wt @ ah)  # [J, 4]: sum_v w_vb [a_v, 1]
        self.D = sp.csr_matrix((np.ones(sum(len(m) for m in self.members)),
                                (np.repeat(np.arange(J), [len(m) for m in self.members]),
                                 np.concatenate(self.members))), shape=(J, J))  # D[i, b] = 1: b in subtree(i)
        # S[(i, j), pair] = 1 when the pair's bones lie in subtree(i) and subtree(j): Z = S @ G sums the
        # pair products over every (i, j) of ancestors
        ancestors = [np.flatnonzero(self.D[:, b].toarray().ravel()) for b in range(J)]
        n_anc = np.array([len(ancestors[b]) * len(ancestors[c]) for b, c in zip(self.pair_b, self.pair_c)])
        rows = np.concatenate([(ancestors[b][:, None] * J + ancestors[c][None, :]).ravel()
                               for b, c in zip(self.pair_b, self.pair_c)]) if len(n_anc) else np.zeros(0, int)
        self.S = sp.csr_matrix((np.ones(len(rows)), (rows, np.repeat(np.arange(len(n_anc)), n_anc))),
                               shape=(J * J, len(n_anc)))
        self.roots = np.flatnonzero(self.parents < 0)
        self.vertex_count = np.asarray(self.W.sum(axis=1)).ravel()

    def _normal_equations(self, transforms: np.ndarray, resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(JtJ [K, P, P], Jtr [K, P])`` with ``P = 3 J + 3 n_roots`` (rotations, then root translations)."""
        K, J = transforms.shape[:2]
        H = transforms  # [K, J, 4, 4]
        pivot = posed_joints(transforms, self.joints)  # [K, J, 3]
        D = self.D
        # G[pair] = H_b M_bc H_c^T over the bone pairs sharing vertices; Z[i, j] = sum_{b in sub(i), c in sub(j)} G
        G = H[:, self.pair_b] @ self.pair_moments[None] @ np.swapaxes(H[:, self.pair_c], -1, -2)  # [K, n, 4, 4]
        Z = (self.S @ G.transpose(1, 0, 2, 3).reshape(G.shape[1], -1)).reshape(J, J, K, 4, 4).transpose(2, 0, 1, 3, 4)
        # C_ij = [I, -p_i] Z_ij [I, -p_j]^T = sum_v u_vi u_vj^T
        proj = np.concatenate([np.broadcast_to(np.eye(3), (K, J, 3, 3)), -pivot[..., None]], axis=-1)  # [K, J, 3, 4]
        C = proj[:, :, None] @ Z @ np.swapaxes(proj, -1, -2)[:, None]  # [K, J, J, 3, 3]
        trace = np.einsum("kijxx->kij", C)
        block = trace[..., None, None] * np.eye(3) - C.transpose(0, 1, 2, 4, 3)
        n_roots = len(self.roots)
        P = 3 * J + 3 * n_roots
        JtJ = np.zeros((K, P, P))
        JtJ[:, :3 * J, :3 * J] = block.transpose(0, 1, 3, 2, 4).reshape(K, 3 * J, 3 * J)
        # gradient: sum_v u_vj x r_v from N_j = sum_v r_v u_vj^T = sum_{b in sub j} R_b E_jb^T
        V = resid.shape[0]
        R = (self.W.T @ (resid.reshape(V, K, 3)[:, :, :, None] * self.ah[:, None, None, :]).reshape(V, -1))
        R = R.reshape(J, K, 3, 4).transpose(1, 0, 2, 3)  # [K, J, 3, 4]: sum_v w_vb r_v [a_v, 1]^T
        RT = np.einsum("kbxy,kbzy->kbxz", R, H[..., :3, :])  # R_b T_b^T  [K, J, 3, 3]
        Rsum = (D @ RT.transpose(1, 0, 2, 3).reshape(J, -1)).reshape(J, K, 3, 3).transpose(1, 0, 2, 3)
        Rlast = (D @ R[..., 3].transpose(1, 0, 2).reshape(J, -1)).reshape(J, K, 3).transpose(1, 0, 2)
        N = Rsum - Rlast[..., :, None] * pivot[..., None, :]
        Jtr = np.zeros((K, P))
        Jtr[:, :3 * J] = -_hat_sum(N).reshape(K, 3 * J)  # sum_v u_vj x r_v
        if n_roots:
            # sum_v u_vj over a root's vertices (s_v: the root's subtree weight of v)
            q = np.einsum("kbxy,by->kbx", H, self.mass)  # [K, J, 4]
            qs = (D @ q.transpose(1, 0, 2).reshape(J, -1)).reshape(J, K, 4).transpose(1, 0, 2)
            usum = qs[..., :3] - qs[..., 3:] * pivot  # [K, J, 3] = sum_v w-subtree (y - p_j)
            for n, r in enumerate(self.roots):
                sub = self.members[r]
                s_v = np.asarray(self.W[:, sub].sum(axis=1)).ravel()
                t0 = 3 * J + 3 * n
                JtJ[:, t0:t0 + 3, t0:t0 + 3] = float(s_v @ s_v) * np.eye(3)
                # d(pred)/d(omega_j) = -[u_vj]x, d(pred)/d(d) = s_v I:
                # cross block = sum_v s_v [u_vj]x^T = -[sum_v s_v u_vj]x
                # (s_v = 1 on the root's vertices for rows on the simplex: the root's subtree holds every bone)
                for j in sub:
                    m = usum[:, j]
                    hat = np.zeros((K, 3, 3))
                    hat[:, 0, 1], hat[:, 0, 2], hat[:, 1, 2] = -m[:, 2], m[:, 1], -m[:, 0]
                    hat[:, 1, 0], hat[:, 2, 0], hat[:, 2, 1] = m[:, 2], -m[:, 1], m[:, 0]
                    JtJ[:, 3 * j:3 * j + 3, t0:t0 + 3] = -hat.transpose(0, 2, 1)
                    JtJ[:, t0:t0 + 3, 3 * j:3 * j + 3] = -hat
                rows = np.flatnonzero(s_v > 0)
                Jtr[:, t0:t0 + 3] = np.tensordot(s_v[rows], resid[rows], axes=1)
        return JtJ, Jtr

    def _apply(self, transforms: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Transforms after the step ``[K, P]``: subtrees turned children-first (each about its unmoved joint),
        so every rotation acts in the coordinates it was linearised in."""
        K, J = transforms.shape[:2]
        T = transforms.copy()
        pivot = posed_joints(transforms, self.joints)
        rot = _rotation_exp(step[:, :3 * J].reshape(K, J, 3))
        root_slot = {int(r): n for n, r in enumerate(self.roots)}
        for j in range(J - 1, -1, -1):
            shift = pivot[:, j] - np.einsum("kab,kb->ka", rot[:, j], pivot[:, j])
            if j in root_slot:
                t0 = 3 * J + 3 * root_slot[j]
                shift = shift + step[:, t0:t0 + 3]
            move = rigid_matrix(rot[:, j], shift)
            T[:, self.members[j]] = move[:, None] @ T[:, self.members[j]]
        return T

    def _residual(self, transforms: np.ndarray) -> np.ndarray:
        from .sparse import blend_sparse

        return self.frames_vm - blend_sparse(self.anchor, self.groups, transforms)

    def run(self, transforms: np.ndarray, resid: np.ndarray, iters: int = 3, damping: float = 1e-3,
            between: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``iters`` LM steps (per frame: accepted where the frame's error drops, else 10x the damping and the
        frame keeps its transforms); ``between(share done)`` before every step but the first. Returns the new
        ``transforms [K, J, 4, 4]`` and residual ``[V, K, 3]``."""
        K = transforms.shape[0]
        lam = np.full(K, damping)
        err = np.square(resid).sum(axis=(0, 2))
        for i in range(iters):
            if between is not None and i:
                between(i / iters)
            JtJ, Jtr = self._normal_equations(transforms, resid)
            diag = np.einsum("kpp->kp", JtJ)
            scale = np.maximum(diag.max(axis=1), 1e-300)
            A = JtJ + (lam[:, None] * np.maximum(diag, 1e-9 * scale[:, None]))[:, :, None] * np.eye(JtJ.shape[1])
            step = _batched_spd_solve(A, Jtr[..., None])[..., 0]
            trial = self._apply(transforms, step)
            trial_resid = self._residual(trial)
            trial_err = np.square(trial_resid).sum(axis=(0, 2))
            better = trial_err < err
            transforms = np.where(better[:, None, None, None], trial, transforms)
            resid = np.where(better[None, :, None], trial_resid, resid)
            err = np.where(better, trial_err, err)
            lam = np.clip(np.where(better, lam * 0.3, lam * 10.0), 1e-9, 1e9)
        return transforms, resid


class JointRegion:
    """Where the joints of a skeleton may go: inside the anchor mesh. Tested by the generalized winding
    number (:class:`backend.metrics.FastWindingNumbers`: the bisection in :func:`refine_joints` asks about a
    few points at a time, many times), skipped for a point within its joint's safe ball (the
    given joint's distance to the surface, :func:`backend.metrics.surface_distance`), so that the fit's joint
    steps, which move most joints a little, cost one winding-number pass per fit, not one per step.

    Args:
        verts: float ``[V, 3]`` the anchor; faces: int ``[F, 3]``; joints: float ``[J, 3]`` the given joints.
    """

    def __init__(self, verts: np.ndarray, faces: np.ndarray, joints: np.ndarray):
        self.verts, self.faces = np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)
        self.joints = np.asarray(joints, dtype=np.float64).reshape(-1, 3)
        self.winding = FastWindingNumbers(self.verts, self.faces)
        self.prior_inside = np.abs(self.winding(self.joints)) >= 0.5
        self.safe = np.zeros(len(self.joints))
        if self.prior_inside.any():
            self.safe[self.prior_inside] = surface_distance(self.joints[self.prior_inside], self.verts, self.faces)

    def inside(self, points: np.ndarray, which: np.ndarray) -> np.ndarray:
        """``bool [n]``: is ``points[i]`` (a position for joint ``which[i]``) inside the mesh."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        which = np.asarray(which, dtype=np.int64).reshape(-1)
        out = np.linalg.norm(pts - self.joints[which], axis=1) < self.safe[which]
        rest = np.flatnonzero(~out)
        if len(rest):
            out[rest] = np.abs(self.winding(pts[rest])) >= 0.5
        return out


def refine_joints(anchor: np.ndarray, frames_vm: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                  transforms: np.ndarray, joints: np.ndarray, prior: np.ndarray, parents: np.ndarray,
                  regularisation: float, region: JointRegion | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Move the joints (the pivots) and the root's path to fit the frames better, every bone's global rotation
    fixed: with the rotations fixed, an articulated motion's translations are linear in the anchor joints
    ``c`` and the root's posed joint ``q_k``, so the best ones solve one small linear least-squares problem,
    regularised toward ``prior`` (the given joints: a hinge's joint may slide along its axis unseen).

    The normal equations only need the weights' Gram matrix ``W^T W``, ``W^T 1`` and ``W^T r`` (``r``: the
    frames minus the rotations' part), so the cost does not grow with vertices times unknowns.

    Args:
        anchor: ``[V, 3]``; frames_vm: ``[V, K, 3]``; groups: per-bone sparse weights (rows on the simplex).
        transforms: articulated ``[K, J, 4, 4]`` for ``joints [J, 3]``; prior: ``[J, 3]``; parents: ``[J]`` with
            a single root (index 0).
        regularisation: weight of ``|| c - prior ||^2`` relative to the mean diagonal of the data term.
        region: a :class:`JointRegion` made for ``prior``, or None. Given, a joint the step
            would carry from inside the anchor mesh to outside is held at the last point inside on its way (found
            by bisection; its pull made 1e9 times stronger) and the step solved again, four times at most: a thin
            limb's best pivot for the data is often just outside its skin, where an animator sees the bone
            poke out.
    Returns:
        ``(transforms, joints, resid)`` when the squared error drops, else None.
    """
    import scipy.sparse as sp

    from .sparse import blend_sparse

    K, J = transforms.shape[:2]
    parents = np.asarray(parents).reshape(-1)
    V = len(anchor)
    R = transforms[..., :3, :3]
    rot_only = transforms.copy()
    rot_only[..., :3, 3] = 0.0
    r0 = frames_vm - blend_sparse(anchor, groups, rot_only)  # [V, K, 3]
    rows = np.concatenate([g[0] for g in groups])
    cols = np.concatenate([np.full(len(g[0]), b) for b, g in enumerate(groups)])
    W = sp.csr_matrix((np.concatenate([g[1] for g in groups]), (rows, cols)), shape=(V, J))
    gram = (W.T @ W).toarray()  # [J, J]
    mass = np.asarray(W.sum(axis=0)).ravel()  # [J]
    Wr = (W.T @ r0.reshape(V, -1)).reshape(J, K, 3).transpose(1, 0, 2)  # [K, J, 3]
    # G[k, j] = d t_kj / d c  ([3, 3J]): FK of the posed joints minus R_kj c_j
    Dp = np.zeros((K, J, 3, 3 * J))
    for j in range(J):
        p = int(parents[j])
        if p >= 0:
            Dp[:, j] = Dp[:, p]
            Dp[:, j, :, 3 * j:3 * j + 3] += R[:, p]
            Dp[:, j, :, 3 * p:3 * p + 3] -= R[:, p]
    G = Dp.copy()
    for j in range(J):
        G[:, j, :, 3 * j:3 * j + 3] -= R[:, j]
    Gk = G.reshape(K, 3 * J, 3 * J)
    big_gram = np.kron(gram, np.eye(3))
    H_cc = np.einsum("kai,ab,kbj->ij", Gk, big_gram, Gk, optimize=True)
    H_cq = np.einsum("j,kjai->kia", mass, G)  # [K, 3J, 3]
    b_c = np.einsum("kjai,kja->i", G, Wr)
    b_q = r0.sum(axis=0)  # [K, 3]
    lam = regularisation * max(float(np.trace(H_cc)) / (3 * J), 1e-30)
    n = 3 * J + 3 * K
    H = np.zeros((n, n))
    H[:3 * J, :3 * J] = H_cc
    H[:3 * J, 3 * J:] = H_cq.transpose(1, 0, 2).reshape(3 * J, 3 * K)
    H[3 * J:, :3 * J] = H[:3 * J, 3 * J:].T
    H[3 * J:, 3 * J:] = float(V) * np.eye(3 * K)
    prior = np.asarray(prior, dtype=np.float64).reshape(J, 3)
    target = prior.copy()
    pull = np.full(J, lam)
    prior_inside = region.prior_inside if region is not None else None
    rounds = 4 if region is not None else 0  # pinning rounds; every round ends with a solve
    for round_ in range(rounds + 1):
        H_reg = H.copy()
        H_reg[np.arange(3 * J), np.arange(3 * J)] += np.repeat(pull, 3)
        b = np.concatenate([b_c + (np.repeat(pull, 3) * target.ravel()), b_q.ravel()])
        try:
            z = np.linalg.solve(H_reg, b)
        except np.linalg.LinAlgError:
            return None
        c = z[:3 * J].reshape(J, 3)
        q = z[3 * J:].reshape(K, 3)
        if prior_inside is None or round_ == rounds:
            break
        escaped = np.flatnonzero(prior_inside & ~region.inside(c, np.arange(J)) & (pull == lam))
        if not len(escaped):
            break
        # hold each at the last point inside on its way from the prior (bisection along the step)
        lo, hi = np.zeros(len(escaped)), np.ones(len(escaped))
        for _ in range(6):
            mid = 0.5 * (lo + hi)
            ok = region.inside(prior[escaped] + mid[:, None] * (c[escaped] - prior[escaped]), escaped)
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        target[escaped] = prior[escaped] + lo[:, None] * (c[escaped] - prior[escaped])
        pull[escaped] = lam * 1e9
    posed = np.zeros((K, J, 3))
    for j in range(J):
        p = int(parents[j])
        posed[:, j] = q if p < 0 else posed[:, p] + R[:, p] @ (c[j] - c[p])
    trial = transforms.copy()
    trial[..., :3, 3] = posed - np.einsum("kjab,jb->kja", R, c)
    resid = frames_vm - blend_sparse(anchor, groups, trial)
    old = frames_vm - blend_sparse(anchor, groups, transforms)
    if not np.sum(resid ** 2) < np.sum(old ** 2):
        return None
    return trial, c, resid


def articulate_free_motion(anchor: np.ndarray, frames_vm: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]],
                           transforms: np.ndarray, joints: np.ndarray, parents: np.ndarray, regularisation: float,
                           region: JointRegion | None = None) -> np.ndarray:
    """The joints that let an articulated motion follow a free one best: every bone keeps the global rotation of
    its free rigid motion, and the joints (with the root's path) are the least-squares best for those rotations
    (:func:`refine_joints` from the :func:`project_to_articulated` start, regularised toward ``joints``).

    Free bones fitted to the clip find where each pair of neighbouring parts really turns; a skeleton placed from
    the shape is often off there (on CesiumMan's walk its head joint sat at the top of the head, 0.19 of the box
    from the artist's nearest joint), and an articulated fit started from it stays near it.

    Args:
        anchor: ``[V, 3]``; frames_vm: ``[V, K, 3]``; groups: per-bone sparse weights of the free fit.
        transforms: float ``[K, J, 4, 4]`` the free fit's rigid motions; joints: ``[J, 3]`` the skeleton's joints
            (start and prior); parents: ``[J]`` with a single root (index 0).
        regularisation, region: as :func:`refine_joints` (``region`` keeps the joints inside the mesh).
    Returns:
        float64 ``[J, 3]`` joints (``joints`` itself when the solve fails).
    """
    joints = np.asarray(joints, dtype=np.float64)
    start = project_to_articulated(transforms, joints, parents)
    out = refine_joints(anchor, frames_vm, groups, start, joints, joints, parents, regularisation, region)
    return joints if out is None else out[1]
