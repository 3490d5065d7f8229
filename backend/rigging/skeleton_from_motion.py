"""A skeleton from the clip itself: rigid parts by motion, joints at their centres of rotation, chains
along the shape where nothing moves.

Steps (all numpy/scipy, on the anchor-normalized clip):

1. weld co-located vertices (same position on every frame, e.g. flat-shaded seams): they are one vertex
   for everything below and get identical ``init_weights`` rows;
2. rigid parts by motion: motion clusters grown by splitting (:func:`split_motion_clusters`), made
   connected on the mesh (small islands join the neighbour they touch most), then adjacent parts that one
   rigid motion moves nearly as well are merged (cheapest first, :func:`merge_rigid_parts`);
3. hierarchy: a minimum spanning tree of the part adjacency (mesh borders, plus nearest links between
   separate pieces) weighted by how badly a ball joint explains each pair's relative motion, rooted at
   the centre of the part graph; a short part bending along with its parent (one blended joint cut in
   two by motion) joins it;
4. a joint between a part and its parent at their centre of rotation (:func:`centre_of_rotation`),
   regularised toward the centre of their shared border; along a hinge's axis, which the motion does not
   fix, it takes the border's coordinate;
5. shape: every part longer than the bone spacing is cut into a chain by level sets (geodesic distance
   from its joint; for the root part, distance along its principal axis from its centre), one bone per
   connected piece of each level band, joints at the centres of the cross-sections; a chain that is only a
   patch of skin facing one side (a blend zone the motion cut off a flank) is dropped
   (:func:`drop_surface_patches`); long leaf chains and
   feet get an end joint at their tip; a joint left outside the mesh moves to the centre of the surface around it
   (:func:`pull_joints_inside`), and a leaf bone's tail outside it moves back toward its joint
   (:func:`pull_leaf_tails_inside`); on an upright body whose legs leave the root below its joint, the root's
   joint goes to the hips (:func:`root_at_hips`);
6. names from the structure: the bilateral mirror plane of the anchor (when there is one) gives ``.L/.R``;
   chains from the root (or the torso it hangs) are named spine/neck/head, hips/tail, leg or arm by where they go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree
from scipy.spatial import cKDTree

from backend.metrics import winding_numbers
from backend.rigging.fit.articulated import subtrees
from backend.rigging.fit.rigid import proper_rotation, rigid_matrix, weighted_rigid_fits
from backend.rigging.fit.solve import ResidualGram
from backend.rigging.fit.sparse import one_hot
from backend.rigging.fit.starts import split_motion_clusters, stable_argmin
from backend.rigging.naming import GROUND_SHARE, mirror_plane, name_bones
from backend.rigging.rig_skeleton import RigSkeleton
from backend.rigging.symmetry import equalize_mirrored_chains, share_twin_parents, uncross_limbs
from backend.sequence import colocated_representatives
from backend.skeleton import reorder, topological_order, validate_tree

log = logging.getLogger(__name__)

DETAIL_LEVELS = ("auto", "coarse", "fine")


@dataclass
class MotionSkeletonConfig:
    """Options of :func:`skeleton_from_motion` (lengths in the anchor-normalized frame, longest side 1).

    Attributes:
        detail: ``"auto"`` | ``"coarse"`` | ``"fine"`` | an int: the number of bones wanted (met as
            closely as the part merging and the chain spacing allow).
        max_parts: motion clusters grown before merging (``auto``; ``coarse`` uses 0.6x, ``fine`` 1.5x).
        merge_error: adjacent parts are merged while the smaller one's vertices would move less than this
            (RMS, normalized units) by following the union's rigid motion (``coarse`` 1.6x, ``fine`` 0.6x).
        moving_deg: a part whose largest rotation relative to its parent reaches this counts as moving
            (statistics only).
        spacing: bone length of the shape chains; ``None`` = the length of the bones found by motion
            (:func:`motion_spacing`), clipped to ``spacing_range`` (``coarse`` 1.5x, ``fine`` 0.7x).
        spacing_range: bounds of the automatic spacing.
        default_spacing: the spacing when fewer than three joints are found by motion.
        core_scale: the root part's chains start from its core: its vertices within this many times the
            distance from its centre to its nearest vertex (at least half a spacing).
        min_part_fraction: parts (connected pieces of a cluster) with fewer vertices than this share of
            the mesh join the neighbour they touch most.
        max_ring: a level-set piece whose cross-section's RMS radius exceeds this many spacings is part of
            a thick body, not a limb, and gets no bone of its own.
        band_fraction: width of the level bands in spacings (narrower bands see branches sooner; chains
            are then collapsed back to one bone per spacing).
        min_bone_fraction: a part whose joint is closer than this many spacings to its parent's joint
            (a blend zone, not a limb) joins its parent (not with an int ``detail``).
        piece_fraction: separate mesh pieces merge like touching parts (a piece moving with the one it is
            nearest to joins it, one moving apart keeps its bone); with an int ``detail`` the pieces with at
            least this share of the vertices that move apart are the last to merge.
        min_tail_fraction: a chain's last bone shorter than this share of ``spacing`` joins its parent.
        border_weight: pull of a joint toward its parts' shared border, per frame (in squared rotation
            units: 0.02 is about an 8 degree rotation).
        hinge_ratio: along a direction the two parts barely rotate apart about (eigenvalue below this
            share of the largest: a hinge's axis), the joint takes the border's coordinate
            (:func:`centre_of_rotation`).
        pull_inside: joints left outside the anchor mesh move to the centre of the surface around them
            (:func:`pull_joints_inside`), and leaf bones whose tail is outside are shortened
            (:func:`pull_leaf_tails_inside`).
        max_frames: frames used for the motion (evenly spaced, the anchor included).
        cluster_vertices: motion clusters are grown on at most this many vertices (seeded subsample), then
            every vertex joins the cluster whose motion reproduces it best.
        weld_tolerance: vertices closer than this (times the anchor box diagonal) on every frame are one vertex.
        end_chain: a leaf chain of at least this many bones (counted from its last branching) gets an end
            joint at its tip, the tip of a long limb being where riggers put one (0: none; never with an
            int ``detail``).
        end_fraction: ... and only when the tip lies more than this many spacings from the leaf's joint.
        smooth_cos: a moving part closer than ``spacing_range[0]`` to its parent's joint, and its parent's
            only child, joins the parent when the two bends follow each other over the clip (cosine of
            their rotation-vector series at least this; above 1: never): one blended joint cut in two
            by motion (not with an int ``detail``).
        foot_height: a leaf whose tip lies within this share of the anchor's height above its lowest point
            (a foot or hoof on the ground) gets an end joint at its tip however short its chain, as riggers
            give feet a toe joint (0: none; never with an int ``detail``). End joints outside the mesh are
            pulled in like the others (``pull_inside``).
        toe_gain, toe_min_rms: a foot (a leaf on the ground, see ``foot_height``, on the anchor frame or on a later
            one) whose vertices one rigid motion reproduces no better than ``toe_min_rms`` (RMS, normalized units)
            is cut in two where two rigid motions lower its squared error by at least ``toe_gain``
            (:func:`split_bending_feet`; ``toe_gain`` 0: never; never with an int ``detail``).
        leaf_spacing: when the motion's leaf links are longer than this many times its median link, the spacing is
            the leaves' median (:func:`motion_spacing`; ``0``: never).
        limb_roots: a leg whose chain starts below a thick body (its first joint where the limb leaves the
            belly, as when the legs never move against the body) gets a joint where a rigger puts the hip or
            shoulder: up the leg, at the body's middle (:func:`add_limb_roots`; never with an int ``detail``).
        missing_legs: a foot in this lowest share of the anchor's height with no joint on its leg gets a chain
            up to the body (:func:`add_missing_legs`; 0: never; never with an int ``detail``).
        max_one_sided: a chain leaving a branching joint whose surface faces one side by more than this
            (:func:`one_sided_share`: a patch of skin the motion cut, not a limb) is dropped, its vertices to the
            bone it left (:func:`drop_surface_patches`; 1: never; never with an int ``detail``).
        root_at_hips: on an upright body whose legs leave the root below its joint, the root's joint goes to
            the hips (:func:`root_at_hips`; the deformation does not change; never with an int ``detail``).
        share_twin_parents: mirrored limbs that leave different trunk bones, one above the other, both hang
            from the lower one in the tree (:func:`~backend.rigging.symmetry.share_twin_parents`).
        symmetric: on a mirror-symmetric anchor, give mirrored chains the same number of bones
            (:func:`~backend.rigging.symmetry.equalize_mirrored_chains`), so ``.L`` / ``.R`` bones match one
            to one.
    """

    detail: str | int = "auto"
    max_parts: int = 64
    merge_error: float = 0.006
    moving_deg: float = 5.0
    spacing: float | None = None
    spacing_range: tuple[float, float] = (0.06, 0.12)
    default_spacing: float = 0.11
    core_scale: float = 1.5
    min_part_fraction: float = 0.004
    min_tail_fraction: float = 0.7
    piece_fraction: float = 0.02
    max_ring: float = 1.6
    band_fraction: float = 1.0
    min_bone_fraction: float = 0.25
    border_weight: float = 0.005
    hinge_ratio: float = 0.1
    pull_inside: bool = True
    max_frames: int = 32
    cluster_vertices: int = 3000
    weld_tolerance: float = 1e-6
    end_chain: int = 4
    end_fraction: float = 0.5
    smooth_cos: float = 0.95
    symmetric: bool = True
    foot_height: float = 0.05
    toe_gain: float = 0.5
    toe_min_rms: float = 0.001
    limb_roots: bool = True
    leaf_spacing: float = 1.3
    missing_legs: float = 0.15
    max_one_sided: float = 0.6
    root_at_hips: bool = True
    share_twin_parents: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if isinstance(self.detail, bool) or not (self.detail in DETAIL_LEVELS or isinstance(self.detail, (int, np.integer))):
            raise ValueError(f"detail must be one of {DETAIL_LEVELS} or an int bone count, got {self.detail!r}")
        if isinstance(self.detail, (int, np.integer)) and self.detail < 1:
            raise ValueError(f"detail as a bone count must be >= 1, got {self.detail}")
        if self.max_parts < 1:
            raise ValueError(f"max_parts must be >= 1, got {self.max_parts}")
        if self.merge_error < 0:
            raise ValueError(f"merge_error must be >= 0, got {self.merge_error}")
        if self.spacing is not None and self.spacing <= 0:
            raise ValueError(f"spacing must be > 0, got {self.spacing}")
        if not 0 < self.spacing_range[0] <= self.spacing_range[1]:
            raise ValueError(f"spacing_range must satisfy 0 < lo <= hi, got {self.spacing_range}")
        if self.end_chain < 0:
            raise ValueError(f"end_chain must be >= 0, got {self.end_chain}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {self.max_frames}")
        if self.leaf_spacing < 0:
            raise ValueError(f"leaf_spacing must be >= 0, got {self.leaf_spacing}")
        if not 0.0 <= self.foot_height < 1.0:
            raise ValueError(f"foot_height must be in [0, 1), got {self.foot_height}")
        if not 0.0 <= self.toe_gain < 1.0 or self.toe_min_rms < 0:
            raise ValueError(f"toe_gain must be in [0, 1) and toe_min_rms >= 0, got {self.toe_gain}, "
                             f"{self.toe_min_rms}")
        if not 0.0 <= self.missing_legs < 0.5:
            raise ValueError(f"missing_legs must be in [0, 0.5), got {self.missing_legs}")
        if not 0.5 <= self.max_one_sided <= 1.0:
            raise ValueError(f"max_one_sided must be in [0.5, 1], got {self.max_one_sided}")


# ---------------------------------------------------------------------------------------------
# Input and welding


def _check_inputs(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    verts = np.asarray(verts)
    faces = np.asarray(faces)
    if verts.ndim != 3 or verts.shape[2] != 3:
        raise ValueError(f"verts must be float [K, V, 3], got shape {list(verts.shape)}")
    if verts.shape[0] < 1 or verts.shape[1] < 4:
        raise ValueError(f"verts needs at least 1 frame and 4 vertices, got shape {list(verts.shape)}")
    if not np.isfinite(verts).all():
        raise ValueError("verts contains non-finite values")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces must be int [F, 3] with F >= 1, got shape {list(faces.shape)}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be integers, got {faces.dtype}")
    if faces.min() < 0 or faces.max() >= verts.shape[1]:
        raise ValueError(f"faces index vertices outside [0, {verts.shape[1]})")
    return verts.astype(np.float64), faces.astype(np.int64)


def weld_colocated(verts: np.ndarray, tolerance: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Vertices at the same place on every frame (:func:`backend.sequence.colocated_representatives`, grid
    ``tolerance`` times the anchor box diagonal), as groups.

    Args:
        verts: float ``[K, V, 3]``.
    Returns:
        ``representative int64 [U]`` (one vertex per group) and ``group int64 [V]`` (each vertex's group).
    """
    x = np.asarray(verts, dtype=np.float64)
    representative_of = colocated_representatives(x, tolerance)
    representative = np.unique(representative_of)
    # groups in lexicographic order of their anchor positions: the clustering downstream samples the welded
    # vertices in this order (its results were measured with it)
    first = np.round(x[0][representative] / tolerance)
    representative = representative[np.lexsort((first[:, 2], first[:, 1], first[:, 0]))]
    slot = np.empty(len(x[0]), dtype=np.int64)
    slot[representative] = np.arange(len(representative))
    return representative.astype(np.int64), slot[representative_of]


def edge_graph(faces: np.ndarray, n_verts: int) -> sp.csr_matrix:
    """Symmetric 0/1 vertex adjacency ``[V, V]`` of the mesh edges (no self loops)."""
    f = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    keep = i != j
    adj = sp.csr_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n_verts, n_verts))
    adj.data[:] = 1.0
    return adj


