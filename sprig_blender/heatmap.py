"""Per-frame stability heatmap on rigged meshes: colour attribute + frame handler + viewport legend.

The backend's per-vertex, per-frame values (``RigResult.skin_instability`` or ``recon_error``, both
``[K, V]``) are stored on the rigged mesh when the rig is built, compactly: one ``bytes`` custom property
per mode holding 8 bits per value (square-root scale, frame-to-frame differences, deflated; see
:func:`convert.encode_heat`), its scale and its frames. The instability is stored only on the frames the
backend predicted weights for (``stats["skin_frames"]``; the backend interpolates linearly in between,
and so does the display), and not at all when the rig was made without the heatmap stage. The data
is decoded once, on first use, and kept in memory as bytes. While the heatmap is on, a ``frame_change_pre``
handler (before the new frame is evaluated, so the colours cost no second evaluation of the mesh) writes
the current frame's values into two point attributes of
every rigged mesh in the scene: ``sprig_heat`` (colour, blue = stable, red = unstable; shown in Solid
mode with the attribute colour type) and, only when the user asks for it (``Write Values``: it costs
playback time), ``sprig_heat_value`` (the raw value). A ``POST_PIXEL`` draw
handler paints a legend and the current frame's numbers in the 3D views (never in background mode).

The ``DRIFT`` mode colours bones instead: each bone of a rigged armature takes the colour of its joint's
motion-compensated drift (``stats["joint_drift"]`` from the backend, one value per canonical joint, stored
as JSON in the armature's ``sprig_stats``) through custom pose-bone colours. The meshes are left alone in
that mode, and the bones' previous colours are put back when the mode changes or the heatmap is turned off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from dataclasses import dataclass

import bpy
import numpy as np

from . import convert

log = logging.getLogger(__name__)

COLOR_ATTRIBUTE = "sprig_heat"
VALUE_ATTRIBUTE = "sprig_heat_value"
FRAMES_KEY = "sprig_heat_frames"
DATA_KEYS = {"INSTABILITY": "sprig_heat_instability", "RECON": "sprig_heat_recon"}
DRIFT_MODE = "DRIFT"
MODE_LABELS = {"INSTABILITY": "Skinning instability", "RECON": "Reconstruction error",
               DRIFT_MODE: "Joint drift (MCJD)"}
STATS_KEY = "sprig_stats"
BONE_NAMES_KEY = "sprig_bone_names"  # bone names in joint order, written by the builder


@dataclass
class HeatData:
    """Heat values of one rigged mesh in one mode: stored bytes ``levels uint8 [K, V]`` at scene
    ``frames float [K]`` (scene frames), the value of each byte ``level_values float32 [256]`` and the colour scale max."""

    frames: np.ndarray
    levels: np.ndarray
    level_values: np.ndarray
    vmax: float

    def values_at(self, frame: float) -> np.ndarray:
        """Values ``float32 [V]`` at scene ``frame`` (exact on stored frames, linear in between)."""
        k, t = convert.frame_blend(self.frames, frame)
        here = self.level_values[self.levels[k]]
        if t == 0.0:
            return here
        return (1.0 - t) * here + np.float32(t) * self.level_values[self.levels[k + 1]]

    def colors_at(self, frame: float, vmax: float) -> tuple[np.ndarray, np.ndarray]:
        """``(values float32 [V], RGBA float32 [V, 4])`` at scene ``frame`` with full red at ``vmax``
        (on a stored frame the colours are looked up per byte: no per-vertex arithmetic)."""
        k, t = convert.frame_blend(self.frames, frame)
        if t == 0.0:
            levels = self.levels[k]
            # one 16-byte RGBA item per byte value, gathered with np.take (several times faster than lut[levels])
            level_colors = np.ascontiguousarray(convert.heat_colors(self.level_values, vmax)).view(np.complex128)
            colors = np.take(level_colors.ravel(), levels).view(np.float32).reshape(-1, 4)
            return np.take(self.level_values, levels), colors
        values = self.values_at(frame)
        return values, convert.heat_colors(values, vmax)

    @property
    def values(self) -> np.ndarray:
        """All stored values, ``float32 [K, V]`` (decoded on each call)."""
        return self.level_values[self.levels]


@dataclass
class DriftData:
    """Joint drift of one rigged armature: ``bone_names [J]`` in joint order, ``values float64 [J]``
    (anchor-box units; NaN where the backend had none) and the clip's MCJD (NaN when absent)."""

    bone_names: list[str]
    values: np.ndarray
    clip_mcjd: float

    @property
    def vmax(self) -> float:
        """Colour-scale maximum: the largest drift (1 when there is none above 0)."""
        finite = self.values[np.isfinite(self.values)]
        top = float(finite.max()) if finite.size else 0.0
        return top if top > 0 else 1.0


