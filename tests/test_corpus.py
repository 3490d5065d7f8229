"""Tests of the procedural creature corpus (training/data): small creatures, fixed seeds, seconds."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from backend.lbs import linear_blend_skinning
from backend.skeleton import validate_tree
from training.data.body_plans import (FAMILIES, MAX_CHAIN_BONES, ROLE_LIMITS, build_body_plan,
                                      clearance_violations, joint_limits, unbranched_chains)
from training.data.corpus import (Corpus, CorpusConfig, CorpusError, CreatureRecord, generate_creature,
                                  split_of)
from training.data.generate import generate_corpus, shard_plan
from training.data.motion import make_clip
from training.data.skinning import cotangent_laplacian, prune_weights

SMALL = dict(n_frames=6, verts=(1000, 1400), grid_cells=110)


def small_config(**kw) -> CorpusConfig:
    return CorpusConfig(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def creatures() -> list[CreatureRecord]:
    """One creature of every family (pure LBS), plus one with the secondary wobble."""
    recs = [generate_creature(i, seed=11, config=small_config(families=(fam,), secondary_prob=0.0))
            for i, fam in enumerate(FAMILIES)]
    return recs


def _local_angles_deg(transforms: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Rotation angle [K, J] of every joint relative to its parent, from rest->frame transforms."""
    R = transforms[..., :3, :3].astype(np.float64)
    local = R.copy()
    child = np.flatnonzero(parents >= 0)
    local[:, child] = np.swapaxes(R[:, parents[child]], -1, -2) @ R[:, child]
    cos = (np.trace(local, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_every_family_is_generated(creatures):
    assert [r.family for r in creatures] == list(FAMILIES)


def test_record_shapes_and_types(creatures):
    for r in creatures:
        K, V = r.verts.shape[:2]
        J = r.n_joints
        assert K == SMALL["n_frames"] and r.verts.dtype == np.float32
        assert r.faces.dtype == np.int32 and r.faces.shape[1] == 3 and r.faces.max() < V
        assert r.rest_verts.shape == (V, 3)
        assert r.joints.shape == (K, J, 3) and r.rest_joints.shape == (J, 3)
        assert r.parents.dtype == np.int32 and len(r.joint_names) == J
        assert r.weights.shape == (V, J) and r.weights.dtype == np.float32
        assert r.transforms.shape == (K, J, 4, 4) and r.transforms.dtype == np.float32
        assert r.split in ("train", "val", "test")


def test_no_nan(creatures):
    for r in creatures:
        for name in ("verts", "rest_verts", "joints", "rest_joints", "weights", "transforms"):
            assert np.isfinite(getattr(r, name)).all(), f"{r.family}: {name} has NaN/Inf"


def test_lbs_of_rest_mesh_equals_frames(creatures):
    for r in creatures:
        assert r.secondary_amplitude == 0.0
        posed = linear_blend_skinning(r.rest_verts, r.weights, r.transforms)
        size = float(np.ptp(r.rest_verts, axis=0).max())
        assert np.abs(posed - r.verts).max() <= 1e-5 * size, r.family


def test_transforms_move_joints(creatures):
    """Each joint's own transform carries its rest position to its per-frame position."""
    for r in creatures:
        rest_h = np.concatenate([r.rest_joints, np.ones((r.n_joints, 1), np.float32)], axis=1)
        moved = np.einsum("kjab,jb->kja", r.transforms, rest_h)[..., :3]
        assert np.allclose(moved, r.joints, atol=1e-4 * np.ptp(r.rest_joints).max()), r.family
        R = r.transforms[..., :3, :3].astype(np.float64)
        assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-5), "transforms must be rigid"


def test_secondary_wobble_is_bounded():
    r = generate_creature(2, seed=4, config=small_config(secondary_prob=1.0))
    assert r.secondary_amplitude > 0
    offset = np.linalg.norm(r.verts - r.lbs_frames(), axis=-1)
    assert offset.max() <= r.secondary_amplitude * (1 + 1e-4) + 1e-6
    assert offset.max() > 0.1 * r.secondary_amplitude  # it really moves


def test_weights_on_simplex_with_four_influences(creatures):
    for r in creatures:
        assert (r.weights >= 0).all()
        assert np.allclose(r.weights.sum(axis=1), 1.0, atol=1e-5), r.family
        assert (np.count_nonzero(r.weights, axis=1) <= 4).all(), r.family
        has_child = np.zeros(r.n_joints, bool)
        has_child[r.parents[r.parents >= 0]] = True
        leaves = ~has_child
        assert r.weights[:, leaves].sum() == 0, "tip joints carry no weight (bones belong to parents)"


def test_weights_are_smooth_not_rigid(creatures):
    """Bone heat blends across joints: a good share of vertices has two or more influences."""
    for r in creatures:
        shared = (np.count_nonzero(r.weights, axis=1) >= 2).mean()
        assert shared > 0.2, f"{r.family}: only {shared:.0%} of vertices blend two bones"


def test_parents_form_a_tree_with_readable_names(creatures):
    for r in creatures:
        validate_tree(r.parents)  # single root, parents precede children
        assert (r.parents < 0).sum() == 1
        assert len(set(r.joint_names)) == r.n_joints
        for name in r.joint_names:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert 6 <= r.n_joints <= 64


def test_chains_have_one_to_twelve_bones():
    for fam in FAMILIES:
        for seed in range(4):
            plan = build_body_plan(fam, np.random.default_rng(seed))
            lengths = [len(c) - 1 for c in unbranched_chains(plan.parents)]
            assert sum(lengths) == plan.n_joints - 1
            assert 1 <= min(lengths) and max(lengths) <= MAX_CHAIN_BONES, (fam, lengths)


def test_every_frame_is_away_from_the_rest_pose(creatures):
    """Mean rotation of the articulated joints (non-root, non-leaf) >= 15 deg at every frame, anchor included."""
    for r in creatures:
        ang = _local_angles_deg(r.transforms, r.parents)
        has_child = np.zeros(r.n_joints, bool)
        has_child[r.parents[r.parents >= 0]] = True
        mask = has_child & (r.parents >= 0)
        per_frame = ang[:, mask].mean(axis=1)
        assert per_frame[0] >= 15.0, f"{r.family}: anchor only {per_frame[0]:.1f} deg from rest"
        assert per_frame.min() >= 15.0, r.family
        assert not np.allclose(r.verts[0], r.rest_verts, atol=1e-3)


def test_clip_angles_respect_joint_limits():
    for fam in FAMILIES:
        rng = np.random.default_rng(3)
        plan = build_body_plan(fam, rng)
        clip = make_clip(plan, 20, rng)
        lim = joint_limits(plan)
        assert (clip.angles >= lim[None, :, :, 0] - 1e-9).all() and (clip.angles <= lim[None, :, :, 1] + 1e-9).all()
        assert clip.pose_deg.min() >= 15.0
    assert set(ROLE_LIMITS) >= {"leg_mid", "tentacle", "wing_root"}


def test_rest_limbs_do_not_touch():
    for fam in FAMILIES:
        plan = build_body_plan(fam, np.random.default_rng(21))
        assert clearance_violations(plan) == [], fam


def test_meshes_are_closed_and_outward(creatures):
    for r in creatures:
        f = r.faces
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert (counts == 2).all(), f"{r.family}: {int((counts != 2).sum())} open or shared edges"
        tri = r.rest_verts[f].astype(np.float64)
        volume = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert volume > 0
        assert 900 <= r.verts.shape[1] <= 1600


def test_generation_is_deterministic():
    cfg = small_config()
    a = generate_creature(5, seed=3, config=cfg)
    b = generate_creature(5, seed=3, config=cfg)
    for name in ("verts", "faces", "weights", "transforms", "parents"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.joint_names == b.joint_names
    c = generate_creature(5, seed=4, config=cfg)
    assert a.family != c.family or a.verts.shape != c.verts.shape or not np.array_equal(a.verts, c.verts)


def test_clip_length_does_not_change_the_creature():
    a = generate_creature(1, seed=2, config=small_config(n_frames=4))
    b = generate_creature(1, seed=2, config=small_config(n_frames=9))
    assert a.family == b.family and np.array_equal(a.rest_verts, b.rest_verts)
    assert np.array_equal(a.weights, b.weights) and b.n_frames == 9


def test_split_is_by_creature_and_deterministic():
    splits = [split_of(i) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.90) < 0.01 and abs(share["val"] - 0.05) < 0.01 and abs(share["test"] - 0.05) < 0.01
    assert splits == [split_of(i) for i in range(4000)]
    r = generate_creature(7, seed=0, config=small_config())
    assert r.split == split_of(7)


def test_bad_config_is_rejected():
    with pytest.raises(CorpusError, match="unknown families"):
        CorpusConfig(families=("unicorn",))
    with pytest.raises(CorpusError, match="frames range"):
        CorpusConfig(frames=(10, 5))


def test_skinning_helpers():
    w = prune_weights(np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.0, 0.0, 0.001, 0.0, 0.0, 0.0]]))
    assert np.allclose(w.sum(axis=1), 1) and (np.count_nonzero(w, axis=1) <= 4).all()
    assert w[1, 2] == 1.0  # a row with only tiny weights keeps its largest entry
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    L, mass = cotangent_laplacian(verts, faces)
    assert np.allclose(L @ np.ones(4), 0) and np.allclose((L - L.T).toarray(), 0) and (mass > 0).all()


