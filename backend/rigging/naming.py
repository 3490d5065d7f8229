"""Readable bone names from a skeleton's structure: the anchor's bilateral mirror plane gives ``.L`` / ``.R``
(Blender's convention), the chains leaving the root (each following its straightest continuation) are
named by where they go (a root whose only child is the body's hub hands them to it, the ``torso``):
spine/neck/head up the middle, tail the other way (``hips`` up to the last bone
hind limbs leave it), legs down the sides to the ground (and the mirror twin of a leg raised off it),
arms otherwise, anything else ``boneN_NN``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from backend.rigging.fit.articulated import subtrees

MIRROR_TOLERANCE = 0.015  # median mirrored-vertex mismatch (share of the box) below which the anchor is symmetric
MIRROR_TREE_POINTS = 8000  # the mirrored points' neighbours are searched among at most this many vertices ...
MIRROR_COARSE_TREE_POINTS = 3000  # ... and among this many in the coarse search
SIDE_TOLERANCE = 0.02  # joints closer than this to the mirror plane are central
CENTRAL_BAND = 0.05  # an unpaired chain from the trunk whose joints lie this close to the plane (mean) is central
GROUND_SHARE = 0.35  # a side chain ending in the lowest 35 % of the anchor's height is a leg, else an arm
ARM_START_GAP = 0.15  # on an upright body, a "leg" starting this share of the height above the lowest leg is an arm
MIRROR_COARSE_DEG = 5.0  # the plane search's first step between normals (degrees about the up axis)
MIRROR_COARSE_BOUND = 0.03  # the first step scores exactly only mismatches up to this (and the tolerance)
PAIR_DISTANCE = 0.1  # chains pair as mirror twins, whatever their kind, within this (start mismatch + length difference)


def _mirror_mismatch(points: np.ndarray, tree: cKDTree, normal: np.ndarray, offset: float,
                     bound: float = np.inf) -> float:
    """Median distance from the points mirrored in the plane ``p . normal = offset`` to their nearest point.

    With a finite ``bound`` the nearest-point searches stop at that distance (several times faster for a plane
    far from a mirror): a median of at most ``bound / 2`` is exact, and ``inf`` means the median exceeds
    ``bound / 2`` (an even count's median averages its two middle distances, the upper one beyond ``bound``).
    """
    mirrored = points - 2.0 * ((points @ normal) - offset)[:, None] * normal
    return float(np.median(tree.query(mirrored, distance_upper_bound=bound)[0]))


def mirror_plane(anchor: np.ndarray, tolerance: float = MIRROR_TOLERANCE,
                 progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, float] | None:
    """The anchor's bilateral mirror plane ``(normal [3], offset)`` (points ``p`` with ``p . n = offset``),
    or None when no vertical plane mirrors the vertices within ``tolerance`` (median nearest distance of
    the mirrored vertices, in the normalized frame: the median lets a posed limb or two, a turned head or a
    swung tail differ).

    A search over vertical planes, coarse to fine: normals every ``MIRROR_COARSE_DEG`` degrees about the up
    axis and offsets every 0.01 around the vertices' mean (on a subsample), then the best three refined to half a
    degree and 0.001. The vertices' mean is not the plane: a head turned to one side moves it off the body's
    middle (the Fox survey clip: 0.019 of the box). The nearest-point look-ups stop at a bound that keeps every
    score the search compares exact (see :func:`_mirror_mismatch`), so the plane is the one an unbounded search
    finds, in about 0.6x its time. ``progress`` is called with the share of the search done every few dozen
    planes (about 0.1 s); it may raise to cancel.
    """
    dense = np.asarray(anchor, dtype=np.float64)
    rng = np.random.default_rng(0)
    if len(dense) > MIRROR_TREE_POINTS:
        dense = dense[rng.choice(len(dense), MIRROR_TREE_POINTS, replace=False)]
    a = dense if len(dense) <= 1500 else dense[rng.choice(len(dense), 1500, replace=False)]
    coarse = a if len(a) <= 400 else a[rng.choice(len(a), 400, replace=False)]
    # the mirrored points are looked up among all the points (not only those mirrored): on a sampling that is not
    # itself symmetric (a proxy's cells, a scan's triangulation) a mirrored point then lands near the surface's
    # points at the dense sampling's spacing, and the right plane scores clearly lowest
    tree = cKDTree(dense)
    coarse_tree = tree if len(dense) <= MIRROR_COARSE_TREE_POINTS else cKDTree(
        dense[rng.choice(len(dense), MIRROR_COARSE_TREE_POINTS, replace=False)])

    def normal_at(deg: float) -> np.ndarray:
        rad = np.radians(deg)
        return np.array([np.cos(rad), 0.0, np.sin(rad)])

    tick = progress if progress is not None else (lambda fraction: None)
    degrees = np.arange(0.0, 180.0, MIRROR_COARSE_DEG)
    # scored with a search bound first; while fewer than three scores are known exactly (at most half the
    # bound), the others are scored again with a wider one: the three best are those of an unbounded search
    bound = 2.0 * max(MIRROR_COARSE_BOUND, tolerance)
    scored = []
    for i, deg in enumerate(degrees):
        n = normal_at(deg)
        centre = float((a @ n).mean())
        for offset in centre + np.arange(-0.15, 0.15 + 1e-9, 0.01):
            scored.append((_mirror_mismatch(coarse, coarse_tree, n, offset, bound), float(deg), float(offset)))
        tick(0.5 * (i + 1) / len(degrees))
    scored.sort()
    while scored[2][0] > bound / 2 and np.isfinite(bound):
        bound_was_half = bound / 2
        exact = [item for item in scored if item[0] <= bound_was_half]
        bound = 4.0 * bound if bound < 0.25 else np.inf
        scored = sorted(exact + [(_mirror_mismatch(coarse, coarse_tree, normal_at(deg), offset, bound), deg, offset)
                                 for score, deg, offset in scored if score > bound_was_half])
    best: tuple[float, np.ndarray, float] | None = None
    fine = np.arange(-MIRROR_COARSE_DEG / 2, MIRROR_COARSE_DEG / 2 + 1e-9, 0.5)
    for c, (_, deg0, offset0) in enumerate(scored[:3]):
        for i, deg in enumerate(deg0 + fine):
            tick(0.5 + 0.5 * (c * len(fine) + i) / (3 * len(fine)))
            n = normal_at(deg)
            for offset in offset0 + np.arange(-0.01, 0.01 + 1e-9, 0.002):
                score = _mirror_mismatch(a, tree, n, offset, 2.0 * tolerance)
                if best is None or score < best[0]:
                    best = (score, n, float(offset))
    _, n, offset = best
    for o in offset + np.arange(-0.002, 0.002 + 1e-9, 0.001):  # the offset to 0.001 at the best normal
        score = _mirror_mismatch(a, tree, n, o, 2.0 * tolerance)
        if score < best[0]:
            best = (score, n, float(o))
    if best[0] > tolerance:
        return None
    _, n, offset = best
    n = np.where(np.abs(n) < 1e-12, 0.0, n)
    # orient the normal so that +side is +X (or +Z): the character's left when it faces +Z (glTF)
    if n[0] < -1e-9 or (abs(n[0]) <= 1e-9 and n[2] < 0):
        n, offset = -n, -offset
    return n, offset


def plane_distance(points: np.ndarray, plane: tuple[np.ndarray, float]) -> np.ndarray:
    """Signed distance ``float64 [N]`` of ``points [N, 3]`` to the mirror plane (positive: the left side)."""
    n, offset = plane
    return np.asarray(points, dtype=np.float64) @ n - offset


def joint_sides(joints: np.ndarray, plane: tuple[np.ndarray, float] | None) -> np.ndarray:
    """``"L"`` / ``"R"`` / ``""`` (central, or no mirror plane) for each joint of ``joints [J, 3]``."""
    if plane is None:
        return np.full(len(joints), "", dtype=object)
    signed = plane_distance(joints, plane)
    return np.where(signed > SIDE_TOLERANCE, "L", np.where(signed < -SIDE_TOLERANCE, "R", "")).astype(object)


def skeleton_chains(joints: np.ndarray, parents: np.ndarray, start: int | None = None) -> list[tuple[int, list[int]]]:
    """The tree cut into chains: from each child of the root (or of ``start``), and then from every joint of a
    chain for each child the chain does not continue to, follow the straightest continuation (the child whose
    bone turns least; with no direction yet, the deepest). Returns ``(origin, chain)`` pairs, root chains
    first; every joint below the root (``start``) is in exactly one chain.
    """
    joints = np.asarray(joints, dtype=np.float64)
    children: list[list[int]] = [[] for _ in range(len(parents))]
    for j, p in enumerate(parents):
        if p >= 0:
            children[int(p)].append(j)

    def chain_from(origin: int, start: int) -> list[int]:
        chain, prev = [start], joints[origin]
        while children[chain[-1]]:
            cur = chain[-1]
            kids = children[cur]
            direction = joints[cur] - prev
            if len(kids) == 1 or np.linalg.norm(direction) < 1e-9:
                nxt = kids[int(np.argmax([_depth_below(k, children) for k in kids]))]
            else:
                steps = joints[kids] - joints[cur]
                cos = steps @ direction / (np.linalg.norm(steps, axis=1) * np.linalg.norm(direction) + 1e-12)
                nxt = kids[int(np.argmax(cos))]
            prev = joints[cur]
            chain.append(nxt)
        return chain

    root = int(np.flatnonzero(np.asarray(parents) < 0)[0]) if start is None else int(start)
    out: list[tuple[int, list[int]]] = []
    pending = [(root, c) for c in children[root]]
    while pending:
        origin, start = pending.pop(0)
        chain = chain_from(origin, start)
        out.append((origin, chain))
        on_chain = set(chain)
        for u in chain:
            pending.extend((u, c) for c in children[u] if c not in on_chain)
    return out


def chain_side(chain: list[int], sides: np.ndarray) -> str:
    """The side most of the chain's joints are on (``""`` when most are central)."""
    sided = [str(sides[u]) for u in chain if sides[u]]
    if 2 * len(sided) <= len(chain):
        return ""
    return max(("L", "R"), key=sided.count)


def limb_kinds(chains: list[list[int]], joints: np.ndarray, anchor: np.ndarray) -> list[str]:
    """``"leg"`` for a chain ending in the lowest ``GROUND_SHARE`` of the anchor's height, else ``"arm"``; on an
    upright body (taller than it is wide and long), a chain that would be a leg but starts more than
    ``ARM_START_GAP`` of the height above the lowest-starting leg is an arm: a long-armed biped's hanging hands
    (a dancing robot's) reach as low as a quadruped's feet, but they leave the body at the shoulders."""
    anchor = np.asarray(anchor, dtype=np.float64)
    extent = np.ptp(anchor, axis=0)
    ground = float(anchor[:, 1].min() + GROUND_SHARE * extent[1])
    kinds = ["leg" if joints[c[-1]][1] < ground else "arm" for c in chains]
    legs = [i for i, kind in enumerate(kinds) if kind == "leg"]
    if extent[1] > max(extent[0], extent[2]) and len(legs) >= 3:
        starts = np.array([joints[chains[i][0]][1] for i in legs])
        for i, start in zip(legs, starts):
            if start - starts.min() > ARM_START_GAP * extent[1]:
                kinds[i] = "arm"
    return kinds


def pair_mirrored_chains(chains: list[list[int]], chain_sides: list[str], joints: np.ndarray,
                         plane: tuple[np.ndarray, float], kinds: list[str] | None = None,
                         max_distance: float = np.inf) -> dict[int, int]:
    """Left chain index -> right chain index, closest pairs first: the distance of a (left, right) pair is
    how far the right chain's first joint lies from the left one's mirrored plus the difference of their
    lengths (along their joints), so a limb pairs with its twin rather than with a stub beside it; pairs (of the
    same kind, when ``kinds`` is given) closer than ``max_distance`` are taken in order of that distance."""
    n, offset = plane
    left = [i for i, s in enumerate(chain_sides) if s == "L"]
    right = [k for k, s in enumerate(chain_sides) if s == "R"]
    arc = {i: float(np.linalg.norm(np.diff(joints[chains[i]], axis=0), axis=1).sum()) for i in left + right}
    candidates = []
    for i in left:
        start = joints[chains[i][0]]
        mirrored = start - 2.0 * (start @ n - offset) * n
        for k in right:
            d = float(np.linalg.norm(joints[chains[k][0]] - mirrored)) + abs(arc[i] - arc[k])
            if d < max_distance and (kinds is None or kinds[k] == kinds[i]):
                candidates.append((d, i, k))
    paired: dict[int, int] = {}
    for _, i, k in sorted(candidates):
        if i not in paired and k not in paired.values():
            paired[i] = k
    return paired


def name_bones(joints: np.ndarray, parents: np.ndarray, anchor: np.ndarray,
               plane: tuple[np.ndarray, float] | None | str = "search") -> tuple[list[str], dict | None]:
    """Names for the bones of a tree (``joints [J, 3]``, ``parents [J]`` in topological order).

    ``plane``: the anchor's mirror plane when the caller has it (None: no sides); ``"search"`` finds it
    (:func:`mirror_plane`). Returns the ``J`` unique names and the mirror plane used
    (``{"normal": [3], "offset": float}`` or None).
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents)
    J = len(parents)
    if isinstance(plane, str):
        plane = mirror_plane(anchor)
    side = joint_sides(joints, plane)
    root = int(np.flatnonzero(parents < 0)[0])
    names: list[str | None] = [None] * J
    names[root] = "root"
    # the body's hub: a root whose only child branches three ways or more (the root's joint beside the body's
    # centre, e.g. a motion skeleton whose root part moves as one) hands the chains to that child, the torso
    kids = np.flatnonzero(parents == root)
    hub = root
    if len(kids) == 1 and int((parents == kids[0]).sum()) >= 3:
        hub = int(kids[0])
        names[hub] = "torso"
    body = {root, hub}

    all_chains = skeleton_chains(joints, parents, start=hub)  # with a torso, its children start the chains
    # a chain that starts in the middle, at a joint two limbs leave (a chest or pelvis below the torso), and
    # goes on to one side: that girdle is not part of the limb
    girdles: list[int] = []
    split: list[tuple[int, list[int]]] = []
    subtree = subtrees(parents)  # every joint with its descendants

    def both_ways(u: int) -> bool:
        """Limbs leave ``u`` to both sides: a girdle even a little off the plane (a root part's centre leaning
        to one side; on the proxies of CesiumMan subdivided to 9.3k and 84k vertices the pelvis joint took the
        left leg's name and the right leg hung under it)."""
        kids = np.flatnonzero(parents == u)
        return len(kids) >= 2 and {"L", "R"} <= {chain_side(subtree[int(k)].tolist(), side) for k in kids}

    for origin, chain in all_chains:
        k = 0
        while k < len(chain) - 1 and (not side[chain[k]] or both_ways(chain[k])):
            k += 1
        if 0 < k and chain_side(chain[k:], side) and int((parents == chain[k - 1]).sum()) >= 2:
            girdles.extend(chain[:k])
            split.append((chain[k - 1], chain[k:]))
        else:
            split.append((origin, chain))
    all_chains = split
    limb = limb_kinds([c for _, c in all_chains], joints, anchor)  # legs reach the ground, arms do not
    # limbs come in mirrored pairs and leave the body off its middle; a chain with no mirror twin that leaves the
    # body on its middle is the spine or a tail, even where it swings to one side (a turned head, a swung tail)
    chain_list = [ch for _, ch in all_chains]
    majority = [chain_side(ch, side) for ch in chain_list]
    twinned: set[int] = set()
    if plane is not None:
        for twins in (pair_mirrored_chains(chain_list, majority, joints, plane, max_distance=PAIR_DISTANCE),
                      pair_mirrored_chains(chain_list, majority, joints, plane, kinds=limb)):
            twinned |= set(twins) | set(twins.values())
    # a chain leaving a girdle (a chest between the limbs) counts as leaving the body: a head turned to one side
    # at the anchor can hang its chains from the chest
    # and a chain with no twin whose joints lie on both sides of the plane is not a limb either: a limb stays on
    # its side (a head turned at the anchor whose neck starts just off the middle crosses it)
    # and an untwinned chain from the trunk that keeps close to the plane (a head whose neck leaves the shoulders
    # a little off the middle: on a 4000-vertex proxy of CesiumMan its joints lay 0.02-0.05 to one side) is
    # central: a limb leaves the body further out
    trunk = body | set(girdles)
    crosses = [{"L", "R"} <= {str(side[u]) for u in chain} for _, chain in all_chains]
    near = [plane is not None and float(np.abs(plane_distance(joints[chain], plane)).mean()) < CENTRAL_BAND
            for _, chain in all_chains]
    sides = ["" if majority[i] and i not in twinned and (origin in body and not side[chain[0]] or origin in girdles
                                                         or origin in trunk and (crosses[i] or near[i]))
             else majority[i] for i, (origin, chain) in enumerate(all_chains)]
    # the chains leaving the body: the central one reaching highest is the spine (neck and head at its end)
    central = [ch for (origin, ch), sd in zip(all_chains, sides) if origin in trunk and sd == ""]
    spine_start, head_dir = None, None
    if central:
        ch = max(central, key=lambda c: joints[c[-1]][1])
        if joints[ch[-1]][1] > joints[hub][1]:
            spine_start, head_dir = ch[0], joints[ch[-1]] - joints[hub]
    chains: list[tuple[str, str, list[int]]] = []  # (role, side, joints)
    for (origin, chain), kind, s in zip(all_chains, limb, sides):
        leaf = chain[-1]
        if s:
            role = kind
        elif origin in trunk and chain[0] == spine_start:
            role = "spine"
        elif origin in body and head_dir is not None and float((joints[leaf] - joints[origin]) @ head_dir) < 0:
            role = "tail"
        elif origin not in body and kind == "leg":  # a limb tucked under the body's middle (a raised foreleg)
            role = "leg"
        else:
            role = "bone"
        chains.append((role, s, chain))

    # a "tail" chain that side chains (hind legs) leave is the rear of the body up to the last of them
    starts_sided = {chain[0]: s for _, s, chain in chains}
    hips_end = [-1] * len(chains)
    for i, (role, _, chain) in enumerate(chains):
        if role == "tail":
            branched = [k for k, u in enumerate(chain)
                        if any(starts_sided.get(int(c)) for c in np.flatnonzero(parents == u))]
            hips_end[i] = max(branched) if branched else -1
    # number side chains so that mirrored ones share a number; central chains of one role likewise counted
    count: dict[tuple[str, str], int] = {}
    number: list[int] = [0] * len(chains)
    paired: dict[int, int] = {}
    if plane is not None:
        # mirrored chains pair by where they start (a limb posed off the ground on one side only, like a running
        # fox's raised foreleg, is still its twin: the pair is a leg when either side reaches the ground), then
        # what is left by kind
        chain_sides = [sd for _, sd, _ in chains]  # chain_list: the same chains, in this order
        paired = pair_mirrored_chains(chain_list, chain_sides, joints, plane, max_distance=PAIR_DISTANCE)
        for i, k in paired.items():
            role = "leg" if "leg" in (chains[i][0], chains[k][0]) else chains[i][0]
            chains[i], chains[k] = (role, *chains[i][1:]), (role, *chains[k][1:])
        rest = [sd if i not in paired and i not in paired.values() else "" for i, sd in enumerate(chain_sides)]
        paired.update(pair_mirrored_chains(chain_list, rest, joints, plane, kinds=[r for r, _, _ in chains]))
        # a limb tucked under the middle (central "leg") is the twin of an unpaired limb on one side: it takes
        # the other side
        taken = set(paired) | set(paired.values())
        for i, (role, sd, chain) in enumerate(chains):
            if role != "leg" or sd or i in taken:
                continue
            for flip in ("L", "R"):
                trial = ["" for _ in chains]
                trial[i] = flip
                for k, (_, sk, _) in enumerate(chains):
                    if sk and sk != flip and k not in taken:
                        trial[k] = sk
                twin = pair_mirrored_chains(chain_list, trial, joints, plane, max_distance=PAIR_DISTANCE)
                mine = [(a, b) for a, b in twin.items() if i in (a, b)]
                if mine:
                    chains[i] = (chains[i][0], flip, chain)
                    k = mine[0][1] if mine[0][0] == i else mine[0][0]
                    chains[k] = ("leg", chains[k][1], chains[k][2])
                    paired[mine[0][0]] = mine[0][1]
                    taken |= {i, k}
                    break
    for i, (role, s, chain) in enumerate(chains):
        if s == "R" and i in paired.values():
            continue
        key = (role, s or "C")
        count[key] = count.get(key, 0) + 1
        number[i] = count[key]
        if i in paired:
            k = paired[i]
            number[k] = number[i]
            count[(role, "R")] = max(count.get((role, "R"), 0), number[i])
    totals: dict[tuple[str, str], int] = {}
    for i, (role, s, _) in enumerate(chains):
        sides = ("L", "R") if s else ("",)  # mirrored sides are numbered alike
        for side_key in sides:
            totals[(role, side_key)] = max(totals.get((role, side_key), 0), number[i])

    # exactly two mirrored pairs of legs and a head: the pair leaving the body nearer the head are the forelegs
    leg_tags: dict[int, str] = {}
    legs = [i for i, (role, s, _) in enumerate(chains) if role == "leg"]
    if head_dir is not None and legs and all(chains[i][1] for i in legs) and {number[i] for i in legs} == {1, 2}:
        ahead = {n: float(np.mean([(joints[chains[i][2][0]] - joints[hub]) @ head_dir for i in legs if number[i] == n]))
                 for n in (1, 2)}
        fore = max((1, 2), key=ahead.get)
        leg_tags = {fore: "foreleg", 3 - fore: "hindleg"}
    for i, (role, s, chain) in enumerate(chains):
        suffix = f".{s}" if s else ""
        tag = role if totals[(role, s)] <= 1 and role != "bone" else f"{role}{number[i]}"
        if role == "leg" and leg_tags:
            tag = leg_tags[number[i]]
        if role == "spine" and len(chain) >= 3:
            labels = [f"spine_{k + 1:02d}" for k in range(len(chain) - 2)] + ["neck", "head"]
        elif role == "spine" and len(chain) == 2:
            labels = ["neck", "head"]
        elif role == "spine":
            labels = ["head"]
        elif role == "tail" and hips_end[i] >= 0:  # the rear body the hind limbs hang from, then the tail
            k0 = hips_end[i] + 1
            hips = "hips" + tag[len("tail"):]  # numbered like the tails when there are several
            labels = [f"{hips}_{k + 1:02d}" for k in range(k0)] + [f"{tag}_{k + 1:02d}" for k in range(len(chain) - k0)]
        else:
            labels = [f"{tag}_{k + 1:02d}" for k in range(len(chain))]
        for u, lab in zip(chain, labels):
            names[u] = lab + suffix

    for u in girdles:  # in front of the torso (toward the head) a chest, behind it a pelvis
        front = head_dir is not None and float((joints[u] - joints[hub]) @ head_dir) > 0
        names[u] = "chest" if front else "pelvis"

    # unique names (a collision only from odd structures): add a letter
    seen: dict[str, int] = {}
    out: list[str] = []
    for j in range(J):
        nm = names[j] or f"bone_{j:02d}"
        if nm in seen:
            seen[nm] += 1
            base, dot, sfx = nm.partition(".")
            nm = f"{base}_{seen[nm]}{dot}{sfx}"
        seen.setdefault(nm, 0)
        out.append(nm)
    mirror = None if plane is None else {"normal": plane[0].tolist(), "offset": plane[1]}
    return out, mirror


def _depth_below(j: int, children: list[list[int]]) -> int:
    depth, frontier = 0, [j]
    while True:
        nxt = [c for u in frontier for c in children[u]]
        if not nxt:
            return depth
        depth += 1
        frontier = nxt
