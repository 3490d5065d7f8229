"""Contact sheet of generated creatures: shaded meshes with their skeletons, a few frames each.

    python -m training.data.gallery --out docs/corpus_gallery.png            # 24 creatures x 3 frames
    python -m training.data.gallery --corpus runs/default/corpus --out g.png # from a written corpus

Meshes are drawn with a small painter's-algorithm rasterizer on matplotlib's Agg backend: triangles
are projected orthographically, sorted back to front and shaded by their normal; the skeleton is
drawn on top (bones as lines, joints as dots, the root in red).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def view_matrix(azimuth_deg: float = 35.0, elevation_deg: float = 18.0) -> np.ndarray:
    """Rotation ``[3, 3]`` from world (+Y up) to camera (x right, y up, z towards the viewer)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    ry = np.array([[np.cos(az), 0, np.sin(az)], [0, 1, 0], [-np.sin(az), 0, np.cos(az)]])
    rx = np.array([[1, 0, 0], [0, np.cos(el), -np.sin(el)], [0, np.sin(el), np.cos(el)]])
    return rx @ ry


def draw_mesh(ax, verts: np.ndarray, faces: np.ndarray, joints: np.ndarray | None = None,
              parents: np.ndarray | None = None, view: np.ndarray | None = None,
              color=(0.72, 0.78, 0.86), box: tuple[np.ndarray, float] | None = None) -> None:
    """Draw one mesh (``verts [V, 3]``, ``faces [F, 3]``) and optionally its skeleton on ``ax``.

    Args:
        joints: ``[J, 3]`` joint positions; ``parents [J]`` their tree.
        box: ``(centre [2], half_size)`` of the 2-D view window; fitted to the mesh when omitted.
    """
    from matplotlib.collections import LineCollection, PolyCollection

    view = view_matrix() if view is None else view
    cam = np.asarray(verts, dtype=np.float64) @ view.T
    tri = cam[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    light = np.array([0.35, 0.6, 0.72])
    light /= np.linalg.norm(light)
    shade = 0.28 + 0.72 * np.clip(np.abs(normal @ light), 0.0, 1.0)
    order = np.argsort(tri[:, :, 2].mean(axis=1))  # far (small z) first
    base = np.asarray(color)
    colors = np.clip(base[None, :] * shade[order, None], 0, 1)
    ax.add_collection(PolyCollection(tri[order, :, :2], facecolors=colors, edgecolors="none", antialiased=False))
    if joints is not None and parents is not None:
        jc = np.asarray(joints, dtype=np.float64) @ view.T
        child = np.flatnonzero(np.asarray(parents) >= 0)
        segs = np.stack([jc[parents[child], :2], jc[child, :2]], axis=1)
        ax.add_collection(LineCollection(segs, colors=(0.85, 0.35, 0.05), linewidths=0.9))
        ax.scatter(jc[:, 0], jc[:, 1], s=3.0, c=[(0.1, 0.1, 0.1)], zorder=3, linewidths=0)
        root = np.flatnonzero(np.asarray(parents) < 0)
        ax.scatter(jc[root, 0], jc[root, 1], s=9.0, c=[(0.85, 0.05, 0.05)], zorder=4, linewidths=0)
    if box is None:
        lo, hi = cam[:, :2].min(axis=0), cam[:, :2].max(axis=0)
        box = ((lo + hi) / 2, 0.55 * float((hi - lo).max()))
    centre, half = box
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal")
    ax.axis("off")


def heading_deg(rec) -> float:
    """Yaw (degrees about +Y) of the root at frame 0: the camera turns with the creature."""
    root = int(np.flatnonzero(np.asarray(rec.parents) < 0)[0])
    forward = np.asarray(rec.transforms[0, root, :3, :3], dtype=np.float64) @ np.array([0.0, 0.0, 1.0])
    return float(np.degrees(np.arctan2(forward[0], forward[2])))


def frame_boxes(frames: np.ndarray, view: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """2-D windows ``(centre, half_size)`` for ``frames [K, V, 3]``: each centred on its frame, all of
    one size (the largest frame's), so the creature's scale is comparable across its panels."""
    cam = np.asarray(frames, dtype=np.float64) @ view.T  # [K, V, 3]
    lo, hi = cam[..., :2].min(axis=1), cam[..., :2].max(axis=1)
    half = 0.53 * float((hi - lo).max())
    return [((a + b) / 2, half) for a, b in zip(lo, hi)]


def render_contact_sheet(records, out: Path, frames_per_creature: int = 3, columns: int = 3,
                         panel_inches: float = 1.9, dpi: int = 110) -> Path:
    """Render ``records`` (objects with ``verts [K,V,3]``, ``faces``, ``joints [K,J,3]``, ``parents``,
    ``family``, ``index``) as a grid: each creature gets ``frames_per_creature`` panels (first, middle
    and last frame by default) with a caption.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    rows = int(np.ceil(len(records) / columns))
    cols = columns * frames_per_creature
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_inches, rows * panel_inches * 1.02), dpi=dpi,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, rec in enumerate(records):
        r, c0 = divmod(i, columns)
        K = rec.verts.shape[0]
        view = view_matrix(35.0 - heading_deg(rec), 18.0)
        picks = np.linspace(0, K - 1, frames_per_creature).round().astype(int)
        boxes = frame_boxes(rec.verts[picks], view)
        for f, k in enumerate(picks):
            ax = axes[r, c0 * frames_per_creature + f]
            draw_mesh(ax, rec.verts[k], rec.faces, rec.joints[k], rec.parents, view, box=boxes[f],
                      color=FAMILY_COLORS.get(rec.family, (0.72, 0.78, 0.86)))
            if f == 0:
                label = f"#{rec.index} {rec.family}\n{len(rec.parents)} joints, {rec.verts.shape[1]} verts"
            else:
                label = f"frame {k}"
            ax.set_title(label, fontsize=6.5, pad=1.5)
    fig.subplots_adjust(left=0.005, right=0.995, top=0.97, bottom=0.005, wspace=0.02, hspace=0.22)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


FAMILY_COLORS = {
    "humanoid": (0.80, 0.70, 0.62),
    "quadruped": (0.78, 0.62, 0.45),
    "bird": (0.62, 0.72, 0.85),
    "insect": (0.55, 0.70, 0.50),
    "spider": (0.60, 0.58, 0.62),
    "snake": (0.62, 0.78, 0.50),
    "fish": (0.55, 0.72, 0.82),
    "tentacled": (0.85, 0.58, 0.62),
    "dragon": (0.62, 0.80, 0.68),
}


def main(argv: list[str] | None = None) -> int:
    from .corpus import Corpus, CorpusConfig, generate_creature

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/corpus_gallery.png"))
    parser.add_argument("--corpus", type=Path, default=None, help="read creatures from a written corpus")
    parser.add_argument("--n", type=int, default=24, help="number of creatures")
    parser.add_argument("--start", type=int, default=0, help="first creature index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=32, help="clip length when generating")
    parser.add_argument("--family", default=None, help="only this family (when generating)")
    parser.add_argument("--columns", type=int, default=3, help="creatures per row")
    parser.add_argument("--panel", type=float, default=1.9, help="panel size in inches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.corpus is not None:
        corpus = Corpus(args.corpus)
        indices = sorted(corpus.all_indices())[args.start:args.start + args.n]
        records = [corpus.load(i) for i in indices]
    else:
        config = CorpusConfig(n_frames=args.frames, seed=args.seed)
        if args.family:
            config.families = (args.family,)
        records = [generate_creature(i, args.seed, config) for i in range(args.start, args.start + args.n)]
    path = render_contact_sheet(records, args.out, columns=args.columns, panel_inches=args.panel)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
