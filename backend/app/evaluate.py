"""Score a rigging method's per-frame output: the metric dictionary behind ``sprig eval``.

The same function serves the CLI, the training evaluation and the rigger's report. Input is an
"eval-input" ``.npz`` (or an :class:`EvalInput` built in memory):

==================  ==================  ====================================================
key                 shape               meaning
==================  ==================  ====================================================
``verts``           float ``[K, V, 3]`` mesh frames; frame 0 is the anchor
``faces``           int ``[F, 3]``      triangles
``joints_{k}``      float ``[J_k, 3]``  predicted joints of frame ``k`` (every ``k < K``)
``parents_{k}``     int ``[J_k]``       parent per joint, ``-1`` = root (forests allowed)
``weights_{k}``     float ``[V, J_k]``  optional predicted skinning of frame ``k`` (all or none)
``gt_joints``       float ``[J, 3]``    optional ground-truth anchor joints (or ``[K, J, 3]``)
``gt_parents``      int ``[J]``         optional ground-truth parents
``gt_weights``      float ``[V, J]``    optional ground-truth skinning
==================  ==================  ====================================================

Everything is normalized by the anchor box of ``verts[0]`` before scoring. The paper's tables use
the anchor and the next two frames; un-suffixed stability keys (``pjdd`` ...) follow that protocol
(``EvalConfig.protocol_frames``) and ``*_clip`` keys use every frame. See ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.io.npz import read_npz_arrays
from backend.metrics.alignment import CORRESPONDENCE_MODES
from backend.metrics.drift import motion_compensated_joint_drift
from backend.metrics.skeleton_stability import StabilityConfig, mpjpe_anchor, skeleton_stability
from backend.metrics.skinning import joint_temporal_variance, skin_consistency, static_skinning_quality
from backend.metrics.static_skeleton import BONE_STEP, cd_j2j, static_skeleton_quality
from backend.normalize import AnchorBox
from backend.sequence import SequenceError, integer_valued, validate_arrays

logger = logging.getLogger(__name__)

METRIC_KEYS = ("pjdd", "blrd", "gsd", "jad", "mpjpe_anchor", "topology_flicker", "cd_j2j", "cd_j2b", "cd_b2b",
               "skin_l1", "skin_symkl", "skin_entropy", "skin_precision", "skin_recall", "skin_avg_l1", "mcjd")
CLIP_KEYS = ("pjdd_clip", "blrd_clip", "gsd_clip", "jad_clip", "topology_flicker_clip", "skin_l1_clip",
             "skin_symkl_clip", "skin_entropy_clip")
MAX_JOINT_DISTANCE = 1e3
"""How far (in anchor-box sizes) a joint may lie from the anchor box's center: metrics that sample bones
or voxelize the box would otherwise allocate without bound for a joint at 1e36."""
SIMPLEX_TOLERANCE = 1e-3
"""How far a skinning row's sum may stray from 1 (float32 storage and top-k renormalization stay far below)."""
_FRAME_KEY = re.compile(r"^(joints|parents|weights)_(\d+)$")


class EvalInputError(SequenceError):
    """An eval-input file or array set breaks the format (missing key, wrong shape, bad values)."""


@dataclass
class EvalConfig:
    """Options of :func:`evaluate`.

    Attributes:
        protocol_frames: frames of the paper's protocol (anchor + next two = 3) for un-suffixed keys.
        correspondence: joint correspondence mode, ``"auto"`` | ``"index"`` | ``"match"``.
        top_k: ``K_s`` of the skinning Top-K mask (paper: 4).
        gamma: mask value of the non-top-k valid joints (paper: 0).
        bone_step: bone sampling step for CD-J2B / CD-B2B (normalized units).
        gsd_eigs: eigenvalues in GSD (paper: 8).
        mcjd_neighbors: anchor vertices per local rigid fit in MCJD.
    """

    protocol_frames: int = 3
    correspondence: str = "auto"
    top_k: int = 4
    gamma: float = 0.0
    bone_step: float = BONE_STEP
    gsd_eigs: int = 8
    mcjd_neighbors: int = 10

    def __post_init__(self) -> None:
        if self.protocol_frames < 2:
            raise ValueError("protocol_frames must be >= 2 (the anchor and at least one more), "
                             f"got {self.protocol_frames}")
        if self.correspondence not in CORRESPONDENCE_MODES:
            raise ValueError(f"correspondence must be one of {CORRESPONDENCE_MODES}, got {self.correspondence!r}")


