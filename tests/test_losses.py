"""SPRig fine-tuning losses against hand-computed values on tiny cases (Eq. 2, 3, 7-27)."""

import math

import numpy as np
import pytest
import torch

from backend.models.skeleton_generator import skeleton_token_loss
from backend.models.tokenizer import SkeletonTokenizer
from backend.sampling import SurfaceSamples, sample_surface
from backend.skeleton import reorder
from training.losses import skeleton_losses as SL
from training.losses import skinning_losses as KL

TOK = SkeletonTokenizer(n_disc=16, max_joints=8)


def random_rotation(rng: np.random.Generator) -> torch.Tensor:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def random_tree(rng: np.random.Generator, J: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, J)])
    joints = rng.normal(size=(J, 3)) * np.array([0.3, 0.15, 0.07])  # distinct principal axes
    return torch.tensor(joints, dtype=torch.float64), torch.tensor(parents)


# --- token space ------------------------------------------------------------------------------

def two_joint_tokens() -> torch.Tensor:
    joints = np.array([[0.0, 0.0, 0.0], [0.2, 0.3, -0.1]])
    return torch.tensor(TOK.encode(joints, np.array([-1, 0])))[None]  # BOS 8 tokens EOS -> [1, 10]


def test_parent_slot_weights_convention():
    w = SL.parent_slot_weights(9, alpha=3.0, slot_offset=0)
    assert w.tolist() == [1, 1, 1, 3, 1, 1, 1, 3, 1]
    w = SL.parent_slot_weights(6, alpha=2.0, slot_offset=1)
    assert w.tolist() == [1, 1, 1, 1, 2, 1]


def test_weighted_ce_equals_manual_two_joint_sequence():
    torch.manual_seed(0)
    tokens = two_joint_tokens()
    assert tokens.shape == (1, 10)
    logits = torch.randn(1, 10, TOK.vocab_size)
    lg, tgt, mask = SL.shift_for_next_token(logits, tokens, TOK.pad)
    got = SL.anchor_token_loss(lg, tgt, mask, alpha=3.0)
    # manual: targets are tokens[1..9]; the parent tokens of joints 0 and 1 are targets 3 and 7
    logp = torch.log_softmax(logits[0], -1)
    ce = [-float(logp[i, tokens[0, i + 1]]) for i in range(9)]
    w = [3.0 if i in (3, 7) else 1.0 for i in range(9)]
    manual = sum(wi * c for wi, c in zip(w, ce)) / sum(w)
    assert float(got) == pytest.approx(manual, rel=1e-6)
    # the generator's own weighted CE agrees for one sequence, and alpha = 1 is the plain CE
    assert float(got) == pytest.approx(float(skeleton_token_loss(logits, tokens, TOK.pad, parent_weight=3.0)), rel=1e-6)
    plain = SL.anchor_token_loss(lg, tgt, mask, alpha=1.0)
    assert float(plain) == pytest.approx(sum(ce) / 9, rel=1e-6)


def test_padding_does_not_change_token_loss():
    torch.manual_seed(1)
    tokens = two_joint_tokens()
    padded = torch.tensor(TOK.pad_batch([tokens[0].numpy()], length=14))
    logits = torch.randn(1, 14, TOK.vocab_size)
    a = SL.anchor_token_loss(*SL.shift_for_next_token(logits[:, :10], tokens, TOK.pad))
    b = SL.anchor_token_loss(*SL.shift_for_next_token(logits, padded, TOK.pad))
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_symmetric_token_loss_is_frame_mean_and_token_loss_combines():
    torch.manual_seed(2)
    tokens = two_joint_tokens()
    lk = torch.randn(1, 2, 10, TOK.vocab_size)
    per = [SL.anchor_token_loss(*SL.shift_for_next_token(lk[:, k], tokens, TOK.pad)) for k in range(2)]
    tgt, mask = tokens[:, 1:], tokens[:, 1:] != TOK.pad
    sym = SL.symmetric_token_loss(lk[:, :, :-1], tgt, mask)
    assert float(sym) == pytest.approx(float(sum(per) / 2), rel=1e-6)
    # a missing frame is left out of the mean
    sym1 = SL.symmetric_token_loss(lk[:, :, :-1], tgt, mask, frame_mask=torch.tensor([[True, False]]))
    assert float(sym1) == pytest.approx(float(per[0]), rel=1e-6)
    total = SL.token_loss(per[0], sym, lambda_anchor=2.0, lambda_sym=0.5)
    assert float(total) == pytest.approx(2.0 * float(per[0]) + 0.5 * float(sym), rel=1e-6)


