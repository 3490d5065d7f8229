"""The ``local`` skeleton generator design: dense joint votes, proposals, the coordinate prior, and the
interfaces inference, pretraining and SPRig use (same as the ``perceiver`` design's)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.models.checkpoint import load_model, save_model
from backend.models.local_encoder import (PointContext, ProposalConfig, coordinate_prior, joint_proposals,
                                          joint_vote_loss, joint_vote_targets)
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig, skeleton_token_loss
from backend.skeleton import validate_tree
from training.losses.skeleton_losses import anchor_token_loss, expected_joint_positions, shift_for_next_token
from training.presets import get_preset
from training.pretrain import config_differences

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_LOCAL = SkeletonGeneratorConfig(n_disc=32, max_joints=12, d_model=32, n_heads=2, n_dec_layers=2, n_freq=2,
                                     mlp_ratio=2, design="local", knn=8, n_edge_layers=2, n_point_attn_layers=1)


def frames(seed: int = 0, B: int = 2, N: int = 96):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, N, 3, generator=g) - 0.5
    nrm = torch.nn.functional.normalize(torch.randn(B, N, 3, generator=g), dim=-1)
    return pts, nrm


def token_batch(tk):
    skels = [(np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.1], [0.2, 0.1, -0.1], [-0.2, 0.1, 0.0]]),
              np.array([-1, 0, 1, 0])),
             (np.array([[0.0, 0.0, 0.1], [0.1, -0.2, 0.1]]), np.array([-1, 0]))]
    return torch.from_numpy(tk.pad_batch([tk.encode(j, p) for j, p in skels])), skels


def test_design_switch_validates_and_presets_select_it():
    with pytest.raises(ValueError, match="unknown skeleton generator design"):
        SkeletonGeneratorConfig(design="nope")
    default = get_preset("default").skeleton
    assert default.design == "local" and default.decode_coordinates == "all-proposals"
    assert get_preset("large").skeleton.design == "local" and get_preset("smoke").skeleton.design == "perceiver"
    back = get_preset("default", design="perceiver").skeleton  # decodes without proposals
    assert back.design == "perceiver" and back.decode_coordinates == "free" and back.d_model == default.d_model
    P = get_preset("smoke", design="local")
    assert P.skeleton.design == "local" and P.skeleton.d_model == get_preset("smoke").skeleton.d_model
    with pytest.raises(ValueError, match="unknown generator design"):
        get_preset("smoke", design="nope")


def test_local_forward_backward_trains_every_part():
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL)
    pts, nrm = frames()
    tokens, skels = token_batch(gen.tokenizer)
    logits, ctx = gen(pts, nrm, tokens, return_context=True)
    assert logits.shape == (2, tokens.shape[1], gen.tokenizer.vocab_size)
    assert isinstance(ctx, PointContext) and ctx.features.shape == (2, 96, 32) and ctx.offsets.shape == (2, 96, 1, 3)
    joints = torch.zeros(2, 4, 3)
    valid = torch.zeros(2, 4, dtype=torch.bool)
    for b, (j, _) in enumerate(skels):
        joints[b, :len(j)], valid[b, :len(j)] = torch.as_tensor(j, dtype=torch.float32), True
    off, dist = joint_vote_targets(pts, joints, valid)
    loss = skeleton_token_loss(logits, tokens, gen.tokenizer.pad) + joint_vote_loss(ctx.offsets, ctx.distances,
                                                                                     off, dist)
    loss.backward()
    for name in ("encoder.dense_head.2.weight", "encoder.edges.0.neigh.weight", "encoder.attn.0.attn.qkv.weight",
                 "blocks.0.cross_attn.kv.weight", "head.weight", "prior_scale", "eos_scale"):
        grad = dict(gen.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_joint_vote_targets_point_at_the_nearest_valid_joint():
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.1, 0.0]]])
    joints = torch.tensor([[[0.1, 0.0, 0.0], [1.0, 0.2, 0.0], [0.95, 0.1, 0.0]]])
    valid = torch.tensor([[True, True, False]])  # the third joint is padding: never a target
    off, dist = joint_vote_targets(pts, joints, valid)
    assert off.shape == (1, 3, 1, 3) and dist.shape == (1, 3, 1)
    assert torch.allclose(pts + off[:, :, 0], torch.tensor([[[0.1, 0.0, 0.0], [1.0, 0.2, 0.0], [1.0, 0.2, 0.0]]]))
    assert torch.allclose(dist, off.norm(dim=-1))
    assert float(joint_vote_loss(off, dist, off, dist)) == 0.0
    with pytest.raises(ValueError, match="at least one valid joint"):
        joint_vote_targets(pts, joints, torch.zeros(1, 3, dtype=torch.bool))


def test_several_votes_per_point_reach_the_next_nearest_joints():
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    joints = torch.tensor([[[0.1, 0.0, 0.0], [0.5, 0.0, 0.0], [0.8, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[True, True, True, False]])
    off, dist = joint_vote_targets(pts, joints, valid, votes_per_point=2)
    voted = pts[:, :, None] + off  # [1, 2, 2, 3]
    # the middle joint (0.5) is nobody's nearest, but the second vote of both points reaches it
    assert torch.allclose(voted[0, :, :, 0], torch.tensor([[0.1, 0.5], [0.8, 0.5]]))
    assert torch.allclose(dist, off.norm(dim=-1))
    # every vote is clustered: only the middle joint gets two votes, so only it reaches a mass of 1.5
    prop, w = joint_proposals(pts, off, torch.zeros(1, 2, 2), ProposalConfig(min_mass=1.5, max_proposals=4))
    assert w.tolist()[0] == [1, 0, 0, 0] and torch.allclose(prop[0, 0], joints[0, 1])
    # more votes than valid joints: the farthest valid joint repeats, padding is never a target
    one = valid & torch.tensor([[True, False, False, False]])
    off, _ = joint_vote_targets(pts, joints, one, votes_per_point=3)
    assert torch.allclose(pts[:, :, None] + off, joints[:, :1, None].expand(1, 2, 3, 3))
    gen = SkeletonGenerator(replace(TINY_LOCAL, votes_per_point=2))
    ctx = gen.encode_points(*frames())
    assert ctx.offsets.shape == (2, 96, 2, 3) and ctx.distances.shape == (2, 96, 2)


def test_joint_proposals_find_vote_clusters_deterministically():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.2, 0.1, 0.0], [-0.3, 0.0, 0.1], [0.0, -0.3, -0.2]])
    counts = [30, 20, 3]  # the last cluster is too light (min_mass)
    moved = torch.cat([c + 0.004 * torch.randn(n, 3, generator=g) for c, n in zip(centres, counts)])[None]
    pts = moved + 0.1 * torch.randn(moved.shape, generator=g)
    offsets = (moved - pts)[:, :, None]
    dist = torch.full(moved.shape[:2] + (1,), 0.05)
    cfg = ProposalConfig(min_mass=5.0, max_proposals=8)
    prop, w = joint_proposals(pts, offsets, dist, cfg)
    assert prop.shape == (1, 8, 3) and w.tolist()[0] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert torch.allclose(prop[0, :2], centres[:2], atol=0.005)  # densest first
    again = joint_proposals(pts, offsets, dist, cfg)
    assert torch.equal(prop, again[0]) and torch.equal(w, again[1])
    perm = torch.randperm(pts.shape[1], generator=g)
    shuffled = joint_proposals(pts[:, perm], offsets[:, perm], dist[:, perm], cfg)
    assert torch.allclose(shuffled[0], prop, atol=1e-6) and torch.equal(shuffled[1], w)


def test_adaptive_radius_keeps_a_smeared_far_joint_one_proposal():
    """Votes smeared along a bone between two far-apart joints (points that sit far from any joint) make
    several proposals at a fixed radius; the adaptive radius, scaled by the votes' predicted distance,
    makes one per joint and leaves tight clusters of near points as they were."""
    g = torch.Generator().manual_seed(2)
    smear = torch.stack([torch.linspace(0.0, 0.12, 40), torch.zeros(40), torch.zeros(40)], dim=1)  # [40, 3]
    tight = torch.tensor([-0.3, 0.2, 0.0]) + 0.003 * torch.randn(20, 3, generator=g)
    moved = torch.cat([smear, tight])[None]
    pts = moved + 0.05 * torch.randn(moved.shape, generator=g)
    offsets = (moved - pts)[:, :, None]
    dist = torch.cat([torch.full((40,), 0.15), torch.full((20,), 0.01)])[None, :, None]
    fixed = ProposalConfig(radius=0.03, min_mass=1.0, max_proposals=8)
    n_fixed = int(joint_proposals(pts, offsets, dist, fixed)[1].sum())
    adaptive = ProposalConfig(radius=0.03, radius_scale=0.75, max_radius=0.15, min_mass=1.0, max_proposals=8)
    prop, w = joint_proposals(pts, offsets, dist, adaptive)
    assert n_fixed >= 3 and int(w.sum()) == 2
    assert (prop[0, :2] - torch.tensor([-0.3, 0.2, 0.0])).norm(dim=-1).min() < 0.005  # the tight cluster's centre
    off = replace(adaptive, radius_scale=0.0)
    assert torch.equal(joint_proposals(pts, offsets, dist, off)[1], joint_proposals(pts, offsets, dist, fixed)[1])


def test_coordinate_prior_conditions_on_emitted_coordinates_and_fades_used_proposals():
    from backend.models.tokenizer import SkeletonTokenizer

    tk = SkeletonTokenizer(n_disc=32, max_joints=8)
    joints = tk.dequantize(tk.quantize(np.array([[0.2, -0.2, 0.1], [-0.3, 0.3, -0.1]])))  # bin centres
    props = torch.from_numpy(joints)[None]
    w = torch.ones(1, 2)
    tokens = torch.from_numpy(tk.encode(joints, np.array([-1, 0])))[None]
    log_sigma = torch.full((3,), math.log(0.01))
    lp, unc = coordinate_prior(tokens, props, w, 32, log_sigma, cover_sigma=0.02)
    assert lp.shape == (1, tokens.shape[1], 32) and unc.shape == (1, tokens.shape[1])
    assert torch.allclose(lp.exp().sum(-1)[0, [0, 1, 2, 4, 5, 6]], torch.full((6,), 32.0), atol=1e-4)
    # joint 0's x: both proposals have mass; y given x picks the proposal with that x
    x0, y0 = int(tokens[0, 1]), int(tokens[0, 2])
    assert set(lp[0, 0].topk(2).indices.tolist()) == {int(b) for b in tk.quantize(props[0, :, 0].numpy())}
    assert int(lp[0, 1].argmax()) == y0 and int(lp[0, 2].argmax()) == int(tokens[0, 3])
    # joint 1's x: joint 0 covered its proposal, only the other remains
    assert int(lp[0, 4].argmax()) == int(tokens[0, 5]) and int(tokens[0, 5]) != x0
    assert unc[0, 0] == pytest.approx(1.0) and unc[0, 4] == pytest.approx(0.5, abs=1e-3)
    assert unc[0, 8] == pytest.approx(0.0, abs=1e-3)  # both used: EOS gets its bonus
    # incremental (decoding) positions equal the full computation
    tail = coordinate_prior(tokens, props, w, 32, log_sigma, cover_sigma=0.02, first_position=5)
    assert torch.allclose(tail[0], lp[:, 5:]) and torch.allclose(tail[1], unc[:, 5:])


def test_local_cache_matches_full_decode_and_generation_yields_valid_trees():
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL).eval()
    pts, nrm = frames(3)
    tokens, _ = token_batch(gen.tokenizer)
    with torch.no_grad():  # give the prior something to work with: real proposals
        ctx = gen.encode_points(pts, nrm)
        ctx.proposals[:, :3] = torch.tensor([[0.1, 0.1, 0.1], [-0.2, 0.0, 0.1], [0.0, -0.2, 0.0]])
        ctx.proposal_weight[:, :3] = 1.0
        full = gen.decode_logits(ctx, tokens)
        kv, cache = gen.cross_kv(ctx), gen.new_cache(2, pts.device, torch.float32)
        steps = [gen.step(tokens[:, i:i + 1], kv, cache, context=ctx) for i in range(tokens.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="needs the encode_points"):
        gen.step(tokens[:, :1], kv, gen.new_cache(2, pts.device, torch.float32))
    greedy = gen.generate(pts, nrm, max_joints=10)
    assert [p.tolist() for _, p in greedy] == [p.tolist() for _, p in gen.generate(pts, nrm, max_joints=10,
                                                                                   use_cache=False)]
    sampled = gen.generate(pts, nrm, max_joints=10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    for joints, parents in greedy + sampled:
        validate_tree(parents)
        assert 1 <= len(parents) <= 10 and joints.shape == (len(parents), 3)
        bins = np.floor((joints + 0.5) * 32)
        assert len(np.unique(bins, axis=0)) == len(bins)  # no repeated positions survive the merge


def test_sprig_token_log_probs_work_with_the_local_design():
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL)
    for p in gen.encoder.parameters():  # SPRig freezes the point encoder
        p.requires_grad_(False)
    pts, nrm = frames(5)
    tokens, _ = token_batch(gen.tokenizer)
    logits, targets, mask = shift_for_next_token(gen(pts, nrm, tokens), tokens, gen.tokenizer.pad)
    loss = anchor_token_loss(logits, targets, mask, alpha=3.0)
    joints, valid = expected_joint_positions(gen(pts, nrm, tokens), tokens, gen.tokenizer)
    (loss + joints[valid].square().sum()).backward()
    assert torch.isfinite(loss) and valid.sum() == 6
    assert gen.blocks[0].cross_attn.q.weight.grad.abs().sum() > 0 and gen.prior_scale.grad is not None
    assert all(p.grad is None for p in gen.encoder.parameters())


def test_checkpoint_round_trip_keeps_the_design(tmp_path):
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL).eval()
    save_model(gen, tmp_path / "g.safetensors", stage="pretrain", provenance={"step": 1})
    loaded, info = load_model(tmp_path / "g.safetensors", expected="skeleton_generator")
    assert info.config["design"] == "local" and loaded.cfg == gen.cfg
    pts, nrm = frames(7)
    tokens, _ = token_batch(gen.tokenizer)
    with torch.no_grad():
        assert torch.equal(gen(pts, nrm, tokens), loaded(pts, nrm, tokens))
    assert [p.tolist() for _, p in gen.generate(pts, nrm)] == [p.tolist() for _, p in loaded.generate(pts, nrm)]


def test_configs_saved_before_the_design_switch_still_match():
    """An export from before the new fields existed (no ``design`` etc.) continues under the defaults,
    but not under another design."""
    P = get_preset("smoke")
    current = json.loads(json.dumps(P.to_dict()))
    defaults = json.loads(json.dumps(type(P)(name=P.name).to_dict()))
    saved = json.loads(json.dumps(P.to_dict()))
    for key in ("design", "knn", "prior_sigma"):
        del saved["skeleton"][key]
    del saved["pretrain"]["vote_loss_weight"]
    assert config_differences(saved, current, defaults=defaults) == []
    local = json.loads(json.dumps(get_preset("smoke", design="local").to_dict()))
    diffs = config_differences(saved, local, defaults=defaults)
    assert "skeleton.design: '<absent>' -> 'local'" in diffs and all(d.startswith("skeleton.") for d in diffs)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, tiny_corpus_config):
    from training.data.generate import generate_corpus

    root = tmp_path_factory.mktemp("compare") / "corpus"
    generate_corpus(root, tiny_corpus_config(6, val_fraction=0.3, test_fraction=0.0), progress=False)
    return root


def test_compare_designs_trains_each_for_the_budget_resumes_and_plots(tiny_corpus, tmp_path):
    from training import compare_designs as CD

    fig = tmp_path / "cmp.png"
    kw = dict(preset="smoke", val_minutes=0.02, save_minutes=0.01, n_val_frames=2, n_val_generate=1, threads=1)
    records = CD.run(tiny_corpus, tmp_path / "w", ["perceiver", "local"], minutes=0.04, figure=fig, **kw)
    for design, recs in records.items():
        assert recs[0]["train_s"] == 0 and recs[-1]["train_s"] >= 0.04 * 60 and len(recs) >= 3, design
        assert all(math.isfinite(r["val_cd_j2j"]) and 0 <= r["val_coord_acc"] <= 1 for r in recs)
        assert [r["step"] for r in recs] == sorted(r["step"] for r in recs) and recs[-1]["step"] > 0
        _, info = load_model(tmp_path / "w" / design / "skeleton_base.safetensors")
        assert info.config["design"] == design and info.provenance["step"] == recs[-1]["step"]
    assert "val_proposal_count_err" in records["local"][-1]
    assert not any(k.startswith("val_proposal") for k in records["perceiver"][-1])
    assert fig.stat().st_size > 10_000
    summary = json.loads((tmp_path / "w" / "comparison.json").read_text())
    assert summary["records"] == json.loads(json.dumps(records))
    # finished designs are not trained again; another budget in the same folder is refused
    again = CD.run(tiny_corpus, tmp_path / "w", ["perceiver", "local"], minutes=0.04, figure=None, **kw)
    assert again == records
    with pytest.raises(RuntimeError, match="use another --workdir"):
        CD.run(tiny_corpus, tmp_path / "w", ["local"], minutes=0.08, figure=None, **kw)
    with pytest.raises(ValueError, match="unknown designs"):
        CD.run(tiny_corpus, tmp_path / "w", ["transformer"], minutes=0.04)


def test_compare_designs_resumes_an_interrupted_design(tiny_corpus, tmp_path):
    from training import compare_designs as CD

    # a state after every step (save_minutes > 0 as the CLI requires, far below one step), whatever the machine speed
    kw = dict(preset="smoke", val_minutes=1.0, save_minutes=1e-6, n_val_frames=2, n_val_generate=1, threads=1)
    calls = {"n": 0}
    real = CD.skeleton_batch_loss

    def killed_after_some_steps(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    CD.skeleton_batch_loss = killed_after_some_steps
    try:
        with pytest.raises(KeyboardInterrupt):
            CD.run(tiny_corpus, tmp_path / "w", ["local"], minutes=0.05, figure=None, **kw)
    finally:
        CD.skeleton_batch_loss = real
    state = torch.load(tmp_path / "w" / "local" / "state.pt", weights_only=True)
    assert 0 < state["step"] <= 2 and 0 < state["trained_s"] < 0.05 * 60
    recs = CD.run(tiny_corpus, tmp_path / "w", ["local"], minutes=0.05, figure=None, **kw)["local"]
    assert recs[-1]["step"] > state["step"] and recs[-1]["train_s"] >= 0.05 * 60
    assert recs[0]["train_s"] == 0 and len([r for r in recs if r["train_s"] == 0]) == 1  # no second start


def test_sprig_skeleton_stage_fine_tunes_a_local_base(tiny_corpus, tmp_path):
    """The SPRig skeleton stage (pseudo-labels, Eq. 2/8/9, Eq. 3 and the vote term) runs on a ``local`` base: the
    encoder's trunk stays frozen, its vote head and the decoder train."""
    from backend.models.skinning_network import SkinningNetwork
    from backend.models.checkpoint import read_checkpoint
    from training import sprig_skeleton as SK

    run = tmp_path / "run"
    run.mkdir()
    (run / "corpus").symlink_to(tiny_corpus)
    P = get_preset("smoke", design="local")
    torch.manual_seed(0)
    prov = {"preset_config": P.to_dict(), "step": 0, "total_steps": 0}
    save_model(SkeletonGenerator(P.skeleton), run / "checkpoints/skeleton_base.safetensors", "pretrain", prov)
    save_model(SkinningNetwork(P.skinning), run / "checkpoints/skinning_base.safetensors", "pretrain", prov)
    done = SK.run_stage("smoke", run, "cpu", steps=2, max_train_clips=2, n_val_clips=1, val_every=2, ckpt_every=1,
                        max_joints=6, n_points=64, lambda_vote=1.0)
    assert done["complete"]
    model, info = load_model(done["checkpoint"], expected="skeleton_generator")
    assert info.config["design"] == "local"
    base, _ = read_checkpoint(run / "checkpoints/skeleton_base.safetensors")
    tuned = model.state_dict()
    head = "encoder.dense_head."
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("encoder.") and not k.startswith(head))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith(head))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("blocks."))
    lines = [json.loads(x) for x in (run / "sprig_skeleton" / "log.jsonl").read_text().splitlines()]
    assert all(x["vote"] > 0 for x in lines if "total" in x) and any("val_vote" in x for x in lines)


