"""The Skeleton data contract: joints, parent tree, names, and tree utilities."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


class SkeletonError(ValueError):
    """Raised when joints/parents do not form a valid single-rooted tree."""


@dataclass
class Skeleton:
    """A joint tree.

    Attributes:
        joints: float32 ``[J, 3]`` joint positions.
        parents: int32 ``[J]`` parent index per joint, ``-1`` for the single root; a parent precedes
            its children.
        names: ``J`` readable joint names.
    """

    joints: np.ndarray
    parents: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, dtype=np.float32).reshape(-1, 3)
        self.parents = np.asarray(self.parents, dtype=np.int32).reshape(-1)
        if not self.names:
            self.names = [f"joint_{j:02d}" for j in range(len(self.parents))]
        validate_tree(self.parents, n_joints=len(self.joints))
        if len(self.names) != len(self.parents):
            raise SkeletonError(f"{len(self.names)} names for {len(self.parents)} joints")

    @property
    def n_joints(self) -> int:
        return int(self.joints.shape[0])

    def bones(self) -> np.ndarray:
        """int ``[J-1, 2]`` (parent, child) pairs."""
        child = np.flatnonzero(self.parents >= 0)
        return np.stack([self.parents[child], child], axis=1)


def validate_tree(parents: np.ndarray, n_joints: int | None = None, require_topological: bool = True) -> None:
    """Check that ``parents [J]`` is one tree with a single root (``-1``).

    Raises:
        SkeletonError: naming the problem.
    """
    parents = np.asarray(parents).reshape(-1)
    J = len(parents)
    if J == 0:
        raise SkeletonError("skeleton has no joints")
    if n_joints is not None and n_joints != J:
        raise SkeletonError(f"{n_joints} joint positions but {J} parent entries")
    roots = np.flatnonzero(parents < 0)
    if len(roots) != 1:
        raise SkeletonError(f"skeleton must have exactly one root, found {len(roots)}")
    if np.any(parents >= J):
        raise SkeletonError(f"parent index out of range (J = {J})")
    if np.any(parents == np.arange(J)):
        raise SkeletonError("a joint is its own parent")
    if require_topological:
        bad = np.flatnonzero((parents >= 0) & (parents >= np.arange(J)))
        if len(bad):
            raise SkeletonError(f"joint {int(bad[0])} comes before its parent {int(parents[bad[0]])}")
    else:  # cycle check by walking up from every joint
        for j in range(J):
            seen, p = 0, j
            while p >= 0:
                p = int(parents[p])
                seen += 1
                if seen > J:
                    raise SkeletonError(f"parents contain a cycle through joint {j}")


def is_valid_tree(parents: np.ndarray) -> bool:
    """True when ``parents`` is a single-rooted tree in topological order."""
    try:
        validate_tree(parents)
        return True
    except SkeletonError:
        return False


def topological_order(parents: np.ndarray) -> np.ndarray:
    """A permutation ``order [J]`` (breadth-first from the root) so that parents precede children."""
    parents = np.asarray(parents).reshape(-1)
    validate_tree(parents, require_topological=False)
    children: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            children[int(p)].append(j)
    order, queue = [], deque([int(np.flatnonzero(parents < 0)[0])])
    while queue:
        j = queue.popleft()
        order.append(j)
        queue.extend(children[j])
    return np.asarray(order, dtype=np.int64)


def reorder(joints: np.ndarray, parents: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute a skeleton so that new joint ``i`` is old joint ``order[i]``; parents are remapped."""
    order = np.asarray(order)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    old_parents = np.asarray(parents)[order]
    new_parents = np.where(old_parents >= 0, inverse[np.maximum(old_parents, 0)], -1)
    return np.asarray(joints)[order], new_parents.astype(np.int32)


def tree_distances(parents: np.ndarray) -> np.ndarray:
    """Unweighted shortest-path distances ``[J, J]`` between joints of the tree (paper §4 ``D``)."""
    parents = np.asarray(parents).reshape(-1)
    J = len(parents)
    adj: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(parents):
        if p >= 0:
            adj[j].append(int(p))
            adj[int(p)].append(j)
    dist = np.full((J, J), -1, dtype=np.int32)
    for s in range(J):
        dist[s, s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if dist[s, v] < 0:
                    dist[s, v] = dist[s, u] + 1
                    queue.append(v)
    return dist


def depths(parents: np.ndarray) -> np.ndarray:
    """Depth ``[J]`` of each joint (root = 0); parents must precede children."""
    parents = np.asarray(parents).reshape(-1)
    d = np.zeros(len(parents), dtype=np.int32)
    for j, p in enumerate(parents):
        if p >= 0:
            d[j] = d[p] + 1
    return d


def bone_tails(joints: np.ndarray, parents: np.ndarray, min_length: float) -> np.ndarray:
    """Tail positions ``float64 [J, 3]`` for bones whose heads are ``joints [J, 3]``.

    * one child: the tail sits on the child's joint; several children: on their mean;
    * a leaf, or a joint whose children's mean falls on it (e.g. hips between two legs): continues
      its parent bone's direction for half the parent bone's length;
    * a root whose children's mean falls on it: toward the farthest child; a lone root: up (+Z).

    Every bone is at least ``min_length`` long (Blender deletes zero-length bones). A bone with exactly
    one child (further than ``min_length``) thus ends on that child's head, so an armature can connect them.
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    children: list[list[int]] = [[] for _ in range(len(parents))]
    for j, p in enumerate(parents.tolist()):
        if p >= 0:
            children[p].append(j)
    tails = np.zeros_like(joints)
    up = np.array([0.0, 0.0, 1.0])
    for j in range(len(joints)):
        head = joints[j]
        kids = children[j]
        direction, length = None, 0.0
        if kids:  # toward the children's mean
            offset = joints[kids].mean(axis=0) - head
            length = float(np.linalg.norm(offset))
            direction = offset / length if length >= min_length else None
        if direction is None and parents[j] >= 0:  # a leaf, or children all around: continue the parent bone
            offset = head - joints[parents[j]]
            parent_len = float(np.linalg.norm(offset))
            if parent_len >= min_length:
                direction, length = offset / parent_len, 0.5 * parent_len
        if direction is None and kids:  # a root with children all around it: toward the farthest child
            far = kids[int(np.argmax(np.linalg.norm(joints[kids] - head, axis=1)))]
            offset = joints[far] - head
            length = float(np.linalg.norm(offset))
            direction = offset / length if length >= min_length else None
        if direction is None:
            direction, length = up, 0.0
        tails[j] = head + direction * max(length, min_length)
    return tails


def carry_tails(tails: np.ndarray, joints: np.ndarray, moved_joints: np.ndarray, parents: np.ndarray,
                tol: float = 1e-6) -> np.ndarray:
    """Tails ``float64 [J, 3]`` of a skeleton whose joints moved from ``joints [J, 3]`` to ``moved_joints``.

    A bone whose tail sat on its only child's joint (within ``tol``) still ends there (so connected bones
    stay connected); any other tail (leaves, branching bones) moves with its bone's head, keeping its
    direction and length.
    """
    tails = np.asarray(tails, dtype=np.float64)
    joints = np.asarray(joints, dtype=np.float64)
    moved = np.asarray(moved_joints, dtype=np.float64)
    parents = np.asarray(parents).reshape(-1)
    out = tails + (moved - joints)
    counts = np.bincount(parents[parents >= 0], minlength=len(parents))
    for child, parent in enumerate(parents.tolist()):
        if parent >= 0 and counts[parent] == 1 and np.linalg.norm(tails[parent] - joints[child]) <= tol:
            out[parent] = moved[child]
    return out

