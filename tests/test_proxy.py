"""Rigging through a proxy (backend/rigging/proxy.py): the proxy itself, the full-mesh weight pass against a
known rig, seams, progress and cancellation, and the pipeline choosing the proxy above its threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.lbs import linear_blend_skinning
from backend.models.inference import RiggerModels
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig
from backend.rigging.fit import reconstruction_error
from backend.rigging.pipeline import RigCancelled, RigConfig, rig_sequence
from backend.rigging.proxy import build_proxy, chunked_reconstruction_error, fit_frames, full_mesh_weights, use_proxy
from backend.sequence import MeshSequence, colocated_representatives

TINY_SKEL = SkeletonGeneratorConfig(d_model=32, n_heads=2, n_latents=8, n_enc_layers=1, n_dec_layers=1,
                                    n_freq=4, mlp_ratio=2, max_joints=12)
TINY_SKIN = SkinningNetworkConfig(d_model=32, n_heads=2, n_latents=8, n_shape_layers=1, n_joint_layers=1,
                                  n_point_layers=1, n_freq=4, mlp_ratio=2)


def tube(n_rings: int = 40, n_around: int = 12, seam: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A closed-around tube along x in [0, 3] (radius 0.25): ``verts [V, 3]``, ``faces [F, 3]``. With ``seam``
    every ring has one extra vertex co-located with its first, used by the ring's last wedge (a UV seam)."""
    width = n_around + 1 if seam else n_around
    x = np.linspace(0.0, 3.0, n_rings)
    angle = 2 * np.pi * np.arange(width) / n_around
    verts = np.stack(np.broadcast_arrays(x[:, None], 0.25 * np.cos(angle)[None], 0.25 * np.sin(angle)[None]), -1)
    faces = []
    for r in range(n_rings - 1):
        for a in range(n_around):
            b = a + 1 if seam else (a + 1) % n_around
            p, q, s, t = r * width + a, r * width + b, (r + 1) * width + a, (r + 1) * width + b
            faces += [[p, q, t], [p, t, s]]
    return verts.reshape(-1, 3), np.asarray(faces)


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def bending_rig(rest: np.ndarray, n_frames: int = 8):
    """A 3-bone chain along the tube (joints at x = 0, 1, 2), smooth two-bone blends around the inner joints:
    ``(weights [V, 3], transforms [K, 3, 4, 4], joints [3, 3], frames [K, V, 3])``; frame 0 is the rest pose."""
    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    x = rest[:, 0]
    t1 = np.clip((x - 0.8) / 0.4, 0, 1)
    t2 = np.clip((x - 1.8) / 0.4, 0, 1)
    weights = np.stack([1 - t1, t1 * (1 - t2), t2], axis=1)
    K = n_frames
    T = np.tile(np.eye(4), (K, 3, 1, 1))
    for k in range(K):
        root = np.eye(4)
        root[:3, 3] = [0.05 * k, 0.02 * np.sin(k), 0]
        local = []
        for j, angle in ((1, 0.5 * np.sin(0.7 * k)), (2, -0.6 * np.sin(0.4 * k))):
            m = np.eye(4)
            m[:3, :3] = rotation_z(angle)
            m[:3, 3] = joints[j] - m[:3, :3] @ joints[j]
            local.append(m)
        T[k, 0] = root
        T[k, 1] = root @ local[0]
        T[k, 2] = T[k, 1] @ local[1]
    frames = linear_blend_skinning(rest, weights, T)
    return weights, T, joints, frames



def test_proxy_faces_keep_the_mesh_orientation():
    """The proxy of a closed oriented surface is a coarse oriented surface: winding number ~1 inside, ~0 outside
    (the joints' inside tests run on it), and the same orientation turned around reads ~-1."""
    from backend.metrics import winding_numbers

    verts, faces = tube(n_rings=60, n_around=16)
    caps = []  # close the tube's ends with a fan (outward-oriented like the side)
    for ring, sign in ((0, -1), (59, 1)):
        centre = len(verts) + len(caps)
        caps.append([3.0 * ring / 59, 0.0, 0.0])
        for a in range(16):
            p, q = ring * 16 + a, ring * 16 + (a + 1) % 16
            faces = np.vstack([faces, [[centre, q, p]] if sign < 0 else [[centre, p, q]]])
    verts = np.vstack([verts, caps])
    probe = np.array([[1.5, 0.0, 0.0], [0.7, 0.1, 0.0], [1.5, 0.6, 0.0], [4.0, 0.0, 0.0]])
    full = winding_numbers(probe, verts, faces)
    assert full[0] > 0.9 and full[1] > 0.9 and abs(full[2]) < 0.1 and abs(full[3]) < 0.1  # outward-oriented
    proxy = build_proxy(verts, faces, colocated_representatives(verts[None]), 120)
    coarse = winding_numbers(probe, verts[proxy.vertices], proxy.faces)
    assert coarse[0] > 0.9 and coarse[1] > 0.9 and abs(coarse[2]) < 0.1 and abs(coarse[3]) < 0.1, coarse
    flipped = winding_numbers(probe[:1], verts[proxy.vertices], proxy.faces[:, ::-1])
    assert flipped[0] < -0.9

