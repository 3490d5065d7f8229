"""SPRig fine-tuning stages: every loss term trains a tiny model, and both smoke stages run and resume.

The stage runs use a tiny procedural corpus written by the data stage's generator and freshly
initialized (untrained) smoke-size base models saved as real checkpoints: the stages' code paths
(pseudo-labels, teachers, decoding, losses, checkpoints, resume) are the ones a full run takes.
"""

import json
import math

import numpy as np
import pytest
import torch

from backend.models.checkpoint import load_model, read_checkpoint, save_model
from backend.models.inference import RiggerModels
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig
from backend.normalize import AnchorBox
from backend.skeleton import tree_distances
from training import sprig_skeleton as SK
from training import sprig_skinning as SN
from training.data.corpus import generate_creature
from training.losses import skinning_losses as KL
from training.batching import pad_joint_columns, pad_skeletons
from training.stage_utils import StageBookkeeping, mean_log_entry

TINY_SKEL = SkeletonGeneratorConfig(n_disc=32, max_joints=16, d_model=32, n_heads=2, n_latents=8, n_enc_layers=1,
                                    n_dec_layers=1, n_freq=2, mlp_ratio=2)
TINY_SKIN = SkinningNetworkConfig(d_model=32, n_heads=2, n_latents=8, n_shape_layers=1, n_joint_layers=1,
                                  n_point_layers=1, n_freq=2, mlp_ratio=2)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def creatures(tiny_corpus_config):
    cfg = tiny_corpus_config(2)
    return [generate_creature(i, 0, cfg) for i in range(2)]


def optimize(params, loss_fn, steps: int = 8, lr: float = 3e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        first = float(loss.detach()) if first is None else first
        opt.step()
    with torch.no_grad():
        last = float(loss_fn().detach())
    return first, last


# --- skeleton terms on a tiny generator ---------------------------------------------------------

def skeleton_batch(creatures, gen: SkeletonGenerator):
    clips = []
    for rec in creatures:
        box = AnchorBox.fit(rec.verts[0])
        verts = box.apply(rec.verts[[0, 2, 4]])
        # a fixed anchor label (12 ground-truth joints here; the stage uses the frozen base model's rig)
        tokens = gen.tokenizer.encode(box.apply(rec.joints[0, :12]), rec.parents[:12])
        clips.append(SK.Clip(f"c{rec.index}", verts, rec.faces, tokens))
    return SK.make_batch(clips, 64, 0, gen.tokenizer, torch.device("cpu"))


@pytest.mark.parametrize("term", ["anchor", "sym", "geom"])
def test_skeleton_terms_finite_with_gradients_and_decrease(creatures, term):
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_SKEL)
    batch = skeleton_batch(creatures, gen)
    cfg = SK.make_config("smoke", max_joints=6)
    rng = np.random.default_rng(0)
    decoded = SK.decode_frames(gen, batch, cfg) if term == "geom" else None  # held fixed while optimizing
    params = [p for n, p in gen.named_parameters() if not n.startswith("encoder.")]
    first, last = optimize(params, lambda: SK.forward_losses(gen, gen, batch, cfg, rng, decoded)[term])
    assert math.isfinite(first) and last < first


def test_skeleton_training_loss_ablation_switches(creatures):
    torch.manual_seed(0)
    gen = SkeletonGenerator(TINY_SKEL)
    batch = skeleton_batch(creatures, gen)
    rng = np.random.default_rng(0)
    full, parts = SK.training_loss(gen, gen, batch, SK.make_config("smoke", max_joints=6), rng, with_geom=True)
    assert {"anchor", "sym", "token", "geom", "geom_dir", "geom_len", "geom_ch"} <= set(parts)
    assert parts["total"] == pytest.approx(parts["token"] + 0.5 * parts["geom"], rel=1e-5)
    _, p_nogeom = SK.training_loss(gen, gen, batch, SK.make_config("smoke", no_geom=True), rng, with_geom=True)
    assert "geom" not in p_nogeom and p_nogeom["total"] == pytest.approx(p_nogeom["token"], rel=1e-5)
    _, p_notok = SK.training_loss(gen, gen, batch, SK.make_config("smoke", no_token=True, max_joints=6), rng,
                                  with_geom=True)
    assert p_notok["total"] == pytest.approx(0.5 * p_notok["geom"], rel=1e-5)
    _, p_label = SK.training_loss(gen, gen, batch, SK.make_config("smoke", max_joints=6, geom_anchor="label"), rng,
                                  with_geom=True)
    assert math.isfinite(p_label["geom"]) and p_label["geom"] != pytest.approx(parts["geom"])
    _, p_a1 = SK.training_loss(gen, gen, batch, SK.make_config("smoke", alpha=1.0), rng, with_geom=False)
    assert p_a1["anchor"] != pytest.approx(parts["anchor"])
    with pytest.raises(ValueError, match="nothing to train"):
        SK.make_config("smoke", no_geom=True, no_token=True)


