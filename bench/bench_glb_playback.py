"""`sprig rig` GLBs played back in Blender match the input frames to the reported reconstruction error.

For every sequence in ``../shared/realdata`` (or the files given): ``python -m backend.app.cli rig IN -o OUT.glb
--json OUT.json`` (the product's own path), then Blender (the ``bpy`` wheel, in a separate process) imports
the GLB with its glTF importer, plays every frame and reads the evaluated mesh. Printed per sequence:

* ``reported``: the CLI's ``recon_mean`` / ``recon_max`` (vertex distance / anchor box diagonal, in %);
* ``blender``: the same two numbers measured on Blender's playback against the input frames;
* ``|blender - rig|``: the largest vertex distance between Blender's playback and the rig's own linear
  blend skinning (what the GLB encodes), in % of the diagonal -- the export/import loss.

    python bench/bench_glb_playback.py [FILES ...] [--models auto] [--checkpoints checkpoints]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"

from backend.io import load_sequence  # noqa: E402

# Runs inside a fresh Python with bpy: import the GLB, write the evaluated vertices of every frame
# (glTF's Y-up axes) to an .npz.
PLAYBACK = textwrap.dedent("""
    import sys, numpy as np, bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=sys.argv[1])
    mesh = next(o for o in bpy.data.objects if o.type == "MESH" and o.modifiers)  # not the bone shapes
    n_frames = int(sys.argv[3])
    # The importer keys glTF time t at frame t * (scene fps), so input frame k sits at k * step.
    end = max(a.frame_range[1] for a in bpy.data.actions)
    step = end / max(n_frames - 1, 1)
    frames = []
    for k in range(n_frames):
        f = k * step
        bpy.context.scene.frame_set(int(f), subframe=f - int(f))
        ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get())
        me = ev.to_mesh()
        co = np.empty(len(me.vertices) * 3, dtype=np.float64)
        me.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
        co = co.reshape(-1, 3) @ np.array(ev.matrix_world)[:3, :3].T + np.array(ev.matrix_world)[:3, 3]
        frames.append(np.stack([co[:, 0], co[:, 2], -co[:, 1]], axis=1))  # Blender Z-up -> glTF Y-up
    np.save(sys.argv[2], np.stack(frames))
""")


def play_in_blender(glb: Path, n_frames: int, work: Path) -> np.ndarray:
    """Evaluated vertices ``[K, V, 3]`` of the GLB's mesh at frames ``0..K-1`` after Blender's import."""
    script, out = work / "playback.py", work / "playback.npy"
    script.write_text(PLAYBACK)
    proc = subprocess.run([sys.executable, str(script), str(glb), str(out), str(n_frames)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"Blender playback of {glb.name} failed:\n{proc.stderr[-2000:]}")
    return np.load(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--models", choices=["auto", "sprig", "base"], default="auto")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    args = parser.parse_args(argv)
    files = args.files or sorted(REALDATA.glob("*.npz"))
    if not files:
        raise SystemExit(f"no sequences given and none in {REALDATA}")

    print(f"{'sequence':28s} {'J':>3s} {'K':>4s} {'V':>6s} | {'reported mean/max %':>20s} | "
          f"{'blender mean/max %':>19s} | {'|blender - rig| %':>17s}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for path in files:
            glb, summary_path = work / f"{path.stem}.glb", work / f"{path.stem}.json"
            proc = subprocess.run([sys.executable, "-m", "backend.app.cli", "rig", str(path), "-o", str(glb), "--json",
                                   str(summary_path), "--models", args.models, "--checkpoints", str(args.checkpoints),
                                   "--quiet"], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{path.stem:28s} sprig rig failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            summary = json.loads(summary_path.read_text())
            seq = load_sequence(path)
            played = play_in_blender(glb, seq.n_frames, work)
            diag = float(np.linalg.norm(np.ptp(seq.verts[0], axis=0)))
            err = np.linalg.norm(played - seq.verts, axis=-1) / diag
            rig = load_sequence(glb)  # the rig's own LBS frames, read back by our glTF loader
            loss = float(np.linalg.norm(played - rig.verts, axis=-1).max()) / diag
            print(f"{path.stem:28s} {summary['joints']:3d} {seq.n_frames:4d} {seq.n_verts:6d} | "
                  f"{100 * summary['recon_mean']:9.3f} / {100 * summary['recon_max']:8.3f} | "
                  f"{100 * err.mean():8.3f} / {100 * err.max():8.3f} | {100 * loss:17.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
