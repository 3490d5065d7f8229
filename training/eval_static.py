"""Static evaluation of the base rigger (``python training/run.py --stage eval-static``).

Frame by frame on random frames of the corpus test split and of the real artist rigs
(``../shared/realdata/*.npz`` next to the repository, evaluation only): each frame is normalized by
its own bounding box, the skeleton generator decodes a skeleton (greedy, constrained) that is scored
against the frame's ground truth with CD-J2J / CD-J2B / CD-B2B and the joint-count error, and the
skinning network predicts weights at every mesh vertex given the ground-truth skeleton, scored with
Precision / Recall / average L1 (``backend.metrics``).

Beside the model, every set has the no-learning k-means control (``backend.metrics.kmeans_skeleton``:
the ground truth's joint count at k-means centres of the frame's vertices, joined by their minimum spanning
tree), scored the same way; the real rigs also get the skeleton built from the clip's own motion
(``backend.rigging.skeleton_from_motion``, the frame as anchor), which uses no learning either. A model
row below its controls is printed as such.

Besides the metrics it reports how often decoding needed its constraints: ``unconstrained_valid`` is
the share of frames where the unconstrained greedy token kept the token grammar and the tree valid at
every step (the output would have been a valid tree without any masking), ``canonical_free`` where it
also followed the canonical depth-first order, ``merge_free`` where no duplicate joints were merged.

Writes ``workdir/eval_static/results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backend.metrics import kmeans_skeleton, static_skeleton_quality, static_skinning_quality
from backend.models.inference import RiggerModels, load_models
from backend.models.tokenizer import TokenizerError
from backend.skeleton import reorder, topological_order
from training.presets import PretrainConfig, get_preset
from training.pretrain import FrameSample, prepare_frame

log = logging.getLogger(__name__)
REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"

ACCEPTANCE = {"cd_j2j": 0.035, "cd_j2b": 0.030, "cd_b2b": 0.025, "skin_precision": 0.85, "skin_recall": 0.80,
              "skin_l1": 0.35, "unconstrained_valid": 0.99}


@dataclass
class EvalConfig:
    """How much to evaluate.

    Attributes:
        n_corpus_frames: random test-split frames (one record per frame, cycling through records).
        n_real_frames: random frames per real clip.
        n_points: surface samples per frame (as in pretraining).
        batch: frames per generation batch.
        seed: frame choice and sampling.
    """

    n_corpus_frames: int = 200
    n_real_frames: int = 8
    n_points: int = 512
    batch: int = 8
    seed: int = 1


EVAL_PRESETS = {"smoke": EvalConfig(n_corpus_frames=6, n_real_frames=1, n_points=256, batch=6),
                "default": EvalConfig(), "large": EvalConfig(n_corpus_frames=1000, n_real_frames=16, n_points=2048)}


def forest_to_tree(joints: np.ndarray, parents: np.ndarray, weights: np.ndarray | None = None):
    """Make a single tree: re-parent every extra root to the nearest joint outside its own subtree.

    The root with the largest subtree stays the root; the result is put in topological order.

    Args:
        joints: float ``[J, 3]``; parents: int ``[J]`` (several ``-1`` allowed); weights: ``[V, J]``.
    Returns:
        ``joints [J, 3]``, ``parents int32 [J]`` and the weights with columns permuted alike.
    """
    parents = np.asarray(parents, dtype=np.int64).copy()
    J = len(parents)

    def root_of(j: int) -> int:
        while parents[j] >= 0:
            j = int(parents[j])
        return j

    roots = [int(r) for r in np.flatnonzero(parents < 0)]
    if len(roots) > 1:
        owner = np.array([root_of(j) for j in range(J)])
        main = max(roots, key=lambda r: int((owner == r).sum()))
        for r in roots:
            if r == main:
                continue
            owner = np.array([root_of(j) for j in range(J)])
            outside = np.flatnonzero(owner != r)
            d = np.linalg.norm(joints[outside] - joints[r], axis=1)
            parents[r] = int(outside[np.argmin(d)])
    order = topological_order(parents)
    joints, parents = reorder(joints, parents, order)
    if weights is not None:
        weights = np.asarray(weights)[:, order]
    return joints, parents.astype(np.int32), weights


def score_skeleton_frames(skeleton, frames: list, batch: int, desc: str, coordinates: str | None = None,
                          skinning=None, control: bool = True) -> dict:
    """Decode and score skeletons on prepared frames (and, given ``skinning``, skinning too).

    Args:
        skeleton: a :class:`~backend.models.skeleton_generator.SkeletonGenerator`.
        frames: ``(sample, verts [V, 3], vertex normals [V, 3], gt weights [V, J])`` per frame, all
            normalized like ``sample``.
        coordinates: the generator's coordinate decoding (``None``: its config's default).
        skinning: ``RiggerModels`` whose ``predict_weights`` scores the skinning given the ground-truth
            skeleton; ``None`` skips skinning.
        control: also score the k-means control on the same frames.
    Returns:
        the summary of :func:`summarize`, plus ``kmeans_control`` with ``control``.
    """
    device = next(skeleton.parameters()).device
    rows, control_rows = [], []
    for s in tqdm(range(0, len(frames), batch), desc=desc, leave=False):
        chunk = frames[s:s + batch]
        pts = torch.from_numpy(np.stack([f[0].points for f in chunk])).to(device)
        nrm = torch.from_numpy(np.stack([f[0].normals for f in chunk])).to(device)
        t0 = time.time()
        gens, stats = skeleton.generate(pts, nrm, return_stats=True, coordinates=coordinates)
        t_gen = (time.time() - t0) / len(chunk)
        for i, ((pj, pp), (fs, verts, vnrm, gt_w)) in enumerate(zip(gens, chunk)):
            q = static_skeleton_quality(pj, fs.joints, pp, fs.parents)
            row = {"record": fs.record, "frame": fs.frame, "cd_j2j": q.cd_j2j, "cd_j2b": q.cd_j2b,
                   "cd_b2b": q.cd_b2b, "joints_pred": len(pp), "joints_gt": len(fs.parents),
                   "joint_count_err": abs(len(pp) - len(fs.parents)),
                   "unconstrained_valid": stats["validity_overrides"][i] == 0,
                   "canonical_free": stats["constraint_overrides"][i] == 0,
                   "merge_free": stats["merged"][i] == 0, "hit_limit": stats["hit_limit"][i],
                   "skin_precision": np.nan, "skin_recall": np.nan, "skin_l1": np.nan, "gen_seconds": t_gen}
            if skinning is not None:
                w = skinning.predict_weights(verts, vnrm, fs.points, fs.normals, fs.joints, fs.parents)
                sk = static_skinning_quality(w, gt_w)
                row.update(skin_precision=sk.precision, skin_recall=sk.recall, skin_l1=sk.avg_l1)
            rows.append(row)
            if control:
                control_rows.append(_skeleton_row(fs, *kmeans_skeleton(verts, len(fs.parents), seed=0)))
    out = summarize(rows)
    if control:
        out["kmeans_control"] = summarize_skeletons(control_rows)
    return out


def score_frames(models: RiggerModels, frames: list, batch: int, desc: str) -> dict:
    """Score skeleton generation and skinning of ``models`` on prepared frames (see :func:`score_skeleton_frames`)."""
    return score_skeleton_frames(models.skeleton, frames, batch, desc, skinning=models)


def _skeleton_row(fs: FrameSample, joints: np.ndarray, parents: np.ndarray) -> dict:
    """Static skeleton scores of a no-learning skeleton ``joints [J, 3]`` / ``parents [J]`` on frame ``fs``."""
    q = static_skeleton_quality(joints, fs.joints, parents, fs.parents)
    return {"record": fs.record, "frame": fs.frame, "cd_j2j": q.cd_j2j, "cd_j2b": q.cd_j2b, "cd_b2b": q.cd_b2b,
            "joints_pred": len(parents), "joints_gt": len(fs.parents),
            "joint_count_err": abs(len(parents) - len(fs.parents))}


def summarize_skeletons(rows: list[dict]) -> dict:
    """Means of the skeleton scores of :func:`_skeleton_row` rows."""
    if not rows:
        return {"n_frames": 0}
    out = {"n_frames": len(rows)}
    for k in ("cd_j2j", "cd_j2b", "cd_b2b", "joint_count_err"):
        out[k] = float(np.mean([float(r[k]) for r in rows]))
    out["joints_pred_mean"] = float(np.mean([r["joints_pred"] for r in rows]))
    out["joints_gt_mean"] = float(np.mean([r["joints_gt"] for r in rows]))
    return out


def motion_skeleton_scores(path: Path, frames: list) -> dict:
    """The skeleton from the clip's own motion (no learning), with each evaluated frame as the anchor,
    normalized by that frame's box like the frame itself, scored against the frame's ground truth."""
    from backend.io.npz import load_npz
    from backend.normalize import AnchorBox
    from backend.rigging.skeleton_from_motion import skeleton_from_motion

    seq = load_npz(path)
    rows = []
    for fs, *_ in frames:
        k = int(fs.frame)
        order = np.r_[k, np.delete(np.arange(seq.n_frames), k)]
        verts = AnchorBox.fit(seq.verts[k]).apply(seq.verts[order])
        found = skeleton_from_motion(verts, seq.faces)
        rows.append(_skeleton_row(fs, found.joints, found.parents))
    return summarize_skeletons(rows)


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"n_frames": 0}
    keys = ["cd_j2j", "cd_j2b", "cd_b2b", "joint_count_err", "unconstrained_valid", "canonical_free", "merge_free",
            "hit_limit",
            "skin_precision", "skin_recall", "skin_l1", "gen_seconds"]
    out = {"n_frames": len(rows)}
    for k in keys:
        values = np.array([float(r[k]) for r in rows])
        out[k] = float(np.nanmean(values)) if np.isfinite(values).any() else None  # skinning not scored: None
    out["joints_pred_mean"] = float(np.mean([r["joints_pred"] for r in rows]))
    out["joints_gt_mean"] = float(np.mean([r["joints_gt"] for r in rows]))
    out["valid_tree"] = 1.0  # constrained decoding: every output is a tree by construction
    out["frames"] = rows
    return out


def corpus_frames(corpus, cfg: EvalConfig, tokenizer) -> list:
    ids = [int(i) for i in corpus.indices("test")]
    if not ids:
        raise RuntimeError(f"corpus at {corpus.root} has no test split")
    rng = np.random.default_rng(cfg.seed)
    pcfg = PretrainConfig(n_points=cfg.n_points, n_query=2)
    frames, cache = [], {}
    for i in range(cfg.n_corpus_frames):
        index = ids[i % len(ids)]
        if index not in cache:
            cache.clear()
            cache[index] = corpus.load(index)
        rec = cache[index]
        k = int(rng.integers(rec.verts.shape[0]))
        try:
            frames.append(_frame(rec.verts[k], rec.faces, rec.joints[k], rec.parents, rec.weights, rng, pcfg,
                                 tokenizer, index, k))
        except TokenizerError as exc:
            log.warning("test record %d skipped: %s", index, exc)
    return frames


def _frame(verts, faces, joints, parents, weights, rng, pcfg, tokenizer, record, k):
    from backend.normalize import AnchorBox
    from backend.sampling import vertex_normals

    fs = prepare_frame(verts, faces, joints, parents, weights, rng, pcfg, tokenizer, augment=False)
    fs.record, fs.frame = record, k
    nverts = AnchorBox.fit(verts).apply(verts)
    return fs, nverts, vertex_normals(nverts, faces), np.asarray(weights, dtype=np.float32)


def real_frames(path: Path, cfg: EvalConfig, tokenizer) -> list:
    from backend.io.npz import load_npz

    seq = load_npz(path)
    ex = seq.extras
    if "joints" not in ex or "weights" not in ex:
        return []
    rng = np.random.default_rng([cfg.seed, len(path.stem)])
    pcfg = PretrainConfig(n_points=cfg.n_points, n_query=2)
    out = []
    for k in rng.choice(seq.n_frames, size=min(cfg.n_real_frames, seq.n_frames), replace=False):
        joints, parents, weights = forest_to_tree(np.asarray(ex["joints"])[k], ex["parents"], ex["weights"])
        out.append(_frame(seq.verts[k], seq.faces, joints, parents, weights, rng, pcfg, tokenizer, -1, int(k)))
    return out


def run_stage(preset: str, workdir: Path, device: str = "auto", checkpoint_dir: Path | None = None,
              realdata_dir: Path | None = None) -> dict:
    """Evaluate ``checkpoint_dir`` (default ``workdir/checkpoints``) base models; write results."""
    from training.data.corpus import Corpus

    workdir = Path(workdir)
    cfg = EVAL_PRESETS[preset]
    get_preset(preset)  # validates the name
    models = load_models(checkpoint_dir or workdir / "checkpoints", which="base", device=device)
    tokenizer = models.skeleton.tokenizer
    results = {"preset": preset, "checkpoint": str(models.skeleton_info.path),
               "checkpoint_provenance": {k: models.skeleton_info.provenance.get(k)
                                         for k in ("step", "total_steps", "complete", "commit")},
               "acceptance": ACCEPTANCE}
    corpus = Corpus(workdir / "corpus")
    results["corpus_test"] = score_frames(models, corpus_frames(corpus, cfg, tokenizer), cfg.batch, "corpus test")
    realdata_dir = Path(realdata_dir) if realdata_dir else REALDATA
    real = {}
    for path in sorted(realdata_dir.glob("*.npz")) if realdata_dir.is_dir() else []:
        frames = real_frames(path, cfg, tokenizer)
        if frames:
            real[path.stem] = score_frames(models, frames, cfg.batch, path.stem)
            real[path.stem]["motion_skeleton"] = motion_skeleton_scores(path, frames)
    if real:
        all_rows = [r for v in real.values() for r in v["frames"]]
        results["realdata"] = {"all": summarize(all_rows), **real}
        for control in ("kmeans_control", "motion_skeleton"):
            results["realdata"]["all"][control] = _pooled(real.values(), control)
    else:
        log.warning("no real rigs found in %s; realdata part skipped", realdata_dir)
    out = workdir / "eval_static"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    log.info("static evaluation:\n%s", markdown_table(results))
    return results


def _pooled(sets, key: str) -> dict:
    """Frame-weighted means of the ``key`` sub-summaries of several sets."""
    parts = [v[key] for v in sets if v.get(key, {}).get("n_frames")]
    n = sum(p["n_frames"] for p in parts)
    if not n:
        return {"n_frames": 0}
    out = {"n_frames": n}
    for k in ("cd_j2j", "cd_j2b", "cd_b2b", "joint_count_err", "joints_pred_mean", "joints_gt_mean"):
        out[k] = float(sum(p[k] * p["n_frames"] for p in parts) / n)
    return out


CONTROL_LABELS = {"kmeans_control": "k-means control (no learning)",
                  "motion_skeleton": "skeleton from the clip's motion (no learning)"}


def markdown_table(results: dict) -> str:
    cols = ["n_frames", "cd_j2j", "cd_j2b", "cd_b2b", "joint_count_err", "joints_pred_mean", "joints_gt_mean",
            "unconstrained_valid", "canonical_free", "merge_free", "skin_precision", "skin_recall", "skin_l1", "gen_seconds"]
    lines = ["| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    sets = [("corpus test", results.get("corpus_test", {}))]
    sets += [(f"real: {k}", v) for k, v in results.get("realdata", {}).items()]
    for name, r in sets:
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        for key, label in CONTROL_LABELS.items():
            if key in r:
                lines.append(f"| {name}: {label} | " + " | ".join(_fmt(r[key].get(c)) for c in cols) + " |")
    lines.append("")
    for name, r in sets:
        beaten = [CONTROL_LABELS[k] for k in CONTROL_LABELS
                  if k in r and r[k].get("n_frames") and r.get("cd_j2j") is not None and r[k]["cd_j2j"] <= r["cd_j2j"]]
        if beaten:
            lines.append(f"**{name}: the model's CD-J2J ({r['cd_j2j']:.4f}) does not beat: {'; '.join(beaten)}.**")
    lines.append("")
    lines.append("acceptance: " + ", ".join(f"{k} {'<=' if k.startswith('cd') or k == 'skin_l1' else '>='} {v}"
                                           for k, v in ACCEPTANCE.items()))
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


DECODING_FIELDS = {"proposal_radius", "proposal_min_mass", "proposal_weight_scale", "proposal_bandwidth",
                   "proposal_radius_scale", "proposal_residual_bins", "count_head"}
"""Config fields :func:`compare_decodings` may override: they act only when decoding, not on the weights."""


def compare_decodings(skeleton_path: Path, corpus_dir: Path, coordinates: list[str], preset: str = "default",
                      realdata_dir: Path | None = None, device: str = "cpu",
                      config_overrides: dict | None = None) -> dict:
    """Score one skeleton generator checkpoint with several coordinate decodings on the same frames.

    The corpus test split and every real rig (as :func:`run_stage`), skeletons only; beside the
    decodings, the k-means control and (real rigs) the skeleton from the clip's motion.
    ``config_overrides`` replaces decoding-time fields of the model's config (the clustering of the
    votes: ``proposal_radius``, ``proposal_min_mass``, ``proposal_weight_scale``, ``proposal_bandwidth``;
    ``count_head`` false decodes a model with a fitted joint-count head from its votes alone).

    Returns:
        ``{"checkpoint", "overrides", "provenance", "sets": {set name: {decoding: summary,
        "kmeans_control": summary, "motion_skeleton": summary (real rigs)}}}`` with the set names
        ``corpus test``, ``real: <clip>`` and ``real: all`` (pooled); per-frame rows dropped.
    """
    from backend.models.checkpoint import load_model
    from training.data.corpus import Corpus

    cfg = EVAL_PRESETS[preset]
    skeleton, info = load_model(skeleton_path, expected="skeleton_generator", device=device)
    unknown = set(config_overrides or {}) - DECODING_FIELDS
    if unknown:
        raise ValueError(f"only decoding-time fields can be overridden ({sorted(DECODING_FIELDS)}), got {sorted(unknown)}")
    if (config_overrides or {}).get("count_head") and not hasattr(skeleton, "count_head"):
        raise ValueError(f"{skeleton_path} has no fitted joint-count head (training/count_head.py fits one)")
    skeleton.cfg = replace(skeleton.cfg, **(config_overrides or {}))
    tokenizer = skeleton.tokenizer
    sets = {"corpus test": corpus_frames(Corpus(corpus_dir), cfg, tokenizer)}
    realdata_dir = Path(realdata_dir) if realdata_dir else REALDATA
    real_paths = sorted(realdata_dir.glob("*.npz")) if realdata_dir.is_dir() else []
    for path in real_paths:
        frames = real_frames(path, cfg, tokenizer)
        if frames:
            sets[f"real: {path.stem}"] = frames
    provenance = {k: info.provenance.get(k) for k in ("step", "commit")}
    results: dict = {"checkpoint": str(skeleton_path), "overrides": config_overrides or {},
                     "provenance": provenance, "sets": {}}
    for name, frames in sets.items():
        entry = {}
        for i, c in enumerate(coordinates):  # the control depends on the frames only: score it once
            summary = score_skeleton_frames(skeleton, frames, cfg.batch, f"{name} ({c})", coordinates=c,
                                            control=i == 0)
            if i == 0:
                entry["kmeans_control"] = summary.pop("kmeans_control")
            entry[c] = {k: v for k, v in summary.items() if k != "frames" and not k.startswith("skin_")}
        if name.startswith("real: "):
            entry["motion_skeleton"] = motion_skeleton_scores(realdata_dir / f"{name[6:]}.npz", frames)
        results["sets"][name] = entry
    real = [v for k, v in results["sets"].items() if k.startswith("real: ")]
    if real:
        pooled = {}
        for key in (*coordinates, "kmeans_control", "motion_skeleton"):
            pooled[key] = _pooled(real, key)
        results["sets"]["real: all"] = pooled
    return results


def decodings_table(results: dict) -> str:
    """Markdown table of :func:`compare_decodings` results."""
    cols = ["n_frames", "cd_j2j", "cd_b2b", "joint_count_err", "joints_pred_mean", "joints_gt_mean"]
    labels = {**CONTROL_LABELS, "kmeans_control": "k-means control (no learning, GT joint count)"}
    lines = ["| set | skeleton | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, entry in results["sets"].items():
        for key, r in entry.items():
            label = labels.get(key, f"decoding `{key}`")
            lines.append(f"| {name} | {label} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m training.eval_static --skeleton CKPT --corpus DIR``: compare coordinate decodings."""
    import argparse

    from backend.models.skeleton_generator import COORDINATE_DECODINGS

    parser = argparse.ArgumentParser(description=compare_decodings.__doc__)
    parser.add_argument("--skeleton", type=Path, required=True, help="skeleton generator .safetensors")
    parser.add_argument("--corpus", type=Path, required=True, help="corpus folder with a test split")
    parser.add_argument("--coordinates", nargs="+", default=list(COORDINATE_DECODINGS), choices=COORDINATE_DECODINGS)
    parser.add_argument("--preset", default="default", choices=sorted(EVAL_PRESETS))
    parser.add_argument("--realdata", type=Path, help="folder of real rigs (default: ../shared/realdata)")
    parser.add_argument("--out", type=Path, help="write the results here (.json and .md beside it)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help=f"override decoding-time config fields: {', '.join(sorted(DECODING_FIELDS))}")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field == "count_head":
            overrides[field] = value.lower() in ("1", "true", "yes", "on")
        else:
            overrides[field] = int(value) if field == "proposal_residual_bins" else float(value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = compare_decodings(args.skeleton, args.corpus, args.coordinates, args.preset, args.realdata,
                                config_overrides=overrides)
    table = decodings_table(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
