"""The SPRig tab in the 3D View sidebar."""

from __future__ import annotations

import json

import bpy
import numpy as np

from . import heatmap, operators


def _rig_object(context) -> bpy.types.Object | None:
    """The rigged mesh to show numbers for: the active object if it is one, else the last run's."""
    active = context.active_object
    if active is not None and "sprig_stats" in active:
        if active.type == "ARMATURE":
            for child in active.children:
                if heatmap.has_heat_data(child):
                    return child
        return active
    last = context.scene.sprig.rig_object
    return last if last is not None and last.name in context.scene.objects else None


class SPRIG_PT_main(bpy.types.Panel):
    bl_label = "SPRig"
    bl_idname = "SPRIG_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SPRig"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        settings = scene.sprig
        runtime = context.window_manager.sprig_runtime

        obj = context.active_object
        row = layout.row()
        row.label(text=obj.name if obj is not None else "No active object",
                  icon="OUTLINER_OB_MESH" if obj is not None and obj.type == "MESH" else "ERROR")

        col = layout.column(align=True)
        col.prop(settings, "use_scene_range")
        if settings.use_scene_range:
            col.label(text=f"Frames {scene.frame_start} - {scene.frame_end}")
        else:
            sub = col.row(align=True)
            sub.prop(settings, "frame_start")
            sub.prop(settings, "frame_end")
        col.prop(settings, "frame_step")

        col = layout.column(align=True)
        col.prop(settings, "max_influences")
        col.prop(settings, "refine_motion")
        col.prop(settings, "device")

        if runtime.running:
            box = layout.box()
            box.label(text=f"{runtime.stage or 'working'}...", icon="TIME")
            box.prop(runtime, "progress", text="Progress", slider=True)
            box.label(text="Press Esc in the viewport to cancel")
        else:
            layout.operator("sprig.rig_sequence", icon="ARMATURE_DATA")


class SPRIG_PT_results(bpy.types.Panel):
    bl_label = "Result"
    bl_idname = "SPRIG_PT_results"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SPRig"
    bl_parent_id = "SPRIG_PT_main"

    @classmethod
    def poll(cls, context):
        return _rig_object(context) is not None

    def draw(self, context):
        layout = self.layout
        rigged = _rig_object(context)
        try:
            stats = json.loads(rigged["sprig_stats"])
        except (KeyError, ValueError, TypeError):
            stats = {}
        layout.label(text=rigged.name, icon="MESH_DATA")
        col = layout.column(align=True)
        for label, value in operators.stats_summary(stats):
            split = col.split(factor=0.5)
            split.label(text=label)
            split.label(text=value)


class SPRIG_PT_heatmap(bpy.types.Panel):
    bl_label = "Stability Heatmap"
    bl_idname = "SPRIG_PT_heatmap"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SPRig"
    bl_parent_id = "SPRIG_PT_main"

    @classmethod
    def poll(cls, context):
        return any(heatmap.has_heat_data(o) for o in context.scene.objects)

    def draw_header(self, context):
        self.layout.prop(context.window_manager.sprig_heatmap, "enabled", text="")

    def draw(self, context):
        settings = context.window_manager.sprig_heatmap
        layout = self.layout
        layout.active = settings.enabled
        layout.prop(settings, "mode", text="")
        layout.prop(settings, "scale_max")
        rigged = _rig_object(context)
        if settings.enabled and settings.mode == heatmap.DRIFT_MODE:
            armature = heatmap.armature_of(rigged)
            data = heatmap.joint_drift(armature)
            col = layout.column(align=True)
            if data is None:
                col.label(text="No joint drift in this rig's stats", icon="INFO")
            else:
                worst = int(np.nanargmax(data.values)) if np.isfinite(data.values).any() else 0
                col.label(text=f"Drift {float(np.nanmin(data.values)):.4g} - {float(np.nanmax(data.values)):.4g}")
                col.label(text=f"max at {data.bone_names[worst]}  (red at {heatmap.drift_scale(data):.3g})")
        elif settings.enabled and rigged is not None and heatmap.has_heat_data(rigged):
            values, vmax = heatmap.current_values(rigged, context.scene.frame_current, settings.mode)
            col = layout.column(align=True)
            col.label(text=f"Frame {context.scene.frame_current}: mean {float(values.mean()):.4g}")
            col.label(text=f"max {float(values.max()):.4g}  (red at {vmax:.3g})")


classes = (SPRIG_PT_main, SPRIG_PT_results, SPRIG_PT_heatmap)
