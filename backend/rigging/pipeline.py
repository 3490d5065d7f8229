"""The rigger: one animated mesh sequence in, one rig (skeleton, weights, per-frame bone transforms) and
its stability report out.

Pipeline (DESIGN.md "Inference pipeline"):

1. normalize every frame by the anchor's bounding box; sample ``n_points`` surface points on the anchor
   (seeded) and carry them to every frame through their (face, barycentric) pairs;
2. skeleton: the generator runs on the anchor (the canonical skeleton) and on a set of report frames
   (the anchor, frames 1-2 for the paper's 3-frame protocol, and evenly spaced others);
3. skinning at the mesh vertices (queried directly, no nearest-sample copies): the anchor prediction
   is the teacher and becomes the rig's weights after pruning to ``max_influences``; predictions on
   other frames (all, or an even subsample) give the per-vertex instability heatmap;
4. motion: per-frame bone transforms fitted to the input frames (:mod:`backend.rigging.fit`), articulated by
   default (every non-root bone rotates about its joint in its parent's frame, so bones never separate),
   optionally refining transforms and weights; co-located vertices (seams) share their weights;
5. report: per-frame reconstruction error, the paper's per-frame skeleton stability (PJDD/BLRD/GSD/JAD,
   topology flicker), motion-compensated joint drift, skinning instability;
6. everything back to the user's units.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backend.rigging.fit import (FitCancelled, FitConfig, fit_motion, prune_weights, rest_move_limits, skin_anchor,
                                 untangle_rest)
from backend.metrics import bone_distances, far_led_share, joint_separation, motion_compensated_joint_drift, skeleton_stability
from backend.normalize import UP_AXES, anchor_normalize
from backend.rigging.proxy import build_proxy, chunked_reconstruction_error, fit_frames, full_mesh_weights, use_proxy
from backend.rigging.result import RigResult
from backend.rigging.rig_skeleton import RigSkeleton
from backend.rigging.skeleton_from_motion import MotionSkeletonConfig, skeleton_from_motion
from backend.sampling import points_on_frames, sample_surface, vertex_normals
from backend.sequence import MeshSequence, colocated_representatives
from backend.skeleton import SkeletonError, bone_tails, carry_tails, depths, validate_tree

log = logging.getLogger(__name__)

PAPER_PROTOCOL_FRAMES = 3  # paper §5.1: the anchor and the next two frames
CPU_REPORT_FRAMES = 4  # skeleton frames for the report when the models run on a CPU (auto setting)
CPU_SKIN_FRAMES = 4  # skinning frames for the heatmap when the models run on a CPU (auto setting)
LARGE_FIT_VERTICES = 3000  # a motion fit on more vertices than this (a proxy's included) is a large one ...
LARGE_FIT_ITERS_SHARE = 0.25  # ... and gets this share of the alternations (80 -> 20) ...
LARGE_FIT_CANDIDATES_SHARE = 0.5  # ... and of the motion candidates (12 -> 6)
FULL_MESH_REST_ROUNDS = 2  # with a proxy and RigConfig.solve_rest: rest solves in the full-mesh pass (weights between)


class RigCancelled(RuntimeError):
    """Raised by :func:`rig_sequence` when its ``should_cancel`` callback returns True."""


@dataclass
class RigConfig:
    """Options of :func:`rig_sequence` (plain JSON types: the server and the add-on send them as JSON).

    Attributes:
        n_points: surface samples per frame given to the models (the training preset's value).
        seed: seed of the surface sampling and of torch (same seed and input -> same rig).
        device: ``auto`` | ``cpu`` | ``cuda`` for the models.
        max_influences: non-zero weights per vertex after pruning (4 like glTF and game engines).
        refine: alternate transform/weight refinement after the rigid start (lower error; the weights
            then differ from the network's prediction).
        refine_iters: at most this many refinement alternations (a fit on many vertices gets fewer: see
            ``motion_fit_config``).
        motion_candidates: candidate bones per vertex added from its own motion in the weight solve
            (``FitConfig.motion_candidates``; a fit on many vertices gets fewer: see ``motion_fit_config``).
        bone_reach: a vertex's weights use only bones within this share of the anchor box diagonal of it (its two
            nearest always; ``FitConfig.max_bone_distance``), so posing a bone moves no skin far from it; 0: any.
        skeleton: where the rig's skeleton comes from: ``motion`` (joints where the clip's parts turn, chains
            along the limbs that never move, the generator's anchor skeleton as a prior; see
            :mod:`backend.rigging.skeleton_from_motion`) or ``network`` (the generator's anchor skeleton as is).
            A skeleton passed to :func:`rig_sequence` overrides both.
        detail: bones of the ``motion`` skeleton: ``auto``, ``coarse``, ``fine`` or a bone count (as text,
            e.g. ``"24"``: the JSON options carry strings).
        articulated: articulated motion (``FitConfig.articulated``): bones rotate about their joints and
            stay attached on every frame; False gives every bone a free rigid motion (lower error, but
            bones may separate at their joints; ``stats["joint_separation_max"]`` says by how much).
        refine_joints: with ``articulated``, let the motion fit move the joints to where the bones turn
            (``FitConfig.refine_joints``, regularised toward the skeleton's joints); the rig's joints are
            the moved ones (``stats["joints_moved_max"]`` says how far they went) and the skeleton's tails
            follow them (:func:`backend.skeleton.carry_tails`).
        free_start_iters: with ``articulated`` and ``refine_joints``, the motion fit's first alternations fit free
            rigid bones, then the joints move to where those turn and the articulated fit goes on from there
            (``FitConfig.free_start_iters``). 0 (the default): articulated from the start. 12 lowered the real
            bench clips' error by a quarter, but the same clip turned 180 degrees in Blender then rigged to joints
            5.9 % of its size apart (docs/fitting.md, Motion fit step 5).
        solve_rest: solve the rig's rest shape with its weights and motion (``FitConfig.solve_rest``; with a
            proxy, every vertex's in the full-mesh pass): the anchor frame is one pose of the clip, not the pose
            the weights blend from, and a rest shape slightly off it lowers the error where bones meet. The
            rig's mesh (:attr:`RigResult.anchor_verts`) is then that rest shape; ``stats["rest_moved_max"]``
            says how far it is from the anchor frame. False: the anchor frame is the rest shape.
        models: ``sprig`` (fine-tuned), ``base`` (the static rigger run frame by frame: the paper's
            baseline) or ``auto`` (SPRig when its files exist, else base).
        frames_for_report: frames whose skeleton is generated for the stability report (anchor and
            frames 1-2 included, the rest evenly spaced); 0 = every frame; -1 = auto (every frame on
            a GPU, ``CPU_REPORT_FRAMES`` on a CPU).
        skin_frames: frames whose weights are predicted for the instability heatmap (evenly spaced,
            anchor included); 0 = every frame; -1 = auto (every frame on a GPU, ``CPU_SKIN_FRAMES``
            on a CPU). Frames in between are linearly interpolated; the predicted ones are listed in
            ``stats["skin_frames"]``.
        heatmap: run the heatmap stage (per-frame weight predictions for ``skin_instability``); when
            False the stage is skipped, ``skin_instability`` is all zeros and ``stats["skin_frames"]`` is
            empty (the Blender add-on asks for it only when its heatmap is wanted).
        skin_joints: joints given to the skinning network on non-anchor frames: ``anchor`` (the
            canonical anchor joints, as in the paper's Eq. 4) or ``posed`` (anchor joints moved by the
            fitted bone transforms).
        checkpoint_dir: folder holding ``skeleton_<models>.safetensors`` and ``skinning_<models>.safetensors``.
        max_joints: longest skeleton the generator may emit.
        stop_after_repeats: end a skeleton's decoding once this many joints in a row repeat an earlier
            joint's position (a decoder stuck in a loop; those joints would be merged away anyway);
            0 decodes until EOS or ``max_joints``. See ``SkeletonGenerator.generate``.
        batch_frames: frames per skeleton-generator batch.
        up_axis: ``y`` (glTF, most files) or ``z`` (Blender's world space): the models work Y-up, so
            Z-up input is rotated on the way in and the results rotated back.
        left_axis: the character's left side as a direction ``[x, y, z]`` in the input's axes (None: +X, the
            convention of glTF and of Blender's own front view, where a character faces +Z / -Y). The skeleton
            from motion is built turned so that this side lies along +X
            (:func:`~backend.rigging.skeleton_from_motion.skeleton_from_motion`): a character turned to face
            another way gets the same skeleton and names, with ``.L`` on its left. The Blender add-on sends the
            object's own X axis.
        proxy: rig through a proxy of the mesh (:mod:`backend.rigging.proxy`): ``auto`` (above
            ``proxy_threshold`` vertices), ``on`` or ``off``. The skeleton, the bone motion and the weights are
            solved on about ``proxy_vertices`` well-spread vertices, then every vertex gets its own weights
            against that motion in one chunked pass (co-located vertices identical); the skinning network and
            the heatmap run on the proxy and are carried to the vertices by cell. The error is measured on
            the full mesh. Time and memory then grow with ``vertices x frames`` only through that pass and
            the error; ``stats["proxy_vertices"]`` says whether (and with how many) it was used.
        proxy_threshold: ``auto`` uses a proxy on meshes with more vertices than this.
        proxy_vertices: the proxy's size.
        cpu_threads: torch threads of the networks on a CPU while a rig runs (restored after; 0: torch's
            default, one per core). One by default: the networks' work is many small steps, where a second
            thread gained about 10 % on an idle 2-core machine and made the skeleton stage 3-4x slower as soon as
            anything else (Blender, another job) used a core (its threads spin waiting for each other).
        per_frame_predictions: also keep every frame's own prediction, as a static rigger run frame by
            frame would give it (skeleton generated on the frame, weights predicted for that skeleton on
            the frame's vertices) in :attr:`RigResult.frame_predictions`, so any run can be scored with
            ``sprig eval``. Forces a skeleton on every frame (slower on a CPU).
    """

    n_points: int = 512
    seed: int = 0
    device: str = "auto"
    max_influences: int = 4
    refine: bool = True
    refine_iters: int = 80
    motion_candidates: int = 12
    bone_reach: float = 0.25
    skeleton: str = "motion"
    detail: str = "auto"
    articulated: bool = True
    refine_joints: bool = True
    free_start_iters: int = 0
    solve_rest: bool = True
    models: str = "sprig"
    frames_for_report: int = -1
    skin_frames: int = -1
    heatmap: bool = True
    skin_joints: str = "anchor"
    checkpoint_dir: str = "checkpoints"
    max_joints: int = 64
    stop_after_repeats: int = 4
    batch_frames: int = 8
    per_frame_predictions: bool = False
    up_axis: str = "y"
    left_axis: tuple[float, float, float] | None = None
    proxy: str = "auto"
    proxy_threshold: int = 8000
    proxy_vertices: int = 4000
    cpu_threads: int = 1

    def motion_detail(self) -> str | int:
        """``detail`` as :class:`MotionSkeletonConfig` takes it (a count as an int). Raises ValueError."""
        text = str(self.detail).strip().lower()
        if text in ("auto", "coarse", "fine"):
            return text
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"detail must be 'auto', 'coarse', 'fine' or a bone count, got {self.detail!r}") from None
        if not 2 <= count <= 256:
            raise ValueError(f"a detail bone count must be between 2 and 256, got {count}")
        return count

    def motion_fit_config(self, n_vertices: int, refine_joints: bool) -> FitConfig:
        """The motion fit's options for a fit on ``n_vertices`` vertices (the proxy's, with a proxy). A fit on
        more than ``LARGE_FIT_VERTICES`` gets ``LARGE_FIT_ITERS_SHARE`` of the alternations and
        ``LARGE_FIT_CANDIDATES_SHARE`` of the candidates: both cost time in proportion to the vertices, and there
        they gain little (measured in ``docs/fitting.md``: half the time at 0-10 % more error on 4-8k-vertex
        clips; a proxy rig's error is set mostly by its full-mesh weight pass). A small fit stops before
        ``refine_iters`` once it no longer improves (most real clips by 40; the standing Fox needs about 80)."""
        large = n_vertices > LARGE_FIT_VERTICES
        iters_share = LARGE_FIT_ITERS_SHARE if large else 1.0
        candidates_share = LARGE_FIT_CANDIDATES_SHARE if large else 1.0
        return FitConfig(max_influences=self.max_influences,
                         refine_iters=int(np.ceil(self.refine_iters * iters_share)) if self.refine else 0,
                         motion_candidates=int(np.ceil(self.motion_candidates * candidates_share)),
                         max_bone_distance=self.bone_reach, articulated=self.articulated, refine_joints=refine_joints,
                         free_start_iters=self.free_start_iters, solve_rest=self.solve_rest)

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        max_points = 16384  # 32x the trained value; beyond it memory grows for no accuracy
        if not isinstance(self.n_points, int) or not 16 <= self.n_points <= max_points:
            raise ValueError(f"n_points must be an integer in [16, {max_points}], got {self.n_points!r}")
        # upper bounds: a request (e.g. a server line) must not buy an endless run or allocation
        for name, low, high in (("max_influences", 1, 64), ("refine_iters", 0, 1000), ("free_start_iters", 0, 1000),
                                ("motion_candidates", 0, 256),
                                ("max_joints", 1, 1024),
                                ("batch_frames", 1, 4096), ("stop_after_repeats", 0, 1024),
                                ("proxy_threshold", 0, 2**31 - 1), ("proxy_vertices", 64, 1_000_000),
                                ("cpu_threads", 0, 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be >= {low} and <= {high} (an integer), got {value!r}")
        if isinstance(self.bone_reach, bool) or not isinstance(self.bone_reach, (int, float)) \
                or not 0.0 <= self.bone_reach <= 10.0:
            raise ValueError(f"bone_reach must be a number in [0, 10] (share of the box diagonal), "
                             f"got {self.bone_reach!r}")
        if self.skeleton not in ("motion", "network"):
            raise ValueError(f"skeleton must be 'motion' or 'network', got {self.skeleton!r}")
        self.motion_detail()  # raises on a bad detail
        if self.models not in ("sprig", "base", "auto"):
            raise ValueError(f"models must be 'sprig', 'base' or 'auto', got {self.models!r}")
        if self.skin_joints not in ("anchor", "posed"):
            raise ValueError(f"skin_joints must be 'anchor' or 'posed', got {self.skin_joints!r}")
        if self.proxy not in ("auto", "on", "off"):
            raise ValueError(f"proxy must be 'auto', 'on' or 'off', got {self.proxy!r}")
        if self.up_axis not in UP_AXES:
            raise ValueError(f"up_axis must be one of {UP_AXES}, got {self.up_axis!r}")
        if self.left_axis is not None:
            axis = self.left_axis
            if (not isinstance(axis, (list, tuple)) or len(axis) != 3
                    or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and np.isfinite(a) for a in axis)
                    or not any(axis)):
                raise ValueError(f"left_axis must be three finite numbers, not all zero, got {axis!r}")


# ---------------------------------------------------------------------------------------------
# Progress and cancellation

# (stage, share of the whole run) in pipeline order: about the stages' share of a rig's time on a CPU (measured
# 2026-12-07, 2 cores: the fit 60-84 % on 2.3k-37k vertices, the skeleton 15-28 %; at 598k the proxy's weight
# pass and the normalisation grow to 29 % and 5 %; the heatmap and the report 1-2 % below 200k vertices)
_STAGES = (("normalize", 0.02), ("models", 0.01), ("sample", 0.05), ("skeleton", 0.17), ("skinning", 0.02),
           ("fit", 0.55), ("weights", 0.10), ("heatmap", 0.03), ("report", 0.05))


class _Progress:
    """Maps per-stage fractions to one overall fraction and polls the cancel callback."""

    def __init__(self, callback: Callable[[str, float], None] | None, should_cancel: Callable[[], bool] | None,
                 stages: tuple[tuple[str, float], ...] = _STAGES):
        self.callback = callback
        self.should_cancel = should_cancel
        self.start: dict[str, float] = {}
        total = 0.0
        for name, share in stages:
            self.start[name] = total
            total += share
        self.share = dict(stages)
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._stage: str | None = None

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise RigCancelled(f"rigging cancelled during {self._stage or 'setup'}")

    def __call__(self, stage: str, fraction: float) -> None:
        self.check()
        if stage != self._stage:
            now = time.perf_counter()
            if self._stage is not None:
                self.timings[self._stage] = now - self._t0
            self._t0, self._stage = now, stage
        if self.callback is not None:
            overall = self.start[stage] + self.share[stage] * min(max(fraction, 0.0), 1.0)
            self.callback(stage, float(min(overall, 1.0)))

    def finish(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = time.perf_counter() - self._t0
        if self.callback is not None:
            self.callback("done", 1.0)


def _decoding_progress(track: _Progress, done: int, batch: int, total: int, max_joints: int,
                       share: float = 1.0) -> Callable[[], bool]:
    """The skeleton generator's ``should_cancel`` for a batch of ``batch`` of ``total`` report frames after
    ``done``: polls cancellation and moves the skeleton stage's progress (decoding takes its first ``share``)
    with the decoding steps (at most ``4 * max_joints + 1`` per skeleton), so a long decoding still reports
    several times a second."""
    steps = [0]
    span = 4 * max_joints + 1

    def poll() -> bool:
        steps[0] += 1
        track("skeleton", share * (done + batch * min(steps[0] / span, 1.0)) / total)
        return False

    return poll


# ---------------------------------------------------------------------------------------------
# Models

_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()  # a server's preload and its first rig load the models once


def loaded_model_files(models) -> list[str] | None:
    """The checkpoint files ``models`` were loaded from, each with its training stage (``models="auto"`` says
    only what was asked for), or None for models made in memory."""
    infos = [getattr(models, "skeleton_info", None), getattr(models, "skinning_info", None)]
    if any(info is None for info in infos):
        return None
    return [f"{Path(info.path).name} ({info.stage})" for info in infos]


def get_models(config: RigConfig, progress: Callable[[float], None] | None = None):
    """Load (once per checkpoint folder, choice, device and file dates) the skeleton generator and the
    skinning network (``progress`` as in :func:`backend.models.inference.load_models`, when they are loaded, and
    every 0.2 s while another thread, a server's preload, is loading them).
    Raises ``backend.models.checkpoint.CheckpointError`` naming missing/corrupt files."""
    from backend.models.inference import CHECKPOINT_NAMES, load_models

    folder = Path(config.checkpoint_dir).expanduser().resolve()
    stamps = tuple(sorted((p.name, p.stat().st_mtime_ns) for names in CHECKPOINT_NAMES.values() for n in names
                          if (p := folder / n).is_file()))
    key = (str(folder), config.models, config.device, stamps)
    waited = 0.0
    while not _MODEL_LOCK.acquire(timeout=0.2):  # a server's preload is loading them: report (and cancel) meanwhile
        waited += 0.2
        if progress is not None:
            progress(min(0.4, 0.1 * waited))
    try:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = load_models(folder, which=config.models, device=config.device, progress=progress)
        return _MODEL_CACHE[key]
    finally:
        _MODEL_LOCK.release()


# ---------------------------------------------------------------------------------------------
# Helpers


def select_frames(n_frames: int, count: int, always: tuple[int, ...] = (0,)) -> np.ndarray:
    """Sorted frame indices: ``always`` (those < ``n_frames``) plus evenly spaced later frames up to the
    last one, ``count`` in all (every frame when ``count <= 0`` or ``count >= n_frames``)."""
    if count <= 0 or count >= n_frames:
        return np.arange(n_frames)
    chosen = {f for f in always if f < n_frames}
    remaining = count - len(chosen)
    if remaining > 0:
        start = max(chosen) if chosen else 0
        spaced = np.round(np.linspace(start, n_frames - 1, remaining + 1)[1:]).astype(int)
        chosen.update(int(f) for f in spaced)
        extra = (f for f in range(n_frames) if f not in chosen)
        while len(chosen) < count:  # rounding collisions on short clips
            chosen.add(next(extra))
    return np.asarray(sorted(chosen), dtype=np.int64)[:max(count, len(always))]


def resolve_frame_counts(config: "RigConfig", device: str) -> tuple[int, int]:
    """``(frames_for_report, skin_frames)`` with ``-1`` (auto) resolved: every frame on a GPU; on a CPU
    ``CPU_REPORT_FRAMES`` skeleton frames and ``CPU_SKIN_FRAMES`` skinning frames (the networks dominate
    the run time there)."""
    gpu = str(device).startswith("cuda")
    if config.per_frame_predictions:
        return 0, config.skin_frames if config.skin_frames >= 0 else (0 if gpu else CPU_SKIN_FRAMES)
    report = config.frames_for_report
    skin = config.skin_frames
    if report < 0:
        report = 0 if gpu else CPU_REPORT_FRAMES
    if skin < 0:
        skin = 0 if gpu else CPU_SKIN_FRAMES
    return report, skin


def skin_instability(frame_weights: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Per-vertex instability ``[..., V]`` in [0, 1]: half the L1 distance between frame weights
    ``[..., V, J]`` and the anchor teacher ``[V, J]`` (paper Fig. 5 heatmap, halved to lie in [0, 1])."""
    return (0.5 * np.abs(np.asarray(frame_weights, dtype=np.float32) - teacher).sum(axis=-1)).clip(0.0, 1.0)


def _interpolate_frames(values: np.ndarray, frames: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-vertex values ``[len(frames), V]`` at ``frames`` -> ``[n_frames, V]`` by linear interpolation in time."""
    if len(frames) == n_frames:
        return values
    out = np.empty((n_frames, values.shape[1]), dtype=np.float32)
    right = np.clip(np.searchsorted(frames, np.arange(n_frames)), 1, len(frames) - 1)
    left = right - 1
    span = np.maximum(frames[right] - frames[left], 1)
    t = np.clip((np.arange(n_frames) - frames[left]) / span, 0.0, 1.0)[:, None]
    out[:] = (1 - t) * values[left] + t * values[right]
    out[frames] = values
    return out


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays -> Python, NaN/Inf -> None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def _joint_names(parents: np.ndarray) -> list[str]:
    """Readable bone names: ``root``, then ``bone_<index>_d<depth>``."""
    d = depths(parents)
    return ["root" if p < 0 else f"bone_{j:02d}_d{int(d[j])}" for j, p in enumerate(parents)]


def stability_report(verts_n: np.ndarray, frames: np.ndarray, skeletons: list[tuple[np.ndarray, np.ndarray]],
                     ) -> dict[str, Any]:
    """Skeleton stability of the skeletons generated on ``frames`` (frame 0 first), normalized units.

    Returns per-frame lists (aligned with ``frames``) of PJDD/BLRD/GSD/JAD (Eq. 28-31), joint counts,
    topology flicker and MCJD, and their means: on the paper's protocol (frames 0-2, when they are all
    in ``frames``) and over all report frames; ``"joint_drift"`` is the MCJD per joint of the first
    skeleton (``[J_0]``, anchor-box units, averaged over the other frames) from the same drift call.
    """
    joints = [np.asarray(j, dtype=np.float64) for j, _ in skeletons]
    parents = [np.asarray(p) for _, p in skeletons]
    stab = skeleton_stability(joints, parents)
    drift = motion_compensated_joint_drift(verts_n[frames], joints)
    out: dict[str, Any] = {
        "frames": frames.tolist(),
        "pjdd": stab.pjdd, "blrd": stab.blrd, "gsd": stab.gsd, "jad": stab.jad,
        "n_joints": stab.n_joints, "flicker": stab.flicker.astype(int), "mcjd": drift.per_frame,
        "clip": {**stab.summary(), "mcjd": drift.mean}, "joint_drift": drift.per_joint,
    }
    protocol = list(range(PAPER_PROTOCOL_FRAMES))
    if list(frames[:PAPER_PROTOCOL_FRAMES]) == protocol:
        out["paper_3frame"] = stab.summary(PAPER_PROTOCOL_FRAMES)
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline


def seam_gap(posed: np.ndarray, representatives: np.ndarray) -> float:
    """Largest distance, over frames, between vertices that share one position in the input on every frame
    (``representatives int [V]`` from :func:`backend.sequence.colocated_representatives`) in ``posed
    [K, V, 3]``: how far a seam opens in the reconstruction (0 when there is none)."""
    split = np.flatnonzero(representatives != np.arange(len(representatives)))
    if len(split) == 0:
        return 0.0
    return float(np.linalg.norm(posed[:, split] - posed[:, representatives[split]], axis=-1).max())


SKIN_REACH_VERTICES = 20000  # the far-led share is measured on at most this many vertices (a seeded subset)
BONE_FAR_FROM_SKIN = 0.15  # a bone farther than this share of the anchor box diagonal from every vertex is reported


def skin_reach(anchor: np.ndarray, weights: np.ndarray, joints: np.ndarray, tails: np.ndarray | None,
               parents: np.ndarray, names: list[str], diag: float) -> dict[str, Any]:
    """Which skin the bones move when posed, which the reconstruction error does not show: ``bones_without_skin``
    (names of the bones that are no vertex's largest weight: posing one moves skin only through small weights),
    ``bones_far_from_skin`` (bones farther than ``BONE_FAR_FROM_SKIN`` of the diagonal from every vertex, e.g. one
    an edit left outside the mesh: the fit may still use it to move skin far from it) and ``far_led_share``
    (:func:`backend.metrics.far_led_share`: vertices led by a bone that is not among the four nearest to them).

    Args:
        anchor: ``[V, 3]``; weights ``[V, J]``; joints, tails ``[J, 3]`` (tails None: :func:`bone_tails`), same
            space; parents ``[J]``; names ``J``; diag: the anchor box diagonal.
    """
    w = np.asarray(weights)
    J = w.shape[1]
    led = np.bincount(np.argmax(w, axis=1), minlength=J)
    if tails is None:
        tails = bone_tails(joints, parents, min_length=0.02 * diag)
    pick = np.arange(len(w))
    if len(pick) > SKIN_REACH_VERTICES:
        pick = np.sort(np.random.default_rng(0).choice(len(w), SKIN_REACH_VERTICES, replace=False))
    points = np.asarray(anchor)[pick]
    distances = bone_distances(points, joints, tails, parents)  # [P, J]
    far = far_led_share(points, w[pick], joints, tails, parents, distances=distances) if J > 1 else 0.0
    away = distances.min(axis=0) > BONE_FAR_FROM_SKIN * diag
    return {"bones_without_skin": [names[j] for j in np.flatnonzero(led == 0)],
            "bones_far_from_skin": [names[j] for j in np.flatnonzero(away)], "far_led_share": far}


def rig_rest_shape(anchor: np.ndarray, rest: np.ndarray | None, faces: np.ndarray, seams: np.ndarray,
                   diag: float, untangle: bool = True, between: Callable[[], None] | None = None
                   ) -> tuple[np.ndarray, int, float]:
    """The rig's rest shape: the anchor frame ``anchor [V, 3]``, or the fit's ``rest [V, 3]`` (``RigConfig.solve_rest``)
    with the faces it turned walked back, seams kept closed (:func:`~backend.rigging.fit.untangle_rest` with
    ``seams``, unless ``untangle`` is False because the caller already did).

    Returns:
        ``(float32 [V, 3] rest shape, vertices walked back, largest distance from the anchor / diag)``.
    """
    if rest is None:
        return np.asarray(anchor, dtype=np.float32), 0, 0.0
    untangled = 0
    if untangle:
        rest, untangled = untangle_rest(anchor, rest, faces, seams=seams, between=between)
    rest_n = np.asarray(rest, dtype=np.float32)
    moved = float(np.linalg.norm(rest_n.astype(np.float64) - anchor, axis=1).max()) / diag
    return rest_n, untangled, moved


def playback_quality(rest: np.ndarray, verts_n: np.ndarray, weights: np.ndarray, transforms_n: np.ndarray,
                     pivots: np.ndarray, parents: np.ndarray, seams: np.ndarray, diag: float, chunked: bool,
                     progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """How the rig plays back against the input: the per-frame per-vertex reconstruction error and the stats
    every rig reports about it (error, joint separation, seams).

    Args:
        rest: ``[V, 3]`` the rig's rest shape (the anchor frame, or the solved one: ``RigConfig.solve_rest``) and
            verts_n ``[K, V, 3]`` normalized; weights ``[V, J]``; transforms_n ``[K, J, 4, 4]``
            normalized; pivots ``[J, 3]`` the joints the motion is articulated about; parents ``[J]``;
            seams: :func:`backend.sequence.colocated_representatives` of ``verts_n``; diag: anchor box diagonal.
        chunked: work ``chunk`` vertices at a time (no ``[K, V, 3]`` float64 array; large meshes).
    Returns:
        ``recon float32 [K, V]`` (fraction of the diagonal) and the stats entries ``recon_*``,
        ``joint_separation_*``, ``seam_vertices``, ``seam_gap_max``, ``motion_mean`` (how far the vertices are
        from their positions on the anchor frame ``verts_n[0]``, mean over vertices and frames, fraction of the
        diagonal) and ``recon_vs_motion`` (``recon_mean / motion_mean``: the share of the movement the rig leaves
        out; None for a clip that does not move).
    """
    V = len(rest)
    split = np.flatnonzero(seams != np.arange(V))
    if not chunked:
        posed = skin_anchor(rest, weights, transforms_n)  # [K, V, 3]
        recon = (np.linalg.norm(posed - verts_n, axis=-1) / diag).astype(np.float32)  # [K, V]
        gap = seam_gap(posed, seams)
    else:
        recon = chunked_reconstruction_error(rest, verts_n, weights, transforms_n, progress=progress)
        recon /= diag
        both = np.union1d(split, seams[split])
        gap = seam_gap(skin_anchor(rest[both], weights[both], transforms_n),
                       np.searchsorted(both, seams[both])) if len(split) else 0.0
    separation = joint_separation(transforms_n, pivots, parents) / diag  # [K, J]
    K = len(verts_n)
    step = max(1, (1 << 22) // max(V, 1))  # frames per slice: ~4M positions
    anchor32, moved = np.asarray(verts_n[0], dtype=np.float32), 0.0
    for s in range(0, K, step):
        away = np.asarray(verts_n[s:s + step], dtype=np.float32) - anchor32
        moved += float(np.sqrt(np.einsum("kvc,kvc->kv", away, away)).sum(dtype=np.float64))
    motion_mean = moved / (K * V) / diag
    stats = {
        "recon_mean": float(recon.mean()), "recon_max": float(recon.max()),
        "recon_mean_per_frame": recon.mean(axis=1), "recon_max_per_frame": recon.max(axis=1),
        "recon_unit": "fraction of the anchor bounding-box diagonal",
        "joint_separation_max": float(separation.max()),
        "joint_separation_mean": float(separation[:, parents >= 0].mean()) if (parents >= 0).any() else 0.0,
        "joint_separation_unit": "fraction of the anchor bounding-box diagonal",
        "seam_vertices": int(len(split)),
        "seam_gap_max": gap / diag,
        "motion_mean": motion_mean,
        "recon_vs_motion": float(recon.mean()) / motion_mean if motion_mean > 1e-9 else None,
    }
    return recon, stats


def rig_sequence(seq: MeshSequence, config: RigConfig | None = None,
                 progress: Callable[[str, float], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, models=None,
                 skeleton: RigSkeleton | Callable[[MeshSequence], RigSkeleton] | None = None) -> RigResult:
    """Rig an animated mesh sequence.

    Args:
        seq: a validated :class:`MeshSequence` (frame 0 is the anchor). Ground-truth joints in
            ``seq.extras["joints"]`` (``[K, J, 3]``, user units), when present, are scored beside the
            prediction in ``stats["gt"]``.
        config: :class:`RigConfig` (defaults when None).
        progress: called as ``progress(stage, fraction)`` with the overall fraction in [0, 1].
        should_cancel: polled often; when it returns True, :class:`RigCancelled` is raised.
        models: an object with ``generate_skeletons`` and ``predict_weights`` (see
            ``backend.models.inference.RiggerModels``); loaded from ``config.checkpoint_dir`` when None.
        skeleton: the skeleton to rig with, or a function of the sequence returning it (e.g. a skeleton
            found from the motion); None: the generator's anchor skeleton. The generator still runs on
            the report frames for the stability report, which then describes the generator, not this
            skeleton (``stats["joint_drift"]`` is None, as it is per generator joint). Without
            ``init_weights`` the skinning network predicts this skeleton's weights.
    Returns:
        :class:`RigResult` in the user's units.
    Raises:
        RigCancelled, ValueError (bad options), ``CheckpointError`` (models cannot be loaded).
    """
    cfg = config or RigConfig()
    cfg.validate()
    if not isinstance(seq, MeshSequence):
        raise TypeError(f"rig_sequence needs a MeshSequence, got {type(seq).__name__}")
    with _network_threads(cfg.cpu_threads, import_torch=models is None):
        return _rig_sequence(seq, cfg, progress, should_cancel, models, skeleton)


def _rig_sequence(seq: MeshSequence, cfg: RigConfig, progress: Callable[[str, float], None] | None,
                  should_cancel: Callable[[], bool] | None, models,
                  skeleton: RigSkeleton | Callable[[MeshSequence], RigSkeleton] | None) -> RigResult:
    """:func:`rig_sequence` once its options are checked."""
    track = _Progress(progress, should_cancel)
    t_start = time.perf_counter()
    K, V = seq.n_frames, seq.n_verts
    faces = seq.faces

    track("normalize", 0.0)
    # float32 [K, V, 3], Y up
    verts_n, box = anchor_normalize(seq.verts, cfg.up_axis, progress=lambda f: track("normalize", f))
    anchor = verts_n[0]
    diag = float(np.linalg.norm(np.ptp(anchor.astype(np.float64), axis=0)))
    track("models", 0.0)  # loading (or the cached models) is timed on its own
    if models is None:
        models = get_models(cfg, progress=lambda f: track("models", f))
    _seed_torch(cfg.seed)

    track("sample", 0.0)
    n_report, n_skin = resolve_frame_counts(cfg, str(getattr(models, "device", "cpu")))
    report_frames = select_frames(K, n_report, always=(0, 1, 2))
    skin_frames = select_frames(K, n_skin)
    needed = np.union1d(report_frames, skin_frames)
    slot = {int(f): i for i, f in enumerate(needed)}
    samples = sample_surface(anchor, faces, cfg.n_points, seed=cfg.seed)
    track("sample", 0.25)
    per_frame = []  # one frame at a time: progress and cancellation on a large mesh
    for i, f in enumerate(needed):
        per_frame.append(points_on_frames(verts_n[f], faces, samples))
        track("sample", 0.25 + 0.25 * (i + 1) / len(needed))
    points = np.stack([p for p, _ in per_frame])  # [F, N, 3]
    normals = np.stack([n for _, n in per_frame])
    # a large mesh is rigged through a proxy: the skeleton, the motion fit and the networks see its vertices
    # (``fit_ids``), then every vertex gets its weights against the fitted motion
    proxy, seams = None, None
    if use_proxy(cfg.proxy, V, cfg.proxy_threshold):
        track("sample", 0.5)
        seams = colocated_representatives(verts_n)
        track("sample", 0.6)
        proxy = build_proxy(anchor, faces, seams, cfg.proxy_vertices, progress=lambda f: track("sample", 0.6 + 0.4 * f))
        log.info("%s: rigging through a proxy of %d of %d vertices", seq.name, proxy.size, V)
    fit_ids = np.arange(V) if proxy is None else proxy.vertices
    fit_verts = verts_n if proxy is None else verts_n[:, fit_ids]  # [K, V or P, 3]
    fit_faces = faces if proxy is None else proxy.faces
    # the faces around the vertices the networks see: their normals need nothing else
    normal_faces = faces if proxy is None else faces[np.isin(faces, fit_ids).any(axis=1)]
    track("sample", 1.0)

    # -- skeletons: anchor (canonical) and report frames
    given = skeleton(seq) if callable(skeleton) else skeleton
    from_motion = given is None and cfg.skeleton == "motion"
    decoding_share = 0.5 if from_motion else 1.0  # of the skeleton stage; the skeleton from motion takes the rest
    skeletons: list[tuple[np.ndarray, np.ndarray]] = []
    for s in range(0, len(report_frames), cfg.batch_frames):
        track("skeleton", decoding_share * s / len(report_frames))
        idx = [slot[int(f)] for f in report_frames[s:s + cfg.batch_frames]]
        skeletons.extend(models.generate_skeletons(points[idx], normals[idx], max_joints=cfg.max_joints,
                                                  stop_after_repeats=cfg.stop_after_repeats,
                                                  should_cancel=_decoding_progress(track, s, len(idx),
                                                                                   len(report_frames),
                                                                                   cfg.max_joints,
                                                                                   decoding_share)))
    track("skeleton", decoding_share)
    joints0 = np.asarray(skeletons[0][0], dtype=np.float32).reshape(-1, 3)
    parents0 = np.asarray(skeletons[0][1], dtype=np.int32).reshape(-1)
    try:
        validate_tree(parents0, n_joints=len(joints0))
    except SkeletonError as exc:
        raise RuntimeError(f"the skeleton generator returned an invalid anchor skeleton: {exc}") from exc
    names0, tails_n, skeleton_source, motion_stats = None, None, "network", None
    if from_motion:
        left = None if cfg.left_axis is None else np.asarray(cfg.left_axis, dtype=np.float64)
        if left is not None and box.rotation is not None:
            left = box.rotation @ left
        found = skeleton_from_motion(fit_verts, fit_faces, joints0, parents0,
                                     MotionSkeletonConfig(detail=cfg.motion_detail()),
                                     progress=lambda f: track("skeleton", decoding_share + (1.0 - decoding_share) * f),
                                     surface_points=None if proxy is None else anchor, left_axis=left)
        log.info("%s: skeleton from motion: %d joints (the generator's has %d)", seq.name, len(found.parents),
                 len(parents0))
        joints0 = np.asarray(found.joints, dtype=np.float64)  # not rounded: the fit is sensitive to its start
        parents0 = np.asarray(found.parents, dtype=np.int32)
        names0, tails_n = list(found.names), np.asarray(found.tails, dtype=np.float64)
        start_weights_given, skeleton_source, motion_stats = found.init_weights, "motion", found.stats
    elif given is not None:
        given.validate(V)
        generated_joints = len(parents0)
        joints0 = box.apply(np.asarray(given.joints, dtype=np.float64)).reshape(-1, 3)
        parents0 = np.asarray(given.parents, dtype=np.int32).reshape(-1)
        names0 = list(given.names) or None
        tails_n = None if given.tails is None else box.apply(np.asarray(given.tails, dtype=np.float64))
        log.info("%s: rigging with the given skeleton (%d joints; the generator's has %d)", seq.name, len(parents0),
                 generated_joints)
        start_weights_given, skeleton_source = given.init_weights, "given"
        if start_weights_given is not None and proxy is not None:
            start_weights_given = np.asarray(start_weights_given)[fit_ids]
    else:
        start_weights_given = None
    J = len(parents0)
    log.info("%s: anchor skeleton has %d joints", seq.name, J)

    # -- anchor teacher weights (at the vertices)
    track("skinning", 0.0)
    vn0 = vertex_normals(anchor, normal_faces)
    n_fit = len(fit_ids)
    teacher = np.asarray(models.predict_weights(anchor[fit_ids], vn0[fit_ids], points[slot[0]], normals[slot[0]],
                                                joints0, parents0), dtype=np.float32)
    if teacher.shape != (n_fit, J):
        raise RuntimeError(f"the skinning network returned weights of shape {list(teacher.shape)}, "
                           f"expected [{n_fit}, {J}]")
    start_weights = teacher if start_weights_given is None else start_weights_given
    rig_weights = prune_weights(start_weights, cfg.max_influences)
    track("skinning", 1.0)

    # -- motion fit
    fit_cfg = cfg.motion_fit_config(len(fit_ids), refine_joints=cfg.refine_joints)
    track("fit", 0.0)
    try:
        fit = fit_motion(fit_verts[0], fit_verts, rig_weights, parents0, joints0, fit_faces, fit_cfg,
                         progress=lambda f: track("fit", f), should_cancel=should_cancel)
    except FitCancelled as exc:
        raise RigCancelled(str(exc)) from exc
    transforms_n = fit.transforms  # float64 [K, J, 4, 4], normalized space
    # the joints the motion is articulated about (moved by the fit with refine_joints)
    pivots = joints0.astype(np.float64) if fit.joints is None else fit.joints  # float64 [J, 3]
    rig_joints = pivots.astype(np.float32)
    joints_moved = float(np.linalg.norm(pivots - joints0, axis=1).max()) / diag
    if joints_moved > 0 and tails_n is not None:  # the tails follow their moved heads (and children)
        tails_n = carry_tails(tails_n, joints0, pivots, parents0, tol=1e-6 * diag)

    # -- with a proxy: every vertex's weights against the proxy's motion
    if proxy is None:
        weights, rest = fit.weights, fit.rest
    else:
        track("weights", 0.0)
        weights, rest = full_mesh_weights(verts_n, proxy, fit.weights, transforms_n,
                                          fit_frames(K, fit_cfg.max_fit_frames), cfg.max_influences,
                                          qp_iters=fit_cfg.qp_iters, progress=lambda f: track("weights", f),
                                          joints=pivots, parents=parents0,
                                          max_bone_distance=fit_cfg.max_bone_distance,
                                          max_bone_hops=fit_cfg.max_bone_hops, proxy_rest=fit.rest,
                                          rest_rounds=FULL_MESH_REST_ROUNDS if cfg.solve_rest else 0,
                                          rest_regularisation=fit_cfg.rest_regularisation,
                                          rest_max_move=rest_move_limits(anchor, faces, fit_cfg.rest_max_edge_share)
                                          if cfg.solve_rest else None, faces=faces)
        track("weights", 1.0)
    if seams is None:
        seams = colocated_representatives(verts_n)
    # the rig's rest shape (with a proxy, the full-mesh pass untangled its own)
    rest_n, rest_untangled, rest_moved = rig_rest_shape(anchor, rest, faces, seams, diag, untangle=proxy is None,
                                                        between=lambda: track("fit", 1.0))

    # -- per-frame skinning for the instability heatmap (at the proxy's vertices, carried to its cells)
    track("heatmap", 0.0)
    instability = np.zeros((K, V), dtype=np.float32)
    if not cfg.heatmap:
        skin_frames = skin_frames[:0]
    later = [int(f) for f in skin_frames if f != 0]
    evaluated = np.zeros((len(skin_frames), n_fit), dtype=np.float32)
    if later:
        posed_joints = None
        if cfg.skin_joints == "posed":
            posed_joints = (np.einsum("kjab,jb->kja", transforms_n[:, :, :3, :3], pivots)
                            + transforms_n[:, :, :3, 3]).astype(np.float32)
        for i, f in enumerate(later):
            track("heatmap", i / len(later))
            vn = vertex_normals(verts_n[f], normal_faces)
            jf = joints0 if posed_joints is None else posed_joints[f]
            wf = models.predict_weights(fit_verts[f], vn[fit_ids], points[slot[f]], normals[slot[f]], jf, parents0)
            evaluated[i + 1] = skin_instability(wf, teacher)
        instability = _interpolate_frames(evaluated, skin_frames, K)
        if proxy is not None:
            instability = instability[:, proxy.cell]
    track("heatmap", 1.0)

    # -- report
    track("report", 0.0)
    recon, quality = playback_quality(rest_n, verts_n, weights, transforms_n, pivots, parents0, seams, diag,
                                      chunked=proxy is not None, progress=lambda f: track("report", 0.3 * f))
    frame_joints_count = np.full(K, -1, dtype=np.int32)
    frame_joints_count[report_frames] = [len(p) for _, p in skeletons]
    track("report", 0.3)
    stats: dict[str, Any] = {
        "name": seq.name, "frames": K, "vertices": V, "faces": int(len(faces)), "joints": J,
        "models": cfg.models, "models_loaded": loaded_model_files(models), "config": asdict(cfg), **quality,
        "fit_rmse_history": [r / diag for r in fit.rmse_history], "fit_seconds": fit.seconds, "fit_start": fit.start,
        "fit_keyframes": fit.keyframes,
        "bones_borrowing_motion": int(fit.borrowed.sum()),
        "articulated": bool(cfg.articulated),
        "joints_moved_max": joints_moved,
        "rest_moved_max": rest_moved,
        "rest_vertices_untangled": rest_untangled,
        "proxy_vertices": None if proxy is None else proxy.size,
        "skeleton_source": skeleton_source,
        "skeleton_from_motion": motion_stats,
        "skin_frames": skin_frames.tolist(),
        # None without the heatmap stage: no weights were predicted on later frames (the zeros are no measurement)
        "skin_instability_mean": float(instability[1:].mean()) if K > 1 and cfg.heatmap else None,
        "skin_instability_mean_per_frame": instability.mean(axis=1) if K > 1 and cfg.heatmap else None,
        **skin_reach(rest_n, weights, pivots, tails_n, parents0, names0 or _joint_names(parents0), diag),
    }
    if K > 1:
        stab = stability_report(fit_verts, report_frames, skeletons)
        stats["stability"] = stab
        stats["pjdd"] = stab.get("paper_3frame", {}).get("pjdd")
        stats["topology_flicker"] = stab["clip"]["topology_flicker"]
        stats["mcjd"] = stab["clip"]["mcjd"]
        # [J], one value per canonical (anchor) joint of the generator: None when the rig's skeleton was given
        stats["joint_drift"] = stab["joint_drift"] if skeleton_source == "network" else None
        gt_joints = seq.extras.get("joints") if isinstance(seq.extras, dict) else None
        if gt_joints is not None and np.shape(gt_joints)[0] == K:
            gt_parents = seq.extras.get("parents")
            gt = [(box.apply(np.asarray(gt_joints)[f]), np.asarray(gt_parents) if gt_parents is not None
                   else np.full(np.shape(gt_joints)[1], -1)) for f in report_frames]
            stats["gt"] = stability_report(fit_verts, report_frames, gt)
    else:
        stats.update(pjdd=None, topology_flicker=None, mcjd=None, joint_drift=None, stability=None)
    frame_predictions = None
    if cfg.per_frame_predictions:
        frame_predictions = []
        for i, f in enumerate(report_frames):  # every frame (resolve_frame_counts)
            track("report", 0.3 + 0.7 * i / K)
            jf = np.asarray(skeletons[i][0], dtype=np.float32).reshape(-1, 3)
            pf = np.asarray(skeletons[i][1], dtype=np.int32).reshape(-1)
            wf = models.predict_weights(verts_n[f], vertex_normals(verts_n[f], faces), points[slot[int(f)]],
                                        normals[slot[int(f)]], jf, pf)
            frame_predictions.append({"joints": box.invert(jf), "parents": pf,
                                      "weights": np.asarray(wf, dtype=np.float32)})
    track("report", 1.0)
    track.finish()
    stats["seconds"] = time.perf_counter() - t_start
    stats["stage_seconds"] = dict(track.timings)

    return RigResult(
        anchor_verts=np.asarray(seq.verts[0] if rest is None else box.invert(rest_n), dtype=np.float32),
        faces=np.asarray(faces, dtype=np.int32),
        joints=box.invert(rig_joints),
        parents=parents0.astype(np.int32),
        joint_names=names0 or _joint_names(parents0),
        weights=weights.astype(np.float32),
        bone_transforms=box.invert_transforms(transforms_n),
        frame_joints_count=frame_joints_count,
        recon_error=recon,
        skin_instability=instability.astype(np.float32),
        fps=float(seq.fps) if seq.fps else 30.0,
        stats=_clean(stats),
        frame_predictions=frame_predictions,
        tails=None if tails_n is None else box.invert(np.asarray(tails_n, dtype=np.float32)),
    )


@contextmanager
def _network_threads(threads: int, import_torch: bool) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (> 0) for the block, then put back (an in-process caller such as
    Blender keeps its own setting). torch is imported only when ``import_torch`` (the models will be loaded
    anyway); otherwise the setting applies if something already imported it."""
    torch = sys.modules.get("torch")
    if torch is None and import_torch and threads > 0:
        try:
            import torch
        except ImportError:  # get_models will say what is missing
            torch = None
    if torch is None or threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _seed_torch(seed: int) -> None:
    """Seed torch if the models use it (already imported); never imports it just for that."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
