"""Stage 4: the paper's evaluation tables, base rigger vs SPRig (``python training/run.py --stage eval``).

Measured on the corpus TEST split (clips never used in training, capped by the preset) and, separately,
on every real artist rig in ``../shared/realdata/*.npz`` (evaluation only; skipped with a note when the
folder is absent). Every number comes from ``backend.metrics`` (through ``backend.app.evaluate.evaluate``
for the skeleton metrics):

* Table 1/6 -- skeleton temporal stability, PJDD / BLRD / GSD / JAD (Eq. 28-31), MPJPE@Anchor (Eq. 32),
  topology flicker on the paper's 3-frame protocol (frames 0-2), motion-compensated joint drift (MCJD)
  over whole clips; static CD-J2J / J2B / B2B of the anchor skeleton against ground truth; the same
  stability metrics on the ground-truth skeleton's own motion; the mean per-frame CD-J2J of every
  frame's prediction against that frame's ground truth.
* Table 2 -- skeleton ablations (w/o L_geom, w/o L_token, alpha = 1) and a full control, each a short
  ``sprig-skeleton`` run of the same length into its own state dir / checkpoint under
  ``workdir/eval_ablations``.
* Table 3/7 -- skinning consistency L1(B,C->A), SymKL(B,C<->A), Entropy (Eq. 35-37) against the anchor
  teacher (the base skinning network on the anchor vertices, as in the paper).
* Table 4 -- static skinning Precision / Recall / avg L1 with the ground-truth skeleton.
* Table 5 -- skinning ablations (each of the five loss terms removed) and a full control, short runs.
* A Fig. 5-like PNG: per-vertex L1 to the anchor teacher on one sequence, base vs SPRig.

Inputs are normalized by each clip's anchor box and sampled once on the anchor (the same (face,
barycentric) samples on every frame); the base and the SPRig models see identical inputs.

Outputs: ``reports/evaluation.md``, ``reports/evaluation.json`` and ``reports/fig5_skin_l1_heatmap.png``
in the repository for the default and large presets; under ``workdir/reports`` for ``smoke`` (so a CI
run never overwrites the committed report). Per-clip predicted skeletons are kept as eval-input files
(``workdir/eval/predictions/*.npz``) that ``sprig eval`` can re-score.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.app.evaluate import EvalConfig as ScoreConfig
from backend.app.evaluate import EvalInput, evaluate, save_eval_input
from backend.metrics.controls import kmeans_skeleton
from backend.metrics.skinning import masked_renormalize, skin_consistency, static_skinning_quality, topk_mask
from backend.models.checkpoint import CheckpointError, load_model, read_checkpoint
from backend.models.inference import CHECKPOINT_NAMES, RiggerModels, resolve_device
from backend.normalize import AnchorBox
from backend.sampling import points_on_frames, sample_surface, vertex_normals
from training.eval_static import forest_to_tree
from training.presets import get_preset
from training.stage_utils import stage_config

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"

SKELETON_ABLATIONS: dict[str, dict] = {
    "full": {},
    "no_geom": {"no_geom": True},
    "no_token": {"no_token": True},
    "alpha1": {"alpha": 1.0},
}
SKELETON_ABLATION_LABELS = {"full": "full (same short run)", "no_geom": "(1) w/o L_geom",
                            "no_token": "(2) w/o L_token", "alpha1": "(3) alpha = 1"}
SKINNING_ABLATIONS: dict[str, dict] = {
    "full": {},
    "no_sym": {"use_sym": False},
    "no_l1": {"use_l1": False},
    "no_anchor": {"use_anchor": False},
    "no_ent": {"use_ent": False},
    "no_prior": {"use_prior": False},
}
SKINNING_ABLATION_LABELS = {"full": "full (same short run)", "no_sym": "w/o L_sym (SymKL)", "no_l1": "w/o L_1",
                            "no_anchor": "w/o L_anchor", "no_ent": "w/o L_ent", "no_prior": "w/o L_prior"}
STABILITY_KEYS = ("pjdd", "blrd", "gsd", "jad", "mpjpe_anchor", "topology_flicker")
SKELETON_KEYS = STABILITY_KEYS + ("mcjd", "cd_j2j", "cd_j2b", "cd_b2b", "cd_j2j_clip", "pjdd_clip", "blrd_clip",
                                  "topology_flicker_clip", "n_joints_anchor")


@dataclass
class EvaluationConfig:
    """How much the evaluation stage measures.

    Attributes:
        n_test_clips: corpus test-split clips (the first ones of the split).
        max_frames: frames per corpus clip (from frame 0) for whole-clip metrics (MCJD, per-frame CD-J2J).
        real_max_frames: frames per real clip (from frame 0).
        protocol_frames: the paper's protocol: the anchor and the next two frames.
        n_points: surface samples per frame (None: the base checkpoint's pretraining value).
        max_joints: joint limit of greedy decoding.
        top_k, gamma: Top-K_s mask of the skinning consistency metrics (paper: 4, 0).
        realdata: evaluate the real rigs too.
        ablations: run and score the short ablation trainings (Tables 2 and 5).
        skeleton_ablation_steps, skinning_ablation_steps: optimizer steps of each ablation run.
        ablation_train_clips, ablation_val_clips: training / validation clips of each ablation run.
        ablation_test_clips: test clips used to score the ablations (None: all evaluated test clips).
        seed: surface sampling seed.
    """

    n_test_clips: int = 24
    max_frames: int = 16
    real_max_frames: int = 16
    protocol_frames: int = 3
    n_points: int | None = None
    max_joints: int = 64
    top_k: int = 4
    gamma: float = 0.0
    realdata: bool = True
    ablations: bool = True
    skeleton_ablation_steps: int = 40
    skinning_ablation_steps: int = 80
    ablation_train_clips: int | None = 48
    ablation_val_clips: int = 4
    ablation_test_clips: int | None = 12
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


EVAL_PRESETS: dict[str, dict] = {
    "smoke": dict(n_test_clips=2, max_frames=4, real_max_frames=3, max_joints=16, skeleton_ablation_steps=2,
                  skinning_ablation_steps=2, ablation_train_clips=2, ablation_val_clips=1, ablation_test_clips=2),
    "default": dict(),
    "large": dict(n_test_clips=200, max_frames=48, real_max_frames=48, skeleton_ablation_steps=500,
                  skinning_ablation_steps=1000, ablation_train_clips=None, ablation_val_clips=16,
                  ablation_test_clips=64),
}


def make_config(preset: str, **overrides) -> EvaluationConfig:
    """The evaluation config of a preset with field overrides."""
    cfg = stage_config(EvaluationConfig, EVAL_PRESETS, preset, overrides, "evaluation")
    if cfg.protocol_frames < 2:
        raise ValueError(f"protocol_frames must be >= 2, got {cfg.protocol_frames}")
    if min(cfg.max_frames, cfg.real_max_frames) < cfg.protocol_frames:
        raise ValueError("max_frames and real_max_frames must cover the protocol frames "
                         f"({cfg.protocol_frames}), got {cfg.max_frames} and {cfg.real_max_frames}")
    return cfg


# ---- clips ----------------------------------------------------------------------------------------

@dataclass
class EvalClip:
    """One evaluation clip with ground truth, anchor-normalized, sampled once on the anchor.

    Attributes:
        name: readable name; source: ``"corpus"`` or ``"real"``.
        verts: float32 ``[K, V, 3]``; faces: int32 ``[F, 3]``; vnormals: float32 ``[K, V, 3]``.
        points, normals: float32 ``[K, N, 3]`` shared surface samples on every frame.
        gt_joints: float32 ``[K, J, 3]``; gt_parents: int32 ``[J]`` (a tree); gt_weights: float32 ``[V, J]``.
    """

    name: str
    source: str
    verts: np.ndarray
    faces: np.ndarray
    vnormals: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    gt_joints: np.ndarray
    gt_parents: np.ndarray
    gt_weights: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.verts.shape[0])

    def head(self, n: int) -> "EvalClip":
        """The first ``n`` frames (the anchor stays frame 0)."""
        return replace(self, verts=self.verts[:n], vnormals=self.vnormals[:n], points=self.points[:n],
                       normals=self.normals[:n], gt_joints=self.gt_joints[:n])


def make_clip(name: str, source: str, verts: np.ndarray, faces: np.ndarray, gt_joints: np.ndarray,
              gt_parents: np.ndarray, gt_weights: np.ndarray, n_points: int, seed: int) -> EvalClip:
    """Normalize by the anchor box and sample ``n_points`` anchor samples shared by every frame.

    Args:
        verts: float ``[K, V, 3]`` user units; gt_joints: float ``[K, J, 3]`` user units.
    """
    box = AnchorBox.fit(verts[0])
    nv = box.apply(verts)
    faces = np.asarray(faces, dtype=np.int32)
    pts, nrm = points_on_frames(nv, faces, sample_surface(nv[0], faces, n_points, seed=seed))
    w = np.asarray(gt_weights, dtype=np.float32)
    return EvalClip(name, source, nv, faces, vertex_normals(nv, faces).astype(np.float32), pts, nrm,
                    box.apply(gt_joints), np.asarray(gt_parents, dtype=np.int32), w)


def corpus_test_clips(corpus, cfg: EvaluationConfig, n_points: int) -> list[EvalClip]:
    """The first ``cfg.n_test_clips`` test-split clips (first ``cfg.max_frames`` frames each)."""
    ids = [int(i) for i in corpus.indices("test")]
    if not ids:
        raise RuntimeError(f"corpus at {corpus.root} has no test split; regenerate it with a test fraction > 0")
    clips = []
    for i, index in enumerate(ids[: cfg.n_test_clips]):
        rec = corpus.load(index)
        if rec.n_frames < cfg.protocol_frames:
            log.warning("test record %d has %d frames (< %d); skipped", index, rec.n_frames, cfg.protocol_frames)
            continue
        k = min(rec.n_frames, cfg.max_frames)
        clips.append(make_clip(f"test_{index:07d}_{rec.family}", "corpus", rec.verts[:k], rec.faces, rec.joints[:k],
                               rec.parents, rec.weights, n_points, cfg.seed + i))
    return clips


def real_clips(folder: Path, cfg: EvaluationConfig, n_points: int) -> tuple[list[EvalClip], list[str]]:
    """Every rigged ``*.npz`` of ``folder`` (first ``cfg.real_max_frames`` frames); returns clips and notes.

    Parent forests are joined into one tree (:func:`training.eval_static.forest_to_tree`), joint
    columns permuted alike on every frame and in the weights.
    """
    from backend.io.npz import load_npz

    clips, notes = [], []
    for i, path in enumerate(sorted(folder.glob("*.npz"))):
        seq = load_npz(path)
        ex = seq.extras
        if "joints" not in ex or "parents" not in ex or "weights" not in ex:
            notes.append(f"{path.name}: no ground-truth joints/parents/weights; skipped")
            continue
        if seq.n_frames < cfg.protocol_frames:
            notes.append(f"{path.name}: {seq.n_frames} frames (< {cfg.protocol_frames}); skipped")
            continue
        joints = np.asarray(ex["joints"], dtype=np.float64)
        n_j = joints.shape[1]
        _, parents, order = forest_to_tree(joints[0], ex["parents"], np.arange(n_j)[None])
        order = np.asarray(order[0])
        k = min(seq.n_frames, cfg.real_max_frames)
        clips.append(make_clip(path.stem, "real", seq.verts[:k], seq.faces, joints[:k][:, order], parents,
                               np.asarray(ex["weights"])[:, order], n_points, cfg.seed + 1000 + i))
    return clips, notes


# ---- predictions and scores ------------------------------------------------------------------------

def predict_skeletons(models: RiggerModels, clip: EvalClip, max_joints: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frame-by-frame greedy skeletons ``K x (joints float32 [J_k, 3], parents int32 [J_k])`` (normalized)."""
    return models.generate_skeletons(clip.points, clip.normals, max_joints=max_joints)


def skeleton_input(clip: EvalClip, skeletons: list[tuple[np.ndarray, np.ndarray]], tag: str) -> EvalInput:
    """An :class:`backend.app.evaluate.EvalInput` of per-frame skeletons with the clip's ground truth."""
    return EvalInput(verts=clip.verts, faces=clip.faces, joints=[j for j, _ in skeletons],
                     parents=[p for _, p in skeletons], gt_joints=clip.gt_joints, gt_parents=clip.gt_parents,
                     name=f"{clip.name}_{tag}")


def score_skeletons(inp: EvalInput, cfg: EvaluationConfig) -> dict:
    """Skeleton metrics of one clip (:func:`backend.app.evaluate.evaluate`): protocol, whole clip and accuracy."""
    res = evaluate(inp, ScoreConfig(protocol_frames=cfg.protocol_frames))
    out = {k: res.get(k) for k in SKELETON_KEYS if k in res}
    out["n_joints_anchor"] = int(res["per_frame"]["n_joints"][0])
    out["n_joints_mean"] = float(np.mean(res["per_frame"]["n_joints"]))
    return out


def predict_skin_frames(models: RiggerModels, clip: EvalClip, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Weights at every vertex of every frame with one fixed (anchor) skeleton: float32 ``[K, V, J]``."""
    return models.predict_weights(clip.verts, clip.vnormals, clip.points, clip.normals, joints, parents)


def skin_scores(weights: np.ndarray, teacher: np.ndarray, cfg: EvaluationConfig) -> dict:
    """Eq. 35-37 against the anchor teacher: protocol frames and whole clip.

    Args:
        weights: float ``[K, V, J]`` predictions on every frame; teacher: float ``[V, J]``.
    """
    p = cfg.protocol_frames
    proto = skin_consistency(weights[:p], teacher, cfg.top_k, cfg.gamma)
    clip = skin_consistency(weights, teacher, cfg.top_k, cfg.gamma)
    return {"skin_l1": proto.l1, "skin_symkl": proto.symkl, "skin_entropy": proto.entropy,
            "skin_l1_clip": clip.l1, "skin_symkl_clip": clip.symkl, "skin_entropy_clip": clip.entropy}


def per_vertex_l1(weights: np.ndarray, teacher: np.ndarray, cfg: EvaluationConfig) -> np.ndarray:
    """Per-vertex masked L1 to the teacher, ``sum_j |W~^(k) - Y~|_ij m_ij`` (the summand of Eq. 35).

    Args:
        weights: float ``[V, J]`` prediction on one perturbed frame; teacher: float ``[V, J]``.
    Returns:
        float64 ``[V]``.
    """
    mask = topk_mask(np.asarray(teacher, np.float64), cfg.top_k, cfg.gamma)
    y = masked_renormalize(np.asarray(teacher, np.float64), mask)
    w = masked_renormalize(np.asarray(weights, np.float64), mask)
    return (np.abs(w - y) * mask).sum(axis=-1)


def static_skin_scores(models: RiggerModels, clip: EvalClip, cfg: EvaluationConfig) -> dict:
    """Table 4: Precision / Recall / avg L1 on the protocol frames, each with its ground-truth skeleton."""
    p = cfg.protocol_frames
    w = models.predict_weights(clip.verts[:p], clip.vnormals[:p], clip.points[:p], clip.normals[:p],
                               clip.gt_joints[:p], clip.gt_parents)
    q = [static_skinning_quality(w[k], clip.gt_weights) for k in range(p)]
    return {"skin_precision": float(np.mean([x.precision for x in q])),
            "skin_recall": float(np.mean([x.recall for x in q])),
            "skin_avg_l1": float(np.mean([x.avg_l1 for x in q]))}


def anchor_skeleton(skeletons: list[tuple[np.ndarray, np.ndarray]], clip: EvalClip) -> tuple[np.ndarray, np.ndarray, str]:
    """The skeleton the skinning metrics use: the base model's anchor rig (as the paper), or the ground
    truth anchor skeleton when the base rig has fewer than 2 joints."""
    joints, parents = skeletons[0]
    if len(parents) >= 2:
        return joints, parents, "base anchor rig"
    return clip.gt_joints[0], clip.gt_parents, "ground truth (base anchor rig has < 2 joints)"


def mean_over(rows: list[dict], keys) -> dict:
    """Mean of each key over the rows, ignoring None / NaN; ``n`` = rows."""
    out: dict = {"n": len(rows)}
    for k in keys:
        vals = [float(r[k]) for r in rows if r.get(k) is not None and np.isfinite(float(r[k]))]
        out[k] = float(np.mean(vals)) if vals else None
    return out


# ---- checkpoints -----------------------------------------------------------------------------------

def checkpoint_record(path: Path) -> dict:
    """What the report says about a checkpoint: present, stage, step(s), sha256, or why it is unusable."""
    if not path.is_file():
        return {"path": str(path), "present": False, "error": "missing"}
    try:
        _, info = read_checkpoint(path)
    except CheckpointError as exc:
        return {"path": str(path), "present": False, "error": str(exc)}
    prov = info.provenance
    steps = prov.get("total_steps") or prov.get("config", {}).get("steps")
    return {"path": str(path), "present": True, "stage": info.stage, "step": prov.get("step"),
            "total_steps": steps, "complete": prov.get("complete"), "sha256": info.sha256[:16],
            "commit": prov.get("commit")}


def load_pair(skel_path: Path, skin_path: Path, device: torch.device) -> RiggerModels:
    skel, skel_info = load_model(skel_path, expected="skeleton_generator", device=device)
    skin, skin_info = load_model(skin_path, expected="skinning_network", device=device)
    return RiggerModels(skeleton=skel, skinning=skin, device=device, skeleton_info=skel_info, skinning_info=skin_info)


# ---- evaluation of one data set ----------------------------------------------------------------------

def evaluate_set(clips: list[EvalClip], models: dict[str, RiggerModels], cfg: EvaluationConfig,
                 pred_dir: Path | None, desc: str) -> dict:
    """Tables 1, 3, 4 on a list of clips for each available model set (``base``, ``sprig``).

    Returns:
        ``{"clips": {name: {"gt": .., "base": .., "sprig": ..}}, "summary": {row: means}, "heatmap": ..}``.
    """
    per_clip: dict[str, dict] = {}
    heat: dict | None = None
    for clip in tqdm(clips, desc=desc, dynamic_ncols=True):
        row: dict = {"n_frames": clip.n_frames, "n_verts": int(clip.verts.shape[1]),
                     "n_joints_gt": int(len(clip.gt_parents))}
        gt_skel = [(clip.gt_joints[k], clip.gt_parents) for k in range(clip.n_frames)]
        row["gt"] = score_skeletons(skeleton_input(clip, gt_skel, "gt"), cfg)
        # the no-learning control, frame by frame like the base model, told the ground truth's joint count
        control = [kmeans_skeleton(clip.verts[k], len(clip.gt_parents), seed=0) for k in range(clip.n_frames)]
        row["kmeans"] = score_skeletons(skeleton_input(clip, control, "kmeans"), cfg)
        skeletons = {}
        for tag, m in models.items():
            skeletons[tag] = predict_skeletons(m, clip, cfg.max_joints)
            inp = skeleton_input(clip, skeletons[tag], tag)
            if pred_dir is not None:
                save_eval_input(pred_dir / f"{inp.name}.npz", inp)
            row[tag] = score_skeletons(inp, cfg)
            row[tag].update(static_skin_scores(m, clip, cfg))
        if "base" in models:
            joints, parents, source = anchor_skeleton(skeletons["base"], clip)
            row["skin_skeleton"] = source
            w = {tag: predict_skin_frames(m, clip, joints, parents) for tag, m in models.items()}
            teacher = w["base"][0]  # the base skinning network on the anchor vertices (Eq. 5)
            for tag in models:
                row[tag].update(skin_scores(w[tag], teacher, cfg))
            if heat is None or (clip.source == "real" and heat["source"] != "real"):
                heat = {"clip": clip.name, "source": clip.source, "frame": 1, "verts": clip.verts[1],
                        "faces": clip.faces, "skeleton": source,
                        **{tag: per_vertex_l1(w[tag][1], teacher, cfg) for tag in models}}
        per_clip[clip.name] = row
    keys = SKELETON_KEYS + ("n_joints_mean", "skin_l1", "skin_symkl", "skin_entropy", "skin_l1_clip",
                            "skin_symkl_clip", "skin_entropy_clip", "skin_precision", "skin_recall", "skin_avg_l1")
    summary = {tag: mean_over([r[tag] for r in per_clip.values() if tag in r], keys)
               for tag in ("gt", "kmeans", *models)}
    return {"clips": per_clip, "summary": summary, "heatmap": heat}


# ---- ablations -------------------------------------------------------------------------------------

def _seed_cache(src_dir: Path, dst_dir: Path, names: tuple[str, ...]) -> None:
    """Copy a finished run's pseudo-label / teacher caches into a new state dir (same keys: same data)."""
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if src.is_file() and not dst.exists():
            dst_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def run_ablations(kind: str, preset: str, workdir: Path, device: str, cfg: EvaluationConfig) -> dict[str, dict]:
    """Short ``sprig-skeleton`` / ``sprig-skinning`` runs, one per ablation, into ``workdir/eval_ablations``.

    Returns:
        ``{name: {"checkpoint", "step", "complete", "seconds"} or {"error"}}``; runs resume and a finished
        run is not trained again.
    """
    if kind == "skeleton":
        from training import sprig_skeleton as stage
        table, steps, caches = SKELETON_ABLATIONS, cfg.skeleton_ablation_steps, ("labels.npz", "labels_val.npz")
    else:
        from training import sprig_skinning as stage
        table, steps, caches = SKINNING_ABLATIONS, cfg.skinning_ablation_steps, ("data.npz", "data_val.npz")
    common = dict(steps=steps, max_train_clips=cfg.ablation_train_clips, n_val_clips=cfg.ablation_val_clips,
                  val_every=steps, ckpt_every=max(1, steps // 4), log_every=max(1, steps // 4))
    if preset == "smoke":
        common["max_joints"] = cfg.max_joints
    out: dict[str, dict] = {}
    first_dir: Path | None = None
    for name, switch in table.items():
        rel_state = f"eval_ablations/{kind}_{name}"
        rel_ckpt = f"eval_ablations/checkpoints/{kind}_{name}.safetensors"
        over = dict(common, state_dir=rel_state, out_checkpoint=rel_ckpt)
        over.update(switch if kind == "skeleton" else ({"loss": switch} if switch else {}))
        if first_dir is not None:
            _seed_cache(first_dir, workdir / rel_state, caches)
        prior = checkpoint_record(workdir / rel_ckpt)
        reused = bool(prior["present"] and prior.get("complete") and prior.get("step") == steps)
        start = time.time()
        try:
            res = stage.run_stage(preset, workdir, device, **over)
        except Exception as exc:  # a failed ablation is reported, not hidden
            log.error("%s ablation %s failed: %s", kind, name, exc)
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - start}
            continue
        first_dir = first_dir or workdir / rel_state
        out[name] = {"checkpoint": str(workdir / rel_ckpt), "step": res["step"], "complete": res["complete"],
                     "seconds": time.time() - start, "reused": reused}
    return out


def score_skeleton_ablations(runs: dict[str, dict], base: RiggerModels, clips: list[EvalClip],
                             cfg: EvaluationConfig, device: torch.device) -> dict[str, dict]:
    """Table 2: protocol-frame PJDD / BLRD / GSD / flicker and anchor CD-J2J of each ablated generator."""
    out = {}
    for name, run in runs.items():
        if "error" in run:
            out[name] = {"error": run["error"]}
            continue
        gen, _ = load_model(run["checkpoint"], expected="skeleton_generator", device=device)
        m = RiggerModels(skeleton=gen, skinning=base.skinning, device=device)
        rows = [score_skeletons(skeleton_input(c, predict_skeletons(m, c, cfg.max_joints), name), cfg)
                for c in tqdm(clips, desc=f"table 2: {name}", dynamic_ncols=True, leave=False)]
        out[name] = mean_over(rows, ("pjdd", "blrd", "gsd", "jad", "topology_flicker", "cd_j2j", "n_joints_anchor"))
    return out


def score_skinning_ablations(runs: dict[str, dict], base: RiggerModels, clips: list[EvalClip],
                             cfg: EvaluationConfig, device: torch.device) -> dict[str, dict]:
    """Table 5: protocol-frame L1 / SymKL / Entropy of each ablated skinning network (base anchor teacher)."""
    prepared = []
    for c in clips:
        joints, parents, _ = anchor_skeleton(predict_skeletons(base, c, cfg.max_joints), c)
        teacher = predict_skin_frames(base, c, joints, parents)[0]
        prepared.append((c, joints, parents, teacher))
    out = {}
    for name, run in runs.items():
        if "error" in run:
            out[name] = {"error": run["error"]}
            continue
        net, _ = load_model(run["checkpoint"], expected="skinning_network", device=device)
        m = RiggerModels(skeleton=base.skeleton, skinning=net, device=device)
        rows = [skin_scores(predict_skin_frames(m, c, j, p), t, cfg) for c, j, p, t in prepared]
        out[name] = mean_over(rows, ("skin_l1", "skin_symkl", "skin_entropy"))
    return out


# ---- figure ------------------------------------------------------------------------------------------

def heatmap_png(heat: dict, path: Path) -> Path:
    """Fig. 5-like figure: per-vertex L1 to the anchor teacher on one perturbed frame, base vs SPRig.

    The mesh is drawn in an orthographic front view (x right, y up), faces painted back to front and
    coloured by the mean of their vertices' values, blue (0) to red (the larger of the two maxima).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    tags = [t for t in ("base", "sprig") if t in heat]
    verts, faces = np.asarray(heat["verts"]), np.asarray(heat["faces"])
    vmax = max(float(np.max(heat[t])) for t in tags) or 1.0
    order = np.argsort(verts[faces].mean(axis=1)[:, 2])  # far (small z) first
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags) + 1.2, 4.8), squeeze=False,
                             constrained_layout=True)
    titles = {"base": "base (frame by frame)", "sprig": "SPRig"}
    coll = None
    for ax, tag in zip(axes[0], tags):
        values = np.asarray(heat[tag])[faces].mean(axis=1)[order]
        coll = PolyCollection(verts[faces[order]][:, :, :2], array=values, cmap="jet", clim=(0.0, vmax),
                              edgecolors="none")
        ax.add_collection(coll)
        ax.set_xlim(verts[:, 0].min() - 0.02, verts[:, 0].max() + 0.02)
        ax.set_ylim(verts[:, 1].min() - 0.02, verts[:, 1].max() + 0.02)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{titles[tag]}\nmean per-vertex L1 {float(np.mean(heat[tag])):.4f}", fontsize=10)
    fig.colorbar(coll, ax=axes[0].tolist(), shrink=0.8, label="masked L1 to anchor teacher")
    fig.suptitle(f"{heat['clip']}: frame {heat['frame']} vs anchor teacher", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- report ------------------------------------------------------------------------------------------

def _f(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    x = float(x)
    if not np.isfinite(x):
        return "-"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.{digits}f}"


def _secs(x) -> str:
    return "-" if x is None else f"{float(x):.1f}"


def _run_secs(run: dict) -> str:
    if run.get("reused"):
        return "finished earlier (reused)"
    return _secs(run.get("seconds"))


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _pct_drop(base, new):
    return None if base is None or new is None or base == 0 else 100.0 * (base - new) / base


def _pct_change(base, new):
    return None if base is None or new is None or base == 0 else 100.0 * (new - base) / base


def acceptance(summary: dict) -> dict:
    """Issue 5's acceptance ratios from one data set's summary (computed, nothing asserted)."""
    b, s = summary.get("base"), summary.get("sprig")
    if not b or not s:
        return {}
    return {"pjdd_ratio_base_over_sprig": _ratio(b["pjdd"], s["pjdd"]),
            "blrd_improvement_pct": _pct_drop(b["blrd"], s["blrd"]),
            "topology_flicker_sprig": s["topology_flicker"],
            "mcjd_ratio_base_over_sprig": _ratio(b["mcjd"], s["mcjd"]),
            "skin_l1_reduction_pct": _pct_drop(b["skin_l1"], s["skin_l1"]),
            "skin_symkl_reduction_pct": _pct_drop(b["skin_symkl"], s["skin_symkl"]),
            "cd_j2j_change_pct": _pct_change(b["cd_j2j"], s["cd_j2j"]),
            "skin_avg_l1_change_pct": _pct_change(b["skin_avg_l1"], s["skin_avg_l1"])}


ROW_LABELS = {"gt": "ground-truth skeleton's own motion", "kmeans": "k-means control (no learning, GT joint count)",
              "base": "base (frame by frame)", "sprig": "SPRig"}
REF_LABELS = {"base": "base (reference)", "sprig": "SPRig, stage checkpoint (reference)"}


def set_section(title: str, res: dict, cfg: EvaluationConfig) -> list[str]:
    """Markdown of Tables 1, 3, 4 for one data set."""
    summ = res["summary"]
    n = summ["gt"]["n"]
    tags = [t for t in ("gt", "kmeans", "base", "sprig") if t in summ]
    p = cfg.protocol_frames
    lines = [f"## {title}", "", f"{n} clips: " + ", ".join(f"`{k}` ({v['n_frames']} frames, {v['n_verts']} verts, "
                                                          f"{v['n_joints_gt']} GT joints)"
                                                          for k, v in res["clips"].items()), ""]
    lines += [f"### Table 1/6 -- skeleton temporal stability, paper protocol (frames 0-{p - 1})", ""]
    lines += _table(["model", "PJDD (Eq. 28)", "BLRD (Eq. 29)", "GSD (Eq. 30)", "JAD (Eq. 31, diag.)",
                     "MPJPE@Anchor (Eq. 32, diag.)", "topology flicker"],
                    [[ROW_LABELS[t]] + [summ[t][k] for k in STABILITY_KEYS] for t in tags])
    lines += ["", "Whole clips (every evaluated frame): MCJD (motion-compensated joint drift, needs no ground truth), "
              "PJDD / BLRD / flicker over all frames (they also count the creature's own articulation), "
              "and the mean per-frame CD-J2J of each frame's prediction to that frame's ground truth.", ""]
    lines += _table(["model", "MCJD", "PJDD (clip)", "BLRD (clip)", "flicker (clip)", "per-frame CD-J2J",
                     "joints (anchor)", "joints (mean/frame)"],
                    [[ROW_LABELS[t], summ[t]["mcjd"], summ[t]["pjdd_clip"], summ[t]["blrd_clip"],
                      summ[t]["topology_flicker_clip"], summ[t]["cd_j2j_clip"] if t != "gt" else None,
                      summ[t]["n_joints_anchor"], summ[t]["n_joints_mean"]] for t in tags])
    model_tags = [t for t in ("base", "sprig") if t in summ]
    if not model_tags:
        return lines + ["", "No model rows: the base checkpoints are missing (see the header).", ""]
    lines += ["", "### Table 1 (bottom) -- static skeleton quality of the anchor frame vs ground truth", ""]
    static_tags = [t for t in ("kmeans", *model_tags) if t in summ]
    lines += _table(["model", "CD-J2J", "CD-J2B", "CD-B2B"],
                    [[ROW_LABELS[t], summ[t]["cd_j2j"], summ[t]["cd_j2b"], summ[t]["cd_b2b"]] for t in static_tags])
    control = summ.get("kmeans", {}).get("cd_j2j")
    losing = [ROW_LABELS[t] for t in model_tags
              if control is not None and summ[t]["cd_j2j"] is not None and summ[t]["cd_j2j"] >= control]
    if losing:
        lines += ["", f"**Below the no-learning control (anchor CD-J2J {control:.4f}): {'; '.join(losing)}.**"]
    skel_src = sorted({v.get("skin_skeleton", "-") for v in res["clips"].values()})
    lines += ["", f"### Table 3/7 -- skinning temporal consistency (Eq. 35-37), teacher = base skinning network on the "
              f"anchor vertices; skeleton: {', '.join(skel_src)}; Top-{cfg.top_k} mask, gamma {cfg.gamma}", ""]
    lines += ["<., m> (Eq. 18) sums over the vertices, so these values grow with the vertex count, like the "
              "paper's Table 3 grows with its N points; compare rows, not data sets.", ""]
    lines += _table(["model", f"L1(B,C->A) (frames 0-{p - 1})", "SymKL(B,C<->A)", "Entropy (diag.)",
                     "L1 (clip)", "SymKL (clip)"],
                    [[ROW_LABELS[t], summ[t]["skin_l1"], summ[t]["skin_symkl"], summ[t]["skin_entropy"],
                      summ[t]["skin_l1_clip"], summ[t]["skin_symkl_clip"]] for t in model_tags])
    if "base" in summ and "sprig" in summ:
        lines.append("| improvement | " + f"{_f(_pct_drop(summ['base']['skin_l1'], summ['sprig']['skin_l1']), 1)}% | "
                     f"{_f(_pct_drop(summ['base']['skin_symkl'], summ['sprig']['skin_symkl']), 1)}% | - | - | - |")
    lines += ["", f"### Table 4 -- static skinning with the ground-truth skeleton (frames 0-{p - 1}, each with its own "
              "GT skeleton)", ""]
    lines += _table(["model", "Precision", "Recall", "avg L1"],
                    [[ROW_LABELS[t], summ[t]["skin_precision"], summ[t]["skin_recall"], summ[t]["skin_avg_l1"]]
                     for t in model_tags])
    acc = acceptance(summ)
    if acc:
        lines += ["", "### Acceptance ratios of issue 5 (computed, no target asserted)", "",
                  f"- PJDD(base) / PJDD(SPRig), frames 0-{p - 1}: {_f(acc['pjdd_ratio_base_over_sprig'], 3)}",
                  f"- BLRD improvement: {_f(acc['blrd_improvement_pct'], 2)} %",
                  f"- topology-flicker rate, SPRig: {_f(acc['topology_flicker_sprig'], 3)}",
                  f"- MCJD(base) / MCJD(SPRig), whole clips: {_f(acc['mcjd_ratio_base_over_sprig'], 3)}",
                  f"- skin L1 reduction: {_f(acc['skin_l1_reduction_pct'], 2)} %; SymKL reduction: "
                  f"{_f(acc['skin_symkl_reduction_pct'], 2)} %",
                  f"- static CD-J2J change: {_f(acc['cd_j2j_change_pct'], 2)} % (negative = better); "
                  f"skin avg L1 change: {_f(acc['skin_avg_l1_change_pct'], 2)} %"]
    return lines + [""]


def markdown_report(results: dict) -> str:
    cfg = EvaluationConfig(**results["config"])
    lines = ["# SPRig evaluation", "",
             f"Preset `{results['preset']}`, run folder `{results['workdir']}`, finished {results['finished']} "
             f"in {results['wall_seconds']:.1f} s on {results['hardware']}.", "",
             "Every number is computed by `backend.metrics` on data never used in training: the corpus test split "
             "and the real artist rigs (evaluation only). Missing or unusable checkpoints are reported as missing; "
             "nothing is substituted for them.", "", "## Checkpoints", ""]
    rows = []
    for name, rec in results["checkpoints"].items():
        if rec["present"]:
            steps = f"{rec['step']}/{rec['total_steps']}" if rec.get("total_steps") else str(rec.get("step"))
            rows.append([name, f"`{rec['path']}`", rec["stage"], steps, str(rec.get("complete")), rec["sha256"]])
        else:
            rows.append([name, f"`{rec['path']}`", "**MISSING**", "-", "-", rec["error"][:80]])
    lines += _table(["model", "file", "stage", "step/total", "complete", "sha256 / problem"], rows)
    for msg in results["missing"]:
        lines.append(f"\n**Missing:** {msg}")
    lines += ["", "## Wall time per part", ""]
    lines += _table(["part", "seconds"], [[k, _secs(v)] for k, v in results["timings"].items()])
    lines += ["", f"Settings: {json.dumps(results['config'])}", ""]
    lines += set_section("Corpus test split", results["corpus"], cfg) if "corpus" in results else []
    if "realdata" in results:
        lines += set_section("Real artist rigs (`../shared/realdata`)", results["realdata"], cfg)
    for note in results["notes"]:
        lines.append(f"Note: {note}")
    lines.append("")
    abl = results.get("ablations", {})
    if abl:
        p = cfg.protocol_frames
        sk, sn = abl.get("skeleton", {}), abl.get("skinning", {})
        runs = abl.get("runs", {})
        lines += [f"## Table 2 -- skeleton ablations ({cfg.skeleton_ablation_steps}-step `sprig-skeleton` runs, "
                  f"{cfg.ablation_train_clips} training clips; scored on {abl.get('n_test_clips')} test clips, "
                  f"frames 0-{p - 1})", ""]
        ref = results["corpus"]["summary"] if "corpus" in results else {}
        rows = [[REF_LABELS[t], ref[t]["pjdd"], ref[t]["blrd"], ref[t]["gsd"],
                 ref[t]["topology_flicker"], ref[t]["cd_j2j"], ""]
                for t in ("base", "sprig") if t in ref and abl.get("n_test_clips") == ref[t]["n"]]
        for name, r in sk.items():
            sec = _run_secs(runs.get("skeleton", {}).get(name, {}))
            rows.append([SKELETON_ABLATION_LABELS[name]] + (["failed: " + r["error"][:60]] + [""] * 5 if "error" in r
                        else [r["pjdd"], r["blrd"], r["gsd"], r["topology_flicker"], r["cd_j2j"], sec]))
        lines += _table(["model", "PJDD", "BLRD", "GSD", "flicker", "CD-J2J", "train s"], rows)
        lines += ["", f"## Table 5 -- skinning ablations ({cfg.skinning_ablation_steps}-step `sprig-skinning` runs, "
                  f"{cfg.ablation_train_clips} training clips; teacher = base model on anchor vertices)", ""]
        rows = [[REF_LABELS[t], ref[t]["skin_l1"], ref[t]["skin_symkl"], ref[t]["skin_entropy"], ""]
                for t in ("base", "sprig") if t in ref and abl.get("n_test_clips") == ref[t]["n"]]
        for name, r in sn.items():
            sec = _run_secs(runs.get("skinning", {}).get(name, {}))
            rows.append([SKINNING_ABLATION_LABELS[name]] + (["failed: " + r["error"][:60], "", "", ""] if "error" in r
                        else [r["skin_l1"], r["skin_symkl"], r["skin_entropy"], sec]))
        lines += _table(["model", "L1(B,C->A)", "SymKL(B,C<->A)", "Entropy", "train s"], rows)
        lines.append("")
    if results.get("figure"):
        fig = results["figure"]
        lines += ["## Fig. 5 -- per-vertex L1 to the anchor teacher", "",
                  f"![per-vertex L1 heatmap]({Path(fig['path']).name})", "",
                  f"Clip `{fig['clip']}`, frame {fig['frame']}; skeleton: {fig['skeleton']}; mean per-vertex L1: "
                  + ", ".join(f"{ROW_LABELS[t]} {_f(fig['mean'][t])}" for t in fig["mean"]), ""]
    return "\n".join(lines) + "\n"


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    return obj


def hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {device}"
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


@contextmanager
def timed(timings: dict, part: str):
    start = time.time()
    try:
        yield
    finally:
        timings[part] = round(time.time() - start, 2)


# ---- the stage -------------------------------------------------------------------------------------

def run_stage(preset: str, workdir: Path, device: str = "auto", out_dir: Path | None = None,
              checkpoint_dir: Path | None = None, realdata_dir: Path | None = None, **overrides) -> dict:
    """Evaluate base vs SPRig and write the report.

    Args:
        preset: ``smoke`` / ``default`` / ``large``.
        workdir: run folder with ``corpus/`` and ``checkpoints/``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        out_dir: report folder (default: ``workdir/reports`` for smoke, the repository's ``reports/``
            otherwise).
        checkpoint_dir: where ``skeleton_{base,sprig}`` / ``skinning_{base,sprig}`` are
            (default ``workdir/checkpoints``).
        realdata_dir: real rigs (default ``../shared/realdata`` next to the repository).
        **overrides: :class:`EvaluationConfig` fields.
    Returns:
        The results dict also written to ``evaluation.json``.
    """
    from training.data.corpus import Corpus

    t_start = time.time()
    cfg = make_config(preset, **overrides)
    P = get_preset(preset)
    if P.num_threads > 0:
        torch.set_num_threads(P.num_threads)
    workdir = Path(workdir)
    dev = resolve_device(device)
    ckdir = Path(checkpoint_dir) if checkpoint_dir else workdir / "checkpoints"
    out_dir = Path(out_dir) if out_dir else (workdir / "reports" if preset == "smoke" else REPO / "reports")
    realdata_dir = Path(realdata_dir) if realdata_dir else REALDATA
    timings: dict[str, float] = {}
    notes: list[str] = []
    missing: list[str] = []

    ckpts = {f"{kind}_{which}": checkpoint_record(ckdir / CHECKPOINT_NAMES[which][i])
             for which in ("base", "sprig") for i, kind in enumerate(("skeleton", "skinning"))}
    models: dict[str, RiggerModels] = {}
    for which in ("base", "sprig"):
        recs = [ckpts[f"{k}_{which}"] for k in ("skeleton", "skinning")]
        loaded = []
        for r, expected in zip(recs, ("skeleton_generator", "skinning_network")):
            if r["present"]:
                try:
                    loaded.append(load_model(r["path"], expected=expected, device=dev))
                except CheckpointError as exc:  # e.g. written by another version of the model code
                    r.update(present=False, error=f"does not load: {exc}")
        if len(loaded) == 2:
            (skel, skel_info), (skin, skin_info) = loaded
            models[which] = RiggerModels(skeleton=skel, skinning=skin, device=dev, skeleton_info=skel_info,
                                         skinning_info=skin_info)
        if which not in models:
            bad = ", ".join(f"{r['path']} ({r['error']})" for r in recs if not r["present"]) or "?"
            hint = ("run `python training/run.py --stage pretrain`" if which == "base" else
                    "run `python training/run.py --stage sprig-skeleton --stage sprig-skinning`")
            msg = f"{which} checkpoints unusable: {bad}; its rows are not reported ({hint})"
            missing.append(msg)
            log.error(msg)
    if "base" in models:
        pre = models["base"].skeleton_info.provenance.get("preset_config", {}).get("pretrain", {})
        n_points = cfg.n_points or int(pre.get("n_points", P.pretrain.n_points))
    else:
        n_points = cfg.n_points or P.pretrain.n_points

    results: dict = {"preset": preset, "workdir": str(workdir), "config": cfg.to_dict(), "n_points": n_points,
                     "checkpoints": ckpts, "missing": missing, "notes": notes, "timings": timings,
                     "hardware": hardware(dev)}
    pred_dir = workdir / "eval" / "predictions"
    with timed(timings, "load corpus test clips"):
        test = corpus_test_clips(Corpus(workdir / "corpus"), cfg, n_points)
    with timed(timings, "corpus test: tables 1, 3, 4"):
        results["corpus"] = evaluate_set(test, models, cfg, pred_dir, "corpus test clips")
    heat = results["corpus"]["heatmap"]
    if cfg.realdata and realdata_dir.is_dir() and any(realdata_dir.glob("*.npz")):
        with timed(timings, "real rigs: tables 1, 3, 4"):
            reals, real_notes = real_clips(realdata_dir, cfg, n_points)
            notes.extend(real_notes)
            if reals:
                results["realdata"] = evaluate_set(reals, models, cfg, pred_dir, "real rigs")
                heat = results["realdata"]["heatmap"] or heat
    elif cfg.realdata:
        notes.append(f"no real rigs found in {realdata_dir}: the real-data part is skipped")
        log.warning(notes[-1])

    if cfg.ablations and "base" in models:
        abl_clips = [c.head(cfg.protocol_frames) for c in test[: cfg.ablation_test_clips or len(test)]]
        runs: dict[str, dict] = {}
        abl: dict = {"runs": runs, "n_test_clips": len(abl_clips)}
        with timed(timings, "table 2: skeleton ablation training"):
            runs["skeleton"] = run_ablations("skeleton", preset, workdir, device, cfg)
        with timed(timings, "table 2: scoring"):
            abl["skeleton"] = score_skeleton_ablations(runs["skeleton"], models["base"], abl_clips, cfg, dev)
        with timed(timings, "table 5: skinning ablation training"):
            runs["skinning"] = run_ablations("skinning", preset, workdir, device, cfg)
        with timed(timings, "table 5: scoring"):
            abl["skinning"] = score_skinning_ablations(runs["skinning"], models["base"], abl_clips, cfg, dev)
        results["ablations"] = abl
        if P.num_threads > 0:
            torch.set_num_threads(P.num_threads)
    elif cfg.ablations:
        notes.append("ablations skipped: they fine-tune the base checkpoints, which are missing")

    out_dir.mkdir(parents=True, exist_ok=True)
    if heat is not None:
        with timed(timings, "figure"):
            png = heatmap_png(heat, out_dir / "fig5_skin_l1_heatmap.png")
        results["figure"] = {"path": str(png), "clip": heat["clip"], "frame": heat["frame"],
                             "skeleton": heat["skeleton"],
                             "mean": {t: float(np.mean(heat[t])) for t in ("base", "sprig") if t in heat}}
    for part in ("corpus", "realdata"):
        if part in results:
            results[part].pop("heatmap", None)
            results[part]["acceptance"] = acceptance(results[part]["summary"])
    results["wall_seconds"] = time.time() - t_start
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results = _json_ready(results)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1))
    (out_dir / "evaluation.md").write_text(markdown_report(results))
    log.info("evaluation report written to %s (%.1f s)", out_dir / "evaluation.md", results["wall_seconds"])
    return results
