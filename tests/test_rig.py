"""The rigging pipeline (backend/rigging/pipeline.py) and its HTML report (backend/rigging/report.py).

The networks here are the real skeleton generator and skinning network at a tiny size with seeded
random (untrained) parameters: the tests check the pipeline's contract (shapes, simplex weights,
rigid transforms, units, determinism, cancellation, the report), not rig quality, which needs the
trained checkpoints.
"""

from __future__ import annotations

import re
import numpy as np
import pytest
import torch

from backend.rigging.fit import reconstruction_error
from backend.metrics import motion_compensated_joint_drift
from backend.models.inference import RiggerModels
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig
from backend.normalize import anchor_normalize
from backend.rigging.report import drawing_mesh, render_report, write_report
from backend.rigging.pipeline import LARGE_FIT_VERTICES, RigCancelled, RigConfig, rig_sequence, select_frames
from backend.rigging.result import RigResult
from backend.sampling import triangle_areas
from backend.sequence import MeshSequence
from backend.skeleton import validate_tree

torch.set_num_threads(1)

TINY_SKEL = SkeletonGeneratorConfig(d_model=32, n_heads=2, n_latents=8, n_enc_layers=1, n_dec_layers=1,
                                    n_freq=4, mlp_ratio=2, max_joints=12)
TINY_SKIN = SkinningNetworkConfig(d_model=32, n_heads=2, n_latents=8, n_shape_layers=1, n_joint_layers=1,
                                  n_point_layers=1, n_freq=4, mlp_ratio=2)
FAST = dict(n_points=128, refine_iters=3, max_joints=12)


@pytest.fixture(scope="module")
def models() -> RiggerModels:
    torch.manual_seed(0)
    return RiggerModels(skeleton=SkeletonGenerator(TINY_SKEL), skinning=SkinningNetwork(TINY_SKIN),
                        device=torch.device("cpu"))


def box(center, size):
    """Closed box: 8 vertices, 12 triangles."""
    c, s = np.asarray(center, float), np.asarray(size, float) / 2
    v = c + s * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    return v, np.asarray(f)


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def multipart_sequence(n_frames: int = 6, scale: float = 40.0) -> MeshSequence:
    """A disconnected 'robot': body, head and two arms as separate boxes, the arms swinging rigidly
    about their shoulders, in arbitrary user units (scale) with an offset."""
    parts = [box([0, 0, 0], [1.0, 1.6, 0.6]), box([0, 1.15, 0], [0.6, 0.6, 0.6]),
             box([0.8, 0.3, 0], [0.5, 1.2, 0.4]), box([-0.8, 0.3, 0], [0.5, 1.2, 0.4])]
    verts, faces, owner, off = [], [], [], 0
    for i, (v, f) in enumerate(parts):
        verts.append(v)
        faces.append(f + off)
        owner += [i] * len(v)
        off += len(v)
    rest = np.concatenate(verts)
    faces = np.concatenate(faces)
    owner = np.asarray(owner)
    shoulders = {2: np.array([0.8, 0.9, 0]), 3: np.array([-0.8, 0.9, 0])}
    frames = []
    for k in range(n_frames):
        x = rest.copy()
        for part, pivot in shoulders.items():
            sel = owner == part
            angle = (0.6 if part == 2 else -0.6) * np.sin(0.5 * k)
            x[sel] = (x[sel] - pivot) @ rotation_z(angle).T + pivot
        x += np.array([0.05 * k, 0, 0])  # walk forward
        frames.append(x)
    verts = np.stack(frames) * scale + np.array([100.0, -20.0, 5.0])
    return MeshSequence(verts.astype(np.float32), faces, fps=24.0, name="robot")


