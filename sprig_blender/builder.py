"""Build Blender data from a rig result: rigged mesh copy, Armature, vertex groups, modifier, Action.

Everything is created in a new collection. If anything fails, every data-block created so far is
removed again, so an error leaves the file as it was. The source object is only read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from dataclasses import dataclass, field

import bpy
import mathutils
import numpy as np

from . import convert, export, heatmap

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The result does not fit the object it should rig (the message says why)."""


@dataclass
class BuiltRig:
    """What :func:`build_rig` created."""

    collection: bpy.types.Collection
    mesh_object: bpy.types.Object
    armature_object: bpy.types.Object
    action: bpy.types.Action
    bone_names: list[str]


@dataclass
class _Created:
    """Data-blocks created so far, for clean-up on failure."""

    objects: list = field(default_factory=list)
    meshes: list = field(default_factory=list)
    armatures: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    collections: list = field(default_factory=list)

    def remove_all(self) -> None:
        for obj in self.objects:
            if obj.name in bpy.data.objects:
                bpy.data.objects.remove(obj, do_unlink=True)
        for items, store in ((self.meshes, bpy.data.meshes), (self.armatures, bpy.data.armatures),
                             (self.actions, bpy.data.actions), (self.collections, bpy.data.collections)):
            for item in items:
                try:
                    store.remove(item, do_unlink=True)
                except (ReferenceError, RuntimeError):
                    pass


def validate_result(result, n_verts: int, n_frames: int) -> None:
    """Check a result's array shapes against the exported sequence.

    Raises:
        BuildError: naming the mismatch.
    """
    J = len(result.joint_names)
    checks = [
        ("anchor_verts", result.anchor_verts.shape, (n_verts, 3)),
        ("joints", result.joints.shape, (J, 3)),
        ("parents", result.parents.shape, (J,)),
        ("weights", result.weights.shape, (n_verts, J)),
        ("bone_transforms", result.bone_transforms.shape, (n_frames, J, 4, 4)),
        ("recon_error", result.recon_error.shape, (n_frames, n_verts)),
        ("skin_instability", result.skin_instability.shape, (n_frames, n_verts)),
    ]
    for name, got, want in checks:
        if tuple(got) != want:
            raise BuildError(f"the backend returned {name} of shape {list(got)}, expected {list(want)}")
    if J < 1:
        raise BuildError("the backend returned a skeleton with no joints")
    parents = np.asarray(result.parents)
    if np.any(parents >= np.arange(J)):
        raise BuildError("the backend's skeleton is not ordered parents-first")


def build_rig(context: bpy.types.Context, source: bpy.types.Object, result, frames: list[float],
              stats: dict | None = None, parent_matrices: np.ndarray | None = None) -> BuiltRig:
    """Create the rigged copy of ``source`` from ``result`` (a ``RigResult``) keyed at scene ``frames``:
    :func:`build_rig_steps` run to the end. Raises ``BuildError`` (the result does not fit; nothing is left
    behind)."""
    return convert.run_to_end(build_rig_steps(context, source, result, frames, stats, parent_matrices), context)


