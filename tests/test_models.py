"""Skeleton generator, skinning network, checkpoints and the inference entry points."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from backend.models import (CheckpointError, SkeletonGenerator, SkeletonGeneratorConfig,
                            SkinningNetwork, SkinningNetworkConfig, load_model, load_models, save_model,
                            skeleton_token_loss, skinning_kl_loss)
from backend.models.inference import RiggerModels
from backend.models.skinning_network import point_to_bone_distance
from backend.skeleton import is_valid_tree, tree_distances, validate_tree

torch.set_num_threads(1)

TINY_SKEL = SkeletonGeneratorConfig(d_model=48, n_heads=4, n_latents=8, n_enc_layers=1, n_dec_layers=2,
                                    n_freq=4, mlp_ratio=2, max_joints=24)
TINY_SKIN = SkinningNetworkConfig(d_model=32, n_heads=4, n_latents=8, n_shape_layers=1, n_joint_layers=1,
                                  n_point_layers=1, n_freq=4, mlp_ratio=2)


def oriented_cloud(batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, n, 3, generator=g) - 0.5
    nrm = torch.nn.functional.normalize(torch.randn(batch, n, 3, generator=g), dim=-1)
    return pts, nrm


def chain_skeleton(J: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A bent chain with one side branch, in normalized units."""
    t = np.linspace(-0.4, 0.4, J)
    joints = np.stack([t, 0.1 * np.sin(4 * t), 0.05 * t], axis=1)
    parents = np.arange(-1, J - 1)
    joints = np.concatenate([joints, joints[J // 2][None] + [0.0, 0.25, 0.0]])
    parents = np.append(parents, J // 2)
    return joints.astype(np.float32), parents.astype(np.int32)


# ---- skeleton generator ------------------------------------------------------------------------

def test_forward_shapes_and_causality():
    torch.manual_seed(0)
    model = SkeletonGenerator(TINY_SKEL).eval()
    tk = model.tokenizer
    pts, nrm = oriented_cloud(2, 64)
    joints, parents = chain_skeleton()
    tokens = torch.as_tensor(tk.pad_batch([tk.encode(joints, parents)] * 2))
    logits = model(pts, nrm, tokens)
    assert logits.shape == (2, tokens.shape[1], tk.vocab_size)
    changed = tokens.clone()
    changed[:, 10] = 5
    logits2 = model(pts, nrm, changed)
    assert torch.allclose(logits[:, :10], logits2[:, :10], atol=1e-5)  # the future does not leak back
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:], atol=1e-5)
    loss = skeleton_token_loss(logits, tokens, tk.pad)
    assert abs(loss.item() - np.log(tk.vocab_size)) < 1.0  # untrained: close to uniform


def test_kv_cache_logits_match_recomputation():
    torch.manual_seed(1)
    model = SkeletonGenerator(TINY_SKEL).eval()
    tk = model.tokenizer
    pts, nrm = oriented_cloud(3, 64, seed=1)
    rng = np.random.default_rng(0)
    seqs = []
    for J in (3, 7, 12):
        parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, J)])
        seqs.append(tk.encode(rng.uniform(-0.45, 0.45, (J, 3)), parents))
    tokens = torch.as_tensor(tk.pad_batch(seqs))
    with torch.no_grad():
        full = model(pts, nrm, tokens)
        latents = model.encode_points(pts, nrm)
        kv = model.cross_kv(latents)
        cache = model.new_cache(3, torch.device("cpu"), latents.dtype)
        chunks = [model.step(tokens[:, :5], kv, cache)]  # a multi-token prefill, then one at a time
        for i in range(5, tokens.shape[1]):
            chunks.append(model.step(tokens[:, i:i + 1], kv, cache))
    incremental = torch.cat(chunks, dim=1)
    assert torch.allclose(incremental, full, atol=1e-4), (incremental - full).abs().max()