# --- skinning terms on a tiny network ---------------------------------------------------------------

@pytest.fixture(scope="module")
def skin_batch(creatures):
    torch.manual_seed(1)
    teacher_net = SkinningNetwork(TINY_SKIN).eval()
    models = RiggerModels(skeleton=None, skinning=teacher_net, device=torch.device("cpu"))
    clips = []
    for rec in creatures:
        box = AnchorBox.fit(rec.verts[0])
        verts, joints = box.apply(rec.verts[[0, 2, 4]]), box.apply(rec.joints[0])
        clips.append(SN.build_clip(f"c{rec.index}", verts, rec.faces, joints, rec.parents, models, 48, 48, seed=3))
    return SN.collate(clips, torch.device("cpu"))


TERMS = {
    "sym": lambda w, y, m, prior: KL.sym_kl_loss(w, y, m),
    "l1": lambda w, y, m, prior: KL.l1_loss(w, y, m),
    "anchor": lambda w, y, m, prior: KL.anchor_skin_loss(w, y, m),
    "ent": lambda w, y, m, prior: KL.entropy_loss(w, m),
    "prior": lambda w, y, m, prior: KL.prior_loss(w, prior, m),
}


@pytest.mark.parametrize("term", sorted(TERMS))
def test_skinning_terms_finite_with_gradients_and_decrease(skin_batch, term):
    torch.manual_seed(2)
    student = SkinningNetwork(TINY_SKIN)
    b = skin_batch
    m = KL.batch_topk_mask(b["teacher"], b["valid"])
    y = KL.masked_renormalize(b["teacher"], m)
    prior = KL.averaged_prior(KL.proximity_prior(b["query"][..., :3], b["joints"], b["parents"], b["valid"]))

    def loss():
        w = KL.masked_renormalize(SN.predict_frames(student, b), m[:, None])
        return TERMS[term](w, y, m, prior)

    first, last = optimize(list(student.parameters()), loss)
    assert last < first


def test_skinning_total_loss_decreases(skin_batch):
    torch.manual_seed(3)
    student = SkinningNetwork(TINY_SKIN)
    cfg = SN.make_config("smoke")
    first, last = optimize(list(student.parameters()), lambda: SN.training_loss(student, skin_batch, cfg, 10.0)[0])
    assert last < first
    _, parts = SN.training_loss(student, skin_batch, cfg, 1.0)
    assert parts["prior_factor"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="switched off"):
        SN.make_config("smoke", loss={"use_sym": False, "use_l1": False, "use_anchor": False, "use_ent": False,
                                      "use_prior": False})


# --- shared batching and bookkeeping -------------------------------------------------------------------