def test_corpus_write_read_resume(tmp_path):
    cfg = small_config(n_creatures=5, shard_size=2, workers=1, n_frames=3, verts=(1000, 1100), grid_cells=90)
    root = generate_corpus(tmp_path / "corpus", cfg, progress=False)
    corpus = Corpus(root)
    assert len(corpus) == 5 and corpus.all_indices() == [0, 1, 2, 3, 4]
    all_split = sorted(corpus.indices("train") + corpus.indices("val") + corpus.indices("test"))
    assert all_split == [0, 1, 2, 3, 4]
    rec = corpus.load(3)
    ref = generate_creature(3, cfg.seed, cfg)
    for name in ("verts", "faces", "rest_verts", "joints", "weights", "transforms", "parents"):
        assert np.array_equal(getattr(rec, name), getattr(ref, name)), name
    assert rec.joint_names == ref.joint_names and rec.family == ref.family
    meta = corpus.meta(3)
    assert meta["n_joints"] == ref.n_joints and meta["n_verts"] == ref.verts.shape[1]
    assert meta["n_frames"] == 3 and meta["family"] == ref.family and meta["split"] == ref.split
    assert not list((root / "shards").glob("*.tmp"))

    # an interrupted run: one shard lost its summary, another is a leftover temporary file
    shards = root / "shards"
    (shards / "shard_00001.json").unlink()
    (shards / ".shard_00002.npz.999.tmp").write_bytes(b"partial")
    before = (shards / "shard_00000.npz").stat().st_mtime_ns
    generate_corpus(root, cfg, progress=False)
    assert (shards / "shard_00001.json").exists()
    assert (shards / "shard_00000.npz").stat().st_mtime_ns == before  # finished shards are skipped
    assert len(Corpus(root)) == 5 and len(shard_plan(cfg)) == 3
    assert not list(shards.glob(".*.tmp"))

    with pytest.raises(CorpusError, match="other settings"):
        generate_corpus(root, small_config(n_creatures=5, shard_size=2, workers=1, n_frames=4), progress=False)
    with pytest.raises(CorpusError, match="not in the corpus"):
        corpus.meta(99)
    with pytest.raises(CorpusError, match="unknown split"):
        corpus.indices("holdout")
    index = json.loads((root / "index.json").read_text())
    assert index["n_creatures"] == 5

    clone = pickle.loads(pickle.dumps(corpus))  # as sent to data-loader workers: no open file travels
    assert np.array_equal(clone.load(3).verts, rec.verts)
    (shards / "shard_00002.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorpusError, match="shard"):
        Corpus(root).load(4)


def test_missing_corpus_gives_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="missing index.json"):
        Corpus(tmp_path)


def test_gallery_renders_png(tmp_path, creatures):
    from training.data.gallery import render_contact_sheet

    out = render_contact_sheet(creatures[:2], tmp_path / "g.png", frames_per_creature=2, columns=2, dpi=40)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
