"""Anchor bounding-box normalization (paper §4 "Setup").

Every frame is mapped with the anchor's axis-aligned bounding box: its centre goes to the origin and
its longest side to 1, so anchor coordinates lie in [-0.5, 0.5]. The inverse returns outputs to the
user's units.

The models work Y-up (like glTF and the training corpus). Z-up input (Blender's world space) is turned
to Y-up with :data:`Z_UP_TO_Y_UP` inside the same map, and turned back by the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Blender's (x, y, z) with Z up -> (x, z, -y) with Y up (what Blender's glTF exporter does); a rotation.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
UP_AXES = ("y", "z")


@dataclass(frozen=True)
class AnchorBox:
    """The similarity transform ``x_norm = R (x - center) / scale`` fitted on the anchor frame.

    ``R`` (``rotation``) is the identity for Y-up input and :data:`Z_UP_TO_Y_UP` for Z-up input.
    """

    center: np.ndarray  # float64 [3]
    scale: float  # longest side of the anchor's box, in the user's units
    rotation: np.ndarray | None = None  # float64 [3, 3]; None = identity

    @classmethod
    def fit(cls, anchor_verts: np.ndarray, up_axis: str = "y") -> "AnchorBox":
        """Fit on anchor vertices ``[V, 3]`` whose up axis is ``up_axis`` (``"y"`` or ``"z"``)."""
        if up_axis not in UP_AXES:
            raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
        anchor_verts = np.asarray(anchor_verts, dtype=np.float64)
        lo, hi = anchor_verts.min(axis=0), anchor_verts.max(axis=0)
        scale = float((hi - lo).max())
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError("anchor bounding box has zero size; cannot normalize")
        return cls(center=(lo + hi) / 2.0, scale=scale, rotation=Z_UP_TO_Y_UP if up_axis == "z" else None)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Normalize points ``[..., 3]`` (user units -> anchor-normalized, Y up)."""
        out = (np.asarray(points, dtype=np.float64) - self.center) / self.scale
        if self.rotation is not None:
            out = out @ self.rotation.T
        return out.astype(np.float32)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Map normalized points ``[..., 3]`` back to the user's units (and up axis)."""
        out = np.asarray(points, dtype=np.float64)
        if self.rotation is not None:
            out = out @ self.rotation
        return (out * self.scale + self.center).astype(np.float32)

    def invert_transforms(self, transforms: np.ndarray) -> np.ndarray:
        """Map rigid/affine transforms ``[..., 4, 4]`` acting in normalized space to user space.

        If ``T`` maps normalized rest points to normalized posed points, the returned
        ``N^-1 T N`` maps user-space rest points to user-space posed points.
        """
        rot = np.eye(3) if self.rotation is None else self.rotation
        norm = np.eye(4)
        norm[:3, :3] = rot / self.scale
        norm[:3, 3] = -rot @ self.center / self.scale
        denorm = np.linalg.inv(norm)
        return (denorm @ np.asarray(transforms, dtype=np.float64) @ norm).astype(np.float32)


def anchor_normalize(verts: np.ndarray, up_axis: str = "y",
                     progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, AnchorBox]:
    """Normalize every frame of ``verts [K, V, 3]`` by the anchor (frame 0) box (Y up afterwards), a slice of
    frames at a time (``progress`` gets the fraction done after each slice).

    Returns the normalized float32 ``[K, V, 3]`` and the :class:`AnchorBox` for the inverse.
    """
    verts = np.asarray(verts)
    box = AnchorBox.fit(verts[0], up_axis)
    if verts.ndim != 3:
        return box.apply(verts), box
    out = np.empty(verts.shape, dtype=np.float32)
    step = max(1, (1 << 22) // max(verts.shape[1], 1))  # frames per slice: float64 temporaries stay ~100 MB
    for s in range(0, verts.shape[0], step):
        out[s:s + step] = box.apply(verts[s:s + step])
        if progress is not None:
            progress(min(s + step, verts.shape[0]) / verts.shape[0])
    return out, box
