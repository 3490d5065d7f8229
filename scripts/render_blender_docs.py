"""Render the documentation figures of the Blender extension headless with Workbench (bpy wheel).

    python scripts/render_blender_docs.py                       # -> docs/blender_heatmap.png, docs/blender_armature.png
    python scripts/render_blender_docs.py --clip robotexpressive_dance --frames 24 --frame 12 --rig backend

A realdata clip is loaded into Blender as a shape-key animated mesh, rigged through the extension
(``--rig backend``: the Rig Sequence operator with the subprocess backend and the checkpoints in
``--checkpoints``; ``--rig artist``: the clip's own artist rig converted to a rig result, for when no
trained checkpoints exist; ``auto`` picks ``backend`` when ``backend.rigging.pipeline`` imports and the checkpoint
folder holds the SPRig or base models), and two frames are rendered:

* the stability heatmap on the rigged mesh (colour attribute, Solid/Workbench, attribute colours), with
  a colour bar added to the image afterwards (the viewport legend is an overlay that renders do not draw);
* the armature over the mesh. Workbench does not render armatures, so each posed bone is drawn as a
  temporary octahedron mesh placed from the pose bone's matrix and length, inside the wireframe mesh.

With ``--refit``, the Generate -> edit -> Refit workflow: one bone is deleted and another moved in Edit Mode
(the longest leaf bone, moved up by 5 % of the model's size, drawn in blue), the edited rest pose is rendered (``blender_refit_edited.png``), the Refit operator fits the
weights and motion again through the subprocess backend, and the refitted rig is rendered at ``--frame``
(``blender_refit_frame<N>.png``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

log = logging.getLogger("render_blender_docs")


def frame_camera(scene, points: np.ndarray, margin: float = 1.15):
    """An orthographic camera looking horizontally at ``points [N, 3]`` from the side of the longer axis."""
    import bpy

    lo, hi = points.min(axis=0), points.max(axis=0)
    center, extent = (lo + hi) / 2, hi - lo
    cam_data = bpy.data.cameras.new("docs_camera")
    cam_data.type = "ORTHO"
    cam = bpy.data.objects.new("docs_camera", cam_data)
    scene.collection.objects.link(cam)
    distance = 4.0 * float(extent.max())
    aspect = scene.render.resolution_x / scene.render.resolution_y
    if extent[0] >= extent[1]:  # long along X: look along +Y (from the front, Blender's -Y side)
        cam.location = (center[0], center[1] - distance, center[2])
        cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
        width = extent[0]
    else:  # long along Y: look along -X
        cam.location = (center[0] + distance, center[1], center[2])
        cam.rotation_euler = (math.pi / 2, 0.0, math.pi / 2)
        width = extent[1]
    cam_data.ortho_scale = margin * max(float(width), float(extent[2]) * aspect)
    cam_data.clip_end = 10.0 * distance
    scene.camera = cam
    return cam


def bone_octahedra(armature_obj, color=(1.0, 0.45, 0.05, 1.0), only: set[str] | None = None, name: str = "docs_bones"):
    """A temporary mesh object with one octahedron per posed bone (for renders, which skip armatures); with
    ``only``, just those bones."""
    import bpy
    from mathutils import Vector

    verts, faces = [], []
    for pose_bone in armature_obj.pose.bones:
        if only is not None and pose_bone.name not in only:
            continue
        matrix = armature_obj.matrix_world @ pose_bone.matrix  # bone space: Y along the bone
        length = pose_bone.length
        r = 0.1 * length
        # head, a ring of four vertices a tenth of the way along the bone, tail
        local = [(0, 0, 0), (r, r, 0), (0, r, r), (-r, r, 0), (0, r, -r), (0, length, 0)]
        base = len(verts)
        verts += [tuple(matrix @ Vector(p)) for p in local]
        for a in range(4):
            b = (a + 1) % 4
            faces.append((base, base + 1 + a, base + 1 + b))
            faces.append((base + 5, base + 1 + b, base + 1 + a))
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    obj.color = color
    bpy.context.scene.collection.objects.link(obj)
    return obj


def add_colorbar(path: Path, vmax: float, label: str) -> None:
    """Paint a horizontal colour bar with its scale into the bottom-left of the image at ``path``."""
    from PIL import Image, ImageDraw

    from sprig_blender import convert

    image = Image.open(path).convert("RGBA")
    draw = ImageDraw.Draw(image)
    x0, y0, width, height = 20, image.height - 50, 260, 14
    ramp = convert.heat_colors(np.linspace(0.0, vmax, width), vmax)[:, :3]
    srgb = np.where(ramp <= 0.0031308, 12.92 * ramp, 1.055 * np.power(ramp, 1 / 2.4) - 0.055)  # linear -> sRGB
    for i in range(width):
        draw.line([(x0 + i, y0), (x0 + i, y0 + height)], fill=tuple(int(255 * c) for c in srgb[i]) + (255,))
    draw.text((x0, y0 - 16), label, fill=(20, 20, 20, 255))
    draw.text((x0, y0 + height + 3), "0 (stable)", fill=(20, 20, 20, 255))
    draw.text((x0 + width - 70, y0 + height + 3), f"{vmax:.3g}", fill=(20, 20, 20, 255))
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="khronos_fox_run", help="realdata clip name (without .npz)")
    parser.add_argument("--frames", type=int, default=28, help="number of frames of the clip to rig")
    parser.add_argument("--frame", type=int, default=14, help="scene frame of the heatmap render (1-based)")
    parser.add_argument("--armature-frame", type=int, nargs="+", default=None,
                        help="scene frame(s) of the armature render (default: the first, the anchor / rest pose)")
    parser.add_argument("--armature-name", default="blender_armature.png",
                        help="file name of the armature render; {clip} and {frame} are filled in")
    parser.add_argument("--no-heatmap", action="store_true", help="render only the armature")
    parser.add_argument("--rig", choices=["auto", "backend", "artist"], default="auto")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="for --rig backend")
    parser.add_argument("--mode", choices=["auto", "INSTABILITY", "RECON"], default="auto", help="heatmap values")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--size", type=int, nargs=2, default=(960, 720))
    parser.add_argument("--refit", action="store_true",
                        help="render the edit -> Refit workflow instead (see above); implies --no-heatmap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import bpy
    from test_blender_scenes import (evaluated_world_verts, ground_truth_rig, realdata_sequence, reset_scene,
                                     set_backend, shape_key_object)

    from sprig_blender import builder, export, heatmap

    rig = args.rig
    if rig == "auto":
        trained = any((args.checkpoints / f"skeleton_{w}.safetensors").is_file() for w in ("sprig", "base"))
        rig = "backend" if importlib.util.find_spec("backend.rigging.pipeline") is not None and trained else "artist"
        log.info("rig: %s", rig)
    reset_scene()
    scene = bpy.context.scene
    verts, faces, raw = realdata_sequence(args.clip, args.frames)
    source = shape_key_object(args.clip, verts, faces)
    if rig == "backend":
        set_backend("SUBPROCESS", checkpoints=args.checkpoints)
        scene.sprig.device = "cpu"
        scene.sprig.heatmap_data = True  # the skinning-instability heatmap needs the backend's heatmap stage
        result = bpy.ops.sprig.rig_sequence()
        if result != {"FINISHED"}:
            raise SystemExit(f"rigging failed: {result}")
    else:
        frames = export.frame_list(scene.frame_start, scene.frame_end, 1)
        builder.build_rig(bpy.context, source, ground_truth_rig(raw, verts), frames)
    rigged = bpy.data.objects[f"{args.clip}_rigged"]
    armature = bpy.data.objects[f"{args.clip}_rig"]
    stats = json.loads(rigged["sprig_stats"])
    source.hide_render = True
    mode = args.mode if args.mode != "auto" else ("INSTABILITY" if rig == "backend" else "RECON")

    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = args.size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.display.shading.light = "STUDIO"
    scene.world = bpy.data.worlds.new("docs_world")
    scene.world.color = (0.9, 0.9, 0.9)
    scene.frame_set(args.frame)
    camera = frame_camera(scene, evaluated_world_verts(rigged))
    args.output_dir.mkdir(parents=True, exist_ok=True)

    if args.refit:
        return render_refit(args, scene, rigged, armature, camera)

    # 1. heatmap
    if not args.no_heatmap:
        settings = bpy.context.window_manager.sprig_heatmap
        settings.mode = mode
        settings.enabled = True
        scene.frame_set(args.frame)
        values, vmax = heatmap.current_values(rigged, args.frame, mode)
        heat_path = args.output_dir / "blender_heatmap.png"
        scene.render.filepath = str(heat_path)
        bpy.ops.render.render(write_still=True)
        source_label = "SPRig backend" if rig == "backend" else "artist rig"
        label = f"{heatmap.MODE_LABELS[mode]}, frame {args.frame} ({source_label})"
        add_colorbar(heat_path, vmax, label)
        log.info("wrote %s (%s: mean %.4g, max %.4g at frame %d)", heat_path, mode, values.mean(), values.max(),
                 args.frame)
        settings.enabled = False

    # 2. armature over the mesh
    # At the anchor frame the bones sit on the rig's joints; later frames pose them with the fitted
    # articulated motion (rotations about the joints, the root's translation).
    frames_to_draw = [scene.frame_start] if args.armature_frame is None else args.armature_frame
    for armature_frame in frames_to_draw:
        arm_path = args.output_dir / args.armature_name.format(clip=args.clip, frame=armature_frame)
        camera = render_armature(args, scene, rigged, armature, camera, armature_frame, arm_path)
        log.info("wrote %s (frame %d, %d bones, stats %s)", arm_path, armature_frame, len(armature.data.bones),
                 {k: stats[k] for k in ("joints", "recon_mean") if k in stats})
    return 0


def render_armature(args, scene, rigged, armature, camera, frame: int, path: Path, highlight: set[str] = frozenset()):
    """Render the rig's bones over its mesh at ``frame`` into ``path`` (``highlight``: bones drawn in blue).

    Two passes composited like the viewport's "In Front": the mesh, then the bones alone on a transparent film,
    laid over it. Returns the camera (made anew to frame this pose)."""
    import bpy
    from PIL import Image
    from test_blender_scenes import evaluated_world_verts

    scene.frame_set(frame)
    if camera is not None:
        bpy.data.objects.remove(camera, do_unlink=True)
    world_heads = [tuple(armature.matrix_world @ b.head) for b in armature.pose.bones]
    camera = frame_camera(scene, np.concatenate([evaluated_world_verts(rigged), np.array(world_heads)]))
    names = {b.name for b in armature.pose.bones}
    bones = [bone_octahedra(armature, only=names - set(highlight))]
    if highlight:
        bones.append(bone_octahedra(armature, color=(0.1, 0.35, 1.0, 1.0), only=set(highlight),
                                    name="docs_bones_highlight"))
    rigged.color = (0.62, 0.66, 0.72, 1.0)
    shading = scene.display.shading
    shading.color_type = "OBJECT"
    bones_path = args.output_dir / "blender_armature_bones.tmp.png"
    for obj in bones:
        obj.hide_render = True
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    for obj in bones:
        obj.hide_render = False
    rigged.hide_render = True
    scene.render.film_transparent = True
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(bones_path)
    bpy.ops.render.render(write_still=True)
    for obj in bones:
        bpy.data.objects.remove(obj, do_unlink=True)
    mesh_image = Image.open(path).convert("RGBA")
    bones_image = Image.open(bones_path).convert("RGBA")
    mesh_image = Image.blend(mesh_image, Image.new("RGBA", mesh_image.size, (235, 235, 235, 255)), 0.35)
    Image.alpha_composite(mesh_image, bones_image).convert("RGB").save(path)
    bones_path.unlink()
    shading.color_type = "MATERIAL"
    rigged.hide_render = False
    scene.render.film_transparent = False
    scene.render.image_settings.color_mode = "RGB"
    return camera


def render_refit(args, scene, rigged, armature, camera) -> int:
    """Delete one bone and move another in Edit Mode, render the edit, Refit, render the refitted rig."""
    import bpy
    from mathutils import Vector

    from test_blender_scenes import set_backend

    set_backend("SUBPROCESS")  # a refit uses no networks: no checkpoints needed
    bones = [b for b in armature.data.bones]
    # a bone inside a chain (it has a parent and children) goes; a leaf bone elsewhere moves sideways
    deleted = next(b.name for b in bones[len(bones) // 4:] if b.parent is not None and b.children)
    moved = max((b for b in bones if b.parent is not None and not b.children and b.name != deleted
                 and b.parent.name != deleted), key=lambda b: b.length).name  # the longest leaf: easy to see
    anchor = np.array([v.co for v in rigged.data.vertices])
    diag = float(np.linalg.norm(np.ptp(anchor, axis=0)))
    bpy.context.view_layer.objects.active = armature
    bpy.ops.object.mode_set(mode="EDIT")
    edit = armature.data.edit_bones
    edit.remove(edit[deleted])
    edit[moved].use_connect = False
    shift = Vector((0.0, 0.0, 0.05 * diag))
    edit[moved].head += shift
    edit[moved].tail += shift
    bpy.ops.object.mode_set(mode="OBJECT")
    before = json.loads(rigged["sprig_stats"])
    path = args.output_dir / "blender_refit_edited.png"
    camera = render_armature(args, scene, rigged, armature, camera, scene.frame_start, path, highlight={moved})
    log.info("wrote %s (deleted %s, moved %s up by 5%% of the diagonal; in blue)", path, deleted, moved)
    bpy.context.view_layer.objects.active = rigged
    if bpy.ops.sprig.refit() != {"FINISHED"}:
        raise SystemExit("refit failed")
    after = json.loads(rigged["sprig_stats"])
    path = args.output_dir / f"blender_refit_frame{args.frame}.png"
    render_armature(args, scene, rigged, armature, camera, args.frame, path, highlight={moved})
    log.info("wrote %s: %d -> %d bones, recon mean %.3f%% -> %.3f%% of the diagonal, joint separation max %.2g",
             path, before["joints"], after["joints"], 100 * before["recon_mean"], 100 * after["recon_mean"],
             after["joint_separation_max"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
