"""Anchor bounding-box normalization (paper §4 "Setup").

Every frame is mapped with the anchor's axis-aligned bounding box: its centre goes to the origin and
its longest side to 1, so anchor coordinates lie in [-0.5, 0.5]. The inverse returns outputs to the
user's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorBox:
    """The similarity transform ``x_norm = (x - center) / scale`` fitted on the anchor frame."""

    center: np.ndarray  # float64 [3]
    scale: float  # longest side of the anchor's box, in the user's units

    @classmethod
    def fit(cls, anchor_verts: np.ndarray) -> "AnchorBox":
        """Fit on anchor vertices ``[V, 3]``."""
        anchor_verts = np.asarray(anchor_verts, dtype=np.float64)
        lo, hi = anchor_verts.min(axis=0), anchor_verts.max(axis=0)
        scale = float((hi - lo).max())
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError("anchor bounding box has zero size; cannot normalize")
        return cls(center=(lo + hi) / 2.0, scale=scale)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Normalize points ``[..., 3]`` (user units -> anchor-normalized)."""
        return ((np.asarray(points, dtype=np.float64) - self.center) / self.scale).astype(np.float32)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Map normalized points ``[..., 3]`` back to the user's units."""
        return (np.asarray(points, dtype=np.float64) * self.scale + self.center).astype(np.float32)

    def invert_transforms(self, transforms: np.ndarray) -> np.ndarray:
        """Map rigid/affine transforms ``[..., 4, 4]`` acting in normalized space to user space.

        If ``T`` maps normalized rest points to normalized posed points, the returned
        ``N^-1 T N`` maps user-space rest points to user-space posed points.
        """
        norm = np.eye(4)
        norm[:3, :3] /= self.scale
        norm[:3, 3] = -self.center / self.scale
        denorm = np.linalg.inv(norm)
        return (denorm @ np.asarray(transforms, dtype=np.float64) @ norm).astype(np.float32)


def anchor_normalize(verts: np.ndarray) -> tuple[np.ndarray, AnchorBox]:
    """Normalize every frame of ``verts [K, V, 3]`` by the anchor (frame 0) box.

    Returns the normalized float32 ``[K, V, 3]`` and the :class:`AnchorBox` for the inverse.
    """
    verts = np.asarray(verts)
    box = AnchorBox.fit(verts[0])
    return box.apply(verts), box
