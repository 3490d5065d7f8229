"""SPRig skeleton fine-tuning losses (paper §3.2-3.4 and supplementary §7, Eq. 2, 3, 8-16).

Two families:

* **Token space** (Eq. 2, 8, 9): weighted teacher-forced cross entropy against the canonical anchor
  token sequence ``t_0``. Inside every joint quadruple ``(tx, ty, tz, tp)`` the parent slot gets the
  weight ``alpha``.
* **Geometry space** (Eq. 3, 10-16): pose- and permutation-invariant comparison of decoded skeletons.
  Each non-anchor skeleton is rigidly aligned to the anchor (structure tensors or Procrustes), then
  bone directions, sorted bone lengths and edge endpoints are compared.

Slot convention (used by every token function here): the loss functions receive *aligned*
``logits [B, L, V]`` and ``targets [B, L]`` where ``logits[:, i]`` is the model's prediction of
``targets[:, i]``. ``slot_offset`` is the index in ``targets`` of the first joint token (the ``tx``
of joint 0). With the usual next-token shift (``targets = tokens[:, 1:]`` after a BOS token),
``slot_offset = 0``. A position ``i >= slot_offset`` is a parent slot when
``(i - slot_offset) % 4 == 3``; positions before ``slot_offset`` and the EOS token get weight 1,
padding gets weight 0 through the mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.metrics.alignment import kabsch
from backend.models.tokenizer import SkeletonTokenizer

log = logging.getLogger(__name__)

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------
# Token space
# ------------------------------------------------------------------------------------------------

def parent_slot_weights(length: int, alpha: float = 3.0, slot_offset: int = 0,
                        device: torch.device | str | None = None) -> Tensor:
    """Per-position weights ``w_i`` of the weighted cross entropy (supplementary §7.1).

    ``w_i = alpha`` on parent slots (``(i - slot_offset) % 4 == 3``), else 1.

    Args:
        length: number of target positions L.
        alpha: parent-slot weight (paper: 3.0; 1.0 gives the plain cross entropy).
        slot_offset: index of the first joint token among the targets (see module docstring).
    Returns:
        float32 ``[L]``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    pos = torch.arange(length, device=device) - slot_offset
    w = torch.ones(length, dtype=torch.float32, device=device)
    w[(pos >= 0) & (pos % 4 == 3)] = float(alpha)
    return w


