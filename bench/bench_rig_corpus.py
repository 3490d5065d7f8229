"""The rigger (``rig_sequence``) on held-out corpus clips with ground truth: reconstruction error and skeleton.

For each of the first ``--clips`` test-split creatures of a corpus (``training/run.py --stage data``), the
first ``--frames`` frames are rigged end to end, with and without motion refinement, and reported:

* reconstruction error: mean and max vertex distance over all frames / anchor box diagonal (target: mean
  <= 1 % with refinement);
* the canonical skeleton's CD-J2J / CD-J2B / CD-B2B to the ground-truth anchor skeleton, in the anchor-box
  normalized frame (the units of the evaluation tables);
* joints predicted vs ground truth, wall time.

    python bench/bench_rig_corpus.py [--corpus runs/default/corpus] [--clips 24] [--frames 32] [--models auto]
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

from backend.metrics.static_skeleton import static_skeleton_quality  # noqa: E402
from backend.normalize import AnchorBox  # noqa: E402
from backend.rigging.pipeline import RigConfig, get_models, rig_sequence  # noqa: E402
from backend.sequence import MeshSequence  # noqa: E402


def rig_clip(rec, n_frames: int, config: RigConfig, models) -> dict:
    """Rig one corpus record's first ``n_frames`` frames; errors in % of the box diagonal, CDs normalized."""
    k = min(rec.n_frames, n_frames)
    seq = MeshSequence(rec.verts[:k].astype(np.float32), rec.faces, name=f"{rec.family}")
    t0 = time.perf_counter()
    result = rig_sequence(seq, config, models=models)
    wall = time.perf_counter() - t0
    box = AnchorBox.fit(rec.verts[0])
    cd = static_skeleton_quality(box.apply(result.joints), box.apply(rec.joints[0]), result.parents, rec.parents)
    return dict(frames=k, verts=int(rec.verts.shape[1]), joints=len(result.parents), gt_joints=len(rec.parents),
                recon_mean=100 * float(result.recon_error.mean()), recon_max=100 * float(result.recon_error.max()),
                cd_j2j=cd.cd_j2j, cd_j2b=cd.cd_j2b, cd_b2b=cd.cd_b2b, wall=wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "default" / "corpus")
    parser.add_argument("--clips", type=int, default=24, help="first N test-split creatures")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (from frame 0)")
    parser.add_argument("--models", choices=["auto", "sprig", "base"], default="auto")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="write every per-clip number here")
    args = parser.parse_args(argv)

    from training.data.corpus import Corpus

    corpus = Corpus(args.corpus)
    ids = [int(i) for i in corpus.indices("test")][: args.clips]
    if not ids:
        raise SystemExit(f"{args.corpus} has no test split")
    rows = {"refine": [], "no-refine": []}
    models = None
    for index in tqdm(ids, desc="corpus test clips"):
        rec = corpus.load(index)
        for name, refine in (("refine", True), ("no-refine", False)):
            cfg = RigConfig(models=args.models, checkpoint_dir=str(args.checkpoints), refine=refine, device="cpu")
            models = models or get_models(cfg)
            rows[name].append(dict(index=index, family=rec.family, **rig_clip(rec, args.frames, cfg, models)))

    used = [Path(i.path).name for i in (models.skeleton_info, models.skinning_info) if i is not None]
    print(f"models: {', '.join(used) or args.models} ({args.checkpoints}); "
          f"{len(ids)} test clips, first {args.frames} frames each")
    print(f"{'setting':10s} | {'recon mean %':>12s} {'recon max %':>11s} | {'CD-J2J':>7s} {'CD-J2B':>7s} {'CD-B2B':>7s} "
          f"| {'joints':>6s} {'GT':>5s} | {'wall s':>6s}")
    for name, rs in rows.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k not in ("index", "family")}
        print(f"{name:10s} | {m['recon_mean']:12.3f} {m['recon_max']:11.2f} | {m['cd_j2j']:7.4f} {m['cd_j2b']:7.4f} "
              f"{m['cd_b2b']:7.4f} | {m['joints']:6.1f} {m['gt_joints']:5.1f} | {m['wall']:6.2f}")
    worst = max(rows["refine"], key=lambda r: r["recon_mean"])
    print(f"worst clip with refinement: test {worst['index']} ({worst['family']}), recon mean {worst['recon_mean']:.3f} %")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