def build_rig_steps(context: bpy.types.Context, source: bpy.types.Object, result, frames: list[float],
                    stats: dict | None = None,
                    parent_matrices: np.ndarray | None = None) -> Generator[str, bpy.types.Context, BuiltRig]:
    """Create the rigged copy of ``source`` from ``result`` (a ``RigResult``) keyed at scene ``frames``, one
    step at a time: yields what it does next (a few words, for the status bar; no step takes a second on a
    200k-vertex mesh) and returns the :class:`BuiltRig`. Advance it with ``send(context)``, the context of
    the call that runs the step (a modal operator's context is valid only during its call). Closed before the
    end, or failing, it removes everything it made (using ``bpy.context``).

    Args:
        source: the animated mesh object that was exported (read only).
        result: rig in world space: ``anchor_verts [V, 3]``, ``faces``, ``joints [J, 3]``, ``parents [J]``,
            ``joint_names``, ``weights [V, J]``, ``bone_transforms [K, J, 4, 4]``, ``recon_error [K, V]``,
            ``skin_instability [K, V]``, ``stats``.
        frames: ``K`` scene frames the result's frames correspond to (``frames[0]`` is the anchor).
        parent_matrices: float ``[K, 4, 4]`` the world matrix per frame of the source's Empty parent
            (:func:`export.kept_parent`, :attr:`export.ExportedFrames.parent_matrices`): the armature is then
            parented to that Empty and its keys hold the motion relative to it. None: no parent kept.
    Raises:
        BuildError: the result does not fit; nothing is left behind.
    """
    anchor = np.asarray(result.anchor_verts, dtype=np.float32)
    validate_result(result, n_verts=anchor.shape[0], n_frames=len(frames))
    created = _Created()
    view_layer = context.view_layer
    previous_active = view_layer.objects.active
    previous_selected = [o for o in context.selected_objects]
    try:
        built = yield from _build(context, source, result, frames, stats or dict(result.stats), created,
                                  parent_matrices)
    except BaseException:  # an error, or closed (GeneratorExit) by a cancel
        if bpy.context.mode != "OBJECT" and bpy.ops.object.mode_set.poll():
            bpy.ops.object.mode_set(mode="OBJECT")
        created.remove_all()
        if previous_active is not None and previous_active.name in view_layer.objects:
            view_layer.objects.active = previous_active
        for obj in previous_selected:
            if obj.name in view_layer.objects:
                obj.select_set(True)
        raise
    return built


def _build(context, source, result, frames, stats, created: _Created,
           parent_matrices: np.ndarray | None) -> Generator[str, bpy.types.Context, BuiltRig]:
    context = (yield "armature") or context
    scene = context.scene
    base = source.name
    anchor = np.asarray(result.anchor_verts, dtype=np.float64)

    collection = bpy.data.collections.new(f"{base}_SPRig")
    created.collections.append(collection)
    scene.collection.children.link(collection)

    mesh_obj = _rigged_mesh(context, source, frames[0], anchor, created)
    collection.objects.link(mesh_obj)

    arm_data = bpy.data.armatures.new(f"{base}_rig")
    created.armatures.append(arm_data)
    arm_obj = bpy.data.objects.new(f"{base}_rig", arm_data)
    created.objects.append(arm_obj)
    collection.objects.link(arm_obj)
    parent = export.kept_parent(source)
    if parent is not None and parent_matrices is not None:  # under the same Empty, at the world place it had
        arm_obj.parent = parent
        arm_obj.matrix_parent_inverse = mathutils.Matrix(np.linalg.inv(parent_matrices[0]).tolist())
    arm_data.display_type = "OCTAHEDRAL"
    arm_obj.show_in_front = True

    diag = float(np.linalg.norm(anchor.max(axis=0) - anchor.min(axis=0)))
    transforms = np.asarray(result.bone_transforms, dtype=np.float64)
    # bones whose motion is a rotation about their joint in the parent's frame (the articulated fit):
    # rotation keys only, and connected to a one-child parent
    attached = convert.attached_bones(result.joints, result.parents, transforms, ATTACHED_TOL * max(diag, 1e-12))
    bone_names = _edit_bones(context, arm_obj, result, attached, tol=ATTACHED_TOL * max(diag, 1e-12))

    context = (yield "vertex groups") or context
    for share in _vertex_groups_steps(mesh_obj, bone_names, np.asarray(result.weights, dtype=np.float32)):
        context = (yield f"vertex groups {100 * share:.0f}%") or context
    mesh_obj.parent = arm_obj
    mesh_obj.matrix_parent_inverse = mathutils.Matrix.Identity(4)
    modifier = mesh_obj.modifiers.new("SPRig Armature", "ARMATURE")
    modifier.object = arm_obj
    modifier.use_vertex_groups = True
    for original in export.surface_modifiers(source):  # the source's subdivision, again on top of the rig
        _copy_modifier(original, mesh_obj)

    context = (yield "animation") or context
    rest = np.array([np.array(arm_data.bones[name].matrix_local, dtype=np.float64) for name in bone_names])
    action = _keyframes(arm_obj, bone_names, rest, np.asarray(result.parents),
                        in_armature_space(arm_obj, transforms, parent_matrices), attached, frames,
                        f"{base}_motion", created, KEY_TOL * max(diag, 1e-12))

    context = (yield "heatmap data") or context
    kept = _instability_frames(stats, len(frames))  # frame indices, None without the heatmap stage
    instability = None if kept is None else np.asarray(result.skin_instability, dtype=np.float32)[kept]
    for share in heatmap.store_heat_data_steps(mesh_obj.data, frames, np.asarray(result.recon_error, dtype=np.float32),
                                               instability, None if kept is None else [frames[k] for k in kept]):
        context = (yield f"heatmap data {100 * share:.0f}%") or context
    stats = dict(stats)
    stats.setdefault("joints", len(bone_names))
    stats.setdefault("frames", len(frames))
    for obj in (mesh_obj, arm_obj):
        obj["sprig_stats"] = json.dumps(stats, default=float)
        obj["sprig_source"] = source.name
        obj[FRAMES_KEY] = [float(f) for f in frames]
    mesh_obj["sprig_armature"] = arm_obj.name
    arm_obj[heatmap.BONE_NAMES_KEY] = list(bone_names)  # joint order, for per-joint values such as drift

    for obj in context.selected_objects:
        obj.select_set(False)
    mesh_obj.select_set(True)  # the rigged mesh stays active: Rig Sequence again re-rigs its source
    context.view_layer.objects.active = mesh_obj
    return BuiltRig(collection, mesh_obj, arm_obj, action, bone_names)


