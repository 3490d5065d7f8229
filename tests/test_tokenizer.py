"""Skeleton tokenizer: quantization, canonical order, round trips, malformed streams."""

from __future__ import annotations

import numpy as np
import pytest

from backend.models.tokenizer import SkeletonTokenizer, TokenizerError, merge_duplicate_joints
from backend.skeleton import is_valid_tree, tree_distances

TK = SkeletonTokenizer(n_disc=128, max_joints=64)


def random_tree(rng: np.random.Generator, J: int) -> tuple[np.ndarray, np.ndarray]:
    """Random topological tree with well-separated joints in [-0.45, 0.45]."""
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, J)], dtype=np.int32)
    joints = rng.uniform(-0.45, 0.45, size=(J, 3))
    return joints, parents


def shuffled(joints, parents, rng):
    """Same tree with joints listed in a random (non-topological) order."""
    perm = rng.permutation(len(parents))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    new_parents = np.where(parents[perm] >= 0, inv[np.maximum(parents[perm], 0)], -1)
    return joints[perm], new_parents


def test_vocabulary_layout():
    assert TK.vocab_size == 128 + 65 + 3
    assert len({TK.bos, TK.eos, TK.pad}) == 3 and min(TK.bos, TK.eos, TK.pad) == 128 + 65
    assert TK.parent_token(-1) == 128 and TK.parent_token(63) == 192
    assert TK.max_len == 258


def test_quantization_error_is_at_most_half_a_bin():
    x = np.linspace(-0.5, 0.5, 10001)[:, None].repeat(3, axis=1)
    bins = TK.quantize(x)
    assert bins.min() == 0 and bins.max() == 127
    assert np.abs(TK.dequantize(bins) - x).max() <= 0.5 / 128 + 1e-7
    assert (TK.quantize(np.array([[-3.0, 0.7, 0.5]])) == [[0, 127, 127]]).all()  # clipped


@pytest.mark.parametrize("seed", range(5))
def test_round_trips_are_exact_up_to_quantization(seed):
    rng = np.random.default_rng(seed)
    J = int(rng.integers(1, 65))
    joints, parents = random_tree(rng, J)
    tokens = TK.encode(joints, parents)
    assert tokens[0] == TK.bos and tokens[-1] == TK.eos
    dec_joints, dec_parents = TK.decode(tokens)
    # encode(decode(tokens)) is the identity on token streams
    assert np.array_equal(TK.encode(dec_joints, dec_parents), tokens)
    # decode(encode(skeleton)) is the same tree up to quantization: match joints through the order
    bins, canon_parents = TK.canonicalize(joints, parents)
    assert np.array_equal(dec_parents, canon_parents)
    if len(dec_parents) == J:  # no joints merged (distinct bins)
        q = TK.quantize(joints)
        idx = [int(np.flatnonzero((q == b).all(1))[0]) for b in bins]
        assert np.abs(dec_joints - joints[idx]).max() <= 0.5 / 128 + 1e-6
        # same tree: tree distances agree after the permutation
        assert np.array_equal(tree_distances(dec_parents), tree_distances(parents)[np.ix_(idx, idx)])


def test_canonical_order_does_not_depend_on_input_order():
    rng = np.random.default_rng(7)
    joints, parents = random_tree(rng, 30)
    tokens = TK.encode(joints, parents)
    for _ in range(5):
        j2, p2 = shuffled(joints, parents, rng)
        assert np.array_equal(TK.encode(j2, p2), tokens)


def test_order_is_depth_first_with_siblings_by_z_then_y_then_x():
    # root with three children; two share z and differ in y, a third has the lowest z
    joints = np.array([[0, 0, 0], [0.2, 0.1, 0.3], [0.1, -0.2, 0.3], [0.3, 0.3, -0.2], [0.2, 0.2, 0.4]])
    parents = np.array([-1, 0, 0, 0, 1])  # joint 4 hangs off joint 1
    dec_joints, dec_parents = TK.decode(TK.encode(joints, parents))
    expected = joints[[0, 3, 2, 1, 4]]  # z=-0.2 first; then z=0.3 with y=-0.2 before y=0.1; 4 after 1
    assert np.abs(dec_joints - expected).max() <= 0.5 / 128
    assert dec_parents.tolist() == [-1, 0, 0, 0, 3]


def test_duplicate_joints_are_merged_and_children_reattached():
    joints = np.array([[0, 0, 0], [0.2, 0, 0], [0.2001, 0, 0], [0.3, 0.1, 0]])
    parents = np.array([-1, 0, 1, 2])  # joint 2 duplicates joint 1; joint 3 hangs off the duplicate
    dec_joints, dec_parents = TK.decode(TK.encode(joints, parents))
    assert len(dec_parents) == 3 and dec_parents.tolist() == [-1, 0, 1]
    # without merging the duplicate stays
    assert len(TK.decode(TK.encode(joints, parents, merge=False))[1]) == 4


def test_merge_duplicate_joints_keeps_a_topological_tree():
    rng = np.random.default_rng(3)
    for _ in range(20):
        J = int(rng.integers(2, 40))
        parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, J)])
        coords = rng.integers(0, 4, size=(J, 3))  # many collisions
        c2, p2 = merge_duplicate_joints(coords, parents, tol=0.5)
        assert is_valid_tree(p2)
        assert len(np.unique(c2, axis=0)) == len(c2)


def test_bad_skeletons_are_rejected_with_clear_errors():
    with pytest.raises(TokenizerError, match="exactly one root"):
        TK.encode(np.zeros((3, 3)) + [[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]], [-1, -1, 0])
    with pytest.raises(TokenizerError, match="cycle"):
        TK.encode(np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]), [-1, 2, 1])
    with pytest.raises(TokenizerError, match="max_joints"):
        small = SkeletonTokenizer(max_joints=4)
        small.encode(np.linspace(-0.4, 0.4, 15).reshape(5, 3), [-1, 0, 1, 2, 3])
    with pytest.raises(TokenizerError, match="NaN"):
        TK.encode(np.array([[0, 0, np.nan]]), [-1])


def test_malformed_token_streams_are_rejected():
    good = TK.encode(np.array([[0, 0, 0], [0.1, 0.1, 0.1]]), [-1, 0])
    with pytest.raises(TokenizerError, match="multiple of 4"):
        TK.decode(np.concatenate([good[:-2], [TK.eos]]))
    bad = good.copy()
    bad[2] = TK.parent_token(0)  # parent label in a coordinate slot
    with pytest.raises(TokenizerError, match="not a bin"):
        TK.decode(bad)
    bad = good.copy()
    bad[8] = TK.parent_token(1)  # joint 1 its own parent
    with pytest.raises(TokenizerError, match="valid tree"):
        TK.decode(bad)
    bad = good.copy()
    bad[4] = TK.parent_token(0)  # root refers to a parent
    with pytest.raises(TokenizerError, match="valid tree"):
        TK.decode(bad)
    with pytest.raises(TokenizerError, match="no joints"):
        TK.decode([TK.bos, TK.eos])
    # PAD after EOS is ignored
    padded = TK.pad_batch([good], length=len(good) + 5)[0]
    assert np.array_equal(TK.decode(padded)[1], TK.decode(good)[1])