def test_proxy_partitions_the_mesh():
    rest, faces = tube(seam=True)
    frames = bending_rig(rest)[3]
    rep = colocated_representatives(frames)
    assert (rep != np.arange(len(rep))).sum() == 40  # one seam vertex per ring
    proxy = build_proxy(rest, faces, rep, n_target=60)
    assert 45 <= proxy.size <= 75
    assert (rep[proxy.vertices] == proxy.vertices).all()  # proxy vertices are representatives
    assert proxy.cell.shape == (len(rest),) and proxy.cell.min() == 0 and proxy.cell.max() == proxy.size - 1
    assert np.array_equal(proxy.cell, proxy.cell[rep])  # a seam's vertices share their cell
    assert proxy.faces.max() < proxy.size and len(proxy.faces) > proxy.size
    # every proxy vertex lies in its own cell
    assert np.array_equal(proxy.cell[proxy.vertices], np.arange(proxy.size))
    # a mesh smaller than the target is its own proxy
    small = build_proxy(rest, faces, rep, n_target=10_000)
    assert small.size == (rep == np.arange(len(rep))).sum()


def test_proxy_vertices_follow_the_mesh_density_and_every_piece_has_one():
    """The error is a mean over the mesh's vertices, so the proxy spreads its vertices like the mesh's: a tube
    whose second half has four times the rings holds about four fifths of the proxy there (an area-uniform
    sampling held half, and the rig through it missed that share of the metric), the seeds stay apart along the
    tube, and a separate piece smaller than the sampling step still gets its own proxy vertex."""
    x = np.concatenate([np.linspace(0.0, 1.5, 16, endpoint=False), np.linspace(1.5, 3.0, 64)])
    n_around = 12
    angle = 2 * np.pi * np.arange(n_around) / n_around
    tube_verts = np.stack(np.broadcast_arrays(x[:, None], 0.25 * np.cos(angle)[None], 0.25 * np.sin(angle)[None]),
                          -1).reshape(-1, 3)
    _, tube_faces = tube(n_rings=len(x), n_around=n_around)
    speck = np.array([[5.0, 0.0, 0.0], [5.01, 0.0, 0.0], [5.0, 0.01, 0.0]])  # a separate 3-vertex triangle
    verts = np.vstack([tube_verts, speck])
    faces = np.vstack([tube_faces, [[len(tube_verts), len(tube_verts) + 1, len(tube_verts) + 2]]])
    proxy = build_proxy(verts, faces, colocated_representatives(verts[None]), 100)
    on_tube = proxy.vertices[proxy.vertices < len(tube_verts)]
    dense_share = float(np.mean(verts[on_tube, 0] >= 1.5))
    assert abs(dense_share - 0.8) < 0.05, dense_share
    assert (proxy.vertices >= len(tube_verts)).sum() == 1  # the speck
    assert abs(proxy.size - 100) <= 2
    # spread: ~80 seeds on the dense half's 64 rings leave no gap of more than three rings (measured: two)
    rings = np.unique(np.round(verts[on_tube, 0], 6))
    assert np.diff(rings[rings >= 1.5]).max() <= 3.01 * (1.5 / 63), np.diff(rings)


def test_full_mesh_weights_reproduce_a_known_rig():
    rest, faces = tube()
    weights, T, _, frames = bending_rig(rest)
    proxy = build_proxy(rest, faces, colocated_representatives(frames), n_target=40)
    assert proxy.size < len(rest) // 5
    got, solved_rest = full_mesh_weights(frames.astype(np.float32), proxy, weights[proxy.vertices], T,
                                         fit_frames(len(T), 32), chunk=100)
    assert solved_rest is None  # no rest solve asked for: the anchor is the rest
    assert got.dtype == np.float32 and got.shape == weights.shape
    assert np.allclose(got.sum(1), 1, atol=1e-5) and (got >= 0).all() and ((got > 0).sum(1) <= 4).all()
    diag = np.linalg.norm(np.ptp(rest, 0))
    err = reconstruction_error(rest, frames, got, T) / diag
    assert err.max() < 1e-4
    # the rig's own weights, except where two bones move a vertex alike (on a rotation axis)
    assert np.abs(got - weights).mean() < 5e-3
    # the error pass in vertex chunks equals the one-shot error
    chunked = chunked_reconstruction_error(frames[0], frames.astype(np.float32), got, T, chunk=50)
    assert np.allclose(chunked / diag, err, atol=1e-6)