@dataclass
class EvalInput:
    """Per-frame rigging output of one clip plus optional ground truth (user units).

    Attributes:
        verts: float32 ``[K, V, 3]``; faces: int32 ``[F, 3]``.
        joints: ``K`` arrays float ``[J_k, 3]``; parents: ``K`` arrays int ``[J_k]``.
        weights: ``K`` arrays float ``[V, J_k]`` or None.
        gt_joints: float ``[J, 3]`` (anchor) or ``[K, J, 3]`` (every frame), or None.
        gt_parents: int ``[J]`` or None; gt_weights: float ``[V, J]`` or None.
        frames: original frame index of each frame (after :meth:`subset`).
        name: readable name (file stem).
    """

    verts: np.ndarray
    faces: np.ndarray
    joints: list[np.ndarray]
    parents: list[np.ndarray]
    weights: list[np.ndarray] | None = None
    gt_joints: np.ndarray | None = None
    gt_parents: np.ndarray | None = None
    gt_weights: np.ndarray | None = None
    frames: np.ndarray | None = None
    name: str = "clip"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_frames(self) -> int:
        return int(self.verts.shape[0])

    def subset(self, frames: np.ndarray) -> "EvalInput":
        """Keep only ``frames`` (indices); the first kept frame becomes the anchor.

        A ground-truth anchor skeleton ``gt_joints [J, 3]`` belongs to frame 0, so it is dropped
        (with a note) when frame 0 is not the first kept frame; ``gt_weights`` are pose-independent
        and kept.
        """
        frames = np.asarray(frames, dtype=np.int64)
        notes = list(self.notes)
        gt_joints = self.gt_joints
        if gt_joints is not None:
            if gt_joints.ndim == 3:
                gt_joints = gt_joints[frames]
            elif frames[0] != 0:
                notes.append("gt_joints [J, 3] belong to the file's frame 0, which is not the first evaluated "
                             "frame: anchor accuracy metrics are skipped")
                gt_joints = None
        return EvalInput(
            verts=self.verts[frames], faces=self.faces,
            joints=[self.joints[i] for i in frames], parents=[self.parents[i] for i in frames],
            weights=None if self.weights is None else [self.weights[i] for i in frames],
            gt_joints=gt_joints, gt_parents=self.gt_parents if gt_joints is not None else None,
            gt_weights=self.gt_weights, frames=self.frame_ids[frames], name=self.name, notes=notes)

    @property
    def frame_ids(self) -> np.ndarray:
        return np.arange(self.n_frames) if self.frames is None else np.asarray(self.frames)


def _check_parents(parents: np.ndarray, n: int, what: str) -> np.ndarray:
    parents = np.asarray(parents)
    if parents.ndim != 1 or len(parents) != n:
        raise EvalInputError(f"{what} must have shape [{n}] (one parent per joint), got {list(parents.shape)}")
    as_int = integer_valued(parents)
    if as_int is None:
        raise EvalInputError(f"{what} must hold integer joint indices, got dtype {parents.dtype}")
    parents = as_int
    if n and (parents.min() < -1 or parents.max() >= n):
        raise EvalInputError(f"{what} has a parent index outside [-1, {n - 1}]")
    if np.any(parents == np.arange(n)):
        raise EvalInputError(f"{what}: joint {int(np.flatnonzero(parents == np.arange(n))[0])} is its own parent")
    if n and not np.any(parents < 0):
        raise EvalInputError(f"{what} has no root (-1): the parents form a cycle")
    for j in range(n):  # walk up; a chain longer than n means a cycle
        p, steps = j, 0
        while p >= 0:
            p = int(parents[p])
            steps += 1
            if steps > n:
                raise EvalInputError(f"{what} contains a cycle through joint {j}")
    return parents.astype(np.int32)


