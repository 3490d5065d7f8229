"""Skinning metrics: the paper's masked operators (§8.1, Eq. 17-18), teacher-based temporal consistency
(§13, Eq. 35-39) and the static Precision/Recall/L1 protocol of Puppeteer.

The Top-K mask, ``R`` (Eq. 17), ``<., m>`` (Eq. 18) and the element-wise KL / entropy terms accept
numpy arrays or torch tensors (autograd flows through the torch path), so the training losses import
them from here. Shapes use ``N`` points (or vertices) and ``J`` joints; leading batch axes are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EPS = 1e-8
Array = Any  # numpy.ndarray or torch.Tensor


def _is_torch(x: Array) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _sum(x: Array, axis, keepdims: bool = False) -> Array:
    if _is_torch(x):
        return x.sum(dim=axis, keepdim=keepdims)
    return np.sum(x, axis=axis, keepdims=keepdims)


def _log(x: Array) -> Array:
    if _is_torch(x):
        import torch
        return torch.log(x)
    return np.log(x)


def _to_float(x: Array, like: Array) -> Array:
    if _is_torch(like):
        return x.to(like.dtype)
    return np.asarray(x, dtype=np.result_type(like.dtype, np.float32))


def topk_mask(teacher: Array, k: int = 4, gamma: float = 0.0, valid: Array | None = None) -> Array:
    """The Top-K_s mask ``m`` of paper §8.1.

    ``m_ij = 1`` for the ``k`` largest teacher weights of point ``i`` among valid joints, ``gamma``
    for the other valid joints, ``0`` for invalid joints (``valid_j = 0``).

    Args:
        teacher: float ``[..., N, J]`` teacher weights ``W^T``.
        k: ``K_s`` (paper: 4); capped at the number of valid joints.
        gamma: mask value of the valid non-top-k joints, in ``[0, 1)`` (paper: 0).
        valid: optional bool/0-1 ``[J]`` (or broadcastable) valid-joint mask ``V``.
    Returns:
        ``[..., N, J]`` mask of the teacher's type and dtype.
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_joints = teacher.shape[-1]
    if _is_torch(teacher):
        import torch
        valid_t = (torch.ones(n_joints, dtype=torch.bool, device=teacher.device) if valid is None
                   else torch.as_tensor(valid, device=teacher.device).bool())
        valid_t = valid_t.expand(teacher.shape)
        scores = teacher.detach().masked_fill(~valid_t, float("-inf"))
        kk = min(k, n_joints)
        top = torch.zeros_like(valid_t)
        top.scatter_(-1, torch.topk(scores, kk, dim=-1).indices, True)
        top &= valid_t
        mask = torch.where(top, torch.ones_like(teacher), torch.full_like(teacher, gamma))
        return torch.where(valid_t, mask, torch.zeros_like(teacher))
    teacher = np.asarray(teacher)
    valid_np = np.ones(n_joints, dtype=bool) if valid is None else np.asarray(valid).astype(bool)
    valid_np = np.broadcast_to(valid_np, teacher.shape)
    scores = np.where(valid_np, teacher, -np.inf)
    kk = min(k, n_joints)
    idx = np.argpartition(-scores, kk - 1, axis=-1)[..., :kk]
    top = np.zeros(teacher.shape, dtype=bool)
    np.put_along_axis(top, idx, True, axis=-1)
    top &= valid_np
    dtype = np.result_type(teacher.dtype, np.float32)
    return np.where(top, 1.0, np.where(valid_np, gamma, 0.0)).astype(dtype)


def masked_renormalize(z: Array, mask: Array, eps: float = EPS) -> Array:
    """``R(Z; m)``, Eq. 17: keep the entries where ``m > 0`` and renormalize each row to sum to 1.

    ``R(Z; m) = Z * 1[m > 0] / (sum_j Z_:,j 1[m_:,j > 0] + eps)``.

    Args:
        z: float ``[..., N, J]`` weights.
        mask: ``[..., N, J]`` mask ``m``.
    Returns:
        ``[..., N, J]``.
    """
    support = _to_float(mask > 0, z)
    kept = z * support
    return kept / (_sum(kept, -1, keepdims=True) + eps)


