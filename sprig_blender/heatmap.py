"""Per-frame stability heatmap on rigged meshes: colour attribute + frame handler + viewport legend.

The backend's per-vertex, per-frame values (``RigResult.skin_instability`` or ``recon_error``, both
``[K, V]``) are stored on the rigged mesh as custom properties when the rig is built. While the heatmap
is on, a ``frame_change_post`` handler writes the current frame's values into two point attributes of
every rigged mesh in the scene: ``sprig_heat`` (colour, blue = stable, red = unstable; shown in Solid
mode with the attribute colour type) and ``sprig_heat_value`` (the raw value). A ``POST_PIXEL`` draw
handler paints a legend and the current frame's numbers in the 3D views (never in background mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import bpy
import numpy as np

from . import convert

log = logging.getLogger(__name__)

COLOR_ATTRIBUTE = "sprig_heat"
VALUE_ATTRIBUTE = "sprig_heat_value"
FRAMES_KEY = "sprig_heat_frames"
DATA_KEYS = {"INSTABILITY": "sprig_heat_instability", "RECON": "sprig_heat_recon"}
MODE_LABELS = {"INSTABILITY": "Skinning instability", "RECON": "Reconstruction error"}


@dataclass
class HeatData:
    """Heat values of one rigged mesh: ``frames int [K]``, ``values float32 [K, V]``, colour scale max."""

    frames: np.ndarray
    values: np.ndarray
    vmax: float


class _State:
    draw_handle = None
    cache: dict[tuple[str, str], HeatData] = {}
    saved_shading: list[tuple] = []  # (shading struct owner, type, color_type) to restore
    draw_failed = False


def store_heat_data(mesh: bpy.types.Mesh, frames: list[int], instability: np.ndarray, recon: np.ndarray) -> None:
    """Keep ``instability`` and ``recon`` (``float32 [K, V]``) at scene ``frames [K]`` on ``mesh``."""
    K, V = instability.shape
    if recon.shape != (K, V) or len(frames) != K or V != len(mesh.vertices):
        raise ValueError(f"heat data shapes do not match: instability {instability.shape}, recon {recon.shape}, "
                         f"{len(frames)} frames, {len(mesh.vertices)} vertices")
    mesh[FRAMES_KEY] = [int(f) for f in frames]
    mesh[DATA_KEYS["INSTABILITY"]] = np.asarray(instability, dtype=np.float64).ravel().tolist()
    mesh[DATA_KEYS["RECON"]] = np.asarray(recon, dtype=np.float64).ravel().tolist()
    for key in list(_State.cache):
        if key[0] == mesh.name_full:
            del _State.cache[key]


def has_heat_data(obj: bpy.types.Object | None) -> bool:
    return obj is not None and obj.type == "MESH" and FRAMES_KEY in obj.data and DATA_KEYS["RECON"] in obj.data


def heat_data(mesh: bpy.types.Mesh, mode: str) -> HeatData:
    """The stored values for ``mode`` (``INSTABILITY`` | ``RECON``), cached per mesh."""
    key = (mesh.name_full, mode)
    data = _State.cache.get(key)
    if data is None or data.values.shape[1] != len(mesh.vertices):
        frames = np.asarray(mesh[FRAMES_KEY], dtype=np.int64)
        values = np.asarray(mesh[DATA_KEYS[mode]], dtype=np.float32).reshape(len(frames), -1)
        data = HeatData(frames=frames, values=values, vmax=convert.auto_heat_max(values))
        _State.cache[key] = data
    return data


def current_values(obj: bpy.types.Object, frame: float, mode: str) -> tuple[np.ndarray, float]:
    """Values ``float32 [V]`` of ``obj`` at scene ``frame`` and the colour-scale maximum."""
    data = heat_data(obj.data, mode)
    settings = bpy.context.window_manager.sprig_heatmap if hasattr(bpy.context, "window_manager") else None
    vmax = settings.scale_max if settings is not None and settings.scale_max > 0 else data.vmax
    return convert.values_at_frame(data.frames, data.values, frame), vmax


def apply(obj: bpy.types.Object, frame: float, mode: str) -> None:
    """Write the heat colours and values of ``frame`` into ``obj``'s mesh attributes."""
    mesh = obj.data
    values, vmax = current_values(obj, frame, mode)
    colors = convert.heat_colors(values, vmax)
    attr = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if attr is None or attr.domain != "POINT" or attr.data_type != "FLOAT_COLOR":
        if attr is not None:
            mesh.color_attributes.remove(attr)
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", colors.ravel())
    mesh.color_attributes.active_color = mesh.color_attributes[COLOR_ATTRIBUTE]
    value_attr = mesh.attributes.get(VALUE_ATTRIBUTE)
    if value_attr is None:
        value_attr = mesh.attributes.new(VALUE_ATTRIBUTE, "FLOAT", "POINT")
    value_attr.data.foreach_set("value", values.astype(np.float32))
    mesh.update_tag()