def weighted_token_ce(logits: Tensor, targets: Tensor, mask: Tensor | None = None, alpha: float = 3.0,
                      slot_offset: int = 0) -> Tensor:
    """Weighted token cross entropy of one frame, per sequence: ``sum_i w_i CE_i / sum_i w_i``.

    This is the inner expression shared by Eq. 8 and Eq. 9.

    Args:
        logits: float ``[B, L, V]`` teacher-forced next-token logits aligned with ``targets``.
        targets: long ``[B, L]`` target token ids.
        mask: bool ``[B, L]`` valid target positions (False on padding); all valid when None.
        alpha: parent-slot weight.
        slot_offset: index of the first joint token among the targets.
    Returns:
        float ``[B]`` weighted mean cross entropy of each sequence (0 for a sequence with no valid
        position).
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, L, V] and targets [B, L]; got {list(logits.shape)} and "
                         f"{list(targets.shape)}")
    B, L, V = logits.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=logits.device)
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    if int(safe_targets.max()) >= V or int(safe_targets.min()) < 0:
        raise ValueError(f"target token ids must lie in [0, {V}), got [{int(safe_targets.min())}, "
                         f"{int(safe_targets.max())}]")
    ce = F.cross_entropy(logits.reshape(B * L, V).float(), safe_targets.reshape(-1), reduction="none").view(B, L)
    w = parent_slot_weights(L, alpha, slot_offset, logits.device)[None] * mask.float()
    return (w * ce).sum(1) / w.sum(1).clamp_min(1e-12)


def anchor_token_loss(logits0: Tensor, targets: Tensor, mask: Tensor | None = None, alpha: float = 3.0,
                      slot_offset: int = 0) -> Tensor:
    """Eq. 8: ``L_anchor``, weighted CE of the anchor tokens under teacher forcing on the anchor frame.

    Args:
        logits0: float ``[B, L, V]`` logits conditioned on the anchor frame's points ``F_0``.
        targets: long ``[B, L]`` anchor tokens ``t_0`` (shifted to align with the logits).
        mask: bool ``[B, L]`` valid positions.
    Returns:
        scalar, the batch mean of the per-sequence Eq. 8 value.
    """
    return weighted_token_ce(logits0, targets, mask, alpha, slot_offset).mean()


def symmetric_token_loss(logits_k: Tensor, targets: Tensor, mask: Tensor | None = None, alpha: float = 3.0,
                         slot_offset: int = 0, frame_mask: Tensor | None = None) -> Tensor:
    """Eq. 9: ``L_sym``, the anchor tokens predicted from non-anchor frames, averaged over frames ``K``.

    Args:
        logits_k: float ``[B, Kn, L, V]`` logits conditioned on non-anchor frames ``F_k`` (k in the
            subsampled set ``K``) under teacher forcing with the anchor prefix.
        targets: long ``[B, L]`` anchor tokens ``t_0`` (the same labels for every frame).
        mask: bool ``[B, L]`` valid positions.
        frame_mask: bool ``[B, Kn]`` which frames exist (all when None).
    Returns:
        scalar, mean over samples of the frame-averaged Eq. 9 value.
    """
    if logits_k.ndim != 4:
        raise ValueError(f"logits_k must be [B, Kn, L, V], got {list(logits_k.shape)}")
    B, Kn, L, V = logits_k.shape
    if Kn == 0:
        return logits_k.sum() * 0.0
    flat = weighted_token_ce(logits_k.reshape(B * Kn, L, V), targets[:, None].expand(B, Kn, L).reshape(B * Kn, L),
                             None if mask is None else mask[:, None].expand(B, Kn, L).reshape(B * Kn, L),
                             alpha, slot_offset).view(B, Kn)
    if frame_mask is None:
        return flat.mean()
    fm = frame_mask.float()
    per_sample = (flat * fm).sum(1) / fm.sum(1).clamp_min(1.0)
    return per_sample[fm.sum(1) > 0].mean() if bool((fm.sum(1) > 0).any()) else flat.sum() * 0.0


def token_loss(l_anchor: Tensor, l_sym: Tensor, lambda_anchor: float = 1.0, lambda_sym: float = 1.0) -> Tensor:
    """Eq. 2: ``L_token = lambda_anchor * L_anchor + lambda_sym * L_sym``."""
    return lambda_anchor * l_anchor + lambda_sym * l_sym


def shift_for_next_token(logits: Tensor, tokens: Tensor, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Align generator output with its targets: ``logits[:, :-1]`` scores ``tokens[:, 1:]``.

    Args:
        logits: float ``[B, L, V]`` from ``SkeletonGenerator.forward(points, normals, tokens)``.
        tokens: long ``[B, L]`` starting with BOS, PAD after EOS.
        pad_id: the PAD token id.
    Returns:
        ``(logits [B, L-1, V], targets [B, L-1], mask [B, L-1])``; with the tokenizer's layout
        (BOS then quadruples) the first joint token is target 0, so ``slot_offset = 0``.
    """
    targets = tokens[:, 1:]
    return logits[:, :-1], targets, targets != pad_id


def token_joint_counts(tokens: Tensor, tokenizer: SkeletonTokenizer) -> Tensor:
    """Joints held by each token sequence: long ``[B]`` from ``tokens [B, L]`` (BOS, quadruples, EOS, PAD).

    A joint counts when its parent slot holds a parent label.
    """
    body = tokens[:, 1:]
    J = body.shape[1] // 4
    parent_slots = body[:, : 4 * J].reshape(tokens.shape[0], J, 4)[..., 3]
    is_parent = (parent_slots >= tokenizer.parent_offset) & (parent_slots <= tokenizer.parent_offset
                                                               + tokenizer.max_joints)
    return is_parent.long().cumprod(1).sum(1)