def test_token_loss_rejects_bad_shapes_and_ids():
    with pytest.raises(ValueError, match="logits must be"):
        SL.weighted_token_ce(torch.zeros(1, 5, 7), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target token ids"):
        SL.weighted_token_ce(torch.zeros(1, 2, 7), torch.tensor([[1, 9]]))


def test_expected_joint_positions_peaked_logits_give_bin_centres_and_gradients():
    joints = np.array([[0.0, 0.0, 0.0], [0.2, 0.3, -0.1], [0.21, -0.3, 0.4]])
    tokens = torch.tensor(TOK.pad_batch([TOK.encode(joints, np.array([-1, 0, 0])),
                                         TOK.encode(joints[:2], np.array([-1, 0]))]))
    logits = torch.full((2, tokens.shape[1], TOK.vocab_size), -30.0)
    for b in range(2):  # logits[i] scores token i + 1
        for i in range(tokens.shape[1] - 1):
            logits[b, i, tokens[b, i + 1]] = 30.0
    logits.requires_grad_(True)
    pos, valid = SL.expected_joint_positions(logits, tokens, TOK)
    assert pos.shape == (2, 3, 3) and valid.tolist() == [[True, True, True], [True, True, False]]
    for b, n in ((0, 3), (1, 2)):
        ref, _ = TOK.decode(tokens[b].numpy())
        assert torch.allclose(pos[b, :n].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    pos[valid].sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# --- geometry space ---------------------------------------------------------------------------

@pytest.mark.parametrize("alignment", ["structure_tensor", "procrustes", "auto"])
def test_geometry_terms_vanish_for_rigidly_moved_copy(alignment):
    rng = np.random.default_rng(3)
    cfg = SL.GeometryLossConfig(alignment=alignment)
    for _ in range(5):
        joints, parents = random_tree(rng)
        rot, t = random_rotation(rng), torch.tensor(rng.normal(size=3))
        moved = joints @ rot.T + t
        terms = SL.frame_geometry_terms(joints, parents, moved, parents, cfg)
        assert float(terms["dir"]) == pytest.approx(0.0, abs=1e-9)
        assert float(terms["len"]) == pytest.approx(0.0, abs=1e-12)
        assert float(terms["ch"]) == pytest.approx(0.0, abs=1e-12)


def test_structure_tensor_sign_choice_handles_half_turns():
    # a 180-degree turn about a principal axis flips two eigenvector signs: still aligned exactly
    rng = np.random.default_rng(4)
    joints, parents = random_tree(rng)
    v = SL.edge_vectors(joints, parents)
    _, u = torch.linalg.eigh(SL.structure_tensor(v))
    axis = u[:, -1]
    half_turn = 2 * torch.outer(axis, axis) - torch.eye(3, dtype=torch.float64)
    rot = SL.structure_tensor_rotation(joints, parents, joints @ half_turn.T, parents)
    assert torch.allclose(rot, half_turn, atol=1e-8)


def test_geometry_terms_are_permutation_invariant():
    rng = np.random.default_rng(5)
    joints, parents = random_tree(rng, 10)
    other, _ = random_tree(rng, 10)
    other = joints + 0.05 * (other - joints)  # a perturbed frame-k skeleton
    order = np.concatenate([[0], rng.permutation(np.arange(1, 10))])
    # keep a topological order: relabel then sort by depth-first validity is not needed by the loss
    pj, pp = reorder(other.numpy(), parents.numpy(), order)
    a = SL.frame_geometry_terms(joints, parents, other, parents)
    b = SL.frame_geometry_terms(joints, parents, torch.tensor(pj), torch.tensor(pp).long())
    for key in ("dir", "len", "ch"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-9, abs=1e-12)
    assert float(a["len"]) > 0 and float(a["ch"]) > 0


def test_length_and_direction_terms_hand_values():
    # lengths {1, 2} vs {1, 3}: sorted (2, 1) vs (3, 1) -> ((3-2)^2 + 0) / 2
    v0 = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])
    vk = torch.tensor([[0, 0, 3.0], [1.0, 0, 0]])
    assert float(SL.length_loss(v0, vk)) == pytest.approx(0.5)
    # unequal edge counts: m = min(|E0|, |Ek|) longest of each
    assert float(SL.length_loss(v0, torch.tensor([[0, 0, 2.5]]))) == pytest.approx(0.25)
    # directions: x and y vs x only -> row maxima (1, 0), column maxima (1): 0.5 * ((1 - 0.5) + 0)
    assert float(SL.direction_loss(v0, torch.tensor([[5.0, 0, 0]]))) == pytest.approx(0.25)
    # Chamfer: {0} vs {1, 0} in 1-D -> 0.5 * (0 + (1 + 0) / 2)
    a = torch.zeros(1, 3)
    b = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    assert float(SL.endpoint_chamfer_loss(a, b)) == pytest.approx(0.25)