class _State:
    draw_handle = None
    cache: dict[tuple[str, str], HeatData] = {}
    drift_cache: dict[str, tuple[str, DriftData | None]] = {}  # armature -> (stats JSON, parsed drift)
    saved_shading: list[tuple] = []  # (shading struct owner, type, color_type) to restore
    saved_bones: dict[str, tuple] = {}  # armature -> (object, show_bone_colors, {bone: (palette, n, s, a)})
    draw_failed = False


def _keys(mode: str) -> tuple[str, str, str]:
    """Custom-property names of one mode's ``(payload, scale, frames)``."""
    key = DATA_KEYS[mode]
    return key, f"{key}_scale", f"{key}_frames"


def store_heat_data(mesh: bpy.types.Mesh, frames: list[float], recon: np.ndarray,
                    instability: np.ndarray | None = None, instability_frames: list[float] | None = None) -> None:
    """Keep ``recon float32 [K, V]`` at scene ``frames [K]`` and, when given, ``instability float32 [Ki, V]``
    at scene ``instability_frames [Ki]`` (default: ``frames``) on ``mesh`` (see the module docstring)."""
    for _ in store_heat_data_steps(mesh, frames, recon, instability, instability_frames):
        pass


def store_heat_data_steps(mesh: bpy.types.Mesh, frames: list[float], recon: np.ndarray,
                          instability: np.ndarray | None = None,
                          instability_frames: list[float] | None = None) -> Generator[float, None, None]:
    """:func:`store_heat_data` a slice of compression at a time: yields the share done. The mesh's heat data
    change only after the last step (a run stopped before leaves the mesh as it was)."""
    V = len(mesh.vertices)
    recon = np.asarray(recon, dtype=np.float32)
    if recon.shape != (len(frames), V):
        raise ValueError(f"heat data shapes do not match: recon {list(recon.shape)}, {len(frames)} frames, "
                         f"{V} vertices")
    per_mode = {"RECON": (recon, list(frames))}
    if instability is not None:
        instability = np.asarray(instability, dtype=np.float32)
        inst_frames = list(frames) if instability_frames is None else list(instability_frames)
        if instability.shape != (len(inst_frames), V):
            raise ValueError(f"heat data shapes do not match: instability {list(instability.shape)}, "
                             f"{len(inst_frames)} frames, {V} vertices")
        per_mode["INSTABILITY"] = (instability, inst_frames)
    encoded = {}
    for i, (mode, (values, _)) in enumerate(per_mode.items()):
        steps = convert.encode_heat_steps(values)
        while True:
            try:
                yield (i + next(steps)) / len(per_mode)
            except StopIteration as finished:
                encoded[mode] = finished.value
                break
    for mode in DATA_KEYS:
        for key in _keys(mode):
            if key in mesh:
                del mesh[key]
    mesh[FRAMES_KEY] = [float(f) for f in frames]
    for mode, (values, mode_frames) in per_mode.items():
        payload, scale = encoded[mode]
        data_key, scale_key, frames_key = _keys(mode)
        mesh[data_key] = payload
        mesh[scale_key] = scale
        mesh[frames_key] = [float(f) for f in mode_frames]
    for key in list(_State.cache):
        if key[0] == mesh.name_full:
            del _State.cache[key]


def has_heat_data(obj: bpy.types.Object | None) -> bool:
    return obj is not None and obj.type == "MESH" and FRAMES_KEY in obj.data and DATA_KEYS["RECON"] in obj.data


def has_mode(obj: bpy.types.Object | None, mode: str) -> bool:
    """Whether ``obj`` has heat values for ``mode`` (a rig made without the heatmap stage has no instability)."""
    return has_heat_data(obj) and mode in DATA_KEYS and DATA_KEYS[mode] in obj.data


