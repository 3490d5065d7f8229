"""End-to-end time and peak memory of ``rig_sequence`` for K frames x V vertices.

Data: the real CesiumMan walk (``../shared/realdata``) with its artist rig, subdivided 0/1/2 times
(midpoint subdivision: ~2.3k / 9.3k / 37k vertices; weights averaged like the positions) and posed by
linear blend skinning at K frames (K <= 48: the first K frames; more: the 48-frame cycle resampled as a player
interpolates the rig, see :func:`cesium_transforms`).

Models: trained checkpoints when ``--checkpoints DIR`` holds them; otherwise the real skeleton generator
and skinning network at their default sizes with seeded random (untrained) parameters, which costs the
same compute per token / query but emits a skeleton of arbitrary size (reported per run); ``--models
none`` skips the networks entirely and times only the non-network stages (the ground-truth skeleton and
weights stand in for the predictions). Each configuration runs in a fresh process so that its peak
resident memory (``ru_maxrss``) is its own; ``tracemalloc`` peak (numpy/Python allocations) is shown too.

    python bench/bench_rig_scaling.py [--frames 15 30 60 120] [--subdiv 0 1 2] [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CESIUM = ROOT.parent / "shared" / "realdata" / "khronos_cesiumman_walk.npz"


def subdivide(faces: np.ndarray, n_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision: ``(edges int [E, 2], new faces [4F, 3])``; new vertex ``V + e`` is the
    midpoint of edge ``e``."""
    f = np.asarray(faces, dtype=np.int64)
    pairs = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    edges, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    F = len(f)
    m01, m12, m20 = (n_verts + inverse[i * F:(i + 1) * F] for i in range(3))
    new = np.concatenate([np.stack([f[:, 0], m01, m20], 1), np.stack([f[:, 1], m12, m01], 1),
                          np.stack([f[:, 2], m20, m12], 1), np.stack([m01, m12, m20], 1)])
    return edges, new.astype(np.int32)


def make_sequence(n_frames: int, n_subdiv: int):
    """CesiumMan at the requested size. Returns a MeshSequence with the GT rig in ``extras``."""
    from backend.lbs import linear_blend_skinning
    from backend.sequence import MeshSequence

    d = np.load(CESIUM)
    rest = d["rest_verts"].astype(np.float64)
    weights = d["weights"].astype(np.float64)
    faces = d["faces"]
    for _ in range(n_subdiv):
        edges, faces = subdivide(faces, len(rest))
        rest = np.concatenate([rest, rest[edges].mean(1)])
        weights = np.concatenate([weights, weights[edges].mean(1)])
    T = cesium_transforms(n_frames)
    verts = linear_blend_skinning(rest, weights, T)
    joints = np.einsum("kjab,jb->kja", T[..., :3, :3], d["rest_joints"].astype(np.float64)) + T[..., :3, 3]
    return MeshSequence(verts, faces, fps=30.0, name=f"cesium_K{n_frames}_V{len(rest)}",
                        extras={"joints": joints.astype(np.float32), "parents": d["parents"], "weights": weights})


def cesium_transforms(n_frames: int) -> np.ndarray:
    """CesiumMan's bone transforms ``float64 [K, J, 4, 4]`` at ``n_frames`` frames (K <= 48: the first K frames of
    its walk; more: the 48-frame cycle resampled as an animation player interpolates a rig's keys).

    Resampling interpolates each bone's motion relative to its parent (the root's relative to the world): the
    rotation about the bone's rest joint by quaternion nlerp, what remains (the joint's own offset, zero where the
    artist's rig is a pure rotation there) linearly; the bones are then composed down the tree. A joint therefore
    stays where its parent carries it, as on the artist's keyframes. (Blending every bone's global matrix on its
    own instead, until 2026-12-07, pulled parent and child apart between keys: the mean gap at the joints grew by
    half, 0.013 -> 0.020 % of the diagonal, motion no rig can play back.)
    """
    from backend.rigging.pose import matrix_to_quaternion, quaternion_to_matrix
    from backend.skeleton import topological_order

    d = np.load(CESIUM)
    S = np.zeros(d["skin_mats"].shape[:2] + (4, 4))  # [48, J, 4, 4]
    S[..., :3, :] = d["skin_mats"]
    S[..., 3, 3] = 1.0
    K0, J = S.shape[:2]
    if n_frames <= K0:
        return S[:n_frames].copy()
    parents = d["parents"].astype(np.int64)
    pivot = d["rest_joints"].astype(np.float64)  # [J, 3]
    pivot[parents < 0] = 0.0  # the root moves relative to the world origin
    local = S.copy()  # each bone relative to its parent
    child = parents >= 0
    local[:, child] = np.linalg.inv(S[:, parents[child]]) @ S[:, child]
    # local x = R (x - c) + c + offset: offset = R c + t - c
    offset = np.einsum("kjab,jb->kja", local[..., :3, :3], pivot) + local[..., :3, 3] - pivot
    t = np.arange(n_frames) * K0 / n_frames
    k0 = np.floor(t).astype(int)
    k1 = (k0 + 1) % K0
    a = (t - k0)[:, None, None]
    q0, q1 = matrix_to_quaternion(local[k0, :, :3, :3]), matrix_to_quaternion(local[k1, :, :3, :3])
    q1 = np.where(np.sum(q0 * q1, -1, keepdims=True) < 0, -q1, q1)
    rot = quaternion_to_matrix((1 - a) * q0 + a * q1)  # [K, J, 3, 3]
    off = (1 - a) * offset[k0] + a * offset[k1]
    resampled = np.zeros((n_frames, J, 4, 4))
    resampled[..., :3, :3] = rot
    resampled[..., :3, 3] = pivot + off - np.einsum("kjab,jb->kja", rot, pivot)
    resampled[..., 3, 3] = 1.0
    T = np.empty_like(resampled)
    for j in topological_order(parents):
        T[:, j] = resampled[:, j] if parents[j] < 0 else T[:, parents[j]] @ resampled[:, j]
    return T