def test_coordinate_prior_without_proposals_is_uniform_and_neutral_for_eos():
    tokens = torch.tensor([[35, 3, 4, 5, 32, 36]])  # n_disc 32, max_joints 2: BOS, x y z, root label, EOS
    lp, unc = coordinate_prior(tokens, torch.zeros(1, 2, 3), torch.zeros(1, 2), 32, torch.zeros(3), 0.02)
    assert torch.allclose(lp[0, :3], torch.zeros(3, 32), atol=1e-6)
    assert torch.all(unc == 1.0)


def test_proposal_pointer_decoding_emits_each_proposal_at_most_once_within_the_residual():
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL).eval()
    pts, nrm = frames(4)
    props = torch.tensor([[0.1, 0.1, 0.1], [-0.2, 0.0, 0.1], [0.0, -0.2, 0.0]])
    real_encode = gen.encode_points

    def with_proposals(points, normals):  # row 0: three proposals; row 1: none (decoded unconstrained)
        ctx = real_encode(points, normals)
        ctx.proposal_weight.zero_()
        ctx.proposals[0, :3] = props
        ctx.proposal_weight[0, :3] = 1.0
        return ctx

    gen.encode_points = with_proposals
    prop_bins = np.floor((props.numpy() + 0.5) * 32)
    for temperature in (0.0, 1.0):
        out = gen.generate(pts, nrm, max_joints=10, min_joints=5, temperature=temperature, coordinates="proposals",
                           generator=torch.Generator().manual_seed(0))
        joints, parents = out[0]
        validate_tree(parents)
        assert 1 <= len(parents) <= 3  # stops when the proposals are used up, even below min_joints
        bins = np.floor((joints + 0.5) * 32)
        gap = np.abs(bins[:, None] - prop_bins[None]).max(-1)  # [J, P] Chebyshev distance in bins
        assert (gap.min(1) <= 1).all()  # every joint within one bin of a proposal
        assert len(set(gap.argmin(1).tolist())) == len(parents)  # a different proposal each
        assert len(out[1][1]) >= 5  # the row without proposals decodes freely (min_joints holds)
    # a decoder that wants to stop at once: `proposals` stops after one joint, `all-proposals` uses all three
    eos = gen.tokenizer.eos
    hook = gen.head.register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 50.0)))
    early = gen.generate(pts, nrm, max_joints=10, coordinates="proposals")
    every = gen.generate(pts, nrm, max_joints=10, coordinates="all-proposals")
    hook.remove()
    assert len(early[0][1]) == 1 and len(every[0][1]) == 3
    validate_tree(every[0][1])
    gap = np.abs(np.floor((every[0][0] + 0.5) * 32)[:, None] - prop_bins[None]).max(-1)
    assert sorted(gap.argmin(1).tolist()) == [0, 1, 2] and (gap.min(1) <= 1).all()
    gen.encode_points = real_encode
    with pytest.raises(ValueError, match="coordinates must be one of"):
        gen.generate(pts, nrm, coordinates="nearest")
    perceiver = SkeletonGenerator(SkeletonGeneratorConfig(n_disc=32, max_joints=12, d_model=32, n_heads=2,
                                                          n_latents=8, n_enc_layers=1, n_dec_layers=1, n_freq=2))
    with pytest.raises(ValueError, match="needs the local design"):
        perceiver.generate(pts, nrm, coordinates="proposals")
    with pytest.raises(ValueError, match="unknown coordinate decoding"):
        SkeletonGeneratorConfig(decode_coordinates="snap")


