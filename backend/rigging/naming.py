"""Readable bone names from a skeleton's structure: the anchor's bilateral mirror plane gives ``.L`` / ``.R``
(Blender's convention), the chains leaving the root (each following its straightest continuation) are
named by where they go: spine/neck/head up the middle, tail the other way, legs down the sides to the
ground, arms otherwise, anything else ``boneN_NN``."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

MIRROR_TOLERANCE = 0.02  # median mirrored-vertex mismatch (share of the box) below which the anchor is symmetric
SIDE_TOLERANCE = 0.02  # joints closer than this to the mirror plane are central
GROUND_SHARE = 0.25  # a side chain ending in the lowest quarter of the anchor's height is a leg, else an arm


def mirror_plane(anchor: np.ndarray, tolerance: float = MIRROR_TOLERANCE) -> tuple[np.ndarray, float] | None:
    """The anchor's bilateral mirror plane ``(normal [3], offset)`` (points ``p`` with ``p . n = offset``),
    or None when no vertical plane mirrors the vertices within ``tolerance`` (median nearest distance of
    the mirrored vertices, in the normalized frame: the median lets a posed limb or two differ).

    Candidates are vertical planes: normals along X, Z and the horizontal principal axes, each through the
    vertices' mean (refined once by the mean of matched mid-points).
    """
    a = np.asarray(anchor, dtype=np.float64)
    if len(a) > 1500:
        a = a[np.random.default_rng(0).choice(len(a), 1500, replace=False)]
    tree = cKDTree(a)
    flat = a[:, [0, 2]] - a[:, [0, 2]].mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    candidates = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])]
    candidates += [np.array([v[0], 0.0, v[1]]) / np.linalg.norm(v) for v in vt]
    best: tuple[float, np.ndarray, float] | None = None
    for n in candidates:
        offset = float((a @ n).mean())
        for _ in range(2):
            mirrored = a - 2.0 * ((a @ n) - offset)[:, None] * n
            d, k = tree.query(mirrored)
            offset = float(0.5 * ((a @ n) + (a[k] @ n)).mean())
        mirrored = a - 2.0 * ((a @ n) - offset)[:, None] * n
        score = float(np.median(tree.query(mirrored)[0]))
        if best is None or score < best[0]:
            best = (score, n, offset)
    if best is None or best[0] > tolerance:
        return None
    _, n, offset = best
    # orient the normal so that +side is +X (or +Z): the character's left when it faces +Z (glTF)
    if n[0] < -1e-9 or (abs(n[0]) <= 1e-9 and n[2] < 0):
        n, offset = -n, -offset
    return n, offset


def _subtree_leaf(j: int, children: list[list[int]], joints: np.ndarray) -> int:
    """The joint of ``j``'s subtree farthest from ``j`` along the tree's longest path."""
    best, best_depth = j, 0
    stack = [(j, 0)]
    while stack:
        u, d = stack.pop()
        if d > best_depth or (d == best_depth and np.linalg.norm(joints[u] - joints[j]) >
                              np.linalg.norm(joints[best] - joints[j])):
            best, best_depth = u, d
        stack.extend((c, d + 1) for c in children[u])
    return best


def name_bones(joints: np.ndarray, parents: np.ndarray, anchor: np.ndarray) -> tuple[list[str], dict | None]:
    """Names for the bones of a tree (``joints [J, 3]``, ``parents [J]`` in topological order).

    Returns the ``J`` unique names and the mirror plane used (``{"normal": [3], "offset": float}`` or None).
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents)
    J = len(parents)
    children: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(parents):
        if p >= 0:
            children[int(p)].append(j)
    plane = mirror_plane(anchor)
    if plane is not None:
        n, offset = plane
        signed = joints @ n - offset
        side = np.where(signed > SIDE_TOLERANCE, "L", np.where(signed < -SIDE_TOLERANCE, "R", ""))
    else:
        side = np.full(J, "", dtype=object)
    root = int(np.flatnonzero(parents < 0)[0])
    names: list[str | None] = [None] * J
    names[root] = "root"

    anchor_y = np.asarray(anchor, dtype=np.float64)[:, 1]
    ground = float(anchor_y.min() + GROUND_SHARE * np.ptp(anchor_y))  # legs reach below this height

    def chain_from(origin: int, start: int) -> list[int]:
        """Joints from ``start`` on, each time to the child that continues the chain straightest."""
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

    def chain_side(chain: list[int]) -> str:
        """The side most of the chain's joints are on ("" when most are central)."""
        sided = [str(side[u]) for u in chain if side[u]]
        if 2 * len(sided) <= len(chain):
            return ""
        return max(("L", "R"), key=sided.count)

    # the chains leaving the root: the central one reaching highest is the spine (neck and head at its end)
    root_chains = [(c, chain_from(root, c)) for c in children[root]]
    central = [(c, ch) for c, ch in root_chains if chain_side(ch) == ""]
    spine_start, head_dir = None, None
    if central:
        c, ch = max(central, key=lambda item: joints[item[1][-1]][1])
        if joints[ch[-1]][1] > joints[root][1]:
            spine_start, head_dir = c, joints[ch[-1]] - joints[root]
    chains: list[tuple[str, str, list[int]]] = []  # (role, side, joints)
    pending = [(root, c) for c in children[root]]
    while pending:
        origin, start = pending.pop(0)
        chain = chain_from(origin, start)
        leaf = chain[-1]
        s = chain_side(chain)
        if s:
            role = "leg" if joints[leaf][1] < ground else "arm"
        elif origin == root and start == spine_start:
            role = "spine"
        elif head_dir is not None and float((joints[leaf] - joints[origin]) @ head_dir) < 0:
            role = "tail"
        else:
            role = "bone"
        chains.append((role, s, chain))
        on_chain = set(chain)
        for u in chain:
            pending.extend((u, c) for c in children[u] if c not in on_chain)

    # number side chains so that mirrored ones share a number; central chains of one role likewise counted
    count: dict[tuple[str, str], int] = {}
    number: list[int] = [0] * len(chains)
    left = [i for i, (r, s, _) in enumerate(chains) if s == "L"]
    right = [i for i, (r, s, _) in enumerate(chains) if s == "R"]
    paired: dict[int, int] = {}
    if plane is not None and left and right:
        n, offset = plane
        for i in left:
            start = joints[chains[i][2][0]]
            mirrored = start - 2.0 * (start @ n - offset) * n
            free = [k for k in right if k not in paired.values() and chains[k][0] == chains[i][0]]
            if free:
                d = [np.linalg.norm(joints[chains[k][2][0]] - mirrored) for k in free]
                paired[i] = free[int(np.argmin(d))]
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

    for i, (role, s, chain) in enumerate(chains):
        suffix = f".{s}" if s else ""
        tag = role if totals[(role, s)] <= 1 and role != "bone" else f"{role}{number[i]}"
        if role == "spine" and len(chain) >= 3:
            labels = [f"spine_{k + 1:02d}" for k in range(len(chain) - 2)] + ["neck", "head"]
        elif role == "spine" and len(chain) == 2:
            labels = ["neck", "head"]
        elif role == "spine":
            labels = ["head"]
        else:
            labels = [f"{tag}_{k + 1:02d}" for k in range(len(chain))]
        for u, lab in zip(chain, labels):
            names[u] = lab + suffix

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
