"""What the rigger returns: one rig for a whole sequence, plus its stability report.

This is the contract between ``backend.rigging.pipeline`` (producer) and its consumers: the CLI and glTF export,
the subprocess server (which writes it as ``.npz`` with :meth:`RigResult.save`), and the Blender
add-on's armature builder and heatmap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..skeleton import bone_tails  # relative: the extension bundles a copy (scripts/build_extension.py)

ARRAY_FIELDS = ("anchor_verts", "faces", "joints", "parents", "weights", "bone_transforms",
                "frame_joints_count", "recon_error", "skin_instability")
TAIL_MIN_LENGTH = 1e-3  # default tails: every bone at least this fraction of the anchor box diagonal long


def default_tails(anchor_verts: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Bone tails ``float32 [J, 3]`` from :func:`backend.skeleton.bone_tails` (one child: on its head), every
    bone at least ``TAIL_MIN_LENGTH`` of the anchor box diagonal long."""
    a = np.asarray(anchor_verts, dtype=np.float64)
    diag = float(np.linalg.norm(a.max(axis=0) - a.min(axis=0))) if len(a) else 1.0
    return bone_tails(joints, parents, max(TAIL_MIN_LENGTH * diag, 1e-6)).astype(np.float32)


@dataclass
class RigResult:
    """One rig for a sequence, in the user's units.

    Attributes:
        anchor_verts: float32 ``[V, 3]`` the rest shape of the rig: the anchor frame, or near it where the fit
            solved the rest shape with the motion (``RigConfig.solve_rest``; ``stats["rest_moved_max"]`` says how
            far, as a fraction of the anchor box diagonal).
        faces: int32 ``[F, 3]``.
        joints: float32 ``[J, 3]`` canonical joint positions (anchor frame).
        parents: int32 ``[J]``, ``-1`` for the root; parents precede children.
        joint_names: ``J`` readable bone names.
        weights: float32 ``[V, J]`` rows on the simplex, at most ``max_influences`` non-zero.
        bone_transforms: float32 ``[K, J, 4, 4]`` rigid transforms from the rest shape to frame ``k``
            such that ``linear_blend_skinning(anchor_verts, weights, bone_transforms)`` reproduces frame k.
        frame_joints_count: int32 ``[K]`` joints predicted on each frame (topology-flicker diagnostics).
        recon_error: float32 ``[K, V]`` per-vertex reconstruction error / anchor box diagonal.
        skin_instability: float32 ``[K, V]`` in [0, 1]: half the L1 between frame-k weights and the
            anchor teacher (paper Fig. 5); frame 0 is 0.
        fps: frames per second.
        stats: JSON-serializable summary (joints, frames, recon_mean, pjdd, ... and per-frame curves).
        tails: float32 ``[J, 3]`` bone tails for armatures (a bone with one child ends on that child's joint,
            so the two can be connected); :func:`default_tails` when not given (also for files saved
            before tails existed).
        frame_predictions: only with ``RigConfig.per_frame_predictions``: per frame a dict with that
            frame's own ``joints [J_k, 3]`` (user units), ``parents [J_k]`` and ``weights [V, J_k]``.
            Not written by :meth:`save`.
    """

    anchor_verts: np.ndarray
    faces: np.ndarray
    joints: np.ndarray
    parents: np.ndarray
    joint_names: list[str]
    weights: np.ndarray
    bone_transforms: np.ndarray
    frame_joints_count: np.ndarray
    recon_error: np.ndarray
    skin_instability: np.ndarray
    fps: float = 30.0
    stats: dict = field(default_factory=dict)
    frame_predictions: list[dict] | None = None
    tails: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.tails is None:
            self.tails = default_tails(self.anchor_verts, self.joints, self.parents)
        self.tails = np.asarray(self.tails, dtype=np.float32)
        if self.tails.shape != np.shape(self.joints):
            raise ValueError(f"tails must have the joints' shape {list(np.shape(self.joints))}, "
                             f"got {list(self.tails.shape)}")

    @property
    def n_frames(self) -> int:
        return int(self.bone_transforms.shape[0])

    def save(self, path: str | Path) -> None:
        """Write as an uncompressed ``.npz`` (names and stats as JSON strings) to exactly ``path``.

        The file is opened here, so numpy does not append ``.npz`` to a path without that suffix.
        """
        arrays = {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS}
        with open(path, "wb") as fh:
            np.savez(fh, **arrays, tails=np.asarray(self.tails, dtype=np.float32),
                     joint_names=np.asarray(self.joint_names, dtype=str),
                     fps=np.float32(self.fps), stats=np.asarray(json.dumps(self.stats)))

    @classmethod
    def load(cls, path: str | Path) -> "RigResult":
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in ARRAY_FIELDS + ("joint_names", "fps", "stats") if n not in data.files]
            if missing:
                raise ValueError(f"{path}: not a rig result file (missing {', '.join(missing)})")
            kwargs = {name: data[name] for name in ARRAY_FIELDS}
            tails = data["tails"] if "tails" in data.files else None  # older files: computed
            return cls(**kwargs, joint_names=[str(s) for s in data["joint_names"]],
                       fps=float(data["fps"]), stats=json.loads(str(data["stats"])), tails=tails)
