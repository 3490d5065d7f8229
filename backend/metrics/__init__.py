"""Rigging metrics: the paper's temporal-stability and static protocols, plus motion-compensated joint drift.

- ``alignment``: Kabsch / Procrustes alignment and joint correspondence (Hungarian matching).
- ``skeleton_stability``: PJDD, BLRD, GSD, JAD, MPJPE@Anchor (Eq. 28-32), anchor MST, topology flicker.
- ``static_skeleton``: CD-J2J, CD-J2B, CD-B2B (§10.6); joints outside the mesh (winding numbers).
- ``skinning``: Top-K mask, ``R`` and ``<., m>`` (Eq. 17-18, numpy or torch), L1 / SymKL / Entropy
  (Eq. 35-37), ``Cons_j`` / ``Delta_j`` (Eq. 38-39), static Precision / Recall / L1.
- ``drift``: motion-compensated joint drift (MCJD), a whole-clip stability measure.
- ``articulation``: joint separation (do a rig's bones stay attached at their joints on every frame); skin
  led by a far bone (does posing a bone move skin far from it).
- ``controls``: the no-learning k-means control skeleton every evaluation prints beside the models.
"""

from .articulation import bone_distances, far_led_share, joint_separation
from .controls import kmeans_joints, kmeans_skeleton
from .alignment import JointMatching, correspond, kabsch, match_joints, procrustes_align
from .drift import DriftResult, carry_joints, motion_compensated_joint_drift
from .skeleton_stability import (
    SkeletonStability,
    StabilityConfig,
    blrd,
    euclidean_mst,
    gsd,
    jad,
    mpjpe_anchor,
    pjdd,
    skeleton_stability,
)
from .skinning import (
    SkinConsistency,
    SkinningQuality,
    cons_improvement,
    joint_temporal_variance,
    masked_average,
    masked_entropy,
    masked_renormalize,
    skin_consistency,
    static_skinning_quality,
    teacher_l1,
    teacher_symkl,
    topk_mask,
)
from .static_skeleton import (
    FastWindingNumbers,
    StaticSkeletonQuality,
    cd_b2b,
    cd_j2b,
    cd_j2j,
    outside_fraction,
    sample_bones,
    static_skeleton_quality,
    surface_distance,
    winding_numbers,
)

__all__ = [
    "DriftResult", "FastWindingNumbers", "JointMatching", "SkeletonStability", "SkinConsistency", "SkinningQuality", "StabilityConfig",
    "StaticSkeletonQuality", "blrd", "bone_distances", "carry_joints", "cd_b2b", "cd_j2b", "cd_j2j", "cons_improvement", "correspond",
    "euclidean_mst", "far_led_share", "gsd", "jad", "joint_separation", "joint_temporal_variance", "kabsch", "masked_average", "masked_entropy",
    "masked_renormalize", "match_joints", "motion_compensated_joint_drift", "mpjpe_anchor", "outside_fraction", "pjdd",
    "procrustes_align", "sample_bones", "skeleton_stability", "skin_consistency", "static_skeleton_quality",
    "static_skinning_quality", "surface_distance", "teacher_l1", "teacher_symkl", "topk_mask", "winding_numbers",
]