def expected_joint_positions(logits: Tensor, tokens: Tensor, tokenizer: SkeletonTokenizer) -> tuple[Tensor, Tensor]:
    """Differentiable joint positions: the softmax-expected bin centre of every coordinate slot.

    The geometry loss acts on decoded skeletons; decoding (argmax) has no gradient, so the decoded
    tokens are re-scored with teacher forcing and each coordinate is replaced by
    ``sum_b softmax(l[:n_disc])_b * centre_b`` (softmax over the coordinate bins only, as the
    constrained decoder restricts coordinate slots to bins).

    Args:
        logits: float ``[B, L, V]`` teacher-forced logits of ``tokens`` (``logits[:, i]`` scores
            ``tokens[:, i + 1]``, the generator's convention).
        tokens: long ``[B, L]`` BOS, quadruples, EOS, PAD.
        tokenizer: gives ``n_disc`` and the parent-label ids.
    Returns:
        ``joints float [B, Jmax, 3]`` (zeros past each sequence's last joint) and ``valid bool [B, Jmax]``.
    """
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits must be [B, L, V] matching tokens [B, L]; got {list(logits.shape)} and "
                         f"{list(tokens.shape)}")
    B, L, _ = logits.shape
    n_disc = tokenizer.n_disc
    counts = token_joint_counts(tokens, tokenizer)
    Jmax = int(counts.max()) if B else 0
    centres = (torch.arange(n_disc, device=logits.device, dtype=torch.float32) + 0.5) / n_disc - 0.5
    if Jmax == 0:
        return logits.new_zeros(B, 0, 3), torch.zeros(B, 0, dtype=torch.bool, device=logits.device)
    # coordinate slot s of joint j sits at token position 1 + 4j + s, scored by logits position 4j + s
    pos = (4 * torch.arange(Jmax, device=logits.device)[:, None] + torch.arange(3, device=logits.device)[None])
    coord_logits = logits[:, pos.reshape(-1), :n_disc].float().view(B, Jmax, 3, n_disc)
    joints = (coord_logits.softmax(-1) * centres).sum(-1)
    valid = torch.arange(Jmax, device=logits.device)[None] < counts[:, None]
    return joints * valid[..., None], valid


# ------------------------------------------------------------------------------------------------
# Geometry space
# ------------------------------------------------------------------------------------------------

@dataclass
class GeometryLossConfig:
    """Hyper-parameters of ``L_geom`` (Eq. 3, 13-16).

    The paper gives no values for ``lambda_dir/len/ch`` and ``rho``; these defaults weigh the three
    terms equally and keep every edge.

    Attributes:
        lambda_dir, lambda_len, lambda_ch: weights of Eq. 13, 14 and 16 inside Eq. 3.
        rho: fraction of the longest edges used by the directional term (``E~``), in (0, 1].
        alignment: ``"structure_tensor"`` (Eq. 10-12, needs no correspondence), ``"procrustes"``
            (Kabsch on joints; needs the two skeletons to have the same joint count, else falls back to
            the structure tensor) or ``"auto"`` (Procrustes when the parent vectors are identical).
        grad_through_rotation: when False (default) the rotation is treated as a constant for the
            backward pass (eigenvector gradients are unstable near repeated eigenvalues); the
            translation of Eq. 12 and every term stay differentiable w.r.t. joint positions.
    """

    lambda_dir: float = 1.0
    lambda_len: float = 1.0
    lambda_ch: float = 1.0
    rho: float = 1.0
    alignment: str = "structure_tensor"
    grad_through_rotation: bool = False


