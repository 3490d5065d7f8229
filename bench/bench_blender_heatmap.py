"""What the stability heatmap costs in Blender: saved file size and frame-change time (bpy wheel, headless).

A tube of ``--verts`` vertices bent by a chain of ``--bones`` bones over ``--frames`` frames is rigged
with :func:`sprig_blender.builder.build_rig` from a rig result made here (linear blend skinning of the
chain; no backend needed). Its heat values are computed, not drawn at random: the reconstruction error is
the distance between that skinning (4 influences, Gaussian weights) and a smooth bend of the same tube
that blends each vertex's two nearest bones linearly along the tube, and the instability is half the L1
distance between distance-based weights to the posed bones and to the rest bones. Printed:

* the ``.blend`` size without and with the rig, the heat data's share of it (and the rig's size without
  it), the time to store it, and the Action's key count;
* the mean time of ``scene.frame_set`` (which evaluates the armature-deformed mesh) with heatmap off
  and on (colours only, the default; and with ``Write Values``), and their ratio, on a second rig of
  ``--timing-verts`` vertices;
* with ``--real``, the stored bytes per value of a real backend rig (``khronos_cesiumman_walk``, 40 frames,
  the shipped checkpoints) for comparison with the generated fields.

    python bench/bench_blender_heatmap.py [--verts 50000 --frames 200 --timing-verts 200000 --real]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def tube(n_verts: int, length: float = 4.0, radius: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A closed-side tube along +Z with about ``n_verts`` vertices: ``verts float32 [V, 3]``, quads ``[F, 4]``."""
    segments = 64
    rings = max(2, n_verts // segments)
    z = np.linspace(0.0, length, rings)
    angle = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    verts = np.stack([np.tile(radius * np.cos(angle), rings), np.tile(radius * np.sin(angle), rings),
                      np.repeat(z, segments)], axis=1)
    r, s = np.meshgrid(np.arange(rings - 1), np.arange(segments), indexing="ij")
    r, s = r.ravel(), s.ravel()
    quads = np.stack([r * segments + s, r * segments + (s + 1) % segments,
                      (r + 1) * segments + (s + 1) % segments, (r + 1) * segments + s], axis=1)
    return verts.astype(np.float32), quads


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def chain_rig(verts: np.ndarray, n_bones: int, n_frames: int, length: float = 4.0):
    """A :class:`RigResult` for ``verts [V, 3]``: a bone chain along Z bending over ``n_frames``, weights from
    the distance to each bone, and measured heat values (see the module docstring)."""
    from backend.lbs import linear_blend_skinning
    from backend.rigging.result import RigResult

    V = len(verts)
    joints = np.stack([np.zeros(n_bones), np.zeros(n_bones), np.linspace(0, length, n_bones + 1)[:-1]], axis=1)
    parents = np.arange(n_bones) - 1
    bone_len = length / n_bones

    def weights_to(centres: np.ndarray) -> np.ndarray:  # [V, J]: softmax of -distance to bone midpoints, top 4
        d2 = ((verts[:, None, :] - centres[None]) ** 2).sum(axis=2)
        w = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (0.5 * bone_len) ** 2)
        w[w < np.sort(w, axis=1)[:, -4:-3]] = 0.0
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    mids = joints + np.array([0, 0, 0.5 * bone_len])
    weights = weights_to(mids)
    transforms = np.tile(np.eye(4), (n_frames, n_bones, 1, 1))
    bent = np.empty((n_frames, V, 3), dtype=np.float32)
    posed_mids = np.empty((n_frames, n_bones, 3))
    for k in range(n_frames):
        angle = 0.6 * np.sin(2 * np.pi * k / max(n_frames - 1, 1))  # per bone
        for j in range(n_bones):
            local = np.eye(4)
            local[:3, :3] = rotation_x(angle)
            local[:3, 3] = joints[j] - local[:3, :3] @ joints[j]  # rotate about the joint
            transforms[k, j] = (transforms[k, j - 1] if j > 0 else np.eye(4)) @ local
            posed_mids[k, j] = transforms[k, j, :3, :3] @ mids[j] + transforms[k, j, :3, 3]
        # the smooth bend: each vertex follows its two nearest bones, blended linearly along Z
        t = np.clip(verts[:, 2] / bone_len - 0.5, 0, n_bones - 1)
        j0 = np.minimum(np.floor(t).astype(int), n_bones - 2)
        frac = (t - j0)[:, None]
        moved = [np.einsum("vab,vb->va", transforms[k, j, :3, :3], verts) + transforms[k, j, :3, 3]
                 for j in (j0, j0 + 1)]
        bent[k] = ((1 - frac) * moved[0] + frac * moved[1]).astype(np.float32)
    posed = linear_blend_skinning(verts, weights, transforms)
    diag = float(np.linalg.norm(np.ptp(verts, axis=0)))
    recon = (np.linalg.norm(posed - bent, axis=2) / diag).astype(np.float32)
    instability = np.stack([0.5 * np.abs(weights_to(posed_mids[k]) - weights).sum(axis=1) for k in range(n_frames)])
    return RigResult(anchor_verts=verts, faces=np.zeros((0, 3), dtype=np.int32), joints=joints.astype(np.float32),
                     parents=parents.astype(np.int32), joint_names=[f"bone_{j:02d}" for j in range(n_bones)],
                     weights=weights, bone_transforms=transforms.astype(np.float32),
                     frame_joints_count=np.full(n_frames, n_bones, dtype=np.int32), recon_error=recon,
                     skin_instability=instability.astype(np.float32), fps=24.0,
                     stats={"joints": n_bones, "frames": n_frames, "recon_mean": float(recon.mean())})


