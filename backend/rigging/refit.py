"""Refit: weights and per-frame bone motion re-solved for a skeleton the user edited, from the same frames.

After a rig is made, the user may move, add, delete or reparent bones (Blender's Edit Mode) and ask
for a refit: the motion fit (:func:`backend.rigging.fit.fit_motion`, articulated by default) runs again
with that skeleton, its joints held where the user put them. The networks are not used: the fit starts
from each vertex's nearest bone (:func:`nearest_bone_weights`) and refines the weights from the motion.

The skeleton arrives as bones named by the user, each with its parent's name (or none), head and tail
(:func:`skeleton_from_bones`). The skeleton needs exactly one root bone: the root moves freely (rotation
and translation), every other bone rotates about its head in its parent's frame, so no bone can
separate from its parent. Deleting the root bone in Blender leaves its children unparented (several
roots); that skeleton is refused with an error naming the roots, since the motion fit ties every bone
to one root and an extra root would have no joint to turn about (parent them under one bone first).
The result keeps the user's names, so the caller maps weights and motion back by name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np

from backend.normalize import anchor_normalize
from backend.rigging.fit import FitCancelled, fit_motion, prune_weights
from backend.rigging.pipeline import (RigCancelled, RigConfig, _clean, _Progress, playback_quality, rig_rest_shape,
                                     skin_reach)
from backend.rigging.result import RigResult
from backend.rigging.rig_skeleton import RigSkeleton
from backend.sequence import MeshSequence, colocated_representatives

log = logging.getLogger(__name__)

MAX_BONES = 1024  # a refit request with more bones is refused (RigConfig.max_joints' upper bound)
REFIT_STAGES = (("normalize", 0.02), ("skinning", 0.03), ("fit", 0.85), ("report", 0.10))


class SkeletonInputError(ValueError):
    """An edited skeleton that cannot be rigged (the message names the bone and the problem)."""


def skeleton_from_bones(names: Sequence[str], parents: Sequence[str | None], heads: Any, tails: Any) -> RigSkeleton:
    """A :class:`RigSkeleton` from bones given by name, parents first (reordered breadth-first from the roots).

    Args:
        names: ``J`` unique, non-empty bone names.
        parents: ``J`` parent bone names, ``None`` (or ``""``) for a root bone.
        heads: float ``[J, 3]`` bone heads (the joints), in the frames' space and units.
        tails: float ``[J, 3]`` bone tails, same space.
    Returns:
        the skeleton with ``names`` reordered so that parents precede children (the root, then its
        children level by level).
    Raises:
        SkeletonInputError: no bones, too many, a repeated or empty name, a parent that is not a bone, a
            cycle, more than one root bone, a shape or non-finite coordinate, or a bone whose tail is on its head.
    """
    names = [str(n) for n in names]
    J = len(names)
    if J == 0:
        raise SkeletonInputError("the skeleton has no bones")
    if J > MAX_BONES:
        raise SkeletonInputError(f"the skeleton has {J} bones; at most {MAX_BONES} can be fitted")
    if len(parents) != J:
        raise SkeletonInputError(f"{len(parents)} parent entries for {J} bones")
    if any(not n for n in names):
        raise SkeletonInputError("every bone needs a non-empty name")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise SkeletonInputError(f"bone name {n!r} is used twice")
        seen.add(n)
    index = {n: j for j, n in enumerate(names)}
    parent_index = np.full(J, -1, dtype=np.int64)
    for j, p in enumerate(parents):
        if p is None or p == "":
            continue
        if str(p) not in index:
            raise SkeletonInputError(f"bone {names[j]!r} has parent {p!r}, which is not a bone of the skeleton")
        if str(p) == names[j]:
            raise SkeletonInputError(f"bone {names[j]!r} is its own parent")
        parent_index[j] = index[str(p)]
    heads = np.asarray(heads, dtype=np.float64)
    tails = np.asarray(tails, dtype=np.float64)
    for label, arr in (("heads", heads), ("tails", tails)):
        if arr.shape != (J, 3):
            raise SkeletonInputError(f"bone {label} must have shape [J, 3] = [{J}, 3], got {list(arr.shape)}")
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if len(bad):
            raise SkeletonInputError(f"bone {names[int(bad[0])]!r} has a non-finite {label[:-1]}")
    zero = np.flatnonzero(np.linalg.norm(tails - heads, axis=1) <= 0.0)
    if len(zero):
        raise SkeletonInputError(f"bone {names[int(zero[0])]!r} has its tail on its head (zero length)")
    order = _parents_first(parent_index, names)
    roots = [names[j] for j in np.flatnonzero(parent_index < 0)]
    if len(roots) > 1:
        shown = ", ".join(repr(n) for n in roots[:6]) + (", ..." if len(roots) > 6 else "")
        raise SkeletonInputError(f"the skeleton has {len(roots)} root bones ({shown}); a rig needs one: parent "
                                 "them under one bone (e.g. after deleting the root bone)")
    inverse = np.empty(J, dtype=np.int64)
    inverse[order] = np.arange(J)
    new_parents = np.where(parent_index[order] >= 0, inverse[np.maximum(parent_index[order], 0)], -1)
    return RigSkeleton(joints=heads[order], parents=new_parents.astype(np.int32), names=[names[j] for j in order],
                       tails=tails[order])


def _parents_first(parents: np.ndarray, names: list[str]) -> np.ndarray:
    """Breadth-first order from the roots; raises SkeletonInputError naming a bone on a cycle."""
    children: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents.tolist()):
        if p >= 0:
            children[p].append(j)
    order = [j for j, p in enumerate(parents.tolist()) if p < 0]
    if not order:
        raise SkeletonInputError(f"the skeleton has no root bone: the parents form a cycle (through {names[0]!r})")
    i = 0
    while i < len(order):
        order.extend(children[order[i]])
        i += 1
    if len(order) != len(parents):
        missing = sorted(set(range(len(parents))) - set(order))
        raise SkeletonInputError(f"the parents form a cycle through bone {names[missing[0]]!r}")
    return np.asarray(order, dtype=np.int64)


def nearest_bone_weights(verts: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """One-hot weights ``float32 [V, J]``: each vertex on the bone whose segment (head to tail) is nearest.

    Args:
        verts: float ``[V, 3]``; heads, tails: float ``[J, 3]``, same space.
    """
    v = np.asarray(verts, dtype=np.float64)
    a = np.asarray(heads, dtype=np.float64)
    ab = np.asarray(tails, dtype=np.float64) - a  # [J, 3]
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-300)
    V, J = len(v), len(a)
    nearest = np.empty(V, dtype=np.int64)
    chunk = max(1, (1 << 22) // max(J, 1))
    for s in range(0, V, chunk):
        d = v[s:s + chunk, None, :] - a[None]  # [c, J, 3]
        t = np.clip((d * ab[None]).sum(axis=2) / length2, 0.0, 1.0)
        gap = d - t[..., None] * ab[None]
        nearest[s:s + chunk] = (gap * gap).sum(axis=2).argmin(axis=1)
    weights = np.zeros((V, J), dtype=np.float32)
    weights[np.arange(V), nearest] = 1.0
    return weights


def refit_sequence(seq: MeshSequence, skeleton: RigSkeleton, config: RigConfig | None = None,
                   progress: Callable[[str, float], None] | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> RigResult:
    """Re-solve weights and per-frame motion of ``seq`` for a given (edited) ``skeleton``; no networks.

    The joints stay where the skeleton has them (``RigConfig.refine_joints`` is not applied), so the
    result's joints, tails and names are the skeleton's. Used options: ``max_influences``, ``refine``,
    ``refine_iters``, ``motion_candidates`` (sized to the mesh: :meth:`RigConfig.motion_fit_config`),
    ``articulated``, ``solve_rest`` (the result's ``anchor_verts`` are then the solved rest shape, which the
    add-on puts on the rigged mesh), ``up_axis``.

    Args:
        seq: the frames (frame 0 is the anchor: the skeleton's rest pose, and the start of the rest shape with
            ``solve_rest``).
        skeleton: joints, parents (parents first, one root), names, tails in ``seq``'s space;
            ``init_weights [V, J]`` optional (default: :func:`nearest_bone_weights`).
    Returns:
        :class:`RigResult` in the sequence's units; ``skin_instability`` is all zeros (no heatmap stage),
        ``stats["skeleton_source"] == "edited"``, ``stats["recon_mean"]`` etc. are those of this skeleton.
    Raises:
        RigCancelled, SkeletonInputError (a skeleton that does not fit the sequence), ValueError (options).
    """
    cfg = config or RigConfig()
    cfg.validate()
    if not isinstance(seq, MeshSequence):
        raise TypeError(f"refit_sequence needs a MeshSequence, got {type(seq).__name__}")
    track = _Progress(progress, should_cancel, stages=REFIT_STAGES)
    t_start = time.perf_counter()
    K, V = seq.n_frames, seq.n_verts
    parents = np.asarray(skeleton.parents, dtype=np.int32).reshape(-1)
    J = len(parents)
    joints_user = np.asarray(skeleton.joints, dtype=np.float64)
    if joints_user.shape != (J, 3) or np.any(parents >= np.arange(J)):
        raise SkeletonInputError("the skeleton's joints must be [J, 3] with parents before children "
                                 "(use skeleton_from_bones)")
    names = list(skeleton.names) or [f"bone_{j:02d}" for j in range(J)]
    tails_user = (np.asarray(skeleton.tails, dtype=np.float64) if skeleton.tails is not None
                  else joints_user + np.array([0.0, 0.0, 1e-3]))

    track("normalize", 0.0)
    verts_n, box = anchor_normalize(seq.verts, cfg.up_axis)
    anchor = verts_n[0]
    diag = float(np.linalg.norm(np.ptp(anchor.astype(np.float64), axis=0)))
    joints_n = box.apply(joints_user).astype(np.float64)
    tails_n = box.apply(tails_user).astype(np.float64)

    track("skinning", 0.0)
    if skeleton.init_weights is not None:
        start = np.asarray(skeleton.init_weights, dtype=np.float32)
        if start.shape != (V, J):
            raise SkeletonInputError(f"init_weights must be [V, J] = [{V}, {J}], got {list(start.shape)}")
    else:
        start = nearest_bone_weights(anchor, joints_n, tails_n)
    rig_weights = prune_weights(start, cfg.max_influences)

    fit_cfg = cfg.motion_fit_config(V, refine_joints=False)
    track("fit", 0.0)
    try:
        fit = fit_motion(anchor, verts_n, rig_weights, parents, joints_n, seq.faces, fit_cfg,
                         progress=lambda f: track("fit", f), should_cancel=should_cancel)
    except FitCancelled as exc:
        raise RigCancelled(str(exc)) from exc
    transforms_n = fit.transforms
    seams = colocated_representatives(verts_n)
    rest_n, rest_untangled, rest_moved = rig_rest_shape(anchor, fit.rest, seq.faces, seams, diag)

    track("report", 0.0)
    weights = fit.weights
    recon, quality = playback_quality(rest_n, verts_n, weights, transforms_n, joints_n, parents,
                                      seams, diag, chunked=V > cfg.proxy_threshold,
                                      progress=lambda f: track("report", f))
    track("report", 1.0)
    track.finish()
    stats: dict[str, Any] = {
        "name": seq.name, "frames": K, "vertices": V, "faces": int(len(seq.faces)), "joints": J,
        "roots": int((parents < 0).sum()), "models": None, "config": {**asdict(cfg), "heatmap": False,
                                                                      "refine_joints": False},
        **quality,
        "fit_rmse_history": [r / diag for r in fit.rmse_history], "fit_seconds": fit.seconds, "fit_start": fit.start,
        "fit_keyframes": fit.keyframes, "bones_borrowing_motion": int(fit.borrowed.sum()),
        "articulated": bool(cfg.articulated),
        "joints_moved_max": 0.0,
        "rest_moved_max": rest_moved,
        "rest_vertices_untangled": rest_untangled,
        **skin_reach(rest_n, weights, joints_n, tails_n, parents, names, diag),
        "skeleton_source": "edited", "skeleton_from_motion": None,
        "skin_frames": [], "skin_instability_mean": None, "skin_instability_mean_per_frame": None,
        "pjdd": None, "topology_flicker": None, "mcjd": None, "joint_drift": None, "stability": None,
        "seconds": time.perf_counter() - t_start, "stage_seconds": dict(track.timings),
    }
    log.info("%s: refit %d bones (%d roots): recon mean %.4f of the diagonal, %.1f s", seq.name, J,
             stats["roots"], stats["recon_mean"], stats["seconds"])
    return RigResult(
        anchor_verts=np.asarray(seq.verts[0] if fit.rest is None else box.invert(rest_n), dtype=np.float32),
        faces=np.asarray(seq.faces, dtype=np.int32),
        joints=joints_user.astype(np.float32),
        parents=parents.astype(np.int32),
        joint_names=names,
        weights=weights.astype(np.float32),
        bone_transforms=box.invert_transforms(transforms_n),
        frame_joints_count=np.full(K, -1, dtype=np.int32),
        recon_error=recon,
        skin_instability=np.zeros((K, V), dtype=np.float32),
        fps=float(seq.fps) if seq.fps else 30.0,
        stats=_clean(stats),
        tails=tails_user.astype(np.float32),
    )