FRAMES_KEY = "sprig_frames"  # scene frames the rig was fitted to (frames[0] is the rest pose), on both objects


def rig_objects(obj: bpy.types.Object | None) -> tuple[bpy.types.Object, bpy.types.Object] | None:
    """``(rigged mesh, armature)`` of a rig SPRig made, from either object (None for other objects)."""
    if obj is None or "sprig_source" not in obj:
        return None
    if obj.type == "MESH":
        armature = next((m.object for m in obj.modifiers if m.type == "ARMATURE" and m.object is not None), None)
        mesh = obj
    elif obj.type == "ARMATURE":
        armature = obj
        mesh = next((o for o in bpy.data.objects if o.type == "MESH" and "sprig_source" in o
                     and any(m.type == "ARMATURE" and m.object == obj for m in o.modifiers)), None)
    else:
        return None
    if mesh is None or armature is None or armature.type != "ARMATURE" or "sprig_source" not in armature:
        return None
    return mesh, armature


def rig_frames(mesh_obj: bpy.types.Object) -> list[float]:
    """The scene frames a rig was fitted to (an animation's key times may fall between frames; rigs made before
    they were stored: the heat data's frames)."""
    stored = mesh_obj.get(FRAMES_KEY)
    if stored is None:
        stored = mesh_obj.data.get(heatmap.FRAMES_KEY)
    if stored is None:
        raise BuildError(f"'{mesh_obj.name}' does not say which frames it was rigged on; run Rig Sequence again")
    return [float(f) for f in stored]


def edited_skeleton(arm_obj: bpy.types.Object) -> dict:
    """The armature's bones as the refit request takes them: ``{"names", "parents" (names or None), "heads",
    "tails"}``, heads and tails ``[J, 3]`` in armature space (the space the rig was fitted in) at rest.

    Raises:
        BuildError: the armature has no bones.
    """
    bones = arm_obj.data.bones
    if len(bones) == 0:
        raise BuildError(f"'{arm_obj.name}' has no bones left to fit")
    return {"names": [b.name for b in bones], "parents": [b.parent.name if b.parent else None for b in bones],
            "heads": [list(b.head_local) for b in bones], "tails": [list(b.tail_local) for b in bones]}


def in_armature_space(arm_obj: bpy.types.Object, transforms: np.ndarray,
                      parent_matrices: np.ndarray | None) -> np.ndarray:
    """World-space bone transforms ``[K, J, 4, 4]`` (anchor -> frame k) as the armature's keys need them: for an
    armature under an Empty, each frame's taken relative to where the Empty carries the armature that frame
    (``inverse(parent_k @ matrix_parent_inverse @ matrix_basis)`` times them); unchanged without one."""
    if arm_obj.parent is None or parent_matrices is None:
        return transforms
    local = np.array(arm_obj.matrix_parent_inverse, dtype=np.float64) @ np.array(arm_obj.matrix_basis,
                                                                                  dtype=np.float64)
    carried = np.linalg.inv(np.asarray(parent_matrices, dtype=np.float64) @ local)  # [K, 4, 4]
    return carried[:, None] @ transforms