def check_contract(result: RigResult, seq: MeshSequence, max_influences: int = 4) -> None:
    K, V = seq.n_frames, seq.n_verts
    J = len(result.joints)
    validate_tree(result.parents, n_joints=J)
    assert len(result.joint_names) == J and len(set(result.joint_names)) == J
    assert result.weights.shape == (V, J) and result.weights.dtype == np.float32
    assert (result.weights >= 0).all() and np.allclose(result.weights.sum(1), 1, atol=1e-5)
    assert ((result.weights > 0).sum(1) <= max_influences).all()
    assert result.bone_transforms.shape == (K, J, 4, 4)
    R = result.bone_transforms[..., :3, :3].astype(np.float64)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-4)  # rigid, in user units
    assert result.recon_error.shape == (K, V) and result.skin_instability.shape == (K, V)
    assert (result.skin_instability >= 0).all() and (result.skin_instability <= 1).all()
    assert (result.skin_instability[0] == 0).all()
    # the rig's rest shape: the anchor frame, moved where the fit solved it (RigConfig.solve_rest), by at most
    # what the stats say
    diag = np.linalg.norm(np.ptp(seq.verts[0].astype(np.float64), 0))
    assert result.anchor_verts.shape == seq.verts[0].shape and result.anchor_verts.dtype == np.float32
    moved = np.linalg.norm(result.anchor_verts.astype(np.float64) - seq.verts[0], axis=1).max() / diag
    assert moved <= result.stats["rest_moved_max"] + 1e-5
    # the reported error is the error of the returned rig, measured in user units
    err = reconstruction_error(result.anchor_verts, seq.verts, result.weights, result.bone_transforms) / diag
    assert np.allclose(err, result.recon_error, atol=2e-5)


def test_multipart_mesh_rigs(models, tmp_path):
    seq = multipart_sequence()
    steps: list[tuple[str, float]] = []
    result = rig_sequence(seq, RigConfig(**FAST), progress=lambda s, f: steps.append((s, f)), models=models)
    check_contract(result, seq)
    # joints come back in the user's units: inside (or near) the user's bounding box
    lo, hi = seq.verts[0].min(0), seq.verts[0].max(0)
    size = (hi - lo).max()
    assert ((result.joints > lo - size) & (result.joints < hi + size)).all()
    # progress: known stages, overall fraction never goes back, ends at 1
    fractions = [f for _, f in steps]
    assert {s for s, _ in steps} >= {"normalize", "models", "sample", "skeleton", "skinning", "fit", "heatmap", "report",
                                     "done"}
    assert all(b >= a - 1e-12 for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0
    st = result.stats
    assert st["frames"] == 6 and st["joints"] == len(result.joints)
    hist = st["fit_rmse_history"]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:]))  # refinement never raised the error
    assert st["stability"]["frames"][:3] == [0, 1, 2] and st["pjdd"] is not None
    # the result survives the .npz round trip used by the server
    result.save(tmp_path / "rig.npz")
    back = RigResult.load(tmp_path / "rig.npz")
    assert np.array_equal(back.bone_transforms, result.bone_transforms) and back.stats == result.stats


class _RecordingModels:
    """The real models, keeping every skeleton they generate (in call order) for a direct metric call."""

    def __init__(self, models: RiggerModels):
        self.models, self.skeletons = models, []
        self.device = models.device

    def generate_skeletons(self, *args, **kwargs):
        out = self.models.generate_skeletons(*args, **kwargs)
        self.skeletons.extend(out)
        return out

    def predict_weights(self, *args, **kwargs):
        return self.models.predict_weights(*args, **kwargs)


def test_joint_drift_in_stats_equals_the_metric(models):
    seq = multipart_sequence()
    recording = _RecordingModels(models)
    result = rig_sequence(seq, RigConfig(**FAST, skeleton="network"), models=recording)
    st = result.stats
    frames = st["stability"]["frames"]
    assert len(recording.skeletons) == len(frames)
    drift = motion_compensated_joint_drift(anchor_normalize(seq.verts)[0][frames],
                                           [j for j, _ in recording.skeletons])
    assert len(st["joint_drift"]) == len(result.joints) == len(result.joint_names)
    np.testing.assert_allclose(st["joint_drift"], drift.per_joint, rtol=1e-9, atol=1e-12)
    assert st["stability"]["mcjd"][0] is None  # the anchor frame has no drift
    np.testing.assert_allclose(st["stability"]["mcjd"][1:], drift.per_frame[1:], rtol=1e-9, atol=1e-12)
    assert st["mcjd"] == pytest.approx(drift.mean) and all(v >= 0 for v in st["joint_drift"])
    html = render_report(result)
    assert "Joint drift (MCJD per joint)" in html and "joint drift min / max" in html
    assert "skeleton network, run on each frame: topology flicker" in html  # the network's, not the rig's
    assert "skin led by a far bone" in html


