"""Skeletons from motion and shape (``backend.rigging.skeleton_from_motion``) against the artist's or the
generator's ground-truth anchor skeleton, beside two references.

For every clip (the real clips in ``--realdata`` and the first ``--clips`` test-split creatures of the
default corpus configuration), all in the anchor-box normalized frame:

* ``motion``: CD-J2J of :func:`skeleton_from_motion` (default config, or ``--config``) to the ground-truth
  anchor joints, its joint count, parts found (``mov``: moving ones), ``out``: the share of its joints
  outside the anchor mesh (generalized winding number below 0.5; ``GT``: the same for the ground truth's
  joints), seconds; ``+tips``: the same skeleton with its leaf bones' tails counted as end joints (the
  corpus skeletons have a joint at every extremity);
* ``k-means``: the control with the ground truth's joint count: k-means centres of the anchor vertices
  (seeded);
* ``network``: the shipped skeleton generator on the anchor (as ``rig_sequence`` runs it: sampled surface
  points, ``RigConfig`` defaults), CD-J2J and joint count;
* with ``--noise-draws N``: how steady the skeleton is when the clip changes imperceptibly. ``N`` more
  skeletons per clip from the clip plus seeded Gaussian noise of ``--noise`` (1e-5) times the anchor's box
  diagonal on every vertex and frame (far below what the eye or the reconstruction error sees); printed:
  the joint counts and CD-J2J of the clean and noisy skeletons, and ``pair``: the mean CD-J2J between every two
  of them (0 for a skeleton that does not change).

Corpus creatures come from ``--corpus`` when that folder holds a corpus (``training/run.py --stage data``),
else they are generated in memory with the default :class:`CorpusConfig` (creature ``i`` depends only on
the seed and ``i``) and cached as npz under ``--cache``.

    python bench/bench_skeleton.py [--clips 24] [--frames 0] [--no-network] [--figure docs/skeleton_from_motion.png]
                                   [--noise-draws 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.metrics import cd_j2j, kmeans_joints, outside_fraction  # noqa: E402
from backend.normalize import AnchorBox  # noqa: E402
from backend.rigging.skeleton_from_motion import MotionSkeletonConfig, skeleton_from_motion  # noqa: E402

REALDATA = ROOT.parent / "shared" / "realdata"


def load_realdata(folder: Path) -> list[dict]:
    clips = []
    for path in sorted(folder.glob("*.npz")):
        d = np.load(path)
        clips.append(dict(name=path.stem, set="real", verts=d["verts"], faces=d["faces"], joints=d["joints"][0],
                          frame_joints=d["joints"], parents=d["parents"], weights=d["weights"], skin_mats=d["skin_mats"],
                          joint_names=[str(n) for n in d["joint_names"]]))
    return clips


def load_corpus(corpus: Path, cache: Path, n_clips: int) -> list[dict]:
    """The first ``n_clips`` test-split creatures: from a written corpus, or generated (and cached)."""
    clips = []
    if (corpus / "index.json").is_file():
        from training.data.corpus import Corpus

        c = Corpus(corpus)
        for index in [int(i) for i in c.indices("test")][:n_clips]:
            rec = c.load(index)
            clips.append(dict(name=f"test_{index:05d}_{rec.family}", set="corpus", verts=rec.verts, faces=rec.faces,
                              joints=rec.joints[0], parents=rec.parents))
        return clips
    from training.data.corpus import CorpusConfig, generate_creature, split_of

    config = CorpusConfig()
    cache.mkdir(parents=True, exist_ok=True)
    index = 0
    with tqdm(total=n_clips, desc="corpus test creatures") as bar:
        while len(clips) < n_clips:
            if split_of(index, config.val_fraction, config.test_fraction) == "test":
                path = cache / f"creature_{index:05d}.npz"
                if not path.is_file():
                    rec = generate_creature(index, config.seed, config)
                    tmp = path.with_suffix(".tmp.npz")
                    np.savez(tmp, verts=rec.verts, faces=rec.faces, joints=rec.joints, parents=rec.parents,
                             family=rec.family)
                    tmp.replace(path)
                d = np.load(path)
                clips.append(dict(name=f"test_{index:05d}_{d['family']}", set="corpus", verts=d["verts"],
                                  faces=d["faces"], joints=d["joints"][0], parents=d["parents"]))
                bar.update(1)
            index += 1
    return clips


def network_skeleton(models, verts_n: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The generator's anchor joints ``[J, 3]``, sampled and seeded as ``rig_sequence`` does."""
    import torch

    from backend.rigging.pipeline import RigConfig
    from backend.sampling import points_on_frames, sample_surface

    cfg = RigConfig()
    torch.manual_seed(cfg.seed)
    samples = sample_surface(verts_n[0], faces, cfg.n_points, seed=cfg.seed)
    points, normals = points_on_frames(verts_n[:1], faces, samples)
    joints, _ = models.generate_skeletons(points, normals, max_joints=cfg.max_joints,
                                          stop_after_repeats=cfg.stop_after_repeats)[0]
    return np.asarray(joints, dtype=np.float64).reshape(-1, 3)