def test_proposals_then_free_decoding_continues_with_free_bins_after_the_proposals():
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_LOCAL).eval()
    pts, nrm = frames(4)
    real_encode = gen.encode_points

    def one_proposal(points, normals):
        ctx = real_encode(points, normals)
        ctx.proposal_weight.zero_()
        ctx.proposals[:, 0] = torch.tensor([0.1, 0.1, 0.1])
        ctx.proposal_weight[:, 0] = 1.0
        return ctx

    gen.encode_points = one_proposal
    stop = gen.generate(pts, nrm, max_joints=10, min_joints=4, coordinates="proposals", temperature=1.0,
                        generator=torch.Generator().manual_seed(0))
    # sampled: an untrained greedy decoder repeats one position, and repeated joints are merged away
    free_after = gen.generate(pts, nrm, max_joints=10, min_joints=4, coordinates="proposals-then-free",
                              temperature=1.0, generator=torch.Generator().manual_seed(0))
    gen.encode_points = real_encode
    target = np.floor((np.array([0.1, 0.1, 0.1]) + 0.5) * 32)
    for (j_stop, p_stop), (j_free, p_free) in zip(stop, free_after):
        assert len(p_stop) == 1 and len(p_free) >= 4  # min_joints is kept once free bins are allowed
        validate_tree(p_free)
        assert np.abs(np.floor((j_free[0] + 0.5) * 32) - target).max() <= 1  # the first joint is the proposal