def test_top_rho_edges_keeps_longest():
    v = torch.tensor([[1.0, 0, 0], [0, 3.0, 0], [0, 0, 2.0], [0.5, 0, 0]])
    kept = SL.top_rho_edges(v, 0.5)
    assert sorted(kept.norm(dim=-1).tolist()) == [2.0, 3.0]
    with pytest.raises(ValueError, match="rho"):
        SL.top_rho_edges(v, 0.0)


def test_geometry_loss_is_differentiable_and_averages_frames():
    rng = np.random.default_rng(6)
    j0, p0 = random_tree(rng)
    frames = []
    for _ in range(2):
        jk = (j0 + 0.03 * torch.tensor(rng.normal(size=j0.shape))).requires_grad_(True)
        frames.append((jk, p0))
    cfg = SL.GeometryLossConfig(lambda_dir=1.0, lambda_len=2.0, lambda_ch=3.0, rho=0.8)
    loss, parts = SL.geometry_loss((j0, p0), frames, cfg)
    manual = 0.0
    for jk, pk in frames:
        t = SL.frame_geometry_terms(j0, p0, jk, pk, cfg)
        manual += float((t["dir"] + 2 * t["len"] + 3 * t["ch"]).detach()) / 2
    assert float(loss.detach()) == pytest.approx(manual, rel=1e-9)
    loss.backward()
    for jk, _ in frames:
        assert jk.grad is not None and torch.isfinite(jk.grad).all() and jk.grad.abs().sum() > 0
    # the rotation may also carry gradients
    jk = frames[0][0].detach().requires_grad_(True)
    t = SL.frame_geometry_terms(j0, p0, jk, p0, SL.GeometryLossConfig(grad_through_rotation=True))
    (t["dir"] + t["ch"]).backward()
    assert torch.isfinite(jk.grad).all()


def test_geometry_loss_without_edges_is_zero():
    single = torch.zeros(1, 3, requires_grad=True)
    j0, p0 = random_tree(np.random.default_rng(7))
    terms = SL.frame_geometry_terms(j0, p0, single, torch.tensor([-1]))
    assert all(float(v.detach()) == 0.0 for v in terms.values())


# --- skinning ---------------------------------------------------------------------------------

def test_topk_mask_and_renormalization():
    teacher = torch.tensor([[[0.5, 0.3, 0.1, 0.05, 0.05, 0.0],
                             [0.0, 0.0, 0.25, 0.15, 0.3, 0.3]]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    m = KL.batch_topk_mask(teacher, valid, k_s=2, gamma=0.0)
    # the invalid joint 5 never enters, even with the largest teacher weight of point 1
    assert m[0].tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0]]
    mg = KL.batch_topk_mask(teacher, valid, k_s=2, gamma=0.1)
    assert mg[0, 0].tolist() == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0])
    z = torch.rand(3, 2, 6)
    r = KL.masked_renormalize(z, m)
    assert torch.allclose(r.sum(-1), torch.ones(3, 2), atol=1e-6)
    assert (r[..., m[0] == 0] == 0).all()
    # gamma > 0 keeps the other valid joints in the support, never the invalid one
    rg = KL.masked_renormalize(z, mg)
    assert torch.allclose(rg.sum(-1), torch.ones(3, 2), atol=1e-6) and (rg[..., 5] == 0).all()


def test_masked_mean_hand_value():
    f = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sum f m = 7, sum m / N = 3 / 2
    assert float(KL.masked_average(f, m)) == pytest.approx(7.0 / 1.5)


def test_point_segment_distance_hand_values():
    pts = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # second segment has zero length
    d = KL.point_segment_distance(pts, a, b)
    expect = [[1.0, math.sqrt(0.25 + 1)], [1.0, math.sqrt(1 + 1 + 1)], [1.0, math.sqrt(4 + 1 + 1)]]
    assert torch.allclose(d, torch.tensor(expect), atol=1e-6)


