"""Scene options of a rig run, and runtime state (progress, heatmap toggle) on the window manager."""

from __future__ import annotations

import bpy

from . import heatmap, runner


# (identifier, label, description, number); the number stays fixed so a saved choice keeps its meaning
_DEVICES = (("auto", "Auto", "GPU if the backend has one, else CPU", 0), ("cpu", "CPU", "Run the models on the CPU", 1),
            ("cuda", "CUDA", "Run the models on the backend's NVIDIA GPU", 2))


def _device_items(self, context):
    """Auto and CPU always; CUDA unless the last Check Backend found none (``runner.last_info``)."""
    info = runner.last_info()
    if info is not None and not info.get("cuda_available", False):
        return _DEVICES[:2]
    return _DEVICES


class SPRIG_SceneSettings(bpy.types.PropertyGroup):
    """Options of the Rig Sequence operator, saved with the scene."""

    use_scene_range: bpy.props.BoolProperty(
        name="Scene Range", default=True, description="Rig the scene's frame range (else the range below)")
    frame_start: bpy.props.IntProperty(name="Start", default=1, description="First frame (the anchor)")
    frame_end: bpy.props.IntProperty(name="End", default=250, description="Last frame")
    frame_step: bpy.props.IntProperty(name="Step", default=1, min=1, soft_max=10,
                                      description="Use every n-th frame (in-between frames are interpolated)")
    at_shape_keys: bpy.props.BoolProperty(
        name="At Shape-Key Keys", default=True,
        description="When keyed shape keys alone animate the mesh, read it at their keys (the animation's own "
                    "poses, which can fall between frames) instead of at every frame: in between, a shape-key "
                    "animation is a blend of two poses, which changes the skeleton found from it")
    detail: bpy.props.EnumProperty(
        name="Detail", default="auto",
        items=[("auto", "Auto", "As many bones as the clip's motion and shape call for", 0),
               ("coarse", "Coarse", "Fewer bones: the moving parts and short chains", 1),
               ("fine", "Fine", "More bones along the limbs and the tail", 2),
               ("count", "Bone Count", "Aim at the bone count below", 3)],
        description="How many bones the skeleton found from the motion gets")
    bone_count: bpy.props.IntProperty(name="Bones", default=24, min=2, max=256,
                                      description="Bones to aim at (Detail: Bone Count)")
    max_influences: bpy.props.IntProperty(name="Max Influences", default=4, min=1, max=8,
                                          description="Bones per vertex at most (4 like glTF and game engines)")
    refine_motion: bpy.props.BoolProperty(
        name="Refine Motion", default=True,
        description="Alternate transform and weight refinement to lower the reconstruction error")
    bone_reach: bpy.props.FloatProperty(
        name="Bone Reach", default=0.25, min=0.0, max=10.0, soft_max=1.0, precision=2,
        description="A vertex's weights use only bones within this share of the model's size of it (plus its two "
                    "nearest and the one that moves most like it), so posing a bone moves no skin far from it; "
                    "0: any bone (a slightly lower error, but turning the head can move the tail)")
    device: bpy.props.EnumProperty(name="Device", items=_device_items, default=0,
                                   description="Where the backend runs the models (CUDA is listed when the last "
                                               "Check Backend found a GPU, or before any check)")
    heatmap_data: bpy.props.BoolProperty(
        name="Weight Stability Data", default=False,
        description="Also predict the weights on later frames for the Skinning Instability heatmap (slower; "
                    "always done when the heatmap is switched on)")
    hide_original: bpy.props.BoolProperty(
        name="Hide Original", default=True,
        description="Hide the original object after a run so the rigged copy is not drawn under it")
    replace_previous: bpy.props.BoolProperty(
        name="Replace Previous Rig", default=True,
        description="A new rig of the same object replaces the previous one (else both are kept)")
    rig_object: bpy.props.PointerProperty(name="Last Rig", type=bpy.types.Object,
                                          description="Rigged mesh made by the last run")

    def frame_range(self, scene: bpy.types.Scene) -> tuple[int, int, int]:
        if self.use_scene_range:
            return scene.frame_start, scene.frame_end, self.frame_step
        return self.frame_start, self.frame_end, self.frame_step

    def rig_options(self, heatmap_wanted: bool = False) -> dict:
        """Options sent to the backend (fields of ``backend.rigging.pipeline.RigConfig``); Blender's world is Z up.
        The heatmap stage runs when :attr:`heatmap_data` is on or ``heatmap_wanted`` (the heatmap is shown)."""
        return {"max_influences": int(self.max_influences), "refine": bool(self.refine_motion),
                "bone_reach": float(self.bone_reach),
                "device": self.device or "auto", "up_axis": "z", "heatmap": bool(self.heatmap_data or heatmap_wanted),
                "detail": str(int(self.bone_count)) if self.detail == "count" else self.detail}

    def refit_options(self) -> dict:
        """Options of a refit (no networks: no device, detail or heatmap)."""
        return {"max_influences": int(self.max_influences), "refine": bool(self.refine_motion),
                "bone_reach": float(self.bone_reach), "up_axis": "z"}


