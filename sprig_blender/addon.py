"""Registration of the extension's classes, properties and handlers (called from ``__init__``)."""

from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from . import heatmap, operators, panel, preferences, properties, runner

CLASSES = (*properties.classes, *preferences.classes, *operators.classes, *panel.classes)


@persistent
def on_load_pre(*_args) -> None:
    """Before a file loads: stop any running job, remove the heatmap's handlers, forget cached values."""
    operators.cancel_active_job()
    wm = getattr(bpy.context, "window_manager", None)
    if wm is not None and getattr(wm, "sprig_heatmap", None) is not None and wm.sprig_heatmap.enabled:
        wm.sprig_heatmap["enabled"] = False  # no update callback: the handlers are removed just below
    heatmap.disable(None)
    heatmap.clear_cache()


@persistent
def on_undo_redo(*_args) -> None:
    """After an undo or redo: forget the decoded heat values (keyed by mesh name, they may be those of the step
    just undone, e.g. a refit's) and recolour the rigged meshes from the values the file holds now."""
    heatmap.clear_cache()
    wm = getattr(bpy.context, "window_manager", None)
    settings = getattr(wm, "sprig_heatmap", None) if wm is not None else None
    scene = getattr(bpy.context, "scene", None)
    if settings is not None and settings.enabled and scene is not None:
        heatmap.on_frame_change(scene)


UNDO_HANDLERS = (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bpy.types.VIEW3D_MT_object.append(operators.object_menu_entry)
    if on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(on_load_pre)
    for handlers in UNDO_HANDLERS:
        if on_undo_redo not in handlers:
            handlers.append(on_undo_redo)


def unregister() -> None:
    operators.cancel_active_job()
    heatmap.disable(None)
    heatmap.clear_cache()
    runner.discard_backend()
    while on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(on_load_pre)
    for handlers in UNDO_HANDLERS:
        while on_undo_redo in handlers:
            handlers.remove(on_undo_redo)
    bpy.types.VIEW3D_MT_object.remove(operators.object_menu_entry)
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