def make_skin_case(seed: int = 0, B: int = 2, F: int = 3, N: int = 20, J: int = 5):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.rand(B, N, J, generator=g) ** 3
    valid = torch.ones(B, J, dtype=torch.bool)
    valid[1, -1] = False
    teacher = teacher * valid[:, None]
    teacher = teacher / teacher.sum(-1, keepdim=True)
    points = torch.rand(B, F, N, 3, generator=g) - 0.5
    joints = torch.rand(B, J, 3, generator=g) - 0.5
    parents = torch.tensor([[-1, 0, 1, 1, 0]] * B)
    return teacher, valid, points, joints, parents


def test_consistency_terms_vanish_when_prediction_equals_teacher():
    teacher, valid, points, joints, parents = make_skin_case()
    pred = teacher[:, None].expand(-1, 3, -1, -1)
    m = KL.batch_topk_mask(teacher, valid, 4)
    y = KL.masked_renormalize(teacher, m)
    w = KL.masked_renormalize(pred, m[:, None])
    assert float(KL.sym_kl_loss(w, y, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(KL.l1_loss(w, y, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(KL.anchor_skin_loss(w, y, m)) == pytest.approx(0.0, abs=1e-6)
    # and they are positive for a different prediction
    other = torch.softmax(torch.randn(2, 3, 20, 5), -1)
    wo = KL.masked_renormalize(other, m[:, None])
    assert float(KL.sym_kl_loss(wo, y, m)) > 0 and float(KL.l1_loss(wo, y, m)) > 0


def test_entropy_hand_value():
    pred = torch.full((1, 2, 4, 2), 0.5)  # two frames, four points, uniform over two joints
    m = torch.ones(1, 4, 2)
    # per frame: sum_ij (-0.5 ln 0.5) = 4 ln 2, divided by sum m / N = 2 -> 2 ln 2; two frames summed
    assert float(KL.entropy_loss(pred, m)) == pytest.approx(4 * math.log(2), rel=1e-6)


def test_prior_decreases_toward_nearer_bone():
    # bone 0 from (0,0,0) to (1,0,0) (joint 1 with parent 0); joint 0 is the root at the origin.
    joints = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    parents = torch.tensor([[-1, 0, 0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    points = torch.tensor([[[[0.6, 0.05, 0.0]]]])  # one frame, one point, near bone of joint 1
    prior = KL.averaged_prior(KL.proximity_prior(points, joints, parents, valid, beta=15.0))
    assert int(prior[0, 0].argmax()) == 1
    m = torch.ones(1, 1, 3)
    far = torch.tensor([[[[0.2, 0.2, 0.6]]]])
    near = torch.tensor([[[[0.2, 0.6, 0.2]]]])
    assert float(KL.prior_loss(near, prior, m)) < float(KL.prior_loss(far, prior, m))
    # Eq. 24 hand value: the root is a point at the origin, bone 1 runs along x, bone 2 along y
    d = torch.tensor([math.hypot(0.6, 0.05), 0.05, 0.6])
    assert torch.allclose(prior[0, 0], torch.softmax(-15.0 * d, 0), atol=1e-6)


def test_prior_time_average_and_warmup():
    teacher, valid, points, joints, parents = make_skin_case()
    per_frame = KL.proximity_prior(points, joints, parents, valid)
    assert torch.allclose(per_frame.sum(-1), torch.ones(2, 3, 20), atol=1e-5)
    assert (per_frame[1, ..., -1] == 0).all()
    assert torch.allclose(KL.averaged_prior(per_frame, window=2), per_frame[:, :2].mean(1))
    assert [KL.prior_warmup(e) for e in (0, 2.5, 5, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert KL.enough_joints(valid, 5).tolist() == [True, False]


def test_point_teacher_barycentric_transfer():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3]])
    w_vtx = np.eye(4, 3, dtype=np.float32)
    w_vtx[3] = [0.5, 0.5, 0.0]
    s = SurfaceSamples(np.array([0, 1]), np.array([[1, 0, 0], [0.2, 0.3, 0.5]], dtype=np.float32))
    wt = KL.point_teacher(w_vtx, faces, s)
    assert np.allclose(wt[0], w_vtx[0])
    assert np.allclose(wt[1], 0.2 * w_vtx[0] + 0.3 * w_vtx[1] + 0.5 * w_vtx[3])
    samples = sample_surface(verts, faces, 50, seed=0)
    assert np.allclose(KL.point_teacher(w_vtx, faces, samples).sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="vertex_weights"):
        KL.point_teacher(w_vtx[:2], faces, s)


def test_skinning_loss_every_term_finite_with_gradients_and_switches():
    teacher, valid, points, joints, parents = make_skin_case()
    logits = torch.randn(2, 3, 20, 5, requires_grad=True)
    pred = torch.softmax(logits.masked_fill(~valid[:, None, None], -1e9), -1)
    cfg = KL.SkinningLossConfig()
    total, parts = KL.skinning_loss(pred, teacher, valid, points, joints, parents, cfg, epoch=1.0)
    assert all(math.isfinite(v) for v in parts.values())
    assert parts["prior_factor"] == pytest.approx(0.2)
    expect = (parts["sym"] + parts["l1"] + 0.25 * parts["anchor"] + 0.02 * parts["ent"]
              + 0.1 * 0.2 * parts["prior"])
    assert parts["total"] == pytest.approx(expect, rel=1e-5)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # each term alone has gradients
    m = KL.batch_topk_mask(teacher, valid)
    y = KL.masked_renormalize(teacher, m)
    prior = KL.averaged_prior(KL.proximity_prior(points, joints, parents, valid))
    for fn in (lambda w: KL.sym_kl_loss(w, y, m), lambda w: KL.l1_loss(w, y, m),
               lambda w: KL.anchor_skin_loss(w, y, m), lambda w: KL.entropy_loss(w, m),
               lambda w: KL.prior_loss(w, prior, m)):
        lg = torch.randn(2, 3, 20, 5, requires_grad=True)
        value = fn(KL.masked_renormalize(torch.softmax(lg, -1), m[:, None]))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
    # switching a term off removes it from the total
    off = KL.SkinningLossConfig(use_sym=False, use_prior=False)
    t2, p2 = KL.skinning_loss(pred.detach(), teacher, valid, points, joints, parents, off)
    assert p2["total"] == pytest.approx(p2["l1"] + 0.25 * p2["anchor"] + 0.02 * p2["ent"], rel=1e-5)


# --- vote space (local design) --------------------------------------------------------------------

def _rotation(axis, angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_local_rotations_recover_each_parts_rotation_and_identity_on_the_anchor():
    g = torch.Generator().manual_seed(0)
    left = torch.rand(1, 40, 3, generator=g, dtype=torch.float64) * 0.2 - 0.5  # two far-apart rigid parts
    right = torch.rand(1, 40, 3, generator=g, dtype=torch.float64) * 0.2 + 0.3
    anchor = torch.cat([left, right], dim=1)  # [1, 80, 3]
    r_left, r_right = _rotation([0, 1, 0], 0.4), _rotation([1, 0, 1], -0.9)
    frame = torch.cat([left @ r_left.T + 0.1, right @ r_right.T - 0.2], dim=1)
    rot = SL.local_rotations(torch.stack([anchor, frame], dim=1), n_neighbours=8)  # [1, 2, 80, 3, 3]
    assert rot.shape == (1, 2, 80, 3, 3)
    assert torch.allclose(rot[0, 0], torch.eye(3).expand(80, 3, 3), atol=1e-5)
    assert torch.allclose(rot[0, 1, :40], r_left.float().expand(40, 3, 3), atol=1e-5)
    assert torch.allclose(rot[0, 1, 40:], r_right.float().expand(40, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="B, K, N, 3"):
        SL.local_rotations(anchor)


def test_vote_consistency_is_zero_for_votes_carried_by_the_local_motion_and_trains_toward_them():
    g = torch.Generator().manual_seed(1)
    B, K, N, Kv = 2, 3, 16, 1
    rot = torch.stack([_rotation([0, 0, 1], 0.3 * k).float() for k in range(K)])  # [K, 3, 3]
    rot = rot[None, :, None].expand(B, K, N, 3, 3)
    anchor_off = torch.randn(B, N, Kv, 3, generator=g) * 0.05
    anchor_dist = anchor_off.norm(dim=-1)
    carried = torch.einsum("bknij,bnvj->bknvi", rot, anchor_off)
    exact = SL.vote_consistency_loss(carried, anchor_dist[:, None].expand(B, K, N, Kv), anchor_off, anchor_dist, rot)
    assert float(exact) < 1e-5
    off = torch.zeros(B, K, N, Kv, 3, requires_grad=True)
    dist = torch.zeros(B, K, N, Kv, requires_grad=True)
    opt = torch.optim.Adam([off, dist], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = SL.vote_consistency_loss(off, dist, anchor_off, anchor_dist, rot)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 1.0 and losses[-1] < 0.5 * losses[0]
    # rotating the anchor's votes matters: the unrotated target is not the minimum on frames k > 0
    assert float(SL.vote_consistency_loss(anchor_off[:, None].expand(B, K, N, Kv, 3), anchor_dist[:, None].expand(
        B, K, N, Kv), anchor_off, anchor_dist, rot)) > 10 * float(exact)