def make_source(name: str, verts: np.ndarray, quads: np.ndarray):
    import bpy

    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], quads.tolist())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def saved_size(path: Path) -> int:
    import bpy

    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=False)
    return path.stat().st_size


def frame_change_seconds(frames: list[int], repeats: int) -> float:
    """Mean seconds of one ``scene.frame_set`` over ``frames`` (after one warm-up pass)."""
    import bpy

    scene = bpy.context.scene
    for frame in frames[:3]:
        scene.frame_set(frame)
    times = []
    for _ in range(repeats):
        for frame in frames:
            start = time.perf_counter()
            scene.frame_set(frame)
            times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def file_size_case(args, work: Path) -> None:
    import bpy
    from sprig_blender import builder, heatmap

    verts, quads = tube(args.verts)
    result = chain_rig(verts, args.bones, args.frames)
    frames = list(range(1, args.frames + 1))
    source = make_source("tube", verts, quads)
    before = saved_size(work / "before.blend")
    start = time.perf_counter()
    built = builder.build_rig(bpy.context, source, result, frames)
    build_s = time.perf_counter() - start
    with_rig = saved_size(work / "rigged.blend")
    mesh = built.mesh_object.data
    heat_bytes = sum(len(mesh[k]) for k in heatmap.DATA_KEYS.values() if k in mesh)
    start = time.perf_counter()
    heatmap.store_heat_data(mesh, frames, result.recon_error, result.skin_instability)
    store_s = time.perf_counter() - start
    values = len(verts) * args.frames
    print(f"rig of {len(verts)} vertices x {args.frames} frames, {args.bones} bones (heat values of both modes on "
          "every frame)")
    print(f"  .blend without the rig {before / 1e6:.2f} MB, with it {with_rig / 1e6:.2f} MB: "
          f"+{(with_rig - before) / 1e6:.2f} MB (limit 10 MB)")
    print(f"  heat data {heat_bytes / 1e6:.2f} MB = {heat_bytes / (2 * values):.3f} bytes per value "
          f"(float64 lists: {2 * 8 * values / 1e6:.0f} MB); stored in {store_s:.2f} s; whole build {build_s:.1f} s")
    curves = list(built.action.layers[0].strips[0].channelbag(built.action.slots[0]).fcurves)
    keys = sum(len(c.keyframe_points) for c in curves)
    print(f"  Action: {keys} keys on {len(curves)} F-curves ({keys / (len(curves) * args.frames):.0%} of one key per "
          "frame per curve; the others are reproduced by linear interpolation within 1e-6)")
    decoded = heatmap.heat_data(mesh, "RECON").values
    for key in list(mesh.keys()):
        if key.startswith("sprig_heat"):
            del mesh[key]
    without_heat = saved_size(work / "no_heat.blend")
    print(f"  the same rig without its heat data: +{(without_heat - before) / 1e6:.2f} MB (rigged mesh copy, "
          f"{len(verts)} x 4 vertex-group weights, {args.bones} bones x {args.frames} keys)")
    scale = float(result.recon_error.max())
    print(f"  stored recon values within {np.abs(decoded - result.recon_error).max() / scale * 100:.2f}% of the "
          "largest value")


