"""Skeleton tokenizer (paper §3.1): a joint tree <-> a stream of (tx, ty, tz, tp) quadruples.

Layout of one sequence::

    BOS  tx_0 ty_0 tz_0 tp_0  tx_1 ty_1 tz_1 tp_1 ...  EOS  PAD PAD ...

``tx, ty, tz`` are bins of ``n_disc`` uniform cells on [-0.5, 0.5]; ``tp = 0`` marks the root and
``tp = parent index + 1`` otherwise. Joints are listed depth-first from the root; siblings are
visited in a deterministic order (by the child's z bin, then y bin, then x bin), so a skeleton has
exactly one token sequence.

Vocabulary (one shared id space)::

    [0, n_disc)                        coordinate bins
    [n_disc, n_disc + max_joints + 1)  parent labels tp = 0 .. max_joints
    BOS, EOS, PAD                      the last three ids
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.skeleton import SkeletonError, reorder, validate_tree


class TokenizerError(ValueError):
    """Raised for a skeleton that cannot be tokenized or a token stream that does not decode."""


@dataclass(frozen=True)
class SkeletonTokenizer:
    """Quantizes and serializes skeletons.

    Attributes:
        n_disc: number of coordinate bins on [-0.5, 0.5] (paper: 128).
        max_joints: longest skeleton a sequence may hold (64).
    """

    n_disc: int = 128
    max_joints: int = 64

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def parent_offset(self) -> int:
        """Token id of ``tp = 0`` (the root label)."""
        return self.n_disc

    @property
    def bos(self) -> int:
        return self.n_disc + self.max_joints + 1

    @property
    def eos(self) -> int:
        return self.bos + 1

    @property
    def pad(self) -> int:
        return self.bos + 2

    @property
    def vocab_size(self) -> int:
        return self.bos + 3

    @property
    def max_len(self) -> int:
        """Longest sequence: BOS + 4 tokens per joint + EOS."""
        return 4 * self.max_joints + 2

    @property
    def bin_size(self) -> float:
        return 1.0 / self.n_disc

    def parent_token(self, parent: int) -> int:
        """Token id for a parent index (``-1`` for the root)."""
        return self.parent_offset + int(parent) + 1

    # ---- quantization -------------------------------------------------------------------------
    def quantize(self, coords: np.ndarray) -> np.ndarray:
        """Bin indices int64 ``[..., 3]`` in ``[0, n_disc)`` of normalized coordinates ``[..., 3]``.

        Coordinates outside [-0.5, 0.5] are clipped to the border bins.
        """
        coords = np.asarray(coords, dtype=np.float64)
        bins = np.floor((coords + 0.5) * self.n_disc).astype(np.int64)
        return np.clip(bins, 0, self.n_disc - 1)

    def dequantize(self, bins: np.ndarray) -> np.ndarray:
        """Bin centres float32 ``[..., 3]`` of bin indices ``[..., 3]``."""
        return ((np.asarray(bins, dtype=np.float64) + 0.5) / self.n_disc - 0.5).astype(np.float32)

    # ---- canonical order ----------------------------------------------------------------------
    def canonical_order(self, bins: np.ndarray, parents: np.ndarray) -> np.ndarray:
        """Depth-first joint order ``[J]`` from the root, siblings sorted by (z, y, x) bins.

        Ties (identical bins) keep the input order, so the order of an already canonical skeleton
        is the identity.
        """
        parents = np.asarray(parents).reshape(-1)
        children: list[list[int]] = [[] for _ in parents]
        for j, p in enumerate(parents):
            if p >= 0:
                children[int(p)].append(j)
        for kids in children:
            kids.sort(key=lambda c: (int(bins[c, 2]), int(bins[c, 1]), int(bins[c, 0]), c))
        root = int(np.flatnonzero(parents < 0)[0])
        order, stack = [], [root]
        while stack:
            j = stack.pop()
            order.append(j)
            stack.extend(reversed(children[j]))
        return np.asarray(order, dtype=np.int64)

    def canonicalize(self, joints: np.ndarray, parents: np.ndarray,
                     merge: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Quantize a skeleton, merge duplicates and put it in canonical depth-first order.

        Args:
            joints: float ``[J, 3]`` normalized joint positions.
            parents: int ``[J]``, ``-1`` for the single root (any order that forms a tree).
            merge: merge joints that fall in the same bin as an earlier joint (see
                :func:`merge_duplicate_joints`).
        Returns:
            ``bins int64 [J', 3]`` and ``parents int32 [J']`` in canonical order (``J' <= J``).
        Raises:
            TokenizerError: the parents are not a single-rooted tree, or J' > max_joints.
        """
        joints = np.asarray(joints, dtype=np.float64).reshape(-1, 3)
        parents = np.asarray(parents, dtype=np.int64).reshape(-1)
        if len(joints) != len(parents):
            raise TokenizerError(f"{len(joints)} joint positions but {len(parents)} parent entries")
        if not np.isfinite(joints).all():
            raise TokenizerError("joint positions contain NaN or Inf")
        try:
            validate_tree(parents, require_topological=False)
        except SkeletonError as exc:
            raise TokenizerError(f"cannot tokenize: {exc}") from exc
        bins = self.quantize(joints)
        order = self.canonical_order(bins, parents)
        bins, parents = reorder(bins, parents, order)
        if merge:
            bins, parents = merge_duplicate_joints(bins, parents, tol=0.5)
            order = self.canonical_order(bins, parents)
            bins, parents = reorder(bins, parents, order)
        if len(parents) > self.max_joints:
            raise TokenizerError(f"skeleton has {len(parents)} joints, more than max_joints = {self.max_joints}")
        return bins.astype(np.int64), parents.astype(np.int32)

    # ---- encode / decode ----------------------------------------------------------------------
    def encode(self, joints: np.ndarray, parents: np.ndarray, merge: bool = True) -> np.ndarray:
        """Token ids int64 ``[4 J' + 2]`` (BOS ... EOS) of a skeleton.

        Args:
            joints: float ``[J, 3]`` normalized (anchor-box) joint positions.
            parents: int ``[J]`` with ``-1`` for the root.
            merge: merge joints in the same bin (see :meth:`canonicalize`).
        """
        bins, parents = self.canonicalize(joints, parents, merge=merge)
        return self.encode_canonical(bins, parents)

    def encode_canonical(self, bins: np.ndarray, parents: np.ndarray) -> np.ndarray:
        """Serialize an already canonical skeleton (``bins int [J, 3]``, ``parents int [J]``)."""
        J = len(parents)
        body = np.empty((J, 4), dtype=np.int64)
        body[:, :3] = bins
        body[:, 3] = self.parent_offset + np.asarray(parents, dtype=np.int64) + 1
        return np.concatenate([[self.bos], body.reshape(-1), [self.eos]]).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Skeleton of a token stream.

        Args:
            tokens: int ``[L]``; a leading BOS is optional, decoding stops at the first EOS, PAD is
                ignored after it.
        Returns:
            ``joints float32 [J, 3]`` (bin centres) and ``parents int32 [J]``.
        Raises:
            TokenizerError: naming the first malformed token.
        """
        tokens = [int(t) for t in np.asarray(tokens).reshape(-1)]
        if tokens and tokens[0] == self.bos:
            tokens = tokens[1:]
        if self.eos in tokens:
            tokens = tokens[: tokens.index(self.eos)]
        while tokens and tokens[-1] == self.pad:
            tokens.pop()
        if len(tokens) % 4:
            raise TokenizerError(f"token stream has {len(tokens)} body tokens, not a multiple of 4")
        if not tokens:
            raise TokenizerError("token stream holds no joints")
        J = len(tokens) // 4
        if J > self.max_joints:
            raise TokenizerError(f"token stream holds {J} joints, more than max_joints = {self.max_joints}")
        body = np.asarray(tokens, dtype=np.int64).reshape(J, 4)
        coords = body[:, :3]
        bad = np.argwhere((coords < 0) | (coords >= self.n_disc))
        if len(bad):
            j, a = bad[0]
            raise TokenizerError(f"joint {j}: token {coords[j, a]} in coordinate slot {'xyz'[a]} is not a bin")
        labels = body[:, 3] - self.parent_offset
        bad = np.flatnonzero((labels < 0) | (labels > self.max_joints))
        if len(bad):
            raise TokenizerError(f"joint {bad[0]}: token {body[bad[0], 3]} in the parent slot is not a parent label")
        parents = (labels - 1).astype(np.int32)
        try:
            validate_tree(parents)
        except SkeletonError as exc:
            raise TokenizerError(f"tokens do not form a valid tree: {exc}") from exc
        return self.dequantize(coords), parents

    def pad_batch(self, sequences: list[np.ndarray], length: int | None = None) -> np.ndarray:
        """Stack token sequences into int64 ``[B, L]`` padded with PAD."""
        length = length or max(len(s) for s in sequences)
        out = np.full((len(sequences), length), self.pad, dtype=np.int64)
        for i, s in enumerate(sequences):
            if len(s) > length:
                raise TokenizerError(f"sequence {i} has {len(s)} tokens, longer than {length}")
            out[i, : len(s)] = s
        return out

    def slot_types(self, length: int) -> np.ndarray:
        """Slot type per position int64 ``[length]``: 0 = BOS, 1/2/3 = x/y/z, 4 = parent.

        Position 0 holds BOS; position ``1 + 4 j + s`` holds slot ``s`` of joint ``j``. EOS/PAD
        positions get the type of the slot they occupy (their ids already tell them apart).
        """
        pos = np.arange(length)
        return np.where(pos == 0, 0, (pos - 1) % 4 + 1).astype(np.int64)


def merge_duplicate_joints(coords: np.ndarray, parents: np.ndarray,
                           tol: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Merge every joint closer than ``tol`` to an earlier joint into that joint.

    Children of a merged joint are re-attached to the joint it merged into. With ``coords`` in bin
    units and ``tol = 0.5`` (half a bin) this merges joints that share a bin.

    Args:
        coords: ``[J, 3]`` positions (bins or normalized units; ``tol`` is in the same units).
        parents: int ``[J]`` in topological order (parent precedes child), ``-1`` for the root.
    Returns:
        ``coords [J', 3]`` and ``parents int32 [J']``, still topological.
    """
    coords = np.asarray(coords)
    parents = np.asarray(parents, dtype=np.int64).reshape(-1)
    J = len(parents)
    target = np.arange(J)  # joint each joint is merged into (itself if kept)
    kept: list[int] = []
    for j in range(J):
        if kept:
            d = np.linalg.norm(coords[kept].astype(np.float64) - coords[j].astype(np.float64), axis=1)
            i = int(np.argmin(d))
            if d[i] < tol:
                target[j] = kept[i]
                continue
        kept.append(j)
    if len(kept) == J:
        return coords, parents.astype(np.int32)
    new_index = np.full(J, -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    new_parents = []
    for j in kept:
        p = int(parents[j])
        new_parents.append(-1 if p < 0 else int(new_index[target[p]]))
    return coords[kept], np.asarray(new_parents, dtype=np.int32)