def edge_set(parents: Tensor) -> tuple[Tensor, Tensor]:
    """``E = {(i, j) | p[j] = i, i != j}`` (supplementary §7.2).

    Args:
        parents: long ``[J]`` parent index per joint; ``-1`` (or the joint itself) marks a root.
    Returns:
        ``(heads [E], tails [E])`` long: edge ``e`` goes from parent ``heads[e]`` to child ``tails[e]``.
    """
    parents = torch.as_tensor(parents).long().reshape(-1)
    child = torch.arange(parents.numel(), device=parents.device)
    keep = (parents >= 0) & (parents != child)
    return parents[keep], child[keep]


def edge_vectors(joints: Tensor, parents: Tensor) -> Tensor:
    """Edge vectors ``v_ij = x_j - x_i`` for ``(i, j)`` in ``E``: float ``[E, 3]`` from ``joints [J, 3]``."""
    heads, tails = edge_set(parents.to(joints.device))
    return joints[tails] - joints[heads]


def edge_midpoints(joints: Tensor, parents: Tensor) -> Tensor:
    """Edge midpoints ``m_ij = (x_i + x_j) / 2``: float ``[E, 3]``."""
    heads, tails = edge_set(parents.to(joints.device))
    return 0.5 * (joints[tails] + joints[heads])


def edge_endpoints(joints: Tensor, parents: Tensor) -> Tensor:
    """``P``: all edge endpoints concatenated (heads then tails), float ``[2E, 3]`` (Eq. 16)."""
    heads, tails = edge_set(parents.to(joints.device))
    return torch.cat([joints[heads], joints[tails]], 0)


def length_weights(vectors: Tensor) -> Tensor:
    """Eq. 11: edge weights ``omega_ij ∝ ||v_ij||`` normalized to sum 1; float ``[E]``."""
    lengths = vectors.norm(dim=-1)
    return lengths / lengths.sum().clamp_min(1e-12)


def structure_tensor(vectors: Tensor, weights: Tensor | None = None) -> Tensor:
    """Eq. 10: ``S = sum_e omega_e v_e v_e^T``.

    Args:
        vectors: float ``[E, 3]`` edge vectors.
        weights: float ``[E]``; Eq. 11 length weights when None.
    Returns:
        float ``[3, 3]`` symmetric positive semi-definite.
    """
    if weights is None:
        weights = length_weights(vectors)
    return torch.einsum("e,ea,eb->ab", weights, vectors, vectors)