def timing_case(args) -> None:
    import bpy
    from sprig_blender import builder, heatmap

    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("sprig_blender", default_set=True)
    verts, quads = tube(args.timing_verts)
    result = chain_rig(verts, args.bones, args.timing_frames)
    frames = list(range(1, args.timing_frames + 1))
    source = make_source("tube", verts, quads)
    builder.build_rig(bpy.context, source, result, frames)
    source.hide_set(True)
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = frames[0], frames[-1]
    settings = bpy.context.window_manager.sprig_heatmap
    off = frame_change_seconds(frames, args.repeats)
    rows = [("off", off)]
    for mode, write_values in (("RECON", False), ("INSTABILITY", False), ("RECON", True), ("INSTABILITY", True)):
        settings.mode, settings.write_values = mode, write_values
        settings.enabled = True
        name = mode.lower() + (" + values" if write_values else "")
        rows.append((name, frame_change_seconds(frames, args.repeats)))
        settings.enabled = False
    print(f"frame change on a {len(verts)}-vertex rig ({args.timing_frames} frames, mean of "
          f"{args.repeats * len(frames)} frame_set calls):")
    for name, seconds in rows:
        print(f"  heatmap {name:<21} {1000 * seconds:7.1f} ms  ({seconds / off:.2f}x off)")
    print("  (+ values: 'Write Values' on, the raw value attribute written on every frame too; off by default)")
    heatmap.clear_cache()


def real_case() -> None:
    """Bytes per stored value of a real backend rig's heat data."""
    from backend.rigging.pipeline import RigConfig, rig_sequence
    from backend.sequence import MeshSequence
    from sprig_blender import convert

    path = ROOT.parent / "shared" / "realdata" / "khronos_cesiumman_walk.npz"
    with np.load(path) as data:
        seq = MeshSequence(data["verts"][:40].astype(np.float32), data["faces"], fps=24.0, name="cesiumman")
    result = rig_sequence(seq, RigConfig(device="cpu", skin_frames=0))
    for name, values in (("recon", result.recon_error), ("instability", result.skin_instability)):
        payload, _ = convert.encode_heat(values)
        print(f"  real rig (cesiumman_walk, 40 frames, {values.shape[1]} vertices, weights predicted on every "
              f"frame): {name} {len(payload) / values.size:.3f} bytes per value")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verts", type=int, default=50_000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--bones", type=int, default=16)
    parser.add_argument("--timing-verts", type=int, default=200_000)
    parser.add_argument("--timing-frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="also rig a real clip with the shipped checkpoints")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import bpy  # noqa: I001 - bpy first: it makes Blender's own modules (addon_utils) importable
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("sprig_blender", default_set=True)
    with tempfile.TemporaryDirectory() as tmp:
        file_size_case(args, Path(tmp))
    timing_case(args)
    if args.real:
        real_case()


if __name__ == "__main__":
    main()