def masked_average(f: Array, mask: Array) -> Array:
    """``<f, m>``, Eq. 18: ``sum_ij f_ij m_ij / (sum_ij m_ij / N)`` over the last two axes ``[N, J]``.

    The mask-weighted sum of ``f`` divided by the mean mask mass per point: with ``K_s = 4`` and
    ``gamma = 0`` it is ``sum_ij f_ij m_ij / 4``, i.e. it grows with the number of points ``N``
    (the scale of the paper's Table 3).

    Args:
        f: float ``[..., N, J]`` per-point, per-joint values.
        mask: ``[..., N, J]``.
    Returns:
        ``[...]`` (a scalar for 2-D inputs).
    """
    n_points = f.shape[-2]
    mass = _sum(mask, (-2, -1)) / n_points
    return _sum(f * mask, (-2, -1)) / mass


def kl_terms(p: Array, q: Array, eps: float = EPS) -> Array:
    """Element-wise ``KL(p || q)`` terms ``p_ij (log(p_ij + eps) - log(q_ij + eps))`` ``[..., N, J]``."""
    return p * (_log(p + eps) - _log(q + eps))


def entropy_terms(p: Array, eps: float = EPS) -> Array:
    """Element-wise entropy terms ``-p_ij log(p_ij + eps)`` ``[..., N, J]`` (``0 log 0 = 0``)."""
    return -p * _log(p + eps)


def teacher_l1(pred_tilde: Array, teacher_tilde: Array, mask: Array) -> Array:
    """One frame's term of Eq. 35: ``<|W~^(k) - Y~|, m>``."""
    return masked_average(abs(pred_tilde - teacher_tilde), mask)


def teacher_symkl(pred_tilde: Array, teacher_tilde: Array, mask: Array, eps: float = EPS) -> Array:
    """One frame's term of Eq. 36: ``<KL(Y~ || W~^(k)) + KL(W~^(k) || Y~), m>``."""
    return masked_average(kl_terms(teacher_tilde, pred_tilde, eps) + kl_terms(pred_tilde, teacher_tilde, eps), mask)


def masked_entropy(pred_tilde: Array, mask: Array, eps: float = EPS) -> Array:
    """One frame's term of Eq. 37: ``-<W~^(k) log W~^(k), m>``."""
    return masked_average(entropy_terms(pred_tilde, eps), mask)


@dataclass
class SkinConsistency:
    """Teacher-based skinning consistency of one clip (paper §13.2).

    Attributes:
        l1: Eq. 35, mean over non-anchor frames (NaN when K == 1).
        symkl: Eq. 36, mean over non-anchor frames.
        entropy: Eq. 37, mean over all frames.
        per_frame_l1, per_frame_symkl: float64 ``[K]`` the per-frame terms; entry 0 is NaN.
        per_frame_entropy: float64 ``[K]``.
    """

    l1: float
    symkl: float
    entropy: float
    per_frame_l1: np.ndarray
    per_frame_symkl: np.ndarray
    per_frame_entropy: np.ndarray