def chamfer_sq(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric mean squared nearest-neighbour distance between ``a [P, 3]`` and ``b [Q, 3]``.

    ``0.5 * (mean_p min_q |a_p - b_q|^2 + mean_q min_p |a_p - b_q|^2)``; the form of Eq. 16.
    """
    d = torch.cdist(a[None], b[None])[0] ** 2  # [P, Q]
    return 0.5 * (d.min(1).values.mean() + d.min(0).values.mean())


def centroid_translation(mid0: Tensor, midk: Tensor, rotation: Tensor) -> Tensor:
    """Eq. 12: ``t_k = mu(M_k) - R_k mu(M_0)`` from edge midpoints ``mid0 [E0, 3]``, ``midk [Ek, 3]``."""
    return midk.mean(0) - rotation @ mid0.mean(0)


def _proper_sign_flips(device, dtype) -> Tensor:
    """The 4 diagonal sign matrices with determinant +1 as ``[4, 3]`` sign vectors."""
    return torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], device=device, dtype=dtype)


def structure_tensor_rotation(joints0: Tensor, parents0: Tensor, jointsk: Tensor, parentsk: Tensor) -> Tensor:
    """Rotation ``R_k`` aligning the anchor's principal bone axes to frame ``k``'s (Eq. 10-11).

    With the eigenvectors (columns, by decreasing eigenvalue) ``U_0`` of ``S_0`` and ``U_k`` of ``S_k``,
    ``R_k = U_k diag(s) U_0^T``. Eigenvectors are defined up to sign; ``s`` is chosen among the sign
    patterns that make ``R_k`` a proper rotation as the one with the smallest edge-endpoint Chamfer
    distance after alignment (Eq. 12 translation, Eq. 16 form), ties broken by the fixed pattern order.
    The result is deterministic and invariant to joint relabeling.

    Args:
        joints0, jointsk: float ``[J0, 3]``, ``[Jk, 3]``.
        parents0, parentsk: long ``[J0]``, ``[Jk]``.
    Returns:
        float ``[3, 3]`` (computed without gradient).
    """
    with torch.no_grad():
        j0, jk = joints0.detach().double(), jointsk.detach().double()
        v0, vk = edge_vectors(j0, parents0), edge_vectors(jk, parentsk)
        if len(v0) == 0 or len(vk) == 0:
            return torch.eye(3, dtype=joints0.dtype, device=joints0.device)
        _, u0 = torch.linalg.eigh(structure_tensor(v0))
        _, uk = torch.linalg.eigh(structure_tensor(vk))
        u0, uk = u0.flip(-1), uk.flip(-1)  # decreasing eigenvalue
        # make both bases right-handed so that diag(s) with det +1 gives a proper rotation
        if torch.det(u0) < 0:
            u0[:, 2] = -u0[:, 2]
        if torch.det(uk) < 0:
            uk[:, 2] = -uk[:, 2]
        mid0, midk = edge_midpoints(j0, parents0), edge_midpoints(jk, parentsk)
        p0, pk = edge_endpoints(j0, parents0), edge_endpoints(jk, parentsk)
        best, best_cost = None, None
        for s in _proper_sign_flips(j0.device, j0.dtype):
            rot = uk @ torch.diag(s) @ u0.T
            t = centroid_translation(mid0, midk, rot)
            cost = chamfer_sq(p0 @ rot.T + t, pk)
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = rot, cost
        return best.to(joints0.dtype)


def procrustes_rotation(joints0: Tensor, jointsk: Tensor) -> tuple[Tensor, Tensor]:
    """Procrustes rigid fit ``x_k ≈ R x_0 + t`` for corresponding joints ``[J, 3]``.

    Uses the Kabsch solver of the evaluation metrics (:func:`backend.metrics.alignment.kabsch`).

    Returns:
        ``(R [3, 3], t [3])``, computed without gradient.
    """
    if joints0.shape != jointsk.shape:
        raise ValueError(f"Procrustes needs corresponding joints, got {list(joints0.shape)} and "
                         f"{list(jointsk.shape)}")
    rot, t = kabsch(joints0.detach().cpu().double().numpy(), jointsk.detach().cpu().double().numpy())
    return (torch.as_tensor(rot, dtype=joints0.dtype, device=joints0.device),
            torch.as_tensor(t, dtype=joints0.dtype, device=joints0.device))


def rigid_alignment(joints0: Tensor, parents0: Tensor, jointsk: Tensor, parentsk: Tensor,
                    method: str = "structure_tensor") -> tuple[Tensor, Tensor]:
    """``(R_k, t_k)`` mapping the anchor skeleton onto frame ``k`` (Eq. 10-12 or Procrustes).

    The rotation carries no gradient; the structure-tensor translation (Eq. 12) is differentiable
    w.r.t. both joint sets.
    """
    if method not in ("structure_tensor", "procrustes", "auto"):
        raise ValueError(f"unknown alignment {method!r}; use structure_tensor, procrustes or auto")
    same = joints0.shape == jointsk.shape and torch.equal(parents0.cpu().long(), parentsk.cpu().long())
    if method == "procrustes" and joints0.shape == jointsk.shape or method == "auto" and same:
        rot, _ = procrustes_rotation(joints0, jointsk)
        t = jointsk.mean(0) - rot @ joints0.mean(0)
        return rot, t
    rot = structure_tensor_rotation(joints0, parents0, jointsk, parentsk)
    t = centroid_translation(edge_midpoints(joints0, parents0), edge_midpoints(jointsk, parentsk), rot)
    return rot, t


def top_rho_edges(vectors: Tensor, rho: float) -> Tensor:
    """``E~``: the ``ceil(rho * E)`` longest edge vectors (at least one), float ``[E~, 3]``."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must lie in (0, 1], got {rho}")
    n = max(1, int(torch.ceil(torch.tensor(rho * len(vectors))).item()))
    if n >= len(vectors):
        return vectors
    idx = torch.argsort(vectors.detach().norm(dim=-1), descending=True)[:n]
    return vectors[idx]