def heat_objects(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Rigged meshes (with heat data) in ``scene``."""
    return [obj for obj in scene.objects if has_heat_data(obj)]


def on_frame_change(scene: bpy.types.Scene, depsgraph=None) -> None:
    """``frame_change_post`` handler: recolour every rigged mesh for the new frame."""
    settings = bpy.context.window_manager.sprig_heatmap
    if not settings.enabled:
        return
    frame = scene.frame_current + scene.frame_subframe
    for obj in heat_objects(scene):
        try:
            apply(obj, frame, settings.mode)
        except Exception as exc:  # never break playback
            log.warning("heatmap update failed on %s: %s", obj.name, exc)


# -- enabling / disabling ----------------------------------------------------------------------


def enable(context: bpy.types.Context) -> int:
    """Install the handlers, colour the scene's rigged meshes, switch 3D views to attribute colours.

    Returns the number of meshes coloured.
    """
    if on_frame_change not in bpy.app.handlers.frame_change_post:
        bpy.app.handlers.frame_change_post.append(on_frame_change)
    _show_attribute_colors(context)
    if not bpy.app.background and _State.draw_handle is None:
        _State.draw_handle = bpy.types.SpaceView3D.draw_handler_add(draw_legend, (), "WINDOW", "POST_PIXEL")
        _State.draw_failed = False
    objects = heat_objects(context.scene)
    mode = context.window_manager.sprig_heatmap.mode
    for obj in objects:
        apply(obj, context.scene.frame_current, mode)
    _redraw(context)
    return len(objects)


def disable(context: bpy.types.Context | None = None) -> None:
    """Remove the handlers and restore the 3D views' shading (the colour attribute stays on the mesh)."""
    while on_frame_change in bpy.app.handlers.frame_change_post:
        bpy.app.handlers.frame_change_post.remove(on_frame_change)
    if _State.draw_handle is not None:
        try:
            bpy.types.SpaceView3D.draw_handler_remove(_State.draw_handle, "WINDOW")
        except (ValueError, RuntimeError):
            pass
        _State.draw_handle = None
    for owner, shading_type, color_type in _State.saved_shading:
        try:
            owner.type = shading_type
            owner.color_type = color_type
        except (ReferenceError, AttributeError, TypeError):
            pass  # the space or scene is gone
    _State.saved_shading = []
    if context is not None:
        _redraw(context)


def clear_cache() -> None:
    _State.cache.clear()


def _show_attribute_colors(context: bpy.types.Context) -> None:
    if _State.saved_shading:
        return
    shadings = [context.scene.display.shading]
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                shadings.extend(space.shading for space in area.spaces if space.type == "VIEW_3D")
    for shading in shadings:
        _State.saved_shading.append((shading, shading.type, shading.color_type))
        shading.type = "SOLID"
        shading.color_type = "VERTEX"


def _redraw(context: bpy.types.Context) -> None:
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


# -- legend -------------------------------------------------------------------------------------


def draw_legend() -> None:
    """``POST_PIXEL`` callback: colour bar, scale, mode and the current frame's numbers."""
    if bpy.app.background or _State.draw_failed:
        return
    try:
        _draw_legend(bpy.context)
    except Exception as exc:  # a drawing error must not spam every redraw
        _State.draw_failed = True
        log.warning("heatmap legend disabled: %s", exc)


def _draw_legend(context) -> None:
    import blf
    import gpu
    from gpu_extras.batch import batch_for_shader

    settings = context.window_manager.sprig_heatmap
    objects = heat_objects(context.scene)
    if not settings.enabled or not objects:
        return
    obj = context.active_object if context.active_object in objects else objects[0]
    values, vmax = current_values(obj, context.scene.frame_current, settings.mode)

    x0, y0, width, height, steps = 20, 40, 200, 12, 24
    positions, colors, indices = [], [], []
    ramp = convert.heat_colors(np.linspace(0.0, vmax, steps + 1), vmax)
    for i in range(steps + 1):
        x = x0 + width * i / steps
        positions += [(x, y0), (x, y0 + height)]
        colors += [tuple(ramp[i]), tuple(ramp[i])]
        if i < steps:
            a = 2 * i
            indices += [(a, a + 1, a + 2), (a + 1, a + 3, a + 2)]
    shader = gpu.shader.from_builtin("SMOOTH_COLOR")
    batch = batch_for_shader(shader, "TRIS", {"pos": positions, "color": colors}, indices=indices)
    gpu.state.blend_set("ALPHA")
    batch.draw(shader)
    gpu.state.blend_set("NONE")

    font = 0
    blf.size(font, 12)
    blf.color(font, 1.0, 1.0, 1.0, 1.0)
    lines = [
        (x0, y0 - 16, "0"),
        (x0 + width - 30, y0 - 16, f"{vmax:.3g}"),
        (x0, y0 + height + 8, f"SPRig: {MODE_LABELS[settings.mode]}  ({obj.name})"),
        (x0, y0 + height + 24, f"frame {context.scene.frame_current}: mean {float(values.mean()):.4g}  "
                               f"max {float(values.max()):.4g}"),
    ]
    for x, y, text in lines:
        blf.position(font, x, y, 0)
        blf.draw(font, text)
