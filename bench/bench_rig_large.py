"""Production-size meshes: ``rig_sequence`` end to end (networks included) from 9k to 600k vertices, with and
without the proxy (``RigConfig.proxy``), and side by side with Dem Bones; one table of vertices x frames ->
seconds, peak resident memory and the error on the full mesh.

Data: the real CesiumMan walk (``../shared/realdata``) with its artist rig, every triangle split into ``n x n``
(each edge cut in ``n``; positions and the artist's weights interpolated barycentrically, so the clip is still
exactly the artist's LBS), posed at K frames (:func:`bench_rig_scaling.cesium_transforms`: the 48-frame walk,
resampled beyond 48 frames), frame slices posed one after the other into one float32 array (no float64
``[K, V, 3]`` intermediate). Splits 2, 4, 6, 9, 16 give ~9.3k, 37k, 84k, 190k, 598k vertices.

Each row runs in a fresh process: ``seconds`` is the ``rig_sequence`` call alone (trained checkpoints loaded
beforehand, as the add-on's server keeps them); ``peak RSS`` is the process's peak resident memory
(``ru_maxrss``), which includes the generated input clip itself (~``K * V * 12`` bytes); ``error`` is the mean
full-mesh reconstruction error in % of the anchor's bounding-box diagonal. Dem Bones (py-dem-bones, its
defaults, ``transAffine = 0``) gets the same clip, its anchor as rest pose and the pipeline's bone count. Beside
it run the pipeline as shipped (articulated: bones turn about their joints) and the same pipeline with free rigid
bones (``RigConfig.articulated=False``, ``sprig rig --no-articulated``), which solves Dem Bones' own problem (every
bone a free rigid motion): the like-for-like comparison.

    python bench/bench_rig_large.py [--splits 2 4 6 9 16] [--frames 120] [--compare 2 4] [--dembones 4]
                                    [--dembones-frames 60] [--cli 9 16] [--bone-counts 4] [--checkpoints checkpoints]
                                    [--json out.json]

``--cli SPLITS`` adds, per size, a row for what a user of ``sprig rig`` waits for: the clip written as an
uncompressed ``.npz``, then ``sprig rig clip.npz -o rig.glb --report rig.html --json rig.json`` in a subprocess
(loading, the checkpoints, the rig, the three files written): its wall time and peak resident memory.

``--bone-counts SPLITS`` adds, at those sizes (``--dembones-frames``), what the Dem Bones comparison depends on:
the skeleton from motion at its ``coarse`` and ``fine`` details, and CesiumMan's own skeleton (the clip is exactly
its LBS) with the skinning network's weights as the fit's start, then with the artist's own weights; each
articulated and with free bones, and Dem Bones at each bone count (the artist's skeleton once).

``--responsiveness SPLITS`` instead rigs that one size (120 frames) once with a progress callback and prints the
longest silence between two progress calls per stage, then once per stage cancels it (``should_cancel`` turns
True a random 0-0.5 s after the stage's first progress call) and prints the seconds until ``RigCancelled``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_rig_scaling import CESIUM, cesium_transforms  # noqa: E402


def lattice_subdivide(faces: np.ndarray, n_verts: int, n: int) -> tuple[list, np.ndarray, int]:
    """Split every triangle into ``n * n`` (each edge cut in ``n``; shared edge points shared).

    Returns ``(points, faces, n_new)``: ``points`` lists ``(ids int [F], (ca, cb, cc))``: the new vertices
    ``ids`` sit at ``(ca * a + cb * b + cc * c) / n`` of their face's corners ``(a, b, c)`` (corners and edge
    points appear once per face that holds them, always with the same value); ``faces int32 [F * n * n, 3]``
    keep the input's orientation; ``n_new`` new vertices in all (the input's first, in their order).
    """
    f = np.asarray(faces, dtype=np.int64)
    F = len(f)
    pairs = np.concatenate([f[:, [0, 1]], f[:, [0, 2]], f[:, [1, 2]]])
    lo, hi = pairs.min(1), pairs.max(1)
    edges, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(3, F)
    forward = (pairs[:, 0] == lo).reshape(3, F)  # the edge is walked from its lower index
    E = len(edges)
    inner = (n - 1) * (n - 2) // 2
    ids = np.zeros((n + 1, n + 1, F), dtype=np.int64)

    def on_edge(which: int, steps: int) -> np.ndarray:
        t = np.where(forward[which], steps, n - steps)  # steps from the edge's lower end
        return n_verts + inverse[which] * (n - 1) + (t - 1)

    points = []
    slot = 0
    for i in range(n + 1):
        for j in range(n + 1 - i):
            k = n - i - j
            if i == n or j == n or k == n:
                ids[i, j] = f[:, 0] if k == n else (f[:, 1] if i == n else f[:, 2])
            elif j == 0:
                ids[i, j] = on_edge(0, i)  # a -> b
            elif i == 0:
                ids[i, j] = on_edge(1, j)  # a -> c
            elif k == 0:
                ids[i, j] = on_edge(2, j)  # b -> c
            else:
                ids[i, j] = n_verts + E * (n - 1) + np.arange(F) * inner + slot
                slot += 1
            points.append((ids[i, j], (k, i, j)))
    tris = []
    for i in range(n):
        for j in range(n - i):
            tris.append(np.stack([ids[i, j], ids[i + 1, j], ids[i, j + 1]], 1))
            if i + j < n - 1:
                tris.append(np.stack([ids[i + 1, j], ids[i + 1, j + 1], ids[i, j + 1]], 1))
    return points, np.concatenate(tris).astype(np.int32), n_verts + E * (n - 1) + F * inner


def interpolate(points: list, faces: np.ndarray, values: np.ndarray, n: int, n_new: int) -> np.ndarray:
    """``values [V, d]`` at the corners -> ``[n_new, d]`` at the lattice points of :func:`lattice_subdivide`."""
    out = np.empty((n_new, values.shape[1]), dtype=np.float64)
    a, b, c = (values[faces[:, i]] for i in range(3))
    for ids, (ca, cb, cc) in points:
        out[ids] = (ca * a + cb * b + cc * c) / n
    return out


def make_sequence(n_frames: int, splits: int):
    """CesiumMan with every triangle split ``splits x splits``, posed at ``n_frames`` frames (float32)."""
    from backend.lbs import linear_blend_skinning
    from backend.sequence import MeshSequence

    d = np.load(CESIUM)
    rest = d["rest_verts"].astype(np.float64)
    weights = d["weights"].astype(np.float64)
    faces = d["faces"]
    if splits > 1:
        points, new_faces, n_new = lattice_subdivide(faces, len(rest), splits)
        rest = interpolate(points, faces, rest, splits, n_new)
        weights = interpolate(points, faces, weights, splits, n_new)
        faces = new_faces
    T = cesium_transforms(n_frames)
    verts = np.empty((n_frames, len(rest), 3), dtype=np.float32)
    step = max(1, (1 << 21) // len(rest))
    for s in range(0, n_frames, step):
        verts[s:s + step] = linear_blend_skinning(rest, weights, T[s:s + step])
    return MeshSequence(verts, faces, fps=30.0, name=f"cesium_x{splits}_K{n_frames}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def artist_skeleton(n_frames: int, splits: int, with_weights: bool):
    """CesiumMan's own skeleton on the clip's first frame (the anchor), as a ``RigSkeleton`` for ``rig_sequence``;
    ``with_weights``: the artist's weights (interpolated like the clip's) as the motion fit's start."""
    from backend.rigging.rig_skeleton import RigSkeleton

    d = np.load(CESIUM)
    first = cesium_transforms(n_frames)[0]  # [J, 4, 4]
    rest_joints = d["rest_joints"].astype(np.float64)
    joints = np.einsum("jab,jb->ja", first[:, :3, :3], rest_joints) + first[:, :3, 3]
    weights = None
    if with_weights:
        weights = d["weights"].astype(np.float64)
        if splits > 1:
            points, _, n_new = lattice_subdivide(d["faces"], len(d["rest_verts"]), splits)
            weights = interpolate(points, d["faces"], weights, splits, n_new)
    return RigSkeleton(joints=joints, parents=d["parents"].astype(np.int32), init_weights=weights)