def direction_loss(vec0_rot: Tensor, veck: Tensor) -> Tensor:
    """Eq. 13: bidirectional best-match cosine penalty between edge directions.

    ``L_dir = 1/2 [1 - mean_{e0} max_{ek} <u0, uk>  +  1 - mean_{ek} max_{e0} <u0, uk>]``

    Args:
        vec0_rot: float ``[E0, 3]`` anchor edge vectors already rotated by ``R_k`` (top-rho).
        veck: float ``[Ek, 3]`` frame-k edge vectors (top-rho).
    Returns:
        scalar in [0, 2].
    """
    u0 = vec0_rot / vec0_rot.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    uk = veck / veck.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    cos = u0 @ uk.T  # [E0, Ek]
    return 0.5 * ((1.0 - cos.max(1).values.mean()) + (1.0 - cos.max(0).values.mean()))


def length_loss(vec0: Tensor, veck: Tensor) -> Tensor:
    """Eq. 14-15: mean squared difference of the sorted bone-length spectra.

    Lengths are sorted in decreasing order and the ``m = min(|E0|, |Ek|)`` longest of each are
    compared (Eq. 15), so the value is invariant to joint permutations.

    Args:
        vec0, veck: float ``[E0, 3]``, ``[Ek, 3]`` edge vectors (rotation does not change lengths).
    Returns:
        scalar.
    """
    l0 = vec0.norm(dim=-1).sort(descending=True).values
    lk = veck.norm(dim=-1).sort(descending=True).values
    m = min(len(l0), len(lk))
    if m == 0:
        return vec0.sum() * 0.0 + veck.sum() * 0.0
    return ((lk[:m] - l0[:m]) ** 2).mean()


def endpoint_chamfer_loss(points0_aligned: Tensor, pointsk: Tensor) -> Tensor:
    """Eq. 16: symmetric squared Chamfer distance between aligned anchor endpoints and frame-k ones.

    Args:
        points0_aligned: float ``[P0, 3]`` anchor edge endpoints mapped by ``R_k p + t_k``.
        pointsk: float ``[Pk, 3]`` frame-k edge endpoints.
    """
    return chamfer_sq(points0_aligned, pointsk)


def frame_geometry_terms(joints0: Tensor, parents0: Tensor, jointsk: Tensor, parentsk: Tensor,
                         cfg: GeometryLossConfig | None = None) -> dict[str, Tensor]:
    """The three aligned terms of one non-anchor frame: ``{"dir", "len", "ch"}`` (Eq. 13, 14, 16).

    Args:
        joints0: float ``[J0, 3]`` anchor skeleton joints; parents0 long ``[J0]`` (-1 root).
        jointsk: float ``[Jk, 3]`` frame-k skeleton joints; parentsk long ``[Jk]``.
    Returns:
        scalars, differentiable w.r.t. both joint tensors. A skeleton without edges gives zeros (and a
        debug log line) since nothing can be compared.
    """
    cfg = cfg or GeometryLossConfig()
    parents0 = torch.as_tensor(parents0, device=joints0.device).long()
    parentsk = torch.as_tensor(parentsk, device=jointsk.device).long()
    v0, vk = edge_vectors(joints0, parents0), edge_vectors(jointsk, parentsk)
    if len(v0) == 0 or len(vk) == 0:
        log.debug("geometry loss skipped: a skeleton has no edges")
        zero = joints0.sum() * 0.0 + jointsk.sum() * 0.0
        return {"dir": zero, "len": zero, "ch": zero}
    if cfg.alignment not in ("structure_tensor", "procrustes", "auto"):
        raise ValueError(f"unknown alignment {cfg.alignment!r}")
    if cfg.grad_through_rotation and cfg.alignment == "structure_tensor":
        rot, t = _differentiable_structure_alignment(joints0, parents0, jointsk, parentsk)
    else:
        rot, t = rigid_alignment(joints0, parents0, jointsk, parentsk, cfg.alignment)
    rot = rot.to(joints0.dtype)
    l_dir = direction_loss(top_rho_edges(v0, cfg.rho) @ rot.T, top_rho_edges(vk, cfg.rho))
    l_len = length_loss(v0, vk)
    p0 = edge_endpoints(joints0, parents0) @ rot.T + t
    l_ch = endpoint_chamfer_loss(p0, edge_endpoints(jointsk, parentsk))
    return {"dir": l_dir, "len": l_len, "ch": l_ch}