def heat_data(mesh: bpy.types.Mesh, mode: str) -> HeatData:
    """The stored values for ``mode`` (``INSTABILITY`` | ``RECON``), decoded once and cached per mesh.

    Raises:
        KeyError: ``mesh`` has no values for ``mode``.
    """
    key = (mesh.name_full, mode)
    data = _State.cache.get(key)
    if data is None or data.levels.shape[1] != len(mesh.vertices):
        data_key, scale_key, frames_key = _keys(mode)
        stored = mesh[data_key]
        frames = np.asarray(mesh[frames_key] if frames_key in mesh else mesh[FRAMES_KEY], dtype=np.float64)
        if isinstance(stored, bytes):
            levels = convert.decode_heat_levels(stored, len(frames), len(mesh.vertices))
            level_values = convert.heat_level_values(float(mesh[scale_key]))
        else:  # files saved before the compact format: float lists [K * V]
            payload, scale = convert.encode_heat(np.asarray(stored, dtype=np.float32).reshape(len(frames), -1))
            levels = convert.decode_heat_levels(payload, len(frames), len(mesh.vertices))
            level_values = convert.heat_level_values(scale)
        data = HeatData(frames=frames, levels=levels, level_values=level_values,
                        vmax=_auto_max(levels, level_values))
        _State.cache[key] = data
    return data


def _auto_max(levels: np.ndarray, level_values: np.ndarray) -> float:
    """:func:`convert.auto_heat_max` of the stored values: their 99th percentile (else the largest; never 0)."""
    top = convert.level_percentile(levels, level_values, 99.0)
    if top <= 0:
        top = float(level_values[int(levels.max())]) if levels.size else 0.0
    return top if top > 0 else 1.0


def scale_for(data: HeatData) -> float:
    """The value shown as full red: the heatmap's Scale Max when set, else the clip's automatic one."""
    settings = getattr(getattr(bpy.context, "window_manager", None), "sprig_heatmap", None)
    return settings.scale_max if settings is not None and settings.scale_max > 0 else data.vmax


def shown_mode(obj: bpy.types.Object, mode: str) -> str:
    """``mode``, or ``RECON`` when ``obj`` has no values for ``mode`` (a rig made without the heatmap stage)."""
    return mode if has_mode(obj, mode) else "RECON"


def current_values(obj: bpy.types.Object, frame: float, mode: str) -> tuple[np.ndarray, float]:
    """Values ``float32 [V]`` of ``obj`` at scene ``frame`` and the colour-scale maximum."""
    data = heat_data(obj.data, shown_mode(obj, mode))
    return data.values_at(frame), scale_for(data)


def apply(obj: bpy.types.Object, frame: float, mode: str, write_values: bool = False) -> None:
    """Write the heat colours of ``frame`` into ``obj``'s colour attribute, and with ``write_values`` the
    raw values into the ``sprig_heat_value`` point attribute (otherwise that attribute is removed, so
    it never holds a stale frame's values)."""
    mesh = obj.data
    data = heat_data(mesh, shown_mode(obj, mode))
    values, colors = data.colors_at(frame, scale_for(data))
    attr = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if attr is None or attr.domain != "POINT" or attr.data_type != "FLOAT_COLOR":
        if attr is not None:
            mesh.color_attributes.remove(attr)
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", colors.ravel())
    if mesh.color_attributes.active_color_name != COLOR_ATTRIBUTE:
        mesh.color_attributes.active_color = mesh.color_attributes[COLOR_ATTRIBUTE]
    value_attr = mesh.attributes.get(VALUE_ATTRIBUTE)
    if write_values:
        if value_attr is None:
            value_attr = mesh.attributes.new(VALUE_ATTRIBUTE, "FLOAT", "POINT")
        value_attr.data.foreach_set("value", values)
    elif value_attr is not None:
        mesh.attributes.remove(value_attr)
    mesh.update_tag()