def run_rig(n_frames: int, splits: int, proxy: str, checkpoints: str, articulated: bool = True,
            detail: str = "auto", artist: str = "") -> dict:
    """One ``rig_sequence`` row. ``detail``: ``RigConfig.detail``; ``artist``: ``""`` (the skeleton from motion),
    ``"skeleton"`` (the artist's skeleton, the skinning network's weights as the fit's start) or ``"weights"``
    (the artist's skeleton and weights)."""
    from backend.rigging.pipeline import RigConfig, get_models, rig_sequence

    seq = make_sequence(n_frames, splits)
    cfg = RigConfig(checkpoint_dir=checkpoints, device="cpu", proxy=proxy, articulated=articulated, detail=detail)
    skeleton = artist_skeleton(n_frames, splits, artist == "weights") if artist else None
    get_models(cfg)  # loaded once beforehand, as the server keeps them
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = rig_sequence(seq, cfg, skeleton=skeleton)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    st = result.stats
    method = f"ours proxy {proxy}" if articulated else f"ours free bones {proxy}"
    if artist:
        method = f"{method}, artist's {'skeleton + weights' if artist == 'weights' else 'skeleton'}"
    elif detail != "auto":
        method = f"{method}, detail {detail}"
    return dict(method=method, frames=n_frames, verts=seq.n_verts, joints=len(result.joints), wall=wall,
                cpu=cpu, error_pct=100 * st["recon_mean"], proxy_vertices=st["proxy_vertices"],
                stages=st["stage_seconds"], maxrss_mb=peak_rss_mb())