# ---------------------------------------------------------------------------------------------
# Geometry of rigid motions


def rotation_angles(rot: np.ndarray) -> np.ndarray:
    """Angle (radians) of rotations ``[..., 3, 3]``."""
    tr = np.trace(rot, axis1=-2, axis2=-1)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def relative_rotation_deg(transforms_a: np.ndarray, transforms_b: np.ndarray) -> float:
    """Largest angle (degrees) over frames of ``R_a(t) R_b(t)^T`` for ``[K, 4, 4]`` part motions."""
    rel = transforms_a[:, :3, :3] @ transforms_b[:, :3, :3].transpose(0, 2, 1)
    return float(np.degrees(rotation_angles(rel).max()))


def centre_of_rotation(transforms_a: np.ndarray, transforms_b: np.ndarray, border_centre: np.ndarray,
                       border_weight: float, hinge_ratio: float = 0.0) -> tuple[np.ndarray, float]:
    """The point both parts move alike: ``argmin_c sum_t |(R_a - R_b) c + (t_a - t_b)|^2 + K w |c - b|^2``.

    The motion fixes ``c`` only across the directions the two parts rotate apart about: for a hinge,
    ``sum_t (R_a - R_b)^T (R_a - R_b)`` has a near-zero eigenvalue along the hinge's axis, and a joint left
    to the small pull ``w`` there slides along the axis, out of the body, to absorb a little wobble (on
    the Khronos Fox run, hip and shoulder joints landed 0.13-0.25 from their borders, outside the legs).
    Directions whose eigenvalue is below ``hinge_ratio`` times the largest take the border's coordinate
    exactly; the others are the motion's (with the pull ``w``).

    Args:
        transforms_a, transforms_b: float ``[K, 4, 4]`` rigid motions (anchor -> frame t) of the two parts.
        border_centre: float ``[3]``: the centre of their shared border ``b`` (fixes the free directions:
            a hinge's axis, or everything when the parts never move apart).
        border_weight: ``w`` per frame.
        hinge_ratio: eigenvalue ratio below which a direction counts as the hinge's axis (0: none).
    Returns:
        the centre ``float64 [3]`` and the RMS over frames of the joint's residual (how far the two parts
        pull the joint apart: ~0 for a true ball or hinge joint).
    """
    dR = transforms_a[:, :3, :3] - transforms_b[:, :3, :3]  # [K, 3, 3]
    dt = transforms_a[:, :3, 3] - transforms_b[:, :3, 3]  # [K, 3]
    K = len(dR)
    ev, basis = np.linalg.eigh(np.einsum("kab,kac->bc", dR, dR))  # ascending, columns = directions
    rhs = basis.T @ (-np.einsum("kab,ka->b", dR, dt) + K * border_weight * border_centre)
    coords = rhs / (ev + K * border_weight)
    axis = ev < hinge_ratio * ev[-1]
    coords[axis] = (basis.T @ border_centre)[axis]
    c = basis @ coords
    residual = np.einsum("kab,b->ka", dR, c) + dt
    return c, float(np.sqrt((residual ** 2).sum(axis=1).mean()))


# ---------------------------------------------------------------------------------------------
# Parts


