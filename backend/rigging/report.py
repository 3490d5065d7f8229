"""A self-contained HTML report of one rig: error and stability curves, heatmaps, skeleton over the mesh.

    from backend.rigging.report import write_report
    write_report(result, "report.html")

Every figure is drawn with matplotlib (Agg) and embedded as a base64 PNG, so the page has no external
files. Input is a :class:`backend.rigging.result.RigResult` (curves come from ``result.stats`` when
``backend.rigging.pipeline`` produced it, and are recomputed from the arrays where they are missing).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from backend.rigging.fit import skin_anchor
from backend.rigging.pipeline import BONE_FAR_FROM_SKIN
from backend.rigging.result import RigResult
from backend.sampling import triangle_areas

log = logging.getLogger(__name__)

# the stability rows rate the skeleton network run on each frame by itself (the paper's protocol); the rig keeps
# one skeleton on every frame
NETWORK_PER_FRAME = "skeleton network, run on each frame"
STABILITY_KEYS = (("pjdd", "PJDD (Eq. 28)"), ("blrd", "BLRD (Eq. 29)"), ("gsd", "GSD (Eq. 30)"),
                  ("jad", "JAD (Eq. 31)"), ("mcjd", "MCJD"))


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    return plt, PolyCollection, LineCollection


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _matplotlib()[0].close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>'


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _arr(values, n: int | None = None) -> np.ndarray:
    """List with None -> float array with NaN."""
    if values is None:
        return np.full(n or 0, np.nan)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Mesh drawing


class _MeshView:
    """An orthographic view of the mesh: ``up_axis`` vertical, the longer remaining axis horizontal (the
    shorter one for ``side``), the third is depth. ``drawn``: the mesh to draw, ``(faces, vertex_map)`` from
    :func:`drawing_mesh`."""

    def __init__(self, anchor: np.ndarray, drawn: tuple[np.ndarray, np.ndarray], side: bool = False,
                 up_axis: int = 1):
        extent = np.ptp(anchor, axis=0)
        others = [a for a in range(3) if a != up_axis]
        horiz = max(others, key=lambda a: extent[a]) if not side else min(others, key=lambda a: extent[a])
        depth = [a for a in others if a != horiz][0]
        self.axes = (horiz, up_axis, depth)
        self.faces, self.vertex_map = drawn

    def polys(self, verts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Projected triangles ``[F, 3, 2]`` back to front, their order, and flat shade values ``[F]``."""
        tri = verts[self.vertex_map][self.faces]  # [F, 3, 3]
        h, u, d = self.axes
        depth = tri[:, :, d].mean(1)
        order = np.argsort(depth)  # far (small depth) first; the viewer looks down -depth
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.abs(n[:, d])
        return tri[order][:, :, [h, u]], order, shade[order]