def run_cli(n_frames: int, splits: int, checkpoints: str) -> dict:
    """``sprig rig`` end to end on the clip saved as an ``.npz`` (see the module docstring)."""
    import os
    import tempfile

    from backend.io import save_npz

    seq = make_sequence(n_frames, splits)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / f"{seq.name}.npz"
        save_npz(seq, clip)
        del seq
        env = dict(os.environ, SPRIG_MAX_VERTEX_FRAMES=str(10 ** 9))
        cmd = [sys.executable, "-m", "backend.app.cli", "rig", str(clip), "-o", str(Path(tmp) / "rig.glb"),
               "--report", str(Path(tmp) / "rig.html"), "--json", str(Path(tmp) / "rig.json"),
               "--checkpoints", checkpoints, "--quiet"]
        wall0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - wall0
        if proc.returncode != 0:
            raise RuntimeError(f"sprig rig failed: {proc.stderr[-2000:]}")
        summary = json.loads((Path(tmp) / "rig.json").read_text())
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dict(method="sprig rig end to end", frames=n_frames, verts=summary["vertices"], joints=summary["joints"],
                wall=wall, cpu=child.ru_utime + child.ru_stime, error_pct=100 * summary["recon_mean"],
                proxy_vertices=summary["stats"].get("proxy_vertices"), stages={}, maxrss_mb=child.ru_maxrss / 1024)


def run_dembones_row(n_frames: int, splits: int, n_bones: int) -> dict:
    from bench_fit_vs_dembones import run_dembones

    seq = make_sequence(n_frames, splits)
    clip = dict(verts=seq.verts.astype(np.float64), faces=seq.faces, parents=np.full(n_bones, -1))
    r = run_dembones(clip, iterations=30, n_bones=n_bones)
    return dict(method="dembones", frames=n_frames, verts=seq.n_verts, joints=r["bones"], wall=r["wall"],
                cpu=r["cpu"], error_pct=r["mean"], proxy_vertices=None, stages={}, maxrss_mb=peak_rss_mb())


RESPONSIVE_STAGES = ("normalize", "sample", "skeleton", "skinning", "fit", "weights", "heatmap", "report")