def noise_steadiness(verts: np.ndarray, faces: np.ndarray, joints: np.ndarray, clean, config: MotionSkeletonConfig,
                     draws: int, noise: float) -> dict:
    """Skeletons of ``draws`` noisy copies of a clip (``verts [K, V, 3]``; seeded Gaussian noise of ``noise`` x the
    anchor box diagonal) beside the clean one (``clean``): joint counts, CD-J2J to the ground truth ``joints``
    and the mean CD-J2J between every two of them (each in its own anchor box)."""
    verts = np.asarray(verts, dtype=np.float64)
    diag = float(np.linalg.norm(np.ptp(verts[0], axis=0)))
    box = AnchorBox.fit(verts[0])
    skeletons, counts, cds = [clean.joints], [len(clean.parents)], [cd_j2j(clean.joints, box.apply(joints))]
    for seed in range(1, draws + 1):
        noisy = verts + np.random.default_rng(seed).normal(size=verts.shape) * noise * diag
        noisy_box = AnchorBox.fit(noisy[0])
        skel = skeleton_from_motion(noisy_box.apply(noisy), faces, config=config)
        skeletons.append(skel.joints)
        counts.append(len(skel.parents))
        cds.append(cd_j2j(skel.joints, noisy_box.apply(np.asarray(joints, dtype=np.float64))))
    pairs = [cd_j2j(skeletons[a], skeletons[b]) for a in range(len(skeletons)) for b in range(a + 1, len(skeletons))]
    return dict(draw_joints=counts, draw_cd=cds, pair=float(np.mean(pairs)))