class GroundTruthRig:
    """Stands in for the networks with ``--models none``: returns the input's ground-truth anchor skeleton
    and weights (anchor-normalized), so only the non-network stages are timed."""

    def __init__(self, seq):
        from backend.normalize import AnchorBox

        box = AnchorBox.fit(seq.verts[0])
        self.joints = box.apply(seq.extras["joints"][0])
        self.parents = np.asarray(seq.extras["parents"], dtype=np.int32)
        self.weights = np.asarray(seq.extras["weights"], dtype=np.float32)
        self.device = "cpu"

    def generate_skeletons(self, points, normals, max_joints: int = 64, stop_after_repeats: int = 0,
                           should_cancel=None):
        return [(self.joints, self.parents) for _ in range(len(points))]

    def predict_weights(self, query_pts, query_normals, shape_pts, shape_normals, joints, parents):
        return self.weights


def untrained_models(seed: int = 0):
    import torch

    from backend.models.inference import RiggerModels
    from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
    from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig

    torch.manual_seed(seed)
    return RiggerModels(skeleton=SkeletonGenerator(SkeletonGeneratorConfig()),
                        skinning=SkinningNetwork(SkinningNetworkConfig()), device=torch.device("cpu"))


def run_one(n_frames: int, n_subdiv: int, models_kind: str, checkpoints: str | None) -> dict:
    """One configuration (called in a child process). Returns the numbers as a dict."""
    from backend.rigging.pipeline import RigConfig, get_models, rig_sequence

    seq = make_sequence(n_frames, n_subdiv)
    cfg = RigConfig(checkpoint_dir=checkpoints or "checkpoints", device="cpu", models="auto")
    if models_kind == "checkpoints":
        models = get_models(cfg)
    elif models_kind == "untrained":
        models = untrained_models()
    else:
        models = GroundTruthRig(seq)
    tracemalloc.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = rig_sequence(seq, cfg, models=models)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    st = result.stats
    return dict(frames=n_frames, verts=seq.n_verts, joints=len(result.joints), models=models_kind, wall=wall, cpu=cpu,
                stages=st["stage_seconds"], fit_seconds=st["fit_seconds"], recon_mean_pct=100 * st["recon_mean"],
                traced_peak_mb=traced_peak / 2**20,
                maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[15, 30, 60, 120])
    parser.add_argument("--subdiv", type=int, nargs="+", default=[0, 1, 2], help="0: 2.3k, 1: 9.3k, 2: 37k vertices")
    parser.add_argument("--models", choices=["auto", "checkpoints", "untrained", "none"], default="auto")
    parser.add_argument("--checkpoints", default=None, help="folder with trained checkpoints")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        k, s, kind = args.child.split(",")
        print(json.dumps(run_one(int(k), int(s), kind, args.checkpoints)))
        return 0
    kind = args.models
    if kind == "auto":
        has = args.checkpoints is not None and any(Path(args.checkpoints).glob("*.safetensors"))
        kind = "checkpoints" if has else "untrained"
    notes = {"checkpoints": f"trained checkpoints from {args.checkpoints}",
             "untrained": "NO trained checkpoints: the real networks at default size with random (untrained) "
                          "parameters; network cost is representative, the skeleton size is not",
             "none": "networks skipped: the ground-truth skeleton and weights stand in for the predictions; "
                     "the skeleton/skinning stages time only the surrounding pipeline"}
    print(f"models: {notes[kind]}")
    print("CPU run (device=cpu); auto frame counts: 4 skeleton frames, 4 skinning frames per clip")
    hdr = (f"{'K':>4s} {'V':>6s} {'J':>3s} | {'wall s':>7s} {'cpu s':>7s} | {'skeleton':>8s} {'skinning':>8s} "
           f"{'fit':>6s} {'heatmap':>7s} {'report':>6s} | {'recon %':>8s} | {'maxrss MB':>9s} {'traced MB':>9s}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for s in args.subdiv:
        for k in args.frames:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{k},{s},{kind}"]
            if args.checkpoints:
                cmd += ["--checkpoints", args.checkpoints]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"K={k} subdiv={s} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            st = r["stages"]
            print(f"{r['frames']:4d} {r['verts']:6d} {r['joints']:3d} | {r['wall']:7.2f} {r['cpu']:7.2f} | "
                  f"{st.get('skeleton', 0):8.2f} {st.get('skinning', 0):8.2f} {st.get('fit', 0):6.2f} "
                  f"{st.get('heatmap', 0):7.2f} {st.get('report', 0):6.2f} | {r['recon_mean_pct']:8.4f} | "
                  f"{r['maxrss_mb']:9.0f} {r['traced_peak_mb']:9.0f}")
            sys.stdout.flush()
            rows.append(r)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
