"""Motion fitting: per-frame rigid bone transforms (and refined weights) that reproduce a mesh sequence.

Given the anchor mesh (the rig's rest pose, unless its rest shape is solved too: ``solve_rest`` below), skinning
weights and a skeleton, we look for rigid transforms ``T_kj`` (anchor space -> frame ``k``) such that linear
blend skinning of the anchor, ``x_kv ~= sum_j w_vj T_kj [a_v, 1]``, reproduces every frame.

1. **Start**: a weighted rigid (Kabsch) fit per bone and frame, bone ``j``'s vertices weighted by
   ``w_vj ** init_power``. Bones with too little (or degenerate, e.g. collinear) support borrow the
   motion of the closest well-supported ancestor, else of the closest well-supported bone in the tree.
   When the weights are refined, *motion clustering* follows (rigid k-means, the classic start of
   smooth skinning decomposition): every vertex goes to the bone whose rigid motion reproduces it best
   and every bone is re-fitted to its vertices. By default the clusters are grown by splitting from one
   global motion (:func:`split_motion_clusters`) and each is then given to the bone whose region in the
   given weights it overlaps most (:func:`match_clusters_to_bones`), so bones keep their identity; a
   second clustering starts each bone from the region the given weights assign it. These and the given
   weights' own start (by default all of them; ``FitConfig.start_trial_ratio``) are each refined for a
   few trial alternations, and the refinement goes on from the best.
2. **Refinement** (optional), alternating:

   * transforms: block-coordinate descent, one bone at a time; each bone's update is the exact
     weighted Procrustes minimiser of the squared LBS error with the other bones fixed, so the error
     never rises;
   * weights: per vertex, a small quadratic program on the simplex (non-negative, sum to one) over its
     candidate bones -- its current support plus the bones whose own rigid motion reproduces that vertex
     best (``candidates="motion"``), or the initial support plus its tree neighbours (``"tree"``) --
     with a Laplacian term pulling each row toward its mesh neighbours' mean, then pruned to
     ``max_influences`` and re-projected. A row is only accepted where it does not raise that vertex's
     squared error, so the total never rises;
   * smoothing: a few steps of Laplacian smoothing of the weights on the mesh graph, re-projected onto
     the candidates, ``max_influences`` and the simplex, kept where they give back at most part of the
     error decrease the weight solve just made (the error still never rises).
   * rest shape (``FitConfig.solve_rest``): every vertex's rest position, a 3x3 least-squares solve with
     its weights and the transforms fixed, pulled toward the anchor and kept where it lowers that vertex's
     error (:func:`~.solve.update_rest_pose`). The anchor frame is one pose of the clip, not the pose the
     skin was bound in; blending a bent anchor's skin again cannot reproduce the other frames exactly.

**Articulated mode** (``FitConfig.articulated``, the pipeline's default; :mod:`.articulated`): every
non-root bone moves by a rotation about its own joint in its parent's frame, so on every frame a child's
joint is exactly where its parent carries it and bones cannot fly apart; only roots translate. Every
start above is projected onto such motions (global rotations kept, translations carried from the root by
forward kinematics), and the transform update becomes a parents-first sweep of exact per-bone block
updates (bone ``j``'s subtree turned about its posed joint: a Kabsch fit without translation, so the
error never rises) followed by a few Levenberg-Marquardt steps on all the local rotations at once (the
per-bone descent creeps along chains; the joint step converges in a few steps, and a frame's step is
kept only where it lowers that frame's error). The weight solve is unchanged.

**Seams** (``FitConfig.weld_seams``): vertices at the same position on every frame (flat-shaded or
UV-split meshes) are fitted as one vertex, with the faces remapped so the Laplacian smoothing sees the
seam as connected, and all get the same weights, so the seam cannot open.

Transforms stay rigid (rotation + translation), so an armature can be keyed from them; the skeleton's
joints and topology are never changed. :func:`to_local_pose` / :func:`from_local_pose` convert between
these anchor-space deformation matrices and per-bone local rotations/translations relative to the parent.
"""

from .articulated import ArticulatedGaussNewton, project_to_articulated, subtrees, update_articulated_transforms
from .motion import FitCancelled, FitConfig, MotionFit, fit_motion
from .rigid import weighted_rigid_fits
from .solve import (candidate_bones, mesh_neighbours, motion_candidate_bones, project_simplex, rest_move_limits,
                    untangle_rest, update_rest_pose, update_transforms, update_weights)
from .sparse import prune_weights, reconstruction_error, skin_anchor
from .starts import cluster_by_motion, initial_transforms, match_clusters_to_bones, split_motion_clusters

__all__ = [
    "ArticulatedGaussNewton", "FitCancelled", "FitConfig", "MotionFit", "candidate_bones", "cluster_by_motion", "fit_motion",
    "initial_transforms", "match_clusters_to_bones", "mesh_neighbours", "motion_candidate_bones", "project_simplex",
    "project_to_articulated", "prune_weights", "reconstruction_error", "rest_move_limits", "skin_anchor",
    "split_motion_clusters", "subtrees", "untangle_rest", "update_articulated_transforms", "update_rest_pose",
    "update_transforms", "update_weights", "weighted_rigid_fits",
]