def test_pad_skeletons_and_joint_columns():
    j3 = np.arange(9, dtype=np.float64).reshape(3, 3)
    p3 = np.array([-1, 0, 1])
    j2 = np.ones((2, 3), np.float32)
    p2 = np.array([-1, 0])
    out = pad_skeletons([j2, j3], [p2, p3])
    assert out["joints"].dtype == np.float32 and out["joints"].shape == (2, 3, 3)
    np.testing.assert_array_equal(out["joints"][1], j3)
    np.testing.assert_array_equal(out["joints"][0, 2], 0.0)
    np.testing.assert_array_equal(out["parents"], [[-1, 0, -1], [-1, 0, 1]])
    np.testing.assert_array_equal(out["valid"], [[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(out["tree_dist"][1], tree_distances(p3))
    np.testing.assert_array_equal(out["tree_dist"][0, :2, :2], tree_distances(p2))
    assert (out["tree_dist"][0, 2] == -1).all() and (out["tree_dist"][0, :, 2] == -1).all()
    w = pad_joint_columns([np.full((4, 2), 0.5), np.eye(4, 3)], 3)
    assert w.shape == (2, 4, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0, :, 2], 0.0)
    np.testing.assert_array_equal(w[1], np.eye(4, 3))
    with pytest.raises(ValueError, match="shape"):
        pad_skeletons([np.zeros((2, 3))], [p3])
    with pytest.raises(ValueError, match="expected"):
        pad_joint_columns([np.zeros((4, 5))], 3)


def test_mean_log_entry_averages_parts_present():
    run = [{"b": 1.0, "a": 2.0, "geom": 4.0}, {"b": 3.0, "a": 4.0}]
    entry = mean_log_entry(7, run, 0.5, 2.0)
    assert list(entry) == ["step", "b", "a", "geom", "grad_norm", "s_per_step"]
    assert entry == {"step": 7, "b": 2.0, "a": 3.0, "geom": 4.0, "grad_norm": 0.5, "s_per_step": 1.0}
    assert list(mean_log_entry(7, run, 0.5, 2.0, sort_keys=True))[1:4] == ["a", "b", "geom"]
    with pytest.raises(ValueError, match="no steps"):
        mean_log_entry(1, [], 0.0, 1.0)


def test_stage_bookkeeping_state_resume_log_and_export(tmp_path):
    torch.manual_seed(0)
    model = SkinningNetwork(TINY_SKIN)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    book = StageBookkeeping("sprig-skinning", tmp_path / "st", tmp_path / "out.safetensors", "abc",
                            provenance={"preset": "smoke"}, total_steps=2)
    assert book.resume(model, opt, torch.device("cpu")) == 0
    (tmp_path / "st").mkdir()
    book.log_line({"step": 1, "total": 3.0})
    book.log_validation(1, {"val_l1": 0.25})
    book.save_state(1, model, opt)
    book.export(2, model, {"step": 1, "val_l1": 0.25})
    mtime = (tmp_path / "out.safetensors").stat().st_mtime_ns
    book.export(2, model, {"step": 1, "val_l1": 0.25})  # once per step
    assert (tmp_path / "out.safetensors").stat().st_mtime_ns == mtime
    _, info = load_model(tmp_path / "out.safetensors", expected="skinning_network")
    assert info.stage == "sprig-skinning" and info.provenance["complete"] is True
    assert info.provenance["preset"] == "smoke" and info.provenance["validation"]["val_l1"] == 0.25
    assert [json.loads(x) for x in (tmp_path / "st/log.jsonl").read_text().splitlines()] == book.history
    # a fresh process resumes step, weights and history; another base checkpoint is refused
    other = SkinningNetwork(TINY_SKIN)
    again = StageBookkeeping("sprig-skinning", tmp_path / "st", tmp_path / "out.safetensors", "abc")
    assert again.resume(other, torch.optim.AdamW(other.parameters()), torch.device("cpu")) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert again.history == book.history and again.last_validation("val_l1") == {"step": 1, "val_l1": 0.25}
    wrong = StageBookkeeping("sprig-skinning", tmp_path / "st", tmp_path / "out.safetensors", "xyz")
    with pytest.raises(RuntimeError, match="another base checkpoint"):
        wrong.resume(other, torch.optim.AdamW(other.parameters()), torch.device("cpu"))


# --- the smoke stages ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, make_base_run):
    return make_base_run(tmp_path_factory.mktemp("sprig_run"), 6, val_fraction=0.3, test_fraction=0.0)


FAST_SKEL = dict(steps=2, max_train_clips=2, n_val_clips=1, val_every=2, ckpt_every=1, max_joints=6, n_points=64)
FAST_SKIN = dict(steps=2, max_train_clips=2, n_val_clips=1, val_every=2, ckpt_every=1, max_joints=8, n_query=32,
                 n_shape=48)


def test_sprig_skeleton_smoke_stage_runs_and_resumes(workdir):
    first = SK.run_stage("smoke", workdir, "cpu", stop_after=1, **FAST_SKEL)
    assert first["step"] == 1 and not first["complete"] and first["checkpoint"] is None
    done = SK.run_stage("smoke", workdir, "cpu", **FAST_SKEL)
    assert done["step"] == 2 and done["complete"]
    model, info = load_model(done["checkpoint"], expected="skeleton_generator")
    assert info.stage == "sprig-skeleton" and info.provenance["step"] == 2
    lines = [json.loads(x) for x in (workdir / "sprig_skeleton" / "log.jsonl").read_text().splitlines()]
    train = [x for x in lines if "total" in x]
    assert [x["step"] for x in train] == [1, 2]  # the resumed run continued at step 2
    assert all(math.isfinite(x["total"]) and "geom" in x for x in train)
    assert any("val_pjdd" in x for x in lines)
    # the frozen encoder did not move; the decoder did
    base, _ = read_checkpoint(workdir / "checkpoints/skeleton_base.safetensors")
    tuned = model.state_dict()
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("encoder."))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("blocks."))