def _differentiable_structure_alignment(joints0, parents0, jointsk, parentsk):
    """Structure-tensor alignment with gradients through ``eigh`` (sign pattern picked without grad)."""
    rot_ng = structure_tensor_rotation(joints0, parents0, jointsk, parentsk)
    _, u0 = torch.linalg.eigh(structure_tensor(edge_vectors(joints0, parents0)))
    _, uk = torch.linalg.eigh(structure_tensor(edge_vectors(jointsk, parentsk)))
    u0, uk = u0.flip(-1), uk.flip(-1)
    # recover the sign pattern chosen without gradient: s = diag(U_k^T R U_0)
    s = torch.sign(torch.diagonal(uk.detach().T @ rot_ng @ u0.detach()))
    rot = uk @ torch.diag(s) @ u0.T
    t = centroid_translation(edge_midpoints(joints0, parents0), edge_midpoints(jointsk, parentsk), rot)
    return rot, t


def geometry_loss(anchor: tuple[Tensor, Tensor], frames: list[tuple[Tensor, Tensor]],
                  cfg: GeometryLossConfig | None = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 3: ``L_geom = 1/(K-1) sum_k (lambda_dir L_dir + lambda_len L_len + lambda_ch L_ch)``.

    Args:
        anchor: ``(joints0 [J0, 3], parents0 [J0])`` the anchor skeleton.
        frames: ``[(joints_k [Jk, 3], parents_k [Jk]), ...]`` the K-1 non-anchor predictions.
    Returns:
        ``(loss scalar, {"dir", "len", "ch"} frame-averaged floats for logging)``.
    """
    cfg = cfg or GeometryLossConfig()
    joints0, parents0 = anchor
    if not frames:
        return joints0.sum() * 0.0, {"dir": 0.0, "len": 0.0, "ch": 0.0}
    total = joints0.new_zeros(())
    parts = {"dir": 0.0, "len": 0.0, "ch": 0.0}
    for jointsk, parentsk in frames:
        terms = frame_geometry_terms(joints0, parents0, jointsk, parentsk, cfg)
        total = total + cfg.lambda_dir * terms["dir"] + cfg.lambda_len * terms["len"] + cfg.lambda_ch * terms["ch"]
        for key in parts:
            parts[key] += float(terms[key].detach()) / len(frames)
    return total / len(frames), parts


def batch_geometry_loss(anchors: list[tuple[Tensor, Tensor]], frames: list[list[tuple[Tensor, Tensor]]],
                        cfg: GeometryLossConfig | None = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 3 averaged over a batch of clips (skeletons differ in size, so the batch is a list).

    Args:
        anchors: per clip ``(joints0 [J0, 3], parents0 [J0])``.
        frames: per clip the list of non-anchor ``(joints_k, parents_k)``.
    Returns:
        ``(mean loss, mean parts)``.
    """
    if len(anchors) != len(frames):
        raise ValueError(f"{len(anchors)} anchors but {len(frames)} frame lists")
    losses, parts = [], {"dir": 0.0, "len": 0.0, "ch": 0.0}
    for anchor, fr in zip(anchors, frames):
        loss, p = geometry_loss(anchor, fr, cfg)
        losses.append(loss)
        for key in parts:
            parts[key] += p[key] / len(anchors)
    if not losses:
        raise ValueError("empty batch")
    return torch.stack(losses).mean(), parts


def skeleton_total_loss(l_token: Tensor, l_geom: Tensor, lambda_token: float = 1.0,
                        lambda_geom: float = 0.5) -> Tensor:
    """§3.4: ``L_total = lambda_token * L_token + lambda_geom * L_geom`` (paper: lambda_geom = 0.5)."""
    return lambda_token * l_token + lambda_geom * l_geom


# ------------------------------------------------------------------------------------------------
# Vote space (the `local` design; not in the paper)
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def local_rotations(points: Tensor, n_neighbours: int = 16) -> Tensor:
    """How the surface around every point turns from the anchor to each frame: the Kabsch rotation of each
    point's ``n_neighbours`` nearest anchor neighbours (itself included) onto the same samples on frame ``k``.

    The samples correspond across frames (one (face, barycentric) set for all frames), so this needs no
    labels: it is the observed local motion of the input.

    Args:
        points: float ``[B, K, N, 3]``, frame 0 the anchor.
    Returns:
        float32 ``[B, K, N, 3, 3]`` rotations (identity on the anchor, up to round-off).
    """
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B, K, N, 3], got {list(points.shape)}")
    B, K, N, _ = points.shape
    x = points.double()
    n = min(n_neighbours, N)
    idx = torch.cdist(x[:, 0], x[:, 0]).topk(n, dim=-1, largest=False).indices  # [B, N, n]
    flat = (idx + N * torch.arange(B, device=x.device)[:, None, None]).reshape(-1)
    src = x[:, 0].reshape(B * N, 3).index_select(0, flat).view(B, 1, N, n, 3)
    dst = x.transpose(0, 1).reshape(K, B * N, 3)[:, flat].view(K, B, N, n, 3).transpose(0, 1)  # [B, K, N, n, 3]
    cov = (src - src.mean(-2, keepdim=True)).transpose(-1, -2) @ (dst - dst.mean(-2, keepdim=True))  # [B, K, N, 3, 3]
    u, _, vt = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    return (vt.transpose(-1, -2) @ fix @ u.transpose(-1, -2)).float()