def drawing_mesh(anchor: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """A lighter mesh for drawing, by vertex clustering: the vertices in each cell of a grid become one (the
    vertex nearest the cell's mean), the faces are re-indexed, and faces that collapse or repeat are dropped; the
    grid is coarsened until at most ``max_faces`` faces remain. Every part of the surface keeps its place and
    co-located seam vertices fall into one cell, so the picture has neither holes nor cracks. (Quadric
    decimation, used until 2026-12-07, kept a quarter of the surface of a 189k-vertex CesiumMan with UV seams,
    drawing a few large triangles in place of the body, and took 9 s per view at 598k vertices.)

    Args:
        anchor: float ``[V, 3]``; faces: int ``[F, 3]``; max_faces: at most this many faces.
    Returns:
        ``(faces int64 [F', 3], vertex_map int64 [V'])``: the faces index ``vertex_map``, whose entries are
        vertices of the input.
    """
    a = np.asarray(anchor, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) <= max_faces:
        return f, np.arange(len(a))
    lo = a.min(axis=0)
    area = float(triangle_areas(a, f).sum())
    # about two faces per surface cell: start with max_faces / 2 cells on the surface
    extent = max(float(np.ptp(a, axis=0).max()), 1e-12)
    size = max(np.sqrt(area / (0.5 * max_faces)), extent / 2 ** 20)
    while True:
        grid = np.floor((a - lo) / size).astype(np.int64)  # at most 2^20 cells per axis: 21 bits each
        _, cell = np.unique((grid[:, 0] << 42) | (grid[:, 1] << 21) | grid[:, 2], return_inverse=True)
        cell = cell.reshape(-1)
        fc = cell[f]
        fc = fc[(fc[:, 0] != fc[:, 1]) & (fc[:, 1] != fc[:, 2]) & (fc[:, 0] != fc[:, 2])]
        _, first = np.unique(np.sort(fc, axis=1), axis=0, return_index=True)
        fc = fc[np.sort(first)]
        if len(fc) <= max_faces:
            break
        size *= 1.05 * np.sqrt(len(fc) / max_faces)
    n_cells = int(cell.max()) + 1
    counts = np.bincount(cell, minlength=n_cells)
    mean = np.stack([np.bincount(cell, weights=a[:, k], minlength=n_cells) for k in range(3)], 1) / counts[:, None]
    order = np.lexsort((np.linalg.norm(a - mean[cell], axis=1), cell))  # by cell, nearest the mean first
    vertex_map = order[np.searchsorted(cell[order], np.arange(n_cells))]
    used = np.unique(fc)  # cells no face touches any more are not drawn
    remap = np.full(n_cells, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return remap[fc], vertex_map[used]


def _draw_mesh(ax, view: _MeshView, verts: np.ndarray, values: np.ndarray | None = None, vmax: float = 1.0,
               cmap: str = "coolwarm"):
    plt, PolyCollection, _ = _matplotlib()
    polys, order, shade = view.polys(verts)
    if values is None:
        colors = np.stack([shade * 0.85] * 3 + [np.ones_like(shade)], 1)
    else:
        face_vals = values[view.vertex_map][view.faces].mean(1)[order]
        colors = plt.get_cmap(cmap)(np.clip(face_vals / max(vmax, 1e-12), 0, 1))
        colors[:, :3] *= (0.55 + 0.45 * shade)[:, None]
    ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="none", antialiased=False))
    lo, hi = polys.reshape(-1, 2).min(0), polys.reshape(-1, 2).max(0)
    pad = 0.03 * float((hi - lo).max())
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------
# Figures