def test_sprig_skeleton_collapse_guard_writes_no_collapsed_checkpoint(workdir):
    # a guard no model can pass (more joints than the base on every frame x 10): the stage fails, nothing written
    run = dict(FAST_SKEL, state_dir="collapse", out_checkpoint="checkpoints/collapsed.safetensors")
    with pytest.raises(SK.SprigCollapseError, match="collapsed: every validated step") as failure:
        SK.run_stage("smoke", workdir, "cpu", min_joint_ratio=10.0, **run)
    assert "already decoded" in str(failure.value)  # step 0 failed too: the message blames the decoding, not training
    assert not (workdir / "checkpoints/collapsed.safetensors").exists()
    lines = [json.loads(x) for x in (workdir / "collapse" / "log.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val_joint_ratio" in x]
    assert val and all(x["val_joints"] > 0 and x["val_label_joints"] > 0 for x in val)
    assert val[0]["step"] == 0 and val[0]["val_joint_ratio"] == pytest.approx(
        val[0]["val_joints"] / val[0]["val_label_joints"])
    assert SK.collapsed({"val_joint_ratio": 0.5}, SK.make_config("default"))
    assert not SK.collapsed({"val_joint_ratio": 0.95}, SK.make_config("default")) and not SK.collapsed({}, SK.make_config("default"))


def test_sprig_skeleton_on_a_local_base_keeps_its_decoding_and_trains_the_votes(workdir):
    """A ``local`` base decodes ``all-proposals`` (every kept vote cluster is a joint); the fine-tuned model keeps
    that decoding unless asked otherwise; the vote term (opt-in) trains the encoder's dense head (the trunk stays
    frozen); without it (the default) the votes stay the base's."""
    from training.presets import get_preset

    P = get_preset("smoke", design="local")
    torch.manual_seed(0)
    save_model(SkeletonGenerator(P.skeleton), workdir / "checkpoints/local_base.safetensors", "pretrain",
               {"preset_config": P.to_dict(), "step": 0, "total_steps": 0})
    base, _ = read_checkpoint(workdir / "checkpoints/local_base.safetensors")
    head = "encoder.dense_head."
    run = dict(FAST_SKEL, base_checkpoint="checkpoints/local_base.safetensors")
    done = SK.run_stage("smoke", workdir, "cpu", state_dir="local", out_checkpoint="checkpoints/local_sprig.safetensors",
                        lambda_vote=1.0, **run)
    tuned, _ = load_model(done["checkpoint"], expected="skeleton_generator")
    assert P.skeleton.decode_coordinates == "all-proposals"
    assert tuned.cfg.design == "local" and tuned.cfg.decode_coordinates == "all-proposals"
    state = tuned.state_dict()
    assert any(not torch.equal(base[k], state[k]) for k in base if k.startswith(head))
    assert all(torch.equal(base[k], state[k]) for k in base if k.startswith("encoder.") and not k.startswith(head))
    free = SK.run_stage("smoke", workdir, "cpu", state_dir="local_free", decode_coordinates="proposals-then-free",
                        out_checkpoint="checkpoints/local_free.safetensors", **run)  # lambda_vote 0 by default
    tuned_free, _ = load_model(free["checkpoint"], expected="skeleton_generator")
    assert tuned_free.cfg.decode_coordinates == "proposals-then-free"
    assert all(torch.equal(base[k], v) for k, v in tuned_free.state_dict().items() if k.startswith("encoder."))
    lines = [json.loads(x) for x in (workdir / "local_free" / "log.jsonl").read_text().splitlines()]
    assert not any("vote" in x or "val_vote" in x for x in lines)
    with pytest.raises(ValueError, match="decode_coordinates must be one of"):
        SK.make_config("smoke", decode_coordinates="nearest")


def test_sprig_skinning_smoke_stage_runs_and_resumes(workdir):
    # an ablation run (no prior) writing its own checkpoint and state, killed after one step, resumed
    abl = dict(FAST_SKIN, loss={"use_prior": False}, state_dir="ablation_noprior",
               out_checkpoint="checkpoints/skinning_noprior.safetensors")
    first = SN.run_stage("smoke", workdir, "cpu", stop_after=1, **abl)
    assert first["step"] == 1 and not first["complete"] and first["clips"] == 2
    done = SN.run_stage("smoke", workdir, "cpu", **abl)
    assert done["step"] == 2 and done["complete"]
    assert done["checkpoint"].endswith("skinning_noprior.safetensors")
    _, info = load_model(done["checkpoint"], expected="skinning_network")
    assert info.stage == "sprig-skinning" and info.provenance["step"] == 2
    assert info.provenance["config"]["loss"]["use_prior"] is False
    lines = [json.loads(x) for x in (workdir / "ablation_noprior" / "log.jsonl").read_text().splitlines()]
    train = [x for x in lines if "total" in x]
    assert [x["step"] for x in train] == [1, 2]
    assert all(math.isfinite(x[k]) for x in train for k in ("sym", "l1", "anchor", "ent", "prior"))
    vals = [x for x in lines if "val_l1" in x]
    assert vals and all(math.isfinite(v["val_symkl"]) for v in vals)
    # the default smoke preset of the stage runs to completion
    full = SN.run_stage("smoke", workdir, "cpu", **{**FAST_SKIN, "steps": 1})
    assert full["complete"] and (workdir / "checkpoints/skinning_sprig.safetensors").is_file()
