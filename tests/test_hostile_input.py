"""Hostile input files: every loader refuses them with a clear error, before allocating what they declare.

Each test builds a small file that used to cost gigabytes, hang, escape the glTF folder, give a raw
traceback or a silently wrong result, and checks the error (type and message). The last test runs a
seeded slice of the fuzz suite (``bench/fuzz.py``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from safetensors import safe_open

from backend.app.evaluate import EvalInputError, load_eval_input
from backend.io import common, load_sequence, save_anime, save_morph_gltf, save_npz, save_rigged_gltf
from backend.models.checkpoint import CheckpointError, load_model, save_model
from backend.models.inference import RiggerModels
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig
from backend.rigging.pipeline import RigConfig
from backend.sequence import MeshSequence, SequenceError
from bench.fuzz import _add_accessor, _join_glb, _npy_bytes, _resign, _split_glb, base_sequence

TINY_SKEL = SkeletonGeneratorConfig(d_model=32, n_heads=2, n_latents=8, n_enc_layers=1, n_dec_layers=1, max_joints=8)
TINY_SKIN = SkinningNetworkConfig(d_model=32, n_heads=2, n_latents=8, n_shape_layers=1, n_joint_layers=1,
                                  n_point_layers=1)


def _seq(k: int = 4) -> MeshSequence:
    import random

    return base_sequence(random.Random(0), k)


def _glb_parts(tmp_path, rigged: bool = False) -> tuple[dict, bytearray]:
    seq = _seq()
    path = tmp_path / "base.glb"
    if rigged:
        anchor = seq.verts[0]
        w1 = np.clip(anchor[:, 0], 0, 1)
        T = np.broadcast_to(np.eye(4), (seq.n_frames, 2, 4, 4)).copy()
        save_rigged_gltf(path, anchor, seq.faces, np.array([[0, 0.5, 0], [1, 0.5, 0]]), np.array([-1, 0]), None,
                         np.stack([1 - w1, w1], 1), T)
    else:
        save_morph_gltf(seq, path)
    return _split_glb(path.read_bytes())


# ----------------------------------------------------------------------------- sizes declared by the file

def test_glb_position_accessor_without_buffer_view_and_a_huge_count(tmp_path):
    doc, blob = _glb_parts(tmp_path)
    pos = doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
    del doc["accessors"][pos]["bufferView"]
    doc["accessors"][pos]["count"] = 10**12  # 12 TB of zeros: a MemoryError traceback before the check
    (tmp_path / "bomb.glb").write_bytes(_join_glb(doc, blob))
    with pytest.raises(SequenceError, match=r"mesh 0 .* is above the limit of 10,000,000"):
        load_sequence(tmp_path / "bomb.glb")


@pytest.mark.parametrize("end", [1e6, 1e9])
def test_glb_keyframe_time_bomb(tmp_path, end):
    doc, blob = _glb_parts(tmp_path, rigged=True)
    sampler = doc["animations"][0]["samplers"][0]
    n = doc["accessors"][sampler["input"]]["count"]
    sampler["input"] = _add_accessor(doc, blob, np.linspace(0.0, end, n))
    (tmp_path / "late.glb").write_bytes(_join_glb(doc, blob))
    with pytest.raises(SequenceError, match="the animation spans .* above the limit of 1,000,000 frames"):
        load_sequence(tmp_path / "late.glb")


def test_vertex_frame_ceiling_is_checked_before_reading(tmp_path, monkeypatch):
    save_anime(_seq(6), tmp_path / "clip.anime")
    monkeypatch.setattr(common.LIMITS, "max_vertex_frames", 50)
    with pytest.raises(SequenceError, match=r"frames x vertices \(6 x \d+\) = .* above the limit of 50"):
        load_sequence(tmp_path / "clip.anime")
    monkeypatch.setattr(common.LIMITS, "max_vertex_frames", 10**6)
    assert load_sequence(tmp_path / "clip.anime").n_frames == 6


def test_npz_zip_bomb_is_refused_from_the_member_sizes(tmp_path):
    seq = _seq()
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("verts.npy", "w") as fh:
            fh.write(_npy_bytes((4, 1 << 20, 3)))
            fh.write(bytes(48 << 20))  # 48 MB of zeros deflate to ~50 KB
        b = io.BytesIO()
        np.save(b, seq.faces)
        zf.writestr("faces.npy", b.getvalue())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(SequenceError, match=r"expands \d+x .* above the limit of 200x \(zip bomb\?\)"):
        load_sequence(path)
    with pytest.raises(EvalInputError, match="zip bomb"):
        load_eval_input(path)


@pytest.mark.parametrize("stored", [True, False])
def test_npy_header_declaring_terabytes(tmp_path, stored):
    seq = _seq()
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("verts.npy", _npy_bytes((1000, 10**9, 3), data=seq.verts.tobytes()))
        b = io.BytesIO()
        np.save(b, seq.faces)
        zf.writestr("faces.npy", b.getvalue())
    with pytest.raises(SequenceError, match=r"declares shape \[1000, 1000000000, 3\] .*corrupt or truncated"):
        load_sequence(path)


def test_flipped_deflate_bytes_give_a_sequence_error(tmp_path):
    seq = _seq()
    buf = io.BytesIO()
    np.savez_compressed(buf, verts=seq.verts, faces=seq.faces)
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("verts.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for offset in range(info.compress_size):  # find a flip that breaks the deflate stream itself
        trial = bytearray(data)
        trial[start + offset] ^= 0xFF
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(trial))) as zf:
                zf.read("verts.npy")
        except zlib.error:
            break
        except Exception:
            continue
    else:
        pytest.skip("no single-byte flip produced a zlib error")
    (tmp_path / "flip.npz").write_bytes(bytes(trial))
    with pytest.raises(SequenceError, match="cannot read array 'verts.npy'"):
        load_sequence(tmp_path / "flip.npz")


def test_npz_fps_array_is_refused(tmp_path):
    seq = _seq()
    np.savez(tmp_path / "fps.npz", verts=seq.verts, faces=seq.faces, fps=np.array([1, 2]))
    with pytest.raises(SequenceError, match=r"'fps' must be one number, got an array of shape \[2\]"):
        load_sequence(tmp_path / "fps.npz")


def test_obj_face_index_beyond_int64(tmp_path):
    path = tmp_path / "f.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 99999999999999999999\n")
    with pytest.raises(SequenceError, match=r"f.obj:6: face index out of range"):
        load_sequence(path)


def test_ply_header_counts_the_body_cannot_hold(tmp_path):
    from backend.io.mesh_folder import write_ply

    seq = _seq(1)
    write_ply(tmp_path / "m.ply", seq.verts[0], seq.faces)
    data = (tmp_path / "m.ply").read_bytes()
    i = data.find(b"element vertex ") + len(b"element vertex ")
    data = data[:i] + b"1000000000" + data[data.find(b"\n", i):]
    (tmp_path / "m.ply").write_bytes(data)
    with pytest.raises(SequenceError, match="PLY vertex count = 1,000,000,000 is above the limit"):
        load_sequence(tmp_path / "m.ply")


# ----------------------------------------------------------------------------- external buffers

@pytest.mark.parametrize("uri", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin", "%2E%2E/secret.bin",
                                 "file:///etc/passwd", "http://example.com/a.bin"])
def test_gltf_buffer_uri_outside_the_folder_is_refused(tmp_path, uri):
    doc, blob = _glb_parts(tmp_path)
    inner = tmp_path / "scene"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(bytes(blob))  # a readable file with enough bytes outside the folder
    doc["buffers"][0]["uri"] = uri
    (inner / "s.gltf").write_text(json.dumps(doc))
    with pytest.raises(SequenceError, match="buffer 0: uri .*refused"):
        load_sequence(inner / "s.gltf")


def test_gltf_buffer_link_leaving_the_folder_is_refused(tmp_path):
    doc, blob = _glb_parts(tmp_path)
    inner = tmp_path / "scene"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(bytes(blob))
    os.symlink(tmp_path / "secret.bin", inner / "s.bin")
    doc["buffers"][0]["uri"] = "s.bin"
    (inner / "s.gltf").write_text(json.dumps(doc))
    with pytest.raises(SequenceError, match="outside the glTF file's folder"):
        load_sequence(inner / "s.gltf")


@pytest.mark.parametrize("special", ["fifo", "devzero", "devurandom"])
def test_gltf_buffer_that_is_not_a_regular_file(tmp_path, special):
    doc, blob = _glb_parts(tmp_path)
    target = tmp_path / "s.bin"
    if special == "fifo":
        os.mkfifo(target)  # opening it would block forever
    else:
        os.symlink("/dev/zero" if special == "devzero" else "/dev/urandom", target)
    doc["buffers"][0]["uri"] = "s.bin"
    (tmp_path / "s.gltf").write_text(json.dumps(doc))
    # a link to a device resolves outside the folder; a FIFO inside it is not a regular file
    with pytest.raises(SequenceError, match="not a regular file|outside the glTF file's folder"):
        load_sequence(tmp_path / "s.gltf")


def test_gltf_buffer_next_to_the_file_still_loads(tmp_path):
    doc, blob = _glb_parts(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s.bin").write_bytes(bytes(blob))
    doc["buffers"][0]["uri"] = "sub/s.bin"
    (tmp_path / "s.gltf").write_text(json.dumps(doc))
    assert load_sequence(tmp_path / "s.gltf").n_frames == 4


# ----------------------------------------------------------------------------- silently wrong results

def test_overflowing_coordinates_are_refused(tmp_path):
    seq = _seq()
    with pytest.raises(SequenceError, match=r"vertex coordinates reach 1e\+36 .* overflow single precision"):
        MeshSequence(seq.verts * np.float32(1e36), seq.faces)


def test_glb_writer_refuses_non_finite_accessors(tmp_path):
    seq = _seq()
    anchor = seq.verts[0].astype(np.float64) * 1e36  # finite, but its normals overflow float32
    w1 = np.clip(seq.verts[0][:, 0], 0, 1)
    T = np.broadcast_to(np.eye(4), (2, 2, 4, 4)).copy()
    with pytest.raises(ValueError, match="non-finite value"):
        save_rigged_gltf(tmp_path / "o.glb", anchor, seq.faces, np.array([[0, 0.5, 0], [1, 0.5, 0]]) * 1e36,
                         np.array([-1, 0]), None, np.stack([1 - w1, w1], 1), T)
    assert not (tmp_path / "o.glb").exists()


def test_eval_weights_off_the_simplex_are_refused(tmp_path):
    seq = _seq(3)
    V = seq.n_verts
    arrays = {"verts": seq.verts, "faces": seq.faces}
    for k in range(3):
        arrays[f"joints_{k}"] = np.array([[0, 0.5, 0], [1, 0.5, 0]], np.float32)
        arrays[f"parents_{k}"] = np.array([-1, 0])
        arrays[f"weights_{k}"] = np.zeros((V, 2), np.float32)
    np.savez(tmp_path / "zero.npz", **arrays)
    with pytest.raises(EvalInputError, match="weights_0: .* rows do not sum to 1 .* simplex"):
        load_eval_input(tmp_path / "zero.npz")


# ----------------------------------------------------------------------------- checkpoints and model outputs

def _tampered(tmp_path, model, edit):
    path = tmp_path / "m.safetensors"
    save_model(model, path, stage="test")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    _resign(path, tensors, meta)
    return path


def test_checkpoint_with_nan_weights_and_a_recomputed_digest(tmp_path):
    def poison(tensors, meta):
        name = next(k for k, t in sorted(tensors.items()) if t.is_floating_point())
        tensors[name] = torch.full_like(tensors[name], float("nan"))

    path = _tampered(tmp_path, SkeletonGenerator(TINY_SKEL), poison)
    with pytest.raises(CheckpointError, match="holds .* NaN/Inf values .* corrupt"):
        load_model(path)


def test_checkpoint_config_bomb_is_refused_before_allocating(tmp_path):
    def widen(tensors, meta):
        cfg = json.loads(meta["config"])
        cfg["d_model"] = 65536
        meta["config"] = json.dumps(cfg)

    path = _tampered(tmp_path, SkeletonGenerator(TINY_SKEL), widen)
    with pytest.raises(CheckpointError, match="parameters, above the limit"):
        load_model(path)


def test_checkpoint_config_out_of_range(tmp_path):
    def negative(tensors, meta):
        cfg = json.loads(meta["config"])
        cfg["n_latents"] = -3
        meta["config"] = json.dumps(cfg)

    path = _tampered(tmp_path, SkinningNetwork(TINY_SKIN), negative)
    with pytest.raises(CheckpointError, match=r"config field 'n_latents' = -3 is outside"):
        load_model(path)


def test_non_finite_model_outputs_are_reported():
    from backend.models.inference import NonFiniteOutputError

    torch.manual_seed(0)
    skin = SkinningNetwork(TINY_SKIN).eval()
    with torch.no_grad():
        next(p for p in skin.parameters() if p.ndim == 2).fill_(float("nan"))
    models = RiggerModels(skeleton=SkeletonGenerator(TINY_SKEL).eval(), skinning=skin, device=torch.device("cpu"))
    pts = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    with pytest.raises(NonFiniteOutputError, match="skinning network produced .* NaN/Inf"):
        models.predict_weights(pts[:8], nrm[:8], pts, nrm, np.zeros((2, 3)), np.array([-1, 0]))


def test_rig_config_bounds_n_points():
    with pytest.raises(ValueError, match=r"n_points must be an integer in \[16, 16384\], got 2000000"):
        RigConfig(n_points=2_000_000).validate()


# ----------------------------------------------------------------------------- the fuzz suite, a slice

def test_fuzz_slice_has_no_traceback_hang_or_wrong_result(tmp_path):
    """48 seeded hostile cases (6 per input kind) through the real loaders, in this process."""
    from bench.fuzz import KINDS, _tree_digest, generate_case, run_case

    outcomes = {}
    for index in range(6 * len(KINDS)):
        kind, path, mutation, scratch = generate_case(index, 7, tmp_path)
        before = _tree_digest(path.parent)
        outcome, detail = run_case(kind, path, scratch)
        assert _tree_digest(path.parent) == before, (kind, mutation)
        outcomes[(kind, index, mutation)] = (outcome, detail)
    bad = {k: v for k, v in outcomes.items() if v[0] not in ("ok", "clean")}
    assert not bad, bad
    assert sum(v[0] == "clean" for v in outcomes.values()) >= len(KINDS)


def test_absurd_frame_rate_is_refused(tmp_path):
    seq = _seq()
    np.savez(tmp_path / "slow.npz", verts=seq.verts, faces=seq.faces, fps=np.float64(1e-300))
    with pytest.raises(SequenceError, match=r"fps must be a number in \[0.001, 100000\], got 1e-300"):
        load_sequence(tmp_path / "slow.npz")


def test_checkpoint_with_thousands_of_layers_is_refused_quickly(tmp_path):
    def deepen(tensors, meta):
        cfg = json.loads(meta["config"])
        cfg["n_enc_layers"] = 65536
        meta["config"] = json.dumps(cfg)

    path = _tampered(tmp_path, SkeletonGenerator(TINY_SKEL), deepen)
    with pytest.raises(CheckpointError, match=r"config field 'n_enc_layers' = 65536 is outside \[0, 64\]"):
        load_model(path)


@pytest.mark.parametrize("option, value", [("refine_iters", 2_000_000), ("max_joints", 2_000_000),
                                           ("max_influences", 2**63), ("batch_frames", 1e308)])
def test_rig_config_bounds_every_count(option, value):
    with pytest.raises(ValueError, match=f"{option} must be >= .* and <= "):
        RigConfig(**{option: value}).validate()


@pytest.mark.parametrize("suffix", [".npz", ".anime", ".glb", ".obj", ".ply"])
def test_input_that_is_a_fifo_is_refused_without_blocking(tmp_path, suffix):
    os.mkfifo(tmp_path / f"pipe{suffix}")  # opening it for reading would block until a writer appears
    with pytest.raises(SequenceError, match="not a regular file"):
        load_sequence(tmp_path / f"pipe{suffix}")


def test_a_png_renamed_to_glb_is_named_not_a_glb(tmp_path):
    (tmp_path / "picture.glb").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(SequenceError, match=r"not a GLB file: it starts with b'\\x89PNG'"):
        load_sequence(tmp_path / "picture.glb")


def test_a_large_npz_loads_a_frame_subset_under_the_ceiling(tmp_path, monkeypatch):
    """A stored (uncompressed) ``.npz`` larger than the vertex ceiling: a frame selection under it loads (only
    those frames are read); the whole clip is refused with the ``SPRIG_MAX_VERTEX_FRAMES`` value that would load
    it; a compressed copy names why a selection cannot help there."""
    seq = _seq(40)
    V = seq.n_verts
    save_npz(seq, tmp_path / "big.npz")
    save_npz(seq, tmp_path / "packed.npz", compressed=True)
    monkeypatch.setattr(common.LIMITS, "max_vertex_frames", 3 * V)
    with pytest.raises(SequenceError, match=rf"\(40 x {V}\) = .* set SPRIG_MAX_VERTEX_FRAMES={40 * V} or more"):
        load_sequence(tmp_path / "big.npz")
    part = load_sequence(tmp_path / "big.npz", frames=slice(2, 5))
    assert part.n_frames == 3 and np.allclose(part.verts, seq.verts[2:5])
    with pytest.raises(SequenceError, match=r"stored compressed, so selecting frames still unpacks all of it"):
        load_sequence(tmp_path / "packed.npz", frames=slice(2, 5))
