"""SPRig fine-tuning losses: skeleton (Eq. 2, 3, 8-16) and skinning (Eq. 5-7, 17-27)."""

from training.losses.skeleton_losses import (GeometryLossConfig, anchor_token_loss, batch_geometry_loss,
                                             expected_joint_positions, geometry_loss, skeleton_total_loss,
                                             symmetric_token_loss, token_loss, weighted_token_ce)
from training.losses.skinning_losses import SkinningLossConfig, batch_topk_mask, point_teacher, skinning_loss

__all__ = [
    "GeometryLossConfig", "anchor_token_loss", "batch_geometry_loss", "expected_joint_positions", "geometry_loss",
    "skeleton_total_loss", "symmetric_token_loss", "token_loss", "weighted_token_ce",
    "SkinningLossConfig", "batch_topk_mask", "point_teacher", "skinning_loss",
]
