"""Pretraining stage: frame preparation, the smoke run end to end, resume after a stop, DDP on CPU,
and the static evaluation stage, all on a tiny corpus written by the real corpus generator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models import load_model, load_models
from backend.models.checkpoint import read_checkpoint
from backend.skeleton import is_valid_tree
from training.data.corpus import Corpus, CorpusConfig
from training.data.generate import generate_corpus
from training.eval_static import forest_to_tree
from training.eval_static import run_stage as eval_static
from training.presets import OptimConfig, get_preset
from training.pretrain import lr_at, prepare_frame, run_stage

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


def test_state_of_another_preset_is_refused(corpus_workdir, tmp_path):
    workdir = copy_corpus(corpus_workdir, tmp_path / "w")
    run_stage("smoke", workdir, device="cpu", stop_after=3, **TINY)
    P = get_preset("smoke", **TINY)
    P.name = "other"
    with pytest.raises(RuntimeError, match="belongs to preset 'smoke'"):
        run_stage(P, workdir, device="cpu")


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
    if fox.is_file():
        assert results["realdata"]["khronos_fox_run"]["n_frames"] == 1
    saved = json.loads((workdir / "eval_static" / "results.json").read_text())
    assert saved["corpus_test"]["n_frames"] == ct["n_frames"]
    assert "| corpus test |" in (workdir / "eval_static" / "results.md").read_text()
