"""The motion fit's driver: :func:`fit_motion`, its config and result (see the package docstring)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from backend.skeleton import validate_tree

from backend.sequence import colocated_representatives

from .articulated import (ArticulatedGaussNewton, JointRegion, articulate_free_motion, project_to_articulated,
                          refine_joints, subtrees, update_articulated_transforms)
from .solve import (bones_in_reach, candidate_bones, mesh_neighbours, rest_move_limits, restrict_to_reach,
                    update_rest_pose, update_transforms, update_weights)
from .sparse import blend_sparse, bone_groups, one_hot, prune_weights, rms_vertex_error, sparse_to_dense, to_sparse_rows
from .starts import cluster_by_motion, initial_transforms, match_clusters_to_bones, split_motion_clusters

log = logging.getLogger(__name__)

START_SHARE = 0.2
"""Share of a fit's progress given to its starts (clusterings, trial alternations): about their share of its time."""

FREE_START_SHARE = 0.3
"""Share of an articulated fit's progress given to its free start (``FitConfig.free_start_iters``): about its time."""


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
            the others are dropped. Default: every start is tried (at most three): on the Fox survey the
            start that began 4x worse than the best ended 15 % lower (docs/fitting.md).
        max_fit_frames: when the weights are refined and the clip has more frames than this (> 0), the
            start and the alternations use this many evenly spaced keyframes (the first and the last
            included); then, with the weights fixed, the other frames' transforms get a Kabsch start and up
            to ``keyframe_sweeps`` block-coordinate sweeps (fewer when a sweep lowers their RMS error by less
            than ``tol``); the keyframes keep their refined transforms. 0: all frames.
        candidates: a vertex's candidate bones in the weight solve: ``"motion"`` (its current support plus
            the ``motion_candidates`` bones whose rigid motion alone reproduces it best, re-chosen every
            alternation) or ``"tree"`` (its initial support plus, with ``neighbour_candidates``, their
            tree neighbours).
        motion_candidates: extra candidate bones per vertex for ``candidates="motion"``.
        neighbour_candidates: add the tree neighbours (parent, children) of a vertex's initial support to
            its candidate bones (``candidates="tree"``).
        max_bone_distance: a vertex's weights may only use bones within this share of the anchor box diagonal of
            it (its two nearest bones always; :func:`~.solve.bones_in_reach`), so posing a bone moves no skin
            far from it; 0: any bone (needs ``joints``). Without it the weight solve uses far bones as small
            helpers that lower the error: a horse's tail weighted 0.07 on its head bone.
        max_bone_hops: with ``max_bone_distance``, a vertex's bones are also at most this many bones along the
            tree from its nearest bone, unless nearer than ``NEAR_ANY_BRANCH`` of the reach (None: no limit, the
            default). The robot's right foot, standing beside the left, is weighted 0.55 on the left shin; 4 hops
            stop that but raise a few corpus creatures' largest error (measured in ``docs/fitting.md``).
        qp_iters: projected-gradient steps that pick each vertex's support before its exact solve.
        tol: stop refining when one alternation lowers the RMS error by less than this fraction.
        chunk: at most this many vertices per batch in the weight solve (bounds memory).
        articulated: constrain the motion to the skeleton (see :mod:`.articulated`): every non-root bone
            rotates about its own joint in its parent's frame, so a child's joint stays where its parent
            carries it on every frame; only roots translate. Needs ``joints``. Every start is projected
            onto this set and the transform update is the articulated block update. False: every bone
            has its own free rigid motion per frame (bones may separate at their joints).
        articulated_lm_steps: with ``articulated``, Levenberg-Marquardt steps on all the local rotations at
            once after each per-bone sweep (:class:`.articulated.ArticulatedGaussNewton`): per-bone descent
            alone creeps along chains of bones that share vertices.
        articulated_block_sweep: with ``articulated``, run the exact per-bone sweep before the joint steps.
        free_start_iters: with ``articulated``, ``refine_joints`` and the weights refined, the first this many of
            the ``refine_iters`` alternations fit free rigid bones (starts and trials included, no rest solve);
            then the joints move to where those motions turn (:func:`.articulated.articulate_free_motion`) and
            the articulated fit goes on from the free weights for the remaining alternations. A skeleton placed
            from the shape is often off the clip's real pivots, and an articulated fit started from it stays near
            them: on CesiumMan's walk (37k vertices through a proxy) 12 free alternations lowered the error from
            0.034 to 0.027 % in less time (docs/fitting.md). 0: articulated from the start.
        free_start_joint_regularisation: the pull of the joints toward the skeleton's in the free start's joint
            solve (as ``joint_regularisation``). 100x the refinement's: free bones that barely move, or that help
            other bones' skin, turn about points the data hardly fixes; at 5e-4 the corpus creatures' joints
            moved away from their artists' (CD-J2J 0.0336 -> 0.0392) and 10 % of their skin came to be led by far
            bones (was 7 %); at 0.05 0.0353 and 8 %, the real clips' error as low (docs/fitting.md).
        refine_joints: with ``articulated``, after each transform update of the refinement (not of the
            start trials) move the joints (and the root's path) to their least-squares best for the current
            rotations, regularised toward the given joints by ``joint_regularisation`` (relative to the data
            term); kept only where the error drops. :attr:`MotionFit.joints` holds the result.
        keep_joints_inside: with ``refine_joints`` and ``faces``, a joint the step would carry out of the
            anchor mesh (generalized winding number, :func:`backend.metrics.winding_numbers`) is held at the
            last point inside on its step (:func:`.articulated.refine_joints` ``region``).
        solve_rest: after each weight update of the refinement (not of the start trials), solve every vertex's
            rest position for the current weights and transforms (:func:`~.solve.update_rest_pose`), kept where it
            lowers that vertex's error; :attr:`MotionFit.rest` holds the result. The anchor frame is one pose of
            the clip, not the pose the weights blend from; a rest shape off it lowers the error where bones meet.
        rest_regularisation: with ``solve_rest``, the pull of each rest position toward the anchor, per frame and
            relative to that vertex's data term.
        rest_max_edge_share: with ``solve_rest`` and ``faces``, a rest position stays within this share of its
            vertex's shortest edge of the anchor (:func:`~.solve.rest_move_limits`); without it a vertex led by
            one bone could move where that bone's motion fits it best, however far: the running Fox's chest
            skin was pulled 2.85 % of the diagonal down into its tucked foreleg, a visible pinch. inf: no limit.
        weld_seams: vertices at the same position on every frame (the seams of flat-shaded or UV-split
            meshes) are fitted as one vertex, with the faces remapped so the weight smoothing sees the
            seam as connected, and get identical weights (so the seams cannot open).
        seam_tol: grid step, relative to the anchor box diagonal, of the co-location test
            (:func:`backend.sequence.colocated_representatives`).
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
    start_trial_ratio: float = float("inf")
    start_trial_iters: int = 2
    max_fit_frames: int = 32
    keyframe_sweeps: int = 5
    candidates: str = "motion"
    motion_candidates: int = 6
    neighbour_candidates: bool = True
    max_bone_distance: float = 0.0
    max_bone_hops: int | None = None
    qp_iters: int = 10
    tol: float = 1e-3
    chunk: int = 16384
    articulated: bool = False
    articulated_lm_steps: int = 3
    articulated_block_sweep: bool = True
    free_start_iters: int = 0
    free_start_joint_regularisation: float = 0.05
    refine_joints: bool = True
    joint_regularisation: float = 5e-4
    keep_joints_inside: bool = True
    solve_rest: bool = False
    rest_regularisation: float = 1e-3
    rest_max_edge_share: float = 0.25
    weld_seams: bool = True
    seam_tol: float = 1e-6

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
        if self.free_start_iters < 0 or not self.free_start_joint_regularisation >= 0:
            raise ValueError("free_start_iters and free_start_joint_regularisation must be >= 0")


@dataclass
class MotionFit:
    """Result of :func:`fit_motion`.

    Attributes:
        transforms: float64 ``[K, J, 4, 4]`` rigid transforms from the rest (the anchor, or ``rest``) to frame ``k``.
        weights: float32 ``[V, J]`` rows on the simplex, at most ``max_influences`` non-zero.
        borrowed: bool ``[J]`` bones whose motion was borrowed from another bone at the start.
        rmse_history: RMS per-vertex error (input units) after the start and after each alternation;
            non-increasing.
        seconds: wall time of the fit.
        start: the start that was refined: ``given`` (the given weights' Kabsch start), ``weights`` or
            ``split`` (the motion clusterings of :class:`FitConfig` ``init``).
        keyframes: the frames the weights were refined on (``FitConfig.max_fit_frames``), or None for all;
            ``rmse_history`` is then measured on them.
        welded: vertices merged into a co-located representative (``FitConfig.weld_seams``).
        joints: float64 ``[J, 3]`` the anchor joints the transforms are articulated about (the given ones,
            or refined with ``FitConfig.refine_joints``); None when no joints were given.
        rest: float64 ``[V, 3]`` the rest positions the transforms pose (``FitConfig.solve_rest``); None: the
            anchor itself.
    """

    transforms: np.ndarray
    weights: np.ndarray
    borrowed: np.ndarray
    rmse_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    start: str = "given"
    keyframes: list[int] | None = None
    welded: int = 0
    joints: np.ndarray | None = None
    rest: np.ndarray | None = None


class _TransformStep:
    """The transform side of the fit, free or articulated (``FitConfig.articulated``)."""

    def __init__(self, anchor: np.ndarray, frames_vm: np.ndarray, parents: np.ndarray, joints: np.ndarray | None,
                 cfg: FitConfig, faces: np.ndarray | None = None):
        self.anchor, self.frames_vm, self.parents = anchor, frames_vm, parents
        self.articulated, self.lm_steps = cfg.articulated, cfg.articulated_lm_steps
        self.block_sweep = cfg.articulated_block_sweep
        self.refine_joints, self.joint_regularisation = cfg.articulated and cfg.refine_joints, cfg.joint_regularisation
        self.joints = None if joints is None else np.asarray(joints, dtype=np.float64)
        self.prior = self.joints
        self.region = None
        if self.refine_joints and cfg.keep_joints_inside and faces is not None and len(faces):
            self.region = JointRegion(anchor, faces, self.joints)
        self.members = subtrees(parents) if cfg.articulated else None

    def start(self, transforms: np.ndarray) -> np.ndarray:
        """A start's transforms, projected onto the articulated motions when the fit is articulated."""
        return project_to_articulated(transforms, self.joints, self.parents) if self.articulated else transforms

    def sweep(self, resid: np.ndarray, groups: list, transforms: np.ndarray,
              between: Callable[[float], None] | None = None) -> None:
        """One sweep (in place; the error never rises): free, the exact per-bone update; articulated, the exact
        per-bone local-rotation update, then ``articulated_lm_steps`` Levenberg-Marquardt steps on all bones
        (``between(share of the sweep done)`` is called between bones and steps: progress and cancellation)."""
        if self.articulated:
            blocks = self.block_sweep or self.lm_steps <= 0
            block_share = 0.5 if blocks and self.lm_steps > 0 else float(blocks)
            if blocks:
                update_articulated_transforms(self.anchor, resid, groups, transforms, self.joints, self.parents,
                                              self.members, self.frames_vm,
                                              between=None if between is None else lambda f: between(block_share * f))
            if self.lm_steps > 0:
                if between is not None:
                    between(block_share)
                lm = ArticulatedGaussNewton(self.anchor, self.frames_vm, groups, self.joints, self.parents,
                                            self.members)
                transforms[:], resid[:] = lm.run(
                    transforms, resid, self.lm_steps,
                    between=None if between is None else lambda f: between(block_share + (1.0 - block_share) * f))
        else:
            update_transforms(self.anchor, resid, groups, transforms)

    def move_joints(self, resid: np.ndarray, groups: list, transforms: np.ndarray) -> None:
        """With ``refine_joints``: the joints' least-squares step (in place; kept only where the error drops)."""
        if not self.refine_joints:
            return
        out = refine_joints(self.anchor, self.frames_vm, groups, transforms, self.joints, self.prior, self.parents,
                            self.joint_regularisation, self.region)
        if out is not None:
            transforms[:], self.joints, resid[:] = out[0], out[1], out[2]


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
    rest: np.ndarray | None = None
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
    share = 0.75  # of the progress bar: the keyframe fit; the rest: the sweeps over the other frames (about their time)
    sub = fit_motion(a, x[keys], weights, parents, joints, faces, replace(cfg, max_fit_frames=0),
                     progress=lambda f: tick(share * f))
    joints = sub.joints
    rest_pose = a if sub.rest is None else sub.rest
    w = sub.weights.astype(np.float64)
    J = len(parents)
    transforms = np.empty((K, J, 4, 4))
    transforms[keys] = sub.transforms
    # the other frames: a Kabsch start from the refined weights, then block sweeps (the keyframes keep theirs)
    others = np.setdiff1d(np.arange(K), keys)
    xv = np.ascontiguousarray(x[others].transpose(1, 0, 2))
    step = _TransformStep(rest_pose, xv, parents, joints, cfg)
    t_others, _ = initial_transforms(rest_pose, x[others], w, parents, joints, cfg.init_power, cfg.min_bone_mass, xv)
    tick(share)  # polls cancellation
    t_others = step.start(t_others)
    idx, val = to_sparse_rows(w, min(cfg.max_influences, J))
    groups = bone_groups(idx, val, J)
    resid = xv - blend_sparse(rest_pose, groups, t_others)
    before = rms_vertex_error(resid)
    for s in range(cfg.keyframe_sweeps):  # stops early like the alternations (``tol``)
        at = share + (1.0 - share) * s / max(cfg.keyframe_sweeps, 1)
        tick(at)
        step.sweep(resid, groups, t_others, between=lambda f, at=at: tick(at + f * (1.0 - share) / cfg.keyframe_sweeps))
        after = rms_vertex_error(resid)
        if before - after <= cfg.tol * before:
            break
        before = after
    transforms[others] = t_others
    if log.isEnabledFor(logging.DEBUG):
        log.debug("keyframe fit: %d of %d frames, other frames' rmse %.3g", len(keys), K, rms_vertex_error(resid))
    tick(1.0)
    return MotionFit(transforms=transforms, weights=sub.weights, borrowed=sub.borrowed, rmse_history=sub.rmse_history,
                     seconds=time.perf_counter() - start, start=sub.start, keyframes=keys.tolist(), joints=step.joints,
                     rest=sub.rest)


def _fit_from_free_start(a: np.ndarray, x: np.ndarray, weights: np.ndarray, parents: np.ndarray,
                         joints: np.ndarray, faces: np.ndarray | None, cfg: FitConfig,
                         tick: Callable[[float], None], start: float) -> MotionFit:
    """:func:`fit_motion` articulated after a free start (see ``FitConfig.free_start_iters``): free rigid bones for
    ``free_start_iters`` alternations, the joints moved to where their motions turn, then the articulated fit
    from the free weights (their own Kabsch start; no new clusterings) for the remaining alternations."""
    free = fit_motion(a, x, weights, parents, joints, faces,
                      replace(cfg, articulated=False, solve_rest=False, refine_iters=cfg.free_start_iters,
                              free_start_iters=0),
                      progress=lambda f: tick(FREE_START_SHARE * f))
    J = len(parents)
    idx, val = to_sparse_rows(free.weights.astype(np.float64), min(cfg.max_influences, J))
    region = None
    if cfg.keep_joints_inside and faces is not None and len(faces):
        region = JointRegion(a, faces, joints)
    moved = articulate_free_motion(a, np.ascontiguousarray(x.transpose(1, 0, 2)), bone_groups(idx, val, J),
                                   free.transforms, joints, parents, cfg.free_start_joint_regularisation, region)
    tick(FREE_START_SHARE)
    log.debug("free start: rmse %.3g after %d alternations; joints moved up to %.3g", free.rmse_history[-1],
              len(free.rmse_history) - 1, float(np.linalg.norm(moved - np.asarray(joints), axis=1).max()))
    fit = fit_motion(a, x, free.weights, parents, moved, faces,
                     replace(cfg, free_start_iters=0, refine_iters=cfg.refine_iters - cfg.free_start_iters,
                             motion_init_rounds=0),
                     progress=lambda f: tick(FREE_START_SHARE + (1.0 - FREE_START_SHARE) * f))
    return replace(fit, seconds=time.perf_counter() - start)


def fit_motion(anchor: np.ndarray, frames: np.ndarray, weights: np.ndarray, parents: np.ndarray,
               joints: np.ndarray | None = None, faces: np.ndarray | None = None,
               config: FitConfig | None = None,
               progress: Callable[[float], None] | None = None,
               should_cancel: Callable[[], bool] | None = None) -> MotionFit:
    """Fit per-frame rigid bone transforms (and optionally refine the weights) so that LBS of the anchor
    reproduces every frame.

    Args:
        anchor: float ``[V, 3]`` anchor vertices: the rest shape, or its start and prior with ``solve_rest``.
        frames: float ``[K, V, 3]`` target frames (frame 0 is usually the anchor itself).
        weights: float ``[V, J]`` initial skinning weights (any non-negative rows; pruned here).
        parents: int ``[J]`` skeleton tree (parents precede children).
        faces: int ``[F, 3]``; needed for the Laplacian smoothing of the weight refinement.
        joints: float ``[J, 3]`` anchor joints: needed when ``config.articulated`` (the bones' pivots), else
            only used to break ties when a bone borrows motion.
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
    if cfg.articulated and joints is None:
        raise ValueError("an articulated fit (FitConfig.articulated) needs the skeleton's joints")
    if joints is not None and not np.isfinite(np.asarray(joints, dtype=np.float64)).all():
        raise ValueError("joints must be finite")
    if cfg.weld_seams:
        rep = colocated_representatives(x, cfg.seam_tol)
        if (rep != np.arange(len(rep))).any():
            return _fit_welded(a, x, w_in, parents, joints, faces, cfg, rep, progress, should_cancel, start)

    reached = [0.0]  # the fraction sent never goes back (trial alternations tick below the main loop's)

    def tick(frac: float) -> None:
        if should_cancel is not None and should_cancel():
            raise FitCancelled("motion fit cancelled")
        reached[0] = max(reached[0], float(frac))
        if progress is not None:
            progress(reached[0])

    K, V, _ = x.shape
    J = len(parents)
    M = min(cfg.max_influences, J)
    if cfg.refine_iters > 0 and cfg.refine_weights and 0 < cfg.max_fit_frames < K:
        return _fit_on_keyframes(a, x, w_in, parents, joints, faces, cfg, tick, start)
    if cfg.articulated and cfg.refine_joints and 0 < cfg.free_start_iters < cfg.refine_iters and cfg.refine_weights \
            and J > 1:
        return _fit_from_free_start(a, x, w_in, parents, joints, faces, cfg, tick, start)
    reach = None
    if cfg.max_bone_distance > 0 and joints is not None and J > 1:
        c = np.asarray(joints, dtype=np.float64)
        reach = bones_in_reach(a, c, parents, cfg.max_bone_distance, cfg.max_bone_hops)
        w_in = restrict_to_reach(w_in, reach, a, c, parents)
    w0 = prune_weights(w_in, M).astype(np.float64)
    idx, val = to_sparse_rows(w0, M)
    tick(0.0)

    def done(alternations: float) -> float:
        """The fit's progress after ``alternations`` (fractional) alternations: the starts take the first
        ``START_SHARE``, each alternation an equal part of the rest."""
        return START_SHARE + (1.0 - START_SHARE) * min(alternations / max(cfg.refine_iters, 1), 1.0)

    rounds = [0]

    def clustering_round() -> None:
        """Progress creeping through the first half of the starts' share during their clusterings (their
        rounds are not known in advance); the trial alternations take the second half."""
        rounds[0] += 1
        tick(0.5 * START_SHARE * rounds[0] / (rounds[0] + 8))

    xv = np.ascontiguousarray(x.transpose(1, 0, 2))  # vertex-major [V, K, 3]
    step = _TransformStep(a, xv, parents, joints, cfg, faces)
    tick(0.02 * START_SHARE)
    transforms, borrowed = initial_transforms(a, x, w0, parents, joints, cfg.init_power, cfg.min_bone_mass, xv)
    transforms = step.start(transforms)
    tick(0.04 * START_SHARE)
    scale = float(np.ptp(a, axis=0).max())
    groups = bone_groups(idx, val, J)
    resid = xv - blend_sparse(a, groups, transforms)
    refining_weights = cfg.refine_iters > 0 and cfg.refine_weights
    starts = [_FitState("given", idx, val, groups, transforms, borrowed, resid)]
    if refining_weights and cfg.motion_init_rounds > 0 and J > 1:
        seeds = {}
        if cfg.init in ("weights", "best"):
            seeds["weights"] = transforms
        if cfg.init in ("split", "best"):
            bone = match_clusters_to_bones(split_motion_clusters(a, xv, J, cfg.motion_init_rounds,
                                                                 cfg.split_seed_fraction, between=clustering_round), w0)
            seeds["split"], _ = initial_transforms(a, x, one_hot(bone, J), parents, joints, 1.0, cfg.min_bone_mass, xv)
        for name, t_seed in seeds.items():
            labels, t_c, borrowed_c = cluster_by_motion(a, x, t_seed, parents, joints, cfg.motion_init_rounds,
                                                        cfg.min_bone_mass, frames_vm=xv, between=clustering_round)
            if reach is not None:  # a vertex clustered with a bone out of its reach starts on its nearest bone
                labels = restrict_to_reach(one_hot(labels, J), reach, a, joints, parents).argmax(axis=1)
            t_c = step.start(t_c)
            idx_c = np.zeros((V, M), dtype=np.int64)
            val_c = np.zeros((V, M))
            idx_c[:, 0], val_c[:, 0] = labels, 1.0
            groups_c = bone_groups(idx_c, val_c, J)
            starts.append(_FitState(name, idx_c, val_c, groups_c, t_c, borrowed_c, xv - blend_sparse(a, groups_c, t_c)))
    starts.sort(key=lambda st: st.sq_err)
    log.debug("motion fit starts (squared error): %s", {st.name: st.sq_err for st in starts})
    # starts close enough to the best one (by default all) are tried for a few alternations (a lower start
    # error does not always lead to a lower final error); the rest are dropped
    starts = starts[:1] + [st for st in starts[1:] if st.sq_err <= cfg.start_trial_ratio * starts[0].sq_err]
    for st in starts:  # a start that already reproduces the frames (to float noise) is not refined
        st.converged = st.rmse[0] <= 1e-7 * scale
    tick(0.5 * START_SHARE)

    rest_limits = rest_move_limits(a, faces, cfg.rest_max_edge_share) if cfg.solve_rest else None
    neighbours = None
    smoothing = cfg.smoothness > 0 or (cfg.smooth_steps > 0 and cfg.smooth_slack > 0)
    if refining_weights and faces is not None and smoothing:
        neighbours = mesh_neighbours(faces, V)
    if refining_weights and cfg.candidates == "tree":
        for st in starts:
            st.cand, st.cand_mask = candidate_bones(st.idx, st.val, parents, cfg.neighbour_candidates, reach)

    def alternate(st: _FitState, progress_at: Callable[[float], float], move_joints: bool = False) -> None:
        """One alternation on ``st`` in place (appends to ``st.rmse``, sets ``st.converged``);
        ``progress_at(f)``: the fit's progress ``f`` (0 to 1) through this alternation."""
        rest = a if st.rest is None else st.rest
        step.anchor = rest
        n = cfg.transform_sweeps
        for i in range(n):
            step.sweep(st.resid, st.groups, st.transforms, between=lambda f, i=i: tick(progress_at(0.5 * (i + f) / n)))
        tick(progress_at(0.5))
        if move_joints:
            step.move_joints(st.resid, st.groups, st.transforms)
            tick(progress_at(0.75))
        if cfg.refine_weights:
            st.idx, st.val = update_weights(rest, xv, st.idx, st.val, st.transforms, st.cand, st.cand_mask, neighbours,
                                            M, cfg.smoothness, cfg.smooth_steps, cfg.smooth_slack, cfg.qp_iters,
                                            cfg.chunk, cfg.motion_candidates,
                                            between=lambda f: tick(progress_at(0.75 + 0.25 * f)), reach=reach)
            st.groups = bone_groups(st.idx, st.val, J)
        solving_rest = move_joints and cfg.solve_rest
        if solving_rest:
            st.rest = update_rest_pose(xv, st.idx, st.val, st.transforms, a, cfg.rest_regularisation, current=rest,
                                       max_move=rest_limits)
        if cfg.refine_weights or solving_rest:  # one residual for the new weights and rest
            st.resid = xv - blend_sparse(a if st.rest is None else st.rest, st.groups, st.transforms)
        st.rmse.append(rms_vertex_error(st.resid))
        st.converged = st.rmse[-2] - st.rmse[-1] <= cfg.tol * st.rmse[-2] or st.rmse[-1] <= 1e-7 * scale

    if len(starts) > 1 and cfg.refine_iters > 0:
        trial = min(cfg.start_trial_iters, cfg.refine_iters)
        trials = [0]
        width = 0.5 * START_SHARE / max(trial * len(starts), 1)  # of the starts' second half, per trial alternation
        for st in starts:
            while len(st.rmse) - 1 < trial and not st.converged:
                base = 0.5 * START_SHARE + width * trials[0]
                tick(base)  # polls cancellation
                alternate(st, lambda f, base=base: base + width * f)
                trials[0] += 1
        tick(START_SHARE)
        log.debug("after %d trial alternations: %s", trial, {st.name: st.rmse[-1] for st in starts})
        starts.sort(key=lambda st: st.rmse[-1])
    best = starts[0]
    log.debug("motion fit start: %s, rmse %.3g", best.name, best.rmse[0])
    while len(best.rmse) - 1 < cfg.refine_iters and not best.converged:
        at = len(best.rmse) - 1
        alternate(best, lambda f, at=at: done(at + f), move_joints=True)
        log.debug("motion fit alternation %d: rmse %.3g", len(best.rmse) - 1, best.rmse[-1])
        tick(done(len(best.rmse) - 1))
    idx, val, transforms, borrowed, rmse = best.idx, best.val, best.transforms, best.borrowed, best.rmse
    weights_out = sparse_to_dense(idx, val, J).astype(np.float32)
    return MotionFit(transforms=transforms, weights=weights_out, borrowed=borrowed, rmse_history=rmse,
                     seconds=time.perf_counter() - start, start=best.name, joints=step.joints, rest=best.rest)