def test_full_mesh_weights_keep_seams_closed():
    rest, faces = tube(seam=True)
    weights, T, _, frames = bending_rig(rest)
    rep = colocated_representatives(frames)
    proxy = build_proxy(rest, faces, rep, n_target=40)
    # a noisy proxy rig: the solve is not exact, and the seam rows must still be identical
    rng = np.random.default_rng(0)
    noisy = weights[proxy.vertices] + 0.2 * rng.random((proxy.size, 3))
    noisy /= noisy.sum(1, keepdims=True)
    got, solved_rest = full_mesh_weights(frames.astype(np.float32), proxy, noisy, T, np.arange(len(T)), chunk=64,
                                         rest_rounds=1)
    split = np.flatnonzero(rep != np.arange(len(rep)))
    assert len(split) and np.array_equal(got[split], got[rep[split]])
    assert np.array_equal(solved_rest[split], solved_rest[rep[split]])  # and their rest positions too


def test_weight_pass_reports_progress_and_stops_when_asked():
    rest, faces = tube()
    weights, T, _, frames = bending_rig(rest)
    proxy = build_proxy(rest, faces, colocated_representatives(frames), n_target=40)
    seen: list[float] = []
    full_mesh_weights(frames, proxy, weights[proxy.vertices], T, np.arange(len(T)), chunk=60, progress=seen.append)
    assert len(seen) == int(np.ceil(len(rest) / 60)) and seen == sorted(seen) and seen[-1] == 1.0

    class Stop(Exception):
        pass

    calls: list[float] = []

    def stop_after_two(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        full_mesh_weights(frames, proxy, weights[proxy.vertices], T, np.arange(len(T)), chunk=60,
                          progress=stop_after_two)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def models() -> RiggerModels:
    torch.manual_seed(0)
    return RiggerModels(skeleton=SkeletonGenerator(TINY_SKEL), skinning=SkinningNetwork(TINY_SKIN),
                        device=torch.device("cpu"))


def test_pipeline_uses_the_proxy_above_its_threshold(models):
    rest, faces = tube(seam=True)
    frames = bending_rig(rest)[3] * 10.0
    seq = MeshSequence(frames.astype(np.float32), faces, name="tube")
    fast = dict(n_points=128, refine_iters=3, max_joints=12, proxy_vertices=64)
    assert use_proxy("auto", seq.n_verts, seq.n_verts - 1) and not use_proxy("auto", seq.n_verts, seq.n_verts)
    assert use_proxy("on", 10, 10**6) and not use_proxy("off", 10**6, 0)
    below = rig_sequence(seq, RigConfig(**fast, proxy_threshold=seq.n_verts), models=models)
    assert below.stats["proxy_vertices"] is None
    steps: list[tuple[str, float]] = []
    above = rig_sequence(seq, RigConfig(**fast, proxy_threshold=seq.n_verts - 1),
                         progress=lambda s, f: steps.append((s, f)), models=models)
    assert 50 <= above.stats["proxy_vertices"] <= 80
    assert "weights" in [s for s, _ in steps]
    w = above.weights
    assert w.shape == (seq.n_verts, len(above.joints)) and np.allclose(w.sum(1), 1, atol=1e-5)
    rep = colocated_representatives(seq.verts)
    assert np.array_equal(w, w[rep]) and above.stats["seam_gap_max"] < 1e-6
    assert above.recon_error.shape == (seq.n_frames, seq.n_verts)
    assert above.skin_instability.shape == (seq.n_frames, seq.n_verts)
    # the reported error is the full mesh's
    diag = np.linalg.norm(np.ptp(seq.verts[0].astype(np.float64), 0))
    err = reconstruction_error(above.anchor_verts, seq.verts, w, above.bone_transforms) / diag
    assert np.allclose(err, above.recon_error, atol=2e-5)
    assert above.stats["recon_mean"] < 0.01


def test_pipeline_cancels_inside_the_weight_pass(models):
    rest, faces = tube()
    frames = bending_rig(rest)[3]
    seq = MeshSequence(frames.astype(np.float32), faces, name="tube")
    stages: list[str] = []
    cfg = RigConfig(n_points=128, refine_iters=2, max_joints=12, proxy="on", proxy_vertices=64)
    with pytest.raises(RigCancelled, match="weights"):
        rig_sequence(seq, cfg, progress=lambda s, f: stages.append(s), should_cancel=lambda: "weights" in stages,
                     models=models)
    assert "heatmap" not in stages
