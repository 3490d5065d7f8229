"""Statistics of the procedural corpus, measured by generating creatures.

    python -m training.data.stats --n 1000                  # 1000 creatures, 32-frame clips, 2 workers
    python -m training.data.stats --n 200 --out stats.txt   # also write the report to a file

Prints family and variant counts, the joint-count histogram, vertex counts, clip kinds, the mean
per-frame motion (in anchor-normalized units, as the models see it), the smallest pose distance
from the rest pose, mesh closedness, and generation time per creature and throughput.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from tqdm import tqdm

from backend.normalize import AnchorBox
from training.data.corpus import CorpusConfig, generate_creature
from training.data.generate import _init_worker
from training.data.motion import local_rotations_from_transforms, pose_deviation_deg

logger = logging.getLogger(__name__)


def creature_summary(index: int, config: CorpusConfig) -> dict:
    """Generate creature ``index`` and measure it (timing included)."""
    start = time.perf_counter()
    rec = generate_creature(index, config.seed, config)
    seconds = time.perf_counter() - start
    box = AnchorBox.fit(rec.verts[0])
    v = box.apply(rec.verts)
    step = np.linalg.norm(np.diff(v, axis=0), axis=-1).mean() if rec.n_frames > 1 else 0.0
    dev = pose_deviation_deg(local_rotations_from_transforms(rec.transforms, rec.parents), rec.parents)
    edges = np.sort(np.concatenate([rec.faces[:, [0, 1]], rec.faces[:, [1, 2]], rec.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    has_child = np.zeros(rec.n_joints, dtype=bool)
    has_child[rec.parents[rec.parents >= 0]] = True
    lbs_err = float(np.abs(rec.lbs_frames() - rec.verts).max()) / box.scale
    return {
        "index": index, "family": rec.family, "variant": rec.variant, "motion": rec.motion,
        "n_joints": rec.n_joints, "n_verts": int(rec.verts.shape[1]), "n_frames": rec.n_frames,
        "step": float(step), "pose_min": float(dev.min()), "pose_mean": float(dev.mean()),
        "closed": bool(np.all(counts == 2)), "mutated": bool(rec.mutations), "seconds": seconds,
        "secondary": rec.secondary_amplitude > 0, "lbs_err": lbs_err,
        "influences": float((rec.weights > 0).sum(axis=1).mean()),
        "unweighted_inner": int(((rec.weights.sum(axis=0) == 0) & has_child & (rec.parents >= 0)).sum()),
    }


def _job(args: tuple[int, CorpusConfig]) -> dict:
    return creature_summary(*args)


def collect(n: int, config: CorpusConfig, workers: int, start_index: int = 0) -> tuple[list[dict], float]:
    """Summaries of creatures ``start_index .. start_index + n - 1`` and the wall time in seconds."""
    jobs = [(i, config) for i in range(start_index, start_index + n)]
    start = time.perf_counter()
    if workers <= 1:
        rows = [creature_summary(i, config) for i, _ in tqdm(jobs, unit="creature")]
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            rows = list(tqdm(pool.imap_unordered(_job, jobs, chunksize=2), total=n, unit="creature"))
    return sorted(rows, key=lambda r: r["index"]), time.perf_counter() - start


def _hist_line(values: np.ndarray, lo: int, hi: int) -> list[str]:
    counts = Counter(int(v) for v in values)
    width = max(counts.values()) if counts else 1
    return [f"  {j:3d} {counts.get(j, 0):4d} {'#' * int(round(40 * counts.get(j, 0) / width))}"
            for j in range(lo, hi + 1)]


def format_report(rows: list[dict], wall: float, workers: int, config: CorpusConfig) -> str:
    """A plain-text report of ``rows`` (from :func:`collect`)."""
    n = len(rows)
    get = lambda k: np.asarray([r[k] for r in rows])  # noqa: E731
    joints, verts, secs = get("n_joints"), get("n_verts"), get("seconds")
    lines = [f"Procedural corpus statistics: {n} creatures (seed {config.seed}, clip length "
             f"{config.n_frames or config.frames}, {workers} worker processes)", ""]
    lines.append("Families (count, share, mean joints, variants):")
    for fam, c in Counter(get("family")).most_common():
        sub = [r for r in rows if r["family"] == fam]
        var = Counter(r["variant"] for r in sub)
        lines.append(f"  {fam:10s} {c:5d} {100 * c / n:5.1f}%  J~{np.mean([r['n_joints'] for r in sub]):4.1f}  "
                     + ", ".join(f"{k} {v}" for k, v in var.most_common()))
    lines.append("")
    lines.append("Clip kinds: " + ", ".join(f"{k} {v}" for k, v in Counter(get("motion")).most_common()))
    lines.append(f"Mutated creatures: {int(get('mutated').sum())} ({100 * get('mutated').mean():.1f}%); "
                 f"with secondary (non-LBS) wobble: {int(get('secondary').sum())}")
    lines.append("")
    missing = [j for j in range(6, 65) if j not in set(joints.tolist())]
    lines.append(f"Joint counts: min {joints.min()}, median {int(np.median(joints))}, max {joints.max()}; "
                 f"values in 6..64 never drawn: {missing if missing else 'none'}")
    lines += _hist_line(joints, int(joints.min()), int(joints.max()))
    lines.append("")
    q = np.percentile(verts, [0, 10, 50, 90, 100]).astype(int)
    lines.append(f"Vertex counts: min {q[0]}, p10 {q[1]}, median {q[2]}, p90 {q[3]}, max {q[4]}")
    lines.append(f"Closed (every edge in exactly two triangles): {100 * get('closed').mean():.1f}% of meshes")
    lines.append(f"Mean weights per vertex: {get('influences').mean():.2f} (at most 4); non-leaf joints "
                 f"without weight: {get('unweighted_inner').mean():.2f} per creature")
    lines.append("")
    step = get("step")
    lines.append(f"Mean per-frame vertex motion (anchor-normalized units, longest anchor side = 1): "
                 f"mean {step.mean():.4f}, p10 {np.percentile(step, 10):.4f}, p90 {np.percentile(step, 90):.4f}")
    lines.append(f"Pose distance from rest (mean joint rotation): smallest over all frames "
                 f"{get('pose_min').min():.1f} deg, clip mean {get('pose_mean').mean():.1f} deg")
    pure = [r["lbs_err"] for r in rows if not r["secondary"]] or [0.0]
    lines.append(f"LBS reconstruction of pure-LBS clips: max error {max(pure):.2e} (normalized units)")
    lines.append("")
    lines.append(f"Generation time per creature (one process): mean {secs.mean():.2f} s, "
                 f"median {np.median(secs):.2f} s, p90 {np.percentile(secs, 90):.2f} s, max {secs.max():.2f} s")
    for fam in sorted(set(get("family"))):
        s = [r["seconds"] for r in rows if r["family"] == fam]
        lines.append(f"  {fam:10s} {np.mean(s):.2f} s")
    lines.append(f"Wall time {wall:.1f} s: {60.0 * n / wall:.1f} creatures per minute with {workers} workers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of creatures")
    parser.add_argument("--frames", type=int, default=32, help="clip length K (0: the config's range)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first creature index")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = CorpusConfig(seed=args.seed, n_frames=args.frames or None)
    rows, wall = collect(args.n, config, args.workers, args.start)
    report = format_report(rows, wall, args.workers, config)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