def _heatmap_toggle(self, context):
    if self.enabled:
        heatmap.enable(context)
    else:
        heatmap.disable(context)


def _heatmap_refresh(self, context):
    if self.enabled:
        heatmap.enable(context)


class SPRIG_HeatmapSettings(bpy.types.PropertyGroup):
    """Heatmap display state (not saved in files: the handlers do not survive a file load)."""

    enabled: bpy.props.BoolProperty(name="Stability Heatmap", default=False, update=_heatmap_toggle,
                                    description="Colour rigged meshes per frame: blue stable, red unstable")
    mode: bpy.props.EnumProperty(
        name="Show", default="INSTABILITY", update=_heatmap_refresh,
        items=[("INSTABILITY", "Skinning Instability", "Half L1 between this frame's weights and the anchor's"),
               ("RECON", "Reconstruction Error", "Distance between the rig's playback and the input, / box diagonal"),
               ("DRIFT", "Joint Drift (MCJD)",
                "Colour the armature's bones by their joint's motion-compensated drift over the clip (rigs on "
                "the skeleton network's joints only: the default skeleton from motion has no per-joint drift)")])
    scale_max: bpy.props.FloatProperty(name="Scale Max", default=0.0, min=0.0, soft_max=1.0, precision=4,
                                       update=_heatmap_refresh,
                                       description="Value shown as full red (0: the clip's 99th percentile; "
                                                   "the largest joint drift in the Joint Drift mode)")
    write_values: bpy.props.BoolProperty(
        name="Write Values", default=False, update=_heatmap_refresh,
        description="Also write each vertex's raw value into the 'sprig_heat_value' point attribute on every "
                    "frame (for geometry nodes, drivers or export); off by default, it costs playback time")


class SPRIG_Runtime(bpy.types.PropertyGroup):
    """Progress of the running job and the last backend check."""

    running: bpy.props.BoolProperty(default=False)
    stage: bpy.props.StringProperty(default="")
    progress: bpy.props.FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    backend_status: bpy.props.StringProperty(default="")


classes = (SPRIG_SceneSettings, SPRIG_HeatmapSettings, SPRIG_Runtime)


def register_properties() -> None:
    bpy.types.Scene.sprig = bpy.props.PointerProperty(type=SPRIG_SceneSettings)
    bpy.types.WindowManager.sprig_heatmap = bpy.props.PointerProperty(type=SPRIG_HeatmapSettings)
    bpy.types.WindowManager.sprig_runtime = bpy.props.PointerProperty(type=SPRIG_Runtime)


def unregister_properties() -> None:
    for owner, name in ((bpy.types.WindowManager, "sprig_runtime"), (bpy.types.WindowManager, "sprig_heatmap"),
                        (bpy.types.Scene, "sprig")):
        if hasattr(owner, name):
            delattr(owner, name)