def _components_within(adj: sp.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """Connected pieces of each label on the mesh: ``piece int64 [V]``."""
    coo = adj.tocoo()
    same = labels[coo.row] == labels[coo.col]
    sub = sp.csr_matrix((np.ones(int(same.sum())), (coo.row[same], coo.col[same])), shape=adj.shape)
    _, piece = connected_components(sub, directed=False)
    return piece.astype(np.int64)


def _border_counts(adj: sp.csr_matrix, labels: np.ndarray, n: int) -> sp.csr_matrix:
    """``[n, n]`` number of mesh edges between labels (diagonal removed)."""
    coo = adj.tocoo()
    m = sp.csr_matrix((np.ones(len(coo.row)), (labels[coo.row], labels[coo.col])), shape=(n, n))
    m.setdiag(0)
    m.eliminate_zeros()
    return m


def connected_parts(adj: sp.csr_matrix, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Make every label one connected piece of the mesh: pieces with fewer than ``min_size`` vertices join
    the neighbouring piece they share most edges with (an isolated piece stays on its own).

    Returns ``parts int64 [V]`` in ``[0, P)``.
    """
    piece = _components_within(adj, labels)
    while True:
        n = int(piece.max()) + 1
        size = np.bincount(piece, minlength=n)
        border = _border_counts(adj, piece, n).tocsr()
        touching = np.diff(border.indptr) > 0
        small = np.flatnonzero((size < min_size) & touching)
        if not len(small):
            break
        target = np.arange(n)
        for p in small:  # each small piece joins the neighbour it shares most edges with (all at once)
            lo, hi = border.indptr[p], border.indptr[p + 1]
            target[p] = border.indices[lo + int(np.argmax(border.data[lo:hi]))]
        for p in small:  # two small pieces choosing each other: the smaller joins the larger
            q = target[p]
            if target[q] == p and (size[p], p) > (size[q], q):
                target[p] = p
        piece = target[piece]
        _, piece = np.unique(piece, return_inverse=True)
        piece = _components_within(adj, piece.reshape(-1))
    _, piece = np.unique(piece, return_inverse=True)
    return piece.reshape(-1).astype(np.int64)


def part_links(adj: sp.csr_matrix, anchor: np.ndarray, parts: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Adjacent part pairs ``(a, b)``, ``a < b``, with the centre of their border ``float64 [3]``.

    Mesh borders first; separate mesh pieces are then linked through their closest vertices (a minimum
    spanning tree over pieces; the link's centre is the middle of the facing vertices of both), so the
    part graph is connected.
    """
    coo = sp.triu(adj).tocoo()
    pa, pb = parts[coo.row], parts[coo.col]
    cross = pa != pb
    links: dict[tuple[int, int], list[np.ndarray]] = {}
    for i, j, a, b in zip(coo.row[cross], coo.col[cross], pa[cross], pb[cross]):
        key = (int(min(a, b)), int(max(a, b)))
        links.setdefault(key, []).append(0.5 * (anchor[i] + anchor[j]))
    out = {k: np.mean(v, axis=0) for k, v in links.items()}
    n_pieces, piece = connected_components(adj, directed=False)
    if n_pieces > 1:
        # closest vertex pair between every two pieces (kd-tree per piece), then a spanning tree
        members = [np.flatnonzero(piece == c) for c in range(n_pieces)]
        trees = [cKDTree(anchor[m]) for m in members]
        dist = np.full((n_pieces, n_pieces), np.inf)
        pair: dict[tuple[int, int], tuple[int, int]] = {}
        for a in range(n_pieces):
            for b in range(a + 1, n_pieces):
                small, big = (a, b) if len(members[a]) <= len(members[b]) else (b, a)
                d, k = trees[big].query(anchor[members[small]])
                i = int(np.argmin(d))
                dist[a, b] = d[i] + 1e-12
                # the facing vertices: those of the smaller piece nearly as close as the closest pair
                close = d <= 1.5 * d[i] + 0.01
                near_small, near_big = members[small][close], members[big][k[close]]
                same = (parts[near_small] == parts[members[small][i]]) & (parts[near_big] == parts[members[big][k[i]]])
                pair[(a, b)] = (int(members[small][i]), int(members[big][k[i]]),
                                0.5 * (anchor[near_small[same]].mean(axis=0) + anchor[near_big[same]].mean(axis=0)))
        mst = minimum_spanning_tree(sp.csr_matrix(np.where(np.isfinite(dist), dist, 0.0))).tocoo()
        for a, b in zip(mst.row, mst.col):
            i, j, centre = pair[(int(min(a, b)), int(max(a, b)))]
            key = (int(min(parts[i], parts[j])), int(max(parts[i], parts[j])))
            out.setdefault(key, centre)
    return out


class PartMoments:
    """Sufficient statistics of each part's rigid fit, additive under merging: the count, anchor sums,
    per-frame target sums and cross sums. The best rigid fit (Kabsch) of a union and its squared error
    follow from them without touching the vertices again."""

    def __init__(self, anchor: np.ndarray, frames_vm: np.ndarray, parts: np.ndarray, n_parts: int):
        V, K, _ = frames_vm.shape
        H = sp.csr_matrix((np.ones(V), (parts, np.arange(V))), shape=(n_parts, V))
        X = frames_vm.reshape(V, K * 3)
        self.n = np.asarray(H.sum(axis=1)).ravel()
        self.sa = H @ anchor  # [P, 3]
        self.saa = H @ (anchor ** 2).sum(axis=1)  # [P]
        self.sx = (H @ X).reshape(n_parts, K, 3)
        self.sxx = (H @ (frames_vm ** 2).sum(axis=2))  # [P, K]
        self.sxa = np.stack([(H @ (X * anchor[:, b:b + 1])).reshape(n_parts, K, 3) for b in range(3)], axis=-1)

    def merge(self, a: int, b: int) -> None:
        """Part ``b`` joins part ``a``."""
        for name in ("n", "sa", "saa", "sx", "sxx", "sxa"):
            arr = getattr(self, name)
            arr[a] = arr[a] + arr[b]

    def fit(self, parts: list[int]) -> tuple[np.ndarray, float]:
        """The union of ``parts``: its rigid motion ``[K, 4, 4]`` and total squared error over frames."""
        n = sum(self.n[p] for p in parts)
        sa = sum(self.sa[p] for p in parts)
        saa = sum(self.saa[p] for p in parts)
        sx = sum(self.sx[p] for p in parts)
        sxx = sum(self.sxx[p] for p in parts)
        sxa = sum(self.sxa[p] for p in parts)
        a_bar = sa / n
        x_bar = sx / n  # [K, 3]
        cross = sxa - n * x_bar[:, :, None] * a_bar[None, None, :]  # [K, 3, 3]
        rot = proper_rotation(cross)
        trace = np.einsum("kab,kab->k", rot, cross)
        err = (sxx - n * (x_bar ** 2).sum(axis=1)) + (saa - n * a_bar @ a_bar) - 2.0 * trace
        trans = x_bar - rot @ a_bar
        return rigid_matrix(rot, trans), float(max(err.sum(), 0.0))


def merge_rigid_parts(anchor: np.ndarray, frames_vm: np.ndarray, adj: sp.csr_matrix, parts: np.ndarray,
                      merge_error: float, target: int | None = None,
                      min_piece: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent parts moving together, cheapest first: the cost of a pair is how far its smaller
    part's vertices would move (RMS over frames) if it followed the union's one rigid motion,
    ``sqrt((E(a+b) - E(a) - E(b)) / (K min(n_a, n_b)))``. Merging goes on while the cheapest cost is
    below ``merge_error`` (or while more than ``target`` parts remain). Parts of separate mesh pieces
    (linked only by their nearest vertices) that move apart (cost at least ``merge_error``) merge only when
    the smaller has fewer than ``min_piece`` vertices: a separate rigid piece that moves keeps its own bone,
    as a rigger would give it, and one that moves with its neighbour (a robot's head plates) joins it.

    Returns ``parts int64 [V]`` (renumbered) and their rigid motions ``float64 [K, P, 4, 4]``.
    """
    P = int(parts.max()) + 1
    K = frames_vm.shape[1]
    moments = PartMoments(anchor, frames_vm, parts, P)
    own = np.array([moments.fit([p])[1] for p in range(P)])
    links = set(part_links(adj, anchor, parts))
    border = _border_counts(adj, parts, P).tocoo()
    touching = {(int(min(x, y)), int(max(x, y))) for x, y in zip(border.row, border.col)}
    alive = np.ones(P, dtype=bool)

    def cost_of(a: int, b: int) -> float:
        extra = moments.fit([a, b])[1] - own[a] - own[b]
        c = float(np.sqrt(max(extra, 0.0) / (K * min(moments.n[a], moments.n[b]))))
        if (a, b) not in touching and min(moments.n[a], moments.n[b]) >= min_piece and c >= merge_error:
            c += 1e3  # separate pieces: last to merge (only to reach a requested count)
        return c

    cost = {k: cost_of(*k) for k in links}
    while cost:
        (a, b), c = min(cost.items(), key=lambda kv: (kv[1], kv[0]))
        if c >= merge_error and (target is None or int(alive.sum()) <= target):
            break
        parts[parts == b] = a
        alive[b] = False
        moments.merge(a, b)
        own[a] = moments.fit([a])[1]
        new_links = set()
        for (x, y) in links:
            x2, y2 = (a if x == b else x), (a if y == b else y)
            if x2 != y2:
                new_links.add((min(x2, y2), max(x2, y2)))
        links = new_links
        touching = {(min(a if x == b else x, a if y == b else y), max(a if x == b else x, a if y == b else y))
                    for (x, y) in touching if {x, y} != {a, b}}
        cost = {k: (cost[k] if a not in k and k in cost else cost_of(*k)) for k in links}
    keep = np.flatnonzero(alive)
    remap = np.full(P, -1)
    remap[keep] = np.arange(len(keep))
    transforms = np.stack([moments.fit([p])[0] for p in keep], axis=1)
    return remap[parts], transforms


# ---------------------------------------------------------------------------------------------
# Shape chains


def level_set_bones(verts_idx: np.ndarray, f: np.ndarray, spacing: float, adj: sp.csr_matrix,
                    anchor: np.ndarray, min_tail: float, max_ring: float = np.inf,
                    band_fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one part into a chain (or tree) of bones by level bands of ``f`` (distance from its joint).

    Band ``s`` holds the vertices with ``floor(f / (band_fraction * spacing)) = s``; every connected piece
    of a band beyond
    the first is a bone whose parent is the piece of the previous band it touches most, with its joint at
    the centre of that shared cross-section. Short leaf bones join their parents, and so do pieces whose
    cross-section is wider (RMS radius) than ``max_ring * spacing``: shells of a thick body, not limbs.
    Narrow bands (``band_fraction < 1``) find branches sooner; a piece that is its parent's only child then
    joins it while the two together stay within one spacing.

    Args:
        verts_idx: int ``[n]`` the part's vertices; f: float ``[n]`` their distance from the part's joint.
        adj: the mesh edge graph ``[V, V]``; anchor: ``[V, 3]``.
    Returns:
        ``bone int64 [n]`` (0 = the part's own bone), ``parent int64 [B]`` (``-1`` for bone 0) and
        ``joint float64 [B, 3]`` (bone 0's entry is unused).
    """
    n = len(verts_idx)
    band = np.floor(f / (spacing * band_fraction)).astype(np.int64)
    sub = adj[verts_idx][:, verts_idx].tocoo()
    same = band[sub.row] == band[sub.col]
    g = sp.csr_matrix((np.ones(int(same.sum())), (sub.row[same], sub.col[same])), shape=(n, n))
    _, piece = connected_components(g, directed=False)
    piece = np.asarray(piece, dtype=np.int64)
    piece[band == 0] = -1  # the first band is the part's own bone
    ids, piece = np.unique(piece, return_inverse=True)
    piece = piece.reshape(-1)  # 0 = own bone (band 0 present: f's minimum is 0 at the sources)
    if ids[0] != -1:
        piece = piece + 1
    B = int(piece.max()) + 1
    # parent: the piece of a lower band sharing most edges; joint: the centre of those edges
    cross = piece[sub.row] != piece[sub.col]
    r, c = sub.row[cross], sub.col[cross]
    lower = band[c] < band[r]
    r, c = r[lower], c[lower]
    parent = np.full(B, -1, dtype=np.int64)
    joint = np.zeros((B, 3))
    radius = np.zeros(B)
    piece_band = np.zeros(B, dtype=np.int64)
    np.maximum.at(piece_band, piece, band)
    for b in range(1, B):
        sel = piece[r] == b
        mine = np.flatnonzero(piece == b)
        if sel.any():
            cand = piece[c[sel]]
            counts = np.bincount(cand, minlength=B)
            parent[b] = int(np.argmax(counts))
            pick = sel.copy()
            pick[sel] = cand == parent[b]
            ring = np.concatenate([anchor[verts_idx[r[pick]]], anchor[verts_idx[c[pick]]]])
            joint[b] = ring.mean(axis=0)
            radius[b] = float(np.sqrt(((ring - joint[b]) ** 2).sum(axis=1).mean()))
        else:  # not touching a lower band: hang it off the own bone, joint at its lowest vertices
            parent[b] = 0
            low = mine[f[mine] <= f[mine].min() + 0.1 * spacing]
            joint[b] = anchor[verts_idx[low]].mean(axis=0)
    # parents must be in a lower band; guard against cycles (shouldn't happen) by forcing to 0
    for b in range(1, B):
        if parent[b] == b or piece_band[parent[b]] >= piece_band[b] and parent[b] != 0:
            parent[b] = 0
    # leaf bones shorter than min_tail * spacing join their parent (repeat: a chain can shrink)
    lo = np.full(B, np.inf)
    hi = np.full(B, -np.inf)
    np.minimum.at(lo, piece, f)
    np.maximum.at(hi, piece, f)
    extent = hi - lo
    alive = np.ones(B, dtype=bool)
    changed = True
    while changed:
        changed = False
        has_child = np.zeros(B, dtype=bool)
        has_child[parent[alive & (parent >= 0)]] = True
        for b in range(1, B):
            if not alive[b]:
                continue
            short_leaf = not has_child[b] and (extent[b] < min_tail * spacing or (piece == b).sum() < 3)
            p = int(parent[b])
            only_child = int(((parent == p) & alive).sum()) == 1
            collapse = only_child and max(hi[b], hi[p]) - lo[p] <= spacing * (1.0 + 1e-9)
            if short_leaf or collapse or radius[b] > max_ring * spacing:
                p = int(parent[b])
                piece[piece == b] = p
                parent[parent == b] = p
                lo[p], hi[p] = min(lo[p], lo[b]), max(hi[p], hi[b])
                extent[p] = hi[p] - lo[p]
                alive[b] = False
                changed = True
    keep, remap, new_parent = _renumber(alive, parent)
    return remap[piece], new_parent, joint[keep]


def motion_spacing(part_joint: np.ndarray, part_parent: np.ndarray, leaf_ratio: float, default: float) -> float:
    """The length of the bones the motion shows: the median distance from a part's joint to its parent part's.

    Where the leaves' links (a part with no child part: a whole end segment, rigid over the clip) have a median
    more than ``leaf_ratio`` times that (``0``: never), the leaves' median is taken instead: the short links are
    then blend zones that smooth skinning cut out of one bend (a tentacle, a fish's body), not bones.

    Args:
        part_joint: float ``[P, 3]``; part_parent: int ``[P]`` (``-1`` for the root).
    Returns:
        the spacing, or ``default`` when fewer than three links exist.
    """
    child = np.flatnonzero(part_parent >= 0)
    if len(child) < 3:
        return default
    lengths = np.linalg.norm(part_joint[child] - part_joint[part_parent[child]], axis=1)
    spacing = float(np.median(lengths))
    leaf = np.bincount(part_parent[child], minlength=len(part_parent))[child] == 0
    if leaf_ratio > 0 and leaf.sum() >= 3 and float(np.median(lengths[leaf])) > leaf_ratio * spacing:
        spacing = float(np.median(lengths[leaf]))
    return spacing


def _geodesic_from(adj_w: sp.csr_matrix, verts_idx: np.ndarray, sources_local: np.ndarray) -> np.ndarray:
    """Geodesic (mesh edge) distance ``[n]`` within the part ``verts_idx`` from its local ``sources``;
    ``inf`` for vertices of pieces the sources do not reach."""
    sub = adj_w[verts_idx][:, verts_idx]
    return dijkstra(sub, directed=False, indices=sources_local, min_only=True)


# ---------------------------------------------------------------------------------------------
# The whole skeleton


def _detail_knobs(cfg: MotionSkeletonConfig) -> tuple[int, float, float, int | None]:
    """``(max_parts, merge_error, spacing scale, target bone count or None)``."""
    if cfg.detail == "coarse":
        return max(2, int(round(cfg.max_parts * 0.6))), cfg.merge_error * 1.6, 1.5, None
    if cfg.detail == "fine":
        return int(round(cfg.max_parts * 1.5)), cfg.merge_error * 0.6, 0.7, None
    if cfg.detail == "auto":
        return cfg.max_parts, cfg.merge_error, 1.0, None
    n = int(cfg.detail)
    return max(cfg.max_parts, n), cfg.merge_error, 1.0, n


def _root_part(anchor: np.ndarray, parts: np.ndarray, P: int, links: dict[tuple[int, int], np.ndarray],
               min_share: float = 0.02) -> int:
    """The central part: the centre of the part graph (smallest largest path length, through the joints'
    border centres, to any other part), among parts holding at least ``min_share`` of the vertices; ties
    go to the heavier part. A heavy head or tail does not pull the root away from the pelvis."""
    size = np.bincount(parts, minlength=P).astype(np.float64)
    if P == 1:
        return 0
    centroids = (one_hot(parts, P).T @ anchor) / np.maximum(size, 1)[:, None]
    rows, cols, vals = [], [], []
    for (a, b), border in links.items():
        rows.append(a)
        cols.append(b)
        vals.append(np.linalg.norm(centroids[a] - border) + np.linalg.norm(border - centroids[b]) + 1e-9)
    graph = sp.csr_matrix((vals, (rows, cols)), shape=(P, P))
    dist = dijkstra(graph, directed=False)
    ecc = np.where(np.isfinite(dist), dist, 0.0).max(axis=1)
    eligible = size >= min_share * size.sum()
    if not eligible.any():
        eligible = size == size.max()
    order = np.lexsort((-size, ecc))
    return int(next(p for p in order if eligible[p]))


def _part_tree(P: int, root: int, links: dict[tuple[int, int], np.ndarray], link_cost: dict) -> np.ndarray:
    """Parents ``[P]`` of the part graph's minimum spanning tree (``link_cost``), rooted at ``root``."""
    if P == 1:
        return np.array([-1])
    rows, cols, vals = [], [], []
    for (a, b), c in link_cost.items():
        rows.append(a)
        cols.append(b)
        vals.append(c + 1e-9)
    mst = minimum_spanning_tree(sp.csr_matrix((vals, (rows, cols)), shape=(P, P))).tocoo()
    nbr: list[list[int]] = [[] for _ in range(P)]
    for a, b in zip(mst.row, mst.col):
        nbr[a].append(int(b))
        nbr[b].append(int(a))
    parent = np.full(P, -2, dtype=np.int64)
    parent[root] = -1
    stack = [root]
    while stack:
        u = stack.pop()
        for v in nbr[u]:
            if parent[v] == -2:
                parent[v] = u
                stack.append(v)
    if (parent == -2).any():  # not connected (should not happen): hang the rest off the root
        parent[parent == -2] = root
    return parent


def _motion_clusters(anchor: np.ndarray, frames_vm: np.ndarray, n_clusters: int, max_vertices: int) -> np.ndarray:
    """Motion clusters (:func:`split_motion_clusters`) grown on at most ``max_vertices`` vertices (a seeded
    even subsample), then every vertex goes to the cluster motion that reproduces it best. ``labels [V]``."""
    V = len(anchor)
    if V <= max_vertices:
        return split_motion_clusters(anchor, frames_vm, n_clusters)
    sub = np.sort(np.random.default_rng(0).choice(V, max_vertices, replace=False))
    labels = split_motion_clusters(anchor[sub], frames_vm[sub], n_clusters)
    m = int(labels.max()) + 1
    transforms = weighted_rigid_fits(anchor[sub], None, one_hot(labels, m), frames_vm[sub])[0]
    return stable_argmin(ResidualGram(anchor, frames_vm, transforms).single_bone_errors())


def _renumber(alive: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After merging: the surviving items ``keep [P']``, each old item's new index ``remap [P]`` (-1 for
    merged ones) and the survivors' renumbered parents ``[P']`` (-1 for roots)."""
    keep = np.flatnonzero(alive)
    remap = np.full(len(alive), -1)
    remap[keep] = np.arange(len(keep))
    return keep, remap, np.where(parent[keep] >= 0, remap[np.maximum(parent[keep], 0)], -1)


def _merge_parts(parts: np.ndarray, part_parent: np.ndarray, part_joint: np.ndarray, transforms: np.ndarray,
                 root: int, merge_target) -> tuple:
    """Merge parts while ``merge_target(p, parent, alive)`` names a part that part ``p`` belongs to (its parent or
    a sibling; ``-1``: none; ``parent``/``alive``: the current hierarchy), sweeping until nothing changes; the
    children of a merged part move to the part it joined. Returns the renumbered ``(parts [V], part_parent [P'],
    part_joint [P', 3], transforms [K, P', 4, 4], root)``."""
    P = len(part_parent)
    parent = part_parent.copy()
    alive = np.ones(P, dtype=bool)
    changed = True
    while changed:
        changed = False
        for p in range(P):
            if not alive[p] or parent[p] < 0:
                continue
            q = int(merge_target(p, parent, alive))
            if q >= 0:
                parts = np.where(parts == p, q, parts)
                parent[parent == p] = q
                alive[p] = False
                changed = True
    keep, remap, new_parent = _renumber(alive, parent)
    return remap[parts], new_parent, part_joint[keep], transforms[:, keep], int(remap[root])


def _merge_short_bones(parts: np.ndarray, part_parent: np.ndarray, part_joint: np.ndarray, transforms: np.ndarray,
                       root: int, min_length: float):
    """Blend zones between two joints, not limbs, are merged away: a part whose joint lies closer than
    ``min_length`` to its parent part's joint joins its parent (its children keep their joints), and a leaf
    part whose joint lies that close to a larger sibling's joint (a sliver of the same joint cut off beside
    the limb) joins that sibling. Returns the renumbered ``(parts [V], part_parent [P'], part_joint [P', 3],
    transforms [K, P', 4, 4], root)``."""
    size = np.bincount(parts, minlength=len(part_parent))

    def merge_target(p: int, parent: np.ndarray, alive: np.ndarray) -> int:
        q = int(parent[p])
        if np.linalg.norm(part_joint[p] - part_joint[q]) < min_length:
            return q
        if ((parent == p) & alive).any():
            return -1
        siblings = np.flatnonzero((parent == q) & alive & (size > size[p]))
        if len(siblings):
            d = np.linalg.norm(part_joint[siblings] - part_joint[p], axis=1)
            if d.min() < min_length:
                return int(siblings[np.argmin(d)])
        return -1

    if min_length <= 0:
        return _merge_parts(parts, part_parent, part_joint, transforms, root, lambda *_: -1)
    return _merge_parts(parts, part_parent, part_joint, transforms, root, merge_target)


def rotation_vectors(rot: np.ndarray) -> np.ndarray:
    """Axis times angle ``[..., 3]`` of rotations ``[..., 3, 3]``."""
    axis = np.stack([rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0], rot[..., 1, 0] - rot[..., 0, 1]],
                    axis=-1)
    angle = rotation_angles(rot)
    sin = np.sin(angle)
    scale = np.where(sin > 1e-6, angle / np.maximum(2.0 * sin, 1e-12), 0.5)
    return axis * scale[..., None]


def _merge_smooth_bends(parts: np.ndarray, part_parent: np.ndarray, part_joint: np.ndarray, transforms: np.ndarray,
                        root: int, min_cos: float, moving_deg: float, max_length: float):
    """One smooth bend cut into several parts (a blended joint): a part that is its parent's only child
    joins the parent when its bend (rotation relative to the parent, in the parent's frame) follows the
    parent's own bend over the clip (cosine of the two rotation-vector series >= ``min_cos``, both moving
    at least ``moving_deg``) and its joint is closer than ``max_length`` to the parent's. Returns the
    renumbered ``(parts, part_parent, part_joint, transforms, root)``."""
    R = transforms[:, :, :3, :3]  # [K, P, 3, 3]

    def bend(child: int, par: int) -> np.ndarray:
        return rotation_vectors(R[:, par].transpose(0, 2, 1) @ R[:, child]).reshape(-1)  # [K * 3]

    def joins(p: int, q: int, parent: np.ndarray, alive: np.ndarray) -> bool:
        if min_cos > 1.0 or parent[q] < 0 or int(((parent == q) & alive).sum()) != 1:
            return False
        if np.linalg.norm(part_joint[p] - part_joint[q]) >= max_length:
            return False
        b1, b2 = bend(q, int(parent[q])), bend(p, q)
        n1, n2 = np.linalg.norm(b1), np.linalg.norm(b2)
        peak = np.degrees(min(np.abs(b1.reshape(-1, 3)).max(), np.abs(b2.reshape(-1, 3)).max()))
        return not (peak < moving_deg or n1 < 1e-9 or n2 < 1e-9 or float(b1 @ b2) / (n1 * n2) < min_cos)

    return _merge_parts(parts, part_parent, part_joint, transforms, root,
                        lambda p, parent, alive: int(parent[p]) if joins(p, int(parent[p]), parent, alive) else -1)


def _build(anchor: np.ndarray, frames_vm: np.ndarray, adj: sp.csr_matrix, adj_w: sp.csr_matrix,
           cfg: MotionSkeletonConfig, max_parts: int, merge_error: float, spacing_scale: float,
           target: int | None, spacing_override: float | None = None) -> dict:
    U = len(anchor)
    min_size = max(4, int(np.ceil(cfg.min_part_fraction * U)))
    clusters = _motion_clusters(anchor, frames_vm, max_parts, cfg.cluster_vertices)
    parts = connected_parts(adj, clusters, min_size)
    parts, transforms = merge_rigid_parts(anchor, frames_vm, adj, parts, merge_error, target,
                                          min_piece=int(np.ceil(cfg.piece_fraction * U)))
    P = transforms.shape[1]
    links = part_links(adj, anchor, parts)
    joint_of: dict[tuple[int, int], np.ndarray] = {}
    link_cost: dict[tuple[int, int], float] = {}
    for (a, b), border in links.items():
        # the link's cost: how well a joint anywhere explains the pair's motion; its place: on the border
        # along a hinge's axis
        _, res = centre_of_rotation(transforms[:, a], transforms[:, b], border, cfg.border_weight)
        c, _ = centre_of_rotation(transforms[:, a], transforms[:, b], border, cfg.border_weight, cfg.hinge_ratio)
        if np.linalg.norm(c - border) > 0.25:  # runaway solve (nearly parallel motions): the border
            c = border
        joint_of[(a, b)] = c
        link_cost[(a, b)] = res
    root = _root_part(anchor, parts, P, links)
    part_parent = _part_tree(P, root, links, link_cost)
    root_centre = anchor[parts == root].mean(axis=0)
    part_joint = np.zeros((P, 3))
    part_joint[root] = root_centre
    for p in range(P):
        q = int(part_parent[p])
        if q >= 0:
            part_joint[p] = joint_of[(min(p, q), max(p, q))]
    if target is None and cfg.smooth_cos <= 1.0:
        parts, part_parent, part_joint, transforms, root = _merge_smooth_bends(
            parts, part_parent, part_joint, transforms, root, cfg.smooth_cos, cfg.moving_deg, cfg.spacing_range[0])
        P = len(part_parent)
    # spacing like the joints found by motion
    if spacing_override is not None:
        spacing = spacing_override
    elif cfg.spacing is not None:
        spacing = cfg.spacing * spacing_scale
    else:
        spacing = float(np.clip(motion_spacing(part_joint, part_parent, cfg.leaf_spacing, cfg.default_spacing),
                                *cfg.spacing_range)) * spacing_scale
    if target is None:
        parts, part_parent, part_joint, transforms, root = _merge_short_bones(
            parts, part_parent, part_joint, transforms, root, cfg.min_bone_fraction * spacing)
        P = len(part_parent)
    moving = np.array([part_parent[p] >= 0 and relative_rotation_deg(transforms[:, p], transforms[:, part_parent[p]])
                       >= cfg.moving_deg for p in range(P)])
    # shape chains inside every part
    bone_of_vertex = np.zeros(U, dtype=np.int64)
    bones_joint: list[np.ndarray] = []
    bones_parent: list[int] = []
    first_bone = np.zeros(P, dtype=np.int64)
    order = [root]
    k = 0
    while k < len(order):  # parts in tree order
        order.extend(int(c) for c in np.flatnonzero(part_parent == order[k]))
        k += 1
    part_sub: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in order:
        idx = np.flatnonzero(parts == p)
        if p == root:  # the core around the root's centre (as thick as the body there) is the source
            d0 = np.linalg.norm(anchor[idx] - root_centre, axis=1)
            src = np.flatnonzero(d0 <= max(cfg.core_scale * d0.min(), 0.5 * spacing))
            f = _geodesic_from(adj_w, idx, src)
            if not np.isfinite(f).all():
                f = np.where(np.isfinite(f), f, 0.0)  # pieces not reached: the part's own bone
        else:
            q = int(part_parent[p])
            nb = adj[idx][:, parts == q]
            src = np.flatnonzero(np.asarray(nb.sum(axis=1)).ravel() > 0)
            if len(src) == 0:  # a separate piece: start from its vertices nearest the joint
                d0 = np.linalg.norm(anchor[idx] - part_joint[p], axis=1)
                src = np.flatnonzero(d0 <= d0.min() + 1e-9)
            f = _geodesic_from(adj_w, idx, src)
            f = np.where(np.isfinite(f), f, 0.0)  # pieces not reached: the part's own bone
        bone, bparent, bjoint = level_set_bones(idx, f, spacing, adj, anchor, cfg.min_tail_fraction, cfg.max_ring,
                                                cfg.band_fraction)
        part_sub[p] = (idx, bone)
        first_bone[p] = len(bones_joint)
        for b in range(len(bparent)):
            if b == 0:
                bones_joint.append(part_joint[p])
                bones_parent.append(-1)  # filled below (needs the parent part's sub-bones)
            else:
                bones_joint.append(bjoint[b])
                bones_parent.append(int(first_bone[p] + bparent[b]))
        bone_of_vertex[idx] = first_bone[p] + bone
    # attach each part's first bone to the sub-bone of its parent part that borders it most
    for p in order:
        q = int(part_parent[p])
        if q < 0:
            continue
        idx_q, bone_q = part_sub[q]
        idx_p = np.flatnonzero(parts == p)
        touch = np.asarray(adj[idx_q][:, idx_p].sum(axis=1)).ravel()
        if touch.sum() > 0:
            counts = np.bincount(bone_q, weights=touch)
            bones_parent[first_bone[p]] = int(first_bone[q] + np.argmax(counts))
        else:  # separate piece: the parent's sub-bone nearest the joint
            cands = first_bone[q] + np.arange(int(bone_q.max()) + 1)
            d = np.linalg.norm(np.asarray(bones_joint)[cands] - part_joint[p], axis=1)
            bones_parent[first_bone[p]] = int(cands[np.argmin(d)])
    return dict(joints=np.asarray(bones_joint), parents=np.asarray(bones_parent), bone_of_vertex=bone_of_vertex,
                parts=parts, n_parts=P, n_moving=int(moving.sum()),
                spacing=spacing, n_clusters=int(clusters.max()) + 1)


def pull_joints_inside(joints: np.ndarray, anchor: np.ndarray, faces: np.ndarray, spacing: float,
                       tries: int = 4) -> tuple[np.ndarray, int]:
    """Move joints that lie outside the anchor mesh to the centre of the surface around them.

    A joint is outside when the mesh's generalized winding number there is below 0.5 in magnitude
    (:func:`backend.metrics.winding_numbers`). Its replacement is the mean of the anchor vertices within
    ``r`` of it, ``r`` starting at twice its distance to the nearest vertex (at least a quarter ``spacing``)
    and growing 1.5x per try while that mean is still outside; a joint with no inside candidate stays.

    Args:
        joints: float ``[J, 3]``; anchor: float ``[V, 3]``; faces: int ``[F, 3]`` (welded: a closed
            surface where the mesh is one); spacing: the skeleton's bone spacing.
    Returns:
        the joints ``float64 [J, 3]`` (a copy) and how many moved.
    """
    out = np.array(joints, dtype=np.float64)
    outside = np.flatnonzero(np.abs(winding_numbers(out, anchor, faces)) < 0.5)
    if len(outside) == 0:
        return out, 0
    tree = cKDTree(anchor)
    moved = 0
    for j in outside:
        d0, _ = tree.query(out[j])
        r = max(2.0 * d0, 0.25 * spacing)
        for _ in range(tries):
            near = tree.query_ball_point(out[j], r)
            cand = anchor[near].mean(axis=0)
            if abs(winding_numbers(cand[None], anchor, faces)[0]) >= 0.5:
                out[j] = cand
                moved += 1
                break
            r *= 1.5
    return out, moved


def pull_leaf_tails_inside(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, anchor: np.ndarray,
                           faces: np.ndarray, factors: tuple[float, ...] = (0.5, 0.25, 0.125)
                           ) -> tuple[np.ndarray, int]:
    """Shorten leaf bones whose tail lies outside the anchor mesh (the stub past a foot's or a tail's tip).

    A leaf's tail only says where Blender draws the bone's end (it does not move a vertex), and a tip poking out
    of a foot or a head is what an animator sees first. For every leaf bone whose joint is inside and whose tail
    is outside (generalized winding number below 0.5 in magnitude), the tail moves toward the joint by the first
    of ``factors`` (of the bone's length) that puts it inside, else by the last.

    Args:
        joints, tails: float ``[J, 3]``; parents: int ``[J]``; anchor: float ``[V, 3]``; faces: int ``[F, 3]``.
    Returns:
        the tails ``float64 [J, 3]`` (a copy) and how many were shortened.
    """
    out = np.array(tails, dtype=np.float64)
    leaves = np.setdiff1d(np.arange(len(parents)), parents[parents >= 0])
    if len(leaves) == 0:
        return out, 0
    inside = np.abs(winding_numbers(np.concatenate([joints[leaves], out[leaves]]), anchor, faces)) >= 0.5
    todo = leaves[inside[:len(leaves)] & ~inside[len(leaves):]]
    shortened = len(todo)
    for f in factors:
        if len(todo) == 0:
            break
        cand = joints[todo] + f * (tails[todo] - joints[todo])
        out[todo] = cand
        todo = todo[np.abs(winding_numbers(cand, anchor, faces)) < 0.5]
    return out, shortened


def _tails(anchor: np.ndarray, joints: np.ndarray, parents: np.ndarray, bone_of_vertex: np.ndarray,
           spacing: float) -> np.ndarray:
    """Bone tails: the child's joint (one child), the children's mean (several), and for a leaf the
    centre of its vertices farthest from its joint (at least a quarter spacing away)."""
    J = len(parents)
    tails = np.zeros((J, 3))
    for j in range(J):
        kids = np.flatnonzero(parents == j)
        if len(kids) == 1:
            tails[j] = joints[kids[0]]
            continue
        if len(kids) > 1:
            t = joints[kids].mean(axis=0)
            if np.linalg.norm(t - joints[j]) > 1e-3:
                tails[j] = t
                continue
        mine = anchor[bone_of_vertex == j]
        if len(mine):
            d = np.linalg.norm(mine - joints[j], axis=1)
            far = mine[d >= np.quantile(d, 0.9)].mean(axis=0)
        else:
            far = joints[j]
        direction = far - joints[j]
        length = np.linalg.norm(direction)
        if length < 0.25 * spacing:
            p = parents[j]
            direction = joints[j] - joints[p] if p >= 0 else np.array([0.0, 1.0, 0.0])
            norm = np.linalg.norm(direction)
            direction = direction / norm if norm > 1e-9 else np.array([0.0, 1.0, 0.0])
            far = joints[j] + 0.5 * spacing * direction
        tails[j] = far
    return tails


def split_bending_feet(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, bone_of_vertex: np.ndarray,
                       anchor: np.ndarray, frames_vm: np.ndarray, ground: float, gain: float, min_rms: float,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """A toe joint where a foot bends: a leaf bone on the ground (its tail at most ``ground`` high on the anchor, or
    its vertices on some frame at most as high above the clip's lowest point as ``ground`` is above the anchor's: a
    walking foot lifted on the anchor frame), whose vertices one rigid motion reproduces no better than
    ``min_rms`` (RMS over vertices and frames), is cut across its length at 40-80 % from its joint to its tail
    where two rigid motions reproduce those vertices best, when they lower the squared error by at least ``gain``
    of the one-piece fit's. The piece beyond the cut becomes a child bone (a toe) that leads those vertices, with
    the joint at the centre of the cut's cross-section.

    A walking foot rolls over its ball on a few frames only, too little over the clip for the parts' merging
    (``merge_error``) to keep the toes apart, so a rig without this bends the whole foot at the ankle.

    Args:
        joints, tails: float ``[J, 3]``; parents: int ``[J]`` (parents first); bone_of_vertex: int ``[U]``;
        anchor: ``[U, 3]``; frames_vm: ``[U, K, 3]`` (vertex-major).
    Returns:
        ``(joints [J', 3], parents [J'], tails [J', 3], bone_of_vertex [U], added)``, new joints appended.
    """
    J = len(parents)
    n_children = np.bincount(parents[parents >= 0], minlength=J)
    new_joints, new_parents, new_tails = [], [], []
    bone_of_vertex = np.asarray(bone_of_vertex).copy()
    tails = np.asarray(tails, dtype=np.float64).copy()
    K = frames_vm.shape[1]
    frame_ground = float(frames_vm[:, :, 1].min()) + (ground - float(anchor[:, 1].min()))

    def squared_error(idx: np.ndarray, pieces: np.ndarray) -> float:
        """Squared error of the vertices ``idx`` under one rigid motion per piece (``pieces`` bool ``[n, P]``)."""
        T, _, _ = weighted_rigid_fits(anchor[idx], None, pieces.astype(np.float64), frames_vm=frames_vm[idx])
        errors = ResidualGram(anchor[idx], frames_vm[idx], T).single_bone_errors()  # [n, P]
        return float(errors[np.arange(len(idx)), np.argmax(pieces, axis=1)].sum())

    for leaf in np.flatnonzero(n_children == 0):
        mine = np.flatnonzero(bone_of_vertex == leaf)
        axis = tails[leaf] - joints[leaf]
        length2 = float(axis @ axis)
        if len(mine) < 16 or length2 <= 1e-12:
            continue
        if tails[leaf, 1] > ground and frames_vm[mine, :, 1].min() > frame_ground:
            continue
        whole = squared_error(mine, np.ones((len(mine), 1), dtype=bool))
        if whole < min_rms ** 2 * K * len(mine):
            continue  # a planted or still foot: nothing bends
        t = (anchor[mine] - joints[leaf]) @ axis / length2
        best = None
        for cut in (0.4, 0.5, 0.6, 0.7, 0.8):
            beyond = t > cut
            if min(beyond.sum(), (~beyond).sum()) < 8:
                continue
            err = squared_error(mine, np.stack([~beyond, beyond], axis=1))
            if best is None or err < best[0]:
                best = (err, cut, beyond)
        if best is None or best[0] > (1.0 - gain) * whole:
            continue
        _, cut, beyond = best
        ring = np.abs(t - cut) <= 0.1
        head = anchor[mine[ring]].mean(axis=0) if ring.any() else joints[leaf] + cut * axis
        new_joints.append(head)
        new_parents.append(int(leaf))
        new_tails.append(tails[leaf].copy())
        tails[leaf] = head
        bone_of_vertex[mine[beyond]] = J + len(new_joints) - 1
    if not new_joints:
        return joints, parents, tails, bone_of_vertex, 0
    return (np.concatenate([joints, np.asarray(new_joints)]), np.concatenate([parents, np.asarray(new_parents)]),
            np.concatenate([tails, np.asarray(new_tails)]), bone_of_vertex, len(new_joints))


def add_end_joints(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, spacing: float, min_chain: int,
                   min_length: float,
                   ground: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """End joints at the tips of long limbs and feet: every leaf whose chain (the leaf and its single-child
    ancestors) has at least ``min_chain`` bones, or whose tail's height (Y) is at most ``ground``, and whose
    tail lies more than ``min_length * spacing`` from its joint gets a child bone from that tail, a quarter
    spacing long along the leaf, with no vertices of its own.

    Args:
        joints, tails: float ``[J, 3]``; parents: int ``[J]`` (parents first).
    Returns:
        ``(joints [J', 3], parents [J'], tails [J', 3], end int64 [J' - J])``: the arrays with the end bones
        appended (parents still precede children), and the leaf each end bone continues.
    """
    J = len(parents)
    n_children = np.bincount(parents[parents >= 0], minlength=J)
    leaves = np.flatnonzero(n_children == 0)
    ends = []
    for leaf in leaves:
        chain, p = 1, int(parents[leaf])
        while p >= 0 and n_children[p] == 1:
            chain, p = chain + 1, int(parents[p])
        long_chain = min_chain > 0 and chain >= min_chain
        foot = ground is not None and tails[leaf, 1] <= ground
        if (long_chain or foot) and np.linalg.norm(tails[leaf] - joints[leaf]) > min_length * spacing:
            ends.append(int(leaf))
    if not ends:
        return joints, parents, tails, np.zeros(0, dtype=np.int64)
    ends_a = np.asarray(ends, dtype=np.int64)
    heads = tails[ends_a]
    direction = heads - joints[ends_a]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return (np.concatenate([joints, heads]), np.concatenate([parents, ends_a]),
            np.concatenate([tails, heads + 0.25 * spacing * direction]), ends_a)


def _inside_run(line: np.ndarray, anchor: np.ndarray, faces: np.ndarray, step: float, max_gap: float,
                chunk: int = 32) -> int:
    """How many points of ``line [N, 3]`` (``step`` apart) from its start lie inside the mesh (generalized winding
    number), across gaps of outside points no longer than ``max_gap``: ``0`` when the first point is outside. The
    winding numbers are computed a ``chunk`` of points at a time, only as far as the run goes."""
    gap = 0
    for start in range(0, len(line), chunk):
        inside = np.abs(winding_numbers(line[start:start + chunk], anchor, faces)) >= 0.5
        if start == 0 and not inside[0]:
            return 0
        for i, flag in enumerate(inside, start):
            gap = 0 if flag else gap + 1
            if gap * step > max_gap:
                return i - gap + 1
    return len(line)


def add_limb_roots(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, bone_of_vertex: np.ndarray,
                   anchor: np.ndarray, faces: np.ndarray, spacing: float, ground: float,
                   step: float = 0.005, between: Callable[[float], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Hip and shoulder joints for legs whose chain starts below a thick body.

    The shape cut (level bands from the body's core) starts a leg where the leg leaves the belly, since a
    band holding the thigh also holds belly; when the leg never moves against the body (a standing animal),
    the motion does not move that joint up either, and the thigh rotates with the body. For every leg (a chain
    of joints, each with one child, whose last bone's tail lies below ``ground``, Y up) whose first joint ``s``
    is thin (its distance to the nearest vertex less than half the largest above it) the vertical line up from
    ``s`` is followed inside the mesh (across gaps shorter than a quarter ``spacing``: a limb modelled apart),
    and the point on it farthest from the surface (the body's middle there) becomes a new joint between ``s``
    and its parent when it lies at least 0.75 ``spacing`` above ``s`` in a body at least half a ``spacing``
    thick there (its distance to the nearest vertex at least a quarter ``spacing``: not a fish's fin). The
    vertices around that new bone (within twice the leg's radius at ``s`` of the segment, not the leg's own) are
    given to it.

    Args:
        joints, tails: float ``[J, 3]``; parents: int ``[J]`` (parents first); bone_of_vertex: int ``[V]``;
        anchor: float ``[V, 3]``; faces: int ``[F, 3]`` (welded); ground: the height (Y) below which a chain
        end stands on the floor.
        between: called with the share of chain ends done before each one (progress and cancellation).
    Returns:
        ``(joints [J', 3], parents [J'], bone_of_vertex [V], added)``, the new joints appended (a parent may
        follow its child: reorder before use).
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).copy()
    bone_of_vertex = np.asarray(bone_of_vertex).copy()
    J = len(parents)
    n_children = np.bincount(parents[parents >= 0], minlength=J)
    tree = cKDTree(anchor)
    new_joints: list[np.ndarray] = []
    leaves = np.flatnonzero(n_children == 0)
    for i, leaf in enumerate(leaves):
        if between is not None:
            between(i / len(leaves))
        if tails[leaf, 1] > ground:
            continue
        chain = [int(leaf)]
        while parents[chain[-1]] >= 0 and n_children[parents[chain[-1]]] == 1 and parents[parents[chain[-1]]] >= 0:
            chain.append(int(parents[chain[-1]]))
        chain = chain[::-1]  # start .. leaf
        s = chain[0]
        if parents[s] < 0:
            continue
        down = (joints[chain[1]] if len(chain) > 1 else tails[s]) - joints[s]
        if down[1] > -0.5 * np.linalg.norm(down):  # not a leg standing under the body
            continue
        line = joints[s] + np.arange(0.0, 1.0, step)[:, None] * np.array([0.0, 1.0, 0.0])
        # the inside run up from s, across gaps shorter than a quarter spacing (a limb modelled apart from
        # the body, open seams)
        run = _inside_run(line, anchor, faces, step, 0.25 * spacing)
        if run == 0:
            continue
        depth = tree.query(line[:run])[0]  # distance to the nearest vertex (the surface) along the run
        if depth[0] >= 0.5 * depth.max() or depth.max() < 0.25 * spacing:
            continue  # the leg starts inside the body already (a hip found by the motion), or no thick body above
        k = int(np.argmax(depth))
        hip = line[k]
        if np.linalg.norm(hip - joints[s]) < 0.75 * spacing:
            continue
        # the new bone's vertices: around the segment hip -> s, not the leg's own
        seg = joints[s] - hip
        length2 = float(seg @ seg)
        t = np.clip(((anchor - hip) @ seg) / length2, 0.0, 1.0)
        radial = np.linalg.norm(anchor - (hip + t[:, None] * seg), axis=1)
        own = np.isin(bone_of_vertex, chain)
        take = (~own) & (radial <= 2.0 * depth[0]) & (t > 0.0) & (t < 1.0)
        new = J + len(new_joints)
        bone_of_vertex[take] = new
        parents = np.append(parents, parents[s])
        parents[s] = new
        new_joints.append(hip)
    if not new_joints:
        return joints, parents, bone_of_vertex, 0
    return np.concatenate([joints, np.asarray(new_joints)]), parents, bone_of_vertex, len(new_joints)


LEG_WIDTH_JUMP = 1.5  # a band piece this many times wider (RMS radius) than the leg so far is the body


def add_missing_legs(joints: np.ndarray, parents: np.ndarray, bone_of_vertex: np.ndarray, anchor: np.ndarray,
                     adj: sp.csr_matrix, adj_w: sp.csr_matrix, spacing: float, foot_share: float,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Chains for legs the cuts left without one: a foot on the ground with no joint on its leg.

    A leg that never moves against the body belongs to the body's part, and that part's level bands from the
    body's core can cross the belly and the leg together, so the leg may get no bone at all (the standing Fox:
    on copies of its clip with noise of 1e-5 of the diagonal, its forelegs vanished on three draws in eight).
    Every piece of the mesh below ``foot_share`` of the anchor's height (Y up) with no joint below twice that
    height within its own radius plus half a ``spacing`` of its centre (across the ground, XZ) is such a foot.
    Its leg is followed up by level bands of the geodesic distance from the foot (half a ``spacing`` wide),
    each band's piece touching the last, until a piece is more than ``LEG_WIDTH_JUMP`` times as wide (RMS radius)
    as the leg's widest so far: the body, whose piece's centre becomes the leg's first joint (hip or shoulder).
    The chain runs down the bands' centres from there to the foot, a joint per ``spacing`` (at least two
    bones), hangs from the bone holding most of that body piece, and its bones take the leg's vertices (each the
    nearest bone along the chain). A leg shorter than a ``spacing`` is left alone.

    Args:
        joints: ``[J, 3]``; parents: ``[J]``; bone_of_vertex: ``[V]``; anchor: ``[V, 3]``; adj / adj_w: the
        welded mesh's edge graph, unweighted / by edge length ``[V, V]``; foot_share: share of the height.
    Returns:
        ``(joints [J', 3], parents [J'], bone_of_vertex [V], added legs)``, new joints appended (each new
        chain parents first).
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).copy()
    bone_of_vertex = np.asarray(bone_of_vertex).copy()
    V = len(anchor)
    y = anchor[:, 1]
    low = np.flatnonzero(y < y.min() + foot_share * np.ptp(y))
    if len(low) == 0:
        return joints, parents, bone_of_vertex, 0
    n_pieces, piece = connected_components(adj[low][:, low], directed=False)
    new_joints: list[np.ndarray] = []
    added = 0
    for k in range(n_pieces):
        foot = low[piece == k]
        if len(foot) < 4:
            continue
        centre = anchor[foot].mean(axis=0)
        reach = float(np.linalg.norm(anchor[foot][:, [0, 2]] - centre[[0, 2]], axis=1).max()) + 0.5 * spacing
        near = np.linalg.norm(joints[:, [0, 2]] - centre[[0, 2]], axis=1) < reach
        if (near & (joints[:, 1] < y.min() + 2.0 * foot_share * np.ptp(y))).any():
            continue  # a joint on this leg already (only joints count: a body bone's tail may reach into it)
        f = _geodesic_from(adj_w, np.arange(V), foot)
        band = np.where(np.isfinite(f), np.floor(f / (0.5 * spacing)), -1).astype(np.int64)
        current = np.zeros(V, dtype=bool)
        current[foot] = True
        leg = current.copy()
        centres = [centre]
        widest = float(np.sqrt(((anchor[foot] - centre) ** 2).sum(axis=1).mean()))
        body = None
        for b in range(1, int(band.max()) + 1):
            cand = np.flatnonzero((band == b) & ~leg)
            if len(cand) == 0:
                break
            n_c, comp = connected_components(adj[cand][:, cand], directed=False)
            touch = np.bincount(comp, weights=np.asarray(adj[cand][:, current].sum(axis=1)).ravel(), minlength=n_c)
            if touch.max() <= 0:
                break
            ring = cand[comp == int(np.argmax(touch))]
            c = anchor[ring].mean(axis=0)
            width = float(np.sqrt(((anchor[ring] - c) ** 2).sum(axis=1).mean()))
            if width > LEG_WIDTH_JUMP * widest:
                body = ring
                break
            widest = max(widest, width)
            leg[ring] = True
            current[:] = False
            current[ring] = True
            centres.append(c)
        if body is None:
            continue
        hip = anchor[body].mean(axis=0)
        path = np.concatenate([[hip], np.asarray(centres[::-1])])  # hip down the bands' centres to the foot
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
        if arc[-1] < spacing:
            continue
        n_bones = max(2, int(round(arc[-1] / spacing)))
        chain = np.stack([np.interp(arc[-1] * i / n_bones, arc, path[:, a]) for i in range(n_bones)
                          for a in range(3)]).reshape(n_bones, 3)
        parent = int(np.argmax(np.bincount(bone_of_vertex[body], minlength=len(parents))))
        first = len(joints) + len(new_joints)
        for i in range(n_bones):
            new_joints.append(chain[i])
            parents = np.append(parents, parent if i == 0 else first + i - 1)
        members = np.flatnonzero(leg)
        ends = np.concatenate([chain[1:], path[-1:]])
        seg = ends - chain  # [B, 3] bone segments
        t = np.clip(np.einsum("vbc,bc->vb", anchor[members][:, None] - chain[None], seg)
                    / np.maximum((seg ** 2).sum(axis=1), 1e-12), 0.0, 1.0)
        dist = np.linalg.norm(anchor[members][:, None] - (chain[None] + t[..., None] * seg[None]), axis=2)
        bone_of_vertex[members] = first + dist.argmin(axis=1)
        added += 1
    if not new_joints:
        return joints, parents, bone_of_vertex, 0
    return np.concatenate([joints, np.asarray(new_joints)]), parents, bone_of_vertex, added


def root_at_hips(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, anchor: np.ndarray,
                 ground: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """On an upright body whose legs leave the root below the root's joint, the root's joint goes to the hips.

    The root part's joint is its vertices' centre, which on a biped whose torso moves as one part is the chest
    (CesiumMan: its legs then hang from a root in the chest, where an animator looks for the hips). The root
    bone's motion is a free rigid motion, so its joint does not change the deformation: moving it only changes
    where the armature's root bone is drawn and pivots. When the body is taller than it is wide and long, the
    root's child chains that reach below ``ground`` (legs; one that two legs leave counts twice: a pelvis) are
    at least two, all of them start below the root's joint and every other child starts above it, the root's
    joint goes to those children's joints' mean (the hips) and its tail to the other children's mean (the
    chest, where the arms and neck leave). A root whose only children are legs keeps its joint.

    Args:
        joints: float ``[J, 3]``; parents: int ``[J]`` (parents first); tails: float ``[J, 3]``.
        anchor: float ``[V, 3]`` the anchor (Y up).
        ground: height below which a chain that reaches it is a leg.
    Returns:
        ``(joints, tails, moved)`` (copies when moved).
    """
    extent = np.ptp(anchor, axis=0)
    roots = np.flatnonzero(parents < 0)
    if len(roots) != 1 or extent[1] <= max(extent[0], extent[2]):
        return joints, tails, False
    root = int(roots[0])
    members = subtrees(parents)

    def reaches_ground(j: int) -> bool:
        return min(float(joints[members[j], 1].min()), float(tails[members[j], 1].min())) < ground

    kids = np.flatnonzero(parents == root)
    legs = [int(k) for k in kids if reaches_ground(int(k))]
    others = [int(k) for k in kids if int(k) not in legs]
    # a child that both legs hang from (a pelvis the motion cut as one part with the top of a thigh) counts
    # as two legs leaving at its joint
    n_legs = sum(max(1, sum(reaches_ground(int(c)) for c in np.flatnonzero(parents == k))) for k in legs)
    y = joints[root, 1]
    if (n_legs < 2 or not others or any(joints[k, 1] >= y for k in legs)
            or any(joints[k, 1] <= y for k in others)):
        return joints, tails, False
    joints, tails = joints.copy(), tails.copy()
    tails[root] = joints[others].mean(axis=0)
    joints[root] = joints[legs].mean(axis=0)
    return joints, tails, True


def one_sided_share(anchor: np.ndarray, faces: np.ndarray) -> float:
    """How much a piece of surface faces one way: ``|sum of its faces' area vectors| / its area`` (``anchor
    [V, 3]``, ``faces [F, 3]``). Near 0 for a closed or tube-like piece (a limb, a tail: its normals point all
    around), 0.5 for a hemisphere, near 1 for a patch of skin that faces one side (a flank, a belly)."""
    if len(faces) == 0:
        return 0.0
    a = anchor
    area_vectors = 0.5 * np.cross(a[faces[:, 1]] - a[faces[:, 0]], a[faces[:, 2]] - a[faces[:, 0]])
    total = float(np.linalg.norm(area_vectors, axis=1).sum())
    return float(np.linalg.norm(area_vectors.sum(axis=0)) / total) if total > 0 else 0.0


def drop_surface_patches(joints: np.ndarray, parents: np.ndarray, bone_of_vertex: np.ndarray, anchor: np.ndarray,
                         faces: np.ndarray, max_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Chains that are patches of skin, not limbs, are dropped.

    Smooth skinning moves the skin over a joint's blend zone with its own motion, and the motion cut can make
    a part of it (a horse's flank over its hip, a patch of a dragon's back): a chain that leaves the body but
    has no volume around it. A limb, a tail or a head is a closed tube or blob, whose faces point all around;
    such a patch faces one side (:func:`one_sided_share`). Every chain that leaves a joint where two or more
    chains leave, whose faces (those with all three vertices on its bones) face one side by more than
    ``max_share``, is dropped, shallowest first, and its vertices go to the bone it left.

    Args:
        joints: ``[J, 3]``; parents: ``[J]``, parents first; bone_of_vertex: ``[V]``; anchor: ``[V, 3]``;
        faces: ``[F, 3]`` (welded).
    Returns:
        ``(joints [J'], parents [J'], bone_of_vertex [V], dropped chains)``, parents still first.
    """
    parents = np.asarray(parents)
    J = len(parents)
    children = np.bincount(parents[parents >= 0], minlength=J)
    members = subtrees(parents)
    alive = np.ones(J, dtype=bool)
    bone_of_vertex = np.asarray(bone_of_vertex).copy()
    dropped = 0
    for j in range(J):
        p = int(parents[j])
        if p < 0 or children[p] < 2 or not alive[j]:
            continue
        on_chain = np.isin(bone_of_vertex, members[j])
        chain_faces = faces[on_chain[faces].all(axis=1)]
        if one_sided_share(anchor, chain_faces) > max_share:
            alive[members[j]] = False
            bone_of_vertex[on_chain] = p
            dropped += 1
    if not dropped:
        return joints, parents, bone_of_vertex, 0
    keep, remap, new_parents = _renumber(alive, parents)
    return np.asarray(joints)[keep], new_parents, remap[bone_of_vertex], dropped


def _parents_first(joints: np.ndarray, parents: np.ndarray,
                   bone_of_vertex: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The skeleton renumbered so that parents precede children, and every vertex's bone renumbered with it."""
    order = topological_order(parents)
    joints, parents = reorder(joints, parents, order)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return joints, parents, inverse[bone_of_vertex]


def heading_turn(left_axis: np.ndarray | None) -> np.ndarray | None:
    """The rotation ``[3, 3]`` about +Y that turns the horizontal part of ``left_axis [3]`` (Y-up space) to +X,
    or None when there is nothing to turn (no axis, an axis already along +X, or one within 30 degrees of
    vertical, which has no heading)."""
    if left_axis is None:
        return None
    axis = np.asarray(left_axis, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(axis))
    horizontal = float(np.hypot(axis[0], axis[2]))
    if not np.isfinite(norm) or norm <= 0 or horizontal < 0.5 * norm:
        return None
    angle = float(np.arctan2(axis[2], axis[0]))
    if abs(angle) < 1e-9:
        return None
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def skeleton_from_motion(verts: np.ndarray, faces: np.ndarray, prior_joints: np.ndarray | None = None,
                         prior_parents: np.ndarray | None = None,
                         config: MotionSkeletonConfig | None = None,
                         progress: Callable[[float], None] | None = None,
                         surface_points: np.ndarray | None = None,
                         left_axis: np.ndarray | None = None) -> RigSkeleton:
    """A skeleton for an animated mesh from its motion and shape.

    Args:
        verts: float ``[K, V, 3]`` in the anchor-box normalized space (frame 0 = anchor; coordinates in
            [-0.5, 0.5], Y up).
        faces: int ``[F, 3]``.
        prior_joints, prior_parents: the network's anchor skeleton ``[J0, 3]`` / ``[J0]``: checked and its
            size recorded in ``stats``, not used otherwise (on the real and corpus clips of
            ``bench/bench_skeleton.py`` it is 3-5x further from the artist's skeleton than this method).
        config: :class:`MotionSkeletonConfig`.
        progress: called with the fraction done (0 to 1) between steps (each under a second on a
            4000-vertex proxy, 2 cores); an exception it raises (a cancel) stops the build there.
        surface_points: float ``[N, 3]`` the anchor's full-resolution vertices (same space) when ``verts`` is a
            proxy of a larger mesh: the mirror plane is searched on them (a proxy's cells are not a symmetric
            sampling, and on CesiumMan's 4000-vertex proxy the search found a plane 28 degrees off).
        left_axis: float ``[3]`` the character's left side (same space; None: +X, glTF's convention for a
            character facing +Z). The skeleton is built with the mesh turned about +Y so that this axis lies
            along +X (and normalized again by its box there), then turned back: the skeleton and its names then
            do not depend on which way the character faces in the world, and ``.L`` bones are on this side
            (when the mirror plane is not across it).
    Returns:
        :class:`RigSkeleton`.
    Raises:
        ValueError: bad shapes, non-finite values, faces out of range, bad config.
    """
    turn = heading_turn(left_axis)
    if turn is not None:  # build facing the canonical way (and boxed again there), then turn the skeleton back
        x = np.asarray(verts)
        anchor_turned = np.asarray(x[0], dtype=np.float64) @ turn.T
        lo, hi = anchor_turned.min(axis=0), anchor_turned.max(axis=0)
        centre, size = (lo + hi) / 2.0, float((hi - lo).max())

        def turned(points: np.ndarray | None) -> np.ndarray | None:
            return None if points is None else (np.asarray(points, dtype=np.float64) @ turn.T - centre) / size

        found = skeleton_from_motion(turned(x).astype(x.dtype), faces, turned(prior_joints), prior_parents, config,
                                     progress, turned(surface_points))
        stats = dict(found.stats)
        plane = stats.get("mirror_plane")
        if plane is not None:
            normal = np.asarray(plane["normal"], dtype=np.float64)
            stats["mirror_plane"] = dict(plane, normal=(normal @ turn).tolist(),
                                         offset=float(plane["offset"] * size + centre @ normal))
        stats["heading_turn_deg"] = float(np.degrees(np.arctan2(turn[0, 2], turn[0, 0])))
        return RigSkeleton(joints=(found.joints * size + centre) @ turn, parents=found.parents,
                           tails=(np.asarray(found.tails) * size + centre) @ turn, names=found.names,
                           init_weights=found.init_weights, stats=stats)
    t0 = time.perf_counter()
    report = progress if progress is not None else (lambda fraction: None)
    cfg = config or MotionSkeletonConfig()
    cfg.validate()
    x, f = _check_inputs(verts, faces)
    if (prior_joints is None) != (prior_parents is None):
        raise ValueError("prior_joints and prior_parents must be given together")
    if prior_joints is not None:
        pj = np.asarray(prior_joints, dtype=np.float64)
        if pj.ndim != 2 or pj.shape[1] != 3:
            raise ValueError(f"prior_joints must be float [J, 3], got shape {list(pj.shape)}")
        validate_tree(np.asarray(prior_parents), n_joints=len(pj), require_topological=False)
    K, V, _ = x.shape
    rep, group = weld_colocated(x, cfg.weld_tolerance)
    U = len(rep)
    anchor = x[0, rep]
    frame_ids = np.unique(np.round(np.linspace(0, K - 1, min(K, cfg.max_frames))).astype(np.int64))
    frames_vm = np.ascontiguousarray(x[frame_ids][:, rep].transpose(1, 0, 2))
    welded_faces = group[f]
    adj = edge_graph(welded_faces, U)
    coo = adj.tocoo()
    lengths = np.linalg.norm(anchor[coo.row] - anchor[coo.col], axis=1)
    adj_w = sp.csr_matrix((np.maximum(lengths, 1e-12), (coo.row, coo.col)), shape=(U, U))

    max_parts, merge_error, spacing_scale, target = _detail_knobs(cfg)
    max_parts = min(max_parts, max(1, U // 8))
    report(0.05)
    built = _build(anchor, frames_vm, adj, adj_w, cfg, max_parts, merge_error, spacing_scale, target)
    if target is not None and len(built["parents"]) != target:
        # meet the requested count by the chain spacing (coarser or finer), keeping the closest
        best = built
        scales = (0.5, 0.6, 0.7, 0.85, 1.2, 1.5, 2.0, 3.0, 6.0)
        for i, scale in enumerate(scales):
            report(0.4 + 0.2 * i / len(scales))
            trial = _build(anchor, frames_vm, adj, adj_w, cfg, max_parts, merge_error, 1.0, target,
                           spacing_override=built["spacing"] * scale)
            if abs(len(trial["parents"]) - target) < abs(len(best["parents"]) - target):
                best = trial
        built = best

    report(0.6)
    joints, parents, bone_of_vertex = _parents_first(built["joints"], built["parents"], built["bone_of_vertex"])
    n_patches = n_patch_bones = 0
    if target is None and cfg.max_one_sided < 1.0:
        before = len(parents)
        joints, parents, bone_of_vertex, n_patches = drop_surface_patches(joints, parents, bone_of_vertex, anchor,
                                                                         welded_faces, cfg.max_one_sided)
        n_patch_bones = before - len(parents)
    tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    n_recut = 0
    report(0.65)
    searched_plane = mirror_plane(anchor if surface_points is None else np.asarray(surface_points, dtype=np.float64),
                                  progress=lambda f: report(0.65 + 0.15 * f))
    plane = searched_plane if cfg.symmetric else None  # the names use the plane either way
    report(0.8)
    if plane is not None:
        joints, parents, bone_of_vertex, n_recut = equalize_mirrored_chains(joints, parents, tails, bone_of_vertex,
                                                                            anchor, plane)
        if n_recut:
            tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    n_pulled = 0
    if cfg.pull_inside:
        joints, n_pulled = pull_joints_inside(joints, anchor, welded_faces, built["spacing"])
        if n_pulled:
            tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    parents, n_uncrossed = uncross_limbs(joints, parents, plane)  # no mirror plane: nothing moves
    n_shared = 0
    if cfg.share_twin_parents:
        parents, n_shared = share_twin_parents(joints, parents, plane)
        if n_shared:
            joints, parents, bone_of_vertex = _parents_first(joints, parents, bone_of_vertex)
    if n_uncrossed or n_shared:
        tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    report(0.85)
    n_limb_roots = n_new_legs = 0
    if target is None and cfg.limb_roots:
        low = anchor[:, 1].min() + GROUND_SHARE * np.ptp(anchor[:, 1])
        joints, parents, bone_of_vertex, n_limb_roots = add_limb_roots(
            joints, parents, tails, bone_of_vertex, anchor, welded_faces, built["spacing"], low,
            between=lambda f: report(0.85 + 0.05 * f))
        if n_limb_roots:
            joints, parents, bone_of_vertex = _parents_first(joints, parents, bone_of_vertex)
            tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    if target is None and cfg.missing_legs > 0:
        joints, parents, bone_of_vertex, n_new_legs = add_missing_legs(
            joints, parents, bone_of_vertex, anchor, adj, adj_w, built["spacing"], cfg.missing_legs)
        if n_new_legs:
            joints, parents, bone_of_vertex = _parents_first(joints, parents, bone_of_vertex)
            tails = _tails(anchor, joints, parents, bone_of_vertex, built["spacing"])
    validate_tree(parents, n_joints=len(joints))
    report(0.9)
    J = len(parents)
    n_end = n_toes = 0
    if target is None:
        ground = anchor[:, 1].min() + cfg.foot_height * np.ptp(anchor[:, 1]) if cfg.foot_height > 0 else None
        if ground is not None and cfg.toe_gain > 0:
            joints, parents, tails, bone_of_vertex, n_toes = split_bending_feet(
                joints, parents, tails, bone_of_vertex, anchor, frames_vm, ground, cfg.toe_gain, cfg.toe_min_rms)
            J = len(parents)
        joints, parents, tails, ends = add_end_joints(joints, parents, tails, built["spacing"], cfg.end_chain,
                                                      cfg.end_fraction, ground)
        n_end = len(ends)
        if n_end and cfg.pull_inside:  # a tip on a thin foot or ear can lie outside: pull it in too
            heads, n_end_pulled = pull_joints_inside(joints[J:], anchor, welded_faces, built["spacing"])
            if n_end_pulled:
                direction = heads - joints[ends]
                direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
                joints[J:], tails[J:] = heads, heads + 0.25 * built["spacing"] * direction
                tails[ends] = heads  # a limb's last bone still ends where its end bone starts
                n_pulled += n_end_pulled
        J = len(parents)
    moved_root = False
    if target is None and cfg.root_at_hips:
        joints, tails, moved_root = root_at_hips(joints, parents, tails, anchor,
                                                 anchor[:, 1].min() + GROUND_SHARE * np.ptp(anchor[:, 1]))
    n_short_tails = 0
    if target is None and cfg.pull_inside:
        tails, n_short_tails = pull_leaf_tails_inside(joints, parents, tails, anchor, welded_faces)
    report(0.95)
    names, mirror = name_bones(joints, parents, anchor, searched_plane)
    report(1.0)
    weights = np.zeros((V, J), dtype=np.float32)
    weights[np.arange(V), bone_of_vertex[group]] = 1.0
    stats = dict(n_vertices=V, n_welded=U, n_frames_used=int(len(frame_ids)), n_clusters=built["n_clusters"],
                 n_parts=built["n_parts"], n_moving_parts=built["n_moving"],
                 n_static_parts=built["n_parts"] - built["n_moving"], n_bones=J,
                 n_shape_bones=J + n_patch_bones - built["n_parts"] - n_end - n_toes, n_end_bones=n_end,
                 n_toes=n_toes,
                 spacing=built["spacing"], mirror_plane=mirror, n_mirror_recut_chains=n_recut,
                 n_uncrossed_limbs=n_uncrossed, n_pulled_inside=n_pulled, n_limb_roots=n_limb_roots,
                 n_missing_legs=n_new_legs, n_surface_patches=n_patches, n_patch_bones=n_patch_bones,
                 root_at_hips=moved_root, n_leaf_tails_shortened=n_short_tails, n_twin_parents_shared=n_shared,
                 prior_joints=None if prior_joints is None else int(len(prior_joints)),
                 seconds=time.perf_counter() - t0)
    log.info("skeleton from motion: %d bones (%d parts, %d moving), %.2f s", J, built["n_parts"],
             built["n_moving"], stats["seconds"])
    return RigSkeleton(joints=joints.astype(np.float64), parents=parents.astype(np.int32), tails=tails,
                       names=names, init_weights=weights, stats=stats)