def draw_figure(clips: list[dict], path: Path) -> None:
    """Three orthographic views per clip: anchor vertices (grey), bones (blue), artist joints (red x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(clips), 3, figsize=(13, 4.6 * len(clips)))
    axes = np.atleast_2d(axes)
    for r, clip in enumerate(clips):
        a, skel, gt = clip["anchor"], clip["skeleton"], clip["gt"]
        for c, (i, j) in enumerate([(0, 1), (2, 1), (0, 2)]):
            ax = axes[r, c]
            ax.scatter(a[:, i], a[:, j], s=1, c="0.82")
            for b in range(len(skel.parents)):
                ax.plot([skel.joints[b, i], skel.tails[b, i]], [skel.joints[b, j], skel.tails[b, j]], "-",
                        c="tab:blue", lw=1.5)
            ax.scatter(skel.joints[:, i], skel.joints[:, j], s=14, c="tab:blue", label="from motion")
            ax.scatter(gt[:, i], gt[:, j], s=30, marker="x", c="tab:red", label="artist")
            ax.set_aspect("equal")
            ax.set_title(f"{clip['name']}  ({'xyz'[i]} right, {'xyz'[j]} up)", fontsize=9)
        axes[r, 0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realdata", type=Path, default=REALDATA)
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "default" / "corpus")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "corpus_test")
    parser.add_argument("--clips", type=int, default=24, help="first N test-split creatures")
    parser.add_argument("--frames", type=int, default=0, help="frames per clip from frame 0 (0 = all)")
    parser.add_argument("--detail", default="auto", help="auto | coarse | fine | a bone count")
    parser.add_argument("--no-network", action="store_true", help="skip the shipped generator's column")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--figure", type=Path, default=None, help="draw the Fox run and CesiumMan skeletons here")
    parser.add_argument("--json", type=Path, default=None, help="write every per-clip number here")
    parser.add_argument("--noise-draws", type=int, default=0, help="noisy copies per clip for the steadiness check")
    parser.add_argument("--noise", type=float, default=1e-5, help="noise, share of the anchor box diagonal")
    parser.add_argument("--config", default="{}",
                        help='MotionSkeletonConfig fields as JSON, e.g. \'{"hinge_ratio": 0}\' (default: none)')
    args = parser.parse_args(argv)

    detail = int(args.detail) if args.detail.lstrip("-").isdigit() else args.detail
    config = MotionSkeletonConfig(detail=detail, **json.loads(args.config))
    clips = load_realdata(args.realdata) + load_corpus(args.corpus, args.cache, args.clips)
    models = None
    if not args.no_network:
        from backend.rigging.pipeline import RigConfig, get_models

        models = get_models(RigConfig(checkpoint_dir=str(args.checkpoints), device="cpu"))
    rows, figure_clips = [], []
    for clip in tqdm(clips, desc="clips"):
        verts = clip["verts"][: args.frames or None]
        box = AnchorBox.fit(verts[0])
        verts_n = box.apply(verts).astype(np.float64)
        gt = box.apply(clip["joints"]).astype(np.float64)
        t0 = time.perf_counter()
        skel = skeleton_from_motion(verts_n, clip["faces"], config=config)
        seconds = time.perf_counter() - t0
        leaves = np.setdiff1d(np.arange(len(skel.parents)), skel.parents)
        with_tips = np.concatenate([skel.joints, skel.tails[leaves]])
        row = dict(name=clip["name"], set=clip["set"], frames=int(len(verts)), verts=int(verts.shape[1]),
                   gt_joints=int(len(gt)), joints=int(len(skel.parents)), cd=cd_j2j(skel.joints, gt),
                   cd_tips=cd_j2j(with_tips, gt), tips=int(len(leaves)),
                   seconds=seconds, kmeans=cd_j2j(kmeans_joints(verts_n[0], len(gt)), gt),
                   parts=int(skel.stats["n_parts"]), moving=int(skel.stats["n_moving_parts"]),
                   out=outside_fraction(skel.joints, verts_n[0], clip["faces"]),
                   gt_out=outside_fraction(gt, verts_n[0], clip["faces"]), names=list(skel.names))
        if models is not None:
            net = network_skeleton(models, verts_n.astype(np.float32), clip["faces"])
            row.update(net=cd_j2j(net, gt), net_joints=int(len(net)))
        if args.noise_draws:
            row.update(noise_steadiness(verts, clip["faces"], clip["joints"], skel, config, args.noise_draws,
                                        args.noise))
        rows.append(row)
        if clip["name"] in ("khronos_fox_run", "khronos_cesiumman_walk"):
            figure_clips.append(dict(name=clip["name"], anchor=verts_n[0], skeleton=skel, gt=gt))

    net_cols = models is not None
    head = (f"{'clip':34s} {'K':>3s} {'V':>5s} | {'motion':>7s} {'+tips':>6s} {'J':>3s} {'GT J':>4s} {'ratio':>5s} {'parts':>5s} "
            f"{'mov':>3s} {'out':>4s} {'GT':>4s} {'s':>5s} | {'k-means':>7s}" + (f" | {'network':>7s} {'net J':>5s}" if net_cols else ""))
    print(f"CD-J2J to the ground-truth anchor skeleton (anchor-box normalized); detail={detail}")
    print(head)
    print("-" * len(head))

    def line(r: dict) -> str:
        s = (f"{r['name'][:34]:34s} {r['frames']:3d} {r['verts']:5d} | {r['cd']:7.4f} {r['cd_tips']:6.4f} {r['joints']:3d} {r['gt_joints']:4d} "
             f"{r['joints'] / r['gt_joints']:5.2f} {r['parts']:5d} {r['moving']:3d} {r['out']:4.2f} {r['gt_out']:4.2f} "
             f"{r['seconds']:5.2f} | {r['kmeans']:7.4f}")
        return s + (f" | {r['net']:7.4f} {r['net_joints']:5d}" if net_cols else "")

    for group in ("real", "corpus"):
        rs = [r for r in rows if r["set"] == group]
        if not rs:
            continue
        for r in rs:
            print(line(r))
        mean = (f"{'mean ' + group + f' ({len(rs)})':34s} {'':3s} {'':5s} | {np.mean([r['cd'] for r in rs]):7.4f} "
                f"{np.mean([r['cd_tips'] for r in rs]):6.4f} "
                f"{'':3s} {'':4s} {'':5s} {'':5s} {'':3s} {np.mean([r['out'] for r in rs]):4.2f} "
                f"{np.mean([r['gt_out'] for r in rs]):4.2f} {np.mean([r['seconds'] for r in rs]):5.2f} | "
                f"{np.mean([r['kmeans'] for r in rs]):7.4f}")
        if net_cols:
            mean += f" | {np.mean([r['net'] for r in rs]):7.4f}"
        print(mean)
        ratios = [r["joints"] / r["gt_joints"] for r in rs]
        print(f"  {group}: max CD-J2J {max(r['cd'] for r in rs):.4f} (+tips {max(r['cd_tips'] for r in rs):.4f}); joint ratio {min(ratios):.2f}-{max(ratios):.2f} "
              f"(clips outside 0.6-1.5x: {sum(not 0.6 <= q <= 1.5 for q in ratios)})")
        print("-" * len(head))
    if args.noise_draws:
        print(f"steadiness: {args.noise_draws} copies of each clip with Gaussian noise of {args.noise:g} x the diagonal")
        for group in ("real", "corpus"):
            rs = [r for r in rows if r["set"] == group]
            for r in rs:
                print(f"  {r['name'][:34]:34s} joints {r['draw_joints']} / {r['gt_joints']}  CD-J2J "
                      f"{' '.join(f'{c:.4f}' for c in r['draw_cd'])}  pair {r['pair']:.4f}")
            if rs:
                ratios = [j / r["gt_joints"] for r in rs for j in r["draw_joints"]]
                print(f"  mean {group}: pair {np.mean([r['pair'] for r in rs]):.4f}, CD-J2J over all draws "
                      f"{np.mean([c for r in rs for c in r['draw_cd']]):.4f} (worst {max(max(r['draw_cd']) for r in rs):.4f}), "
                      f"joint count range per clip {np.mean([np.ptp(r['draw_joints']) for r in rs]):.1f} on average, "
                      f"ratio {min(ratios):.2f}-{max(ratios):.2f}")
    if args.figure and figure_clips:
        draw_figure(figure_clips, args.figure)
        print(f"figure: {args.figure}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