def apply_refit(context: bpy.types.Context, mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object, result,
                frames: list[float], parent_matrices: np.ndarray | None = None) -> None:
    """Put a refit's weights and motion on an existing rig, keeping its armature's bones as the user edited them.

    The result's bones are matched to the armature's by name. The mesh's vertex groups of the old and new
    bones are replaced, the Action is replaced by a new one (same name), the heat data holds the new
    reconstruction error (the instability belonged to the old skeleton and is dropped), the mesh takes the
    refit's rest shape (``result.anchor_verts``, world space like the rig's), and a child bone
    whose head lies on its parent's tail is connected to it. Run inside an operator with ``UNDO``: one undo
    step puts everything back.

    Raises:
        BuildError: the result does not fit the rig (shapes, or bones that are not the armature's); nothing
            is changed then.
    """
    anchor = np.asarray(result.anchor_verts, dtype=np.float64)
    if anchor.shape[0] != len(mesh_obj.data.vertices):
        raise BuildError(f"the refit has {anchor.shape[0]} vertices but '{mesh_obj.name}' has "
                         f"{len(mesh_obj.data.vertices)}")
    validate_result(result, n_verts=anchor.shape[0], n_frames=len(frames))
    bones = arm_obj.data.bones
    names = [str(n) for n in result.joint_names]
    if sorted(names) != sorted(b.name for b in bones):
        raise BuildError(f"the refit's bones ({len(names)}) are not the bones of '{arm_obj.name}' "
                         f"({len(bones)}); was the armature edited while fitting?")
    diag = float(np.linalg.norm(anchor.max(axis=0) - anchor.min(axis=0)))
    tol = ATTACHED_TOL * max(diag, 1e-12)
    transforms = np.asarray(result.bone_transforms, dtype=np.float64)
    parents = np.asarray(result.parents)
    attached = convert.attached_bones(result.joints, parents, transforms, tol)
    rest = np.array([np.array(bones[name].matrix_local, dtype=np.float64) for name in names])
    old_action = arm_obj.animation_data.action if arm_obj.animation_data is not None else None
    action_name = old_action.name if old_action is not None else f"{arm_obj.get('sprig_source', arm_obj.name)}_motion"
    created = _Created()
    try:
        for pose_bone in arm_obj.pose.bones:  # nothing of the old motion stays on channels the new one leaves unkeyed
            pose_bone.location = (0.0, 0.0, 0.0)
            pose_bone.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
            pose_bone.scale = (1.0, 1.0, 1.0)
        action = _keyframes(arm_obj, names, rest, parents, in_armature_space(arm_obj, transforms, parent_matrices),
                            attached, frames, f"{action_name}_refit", created, KEY_TOL * max(diag, 1e-12))
    except Exception:
        created.remove_all()
        if arm_obj.animation_data is not None:
            arm_obj.animation_data.action = old_action
        raise
    if old_action is not None and old_action.users == 0:
        bpy.data.actions.remove(old_action)
    action.name = action_name
    _connect_edited(context, arm_obj, names, parents, attached, tol)
    replaced = set(arm_obj.get(heatmap.BONE_NAMES_KEY, [])) | set(names)
    for group in list(mesh_obj.vertex_groups):
        if group.name in replaced:
            mesh_obj.vertex_groups.remove(group)
    _vertex_groups(mesh_obj, names, np.asarray(result.weights, dtype=np.float32))
    # the refit's rest shape (RigConfig.solve_rest) is the one its motion poses
    mesh_obj.data.vertices.foreach_set("co", anchor.astype(np.float32).ravel())
    mesh_obj.data.update()
    heatmap.store_heat_data(mesh_obj.data, frames, np.asarray(result.recon_error, dtype=np.float32))
    stats = dict(result.stats)
    stats.setdefault("joints", len(names))
    stats.setdefault("frames", len(frames))
    for obj in (mesh_obj, arm_obj):
        obj["sprig_stats"] = json.dumps(stats, default=float)
        obj[FRAMES_KEY] = [float(f) for f in frames]
    arm_obj[heatmap.BONE_NAMES_KEY] = names