def test_generation_with_and_without_cache_agree():
    torch.manual_seed(2)
    model = SkeletonGenerator(TINY_SKEL)
    pts, nrm = oriented_cloud(2, 64, seed=2)
    a = model.generate(pts, nrm, max_joints=10)
    b = model.generate(pts, nrm, max_joints=10, use_cache=False)
    for (ja, pa), (jb, pb) in zip(a, b):
        assert np.array_equal(pa, pb) and np.allclose(ja, jb)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 3.0])
def test_constrained_decoding_always_gives_valid_trees_even_untrained(temperature):
    torch.manual_seed(3)
    model = SkeletonGenerator(TINY_SKEL)
    tk = model.tokenizer
    pts, nrm = oriented_cloud(6, 64, seed=3)
    gen = torch.Generator().manual_seed(0)
    out, stats = model.generate(pts, nrm, max_joints=12, temperature=temperature, generator=gen,
                                return_stats=True)
    assert len(out) == 6
    for joints, parents in out:
        assert joints.dtype == np.float32 and parents.dtype == np.int32
        assert 1 <= len(parents) <= 12 and joints.shape == (len(parents), 3)
        assert is_valid_tree(parents)
        assert np.abs(joints).max() <= 0.5
        # merged outputs have no two joints closer than half a bin
        if len(joints) > 1:
            d = np.linalg.norm(joints[:, None] - joints[None], axis=-1) + np.eye(len(joints))
            assert d.min() >= 0.5 / tk.n_disc
    assert len(stats["constraint_overrides"]) == 6
    if temperature == 0.0:  # the canonical-order constraint is stricter than validity
        assert all(v <= c for v, c in zip(stats["validity_overrides"], stats["constraint_overrides"]))


def test_generation_respects_the_joint_limit():
    torch.manual_seed(4)
    model = SkeletonGenerator(TINY_SKEL)
    with torch.no_grad():  # make EOS very unlikely so decoding runs into the limit
        model.head.weight[model.tokenizer.eos] -= 5.0
    pts, nrm = oriented_cloud(2, 64, seed=4)
    out, stats = model.generate(pts, nrm, max_joints=5, temperature=1.0,
                                generator=torch.Generator().manual_seed(1), return_stats=True)
    for joints, parents in out:
        assert len(parents) <= 5 and is_valid_tree(parents)
    with pytest.raises(ValueError, match="max_joints"):
        model.generate(pts, nrm, max_joints=0)