def heat_objects(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Rigged meshes (with heat data) in ``scene``."""
    return [obj for obj in scene.objects if has_heat_data(obj)]


# -- joint drift on bones -----------------------------------------------------------------------


def joint_drift(obj: bpy.types.Object | None) -> DriftData | None:
    """The backend's per-joint drift of a rigged armature (None when ``obj`` is not one, or its stats have
    no ``joint_drift`` matching its bones, e.g. a single-frame rig)."""
    if obj is None or obj.type != "ARMATURE" or STATS_KEY not in obj:
        return None
    text = str(obj[STATS_KEY])
    cached = _State.drift_cache.get(obj.name_full)
    if cached is not None and cached[0] == text:
        return cached[1]
    data = None
    try:
        stats = json.loads(text)
    except ValueError:
        stats = {}
    values = stats.get("joint_drift") if isinstance(stats, dict) else None
    if isinstance(values, list) and values:
        names = list(obj[BONE_NAMES_KEY]) if BONE_NAMES_KEY in obj else [b.name for b in obj.data.bones]
        if len(names) != len(values):
            log.warning("%s: %d joint drift values for %d bones; not shown", obj.name, len(values), len(names))
        else:
            clip = stats.get("mcjd")
            data = DriftData(bone_names=[str(n) for n in names],
                             values=np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64),
                             clip_mcjd=float(clip) if isinstance(clip, (int, float)) else float("nan"))
    _State.drift_cache[obj.name_full] = (text, data)
    return data


def drift_armatures(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Rigged armatures with joint drift in ``scene``."""
    return [obj for obj in scene.objects if obj.type == "ARMATURE" and joint_drift(obj) is not None]


