"""SPRig skinning fine-tuning losses (paper §4.2-4.3 and supplementary §8, Eq. 5-7, 17-27).

Every function works on batches. Shapes used throughout:

* ``teacher``  float ``[B, N, J]`` point teacher ``W^T`` (Eq. 6), zero on invalid joints;
* ``pred``     float ``[B, F, N, J]`` row-stochastic predictions ``W^_k`` on frames ``k = 0..K``
  (``F = K + 1``; frame 0 is the anchor);
* ``valid``    bool ``[B, J]`` valid (non-padding) joints ``V``;
* ``mask``     float ``[B, N, J]`` the Top-K_s mask ``m`` of supplementary §8.1.

The masked operators are :func:`backend.metrics.skinning.masked_renormalize` (Eq. 17) and
:func:`backend.metrics.skinning.masked_average` (Eq. 18), shared with the evaluation metrics.
Masked averages follow Eq. 18 literally: ``<f, m> = sum_ij f_ij m_ij / (sum_ij m_ij / N)``, i.e. a sum
over the ``N`` points of the per-point masked mean. Values therefore scale with ``N`` (the paper's
Table 3 reports L1 ~ 10^3); only ratios between terms matter for the optimization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from backend.metrics.skinning import (kl_terms, masked_average, masked_entropy, masked_renormalize,
                                      teacher_l1, teacher_symkl, topk_mask)
from backend.sampling import SurfaceSamples, barycentric_interpolate

log = logging.getLogger(__name__)

Tensor = torch.Tensor
EPS = 1e-8


# ------------------------------------------------------------------------------------------------
# Teacher transfer (Eq. 5-6) and the Top-K_s mask (§8.1). The masked operators R (Eq. 17) and
# <., m> (Eq. 18) and the element-wise KL / entropy terms come from backend.metrics.skinning, so the
# training losses and the evaluation metrics share one implementation.
# ------------------------------------------------------------------------------------------------

def point_teacher(vertex_weights: np.ndarray, faces: np.ndarray, samples: SurfaceSamples) -> np.ndarray:
    """Eq. 6: the point teacher ``W^T_i = sum_r lambda_ir (W^T_vtx)_{f_i,r}`` by barycentric transfer.

    The query positions of Eq. 5 come from the same (face, barycentric) samples through
    :func:`backend.sampling.points_on_frames`.

    Args:
        vertex_weights: float ``[V, J]`` anchor-vertex teacher (zero on invalid joints).
        faces: int ``[F, 3]``.
        samples: the ``N`` (face, barycentric) samples shared by every frame.
    Returns:
        float32 ``[N, J]``; rows sum to the (barycentric mix of) vertex row sums.
    """
    vertex_weights = np.asarray(vertex_weights, dtype=np.float32)
    if vertex_weights.ndim != 2:
        raise ValueError(f"vertex_weights must be [V, J], got {list(vertex_weights.shape)}")
    if int(np.asarray(faces).max()) >= vertex_weights.shape[0]:
        raise ValueError(f"faces index vertex {int(np.asarray(faces).max())} but vertex_weights has "
                         f"{vertex_weights.shape[0]} rows")
    return barycentric_interpolate(vertex_weights, faces, samples).astype(np.float32)


def batch_topk_mask(teacher: Tensor, valid: Tensor, k_s: int = 4, gamma: float = 0.0) -> Tensor:
    """Top-K_s mask ``m`` (§8.1) of a batch, via :func:`backend.metrics.skinning.topk_mask`.

    Args:
        teacher: float ``[B, N, J]``.
        valid: bool ``[B, J]`` (each clip's own valid joints).
        k_s: joints kept per point (paper: 4); gamma: value on the other valid joints (paper: 0).
    Returns:
        float ``[B, N, J]``: 1 on the top-K_s valid joints, gamma on other valid joints, 0 on invalid.
    """
    if teacher.ndim != 3 or valid.shape != (teacher.shape[0], teacher.shape[2]):
        raise ValueError(f"teacher must be [B, N, J] and valid [B, J]; got {list(teacher.shape)} and "
                         f"{list(valid.shape)}")
    return topk_mask(teacher, k_s, gamma, valid[:, None, :])


# ------------------------------------------------------------------------------------------------
# Consistency distillation (Eq. 19-22)
# ------------------------------------------------------------------------------------------------

def sym_kl_loss(pred_tilde: Tensor, y_tilde: Tensor, mask: Tensor) -> Tensor:
    """Eq. 19: ``L_sym = 1/K sum_{k=1..K} <KL(Y~ || W~_k) + KL(W~_k || Y~), m>``.

    Args:
        pred_tilde: float ``[B, F, N, J]`` renormalized predictions (frame 0 = anchor, not used).
        y_tilde: float ``[B, N, J]`` renormalized teacher.
        mask: float ``[B, N, J]``.
    Returns:
        scalar, batch mean.
    """
    w = pred_tilde[:, 1:]
    if w.shape[1] == 0:
        return pred_tilde.sum() * 0.0
    return teacher_symkl(w, y_tilde[:, None], mask[:, None]).mean(1).mean()


def l1_loss(pred_tilde: Tensor, y_tilde: Tensor, mask: Tensor) -> Tensor:
    """Eq. 20: ``L_1 = 1/K sum_{k=1..K} <|W~_k - Y~|, m>`` (non-anchor frames); scalar batch mean."""
    w = pred_tilde[:, 1:]
    if w.shape[1] == 0:
        return pred_tilde.sum() * 0.0
    return teacher_l1(w, y_tilde[:, None], mask[:, None]).mean(1).mean()


def anchor_skin_loss(pred_tilde: Tensor, y_tilde: Tensor, mask: Tensor) -> Tensor:
    """Eq. 21: ``L_anchor = <|W~_0 - Y~|, m>`` on the anchor frame; scalar batch mean."""
    return teacher_l1(pred_tilde[:, 0], y_tilde, mask).mean()


def consistency_loss(l_sym: Tensor, l_1: Tensor, l_anchor: Tensor, lambda_sym: float = 1.0, lambda_1: float = 1.0,
                     lambda_anchor: float = 0.25) -> Tensor:
    """Eq. 22: ``L_cons = lambda_sym L_sym + lambda_1 L_1 + lambda_anchor L_anchor``."""
    return lambda_sym * l_sym + lambda_1 * l_1 + lambda_anchor * l_anchor


# ------------------------------------------------------------------------------------------------
# Structural and geometric regularization (Eq. 23-27)
# ------------------------------------------------------------------------------------------------

def entropy_loss(pred_tilde: Tensor, mask: Tensor, eps: float = EPS) -> Tensor:
    """Eq. 23: ``L_ent = sum_{k=0..K} ( -<W~_k log W~_k, m> )``; scalar batch mean.

    Args:
        pred_tilde: float ``[B, F, N, J]``.
        mask: float ``[B, N, J]``.
    """
    return masked_entropy(pred_tilde, mask[:, None], eps).sum(1).mean()


def point_segment_distance(points: Tensor, seg_a: Tensor, seg_b: Tensor) -> Tensor:
    """Distance ``d_ij`` from point ``e_i`` to segment ``[a_j, b_j]`` (a zero-length segment is a point).

    Args:
        points: float ``[..., N, 3]``.
        seg_a, seg_b: float ``[..., J, 3]`` segment endpoints.
    Returns:
        float ``[..., N, J]``.
    """
    ab = seg_b - seg_a  # [..., J, 3]
    ap = points[..., :, None, :] - seg_a[..., None, :, :]  # [..., N, J, 3]
    denom = (ab * ab).sum(-1)[..., None, :]  # [..., 1, J]
    t = ((ap * ab[..., None, :, :]).sum(-1) / denom.clamp_min(1e-12)).clamp(0.0, 1.0)
    t = torch.where(denom > 1e-12, t, torch.zeros_like(t))
    closest = ap - t[..., None] * ab[..., None, :, :]
    return closest.norm(dim=-1)


def bone_segments(joints: Tensor, parents: Tensor) -> tuple[Tensor, Tensor]:
    """Endpoints of bone ``j``: ``a_j = X[j]``, ``b_j = X[p_j]`` (the root is self-parented).

    Args:
        joints: float ``[B, J, 3]``.
        parents: long ``[B, J]`` with ``-1`` (or the joint itself) for roots and padding.
    Returns:
        ``(a, b)`` float ``[B, J, 3]`` each.
    """
    J = joints.shape[1]
    own = torch.arange(J, device=joints.device)[None].expand_as(parents)
    par = torch.where((parents >= 0) & (parents < J), parents.long(), own)
    b = torch.gather(joints, 1, par[..., None].expand(*par.shape, 3))
    return joints, b


def proximity_prior(points: Tensor, joints: Tensor, parents: Tensor, valid: Tensor, beta: float = 15.0) -> Tensor:
    """Eq. 24: ``Pi^(k)_ij ∝ exp(-beta d^(k)_ij)``, normalized over the valid joints.

    Args:
        points: float ``[B, F, N, 3]`` query positions ``e^(k)``.
        joints: float ``[B, J, 3]`` (anchor-normalized skeleton shared by all frames) or ``[B, F, J, 3]``.
        parents: long ``[B, J]``.
        valid: bool ``[B, J]``.
        beta: sharpness (paper: 15).
    Returns:
        float ``[B, F, N, J]``, zero on invalid joints.
    """
    a, b = bone_segments(joints if joints.ndim == 3 else joints.flatten(0, 1),
                         parents if joints.ndim == 3 else parents.repeat_interleave(joints.shape[1], 0))
    if joints.ndim == 3:
        d = point_segment_distance(points, a[:, None], b[:, None])
    else:
        B, F_ = joints.shape[:2]
        d = point_segment_distance(points, a.view(B, F_, -1, 3), b.view(B, F_, -1, 3))
    logits = (-beta * d).masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


def averaged_prior(prior: Tensor, window: int | None = None) -> Tensor:
    """Eq. 25: ``Pi_avg = 1/|K_avg| sum_{k in K_avg} Pi^(k)`` over the first ``window`` frames.

    Args:
        prior: float ``[B, F, N, J]``.
        window: frames ``0 .. window-1`` are averaged (all when None).
    Returns:
        float ``[B, N, J]``.
    """
    frames = prior.shape[1] if window is None else max(1, min(int(window), prior.shape[1]))
    return prior[:, :frames].mean(1)


def prior_loss(pred_tilde: Tensor, prior_avg: Tensor, mask: Tensor) -> Tensor:
    """Eq. 26: ``L_prior = sum_{k=0..K} <KL(R(Pi_avg; m) || W~_k), m>``; scalar batch mean.

    Args:
        pred_tilde: float ``[B, F, N, J]``.
        prior_avg: float ``[B, N, J]`` from Eq. 25.
        mask: float ``[B, N, J]``.
    """
    target = masked_renormalize(prior_avg, mask)[:, None]
    return masked_average(kl_terms(target, pred_tilde), mask[:, None]).sum(1).mean()


def regularization_loss(l_ent: Tensor, l_prior: Tensor, lambda_ent: float = 0.02,
                        lambda_prior: float = 0.1) -> Tensor:
    """Eq. 27: ``L_reg = lambda_ent L_ent + lambda_prior L_prior``."""
    return lambda_ent * l_ent + lambda_prior * l_prior


def skinning_total_loss(l_cons: Tensor, l_reg: Tensor) -> Tensor:
    """Eq. 7: ``L_total = L_cons + L_reg``."""
    return l_cons + l_reg


def prior_warmup(epoch: float, warmup_epochs: float = 5.0) -> float:
    """Linear warm-up factor of ``lambda_prior`` (§12: T = 5 epochs): ``min(1, epoch / T)``.

    Args:
        epoch: training progress in (fractional) epochs, starting at 0.
    """
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch) / warmup_epochs))


def enough_joints(valid: Tensor, min_joints: int = 10) -> Tensor:
    """Samples to keep (§12 drops samples with fewer than 10 valid joints): bool ``[B]``."""
    return valid.sum(-1) >= min_joints


# ------------------------------------------------------------------------------------------------
# Everything together
# ------------------------------------------------------------------------------------------------

@dataclass
class SkinningLossConfig:
    """Weights and switches of Eq. 7 (defaults: paper §12).

    Attributes:
        lambda_sym, lambda_1, lambda_anchor: Eq. 22 weights (1, 1, 0.25).
        lambda_ent, lambda_prior: Eq. 27 weights (0.02, 0.1).
        k_s, gamma: Top-K_s mask (4, 0).
        beta: proximity prior sharpness, Eq. 24 (15).
        prior_window: frames averaged in Eq. 25 (None: all frames of the sample).
        warmup_epochs: linear warm-up of ``lambda_prior`` (5).
        use_sym, use_l1, use_anchor, use_ent, use_prior: ablation switches for the five terms.
    """

    lambda_sym: float = 1.0
    lambda_1: float = 1.0
    lambda_anchor: float = 0.25
    lambda_ent: float = 0.02
    lambda_prior: float = 0.1
    k_s: int = 4
    gamma: float = 0.0
    beta: float = 15.0
    prior_window: int | None = None
    warmup_epochs: float = 5.0
    use_sym: bool = True
    use_l1: bool = True
    use_anchor: bool = True
    use_ent: bool = True
    use_prior: bool = True


def skinning_loss(pred: Tensor, teacher: Tensor, valid: Tensor, points: Tensor, joints: Tensor, parents: Tensor,
                  cfg: SkinningLossConfig | None = None, epoch: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 7 on a batch: masks, renormalization and the five terms, with ablation switches.

    Args:
        pred: float ``[B, F, N, J]`` row-stochastic predictions on frames 0..K (frame 0 = anchor).
        teacher: float ``[B, N, J]`` point teacher (Eq. 6).
        valid: bool ``[B, J]``.
        points: float ``[B, F, N, 3]`` query positions per frame (for the prior, Eq. 24).
        joints: float ``[B, J, 3]`` anchor-normalized skeleton; parents long ``[B, J]``.
        cfg: weights and switches.
        epoch: training progress in epochs for the prior warm-up (no warm-up when None).
    Returns:
        ``(total scalar, parts)`` where parts holds the unweighted terms and the prior factor as floats.
    """
    cfg = cfg or SkinningLossConfig()
    if pred.ndim != 4 or teacher.shape != (pred.shape[0], pred.shape[2], pred.shape[3]):
        raise ValueError(f"pred must be [B, F, N, J] and teacher [B, N, J]; got {list(pred.shape)} and "
                         f"{list(teacher.shape)}")
    mask = batch_topk_mask(teacher, valid, cfg.k_s, cfg.gamma)
    y = masked_renormalize(teacher, mask)
    w = masked_renormalize(pred, mask[:, None])
    l_sym = sym_kl_loss(w, y, mask)
    l_1 = l1_loss(w, y, mask)
    l_anchor = anchor_skin_loss(w, y, mask)
    l_ent = entropy_loss(w, mask)
    prior = averaged_prior(proximity_prior(points, joints, parents, valid, cfg.beta), cfg.prior_window)
    l_prior = prior_loss(w, prior, mask)
    factor = 1.0 if epoch is None else prior_warmup(epoch, cfg.warmup_epochs)
    l_cons = consistency_loss(l_sym, l_1, l_anchor,
                              cfg.lambda_sym if cfg.use_sym else 0.0,
                              cfg.lambda_1 if cfg.use_l1 else 0.0,
                              cfg.lambda_anchor if cfg.use_anchor else 0.0)
    l_reg = regularization_loss(l_ent, l_prior,
                                cfg.lambda_ent if cfg.use_ent else 0.0,
                                cfg.lambda_prior * factor if cfg.use_prior else 0.0)
    total = skinning_total_loss(l_cons, l_reg)
    parts = {"sym": float(l_sym.detach()), "l1": float(l_1.detach()), "anchor": float(l_anchor.detach()),
             "ent": float(l_ent.detach()), "prior": float(l_prior.detach()), "prior_factor": factor,
             "total": float(total.detach())}
    return total, parts