def test_repetition_stop_ends_a_decoder_stuck_in_a_loop():
    """A decoder that always emits the same bins (and never EOS) runs to the joint limit; with the
    repetition stop it ends after n repeated joints, with the same merged skeleton."""
    model = SkeletonGenerator(TINY_SKEL)
    tk = model.tokenizer
    with torch.no_grad():  # constant final features -> constant logits: bin 5, parent 0, EOS never
        model.norm.weight.zero_()
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0
        model.head.weight.zero_()
        model.head.weight[5, 0] = 10.0
        model.head.weight[tk.parent_token(0), 0] = 5.0
        model.head.weight[tk.eos, 0] = -10.0
    pts, nrm = oriented_cloud(2, 32)
    full, s_full = model.generate(pts, nrm, max_joints=12, return_stats=True)
    cut, s_cut = model.generate(pts, nrm, max_joints=12, stop_after_repeats=3, return_stats=True)
    assert s_full["stopped_on_repeats"] == [False, False] and s_cut["stopped_on_repeats"] == [True, True]
    assert s_full["merged"] == [11, 11]  # ran to the 12-joint limit
    assert s_cut["merged"] == [3, 3]  # 1 + 3 raw joints
    for (jf, pf), (jc, pc) in zip(full, cut):
        assert np.array_equal(pf, pc) and np.array_equal(jf, jc) and len(pc) == 1
    with pytest.raises(ValueError, match="stop_after_repeats"):
        model.generate(pts, nrm, stop_after_repeats=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repetition_stop_output_is_a_prefix_of_the_full_decode(seed):
    """Merging keeps joints in order, so stopping early gives the first joints of the full decode."""
    torch.manual_seed(seed)
    model = SkeletonGenerator(TINY_SKEL)
    pts, nrm = oriented_cloud(4, 64, seed=seed)
    full = model.generate(pts, nrm, max_joints=16)
    for n in (1, 2, 4):
        for (jf, pf), (jc, pc) in zip(full, model.generate(pts, nrm, max_joints=16, stop_after_repeats=n)):
            assert 1 <= len(pc) <= len(pf)
            assert np.array_equal(pc, pf[:len(pc)]) and np.array_equal(jc, jf[:len(pc)])


def test_stop_rule_compares_eos_with_the_mass_of_all_bins():
    model = SkeletonGenerator(TINY_SKEL)
    tk = model.tokenizer
    logits = torch.full((4, tk.vocab_size), float("-inf"))
    logits[:, : tk.n_disc] = torch.log(torch.tensor(0.7 / tk.n_disc))  # a flat next-joint distribution
    logits[:, 5] += 0.1  # one bin slightly ahead
    logits[0, tk.eos] = np.log(0.3)  # beats every single bin, not their sum: continue
    logits[1, tk.eos] = np.log(0.9)  # stop
    logits[2, : tk.n_disc] = float("-inf")  # joint limit reached: stop
    logits[2, tk.eos] = 0.0
    # row 3: EOS not allowed (-inf): continue
    picked = logits.argmax(-1)
    assert picked[0] == tk.eos  # token-level greedy would stop here
    chosen = model._stop_or_continue(logits, picked, torch.zeros(4, dtype=torch.bool)).tolist()
    assert chosen == [5, tk.eos, tk.eos, 5]
    kept = model._stop_or_continue(logits, picked, torch.ones(4, dtype=torch.bool))
    assert torch.equal(kept, picked)
    pts, nrm = oriented_cloud(1, 32)
    with pytest.raises(ValueError, match="stop_rule"):
        model.generate(pts, nrm, stop_rule="sum")
    for rule in ("mass", "argmax"):
        (joints, parents), = model.generate(pts, nrm, max_joints=6, stop_rule=rule)
        assert is_valid_tree(parents)


def test_generator_overfits_one_skeleton_and_decodes_it_exactly():
    torch.manual_seed(5)
    model = SkeletonGenerator(TINY_SKEL)
    tk = model.tokenizer
    joints, parents = chain_skeleton()
    tokens = torch.as_tensor(tk.encode(joints, parents))[None]
    pts, nrm = oriented_cloud(1, 64, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):
        loss = skeleton_token_loss(model(pts, nrm, tokens), tokens, tk.pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    ((gen_joints, gen_parents),), stats = model.generate(pts, nrm, return_stats=True)
    assert stats["validity_overrides"] == [0] and stats["constraint_overrides"] == [0]
    ref_joints, ref_parents = tk.decode(tokens[0].numpy())
    assert np.array_equal(gen_parents, ref_parents)
    assert np.allclose(gen_joints, ref_joints)


def test_bad_inputs_name_the_problem():
    model = SkeletonGenerator(TINY_SKEL)
    pts, nrm = oriented_cloud(1, 16)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        model(pts[..., :2], nrm, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds"):
        model(pts, nrm, torch.zeros(1, model.tokenizer.max_len + 1, dtype=torch.long))


# ---- skinning network --------------------------------------------------------------------------

def skin_inputs(joints, parents, B=2, Q=100, N=64, pad_to=None, seed=0):
    J = len(parents)
    pad_to = pad_to or J
    pts, nrm = oriented_cloud(B, Q + N, seed=seed)
    query = torch.cat([pts[:, :Q], nrm[:, :Q]], -1)
    shape = torch.cat([pts[:, Q:], nrm[:, Q:]], -1)
    jt = torch.zeros(B, pad_to, 3)
    jt[:, :J] = torch.as_tensor(joints)
    par = torch.full((B, pad_to), -1, dtype=torch.long)
    par[:, :J] = torch.as_tensor(parents)
    valid = torch.zeros(B, pad_to, dtype=torch.bool)
    valid[:, :J] = True
    dist = torch.full((B, pad_to, pad_to), -1, dtype=torch.long)
    dist[:, :J, :J] = torch.as_tensor(tree_distances(parents))
    return query, shape, jt, par, valid, dist


def test_skinning_rows_are_distributions_over_valid_joints_and_padding_does_not_matter():
    torch.manual_seed(6)
    net = SkinningNetwork(TINY_SKIN).eval()
    joints, parents = chain_skeleton()
    args = skin_inputs(joints, parents)
    with torch.no_grad():
        w = net(*args)
        args_padded = skin_inputs(joints, parents, pad_to=len(parents) + 5)
        args_padded[2][:, len(parents):] = 0.3  # garbage in padded joints
        w_pad = net(*args_padded)
    assert w.shape == (2, 100, len(parents))
    assert torch.allclose(w.sum(-1), torch.ones(2, 100), atol=1e-5) and (w >= 0).all()
    assert (w_pad[..., len(parents):] == 0).all()
    assert torch.allclose(w_pad[..., :len(parents)], w, atol=1e-5)


def test_skinning_is_equivariant_to_joint_permutation():
    torch.manual_seed(7)
    net = SkinningNetwork(TINY_SKIN).eval()
    joints, parents = chain_skeleton()
    perm = np.array([0, 3, 1, 2, 6, 4, 5])  # the network does not need a topological order
    inv = np.argsort(perm)
    p_joints = joints[perm]
    p_parents = np.where(parents[perm] >= 0, inv[np.maximum(parents[perm], 0)], -1)
    validate_tree(p_parents, require_topological=False)
    with torch.no_grad():
        w = net(*skin_inputs(joints, parents))
        w_p = net(*skin_inputs(p_joints, p_parents))
    assert torch.allclose(w_p, w[..., perm], atol=1e-5)


def test_point_to_bone_distance_matches_brute_force():
    joints, parents = chain_skeleton()
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (50, 3)).astype(np.float32)
    got = point_to_bone_distance(torch.as_tensor(pts)[None], torch.as_tensor(joints)[None],
                                 torch.as_tensor(parents, dtype=torch.long)[None],
                                 torch.ones(1, len(parents), dtype=torch.bool))[0].numpy()

    def seg_dist(p, a, b):
        t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0, 1)
        return np.linalg.norm(p - (a + t * (b - a)))

    for i, p in enumerate(pts):
        for j in range(len(parents)):
            kids = np.flatnonzero(parents == j)
            ref = min([np.linalg.norm(p - joints[j])] + [seg_dist(p, joints[j], joints[c]) for c in kids])
            assert abs(got[i, j] - ref) < 1e-5


def test_skinning_network_learns_a_nearest_bone_target():
    torch.manual_seed(8)
    net = SkinningNetwork(TINY_SKIN)
    joints, parents = chain_skeleton()
    args = skin_inputs(joints, parents, B=1, Q=96)
    dist = point_to_bone_distance(args[0][..., :3], args[2], args[3], args[4])
    target = torch.softmax(-150 * dist, dim=-1)  # sharper than the initial distance prior
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = skinning_kl_loss(net.logits(*args), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_skinning_input_errors():
    net = SkinningNetwork(TINY_SKIN)
    joints, parents = chain_skeleton()
    q, s, j, p, v, d = skin_inputs(joints, parents)
    with pytest.raises(ValueError, match="query"):
        net(q[..., :3], s, j, p, v, d)
    with pytest.raises(ValueError, match="tree_dist"):
        net(q, s, j, p, v, d[:, :3])
    with pytest.raises(ValueError, match="at least one valid joint"):
        net(q, s, j, p, torch.zeros_like(v), d)


# ---- checkpoints and inference -----------------------------------------------------------------

def test_checkpoint_round_trip_and_provenance(tmp_path):
    torch.manual_seed(9)
    net = SkinningNetwork(TINY_SKIN).eval()
    path = tmp_path / "skinning_base.safetensors"
    digest = save_model(net, path, stage="pretrain", provenance={"steps": 3, "corpus": "x"})
    loaded, info = load_model(path, expected="skinning_network")
    assert info.sha256 == digest and info.stage == "pretrain" and info.provenance["steps"] == 3
    assert info.config == TINY_SKIN.to_dict()
    args = skin_inputs(*chain_skeleton())
    with torch.no_grad():
        assert torch.equal(net(*args), loaded(*args))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_corrupt_modified_or_mismatched_checkpoints_are_refused(tmp_path):
    net = SkeletonGenerator(TINY_SKEL)
    path = tmp_path / "skeleton_base.safetensors"
    save_model(net, path, stage="pretrain")
    raw = bytearray(path.read_bytes())
    with pytest.raises(CheckpointError, match="holds a skeleton_generator"):
        load_model(path, expected="skinning_network")
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF  # one weight byte
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(truncated)
    # metadata edited (stage changed) without updating the digest
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["stage"] = "sprig-skeleton"
    new_header = json.dumps(header).encode().ljust(n)
    if len(new_header) == n:
        edited = tmp_path / "edited.safetensors"
        edited.write_bytes(bytes(raw[:8]) + new_header + bytes(raw[8 + n:]))
        with pytest.raises(CheckpointError, match="sha256 mismatch"):
            load_model(edited)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_load_models_lists_missing_files_and_runs_inference(tmp_path):
    with pytest.raises(CheckpointError, match="skeleton_sprig.safetensors.*skinning_sprig.safetensors"):
        load_models(tmp_path, which="sprig", device="cpu")
    torch.manual_seed(10)
    save_model(SkeletonGenerator(TINY_SKEL), tmp_path / "skeleton_base.safetensors", stage="pretrain")
    with pytest.raises(CheckpointError, match="skinning_base.safetensors"):
        load_models(tmp_path, which="base", device="cpu")
    save_model(SkinningNetwork(TINY_SKIN), tmp_path / "skinning_base.safetensors", stage="pretrain")
    loaded: list[float] = []  # the rig's "models" stage moves once the first file is in
    models = load_models(tmp_path, which="auto", device="cpu", progress=loaded.append)  # no SPRig files: the base
    assert isinstance(models, RiggerModels) and models.skeleton_info.stage == "pretrain" and loaded == [0.5]
    pts, nrm = oriented_cloud(3, 64)
    skeletons = models.generate_skeletons(pts.numpy(), nrm.numpy(), max_joints=8)
    assert len(skeletons) == 3 and all(is_valid_tree(p) for _, p in skeletons)
    joints, parents = chain_skeleton()
    q, qn = pts[0].numpy(), nrm[0].numpy()
    models.query_chunk = 17  # chunking must not change the result
    w = models.predict_weights(q, qn, pts[1].numpy(), nrm[1].numpy(), joints, parents)
    models.query_chunk = 4096
    w_all = models.predict_weights(q, qn, pts[1].numpy(), nrm[1].numpy(), joints, parents)
    assert w.shape == (64, len(parents)) and np.allclose(w, w_all, atol=1e-5)
    assert np.allclose(w.sum(1), 1, atol=1e-5)
    # batched over frames: [K, Q, 3] queries, per-frame shapes and joints
    wk = models.predict_weights(pts[:2].numpy(), nrm[:2].numpy(), pts[1:3].numpy(), nrm[1:3].numpy(),
                                np.stack([joints, joints]), parents)
    assert wk.shape == (2, 64, len(parents)) and np.allclose(wk[0], w_all, atol=1e-5)