def _curves_figure(result: RigResult) -> str:
    plt = _matplotlib()[0]
    st = result.stats or {}
    K = result.n_frames
    recon_mean = _arr(st.get("recon_mean_per_frame")) if st.get("recon_mean_per_frame") else result.recon_error.mean(1)
    recon_max = _arr(st.get("recon_max_per_frame")) if st.get("recon_max_per_frame") else result.recon_error.max(1)
    inst = result.skin_instability.mean(1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    ax = axes[0]
    ax.plot(np.arange(K), 100 * recon_mean, label="mean", color="tab:blue")
    ax.plot(np.arange(K), 100 * recon_max, label="max", color="tab:red", alpha=0.7)
    ax.set_xlabel("frame")
    ax.set_ylabel("% of anchor box diagonal")
    ax.set_title("Reconstruction error (LBS of the rig vs input)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(np.arange(K), inst, color="tab:purple", label="mean over vertices")
    evaluated = st.get("skin_frames")
    if evaluated and len(evaluated) < K:
        ax.plot(evaluated, inst[evaluated], "o", color="tab:purple", ms=3,
                label="predicted frames (others interpolated)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("frame")
    ax.set_ylabel("half L1 to anchor teacher")
    ax.set_title("Skinning instability")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _stability_figure(stats: dict) -> str | None:
    stab = stats.get("stability")
    if not stab or len(stab.get("frames", [])) < 2:
        return None
    plt = _matplotlib()[0]
    frames = np.asarray(stab["frames"])
    gt = stats.get("gt")
    fig, axes = plt.subplots(1, len(STABILITY_KEYS) + 1, figsize=(3.0 * (len(STABILITY_KEYS) + 1), 2.9))
    for ax, (key, label) in zip(axes, STABILITY_KEYS):
        ax.plot(frames[1:], _arr(stab.get(key))[1:], "o-", ms=3, label="predicted")
        if gt:
            ax.plot(frames[1:], _arr(gt.get(key))[1:], "s--", ms=3, color="gray", label="ground truth")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    ax.step(frames, stab.get("n_joints", []), where="mid")
    flick = np.asarray(stab.get("flicker", []), dtype=bool)
    if flick.any():
        ax.plot(frames[flick], np.asarray(stab["n_joints"])[flick], "rx", label="topology differs")
        ax.legend(fontsize=7)
    ax.set_title("joints per frame", fontsize=9)
    ax.set_xlabel("frame", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _pick_frames(result: RigResult, count: int = 4) -> list[int]:
    K = result.n_frames
    if K <= 1:
        return [0]
    evaluated = (result.stats or {}).get("skin_frames") or list(range(K))
    evaluated = [f for f in evaluated if 0 < f < K] or list(range(1, K))
    worst = int(max(evaluated, key=lambda f: float(result.skin_instability[f].mean())))
    spaced = [evaluated[int(i)] for i in np.linspace(0, len(evaluated) - 1, count)]
    picked = sorted(set([worst] + spaced))
    while len(picked) > count:
        picked.remove(next(f for f in picked if f != worst))
    return picked


def _heatmap_figure(result: RigResult, posed: dict[int, np.ndarray], view: _MeshView, frames: list[int]) -> str:
    plt = _matplotlib()[0]
    inst_max = max(float(result.skin_instability[frames].max()), 0.05)  # floor: do not magnify noise
    err_max = max(float(result.recon_error[frames].max()), 1e-9)
    fig, axes = plt.subplots(2, len(frames), figsize=(3.2 * len(frames), 6.4), squeeze=False)
    for i, f in enumerate(frames):
        _draw_mesh(axes[0, i], view, posed[f], result.skin_instability[f], inst_max)
        axes[0, i].set_title(f"frame {f}\ninstability mean {result.skin_instability[f].mean():.3f}", fontsize=8)
        _draw_mesh(axes[1, i], view, posed[f], result.recon_error[f], err_max, cmap="viridis")
        axes[1, i].set_title(f"frame {f}\nrecon error mean {100 * result.recon_error[f].mean():.3f}%", fontsize=8)
    import matplotlib as mpl

    for row, (vmax, cmap, label) in enumerate(((inst_max, "coolwarm", "skinning instability"),
                                               (100 * err_max, "viridis", "recon error (% diagonal)"))):
        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, vmax), cmap=cmap)
        fig.colorbar(sm, ax=list(axes[row]), shrink=0.8, label=label)
    return _png(fig)


def _skeleton_figure(result: RigResult, views: list[_MeshView]) -> str:
    plt, _, LineCollection = _matplotlib()
    fig, axes = plt.subplots(1, len(views), figsize=(4.6 * len(views), 5.2), squeeze=False)
    joints, parents = np.asarray(result.joints), np.asarray(result.parents)
    for ax, view in zip(axes[0], views):
        _draw_mesh(ax, view, result.anchor_verts)
        h, u, _ = view.axes
        child = np.flatnonzero(parents >= 0)
        segs = np.stack([joints[parents[child]][:, [h, u]], joints[child][:, [h, u]]], 1)
        ax.add_collection(LineCollection(segs, colors="tab:orange", linewidths=2.0))
        ax.scatter(joints[:, h], joints[:, u], s=14, c="tab:red", zorder=3)
        root = np.flatnonzero(parents < 0)
        ax.scatter(joints[root, h], joints[root, u], s=60, marker="*", c="black", zorder=4)
        ax.set_title(f"{'XYZ'[h]}{'XYZ'[u]} view", fontsize=9)
    fig.suptitle(f"canonical skeleton on the anchor frame ({len(joints)} joints)", fontsize=10)
    return _png(fig)


def joint_drift_values(result: RigResult) -> np.ndarray | None:
    """Per-joint MCJD ``float64 [J]`` of the canonical joints from ``result.stats["joint_drift"]`` (None when
    the stats have none or their length is not the rig's joint count)."""
    values = (result.stats or {}).get("joint_drift")
    if not values or len(values) != len(result.joints):
        return None
    values = _arr(values)
    return values if np.isfinite(values).any() else None


def _drift_figure(result: RigResult, drift: np.ndarray, view: _MeshView, n_labels: int = 3) -> str:
    """The canonical skeleton over the anchor with joints coloured by their drift, and the drift per joint."""
    import matplotlib as mpl

    plt, _, LineCollection = _matplotlib()
    joints, parents = np.asarray(result.joints), np.asarray(result.parents)
    names = list(result.joint_names) if len(result.joint_names) == len(joints) else [str(j) for j in range(len(joints))]
    vmax = max(float(np.nanmax(drift)), 1e-12)
    norm = mpl.colors.Normalize(0.0, vmax)
    cmap = plt.get_cmap("coolwarm")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    _draw_mesh(ax, view, result.anchor_verts)
    h, u, _ = view.axes
    child = np.flatnonzero(parents >= 0)
    segs = np.stack([joints[parents[child]][:, [h, u]], joints[child][:, [h, u]]], 1)
    ax.add_collection(LineCollection(segs, colors="0.35", linewidths=1.5))
    order = np.argsort(np.nan_to_num(drift, nan=-1.0))  # highest drift drawn on top
    ax.scatter(joints[order, h], joints[order, u], s=36, c=cmap(norm(np.nan_to_num(drift[order]))),
               edgecolors="black", linewidths=0.4, zorder=3)
    for j in order[::-1][:n_labels]:
        ax.annotate(names[j], (joints[j, h], joints[j, u]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # keep joints outside the mesh in view
    pad = 0.05 * float(np.ptp(joints[:, [h, u]], axis=0).max() if len(joints) > 1 else 1.0)
    ax.set_xlim(min(x0, joints[:, h].min() - pad), max(x1, joints[:, h].max() + pad))
    ax.set_ylim(min(y0, joints[:, u].min() - pad), max(y1, joints[:, u].max() + pad))
    ax.set_title("canonical joints coloured by drift", fontsize=9)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, label="joint drift (MCJD)")
    ax = axes[1]
    idx = np.arange(len(drift))
    ax.bar(idx, np.nan_to_num(drift), color=cmap(norm(np.nan_to_num(drift))), edgecolor="none")
    ax.set_xlabel("joint", fontsize=8)
    ax.set_ylabel("drift (anchor-box units)", fontsize=8)
    ax.set_title("drift per joint, mean over report frames", fontsize=9)
    if len(drift) <= 40:
        ax.set_xticks(idx)
        ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Page


def _summary_rows(result: RigResult) -> list[tuple[str, str]]:
    st = result.stats or {}
    stab = st.get("stability") or {}
    rows = [
        ("sequence", _fmt(st.get("name", ""))), ("frames", _fmt(result.n_frames)),
        ("vertices / faces", f"{len(result.anchor_verts)} / {len(result.faces)}"),
        ("joints", _fmt(len(result.joints))),
        ("models", _fmt(", ".join(st["models_loaded"]) if st.get("models_loaded") else st.get("models", "n/a"))),
        ("reconstruction error mean / max", f"{100 * float(result.recon_error.mean()):.4f}% / "
                                            f"{100 * float(result.recon_error.max()):.3f}% of the box diagonal"),
    ]
    if isinstance(st.get("recon_vs_motion"), (int, float)):
        rows.append(("error vs movement", f"{100 * st['recon_vs_motion']:.1f}% of the mean movement from the first "
                                          f"frame ({100 * st['motion_mean']:.2f}% of the box diagonal)"))
    if isinstance(st.get("rest_moved_max"), (int, float)) and st["rest_moved_max"] > 0:
        rows.append(("rest shape", f"solved with the motion: at most {100 * st['rest_moved_max']:.2f}% of the box "
                                   "diagonal off the first frame"))
    for label, key in (("bones leading no vertex (posing one moves skin only through small weights)",
                        "bones_without_skin"),
                       (f"bones far from the mesh (over {100 * BONE_FAR_FROM_SKIN:.0f}% of the box diagonal from "
                        "every vertex)", "bones_far_from_skin")):
        if st.get(key):
            rows.append((label, f"{len(st[key])}: " + html.escape(", ".join(str(n) for n in st[key]))))
    if st.get("far_led_share") is not None:
        rows.append(("skin led by a far bone (not among the four nearest)", f"{100 * st['far_led_share']:.1f}% of "
                                                                             "the vertices"))
    rows.append(("skinning network, weights predicted on each frame: instability (mean, non-anchor frames)",
                 _fmt(st.get("skin_instability_mean"))))
    history = st.get("fit_rmse_history") or []
    if history:
        keys = st.get("fit_keyframes")
        on = f" on {len(keys)} keyframes" if keys else ""
        rows.append(("motion fit", f"start: {html.escape(str(st.get('fit_start', 'n/a')))}, {len(history) - 1} "
                                   f"alternations{on}, RMS error {100 * history[0]:.4f}% &rarr; "
                                   f"{100 * history[-1]:.4f}% of the box diagonal"))
    for title, block in (("paper protocol, frames 0-2", stab.get("paper_3frame")),
                         (f"report frames {stab.get('frames', [])}", stab.get("clip"))):
        if block:
            rows.append((f"{NETWORK_PER_FRAME}: PJDD / BLRD / GSD / JAD ({title})",
                         " / ".join(_fmt(block.get(k)) for k in ("pjdd", "blrd", "gsd", "jad"))))
            rows.append((f"{NETWORK_PER_FRAME}: topology flicker ({title})", _fmt(block.get("topology_flicker"))))
    if stab.get("clip"):
        rows.append((f"{NETWORK_PER_FRAME}: MCJD (report frames)", _fmt(stab["clip"].get("mcjd"))))
    drift = joint_drift_values(result)
    if drift is not None:
        worst = int(np.nanargmax(drift))
        rows.append(("joint drift min / max (joint)", f"{_fmt(float(np.nanmin(drift)))} / {_fmt(float(drift[worst]))} "
                                                      f"({html.escape(str(result.joint_names[worst]))})"))
    gt = st.get("gt") or {}
    for title, block in (("frames 0-2", gt.get("paper_3frame")), ("report frames", gt.get("clip"))):
        if block:
            rows.append((f"ground-truth motion, PJDD / BLRD / GSD / JAD / MCJD ({title})",
                         " / ".join(_fmt(block.get(k)) for k in ("pjdd", "blrd", "gsd", "jad", "mcjd"))))
    if st.get("seconds") is not None:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in (st.get("stage_seconds") or {}).items())
        rows.append(("time", f"{st['seconds']:.2f} s ({stages})"))
    return rows


def render_report(result: RigResult, title: str | None = None, max_faces: int = 20000, up_axis: int = 1) -> str:
    """The report as one HTML string (figures inline).

    Args:
        result: the rig.
        title: page title (default: the sequence name).
        max_faces: meshes with more faces are simplified for drawing.
        up_axis: the vertical axis of the pictures (1 = +Y up as in glTF; 2 for Blender's Z up).
    """
    st = result.stats or {}
    title = title or f"SPRig report: {st.get('name', 'sequence')}"
    anchor = np.asarray(result.anchor_verts, dtype=np.float64)
    drawn = drawing_mesh(anchor, result.faces, max_faces)
    front = _MeshView(anchor, drawn, up_axis=up_axis)
    side = _MeshView(anchor, drawn, side=True, up_axis=up_axis)
    frames = _pick_frames(result)
    posed = dict(zip(frames, skin_anchor(anchor, result.weights, np.asarray(result.bone_transforms)[frames])))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse}"
        "td{border-bottom:1px solid #ddd;padding:3px 10px}td:first-child{color:#555}img{max-width:100%}"
        "h2{margin-top:28px}.note{color:#666;font-size:90%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table>",
        *[f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in _summary_rows(result)],
        "</table>",
        "<h2>Per-frame error and skinning stability</h2>", _img(_curves_figure(result), "per-frame curves"),
    ]
    stab_png = _stability_figure(st)
    if stab_png:
        parts += ["<h2>Skeleton stability per frame</h2>",
                  "<p class='note'>The skeleton network run on each report frame by itself (the paper's protocol, "
                  "what SPRig's fine-tuning steadies) against its skeleton on the anchor, after rigid alignment "
                  "(paper Eq. 28-31); the rig itself keeps one skeleton on every frame. Over a whole clip these "
                  "also count the creature's own articulation; "
                  "MCJD compares with the anchor joints carried by the mesh's local motion instead. Grey: the same "
                  "metrics for the ground-truth skeleton, when the input had one.</p>", _img(stab_png, "stability")]
    if result.n_frames > 1:
        parts += ["<h2>Heatmaps</h2>",
                  "<p class='note'>Top: skinning instability (blue stable, red unstable). Bottom: reconstruction "
                  "error. Frames drawn as the rig's own deformation of the anchor.</p>",
                  _img(_heatmap_figure(result, posed, front, frames), "heatmaps")]
    drift = joint_drift_values(result)
    if drift is not None:
        parts += ["<h2>Joint drift (MCJD per joint)</h2>",
                  "<p class='note'>For each canonical (anchor) joint: the distance from the joint carried by the "
                  "mesh's local motion to the nearest joint generated on each report frame, averaged over those "
                  "frames, in anchor-box units (blue low, red high). High values mark joints the per-frame "
                  "skeletons do not keep in place.</p>", _img(_drift_figure(result, drift, front), "joint drift")]
    parts += ["<h2>Skeleton</h2>", _img(_skeleton_figure(result, [front, side]), "skeleton"), "</body></html>"]
    return "\n".join(parts)


def write_report(result: RigResult, path: str | Path, title: str | None = None, up_axis: int = 1) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(render_report(result, title, up_axis=up_axis), encoding="utf-8")
    log.info("wrote report %s", path)
    return path