class _ThreadRecordingModels(_RecordingModels):
    """The real models, noting torch's thread count at every network call."""

    def __init__(self, models: RiggerModels):
        super().__init__(models)
        self.threads: list[int] = []

    def generate_skeletons(self, *args, **kwargs):
        self.threads.append(torch.get_num_threads())
        return super().generate_skeletons(*args, **kwargs)

    def predict_weights(self, *args, **kwargs):
        self.threads.append(torch.get_num_threads())
        return super().predict_weights(*args, **kwargs)


@pytest.mark.parametrize("cpu_threads, expected", [(1, 1), (2, 2), (0, 3)])
def test_networks_run_with_cpu_threads_and_the_setting_is_restored(models, cpu_threads, expected):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        recording = _ThreadRecordingModels(models)
        rig_sequence(multipart_sequence(), RigConfig(**FAST, cpu_threads=cpu_threads), models=recording)
        assert recording.threads and set(recording.threads) == {expected}  # 0: the caller's setting is kept
        assert torch.get_num_threads() == 3  # put back after the rig
        with pytest.raises(ValueError, match="cpu_threads"):
            rig_sequence(multipart_sequence(), RigConfig(**FAST, cpu_threads=-1), models=recording)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_single_frame_sequence(models):
    seq = multipart_sequence(n_frames=1)
    result = rig_sequence(seq, RigConfig(**FAST), models=models)
    check_contract(result, seq)
    assert result.n_frames == 1
    assert result.stats["pjdd"] is None and result.stats["stability"] is None
    assert result.stats["joint_drift"] is None
    assert result.stats["skin_instability_mean"] is None
    assert result.recon_error.max() < 1e-5  # the anchor reproduces itself


