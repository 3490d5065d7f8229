"""The skeleton a rig is built on (joints, hierarchy, names, tails, starting weights), whoever made it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.skeleton import SkeletonError, validate_tree


@dataclass
class RigSkeleton:
    """A skeleton to rig with: made from the clip's motion (:func:`backend.rigging.skeleton_from_motion.
    skeleton_from_motion`) or given to :func:`backend.rigging.pipeline.rig_sequence` (e.g. an edited one).

    Attributes:
        joints: float ``[J, 3]`` joint positions on the anchor frame, in the space of the vertices it was
            made from (given to ``rig_sequence``: the sequence's own units and axes).
        parents: int ``[J]``, ``-1`` for the (single) root; parents precede children.
        names: ``J`` bone names (default: ``root``, ``bone_<index>_d<depth>``).
        tails: float ``[J, 3]`` bone tails, same space as ``joints`` (default: :func:`backend.skeleton.bone_tails`).
        init_weights: float ``[V, J]`` skinning weights the motion fit starts from (default: the skinning
            network's prediction for this skeleton).
        stats: how it was made (parts, moving/static counts, mirror plane, seconds), JSON types.
    """

    joints: np.ndarray
    parents: np.ndarray
    names: list[str] = field(default_factory=list)
    tails: np.ndarray | None = None
    init_weights: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    def validate(self, n_verts: int) -> None:
        """Raise ValueError naming the first inconsistency."""
        joints = np.asarray(self.joints)
        parents = np.asarray(self.parents).reshape(-1)
        if joints.shape != (len(parents), 3):
            raise ValueError(f"skeleton joints must have shape [J, 3] = [{len(parents)}, 3], got {list(joints.shape)}")
        if not np.isfinite(joints).all():
            raise ValueError("skeleton joints must be finite")
        try:
            validate_tree(parents, n_joints=len(joints))
        except SkeletonError as exc:
            raise ValueError(f"invalid skeleton: {exc}") from exc
        if self.names and len(self.names) != len(parents):
            raise ValueError(f"{len(self.names)} skeleton names for {len(parents)} joints")
        if self.tails is not None and np.shape(self.tails) != joints.shape:
            raise ValueError(f"skeleton tails must have shape {list(joints.shape)}, got {list(np.shape(self.tails))}")
        if self.init_weights is not None:
            w = np.asarray(self.init_weights)
            if w.shape != (n_verts, len(parents)):
                raise ValueError(f"skeleton init_weights must have shape [V, J] = [{n_verts}, {len(parents)}], "
                                 f"got {list(w.shape)}")
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError("skeleton init_weights must be finite and non-negative")
