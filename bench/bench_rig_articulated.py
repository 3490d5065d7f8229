"""The rig an animator gets, end to end (``rig_sequence`` with its defaults): one table per issue #17.

For the real clips (``../shared/realdata``), a flat-shaded copy of the Fox run (every face with its own
vertices, as a flat-shaded glTF holds them), the bundled sample and the first ``--clips`` corpus test-split
creatures, each with its artist / ground-truth skeleton:

* ``J/GT``: the rig's joints vs the ground truth's (target 0.6x-1.5x);
* CD-J2J of the rig's anchor skeleton to the ground truth (anchor-box normalized; target mean <= 0.04, no
  real clip above 0.06), beside two references: ``k-means`` (the control: k-means centres of the anchor
  vertices, ground-truth joint count, no learning) and ``net`` (the shipped generator's own anchor skeleton);
* ``out``: the share of the rig's anchor joints outside the anchor mesh (generalized winding number below
  0.5; the artists' own skeletons: 0.06 on the real clips, 0.03 on the corpus clips);
* ``played``: the share of the rig's joints outside the mesh over the whole animation (every joint posed by its
  bone on every frame, against that frame's mesh: what an animator sees during playback; the anchor alone hid
  knees that leave a thin leg while it bends); on the real clips the artist's own per-frame joints the same way
  (printed under the table);
* ``far``: the share of the anchor's vertices whose largest weight is on a bone that is not among the four
  bones nearest to them (``backend.metrics.far_led_share``): skin that posing a far bone moves, which the
  reconstruction error cannot see where several bones move alike (the artists' own weights on the real clips:
  printed under the table);
* ``sep``: the largest joint separation over the whole animation (a child joint carried by its own bone's
  transform vs by its parent's), % of the box diagonal (target <= 1e-2 %, i.e. 1e-4 of the diagonal);
* ``seam``: the largest gap between co-located vertices over all frames, % of the diagonal;
* ``recon``: mean / max reconstruction error, % of the diagonal; ``DB``: Dem Bones (``py-dem-bones``, the
  peer for mesh sequence -> skinned animation, free rigid bones, no hierarchy) at the rig's bone count on the
  real clips and the sample (target: ours <= 1.5x);
* ``artist``: on the real clips, the articulated fit (``rig_sequence``'s fit options, joints held) on the
  artist's own skeleton, started from the artist's weights (extra roots, e.g. IK controllers, hang from their
  nearest earlier joint), and its ratio to Dem Bones at the artist's bone count: what an articulated rig with
  the artist's joints reaches on that clip;
* ``artist slip`` (printed under the table): how far the artist's own animation moves a child joint away from
  where its parent carries it (``joint_separation`` of the artist's bone motions, % of the diagonal) and on
  how many joints: a translation key on a non-root bone. An articulated rig cannot follow such a motion with
  rotations alone, while Dem Bones' free bones can;
* seconds of the whole ``rig_sequence`` call.

The last line times ``rig_sequence`` on 60 frames x 9.3k vertices (CesiumMan subdivided once, as in
``bench_rig_scaling.py``; target <= 20 s on 2 cores).

    python bench/bench_rig_articulated.py [--clips 24] [--no-dembones] [--json out.json]
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
sys.path.insert(0, str(ROOT / "bench"))

from bench_articulated_fit import flat_shaded  # noqa: E402
from bench_fit_vs_dembones import error_pct, run_dembones  # noqa: E402
from bench_rig_scaling import make_sequence  # noqa: E402
from bench_skeleton import REALDATA, load_corpus, load_realdata, network_skeleton  # noqa: E402

from backend.metrics import cd_j2j, far_led_share, joint_separation, kmeans_joints, outside_fraction  # noqa: E402
from backend.rigging.fit.articulated import posed_joints  # noqa: E402
from backend.normalize import AnchorBox  # noqa: E402
from backend.rigging.fit import fit_motion  # noqa: E402
from backend.rigging.pipeline import RigConfig, get_models, rig_sequence  # noqa: E402
from backend.sequence import MeshSequence  # noqa: E402
from backend.skeleton import bone_tails  # noqa: E402

SAMPLE = ROOT / "samples" / "quadruped_walk.npz"


def load_clips(n_corpus: int, cache: Path) -> list[dict]:
    clips = load_realdata(REALDATA)
    fox = next(c for c in clips if c["name"] == "khronos_fox_run")
    clips.append(dict(flat_shaded(dict(fox, weights=np.zeros((fox["verts"].shape[1], 1)))), set="seams"))
    d = np.load(SAMPLE)
    clips.append(dict(name="sample_quadruped_walk", set="sample", verts=d["verts"], faces=d["faces"],
                      joints=d["joints"][0], parents=d["parents"]))
    if n_corpus:
        clips += load_corpus(ROOT / "runs" / "default" / "corpus", cache, n_corpus)
    return clips


def artist_articulated(clip: dict, config: RigConfig) -> dict:
    """The articulated fit on the artist's skeleton from the artist's weights, and Dem Bones at its bone count
    (mean errors, % of the box diagonal). A second root (an IK controller that translates on its own) hangs from
    the nearest joint before it, so the tree has one root as the articulated fit needs."""
    verts = np.asarray(clip["verts"], dtype=np.float64)
    joints = np.asarray(clip["joints"], dtype=np.float64)
    parents = np.asarray(clip["parents"]).copy()
    roots = np.flatnonzero(parents < 0)
    for r in roots[1:]:  # joints before r are 0 .. r-1
        parents[r] = int(np.argmin(np.linalg.norm(joints[:r] - joints[r], axis=1)))
    skin = np.tile(np.eye(4), (*clip["skin_mats"].shape[:2], 1, 1))
    skin[..., :3, :] = clip["skin_mats"]  # rest -> frame k
    motion = skin @ np.linalg.inv(skin[0])[None]  # anchor (frame 0) -> frame k
    diag = float(np.linalg.norm(np.ptp(verts[0], axis=0)))
    slip = joint_separation(motion, joints, clip["parents"]).max(axis=0) / diag  # [J], original forest
    fit = fit_motion(verts[0], verts, clip["weights"], parents, joints, clip["faces"],
                     config.motion_fit_config(len(verts[0]), refine_joints=False))
    db = run_dembones(dict(verts=verts, faces=clip["faces"], parents=parents), iterations=30)
    tails = bone_tails(joints, parents, min_length=0.02 * diag)
    return dict(artist_mean=error_pct(verts, fit.weights, fit.transforms, fit.rest)[0], artist_db_mean=db["mean"],
                artist_far=far_led_share(verts[0], clip["weights"], joints, tails, parents),
                artist_roots=len(roots), artist_slip=100 * float(slip.max()),
                artist_slipping=[clip["joint_names"][j] for j in np.flatnonzero(slip > 1e-4)])


def rig_clip(clip: dict, config: RigConfig, models, dembones: bool) -> dict:
    verts = np.asarray(clip["verts"], dtype=np.float32)
    seq = MeshSequence(verts, clip["faces"], name=clip["name"])
    t0 = time.perf_counter()
    result = rig_sequence(seq, config, models=models)
    seconds = time.perf_counter() - t0
    box = AnchorBox.fit(verts[0])
    gt = box.apply(np.asarray(clip["joints"], dtype=np.float64))
    st = result.stats
    row = dict(name=clip["name"], set=clip["set"], joints=len(result.parents), gt_joints=len(clip["parents"]),
               cd=cd_j2j(box.apply(result.joints), gt),
               out=outside_fraction(result.joints, verts[0], clip["faces"]),
               played=outside_over_frames(posed_joints(result.bone_transforms, result.joints), verts,
                                          clip["faces"]),
               far=far_led_share(verts[0], result.weights, result.joints, result.tails, result.parents),
               kmeans=cd_j2j(kmeans_joints(box.apply(verts[0]), len(clip["parents"])), gt),
               net=cd_j2j(network_skeleton(models, box.apply(verts), clip["faces"]), gt),
               sep=100 * st["joint_separation_max"], seam=100 * st["seam_gap_max"],
               recon_mean=100 * st["recon_mean"], recon_max=100 * st["recon_max"], seconds=seconds,
               names=list(result.joint_names))
    if "frame_joints" in clip:
        row["artist_played"] = outside_over_frames(clip["frame_joints"], verts, clip["faces"])
    if dembones and clip["set"] in ("real", "seams", "sample"):
        db = run_dembones(dict(verts=verts.astype(np.float64), faces=clip["faces"], parents=result.parents),
                          iterations=30, n_bones=len(result.parents))
        row.update(db_mean=db["mean"], db_bones=db["bones"], db_seconds=db["wall"])
        if clip["set"] == "real":
            row.update(artist_articulated(clip, config))
    return row


def outside_over_frames(frame_joints: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> float:
    """Share of joint-frames outside the mesh: ``frame_joints [K, J, 3]`` (a rig's joints posed by their bones,
    or an artist's per-frame joints), each frame's tested against that frame's mesh (generalized winding number
    below 0.5)."""
    return float(np.mean([outside_fraction(frame_joints[k], verts[k], faces) for k in range(len(frame_joints))]))


def fmt(r: dict) -> str:
    ratio = r["joints"] / r["gt_joints"]
    db = (f"{r['db_mean']:7.3f} {r['recon_mean'] / max(r['db_mean'], 1e-9):6.2f}x" if "db_mean" in r
          else f"{'-':>7s} {'-':>7s}")
    artist = (f"{r['artist_mean']:6.3f} {r['artist_mean'] / max(r['artist_db_mean'], 1e-9):5.2f}x" if "artist_mean" in r
              else f"{'-':>6s} {'-':>6s}")
    return (f"{r['name'][:28]:28s} {r['joints']:3d}/{r['gt_joints']:<3d} {ratio:4.2f} | {r['cd']:.4f} "
            f"{r['kmeans']:.4f} {r['net']:.4f} | {r['out']:4.2f} {r['played']:4.2f} {r['far']:4.2f} | {r['sep']:8.1e} {r['seam']:8.1e} | {r['recon_mean']:6.3f} "
            f"{r['recon_max']:6.2f} | {db} | {artist} | {r['seconds']:5.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24, help="corpus test-split creatures (0: none)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "corpus_test")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--no-dembones", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="skip the 60 x 9.3k timing")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    config = RigConfig(checkpoint_dir=args.checkpoints)
    models = get_models(config)
    clips = load_clips(args.clips, args.cache)
    rows = [rig_clip(c, config, models, not args.no_dembones) for c in tqdm(clips, desc="rigging")]

    print(f"{'clip':28s} {'J/GT':7s} {'ratio':4s} | {'CD-J2J k-means net':20s} | {'out  play far':14s} | {'sep %':8s} {'seam %':8s} | "
          f"{'recon % mean max':13s} | {'DB mean ratio':15s} | {'artist ratio':13s} | {'s':>5s}")
    for group in ("real", "seams", "sample", "corpus"):
        part = [r for r in rows if r["set"] == group]
        if not part:
            continue
        for r in part:
            print(fmt(r))
        ratios = [r["joints"] / r["gt_joints"] for r in part]
        print(f"{'mean ' + group + f' ({len(part)})':28s} ratio {min(ratios):.2f}-{max(ratios):.2f} | "
              f"{np.mean([r['cd'] for r in part]):.4f} {np.mean([r['kmeans'] for r in part]):.4f} "
              f"{np.mean([r['net'] for r in part]):.4f} | {np.mean([r['out'] for r in part]):4.2f} "
              f"{np.mean([r['played'] for r in part]):4.2f} {np.mean([r['far'] for r in part]):4.2f} | "
              f"max sep {max(r['sep'] for r in part):.1e} | "
              f"recon mean {np.mean([r['recon_mean'] for r in part]):.3f}")
    for r in rows:
        if "artist_slip" in r:
            print(f"artist slip {r['name'][:28]:28s} {r['artist_slip']:6.3f} % of the diagonal, "
                  f"{len(r['artist_slipping'])} joints" + (f" ({', '.join(r['artist_slipping'])})"
                                                          if r["artist_slipping"] else "")
                  + f"; far-led skin with the artist's own weights {r['artist_far']:.2f}")
    for r in rows:
        if "artist_played" in r:
            print(f"joints outside while it plays {r['name'][:28]:28s} ours {r['played']:.3f}, the artist's "
                  f"{r['artist_played']:.3f} of joint-frames")
    if not args.no_speed:
        seq = make_sequence(60, 1)
        t0 = time.perf_counter()
        result = rig_sequence(seq, config, models=models)
        wall = time.perf_counter() - t0
        print(f"speed: 60 frames x {seq.n_verts} vertices end to end {wall:.1f} s "
              f"({len(result.parents)} joints; stages: "
              + ", ".join(f"{k} {v:.1f}" for k, v in result.stats["stage_seconds"].items()) + ")")
        rows.append(dict(name="speed_60x9k", set="speed", seconds=wall, vertices=seq.n_verts))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