def _connect_edited(context, arm_obj, names: list[str], parents: np.ndarray, attached: np.ndarray,
                    tol: float) -> None:
    """Connect (``use_connect``) each attached bone whose head lies on its parent's tail, as a built rig has it."""
    bones = arm_obj.data.bones
    wanted = [names[j] for j, p in enumerate(parents.tolist())
              if p >= 0 and attached[j] and not bones[names[j]].use_connect
              and (bones[names[j]].head_local - bones[names[p]].tail_local).length <= tol]
    if not wanted:
        return
    view_layer = context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        for name in wanted:
            arm_obj.data.edit_bones[name].use_connect = True
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous_active
    log.info("refit: connected %d bone(s) to their parents", len(wanted))


def _instability_frames(stats: dict, n_frames: int) -> list[int] | None:
    """Indices of the frames whose skinning instability the backend computed (``stats["skin_frames"]``; in
    between it interpolates linearly, as the heatmap does), every frame when the stats do not say, None
    when the rig was made without the heatmap stage."""
    config = stats.get("config")
    if isinstance(config, dict) and config.get("heatmap") is False:
        return None
    listed = stats.get("skin_frames")
    if isinstance(listed, list) and listed and all(isinstance(k, int) and 0 <= k < n_frames for k in listed):
        return sorted(set(listed))
    return list(range(n_frames))


def result_names(source_name: str) -> dict[str, str]:
    """Names a rig of the object ``source_name`` gets: collection, rigged mesh, armature, action."""
    return {"collection": f"{source_name}_SPRig", "mesh": f"{source_name}_rigged", "armature": f"{source_name}_rig",
            "action": f"{source_name}_motion"}


def previous_results(source: bpy.types.Object, keep: BuiltRig | None = None) -> list[bpy.types.Object]:
    """Objects made by earlier rigs of ``source`` (rigged meshes and armatures), other than ``keep``'s."""
    kept = {keep.mesh_object.as_pointer(), keep.armature_object.as_pointer()} if keep is not None else set()
    return [obj for obj in bpy.data.objects
            if obj.get("sprig_source") == source.name and obj.as_pointer() not in kept]


def replace_previous(built: BuiltRig, source: bpy.types.Object) -> int:
    """Remove earlier rigs of ``source`` (objects, their mesh, armature and action when nothing else uses
    them, and their collections once empty), then give ``built`` the plain names (no ``.001``).
    Returns the number of objects removed."""
    old_objects = previous_results(source, keep=built)
    collections = {c for obj in old_objects for c in obj.users_collection if c != built.collection}
    datas = [obj.data for obj in old_objects]
    actions = [obj.animation_data.action for obj in old_objects
               if obj.animation_data is not None and obj.animation_data.action is not None]
    for obj in old_objects:
        bpy.data.objects.remove(obj, do_unlink=True)
    for block in datas + actions:
        if block.users == 0:
            store = {"MESH": bpy.data.meshes, "ARMATURE": bpy.data.armatures}.get(getattr(block, "id_type", ""),
                                                                                 bpy.data.actions)
            store.remove(block)
    for collection in collections:
        if not collection.objects and not collection.children:
            bpy.data.collections.remove(collection)
    heatmap.clear_cache()  # cached heat values are keyed by mesh name, which the new rig takes over
    names = result_names(source.name)
    built.collection.name = names["collection"]
    built.mesh_object.name = built.mesh_object.data.name = names["mesh"]
    built.armature_object.name = built.armature_object.data.name = names["armature"]
    built.action.name = names["action"]
    built.mesh_object["sprig_armature"] = built.armature_object.name
    return len(old_objects)


def set_source_visible(source: bpy.types.Object, visible: bool) -> None:
    """Show or hide the original object in the viewport and in renders (it is otherwise left alone)."""
    source.hide_set(not visible)
    source.hide_render = not visible


