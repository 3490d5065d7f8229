"""Pretraining stage: frame preparation, the smoke run end to end, resume after a stop, warm start from
exported checkpoints, DDP on CPU, and the static evaluation stage, all on a tiny corpus written by the
real corpus generator."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models import load_model, load_models
from backend.models.checkpoint import CheckpointError, load_training_state, read_checkpoint, save_model
from backend.models.skeleton_generator import SkeletonGenerator
from backend.models.skinning_network import SkinningNetwork
from backend.skeleton import is_valid_tree
from training.data.corpus import Corpus, CorpusConfig
from training.data.generate import generate_corpus
from training.eval_static import forest_to_tree
from training.eval_static import run_stage as eval_static
from training.presets import OptimConfig, get_preset
from training.pretrain import (WarmStartConfig, WarmStartError, config_differences, lr_at, prepare_frame,
                               rewarm_factor, run_stage)

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"
torch.set_num_threads(1)

# a few seconds of training at most
TINY = dict(steps=8, ckpt_every=3, val_every=4, n_val_frames=2, n_val_generate=1, log_every=2,
            skeleton_batch=2, skinning_batch=2, n_points=128, n_query=64)


@pytest.fixture(scope="module")
def corpus_workdir(tmp_path_factory) -> Path:
    """``<tmp>/smoke/corpus`` with 8 small creatures (train, val and test splits)."""
    workdir = tmp_path_factory.mktemp("run") / "smoke"
    cfg = CorpusConfig(n_creatures=8, frames=(4, 6), verts=(400, 800), grid_cells=40, val_fraction=0.25,
                       test_fraction=0.25, shard_size=4, workers=1)
    generate_corpus(workdir / "corpus", cfg, progress=False)
    corpus = Corpus(workdir / "corpus")
    assert all(corpus.indices(s) for s in ("train", "val", "test"))
    return workdir


def copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "corpus", dst / "corpus")
    return dst


def test_prepare_frame_normalizes_and_builds_consistent_targets(corpus_workdir):
    corpus = Corpus(corpus_workdir / "corpus")
    rec = corpus.load(corpus.indices("train")[0])
    P = get_preset("smoke", n_points=200, n_query=100)
    tk = P.skeleton.tokenizer
    k = rec.n_frames - 1
    plain = prepare_frame(rec.verts[k], rec.faces, rec.joints[k], rec.parents, rec.weights,
                          np.random.default_rng(0), P.pretrain, tk, augment=False)
    # normalized by the frame's own box: longest side 1, centred
    lo, hi = plain.points.min(0), plain.points.max(0)
    assert np.abs(plain.points).max() <= 0.5 + 1e-5 and (hi - lo).max() > 0.9
    assert np.allclose(np.linalg.norm(plain.normals, axis=1), 1, atol=1e-4)
    # the tokens decode to the ground-truth skeleton up to quantization (merged joints aside)
    dec_joints, dec_parents = tk.decode(plain.tokens)
    assert is_valid_tree(dec_parents) and len(dec_parents) <= len(rec.parents)
    d = np.linalg.norm(dec_joints[:, None] - plain.joints[None], axis=-1).min(1)
    assert d.max() <= np.sqrt(3) * 0.5 / tk.n_disc + 1e-6
    # skinning queries: half surface samples, half vertices; targets are distributions
    assert plain.query.shape == (100, 6) and plain.query_weights.shape == (100, len(rec.parents))
    assert np.allclose(plain.query_weights.sum(1), 1, atol=1e-5)
    box_lo, box_hi = rec.verts[k].min(0), rec.verts[k].max(0)
    norm_verts = (rec.verts[k] - (box_lo + box_hi) / 2) / (box_hi - box_lo).max()
    vq = plain.query[50:, :3]
    nearest = np.linalg.norm(vq[:, None] - norm_verts[None], axis=-1)
    assert nearest.min(1).max() < 1e-5  # the vertex queries are mesh vertices
    idx = nearest.argmin(1)
    assert np.allclose(plain.query_weights[50:], rec.weights[idx] / rec.weights[idx].sum(1, keepdims=True), atol=1e-5)
    # augmentation: rotated about Y, scaled and shifted, still inside the unit box
    aug = prepare_frame(rec.verts[k], rec.faces, rec.joints[k], rec.parents, rec.weights,
                        np.random.default_rng(1), P.pretrain, tk, augment=True)
    assert np.abs(aug.points).max() <= 0.5 + 1e-5
    extent = aug.points.max(0) - aug.points.min(0)
    assert extent.max() <= 1.0 + 1e-5 and not np.allclose(aug.points, plain.points)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(1e-4)


def test_smoke_pretraining_learns_and_exports_checkpoints(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "smoke")
    result = run_stage("smoke", workdir, device="cpu", n_points=128, n_query=64, n_val_frames=2,
                       n_val_generate=1)
    assert result["complete"] and result["step"] == 30
    lines = [json.loads(x) for x in (workdir / "pretrain" / "log.jsonl").read_text().splitlines()]
    train = [x for x in lines if "skeleton_ce" in x]
    assert train[-1]["skeleton_ce"] < train[0]["skeleton_ce"]  # it learns something in 30 steps
    assert any("val_cd_j2j" in x for x in lines)
    for name in ("skeleton_base", "skinning_base"):
        _, info = read_checkpoint(workdir / "checkpoints" / f"{name}.safetensors")
        assert info.stage == "pretrain" and info.provenance["complete"] and info.provenance["step"] == 30
        assert info.provenance["preset"] == "smoke" and "commit" in info.provenance
    models = load_models(workdir / "checkpoints", which="base", device="cpu")
    assert models.skeleton.cfg.d_model == get_preset("smoke").skeleton.d_model
    # running the stage again does nothing but report it is complete
    again = run_stage("smoke", workdir, device="cpu", n_points=128, n_query=64, n_val_frames=2, n_val_generate=1)
    assert again["step"] == 30 and again["complete"]


def test_resume_after_a_stop_gives_the_same_weights(corpus_workdir, tmp_path):
    straight = copy_corpus(corpus_workdir, tmp_path / "a")
    stopped = copy_corpus(corpus_workdir, tmp_path / "b")
    run_stage("smoke", straight, device="cpu", **TINY)
    partial = run_stage("smoke", stopped, device="cpu", stop_after=5, **TINY)
    assert partial["step"] == 5 and not partial["complete"]
    assert not (stopped / "pretrain" / "state.pt.tmp").exists()
    resumed = run_stage("smoke", stopped, device="cpu", **TINY)
    assert resumed["complete"]
    for name in ("skeleton_base", "skinning_base"):
        a, _ = load_model(straight / "checkpoints" / f"{name}.safetensors")
        b, _ = load_model(stopped / "checkpoints" / f"{name}.safetensors")
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka


def test_time_budget_exports_a_resumable_incomplete_run(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "budget")
    spent = run_stage("smoke", workdir, device="cpu", minutes=1e-9, **TINY)  # out of time after the first step
    assert spent["step"] == 1 and not spent["complete"] and spent["validation"]["step"] == 1
    _, info = load_model(workdir / "checkpoints" / "skeleton_base.safetensors")
    assert info.provenance["step"] == 1 and not info.provenance["complete"]
    assert (workdir / "pretrain" / "state.pt").is_file()
    resumed = run_stage("smoke", workdir, device="cpu", minutes=60, **TINY)
    assert resumed["step"] == TINY["steps"] and resumed["complete"]


def test_state_of_another_preset_is_refused(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "w")
    run_stage("smoke", workdir, device="cpu", stop_after=3, **TINY)
    P = get_preset("smoke", **TINY)
    P.name = "other"
    with pytest.raises(RuntimeError, match="belongs to preset 'smoke'"):
        run_stage(P, workdir, device="cpu")


def test_local_design_pretrains_with_joint_votes_and_refuses_a_perceiver_state(corpus_workdir, tmp_path):
    local = copy_corpus(corpus_workdir, tmp_path / "local")
    result = run_stage(get_preset("smoke", design="local", **TINY), local, device="cpu")
    assert result["complete"]
    lines = [json.loads(x) for x in (local / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["vote_loss"]) for x in lines if "skeleton_ce" in x)
    assert any("val_proposal_count_err" in x and "val_coord_acc" in x for x in lines)
    model, info = load_model(local / "checkpoints" / "skeleton_base.safetensors")
    assert info.config["design"] == "local" and model.cfg.design == "local"
    perceiver = copy_corpus(corpus_workdir, tmp_path / "perceiver")
    run_stage("smoke", perceiver, device="cpu", stop_after=3, **TINY)
    with pytest.raises(RuntimeError, match="holds a 'perceiver' skeleton generator, not 'local'"):
        run_stage(get_preset("smoke", design="local", **TINY), perceiver, device="cpu")


def test_count_head_is_fitted_after_pretraining_and_dropped_by_a_continued_run(corpus_workdir, tmp_path):
    from training import count_head as CH

    local = copy_corpus(corpus_workdir, tmp_path / "count")
    P = get_preset("smoke", design="local", **TINY)
    run_stage(P, local, device="cpu", minutes=1e-9)  # an incomplete export at step 1
    path = local / "checkpoints" / "skeleton_base.safetensors"
    result = CH.run_stage("smoke", local, n_frames=12, batch=6)
    assert not result["skipped"] and result["n_frames"] == 12 and result["val_count_err_head"] >= 0
    model, info = load_model(path)
    assert model.cfg.count_head and model.cfg.design == "local" and info.stage == "pretrain"
    assert info.provenance["step"] == 1 and info.provenance["count_head"]["val_count_err_votes"] >= 0
    assert float(model.count_head.linear.weight.detach().abs().sum()) > 0
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 128, 3, generator=g) - 0.5
    normals = torch.nn.functional.normalize(torch.randn(2, 128, 3, generator=g), dim=-1)
    ctx = model.encode_points(points, normals)
    _, fine_weight, feats = model.count_inputs(points, *model.encoder(torch.cat([points, normals], dim=-1)))
    predicted = model.count_head(feats).round().clamp(1, model.cfg.max_joints)
    assert torch.equal(ctx.proposal_weight.sum(1), torch.minimum(predicted, fine_weight.sum(1)))
    assert all(is_valid_tree(p) for _, p in model.generate(points, normals, max_joints=8))
    # continuing the pretraining from that export drops the fitted head (the stage fits it again)
    (local / "pretrain" / "state.pt").unlink()
    assert run_stage(P, local, device="cpu", minutes=60)["complete"]
    assert not load_model(path)[0].cfg.count_head
    # a perceiver model has no votes: skipped, file untouched
    other = local / "checkpoints" / "perceiver.safetensors"
    save_model(SkeletonGenerator(get_preset("smoke").skeleton), other, "pretrain", {"step": 0})
    before = other.read_bytes()
    assert CH.run_stage("smoke", local, checkpoint="checkpoints/perceiver.safetensors")["skipped"]
    assert other.read_bytes() == before


def test_ddp_with_two_cpu_processes(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.pretrain", "--preset", "smoke", "--workdir", str(workdir), "--device", "cpu",
           "--steps", "4", "--num-threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, info = read_checkpoint(workdir / "checkpoints" / "skeleton_base.safetensors")
    assert info.provenance["world_size"] == 2 and info.provenance["step"] == 4


def test_forest_to_tree_reparents_extra_roots():
    joints = np.array([[0, 0, 0], [0, 1, 0], [0.3, 1.1, 0], [0.3, 2.5, 0], [0.2, 2, 0]], dtype=float)
    parents = np.array([-1, 0, -1, 2, 1])  # two trees: {0, 1, 4} and {2, 3}
    weights = np.eye(5)
    j, p, w = forest_to_tree(joints, parents, weights)
    assert is_valid_tree(p)
    # joint 2 (root of the smaller tree) hangs off its nearest joint of the main tree (joint 1 at y=1)
    moved = int(np.flatnonzero((j == [0.3, 1.1, 0]).all(1))[0])
    assert np.allclose(j[p[moved]], [0, 1, 0])
    assert np.allclose(w, np.eye(5)[:, [int(np.flatnonzero((joints == r).all(1))[0]) for r in j]])


def test_eval_static_stage_writes_results(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "smoke")
    run_stage("smoke", workdir, device="cpu", **TINY)
    real = tmp_path / "real"
    real.mkdir()
    fox = REALDATA / "khronos_fox_run.npz"
    if fox.is_file():
        shutil.copy(fox, real / fox.name)
    results = eval_static("smoke", workdir, device="cpu", realdata_dir=real)
    ct = results["corpus_test"]
    assert ct["n_frames"] > 0 and 0 <= ct["skin_precision"] <= 1 and ct["cd_j2j"] > 0
    assert 0 <= ct["unconstrained_valid"] <= 1 and ct["valid_tree"] == 1.0
    # the no-learning control beside the model, same frames, the ground truth's joint count
    control = ct["kmeans_control"]
    assert control["n_frames"] == ct["n_frames"] and control["joint_count_err"] == 0 and control["cd_j2j"] > 0
    table = (workdir / "eval_static" / "results.md").read_text()
    assert "| corpus test: k-means control (no learning) |" in table
    if fox.is_file():
        fox_row = results["realdata"]["khronos_fox_run"]
        assert fox_row["n_frames"] == 1
        assert fox_row["motion_skeleton"]["n_frames"] == 1 and 0 < fox_row["motion_skeleton"]["cd_j2j"] < 0.2
        assert results["realdata"]["all"]["kmeans_control"]["n_frames"] == 1
        assert "skeleton from the clip's motion (no learning)" in table
    if ct["cd_j2j"] >= control["cd_j2j"]:  # the tiny smoke model loses to the control, and the table says so
        assert "**corpus test: the model's CD-J2J" in table
    saved = json.loads((workdir / "eval_static" / "results.json").read_text())
    assert saved["corpus_test"]["n_frames"] == ct["n_frames"]
    assert "| corpus test |" in table


def test_compare_decodings_scores_each_decoding_beside_the_control(corpus_workdir, tmp_path):
    from backend.models.checkpoint import save_model
    from backend.models.skeleton_generator import SkeletonGenerator
    from training.eval_static import compare_decodings, decodings_table

    torch.manual_seed(0)
    path = tmp_path / "skeleton_base.safetensors"
    save_model(SkeletonGenerator(get_preset("smoke", design="local").skeleton), path, "pretrain", {"step": 0})
    empty = tmp_path / "no_real_rigs"
    empty.mkdir()
    results = compare_decodings(path, corpus_workdir / "corpus", ["free", "proposals"], preset="smoke",
                                realdata_dir=empty, config_overrides={"proposal_min_mass": 2.0})
    assert results["overrides"] == {"proposal_min_mass": 2.0}
    with pytest.raises(ValueError, match="decoding-time fields"):
        compare_decodings(path, corpus_workdir / "corpus", ["free"], preset="smoke", realdata_dir=empty,
                          config_overrides={"d_model": 8})
    with pytest.raises(ValueError, match="no fitted joint-count head"):
        compare_decodings(path, corpus_workdir / "corpus", ["free"], preset="smoke", realdata_dir=empty,
                          config_overrides={"count_head": True})
    test = results["sets"]["corpus test"]
    assert set(test) == {"free", "proposals", "kmeans_control"}
    for decoding in ("free", "proposals"):
        assert test[decoding]["n_frames"] == test["kmeans_control"]["n_frames"] > 0
        assert test[decoding]["cd_j2j"] > 0 and test[decoding]["joints_pred_mean"] >= 1
        assert not any(k.startswith("skin_") for k in test[decoding])  # skeletons only
    table = decodings_table(results)
    assert "| corpus test | decoding `proposals` |" in table and "k-means control" in table


# ---- warm start from exported checkpoints (no state.pt) ------------------------------------------------

# 12 steps; validation (and export) at step 6, resumable states every 3 steps
WARM = dict(steps=12, ckpt_every=3, val_every=6, n_val_frames=2, n_val_generate=1, log_every=2,
            skeleton_batch=2, skinning_batch=2, n_points=128, n_query=64)
BASE = ("skeleton_base", "skinning_base")
NO_REPO = WarmStartConfig(repo_dir=None)  # hermetic: never look at the repository's checkpoints/


def read_log(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "pretrain" / "log.jsonl").read_text().splitlines()]


def export_at_step_6(corpus_workdir: Path, dst: Path) -> Path:
    """A run stopped at step 8 whose last export is step 6, with its state.pt deleted."""
    workdir = copy_corpus(corpus_workdir, dst)
    first = run_stage("smoke", workdir, device="cpu", stop_after=8, warm_start=NO_REPO, **WARM)
    assert first["step"] == 8 and not first["complete"]
    (workdir / "pretrain" / "state.pt").unlink()
    return workdir


def test_rewarm_factor_and_config_differences():
    assert [rewarm_factor(s, 10, 4) for s in (10, 11, 13, 20)] == [0.25, 0.5, 1.0, 1.0]
    assert rewarm_factor(10, 10, 0) == 1.0
    saved = {"name": "p", "pretrain": {"steps": 10, "jitter": [0.8, 1.0]}}
    current = {"name": "p", "pretrain": {"steps": 20, "jitter": [0.8, 1.0], "new": 1}}
    assert config_differences(saved, current) == ["pretrain.new: '<absent>' -> 1", "pretrain.steps: 10 -> 20"]
    with pytest.raises(ValueError, match="rewarmup_steps"):
        WarmStartConfig(rewarmup_steps=-1)


def test_warm_start_continues_from_the_exported_step_with_the_exported_weights(corpus_workdir, tmp_path):
    workdir = export_at_step_6(corpus_workdir, tmp_path / "w")
    ckpt = workdir / "checkpoints"
    exported = {n: read_checkpoint(ckpt / f"{n}.safetensors") for n in BASE}
    assert all(info.provenance["step"] == 6 and not info.provenance["complete"] for _, info in exported.values())
    P = get_preset("smoke", **WARM)
    rewarm = min(WarmStartConfig().rewarmup_steps, P.skeleton_optim.warmup_steps)  # 5 for smoke

    # one step after the warm start
    one = run_stage("smoke", workdir, device="cpu", stop_after=7, warm_start=NO_REPO, **WARM)
    assert one["step"] == 7 and not one["complete"]
    lines = read_log(workdir)
    event = next(i for i, x in enumerate(lines) if x.get("event") == "warm_start")
    assert lines[event]["step"] == 6 and lines[event]["optimizer_moments"] == "reset"
    trained = [x for x in lines[event + 1:] if "skeleton_ce" in x]
    assert [x["step"] for x in trained] == [7]  # continued at step 6, not at 0
    lr6 = lr_at(6, 12, P.skeleton_optim) / rewarm  # cosine schedule at step 6, first re-warm-up step
    assert trained[0]["lr"] == pytest.approx(lr6, rel=1e-9)
    state = load_training_state(workdir / "pretrain" / "state.pt")
    assert state["step"] == 7 and json.loads(state["warm_start"])["step"] == 6
    # the weights after that step are the exported ones moved by one AdamW step from zero moments:
    # |w1 - w0| <= lr * (1 + weight_decay * |w0|) per entry; a fresh initialisation is far from them
    torch.manual_seed(P.pretrain.seed)
    fresh = {"skeleton_base": SkeletonGenerator(P.skeleton).state_dict(),
             "skinning_base": SkinningNetwork(P.skinning).state_dict()}
    for name, key, opt in (("skeleton_base", "skeleton", P.skeleton_optim),
                           ("skinning_base", "skinning", P.skinning_optim)):
        lr = lr_at(6, 12, opt) / rewarm
        far = 0.0
        for k, w0 in exported[name][0].items():
            w1 = state[key][k]
            if not w0.is_floating_point():
                assert torch.equal(w0, w1), k
                continue
            bound = lr * (1 + opt.weight_decay * w0.abs()) * (1 + 1e-4) + 1e-6 * w0.abs() + 1e-9
            assert ((w1 - w0).abs() <= bound).all(), k
            far = max(far, (fresh[name][k] - w0).abs().max().item())
        assert far > 20 * lr, name

    # ... and on to the end; the re-warm-up survives a resume from state.pt
    done = run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **WARM)
    assert done["complete"] and done["step"] == 12
    lines = read_log(workdir)
    trained = [x for x in lines[event + 1:] if "skeleton_ce" in x]
    assert [x["step"] for x in trained] == [7, 8, 10, 12]
    assert trained[1]["lr"] == pytest.approx(lr_at(7, 12, P.skeleton_optim) * 2 / rewarm, rel=1e-9)
    assert trained[-1]["lr"] == pytest.approx(lr_at(11, 12, P.skeleton_optim), rel=1e-9)
    for name in BASE:
        _, info = read_checkpoint(ckpt / f"{name}.safetensors")
        assert info.provenance["step"] == 12 and info.provenance["complete"]
        assert info.provenance["warm_started_from"] == {
            "file": str(ckpt / f"{name}.safetensors"), "step": 6, "sha256": exported[name][1].sha256}


def test_warm_start_refuses_mismatches(corpus_workdir, tmp_path):
    workdir = export_at_step_6(corpus_workdir, tmp_path / "w")
    with pytest.raises(WarmStartError, match=r"different configuration.*pretrain\.n_points: 128 -> 96"):
        run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **{**WARM, "n_points": 96})
    with pytest.raises(WarmStartError, match=r"pretrain\.steps: 12 -> 20"):
        run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **{**WARM, "steps": 20})
    other = get_preset("smoke", **WARM)
    other.name = "other"
    with pytest.raises(WarmStartError, match="belongs to preset 'smoke', not 'other'"):
        run_stage(other, workdir, device="cpu", warm_start=WarmStartConfig(init_from=workdir / "checkpoints"))
    with pytest.raises(WarmStartError, match="missing"):
        run_stage("smoke", workdir, device="cpu", warm_start=WarmStartConfig(init_from=tmp_path), **WARM)
    assert not (workdir / "pretrain" / "state.pt").exists()  # nothing was trained
    # a modified file is refused by the sha256 check
    path = workdir / "checkpoints" / "skinning_base.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **WARM)
    # bookkeeping settings may differ, and discovered files of another preset are ignored (fresh start)
    again = export_at_step_6(corpus_workdir, tmp_path / "v")
    ok = run_stage("smoke", again, device="cpu", stop_after=7, warm_start=NO_REPO, **{**WARM, "log_every": 1})
    assert ok["step"] == 7 and [x["step"] for x in read_log(again) if x.get("event")] == [6]
    (again / "pretrain" / "state.pt").unlink()
    fresh = run_stage(other, again, device="cpu", stop_after=1, warm_start=NO_REPO)
    assert fresh["step"] == 1


def test_complete_checkpoints_are_left_alone(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "w")
    run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **WARM)
    (workdir / "pretrain" / "state.pt").unlink()
    files = {n: (workdir / "checkpoints" / f"{n}.safetensors").read_bytes() for n in BASE}
    log_before = (workdir / "pretrain" / "log.jsonl").read_text()
    result = run_stage("smoke", workdir, device="cpu", warm_start=NO_REPO, **WARM)
    assert result["complete"] and result["step"] == 12
    assert {n: (workdir / "checkpoints" / f"{n}.safetensors").read_bytes() for n in BASE} == files
    assert (workdir / "pretrain" / "log.jsonl").read_text() == log_before
    assert not (workdir / "pretrain" / "state.pt").exists()
    # from another folder (e.g. the repository's checkpoints/): copied unchanged, nothing trained
    elsewhere = tmp_path / "fresh"
    result = run_stage("smoke", elsewhere, device="cpu",
                       warm_start=WarmStartConfig(init_from=workdir / "checkpoints"), **WARM)
    assert result["complete"] and result["step"] == 12
    assert {n: (elsewhere / "checkpoints" / f"{n}.safetensors").read_bytes() for n in BASE} == files
    assert not (elsewhere / "pretrain").exists()
    # found by the search of the committed folder when the workdir has none
    assert WarmStartConfig().repo_dir == REPO / "checkpoints"
    searched = tmp_path / "searched"
    result = run_stage("smoke", searched, device="cpu", warm_start=WarmStartConfig(repo_dir=workdir / "checkpoints"),
                       **WARM)
    assert result["complete"] and (searched / "checkpoints" / "skeleton_base.safetensors").read_bytes() == files[
        "skeleton_base"]


def test_token_diagnosis_scores_perfect_and_shifted_predictions():
    from backend.models.tokenizer import SkeletonTokenizer
    from training.diagnose_tokens import error_by_joint_role, slot_errors

    tk = SkeletonTokenizer()
    # root -> a (only child) -> b, c (siblings): roles of a, b, c = only child, first sibling, later sibling
    joints = np.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [-0.2, 0.2, -0.1], [0.2, 0.2, 0.1]])
    tokens = torch.as_tensor(tk.encode(joints, np.array([-1, 0, 1, 1])))[None]
    perfect = torch.nn.functional.one_hot(torch.cat([tokens[:, 1:], tokens[:, :1]], 1), tk.vocab_size).float()
    errs = slot_errors(perfect, tokens, tk)
    assert all(errs[s]["acc"] == 1.0 and errs[s]["mean"] == 0.0 for s in "xyz") and errs["parent"]["acc"] == 1.0
    assert error_by_joint_role(perfect, tokens, tk) == {"only child": 0.0, "first sibling": 0.0, "later sibling": 0.0}
    shifted = perfect.clone()
    x_of_c = 4 * 3  # logits index predicting joint 3's x token
    shifted[0, x_of_c] = torch.nn.functional.one_hot(tokens[0, x_of_c + 1] - 5, tk.vocab_size).float()
    roles = error_by_joint_role(shifted, tokens, tk)
    assert roles["later sibling"] == pytest.approx(5 / 3) and roles["first sibling"] == 0.0
