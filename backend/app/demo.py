"""The demo behind ``make demo``: ``python -m backend.app.demo``.

1. Rigs the bundled sample (``samples/quadruped_walk.npz``, a generated walking quadruped) with the
   checkpoints in ``checkpoints/`` and writes ``demo_output/<name>_rigged.glb`` and an HTML report
   (skipped, with the reason, when no checkpoints are present).
2. Scores two per-frame rigs of the same clip with the evaluation protocol: the ground-truth rig's own
   per-frame joints and weights as the "prediction", and a copy with 1% Gaussian joint jitter (of the
   anchor box's longest side) and multiplicative weight noise; tables printed, files in ``demo_output/``.

``--clip`` takes any rigged ``.npz`` in the same layout, e.g. ``../shared/realdata/khronos_fox_run.npz``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from backend import REPO_ROOT
from backend.app.evaluate import EvalInput, evaluate, format_report, save_eval_input
from backend.normalize import AnchorBox

logger = logging.getLogger(__name__)


SAMPLE = REPO_ROOT / "samples" / "quadruped_walk.npz"


def load_realdata_clip(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one real rigged clip (``verts, faces, joints [K,J,3], parents, weights``)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"rigged clip not found: {path} (pass --clip PATH to use another rigged .npz)")
    data = np.load(path, allow_pickle=False)
    missing = [k for k in ("verts", "faces", "joints", "parents", "weights") if k not in data.files]
    if missing:
        raise ValueError(f"{path.name} has no {', '.join(missing)}: a skinned clip is needed")
    return {k: data[k] for k in ("verts", "faces", "joints", "parents", "weights")}


def artist_input(clip: dict[str, np.ndarray], name: str) -> EvalInput:
    """The artist's per-frame joints and weights as the prediction; anchor skeleton and weights as ground truth."""
    k = len(clip["verts"])
    return EvalInput(verts=clip["verts"], faces=clip["faces"], joints=list(clip["joints"]),
                     parents=[clip["parents"]] * k, weights=[clip["weights"]] * k,
                     gt_joints=clip["joints"][0], gt_parents=clip["parents"], gt_weights=clip["weights"], name=name)


def jittered_input(clip: dict[str, np.ndarray], name: str, joint_sigma: float = 0.01, weight_sigma: float = 0.5,
                   seed: int = 0) -> EvalInput:
    """A noisy "prediction": every frame's joints + N(0, joint_sigma x box side), weights x exp(N(0, weight_sigma))."""
    rng = np.random.default_rng(seed)
    k = len(clip["verts"])
    scale = AnchorBox.fit(clip["verts"][0]).scale
    joints = [j + rng.normal(0.0, joint_sigma * scale, j.shape) for j in clip["joints"]]
    weights = []
    for _ in range(k):
        w = clip["weights"] * np.exp(rng.normal(0.0, weight_sigma, clip["weights"].shape))
        weights.append(w / w.sum(axis=1, keepdims=True))
    return EvalInput(verts=clip["verts"], faces=clip["faces"], joints=joints, parents=[clip["parents"]] * k,
                     weights=weights, gt_joints=clip["joints"][0], gt_parents=clip["parents"],
                     gt_weights=clip["weights"], name=name)


SUMMARY_KEYS = ("pjdd", "pjdd_clip", "blrd", "gsd", "jad", "topology_flicker", "mcjd", "mpjpe_anchor", "cd_j2j",
                "skin_l1", "skin_symkl", "skin_precision", "skin_recall", "skin_avg_l1")


def rig_clip(clip: Path, out: Path, checkpoints: Path) -> None:
    """Rig ``clip`` with the checkpoints and write the GLB and the HTML report (logs why when it cannot)."""
    from backend.app.rig_command import skin_notes
    from backend.io import load_sequence
    from backend.io.gltf import save_rigged_gltf
    from backend.models.checkpoint import CheckpointError
    from backend.rigging.report import write_report
    from backend.rigging.pipeline import RigConfig, rig_sequence

    seq = load_sequence(clip)
    try:
        result = rig_sequence(seq, RigConfig(models="auto", checkpoint_dir=str(checkpoints)))
    except CheckpointError as exc:
        logger.warning("not rigging %s: %s (train them with `python training/run.py`)", clip.name, exc)
        return
    glb = save_rigged_gltf(out / f"{clip.stem}_rigged.glb", result.anchor_verts, result.faces, result.joints,
                           result.parents, result.joint_names, result.weights, result.bone_transforms, fps=result.fps)
    report = write_report(result, out / f"{clip.stem}_report.html", title=clip.stem)
    s = result.stats
    sys.stdout.write(f"rigged {clip.name}: {s['joints']} joints, {s['frames']} frames, reconstruction error mean "
                     f"{100 * s['recon_mean']:.3f}% / max {100 * s['recon_max']:.3f}% of the box diagonal, "
                     f"{s['seconds']:.1f} s -> {glb}, {report}\n"
                     + "".join(f"  {line}\n" for line in skin_notes(s)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=SAMPLE, help="a rigged clip .npz (default: the bundled sample)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo_output", help="output folder")
    parser.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints", help="checkpoint folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        clip = load_realdata_clip(args.clip)
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"demo: error: {exc}\n")
        return 2
    stem = args.clip.stem
    args.out.mkdir(parents=True, exist_ok=True)
    rig_clip(args.clip, args.out, args.checkpoints)
    runs = {"artist": artist_input(clip, f"{stem} (artist rig)"),
            "jitter1pct": jittered_input(clip, f"{stem} (1% joint jitter + weight noise)")}
    results = {}
    for tag, inp in runs.items():
        npz = save_eval_input(args.out / f"{stem}_{tag}.npz", inp)
        res = evaluate(inp)
        (args.out / f"{stem}_{tag}.json").write_text(json.dumps(res, indent=1) + "\n")
        results[tag] = res
        sys.stdout.write(format_report(res) + "\n")
        if tag == "artist":
            sys.stdout.write("(the artist rig scored against itself: CD-J2B is above 0 because the bones' sample points "
                             "lie between the joints, and skin recall is below 1 because the protocol prunes the "
                             "artist's own small weights; docs/metrics.md)\n")
        sys.stdout.write("\n")
        logger.info("wrote %s and %s", npz, npz.with_suffix(".json"))
    header = f"{'metric':<18}" + "".join(f"{tag:>14}" for tag in results)
    lines = ["side by side", header, "-" * len(header)]
    for key in SUMMARY_KEYS:
        cells = "".join(f"{'-' if r[key] is None else format(r[key], '.4f'):>14}" for r in results.values())
        lines.append(f"{key:<18}{cells}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