def responsiveness(splits: int, n_frames: int, checkpoints: str, seed: int = 0) -> None:
    """Longest silence between progress calls per stage, then the cancel latency in each stage (printed)."""
    import random

    from backend.rigging.pipeline import RigCancelled, RigConfig, get_models, rig_sequence

    seq = make_sequence(n_frames, splits)
    cfg = RigConfig(checkpoint_dir=checkpoints, device="cpu")
    get_models(cfg)
    calls: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    rig_sequence(seq, cfg, progress=lambda stage, f: calls.append((time.perf_counter(), stage)))
    wall = time.perf_counter() - t0
    silence: dict[str, float] = {}
    previous = t0
    for t, stage in calls:
        silence[stage] = max(silence.get(stage, 0.0), t - previous)
        previous = t
    print(f"{seq.n_verts} vertices x {n_frames} frames: {wall:.1f} s, {len(calls)} progress calls; longest silence "
          "before a call, per stage (s): " + ", ".join(f"{s} {g:.2f}" for s, g in silence.items()), flush=True)
    rng = random.Random(seed)
    for stage in RESPONSIVE_STAGES:
        state: dict[str, float] = {}

        def progress(name: str, fraction: float, stage=stage, state=state) -> None:
            if name == stage and "at" not in state:
                state["at"] = time.perf_counter() + rng.uniform(0.0, 0.5)

        def should_cancel(state=state) -> bool:
            return "at" in state and time.perf_counter() >= state["at"]

        try:
            rig_sequence(seq, cfg, progress=progress, should_cancel=should_cancel)
            print(f"  cancel in {stage:9s}: the rig finished first", flush=True)
        except RigCancelled:
            print(f"  cancel in {stage:9s}: {time.perf_counter() - state['at']:.2f} s to RigCancelled", flush=True)