def test_same_seed_same_rig(models):
    seq = multipart_sequence(n_frames=4)
    cfg = RigConfig(**FAST, seed=7)
    a = rig_sequence(seq, cfg, models=models)
    b = rig_sequence(seq, cfg, models=models)
    for name in ("joints", "parents", "weights", "bone_transforms", "recon_error", "skin_instability"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_z_up_input_gets_the_y_up_rig_rotated(models):
    """Blender sends Z-up frames: the models must see the same Y-up shape, the rig comes back Z-up."""
    from backend.normalize import Z_UP_TO_Y_UP

    seq = multipart_sequence(n_frames=4)
    z_seq = MeshSequence(seq.verts @ Z_UP_TO_Y_UP.astype(np.float32), seq.faces, fps=seq.fps, name="z")
    a = rig_sequence(seq, RigConfig(**FAST), models=models)
    b = rig_sequence(z_seq, RigConfig(**FAST, up_axis="z"), models=models)
    assert np.array_equal(a.parents, b.parents)
    diag = float(np.linalg.norm(np.ptp(seq.verts[0], axis=0)))
    assert np.allclose(b.joints, a.joints @ Z_UP_TO_Y_UP, atol=1e-5 * diag)
    assert np.allclose(b.weights, a.weights, atol=1e-4)
    assert np.allclose(b.recon_error, a.recon_error, atol=1e-5)
    assert np.allclose(b.anchor_verts, a.anchor_verts @ Z_UP_TO_Y_UP, atol=1e-5 * diag)  # the rest shape too
    rest = np.c_[b.anchor_verts, np.ones(z_seq.n_verts)]
    posed = np.einsum("vj,jab,vb->va", b.weights, b.bone_transforms[2], rest)[:, :3]
    assert np.allclose(np.linalg.norm(posed - z_seq.verts[2], axis=1) / diag, b.recon_error[2], atol=1e-4)
    with pytest.raises(ValueError, match="up_axis"):
        rig_sequence(seq, RigConfig(up_axis="x"), models=models)


@pytest.mark.parametrize("stage", ["sample", "skeleton", "skinning", "fit", "heatmap", "report"])
def test_cancel_raises_rig_cancelled(models, stage):
    seq = multipart_sequence(n_frames=4)
    seen: list[str] = []
    with pytest.raises(RigCancelled):
        rig_sequence(seq, RigConfig(**FAST), progress=lambda s, f: seen.append(s),
                     should_cancel=lambda: bool(seen) and seen[-1] == stage, models=models)
    assert seen[-1] == stage


def test_bad_options_are_named(models):
    seq = multipart_sequence(n_frames=2)
    with pytest.raises(ValueError, match="models"):
        rig_sequence(seq, RigConfig(models="best"), models=models)
    with pytest.raises(ValueError, match="max_influences"):
        rig_sequence(seq, RigConfig(max_influences=0), models=models)
    with pytest.raises(ValueError, match="stop_after_repeats"):
        rig_sequence(seq, RigConfig(stop_after_repeats=-2), models=models)
    with pytest.raises(ValueError, match="motion_candidates"):
        rig_sequence(seq, RigConfig(motion_candidates=-1), models=models)


def test_a_fit_on_many_vertices_gets_a_share_of_the_alternations_and_candidates():
    cfg = RigConfig()
    small = cfg.motion_fit_config(LARGE_FIT_VERTICES, refine_joints=True)
    large = cfg.motion_fit_config(LARGE_FIT_VERTICES + 1, refine_joints=False)
    assert (small.refine_iters, small.motion_candidates, small.refine_joints) == (80, 12, True)
    assert (large.refine_iters, large.motion_candidates, large.refine_joints) == (20, 6, False)
    assert small.articulated and small.max_influences == cfg.max_influences
    assert RigConfig(refine=False).motion_fit_config(100, refine_joints=True).refine_iters == 0


def test_frame_selection():
    assert select_frames(48, 5, (0, 1, 2)).tolist() == [0, 1, 2, 24, 47]
    assert select_frames(48, 0).tolist() == list(range(48))
    assert select_frames(2, 5, (0, 1, 2)).tolist() == [0, 1]
    assert select_frames(10, 3).tolist() == [0, 4, 9]


def test_posed_skin_joints_and_subsampled_heatmap(models):
    seq = multipart_sequence(n_frames=7)
    result = rig_sequence(seq, RigConfig(**FAST, skin_frames=3, skin_joints="posed"), models=models)
    check_contract(result, seq)
    assert result.stats["skin_frames"] == [0, 3, 6]
    inst = result.skin_instability
    assert np.allclose(inst[1], inst[3] / 3, atol=1e-6) and np.allclose(inst[5], (inst[3] + 2 * inst[6]) / 3, atol=1e-6)


def test_heatmap_stage_skipped_when_not_asked(models):
    seq = multipart_sequence(n_frames=5)
    calls = []
    predict = models.predict_weights

    def counting(*args, **kwargs):
        calls.append(1)
        return predict(*args, **kwargs)

    models.predict_weights = counting
    try:
        result = rig_sequence(seq, RigConfig(**FAST, skin_frames=0, heatmap=False), models=models)
    finally:
        models.predict_weights = predict
    check_contract(result, seq)
    assert len(calls) == 1  # the anchor's weights only: no prediction on later frames
    assert result.stats["skin_frames"] == [] and not result.skin_instability.any()
    assert result.stats["skin_instability_mean"] is None  # not measured, not zero


def test_report_is_self_contained_html(models, tmp_path):
    seq = multipart_sequence()
    seq.extras["joints"] = np.repeat(np.array([[[100.0, -20.0, 5.0], [100.0, 30.0, 5.0]]]), seq.n_frames, 0)
    seq.extras["parents"] = np.array([-1, 0])
    result = rig_sequence(seq, RigConfig(**FAST), models=models)
    assert result.stats["gt"]["clip"]["pjdd"] == pytest.approx(0.0, abs=1e-9)  # a still GT skeleton
    path = write_report(result, tmp_path / "report.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "robot" in text
    assert f"start: {result.stats['fit_start']}, " in text  # the motion fit's row
    assert f"at most {100 * result.stats['rest_moved_max']:.2f}% of the box diagonal off the first frame" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # curves, skeleton stability, heatmaps, skeleton (the per-joint drift plot is of the generator's own anchor
    # skeleton: test_joint_drift_in_stats_equals_the_metric)
    assert len(images) == 4
    assert "http" not in text.replace("http-equiv", "")  # nothing external
    # a large-mesh path: drawing with simplification keeps working
    assert "<img" in render_report(result, max_faces=20)


def test_articulated_rig_and_a_given_skeleton(models):
    """The default rig is articulated (its bones stay attached: stats and the transforms agree); a skeleton
    given to ``rig_sequence`` (here as a function of the sequence) replaces the generator's, names, tails and
    start weights included; ``articulated=False`` gives the free fit, whose bones separate."""
    from backend.metrics import joint_separation
    from backend.rigging.rig_skeleton import RigSkeleton

    seq = multipart_sequence()
    diag = float(np.linalg.norm(np.ptp(seq.verts[0].astype(np.float64), 0)))
    result = rig_sequence(seq, RigConfig(**FAST), models=models)
    assert result.stats["articulated"] and result.stats["skeleton_source"] == "motion"
    assert result.stats["skeleton_from_motion"]["n_parts"] >= 1
    sep = joint_separation(result.bone_transforms, result.joints, result.parents)
    assert sep.max() <= 1e-5 * diag and result.stats["joint_separation_max"] <= 1e-9
    assert result.stats["seam_gap_max"] == 0.0 and result.tails.shape == result.joints.shape

    # a hand-made skeleton in user units: body root, head, two shoulders
    user = lambda p: np.asarray(p, dtype=np.float64) * 40.0 + np.array([100.0, -20.0, 5.0])  # noqa: E731
    joints = user([[0, 0, 0], [0, 0.85, 0], [0.8, 0.9, 0], [-0.8, 0.9, 0]])
    owner = np.repeat(np.arange(4), 8)  # multipart_sequence's boxes: body, head, right arm, left arm
    init = np.eye(4)[owner]
    given = RigSkeleton(joints=joints, parents=np.array([-1, 0, 0, 0]), names=["body", "head", "arm_r", "arm_l"],
                        tails=joints + 1.0, init_weights=init)
    calls = []
    rigged = rig_sequence(seq, RigConfig(**FAST), models=models,
                          skeleton=lambda s: calls.append(s.name) or given)
    check_contract(rigged, seq)
    assert calls == ["robot"] and rigged.stats["skeleton_source"] == "given"
    assert rigged.joint_names == given.names and rigged.stats["joint_drift"] is None
    np.testing.assert_allclose(rigged.joints, joints, rtol=1e-5)
    np.testing.assert_allclose(rigged.tails, joints + 1.0, rtol=1e-5)
    # rigid parts rotating about the given shoulders: reproduced exactly, bones attached
    assert rigged.stats["recon_max"] < 1e-4
    assert joint_separation(rigged.bone_transforms, rigged.joints, rigged.parents).max() <= 1e-5 * diag
    free = rig_sequence(seq, RigConfig(**FAST, articulated=False), models=models, skeleton=given)
    assert not free.stats["articulated"] and free.stats["recon_max"] < 1e-4
    with pytest.raises(ValueError, match="init_weights must have shape"):
        rig_sequence(seq, RigConfig(**FAST), models=models,
                     skeleton=RigSkeleton(joints=joints, parents=np.array([-1, 0, 0, 0]), init_weights=init[:5]))


def test_waiting_for_models_another_thread_loads_keeps_reporting(checkpoints):
    """A server's preload holds the model lock while it loads: a rig arriving meanwhile reports progress every
    0.2 s (rising, below what loading itself reports) and gets the models once the lock is free."""
    import threading
    import time

    from backend.rigging import pipeline

    config = RigConfig(checkpoint_dir=str(checkpoints), device="cpu", models="auto")
    seen: list[float] = []
    out: list = []
    pipeline._MODEL_LOCK.acquire()  # as a preload in progress
    try:
        waiter = threading.Thread(target=lambda: out.append(pipeline.get_models(config, progress=seen.append)))
        waiter.start()
        time.sleep(0.9)
        assert len(seen) >= 3 and seen == sorted(seen) and max(seen) <= 0.4
    finally:
        pipeline._MODEL_LOCK.release()
    waiter.join(timeout=60)
    assert len(out) == 1 and isinstance(out[0], RiggerModels)


def test_skin_reach_names_bones_without_skin_and_counts_far_led_vertices():
    """A chain of six bones along x (joints at 0..5); both vertices led by the first bone, one beside it and one
    beside the last bone, five bones nearer to it than its leader."""
    from backend.rigging.pipeline import skin_reach

    joints = np.array([[float(x), 0, 0] for x in range(6)])
    tails = joints + [1.0, 0, 0]
    parents = np.arange(-1, 5)
    anchor = np.array([[0.5, 0.1, 0], [5.5, 0.1, 0]])
    weights = np.zeros((2, 6))
    weights[:, 0] = 0.6
    weights[:, 1] = 0.4
    reach = skin_reach(anchor, weights, joints, tails, parents, list("abcdef"), diag=6.0)
    assert reach["bones_without_skin"] == ["b", "c", "d", "e", "f"]
    assert reach["far_led_share"] == 0.5
    weights[1] = np.eye(6)[5]  # led by the bone it lies on
    assert reach["bones_far_from_skin"] == ["c", "d"]  # 1.5 from either vertex: 0.25 of the diagonal (6)
    assert skin_reach(anchor, weights, joints, None, parents, list("abcdef"), diag=6.0) == {
        "bones_without_skin": ["b", "c", "d", "e"], "bones_far_from_skin": ["c", "d"], "far_led_share": 0.0}


def test_a_large_mesh_is_drawn_whole_and_light():
    """The report draws a large mesh through a lighter one: at most ``max_faces`` faces over vertices of the
    mesh, covering its whole surface (a UV sphere whose seam vertices are split, as a glTF export holds them:
    nothing missing, no crack along the seam)."""
    n_lat, n_lon = 60, 120
    theta = np.linspace(0.05, np.pi - 0.05, n_lat)
    phi = np.linspace(0.0, 2.0 * np.pi, n_lon + 1)  # the last column repeats the first: a split seam
    t, p = np.meshgrid(theta, phi, indexing="ij")
    verts = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    idx = np.arange(n_lat * (n_lon + 1)).reshape(n_lat, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    drawn_faces, vertex_map = drawing_mesh(verts, faces, max_faces=1500)
    assert len(drawn_faces) <= 1500 < len(faces)
    assert drawn_faces.min() >= 0 and drawn_faces.max() < len(vertex_map) and vertex_map.max() < len(verts)
    drawn = verts[vertex_map]
    assert triangle_areas(drawn, drawn_faces).sum() > 0.9 * triangle_areas(verts, faces).sum()
    # every part of the surface is near a drawn vertex (no region dropped)
    from scipy.spatial import cKDTree

    assert cKDTree(drawn).query(verts)[0].max() < 0.15
    small_faces, small_map = drawing_mesh(verts, faces, max_faces=len(faces))  # small enough: drawn as it is
    assert np.array_equal(small_faces, faces) and np.array_equal(small_map, np.arange(len(verts)))


def test_playback_quality_rates_the_error_against_the_movement():
    """``recon_vs_motion``: the mean error as a share of the mean distance the vertices move from the anchor. A
    rig that plays nothing back (identity transforms) leaves out all of the movement; a still clip has none."""
    from backend.rigging.pipeline import playback_quality
    from backend.sequence import colocated_representatives

    anchor = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    shift = np.array([0.0, 0.0, 0.1])
    verts = np.stack([anchor, anchor + shift, anchor + 2 * shift])  # moves 0, 0.1, 0.2: mean 0.1
    weights = np.ones((3, 1))
    still = np.tile(np.eye(4), (3, 1, 1, 1))  # [K, 1, 4, 4]
    for chunked in (False, True):
        _, stats = playback_quality(anchor, verts, weights, still, np.zeros((1, 3)), np.array([-1]),
                                    colocated_representatives(verts), 1.0, chunked=chunked)
        assert stats["motion_mean"] == pytest.approx(0.1) and stats["recon_vs_motion"] == pytest.approx(1.0)
    _, stats = playback_quality(anchor, np.stack([anchor] * 3), weights, still, np.zeros((1, 3)), np.array([-1]),
                                np.arange(3), 1.0, chunked=False)
    assert stats["motion_mean"] == 0.0 and stats["recon_vs_motion"] is None
