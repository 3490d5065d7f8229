"""Evaluation stage: runs end to end on a tiny run folder, its numbers are the metric functions' numbers,
and missing checkpoints are reported as missing.

The run folder holds a tiny corpus written by the real generator (with a test split), freshly initialized
smoke-size base models saved as real checkpoints, and SPRig checkpoints produced by one-step runs of
the real fine-tuning stages.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.app.evaluate import load_eval_input
from backend.metrics import kmeans_skeleton, skeleton_stability, skin_consistency
from backend.normalize import AnchorBox
from training import evaluate as EV
from training import sprig_skeleton as SK
from training import sprig_skinning as SN
from training.data.corpus import Corpus

REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
FAST = dict(n_test_clips=2, max_frames=4, real_max_frames=3, n_points=64, max_joints=6,
            skeleton_ablation_steps=1, skinning_ablation_steps=1, ablation_train_clips=2, ablation_val_clips=1,
            ablation_test_clips=1)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory, make_base_run) -> Path:
    """Corpus (train/val/test) and freshly initialized smoke base checkpoints."""
    root = make_base_run(tmp_path_factory.mktemp("eval_run"), 8, val_fraction=0.25, test_fraction=0.25)
    assert Corpus(root / "corpus").indices("test")
    return root


@pytest.fixture(scope="module")
def full_workdir(base_workdir, tmp_path_factory) -> Path:
    """The base run folder plus SPRig checkpoints from one-step runs of the real stages."""
    root = tmp_path_factory.mktemp("eval_full") / "run"
    shutil.copytree(base_workdir, root)
    SK.run_stage("smoke", root, "cpu", steps=1, max_train_clips=2, n_val_clips=1, max_joints=6, n_points=64)
    SN.run_stage("smoke", root, "cpu", steps=1, max_train_clips=2, n_val_clips=1, max_joints=8, n_query=32,
                 n_shape=64, min_valid_joints=2)
    return root


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path | None:
    """One small real rig (the fox, 290 vertices) when the real data are present."""
    src = REALDATA / "khronos_fox_run.npz"
    if not src.is_file():
        return None
    dst = tmp_path_factory.mktemp("real")
    shutil.copy(src, dst / src.name)
    return dst


def test_stage_end_to_end_and_numbers_match_metric_functions(full_workdir, real_dir, tmp_path):
    out = tmp_path / "reports"
    res = EV.run_stage("smoke", full_workdir, "cpu", out_dir=out, realdata_dir=real_dir or tmp_path / "none", **FAST)
    assert (out / "evaluation.md").is_file() and (out / "evaluation.json").is_file()
    assert (out / "fig5_skin_l1_heatmap.png").stat().st_size > 1000
    assert not res["missing"]
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["corpus"]["summary"]["base"]["pjdd"] == pytest.approx(res["corpus"]["summary"]["base"]["pjdd"])
    assert saved["checkpoints"]["skeleton_sprig"]["stage"] == "sprig-skeleton"
    assert saved["checkpoints"]["skeleton_sprig"]["step"] == 1

    # one cell recomputed by calling the metric functions directly on the saved per-frame predictions
    name, clip = next(iter(res["corpus"]["clips"].items()))
    inp = load_eval_input(full_workdir / "eval" / "predictions" / f"{name}_base.npz")
    box = AnchorBox.fit(inp.verts[0])
    joints = [box.apply(j) for j in inp.joints]
    direct = skeleton_stability(joints[:3], inp.parents[:3]).summary()
    for key in ("pjdd", "blrd", "gsd", "topology_flicker"):
        assert clip["base"][key] == pytest.approx(direct[key], rel=1e-6, abs=1e-12)
    # the ground-truth row is the ground-truth skeleton's own motion
    rec = Corpus(full_workdir / "corpus").load(int(name.split("_")[1]))
    gbox = AnchorBox.fit(rec.verts[0])
    gt = skeleton_stability([gbox.apply(rec.joints[k]) for k in range(3)], [rec.parents] * 3).summary()
    assert clip["gt"]["pjdd"] == pytest.approx(gt["pjdd"], rel=1e-5)
    # the k-means control row: the control skeleton of each frame, with the ground truth's joint count
    control = [kmeans_skeleton(gbox.apply(rec.verts[k]), len(rec.parents), seed=0) for k in range(3)]
    direct = skeleton_stability([j for j, _ in control], [p for _, p in control]).summary()
    assert clip["kmeans"]["pjdd"] == pytest.approx(direct["pjdd"], rel=1e-5)
    assert clip["kmeans"]["n_joints_anchor"] == len(rec.parents) and clip["kmeans"]["cd_j2j"] > 0
    # summary = mean over clips, and the markdown shows it
    vals = [c["base"]["pjdd"] for c in res["corpus"]["clips"].values() if c["base"]["pjdd"] is not None]
    assert res["corpus"]["summary"]["base"]["pjdd"] == pytest.approx(np.mean(vals))
    md = (out / "evaluation.md").read_text()
    assert EV._f(res["corpus"]["summary"]["base"]["pjdd"]) in md
    assert "frames 0-2" in md and "MCJD" in md and "Table 2" in md and "Table 5" in md
    assert "k-means control (no learning, GT joint count)" in md
    if res["corpus"]["summary"]["base"]["cd_j2j"] >= res["corpus"]["summary"]["kmeans"]["cd_j2j"]:
        assert "Below the no-learning control" in md

    # skinning consistency: the SPRig model scored against the base anchor teacher (Eq. 35-37)
    assert clip["base"]["skin_l1"] == pytest.approx(0.0, abs=1e-9) or clip["base"]["skin_l1"] > 0
    assert clip["sprig"]["skin_symkl"] is not None and clip["sprig"]["skin_symkl"] >= 0
    acc = res["corpus"]["acceptance"]
    b, s = res["corpus"]["summary"]["base"], res["corpus"]["summary"]["sprig"]
    if b["skin_l1"]:
        assert acc["skin_l1_reduction_pct"] == pytest.approx(100 * (b["skin_l1"] - s["skin_l1"]) / b["skin_l1"])

    # ablations: every short run finished into its own checkpoint and was scored
    abl = res["ablations"]
    assert set(abl["skeleton"]) == set(EV.SKELETON_ABLATIONS) and set(abl["skinning"]) == set(EV.SKINNING_ABLATIONS)
    for kind in ("skeleton", "skinning"):
        for run in abl["runs"][kind].values():
            assert "error" not in run and run["complete"] and Path(run["checkpoint"]).is_file()
    assert all(r["skin_l1"] is not None for r in abl["skinning"].values())
    if real_dir is not None:
        assert set(res["realdata"]["clips"]) == {"khronos_fox_run"}
        assert res["figure"]["clip"] == "khronos_fox_run"
        fox = res["realdata"]["clips"]["khronos_fox_run"]
        assert fox["n_frames"] == 3 and fox["gt"]["mcjd"] is not None


def test_skin_consistency_cell_matches_direct_call(full_workdir, tmp_path):
    """Table 3 cell for one clip equals skin_consistency on weights predicted with the same inputs."""
    cfg = EV.make_config("smoke", **FAST)
    corpus = Corpus(full_workdir / "corpus")
    clip = EV.corpus_test_clips(corpus, cfg, 64)[0]
    base = EV.load_pair(full_workdir / "checkpoints/skeleton_base.safetensors",
                        full_workdir / "checkpoints/skinning_base.safetensors", torch.device("cpu"))
    sprig = EV.load_pair(full_workdir / "checkpoints/skeleton_sprig.safetensors",
                         full_workdir / "checkpoints/skinning_sprig.safetensors", torch.device("cpu"))
    res = EV.evaluate_set([clip], {"base": base, "sprig": sprig}, cfg, None, "test")
    joints, parents, _ = EV.anchor_skeleton(EV.predict_skeletons(base, clip, cfg.max_joints), clip)
    teacher = base.predict_weights(clip.verts[0], clip.vnormals[0], clip.points[0], clip.normals[0], joints, parents)
    w = sprig.predict_weights(clip.verts[:3], clip.vnormals[:3], clip.points[:3], clip.normals[:3], joints, parents)
    direct = skin_consistency(w, teacher, k=4, gamma=0.0)
    row = res["clips"][clip.name]["sprig"]
    assert row["skin_l1"] == pytest.approx(direct.l1, rel=1e-5)
    assert row["skin_symkl"] == pytest.approx(direct.symkl, rel=1e-5)
    assert row["skin_entropy"] == pytest.approx(direct.entropy, rel=1e-5)


def test_missing_checkpoints_are_reported(base_workdir, tmp_path):
    out = tmp_path / "reports"
    res = EV.run_stage("smoke", base_workdir, "cpu", out_dir=out, realdata_dir=tmp_path / "none",
                       **{**FAST, "ablations": False})
    assert len(res["missing"]) == 1 and "sprig checkpoints unusable" in res["missing"][0]
    assert "skeleton_sprig.safetensors (missing)" in res["missing"][0]
    assert "sprig" not in res["corpus"]["summary"] and "base" in res["corpus"]["summary"]
    md = (out / "evaluation.md").read_text()
    assert "**MISSING**" in md and "sprig checkpoints unusable" in md
    assert "no real rigs found" in md
    # no base models at all: the ground-truth and control rows only, with the message
    bare = tmp_path / "bare"
    shutil.copytree(base_workdir / "corpus", bare / "corpus")
    res = EV.run_stage("smoke", bare, "cpu", out_dir=out, realdata_dir=tmp_path / "none", **FAST)
    assert len(res["missing"]) == 2 and set(res["corpus"]["summary"]) == {"gt", "kmeans"}
    assert "ablations skipped" in " ".join(res["notes"])
    assert "base checkpoints are missing" in (out / "evaluation.md").read_text()


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown evaluation settings"):
        EV.make_config("smoke", n_clips=3)
    with pytest.raises(ValueError, match="cover the protocol frames"):
        EV.make_config("smoke", max_frames=2)
    with pytest.raises(ValueError, match="unknown preset"):
        EV.make_config("huge")
