"""Add-on preferences: how to reach the backend."""

from __future__ import annotations

import bpy

from . import runner

ADDON_ID = __package__  # "sprig_blender" from a checkout, "bl_ext.<repo>.sprig" when installed


class SPRIG_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_mode: bpy.props.EnumProperty(
        name="Backend",
        items=[
            ("AUTO", "Auto", "In-process if torch and the SPRig backend import inside Blender, else subprocess"),
            ("SUBPROCESS", "Subprocess", "Run the backend with the Python executable below"),
            ("IN_PROCESS", "In-process", "Run the backend inside Blender's Python (needs torch installed there)"),
        ],
        default="AUTO",
    )
    python_executable: bpy.props.StringProperty(
        name="Python executable", subtype="FILE_PATH",
        description="Python with torch and the SPRig backend installed (e.g. <checkout>/.venv/bin/python)",
    )
    backend_path: bpy.props.StringProperty(
        name="Backend folder", subtype="DIR_PATH",
        description="Optional: a source checkout holding the 'backend' package, added to the backend's import path",
    )
    checkpoint_dir: bpy.props.StringProperty(
        name="Checkpoints", subtype="DIR_PATH",
        description="Optional: folder with the rigger's checkpoints (default: the backend's own)",
    )
    hang_timeout: bpy.props.FloatProperty(
        name="Hang timeout (s)", default=60.0, min=5.0, soft_max=600.0,
        description="A backend that sends nothing (not even a heartbeat) for this long is treated as hung",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "backend_mode")
        col = layout.column()
        col.prop(self, "python_executable")
        col.prop(self, "backend_path")
        layout.prop(self, "checkpoint_dir")
        layout.prop(self, "hang_timeout")
        row = layout.row()
        row.operator("sprig.check_backend", icon="CHECKMARK")
        status = context.window_manager.sprig_runtime.backend_status
        if status:
            box = layout.box()
            for line in status.split("\n"):
                box.label(text=line)


def backend_settings(context: bpy.types.Context, device: str = "auto") -> runner.BackendSettings:
    """The backend settings from the add-on preferences.

    When the package is registered without being enabled as an add-on (a script calling
    ``register()``), there are no preferences and the defaults are used (AUTO mode, no executable).
    """
    addon = context.preferences.addons.get(ADDON_ID)
    prefs = addon.preferences if addon is not None else None
    if prefs is None:
        return runner.BackendSettings(device=device)
    return runner.BackendSettings(
        mode=prefs.backend_mode,
        python=bpy.path.abspath(prefs.python_executable) if prefs.python_executable else "",
        backend_path=bpy.path.abspath(prefs.backend_path).rstrip("/\\") if prefs.backend_path else "",
        checkpoints=bpy.path.abspath(prefs.checkpoint_dir) if prefs.checkpoint_dir else "",
        device=device,
        hang_timeout_s=prefs.hang_timeout,
    )


def addon_preferences(context: bpy.types.Context) -> SPRIG_AddonPreferences | None:
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


classes = (SPRIG_AddonPreferences,)