def source_of(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The original object a rigged mesh or armature was made from (None for other objects or when it is gone)."""
    name = obj.get("sprig_source") if obj is not None else None
    return bpy.data.objects.get(name) if isinstance(name, str) else None


def _copy_modifier(original: bpy.types.Modifier, target: bpy.types.Object) -> bpy.types.Modifier:
    """A modifier on ``target`` with ``original``'s type, name and settings (every writable property)."""
    copy = target.modifiers.new(original.name, original.type)
    for prop in original.bl_rna.properties:
        if prop.is_readonly or prop.identifier in ("name", "type") or prop.type in ("POINTER", "COLLECTION"):
            continue
        try:
            setattr(copy, prop.identifier, getattr(original, prop.identifier))
        except (AttributeError, TypeError, ValueError):  # a setting this Blender does not let a script set
            log.debug("modifier %s: %s not copied", original.name, prop.identifier)
    return copy


def _rigged_mesh(context, source, anchor_frame: float, anchor: np.ndarray, created: _Created) -> bpy.types.Object:
    """A mesh object ``<name>_rigged`` holding the evaluated source at the anchor frame, in world space (under
    its :func:`export.surface_modifiers`, which the rigged copy gets on top of its rig)."""
    scene = context.scene
    original_frame, original_subframe = scene.frame_current, scene.frame_subframe
    try:
        export.set_scene_frame(scene, anchor_frame)
        with export.cage_of(source):  # the frames were read under a Subdivision Surface on top: so is the copy
            depsgraph = context.evaluated_depsgraph_get()
            evaluated = source.evaluated_get(depsgraph)
            mesh = bpy.data.meshes.new_from_object(evaluated, preserve_all_data_layers=True, depsgraph=depsgraph)
            created.meshes.append(mesh)
            mesh.transform(evaluated.matrix_world)
    finally:
        scene.frame_set(original_frame, subframe=original_subframe)
    mesh.name = f"{source.name}_rigged"
    if len(mesh.vertices) != anchor.shape[0]:
        raise BuildError(f"'{source.name}' has {len(mesh.vertices)} vertices at the anchor frame but the rig has "
                         f"{anchor.shape[0]}")
    mesh.vertices.foreach_set("co", anchor.astype(np.float32).ravel())
    for name in [a.name for a in mesh.attributes if a.name in _SELECTION_ATTRIBUTES]:
        mesh.attributes.remove(mesh.attributes[name])  # the original's selection state: not worth saving twice
    mesh.update()
    obj = bpy.data.objects.new(f"{source.name}_rigged", mesh)
    created.objects.append(obj)
    obj.vertex_groups.clear()  # groups carried over from the source's own deformation
    return obj


def _edit_bones(context, arm_obj, result, attached: np.ndarray, tol: float) -> list[str]:
    """Create bones (heads on joints, tails from the result, consistent rolls); an attached bone starting on
    its parent's tail is connected (see :func:`convert.connected_bones`)."""
    joints = np.asarray(result.joints, dtype=np.float64)
    parents = np.asarray(result.parents)
    tails = np.asarray(result.tails, dtype=np.float64)
    connect = convert.connected_bones(joints, parents, tails, attached, tol)
    roll_axes = convert.roll_reference_axes(joints, tails)
    view_layer = context.view_layer
    for obj in context.selected_objects:
        obj.select_set(False)
    view_layer.objects.active = arm_obj
    arm_obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit_bones = arm_obj.data.edit_bones
        names: list[str] = []
        for j, name in enumerate(result.joint_names):
            bone = edit_bones.new(str(name) or f"joint_{j:02d}")
            bone.head = joints[j]
            bone.tail = tails[j]
            bone.align_roll(roll_axes[j])
            bone.use_deform = True
            if parents[j] >= 0:
                bone.parent = edit_bones[names[parents[j]]]
                # a connected child keeps its head on the parent's tail; others are parented only (an attached
                # one still cannot separate: its motion is a rotation in the parent's frame)
                bone.use_connect = bool(connect[j])
            names.append(bone.name)  # Blender may shorten or de-duplicate names
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    if len(arm_obj.data.bones) != len(names):
        raise BuildError(f"Blender kept {len(arm_obj.data.bones)} of {len(names)} bones")
    return names


def _vertex_groups(mesh_obj, bone_names: list[str], weights: np.ndarray) -> None:
    """One vertex group per bone holding that bone's non-zero weights ``weights [V, J]``."""
    for _ in _vertex_groups_steps(mesh_obj, bone_names, weights):
        pass


VERTEX_GROUP_SLICE = 250_000  # weights written per step of :func:`_vertex_groups_steps` (about 0.25 s)


def _vertex_groups_steps(mesh_obj, bone_names: list[str], weights: np.ndarray) -> Generator[float, None, None]:
    """:func:`_vertex_groups` in slices of about ``VERTEX_GROUP_SLICE`` weights: yields the share written."""
    total = max(int(np.count_nonzero(weights)), 1)
    written = since = 0
    for j, name in enumerate(bone_names):
        group = mesh_obj.vertex_groups.new(name=name)
        column = weights[:, j]
        for v in np.flatnonzero(column > 0.0).tolist():
            group.add([v], float(column[v]), "REPLACE")
            written += 1
            since += 1
            if since >= VERTEX_GROUP_SLICE:
                since = 0
                yield written / total


def _keyframes(arm_obj, bone_names, rest, parents, transforms, attached, frames, action_name,
               created, length_tol: float) -> bpy.types.Action:
    """Key rotation quaternions per bone, locations on roots and on bones that are not ``attached`` (whose joint
    leaves the parent's), scale if the transforms scale; on each exported frame where the channel carries
    information (:func:`convert.needed_keys`: keys that linear interpolation reproduces within ``KEY_TOL`` of a
    quaternion component / scale, ``length_tol`` of a location, are left out)."""
    basis = convert.pose_basis_matrices(rest, parents, transforms)  # [K, J, 4, 4]
    K, J = basis.shape[:2]
    loc = np.zeros((K, J, 3))
    quat = np.zeros((K, J, 4))
    scale = np.ones((K, J, 3))
    for j in range(J):
        previous = None
        for k in range(K):
            t, q, s = mathutils.Matrix(basis[k, j].tolist()).decompose()
            if previous is not None:
                q.make_compatible(previous)  # shortest path between consecutive keys
            previous = q
            loc[k, j], quat[k, j], scale[k, j] = t, q, s
    keyed_scale = bool(np.abs(scale - 1.0).max() > 1e-4)

    action = bpy.data.actions.new(action_name)
    created.actions.append(action)
    arm_obj.animation_data_create()
    arm_obj.animation_data.action = action
    frames_f = np.asarray(frames, dtype=np.float64)
    channels = [("location", loc), ("rotation_quaternion", quat)] + ([("scale", scale)] if keyed_scale else [])
    for j, name in enumerate(bone_names):
        pose_bone = arm_obj.pose.bones[name]
        pose_bone.rotation_mode = "QUATERNION"
        for prop, values in channels:
            if prop == "location" and attached[j]:
                continue  # its basis location is zero on every frame
            path = f'pose.bones["{bpy.utils.escape_identifier(name)}"].{prop}'
            keep = convert.needed_keys(frames_f, values[:, j], length_tol if prop == "location" else KEY_TOL)
            n_keys = int(keep.sum())
            for axis in range(values.shape[2]):
                curve = action.fcurve_ensure_for_datablock(arm_obj, path, index=axis, group_name=name)
                curve.keyframe_points.add(n_keys)
                co = np.stack([frames_f[keep], values[keep, j, axis]], axis=1).ravel()
                curve.keyframe_points.foreach_set("co", co)
                curve.keyframe_points.foreach_set("interpolation", [_LINEAR] * n_keys)
                curve.update()
    return action


_SELECTION_ATTRIBUTES = (".select_vert", ".select_edge", ".select_poly")
# keys that linear interpolation reproduces within this (a quaternion component or scale; locations: this
# fraction of the anchor box diagonal) are left out: a rotation off by at most ~4e-6 rad, far below the fit's error
KEY_TOL = 1e-6
ATTACHED_TOL = 1e-5  # of the anchor box diagonal: a child joint this close to where its parent carries it is attached
_LINEAR = 1  # enum value of 'LINEAR' in Keyframe.interpolation