def _check_points(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 3:
        raise EvalInputError(f"{what} must have shape [J, 3], got {list(x.shape)}")
    if len(x) == 0:
        raise EvalInputError(f"{what} has no joints")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise EvalInputError(f"{what} must be finite numbers")
    return x.astype(np.float64)


def _check_weights(w: np.ndarray, n_verts: int, n_joints: int, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.shape != (n_verts, n_joints):
        raise EvalInputError(f"{what} must have shape [V, J] = [{n_verts}, {n_joints}], got {list(w.shape)}")
    if not np.issubdtype(w.dtype, np.number) or not np.isfinite(w).all():
        raise EvalInputError(f"{what} must be finite numbers")
    if (w < 0).any():
        raise EvalInputError(f"{what} has negative weights")
    w = w.astype(np.float64)
    off = np.flatnonzero(np.abs(w.sum(axis=1) - 1.0) > SIMPLEX_TOLERANCE)
    if len(off):
        raise EvalInputError(f"{what}: {len(off)} of {n_verts} rows do not sum to 1 (vertex {int(off[0])} sums to "
                             f"{float(w[off[0]].sum()):.6g}); skinning weights must lie on the simplex")
    return w


def _validate(inp: EvalInput) -> None:
    inp.verts, inp.faces = validate_arrays(inp.verts, inp.faces, inp.name)
    k, v = inp.verts.shape[:2]
    if len(inp.joints) != k or len(inp.parents) != k:
        raise EvalInputError(f"{inp.name}: {k} mesh frames but {len(inp.joints)} joint sets and "
                             f"{len(inp.parents)} parent vectors (need one per frame)")
    inp.joints = [_check_points(j, f"joints_{i}") for i, j in enumerate(inp.joints)]
    lo, hi = inp.verts[0].min(axis=0).astype(np.float64), inp.verts[0].max(axis=0).astype(np.float64)
    center, size = (lo + hi) / 2.0, float((hi - lo).max())
    for i, j in enumerate(inp.joints):
        far = float(np.abs(j - center).max()) / size
        if far > MAX_JOINT_DISTANCE:
            raise EvalInputError(f"joints_{i} lie {far:.3g} anchor-box sizes from the mesh (at most "
                                 f"{MAX_JOINT_DISTANCE:.0e}): wrong units or corrupt values")
    inp.parents = [_check_parents(p, len(j), f"parents_{i}") for i, (p, j) in enumerate(zip(inp.parents, inp.joints))]
    if inp.weights is not None:
        if len(inp.weights) != k:
            raise EvalInputError(f"{inp.name}: weights for {len(inp.weights)} of {k} frames (give all or none)")
        inp.weights = [_check_weights(w, v, len(j), f"weights_{i}")
                       for i, (w, j) in enumerate(zip(inp.weights, inp.joints))]
    if inp.gt_joints is not None:
        gt = np.asarray(inp.gt_joints)
        if gt.ndim == 3:
            if gt.shape[0] != k:
                raise EvalInputError(f"gt_joints [K, J, 3] has {gt.shape[0]} frames, the mesh has {k}")
            inp.gt_joints = np.stack([_check_points(g, "gt_joints") for g in gt])
        else:
            inp.gt_joints = _check_points(gt, "gt_joints")
        far = float(np.abs(inp.gt_joints - center).max()) / size
        if far > MAX_JOINT_DISTANCE:
            raise EvalInputError(f"gt_joints lie {far:.3g} anchor-box sizes from the mesh (at most "
                                 f"{MAX_JOINT_DISTANCE:.0e}): wrong units or corrupt values")
    n_gt = None if inp.gt_joints is None else inp.gt_joints.shape[-2]
    if inp.gt_parents is not None:
        if n_gt is None:
            raise EvalInputError("gt_parents given without gt_joints")
        inp.gt_parents = _check_parents(inp.gt_parents, n_gt, "gt_parents")
    if inp.gt_weights is not None:
        gw = np.asarray(inp.gt_weights)
        if gw.ndim != 2:
            raise EvalInputError(f"gt_weights must have shape [V, J], got {list(gw.shape)}")
        n_cols = n_gt if n_gt is not None else gw.shape[1]
        inp.gt_weights = _check_weights(inp.gt_weights, v, n_cols, "gt_weights")
    if inp.frames is not None and len(inp.frames) != k:
        raise EvalInputError(f"{inp.name}: {len(inp.frames)} frame ids for {k} frames")


def load_eval_input(path: str | Path) -> EvalInput:
    """Read an eval-input ``.npz`` (format in the module docstring).

    Raises:
        EvalInputError: naming the missing key or wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    try:
        arrays = read_npz_arrays(path)
    except SequenceError as exc:
        raise EvalInputError(str(exc)) from exc
    name = path.stem
    for key in ("verts", "faces"):
        if key not in arrays:
            raise EvalInputError(f"{path.name}: missing key '{key}'")
    verts = np.asarray(arrays["verts"])
    if verts.ndim != 3:
        raise EvalInputError(f"{path.name}: verts must have shape [K, V, 3], got {list(verts.shape)}")
    k = verts.shape[0]
    for key in arrays:
        match = _FRAME_KEY.match(key)
        if match and int(match.group(2)) >= k:
            raise EvalInputError(f"{path.name}: '{key}' has no mesh frame (verts has K = {k} frames)")
    per_frame: dict[str, list] = {"joints": [], "parents": [], "weights": []}
    for kind in ("joints", "parents"):
        for i in range(k):
            key = f"{kind}_{i}"
            if key not in arrays:
                hint = (" (found stacked 'joints'; this format wants one joints_k per frame)"
                        if kind == "joints" and "joints" in arrays else "")
                raise EvalInputError(f"{path.name}: missing key '{key}' (every frame k < {k} needs {kind}_k){hint}")
            per_frame[kind].append(arrays[key])
    present = [i for i in range(k) if f"weights_{i}" in arrays]
    if present and len(present) != k:
        missing = next(i for i in range(k) if f"weights_{i}" not in arrays)
        raise EvalInputError(f"{path.name}: weights_k given for {len(present)} of {k} frames (missing "
                             f"'weights_{missing}'; give all or none)")
    weights = [arrays[f"weights_{i}"] for i in range(k)] if present else None
    return EvalInput(verts=verts, faces=arrays["faces"], joints=per_frame["joints"], parents=per_frame["parents"],
                     weights=weights, gt_joints=arrays.get("gt_joints"), gt_parents=arrays.get("gt_parents"),
                     gt_weights=arrays.get("gt_weights"), name=name)


def save_eval_input(path: str | Path, inp: EvalInput) -> Path:
    """Write ``inp`` as an eval-input ``.npz`` that :func:`load_eval_input` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"verts": inp.verts.astype(np.float32), "faces": inp.faces.astype(np.int32)}
    for i in range(inp.n_frames):
        arrays[f"joints_{i}"] = inp.joints[i].astype(np.float32)
        arrays[f"parents_{i}"] = inp.parents[i].astype(np.int32)
        if inp.weights is not None:
            arrays[f"weights_{i}"] = inp.weights[i].astype(np.float32)
    for key in ("gt_joints", "gt_parents", "gt_weights"):
        value = getattr(inp, key)
        if value is not None:
            arrays[key] = value.astype(np.int32 if key == "gt_parents" else np.float32)
    with open(path, "wb") as fh:  # opened here: numpy would append ".npz" to a path without it
        np.savez_compressed(fh, **arrays)
    return path


def parse_frames(spec: str, n_frames: int) -> np.ndarray:
    """Frame indices from a Python slice spec ``START:STOP[:STEP]`` (or a single index) over ``n_frames``.

    Raises:
        EvalInputError: for a malformed spec or an empty selection.
    """
    parts = spec.split(":")
    try:
        if len(parts) == 1:
            i = int(parts[0])
            sel = np.arange(n_frames)[i:i + 1] if i >= 0 else np.arange(n_frames)[i:][:1]
        elif len(parts) in (2, 3):
            nums = [int(p) if p.strip() else None for p in parts]
            sel = np.arange(n_frames)[slice(*nums)]
        else:
            raise ValueError
    except ValueError:
        raise EvalInputError(f"--frames {spec!r}: expected START:STOP[:STEP] (e.g. 0:3)") from None
    if len(sel) == 0:
        raise EvalInputError(f"--frames {spec!r} selects no frame of the {n_frames}")
    return sel


def _clean(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _clean_list(values) -> list[float | None]:
    return [_clean(v) for v in np.asarray(values, dtype=np.float64)]


def _nanmean(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _to_anchor_columns(w: np.ndarray, frame_index: np.ndarray, anchor_index: np.ndarray, n_anchor: int) -> np.ndarray:
    """Re-index weight columns ``[V, J_k]`` to the anchor's joints ``[V, J_0]`` through a matching.

    Columns of frame joints with no anchor partner are dropped; anchor joints with no partner get 0.
    """
    out = np.zeros((w.shape[0], n_anchor))
    out[:, anchor_index] = w[:, frame_index]
    return out


def evaluate(inp: EvalInput, config: EvalConfig | None = None) -> dict:
    """Compute every metric that the input supports; a JSON-ready dict.

    Returns:
        A dict with the keys in :data:`METRIC_KEYS` and :data:`CLIP_KEYS` (None where not
        computable), ``per_frame`` (lists of length ``K``; None where undefined, e.g. at the anchor),
        ``per_joint`` (per anchor joint), and bookkeeping (``name``, ``frames``, ``protocol_frames``,
        ``n_frames``, ``n_verts``, ``correspondence``, ``notes``).
    """
    config = config or EvalConfig()
    k = inp.n_frames
    p = min(config.protocol_frames, k)
    box = AnchorBox.fit(inp.verts[0])
    verts = box.apply(inp.verts).astype(np.float64)
    joints = [box.apply(j).astype(np.float64) for j in inp.joints]
    notes = list(inp.notes)
    res: dict = {key: None for key in METRIC_KEYS + CLIP_KEYS + ("cd_j2j_clip",)}
    res.update(name=inp.name, n_frames=k, n_verts=int(inp.verts.shape[1]), frames=inp.frame_ids.tolist(),
               protocol_frames=inp.frame_ids[:p].tolist(), correspondence=config.correspondence,
               anchor_scale=float(box.scale))
    per_frame: dict = {"n_joints": [len(j) for j in joints]}
    per_joint: dict = {}

    # Skeleton temporal stability (Eq. 28-31) and topology flicker.
    stab = skeleton_stability(joints, inp.parents, StabilityConfig(config.correspondence, config.gsd_eigs))
    for key, value in stab.summary(p).items():
        res[key] = value
    for key, value in stab.summary().items():
        res[f"{key}_clip"] = value
    for key in ("pjdd", "blrd", "gsd", "jad"):
        per_frame[key] = _clean_list(getattr(stab, key))
    per_frame["topology_flicker"] = [bool(f) for f in stab.flicker]
    if k < 2:
        notes.append("a single frame: temporal metrics are not computable")

    # Motion-compensated joint drift over the whole clip.
    if k >= 2:
        drift = motion_compensated_joint_drift(verts, joints, config.mcjd_neighbors)
        res["mcjd"] = _clean(drift.mean)
        per_frame["mcjd"] = _clean_list(drift.per_frame)
        per_joint["mcjd_drift"] = _clean_list(drift.per_joint)

    # Accuracy against ground truth (anchor), Eq. 32 and §10.6.
    if inp.gt_joints is not None:
        gt_all = box.apply(inp.gt_joints).astype(np.float64)
        gt0 = gt_all[0] if gt_all.ndim == 3 else gt_all
        res["mpjpe_anchor"] = mpjpe_anchor(joints[0], gt0, config.correspondence)
        static = static_skeleton_quality(joints[0], gt0, inp.parents[0], inp.gt_parents, config.bone_step)
        res["cd_j2j"], res["cd_j2b"], res["cd_b2b"] = static.cd_j2j, static.cd_j2b, static.cd_b2b
        if inp.gt_parents is None:
            notes.append("no gt_parents: CD-J2B and CD-B2B are null")
        if gt_all.ndim == 3:  # per-frame accuracy: guards against a rig that is stable but stopped following
            per_frame["cd_j2j"] = [cd_j2j(joints[i], gt_all[i]) for i in range(k)]
            res["cd_j2j_clip"] = float(np.mean(per_frame["cd_j2j"]))
    else:
        notes.append("no gt_joints: MPJPE@Anchor and CD-J2J/J2B/B2B are null")

    # Skinning: temporal consistency against the frame-0 (anchor) weights as vertex-level teacher.
    if inp.weights is not None:
        j0 = len(joints[0])
        mapped = np.stack([_to_anchor_columns(inp.weights[i], m.frame_index, m.anchor_index, j0)
                           for i, m in enumerate(stab.matchings)])  # [K, V, J0]
        if k >= 2:
            cons = skin_consistency(mapped, None, config.top_k, config.gamma)
            res["skin_l1"] = _nanmean(cons.per_frame_l1[1:p])
            res["skin_symkl"] = _nanmean(cons.per_frame_symkl[1:p])
            res["skin_entropy"] = _nanmean(cons.per_frame_entropy[:p])
            res["skin_l1_clip"], res["skin_symkl_clip"] = _clean(cons.l1), _clean(cons.symkl)
            res["skin_entropy_clip"] = _clean(cons.entropy)
            per_frame["skin_l1"] = _clean_list(cons.per_frame_l1)
            per_frame["skin_symkl"] = _clean_list(cons.per_frame_symkl)
            per_frame["skin_entropy"] = _clean_list(cons.per_frame_entropy)
            per_joint["skin_cons"] = _clean_list(joint_temporal_variance(mapped[:p]))
        if inp.gt_weights is not None:
            res.update(_static_skinning(inp, joints[0], box, config, notes))
        else:
            notes.append("no gt_weights: skinning Precision/Recall/L1 are null")
    else:
        notes.append("no weights_k: skinning metrics are null")

    res["per_frame"] = per_frame
    res["per_joint"] = per_joint
    res["notes"] = notes
    return res


def _static_skinning(inp: EvalInput, anchor_joints: np.ndarray, box: AnchorBox, config: EvalConfig,
                     notes: list[str]) -> dict:
    """Precision / Recall / avg L1 of the anchor weights, columns mapped onto the ground-truth joints."""
    w0 = inp.weights[0]
    n_gt = inp.gt_weights.shape[1]
    if inp.gt_joints is not None:
        gt0 = box.apply(inp.gt_joints[0] if inp.gt_joints.ndim == 3 else inp.gt_joints).astype(np.float64)
        same = len(anchor_joints) == n_gt and config.correspondence in ("auto", "index")
        if same:
            pred = w0
        else:
            from scipy.optimize import linear_sum_assignment
            dist = np.linalg.norm(anchor_joints[:, None, :] - gt0[None, :, :], axis=-1)
            rows, cols = linear_sum_assignment(dist)
            pred = np.zeros((w0.shape[0], n_gt))
            pred[:, cols] = w0[:, rows]
    elif w0.shape[1] == n_gt:
        pred = w0
    else:
        notes.append("gt_weights has a different joint count than weights_0 and no gt_joints to match "
                     "them: skinning Precision/Recall/L1 are null")
        return {}
    q = static_skinning_quality(pred, inp.gt_weights)
    return {"skin_precision": q.precision, "skin_recall": q.recall, "skin_avg_l1": q.avg_l1}


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"
    return str(x)


def format_report(res: dict) -> str:
    """A readable plain-text table of an :func:`evaluate` result."""
    pf = res["protocol_frames"]
    frames = res["frames"]
    proto = f"frames {pf[0]}-{pf[-1]}" if len(pf) > 1 else f"frame {pf[0]}"
    clip = f"frames {frames[0]}-{frames[-1]} ({len(frames)})"
    lines = [f"{res['name']}: {res['n_frames']} frames, {res['n_verts']} vertices, joints per frame "
             f"{min(res['per_frame']['n_joints'])}-{max(res['per_frame']['n_joints'])}",
             "", f"{'metric':<34}{'paper protocol':>18}{'whole clip':>18}",
             f"{'':<34}{proto:>18}{clip:>18}", "-" * 70]
    rows = [("PJDD (Eq. 28)", "pjdd"), ("BLRD (Eq. 29)", "blrd"), ("GSD (Eq. 30)", "gsd"), ("JAD (Eq. 31)", "jad"),
            ("topology flicker (frame fraction)", "topology_flicker"), ("skin L1(B,C->A) (Eq. 35)", "skin_l1"),
            ("skin SymKL (Eq. 36)", "skin_symkl"), ("skin entropy (Eq. 37)", "skin_entropy")]
    for label, key in rows:
        lines.append(f"{label:<34}{_fmt(res[key]):>18}{_fmt(res[key + '_clip']):>18}")
    lines.append(f"{'MCJD (motion-compensated drift)':<34}{'':>18}{_fmt(res['mcjd']):>18}")
    lines.append("(skin L1 / SymKL / entropy are sums over the vertices (Eq. 18), so they grow with the mesh: "
                 "compare rows, not clips)")
    lines += ["", "anchor accuracy (needs ground truth, normalized units)", "-" * 70]
    for label, key in [("MPJPE@Anchor (Eq. 32)", "mpjpe_anchor"), ("CD-J2J", "cd_j2j"), ("CD-J2B", "cd_j2b"),
                       ("CD-B2B", "cd_b2b"), ("skin precision", "skin_precision"), ("skin recall", "skin_recall"),
                       ("skin avg L1", "skin_avg_l1")]:
        lines.append(f"{label:<34}{_fmt(res[key]):>18}")
    if res.get("cd_j2j_clip") is not None:
        lines.append(f"{'CD-J2J, mean over frames':<34}{_fmt(res['cd_j2j_clip']):>18}")
    for note in res.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
