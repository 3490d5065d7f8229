"""Inference timings of the base rigger on CPU.

    python bench/bench_inference.py                         # models of the default preset (random init)
    python bench/bench_inference.py --checkpoints checkpoints --which base

Prints, as median over ``--repeats`` runs:

* skeleton generation for one frame (greedy, constrained, KV cache) and the same decoding while
  recomputing the whole prefix every step (no cache), side by side with their ratio;
* skinning of one 10k-vertex frame (weights at every vertex, given a 24-joint skeleton).

An untrained model decodes a skeleton of arbitrary length; ``--joints N [M ...]`` (default 40 64) makes
decoding run to exactly N joints (EOS held back until then) so each timing has a known token count;
``--joints 0`` lets the model stop by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models import SkeletonGenerator, SkinningNetwork, load_models  # noqa: E402
from backend.models.inference import RiggerModels  # noqa: E402
from backend.normalize import anchor_normalize  # noqa: E402
from backend.sampling import points_on_frames, sample_surface, vertex_normals  # noqa: E402


def blob_mesh(subdivisions: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """An elongated, bumpy closed surface; subdivisions 5 gives 10242 vertices."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.asarray(sphere.vertices, dtype=np.float64)
    v = v * [1.0, 0.35, 0.3] + 0.05 * np.sin(6 * v[:, [1, 2, 0]])
    return v.astype(np.float32), np.asarray(sphere.faces, dtype=np.int32)


def chain_in(verts: np.ndarray, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A skeleton of ``n`` joints: a spine along the long axis with side branches."""
    lo, hi = verts.min(0), verts.max(0)
    spine = n // 2
    t = np.linspace(lo[0] * 0.9, hi[0] * 0.9, spine)
    joints = [np.array([x, 0.0, 0.0]) for x in t]
    parents = list(range(-1, spine - 1))
    for i in range(n - spine):
        attach = 1 + (i % (spine - 2))
        joints.append(joints[attach] + [0.0, 0.12 * (1 if i % 2 else -1), 0.05])
        parents.append(attach)
    return np.asarray(joints, np.float32), np.asarray(parents, np.int32)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, help="folder with the .safetensors files")
    parser.add_argument("--which", default="base", choices=["base", "sprig", "auto"])
    parser.add_argument("--preset", default="default", help="model sizes when no checkpoints are given")
    parser.add_argument("--joints", type=int, nargs="+", default=[40, 64],
                        help="force decoding to these many joints, one timing each (0: the model stops itself)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoints:
        models = load_models(args.checkpoints, which=args.which, device="cpu")
        source = f"{args.checkpoints} ({args.which})"
    else:
        from training.presets import get_preset

        P = get_preset(args.preset)
        models = RiggerModels(SkeletonGenerator(P.skeleton).eval(), SkinningNetwork(P.skinning).eval(),
                              torch.device("cpu"))
        source = f"preset {args.preset}, random init"
    skel = models.skeleton

    verts, faces = blob_mesh()
    nverts, _ = anchor_normalize(verts[None])
    nverts = nverts[0]
    samples = sample_surface(nverts, faces, 512, seed=0)
    pts, nrm = points_on_frames(nverts, faces, samples)
    pts_t, nrm_t = torch.from_numpy(pts)[None], torch.from_numpy(nrm)[None]
    gen_rows = []
    for n_joints in args.joints:
        max_joints = n_joints or 64
        min_joints = n_joints or 1  # with a joint count, EOS is held back until that many joints

        def gen(use_cache: bool):
            return lambda: skel.generate(pts_t, nrm_t, max_joints=max_joints, min_joints=min_joints,
                                         use_cache=use_cache)

        out, stats = skel.generate(pts_t, nrm_t, max_joints=max_joints, min_joints=min_joints, return_stats=True)
        n_decoded = len(out[0][1]) + stats["merged"][0]  # joints decoded before duplicate merging
        t_cache = median_time(gen(True), args.repeats)
        t_nocache = median_time(gen(False), args.repeats)
        gen_rows.append({"decoded_joints": int(n_decoded), "joints_after_merge": int(len(out[0][1])),
                         "tokens": 4 * n_decoded + 2, "generate_kv_cache_s": t_cache,
                         "generate_no_cache_s": t_nocache, "kv_cache_speedup": t_nocache / t_cache})

    joints, parents = chain_in(nverts)
    vn = vertex_normals(nverts, faces)
    t_skin = median_time(lambda: models.predict_weights(nverts, vn, pts, nrm, joints, parents), args.repeats)

    result = {"models": source, "threads": torch.get_num_threads(),
              "skeleton_params_M": sum(p.numel() for p in skel.parameters()) / 1e6,
              "skinning_params_M": sum(p.numel() for p in models.skinning.parameters()) / 1e6,
              "generation": gen_rows, "skinning_vertices": int(len(nverts)), "skinning_joints": int(len(parents)),
              "skinning_s": t_skin}
    print(f"models: {source}; torch threads: {result['threads']}")
    print(f"  skeleton generator {result['skeleton_params_M']:.2f} M params, "
          f"skinning network {result['skinning_params_M']:.2f} M params")
    for r in gen_rows:
        print(f"skeleton generation, one frame ({r['decoded_joints']} joints decoded, {r['joints_after_merge']} "
              f"after merging, {r['tokens']} tokens, 512 points):")
        print(f"  KV cache        {r['generate_kv_cache_s']:8.3f} s")
        print(f"  no cache        {r['generate_no_cache_s']:8.3f} s   (recomputes the prefix every step)")
        print(f"  speed-up        {r['kv_cache_speedup']:8.1f} x")
    print(f"skinning, one frame of {len(nverts)} vertices, {len(parents)} joints: {t_skin:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
