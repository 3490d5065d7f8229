"""The SPRig tab in the 3D View sidebar."""

from __future__ import annotations

import json

import bpy
import numpy as np

from . import builder, heatmap, operators


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
        target = builder.source_of(obj) if obj is not None else None
        row = layout.row()
        if obj is None or not obj.select_get():
            row.label(text="Select the animated mesh", icon="ERROR")
        elif target is not None:
            row.label(text=f"{target.name} (rig again)", icon="OUTLINER_OB_MESH")
        else:
            row.label(text=obj.name, icon="OUTLINER_OB_MESH" if obj.type == "MESH" else "ERROR")

        col = layout.column(align=True)
        col.prop(settings, "use_scene_range")
        if settings.use_scene_range:
            col.label(text=f"Frames {scene.frame_start} - {scene.frame_end}")
        else:
            sub = col.row(align=True)
            sub.prop(settings, "frame_start")
            sub.prop(settings, "frame_end")
        col.operator("sprig.use_animated_range", icon="TIME")
        col.prop(settings, "frame_step")
        col.prop(settings, "at_shape_keys")

        col = layout.column(align=True)
        col.prop(settings, "detail")
        if settings.detail == "count":
            col.prop(settings, "bone_count")
        col.prop(settings, "max_influences")
        col.prop(settings, "refine_motion")
        col.prop(settings, "bone_reach")
        col.prop(settings, "heatmap_data")
        col.prop(settings, "device")
        col = layout.column(align=True)
        col.prop(settings, "replace_previous")
        col.prop(settings, "hide_original")

        if runtime.running:
            box = layout.box()
            box.progress(factor=runtime.progress, type="BAR",
                         text=operators.progress_text(runtime.stage, runtime.progress))
            box.operator("sprig.cancel_rig", icon="CANCEL")
        else:
            layout.operator("sprig.rig_sequence", icon="ARMATURE_DATA")
            if builder.rig_objects(obj) is not None:
                layout.label(text="Edit the bones, then:", icon="BONE_DATA")
                layout.operator("sprig.refit", icon="FILE_REFRESH")


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
        layout.label(text=rigged.name, icon="MESH_DATA")
        col = layout.column(align=True)
        for label, value, verdict in operators.plain_summary(_stats(rigged)):
            split = col.split(factor=0.45)
            split.label(text=label)
            split.label(text=f"{value}  ({verdict})" if verdict else value,
                        icon={"good": "CHECKMARK", "fair": "INFO", "poor": "ERROR"}.get(verdict, "NONE"))
        source = builder.source_of(rigged)
        if source is not None:
            hidden = source.hide_get()
            op = layout.operator("sprig.show_original", text="Show Original" if hidden else "Hide Original",
                                 icon="HIDE_ON" if hidden else "HIDE_OFF")
            op.show, op.rig = hidden, rigged.name


class SPRIG_PT_result_details(bpy.types.Panel):
    """The backend's research metrics (see docs/metrics.md), folded by default."""

    bl_label = "Details"
    bl_idname = "SPRIG_PT_result_details"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SPRig"
    bl_parent_id = "SPRIG_PT_results"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        col = self.layout.column(align=True)
        for label, value in operators.stats_summary(_stats(_rig_object(context))):
            split = col.split(factor=0.5)
            split.label(text=label)
            split.label(text=value)


def _stats(rigged: bpy.types.Object | None) -> dict:
    try:
        return json.loads(rigged["sprig_stats"])
    except (KeyError, ValueError, TypeError):
        return {}


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
        if settings.mode != heatmap.DRIFT_MODE:
            layout.prop(settings, "write_values")
        rigged = _rig_object(context)
        if settings.enabled and settings.mode == heatmap.DRIFT_MODE:
            armature = heatmap.armature_of(rigged)
            data = heatmap.joint_drift(armature)
            col = layout.column(align=True)
            if data is None:
                col.label(text="No joint drift in this rig's stats", icon="INFO")
                col.label(text="(only rigs on the network's skeleton have it)")
            else:
                worst = int(np.nanargmax(data.values)) if np.isfinite(data.values).any() else 0
                col.label(text=f"Drift {float(np.nanmin(data.values)):.4g} - {float(np.nanmax(data.values)):.4g}")
                col.label(text=f"max at {data.bone_names[worst]}  (red at {heatmap.drift_scale(data):.3g})")
        elif settings.enabled and rigged is not None and heatmap.has_heat_data(rigged):
            values, vmax = heatmap.current_values(rigged, context.scene.frame_current, settings.mode)
            col = layout.column(align=True)
            if heatmap.shown_mode(rigged, settings.mode) != settings.mode:
                col.label(text="No weight data: showing Reconstruction Error", icon="INFO")
                col.label(text="(tick Weight Stability Data and rig again)")
            col.label(text=f"Frame {context.scene.frame_current}: mean {float(values.mean()):.4g}")
            col.label(text=f"max {float(values.max()):.4g}  (red at {vmax:.3g})")


classes = (SPRIG_PT_main, SPRIG_PT_results, SPRIG_PT_result_details, SPRIG_PT_heatmap)