def armature_of(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The rigged armature shown for ``obj``: itself, or the armature a rigged mesh was built with."""
    if obj is None:
        return None
    if obj.type == "ARMATURE":
        return obj
    name = obj.get("sprig_armature")
    arm = bpy.data.objects.get(name) if isinstance(name, str) else None
    if arm is None and obj.parent is not None and obj.parent.type == "ARMATURE":
        arm = obj.parent
    return arm


def drift_scale(data: DriftData) -> float:
    """The drift shown as full red: the heatmap's Scale Max when set, else the largest joint drift."""
    settings = getattr(getattr(bpy.context, "window_manager", None), "sprig_heatmap", None)
    return settings.scale_max if settings is not None and settings.scale_max > 0 else data.vmax


def color_bones(obj: bpy.types.Object) -> bool:
    """Colour ``obj``'s pose bones by their joint's drift (custom colours); the previous colours are saved
    once, for :func:`restore_bones`. Returns False when ``obj`` has no drift to show."""
    data = joint_drift(obj)
    if data is None:
        return False
    bones = obj.pose.bones
    if obj.name_full not in _State.saved_bones:
        saved = {}
        for name in data.bone_names:
            pb = bones.get(name)
            if pb is not None:
                c = pb.color.custom
                saved[name] = (pb.color.palette, tuple(c.normal), tuple(c.select), tuple(c.active))
        _State.saved_bones[obj.name_full] = (obj, bool(obj.data.show_bone_colors), saved)
    normal, select, active = convert.bone_heat_colors(data.values, drift_scale(data))
    for j, name in enumerate(data.bone_names):
        pb = bones.get(name)
        if pb is None:
            continue
        pb.color.palette = "CUSTOM"
        pb.color.custom.normal = normal[j].tolist()
        pb.color.custom.select = select[j].tolist()
        pb.color.custom.active = active[j].tolist()
    obj.data.show_bone_colors = True
    obj.update_tag()
    return True


def restore_bones() -> None:
    """Put back the bone colours saved by :func:`color_bones` (armatures deleted since are skipped)."""
    for obj, show_colors, saved in _State.saved_bones.values():
        try:
            bones = obj.pose.bones
            for name, (palette, normal, select, active) in saved.items():
                pb = bones.get(name)
                if pb is None:
                    continue
                pb.color.custom.normal = normal
                pb.color.custom.select = select
                pb.color.custom.active = active
                pb.color.palette = palette
            obj.data.show_bone_colors = show_colors
            obj.update_tag()
        except (ReferenceError, AttributeError, TypeError):
            pass  # the armature is gone
    _State.saved_bones = {}


def on_frame_change(scene: bpy.types.Scene, depsgraph=None) -> None:
    """``frame_change_pre`` handler: recolour every rigged mesh for the new frame (nothing to do in the
    ``DRIFT`` mode: the drift is one value per joint for the whole clip)."""
    settings = bpy.context.window_manager.sprig_heatmap
    if not settings.enabled or settings.mode == DRIFT_MODE:
        return
    frame = scene.frame_current + scene.frame_subframe
    for obj in heat_objects(scene):
        try:
            apply(obj, frame, settings.mode, settings.write_values)
        except Exception as exc:  # never break playback
            log.warning("heatmap update failed on %s: %s", obj.name, exc)


# -- enabling / disabling ----------------------------------------------------------------------


def enable(context: bpy.types.Context) -> int:
    """Install the handlers and show the current mode (also called when the mode or scale changes).

    Mesh modes colour the scene's rigged meshes and switch 3D views to attribute colours (the bones get
    their own colours back); the ``DRIFT`` mode colours the rigged armatures' bones and gives the 3D views
    their shading back. Returns the number of meshes or armatures coloured.
    """
    if on_frame_change not in bpy.app.handlers.frame_change_pre:
        bpy.app.handlers.frame_change_pre.append(on_frame_change)
    if not bpy.app.background and _State.draw_handle is None:
        _State.draw_handle = bpy.types.SpaceView3D.draw_handler_add(draw_legend, (), "WINDOW", "POST_PIXEL")
        _State.draw_failed = False
    mode = context.window_manager.sprig_heatmap.mode
    if mode == DRIFT_MODE:
        _restore_shading()
        count = sum(color_bones(obj) for obj in drift_armatures(context.scene))
    else:
        restore_bones()
        _show_attribute_colors(context)
        objects = heat_objects(context.scene)
        for obj in objects:
            apply(obj, context.scene.frame_current, mode, context.window_manager.sprig_heatmap.write_values)
        count = len(objects)
    _redraw(context)
    return count


def disable(context: bpy.types.Context | None = None) -> None:
    """Remove the handlers, restore the 3D views' shading and the bones' colours (the colour attribute
    stays on the mesh)."""
    while on_frame_change in bpy.app.handlers.frame_change_pre:
        bpy.app.handlers.frame_change_pre.remove(on_frame_change)
    if _State.draw_handle is not None:
        try:
            bpy.types.SpaceView3D.draw_handler_remove(_State.draw_handle, "WINDOW")
        except (ValueError, RuntimeError):
            pass
        _State.draw_handle = None
    _restore_shading()
    restore_bones()
    if context is not None:
        _redraw(context)


def clear_cache() -> None:
    _State.cache.clear()
    _State.drift_cache.clear()


def _restore_shading() -> None:
    for owner, shading_type, color_type in _State.saved_shading:
        try:
            owner.type = shading_type
            owner.color_type = color_type
        except (ReferenceError, AttributeError, TypeError):
            pass  # the space or scene is gone
    _State.saved_shading = []


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


def legend(context) -> tuple[float, list[str]] | None:
    """The legend of the current mode: colour-scale maximum and text lines (the one nearest the colour bar
    first), or None when the heatmap is off or nothing in the scene has data for the mode."""
    settings = context.window_manager.sprig_heatmap
    if not settings.enabled:
        return None
    if settings.mode == DRIFT_MODE:
        arms = drift_armatures(context.scene)
        if not arms:
            return None
        arm = armature_of(context.active_object)
        obj = arm if arm in arms else arms[0]
        data = joint_drift(obj)
        values = data.values
        worst = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
        return drift_scale(data), [
            f"SPRig: {MODE_LABELS[DRIFT_MODE]}  ({obj.name})",
            f"drift {float(np.nanmin(values)):.4g} - {float(np.nanmax(values)):.4g}  "
            f"(max at {data.bone_names[worst]}; clip MCJD {data.clip_mcjd:.4g})",
        ]
    objects = heat_objects(context.scene)
    if not objects:
        return None
    obj = context.active_object if context.active_object in objects else objects[0]
    values, vmax = current_values(obj, context.scene.frame_current, settings.mode)
    return vmax, [
        f"SPRig: {MODE_LABELS[shown_mode(obj, settings.mode)]}  ({obj.name})",
        f"frame {context.scene.frame_current}: mean {float(values.mean()):.4g}  max {float(values.max()):.4g}",
    ]


def _draw_legend(context) -> None:
    import blf
    import gpu
    from gpu_extras.batch import batch_for_shader

    shown = legend(context)
    if shown is None:
        return
    vmax, text = shown

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
    lines = [(x0, y0 - 16, "0"), (x0 + width - 30, y0 - 16, f"{vmax:.3g}")]
    lines += [(x0, y0 + height + 8 + 16 * i, line) for i, line in enumerate(text)]
    for x, y, text in lines:
        blf.position(font, x, y, 0)
        blf.draw(font, text)