def skin_consistency(weights: np.ndarray, teacher: np.ndarray | None = None, k: int = 4, gamma: float = 0.0,
                     valid: np.ndarray | None = None, eps: float = EPS) -> SkinConsistency:
    """L1(B,C->A), SymKL(B,C<->A) and Entropy (Eq. 35-37) of per-frame weights against a teacher.

    Args:
        weights: float ``[K, N, J]`` predicted weights per frame (frame 0 is the anchor), columns in
            the teacher's joint order.
        teacher: float ``[N, J]`` anchor teacher ``W^T``; default ``weights[0]``.
        k, gamma, valid: Top-K_s mask options (:func:`topk_mask`).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 3:
        raise ValueError(f"skin_consistency: weights must be [K, N, J], got {list(weights.shape)}")
    teacher = weights[0] if teacher is None else np.asarray(teacher, dtype=np.float64)
    if teacher.shape != weights.shape[1:]:
        raise ValueError(f"skin_consistency: teacher {list(teacher.shape)} does not match weights "
                         f"{list(weights.shape[1:])}")
    mask = topk_mask(teacher, k, gamma, valid)
    y = masked_renormalize(teacher, mask, eps)
    w = masked_renormalize(weights, mask[None], eps)  # [K, N, J]
    n = len(weights)
    l1 = np.full(n, np.nan)
    kl = np.full(n, np.nan)
    for f in range(1, n):
        l1[f] = teacher_l1(w[f], y, mask)
        kl[f] = teacher_symkl(w[f], y, mask, eps)
    ent = np.array([masked_entropy(w[f], mask, eps) for f in range(n)], dtype=np.float64)
    nan = float("nan")
    return SkinConsistency(
        l1=float(np.mean(l1[1:])) if n > 1 else nan,
        symkl=float(np.mean(kl[1:])) if n > 1 else nan,
        entropy=float(np.mean(ent)),
        per_frame_l1=l1, per_frame_symkl=kl, per_frame_entropy=ent)


def joint_temporal_variance(weights: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Per-joint weighted temporal variance ``Cons_j``, Eq. 38.

    ``Cons_j = sum_i var_ij wbar_ij / (sum_i wbar_ij + eps)`` with ``wbar`` and ``var`` the mean and
    (population) variance of ``W^(k)_ij`` over the given frames (paper: frames {0, 1, 2}).

    Args:
        weights: float ``[K_var, N, J]`` predicted weights on the chosen frames.
    Returns:
        float64 ``[J]``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 3:
        raise ValueError(f"joint_temporal_variance: weights must be [K, N, J], got {list(weights.shape)}")
    mean = weights.mean(axis=0)
    var = weights.var(axis=0)
    return (var * mean).sum(axis=0) / (mean.sum(axis=0) + eps)


def cons_improvement(cons_orig: np.ndarray, cons_ft: np.ndarray) -> np.ndarray:
    """Per-joint improvement ``Delta_j = Cons_j^orig - Cons_j^ft``, Eq. 39 (positive = less jitter)."""
    return np.asarray(cons_orig, dtype=np.float64) - np.asarray(cons_ft, dtype=np.float64)


@dataclass
class SkinningQuality:
    """Static skinning quality (Puppeteer protocol): Precision, Recall and average L1 per vertex."""

    precision: float
    recall: float
    avg_l1: float
    n_vertices: int


def prune_weights(weights: np.ndarray, abs_threshold: float = 1e-3, rel_threshold: float = 0.15) -> np.ndarray:
    """Zero weights below ``abs_threshold`` and below ``rel_threshold`` x the row maximum, then renormalize rows.

    Args:
        weights: float ``[V, J]``.
    Returns:
        float64 ``[V, J]`` (an all-zero row stays zero).
    """
    w = np.asarray(weights, dtype=np.float64)
    row_max = w.max(axis=1, keepdims=True)
    w = np.where((w < abs_threshold) | (w < rel_threshold * row_max), 0.0, w)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def static_skinning_quality(pred: np.ndarray, gt: np.ndarray, abs_threshold: float = 1e-3,
                            rel_threshold: float = 0.15, gt_tolerance: float = 0.01) -> SkinningQuality:
    """Precision, Recall and average L1 of predicted weights given the ground-truth skeleton.

    Predicted weights are pruned (:func:`prune_weights`); only vertices whose ground-truth row sums
    to ``1 +- gt_tolerance`` are scored. Over (vertex, joint) pairs: Precision =
    ``|pred > 0 & gt > 0| / |pred > 0|``, Recall = ``|pred > 0 & gt > 0| / |gt > 0|``; average L1 =
    ``sum |pred - gt| / V_kept``.

    Args:
        pred: float ``[V, J]`` predicted weights, columns = the ground-truth joints.
        gt: float ``[V, J]`` ground-truth weights.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"static_skinning_quality: pred {list(pred.shape)} and gt {list(gt.shape)} "
                         "must both be [V, J]")
    keep = np.abs(gt.sum(axis=1) - 1.0) <= gt_tolerance
    if not keep.any():
        raise ValueError("static_skinning_quality: no ground-truth row sums to 1; cannot score")
    p, g = prune_weights(pred[keep], abs_threshold, rel_threshold), gt[keep]
    hit = ((p > 0) & (g > 0)).sum()
    n_pred, n_gt = (p > 0).sum(), (g > 0).sum()
    return SkinningQuality(
        precision=float(hit / n_pred) if n_pred else float("nan"),
        recall=float(hit / n_gt) if n_gt else float("nan"),
        avg_l1=float(np.abs(p - g).sum() / len(g)),
        n_vertices=int(keep.sum()))
