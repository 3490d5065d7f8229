"""Articulated motion fit against the free per-bone fit (and Dem Bones) on the real clips.

For each clip of ``../shared/realdata`` (and a flat-shaded copy of the Fox run, every face with its own
three vertices, to exercise the seams):

* ``artist``: the motion fit alone from the artist's skeleton (its joints on the anchor frame 0 and its
  parents; a forest becomes one tree) and distance-heuristic start weights, ``free`` (every bone its own
  rigid motion: ``FitConfig()``) against ``articulated`` (``FitConfig(articulated=True)``);
* ``network``: the whole pipeline (``rig_sequence``) with the shipped networks' skeleton, free against
  articulated (``RigConfig.articulated``), with ``--checkpoints DIR``;
* ``dembones``: Dem Bones (``py-dem-bones``, ``transAffine = 0``) at the artist's bone count.

Per run: mean / max reconstruction error and max joint separation (a child's joint carried by its own
transform vs by its parent's, about the joints the fit returns: refined by default), in % of the anchor
box diagonal; the seam gap (largest distance, over frames, between reconstructed vertices that share one
position on every input frame), in %; wall and CPU seconds (process time of all threads: less sensitive
to other load on the machine; for the pipeline runs the whole ``rig_sequence`` call, networks included,
and the motion fit's own wall time); how far the joint refinement moved the joints (largest, in % of the
diagonal). ``art/DB``: the articulated fit's mean error over Dem Bones'.

    python bench/bench_articulated_fit.py [--checkpoints DIR] [--clips NAME ...] [--no-dembones]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fit_vs_dembones import heuristic_weights, load_sequences  # noqa: E402

from backend.metrics import joint_separation  # noqa: E402
from backend.rigging.fit import FitConfig, fit_motion, skin_anchor  # noqa: E402
from backend.rigging.pipeline import seam_gap  # noqa: E402
from backend.sequence import colocated_representatives  # noqa: E402


def flat_shaded(seq: dict) -> dict:
    """Every face with its own three vertices (what a flat-shaded glTF export holds)."""
    corners = seq["faces"].reshape(-1)
    return dict(seq, name=seq["name"] + "_flat", verts=seq["verts"][:, corners],
                faces=np.arange(len(corners)).reshape(-1, 3), weights=seq["weights"][corners])


def measure(verts: np.ndarray, weights: np.ndarray, transforms: np.ndarray, joints: np.ndarray | None,
            parents: np.ndarray | None, seconds: tuple[float, float], rest: np.ndarray | None = None) -> dict:
    """``rest``: the rig's rest shape (a fit's ``MotionFit.rest``, a rig's ``anchor_verts``); default the anchor."""
    diag = float(np.linalg.norm(np.ptp(verts[0], axis=0)))
    posed = skin_anchor(verts[0] if rest is None else rest, weights, transforms)
    err = np.linalg.norm(posed - verts, axis=-1) / diag
    sep = (float(joint_separation(transforms, joints, parents).max()) / diag) if joints is not None else float("nan")
    return dict(mean=100 * float(err.mean()), max=100 * float(err.max()), sep=100 * sep,
                seam=100 * seam_gap(posed, colocated_representatives(verts)) / diag, seconds=seconds[0], cpu=seconds[1])


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def run_fit(seq: dict, articulated: bool) -> dict:
    verts = seq["verts"]
    w0 = heuristic_weights(verts[0], seq["joints"], seq["parents"])
    t0 = clock()
    fit = fit_motion(verts[0], verts, w0, seq["parents"], seq["joints"], seq["faces"],
                     FitConfig(articulated=articulated))
    out = measure(verts, fit.weights, fit.transforms, fit.joints, seq["parents"], since(t0), fit.rest)
    out["moved"] = 100 * float(np.linalg.norm(fit.joints - seq["joints"], axis=1).max()) / float(
        np.linalg.norm(np.ptp(verts[0], axis=0)))
    return out


def run_pipeline(seq: dict, articulated: bool, checkpoints: str) -> dict:
    from backend.rigging.pipeline import RigConfig, get_models, rig_sequence
    from backend.sequence import MeshSequence

    cfg = RigConfig(checkpoint_dir=checkpoints, models="auto", articulated=articulated)
    get_models(cfg)  # loaded once, not timed
    ms = MeshSequence(seq["verts"].astype(np.float32), seq["faces"], name=seq["name"])
    t0 = clock()
    res = rig_sequence(ms, cfg)
    seconds = since(t0)
    out = measure(seq["verts"], res.weights, res.bone_transforms.astype(np.float64), res.joints, res.parents, seconds,
                  res.anchor_verts.astype(np.float64))
    out.update(J=len(res.parents), fit_seconds=res.stats["fit_seconds"], moved=100 * res.stats["joints_moved_max"])
    return out


def run_dembones(seq: dict) -> dict:
    from py_dem_bones import solve_skinning
    from py_dem_bones._py_dem_bones import DemBones

    solver = DemBones()
    solver.transAffine = 0.0
    verts = seq["verts"]
    t0 = clock()
    res = solve_skinning(verts[0], verts, len(seq["parents"]), faces=seq["faces"], max_influences=4,
                         iterations=30, solver=solver)
    return measure(verts, res.weights.T, res.transforms, None, None, since(t0))


def row(label: str, r: dict) -> str:
    return (f"  {label:<22s} {r['mean']:8.3f} {r['max']:8.3f} {r['sep']:10.2e} {r['seam']:9.2e} "
            f"{r['seconds']:7.1f} {r['cpu']:7.1f}" + (f"   joints moved {r['moved']:.2f} %" if r.get("moved") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default=None, help="trained checkpoints for the network-skeleton runs")
    parser.add_argument("--clips", nargs="*", default=None, help="clip names (default: all, plus the flat Fox run)")
    parser.add_argument("--no-dembones", action="store_true")
    args = parser.parse_args(argv)
    seqs = load_sequences(0)
    fox = [s for s in seqs if s["name"] == "khronos_fox_run"]
    seqs += [flat_shaded(s) for s in fox]
    if args.clips:
        seqs = [s for s in seqs if s["name"] in args.clips]
    dembones = not args.no_dembones and importlib.util.find_spec("py_dem_bones") is not None
    print(f"{'clip / run':<24s} {'mean %':>8s} {'max %':>8s} {'sep max %':>10s} {'seam %':>9s} {'wall s':>7s} {'cpu s':>7s}")
    for seq in seqs:
        K, V, _ = seq["verts"].shape
        print(f"{seq['name']}  (K={K}, V={V}, artist J={len(seq['parents'])})")
        free, art = run_fit(seq, False), run_fit(seq, True)
        print(row("artist free", free))
        print(row("artist articulated", art))
        if dembones:
            db = run_dembones(seq)
            print(row("dembones (artist J)", db) + f"   art/DB mean {art['mean'] / max(db['mean'], 1e-12):.2f}"
                  f"  max {art['max'] / max(db['max'], 1e-12):.2f}")
        if args.checkpoints:
            for articulated in (False, True):
                r = run_pipeline(seq, articulated, args.checkpoints)
                print(row(f"network {'articulated' if articulated else 'free'} J={r['J']}", r)
                      + f"   fit {r['fit_seconds']:.1f}s")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