def child(spec: str, checkpoints: str) -> dict:
    kind, k, n, extra, detail, artist = (spec.split(",") + ["auto", ""])[:6]
    if kind in ("rig", "free"):
        return run_rig(int(k), int(n), extra, checkpoints, articulated=kind == "rig", detail=detail, artist=artist)
    if kind == "cli":
        return run_cli(int(k), int(n), checkpoints)
    return run_dembones_row(int(k), int(n), int(extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, nargs="*", default=[2, 4, 6, 9, 16],
                        help="edge splits per size (2: 9.3k, 4: 37k, 6: 84k, 9: 190k, 16: 598k vertices)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--compare", type=int, nargs="*", default=[2, 4],
                        help="sizes rigged with the proxy forced on and without it, side by side")
    parser.add_argument("--dembones", type=int, nargs="*", default=[4], help="sizes also solved by Dem Bones")
    parser.add_argument("--dembones-frames", type=int, default=60)
    parser.add_argument("--cli", type=int, nargs="*", default=[9, 16],
                        help="sizes also run end to end through sprig rig (loading and writing included)")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--responsiveness", type=int, default=None, metavar="SPLITS",
                        help="measure progress silences and cancel latency at this size instead")
    parser.add_argument("--bone-counts", type=int, nargs="*", default=[], metavar="SPLITS",
                        help="at these sizes (Dem Bones' frame count) also the skeleton's coarse and fine details and "
                             "CesiumMan's own skeleton (with the network's weights, then its own as the start), "
                             "articulated and free, each beside Dem Bones at the same bone count")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.responsiveness is not None:
        responsiveness(args.responsiveness, args.frames, args.checkpoints)
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.checkpoints)))
        return 0
    from tqdm import tqdm

    jobs = []
    for n in args.splits:  # compared sizes: the proxy forced on, then off; the others as the default (auto) picks
        jobs += [("rig", args.frames, n, "on"), ("rig", args.frames, n, "off")] if n in args.compare else [
            ("rig", args.frames, n, "auto")]
    jobs += [("cli", args.frames, n, None) for n in args.cli]
    for n in args.dembones:
        jobs.append(("rig", args.dembones_frames, n, "auto"))
        jobs.append(("free", args.dembones_frames, n, "auto"))
        jobs.append(("dembones", args.dembones_frames, n, None))  # bone count: the articulated row's
    sweep = [("detail", "coarse"), ("detail", "fine"), ("artist", "skeleton"), ("artist", "weights")]
    for n in args.bone_counts:
        for what, value in sweep:
            detail, artist = (value, "") if what == "detail" else ("auto", value)
            jobs.append(("rig", args.dembones_frames, n, "auto", detail, artist))
            jobs.append(("free", args.dembones_frames, n, "auto", detail, artist))
            if value != "weights":  # the same bone count as the row before
                jobs.append(("dembones", args.dembones_frames, n, "like-last"))
    hdr = (f"{'V':>7s} {'K':>4s} {'J':>3s} {'method':28s} | {'seconds':>8s} {'cpu s':>8s} | {'peak RSS GB':>11s} | "
           f"{'error %':>8s} | {'s / M vert-frames':>17s}  stages (s)")
    rows = []
    print(hdr, flush=True)
    print("-" * len(hdr), flush=True)
    for kind, k, n, extra, *variant in tqdm(jobs, desc="rows", file=sys.stderr):
        if kind == "dembones":
            like = [r for r in rows if r["frames"] == k and (
                r["method"] == "ours proxy auto" if extra is None else r["method"].startswith("ours"))]
            extra = like[-1]["joints"] if like else 24
        spec = ",".join(str(v) for v in (kind, k, n, extra, *variant))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--checkpoints", args.checkpoints]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{kind} K={k} splits={n} {extra}: over {args.timeout:.0f} s, stopped", flush=True)
            continue
        if proc.returncode != 0:
            print(f"{kind} K={k} splits={n} {extra} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        method = r["method"] if r["proxy_vertices"] is None else f"{r['method']} ({r['proxy_vertices']})"
        stages = " ".join(f"{s}:{t:.1f}" for s, t in r["stages"].items() if t >= 0.05)
        print(f"{r['verts']:7d} {r['frames']:4d} {r['joints']:3d} {method[:28]:28s} | {r['wall']:8.1f} "
              f"{r['cpu']:8.1f} | {r['maxrss_mb'] / 1024:11.2f} | {r['error_pct']:8.4f} | "
              f"{r['wall'] / (r['verts'] * r['frames'] / 1e6):17.3f}  {stages}", flush=True)
    # growth: seconds against vertex-frames, proxy runs above 20k vertices
    big = [r for r in rows if r["method"].startswith("ours proxy") and "," not in r["method"]
           and r["proxy_vertices"] is not None
           and r["verts"] > 20000 and r["frames"] == args.frames]
    if len(big) >= 2:
        vk = np.array([r["verts"] * r["frames"] / 1e6 for r in big])
        wall = np.array([r["wall"] for r in big])
        slope, intercept = np.polyfit(vk, wall, 1)
        fitted = slope * vk + intercept
        r2 = 1 - np.sum((wall - fitted) ** 2) / max(np.sum((wall - wall.mean()) ** 2), 1e-12)
        print(f"\ngrowth above 20k vertices ({len(big)} sizes, {args.frames} frames): seconds = {intercept:.1f} + "
              f"{slope:.3f} x (M vertex-frames), R^2 {r2:.3f}")
    for off in (r for r in rows if r["method"] == "ours proxy off"):
        on = next((r for r in rows if r["method"] == "ours proxy on" and r["verts"] == off["verts"]
                   and r["frames"] == off["frames"]), None)
        if on is not None:
            print(f"{on['verts']} vertices x {on['frames']} frames: with the proxy ({on['proxy_vertices']} vertices) "
                  f"error {on['error_pct'] / off['error_pct']:.2f}x and time {on['wall'] / off['wall']:.2f}x of "
                  "the pipeline without it")
    for r in (r for r in rows if r["method"] == "dembones"):
        for ours in rows:
            if ours["method"].startswith(("ours proxy auto", "ours free bones auto")) and ours["verts"] == r["verts"] \
                    and ours["frames"] == r["frames"] and ours["joints"] == r["joints"]:
                label = ours["method"].replace("ours proxy auto", "articulated").replace("ours free bones auto",
                                                                                         "free bones")
                if label == "articulated":
                    label = "articulated (shipped)"
                print(f"{r['verts']} vertices x {r['frames']} frames: ours, {label}, {ours['joints']} bones / Dem "
                      f"Bones, {r['joints']} bones: error {ours['error_pct'] / r['error_pct']:.2f}x, time "
                      f"{ours['wall'] / r['wall']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
