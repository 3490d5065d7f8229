"""Mirror-consistent skeletons: the left and right chains of a symmetric body get the same number of bones.

The motion clustering sees each side separately, so a knee can come out as one part on the left and two on
the right, and the shape chains can cut two mirrored legs into two and three bones. A rigger gives both
sides the same bones; the skeleton from motion does the same here, before its bones get end joints and
names, so that ``.L`` / ``.R`` chains match one to one (X-mirror posing and Symmetrize then work). A limb
that the spanning tree hung under the other side's limb hangs from the body instead (:func:`uncross_limbs`).
"""

from __future__ import annotations

import numpy as np

from backend.rigging.naming import (CENTRAL_BAND, PAIR_DISTANCE, chain_side, joint_sides, limb_kinds,
                                   pair_mirrored_chains, plane_distance, skeleton_chains)
from backend.skeleton import reorder, topological_order

LENGTH_RATIO = 1.6  # mirrored chains whose lengths differ by more than this factor are left alone


def _polyline(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Cumulative arc length ``[n]`` of ``points [n, 3]`` and its total."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return cum, float(cum[-1])


def _along(points: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points at the given arc-length ``fractions [m]`` of the polyline ``points [n, 3]``."""
    cum, total = _polyline(points)
    t = np.asarray(fractions) * total
    return np.stack([np.interp(t, cum, points[:, a]) for a in range(3)], axis=1)


def _nearest_bone(points: np.ndarray, heads: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each of ``points [n, 3]``, the index of the nearest bone of the chain ``heads [m, 3]`` (bone ``k``
    runs from head ``k`` to head ``k + 1``, the last one to ``end [3]``)."""
    ends = np.concatenate([heads[1:], end[None]])
    best = np.full(len(points), np.inf)
    out = np.zeros(len(points), dtype=np.int64)
    for k in range(len(heads)):
        a, ab = heads[k], ends[k] - heads[k]
        t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        closer = d < best
        best[closer], out[closer] = d[closer], k
    return out


def equalize_mirrored_chains(joints: np.ndarray, parents: np.ndarray, tails: np.ndarray, bone_of_vertex: np.ndarray,
                             anchor: np.ndarray, plane: tuple[np.ndarray, float], max_rounds: int = 64,
                             length_ratio: float = LENGTH_RATIO) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Give the shorter of every mirrored pair of chains (legs with legs, arms with arms, as
    :func:`~backend.rigging.naming.name_bones` pairs them) as many bones as the longer one.

    The anchor is a posed frame (one leg forward, the other back), so the two chains are not mirror images in
    space and their joints stay where the motion put them; only the bone count is matched. The shorter chain,
    as a polyline from its first joint to its last bone's tail, is re-cut at the arc-length fractions of the
    longer chain's joints (along its own polyline to its tail): a knee the motion found on one side only is
    placed at the same share of the other leg. Branches that hung off the re-cut chain hang off its nearest
    new joint; its vertices go to the nearest new bone. Pairs whose lengths differ by more than
    ``length_ratio`` are different limbs and are left alone. One chain is re-cut per round (the chains are
    cut again after it), at most ``max_rounds``.

    Args:
        joints, tails: float ``[J, 3]``; parents: int ``[J]`` (parents first); bone_of_vertex: int ``[U]`` (the
            bone of each vertex of ``anchor [U, 3]``); plane: ``(normal [3], offset)``.
    Returns:
        ``(joints [J', 3], parents [J'], bone_of_vertex [U], n_chains_recut)``, parents first (the tails
        change with the joints: compute them again).
    """
    joints = np.asarray(joints, dtype=np.float64).copy()
    parents = np.asarray(parents, dtype=np.int64).copy()
    tails = np.asarray(tails, dtype=np.float64)
    bone_of_vertex = np.asarray(bone_of_vertex, dtype=np.int64).copy()
    anchor = np.asarray(anchor, dtype=np.float64)
    recut = 0
    skip: set[tuple[int, int]] = set()
    for _ in range(max_rounds):
        chains = [c for _, c in skeleton_chains(joints, parents)]
        sides = joint_sides(joints, plane)
        pairs = pair_mirrored_chains(chains, [chain_side(c, sides) for c in chains], joints, plane,
                                     kinds=limb_kinds(chains, joints, anchor))  # as the names pair them
        todo = None
        for i, k in pairs.items():
            a, b = chains[i], chains[k]
            if len(a) == len(b) or (a[0], b[0]) in skip:
                continue
            long, short = (a, b) if len(a) > len(b) else (b, a)
            long_line = np.concatenate([joints[long], tails[long[-1]][None]])
            short_line = np.concatenate([joints[short], tails[short[-1]][None]])
            (cum_long, len_long), (_, len_short) = _polyline(long_line), _polyline(short_line)
            if min(len_long, len_short) <= 1e-9 or max(len_long, len_short) > length_ratio * min(len_long, len_short):
                skip.add((a[0], b[0]))
                continue
            todo = (long, short, cum_long[:len(long)] / len_long, short_line)
            break
        if todo is None:
            break
        long, short, fractions, short_line = todo
        new = _along(short_line, fractions)  # [len(long), 3]; new[0] is the chain's first joint
        n_old = len(joints)
        ids = list(short) + list(range(n_old, n_old + len(long) - len(short)))
        joints = np.concatenate([joints, new[len(short):]])
        joints[short] = new[:len(short)]
        parents = np.concatenate([parents, np.asarray(ids[len(short) - 1:-1], dtype=np.int64)])
        tails = np.concatenate([tails, np.zeros((len(long) - len(short), 3))])
        tails[ids[-1]] = short_line[-1]
        on_chain = set(ids)
        for u in short:  # branches off the re-cut chain: to its nearest new joint
            for c in np.flatnonzero(parents == u):
                if int(c) not in on_chain:
                    parents[int(c)] = ids[int(np.argmin(np.linalg.norm(new - joints[int(c)], axis=1)))]
        mine = np.flatnonzero(np.isin(bone_of_vertex, short))
        if len(mine):
            bone_of_vertex[mine] = np.asarray(ids)[_nearest_bone(anchor[mine], new, short_line[-1])]
        recut += 1
    order = topological_order(parents)
    joints, parents = reorder(joints, parents, order)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return joints, parents.astype(np.int64), inverse[bone_of_vertex], recut


def uncross_limbs(joints: np.ndarray, parents: np.ndarray, plane: tuple[np.ndarray, float] | None
                  ) -> tuple[np.ndarray, int]:
    """Hang a limb that branches off the other side's limb from the nearest ancestor not on that side.

    The motion parts of a crotch or a chest can hold the top of both thighs (or both shoulders), and the
    spanning tree then hangs one leg under the other (CesiumMan's ``leg_01.L`` under ``leg_01.R``): rotating
    one thigh would swing the other leg. A joint on one side whose parent is on the other side and has other
    children (a branch, not a chain that crosses the mirror plane, like a tail swinging sideways) gets the
    parent's nearest ancestor that is central or on its own side as parent; its position is unchanged.

    Args:
        joints: float ``[J, 3]``; parents: int ``[J]`` (parents precede children); plane: the mirror plane or None.
    Returns:
        ``(parents [J], number of joints re-hung)``; still topological.
    """
    parents = np.asarray(parents).copy()
    if plane is None:
        return parents, 0
    side = joint_sides(joints, plane)
    opposite = {"L": "R", "R": "L"}
    moved = 0
    for j in range(len(parents)):
        p = int(parents[j])
        if p < 0 or not side[j] or side[p] != opposite[side[j]] or np.count_nonzero(parents == p) < 2:
            continue
        while p >= 0 and side[p] == opposite[side[j]]:
            p = int(parents[p])
        if p >= 0:
            parents[j] = p
            moved += 1
    return parents, moved


def share_twin_parents(joints: np.ndarray, parents: np.ndarray, plane: tuple[np.ndarray, float] | None
                       ) -> tuple[np.ndarray, int]:
    """Hang mirrored limbs from the same trunk bone.

    The spanning tree picks each limb's parent from the motion alone, and two parts of the trunk can tie: on
    CesiumMan subdivided to 37k vertices the left arm hung from a small upper-chest bone (``spine_01``) and the
    right arm from the root, so turning that bone swung one arm only. For two mirrored chains (paired as the
    names pair them) that leave different joints of the trunk (within ``CENTRAL_BAND`` of the plane), one an
    ancestor of the other, the chain leaving the ancestor moves to the other (the bone nearer the limbs: the
    chest, not the hips), unless that would hang it under its own chain. Positions are unchanged; the fit's
    error moves a little either way (``docs/fitting.md``).

    Args:
        joints: float ``[J, 3]``; parents: int ``[J]`` (parents precede children); plane: the mirror plane or None.
    Returns:
        ``(parents [J], number of chains moved)``; a moved chain's new parent may follow it in index order
        (renumber with :func:`backend.skeleton.topological_order`).
    """
    parents = np.asarray(parents).copy()
    if plane is None:
        return parents, 0
    side = joint_sides(joints, plane)
    offset = np.abs(plane_distance(joints, plane))  # [J]
    chain_list = [chain for _, chain in skeleton_chains(joints, parents)]
    twins = pair_mirrored_chains(chain_list, [chain_side(c, side) for c in chain_list], joints, plane,
                                 max_distance=PAIR_DISTANCE)

    def ancestors(j: int) -> set[int]:
        out, p = set(), int(parents[j])
        while p >= 0:
            out.add(p)
            p = int(parents[p])
        return out

    moved = 0
    for i, k in twins.items():
        a, b = chain_list[i][0], chain_list[k][0]
        pa, pb = int(parents[a]), int(parents[b])
        if pa == pb or pa < 0 or pb < 0 or max(offset[pa], offset[pb]) >= CENTRAL_BAND:
            continue
        above_b, above_a = ancestors(pb) | {pb}, ancestors(pa) | {pa}
        if pa in above_b and a not in above_b:  # (never under its own chain: a twin can hang from a limb)
            parents[a] = pb
        elif pb in above_a and b not in above_a:
            parents[b] = pa
        else:
            continue
        moved += 1
    return parents, moved