def _fit_welded(a: np.ndarray, x: np.ndarray, weights: np.ndarray, parents: np.ndarray, joints: np.ndarray | None,
                faces: np.ndarray | None, cfg: FitConfig, rep: np.ndarray,
                progress: Callable[[float], None] | None, should_cancel: Callable[[], bool] | None,
                start: float) -> MotionFit:
    """:func:`fit_motion` on the welded mesh (one vertex per co-located group ``rep int [V]``, faces remapped),
    its weights copied back to every vertex of a group (see ``FitConfig.weld_seams``)."""
    keep = np.flatnonzero(rep == np.arange(len(rep)))  # the representatives, ascending
    compact = np.searchsorted(keep, rep)  # [V] -> index in the welded mesh
    w_welded = np.zeros((len(keep), weights.shape[1]))
    np.add.at(w_welded, compact, weights)  # the group's mean row (same simplex scale after normalising)
    w_welded /= np.bincount(compact, minlength=len(keep))[:, None]
    faces_welded = None if faces is None else compact[np.asarray(faces, dtype=np.int64)]
    fit = fit_motion(a[keep], x[:, keep], w_welded, parents, joints, faces_welded, replace(cfg, weld_seams=False),
                     progress, should_cancel)
    log.debug("seams: %d of %d vertices welded onto co-located ones", len(rep) - len(keep), len(rep))
    return replace(fit, weights=fit.weights[compact], welded=int(len(rep) - len(keep)),
                   rest=None if fit.rest is None else fit.rest[compact], seconds=time.perf_counter() - start)
