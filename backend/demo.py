"""Demo of the evaluation protocol on a real artist rig: ``python -m backend.demo``.

Builds two eval-input files from the Khronos Fox "Run" clip (``../shared/realdata`` next to the
repository): the artist's own per-frame joints and weights as the "prediction", and a copy with 1%
Gaussian joint jitter (of the anchor box's longest side) and multiplicative weight noise. Both are
scored with :func:`backend.evaluate.evaluate` against the artist's anchor skeleton and weights; the
tables are printed and everything is written to ``demo_output/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .evaluate import EvalInput, evaluate, format_report, save_eval_input
from .normalize import AnchorBox

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"
CLIP = "khronos_fox_run.npz"


def load_realdata_clip(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one real rigged clip (``verts, faces, joints [K,J,3], parents, weights``)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"real clip not found: {path} (expected the shared real-data folder at {path.parent}; "
            "pass --clip PATH to use another rigged .npz)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=REALDATA / CLIP, help="a rigged real clip .npz")
    parser.add_argument("--out", type=Path, default=REPO / "demo_output", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        clip = load_realdata_clip(args.clip)
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"demo: error: {exc}\n")
        return 2
    stem = args.clip.stem
    runs = {"artist": artist_input(clip, f"{stem} (artist rig)"),
            "jitter1pct": jittered_input(clip, f"{stem} (1% joint jitter + weight noise)")}
    results = {}
    for tag, inp in runs.items():
        npz = save_eval_input(args.out / f"{stem}_{tag}.npz", inp)
        res = evaluate(inp)
        (args.out / f"{stem}_{tag}.json").write_text(json.dumps(res, indent=1) + "\n")
        results[tag] = res
        sys.stdout.write(format_report(res) + "\n\n")
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