def vote_consistency_loss(offsets: Tensor, distances: Tensor, anchor_offsets: Tensor, anchor_distances: Tensor,
                          rotations: Tensor, scale: float = 0.02) -> Tensor:
    """Dense analogue of Eq. 8-9 for the ``local`` design, whose joints come from clustering per-point votes:
    every frame's votes should be the anchor pseudo-label's votes (the frozen base's, on the anchor) carried
    by the surface's own local motion, ``o_k,i = R_k,i o_0,i`` and ``d_k,i = d_0,i``, in the L1 form of the
    pretraining vote loss (:func:`backend.models.local_encoder.joint_vote_loss`). Frame 0 (``R = I``) is the
    anchor term.

    Args:
        offsets: float ``[B, K, N, Kv, 3]`` and distances ``[B, K, N, Kv]``: the model's votes on every frame.
        anchor_offsets: float ``[B, N, Kv, 3]`` and anchor_distances ``[B, N, Kv]``: the pseudo-label votes.
        rotations: float ``[B, K, N, 3, 3]`` from :func:`local_rotations`.
        scale: error (normalized units) that costs 1.
    Returns:
        scalar, mean over clips, frames, points and votes.
    """
    target = torch.einsum("bknij,bnvj->bknvi", rotations.float(), anchor_offsets.float())
    err = (offsets.float() - target).abs().sum(-1) + (distances.float() - anchor_distances.float()[:, None]).abs()
    return err.mean() / scale
