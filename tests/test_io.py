"""Mesh-sequence loaders and writers (backend.io): round trips, real rigs, corrupt files, contract errors."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import textwrap
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from backend.io import (load_sequence, read_anime_header, read_obj, save_anime, save_mesh_folder, save_npz,
                        save_rigged_gltf, save_sequence, top_k_influences)
from backend.io.gltf import matrix_to_quat, quat_slerp, sample_channel
from backend.io.mesh_folder import missing_frame_numbers, natural_key
from backend.lbs import linear_blend_skinning
from backend.sequence import MeshSequence, SequenceError

REALDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"


# ----------------------------------------------------------------------------- fixtures / helpers

def _grid_bar(n_seg: int = 6, n_ring: int = 6, length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A closed-ish tube along +x: verts [(n_seg+1)*n_ring, 3], faces [F, 3]."""
    xs = np.linspace(0.0, length, n_seg + 1)
    ang = np.linspace(0.0, 2 * np.pi, n_ring, endpoint=False)
    verts = np.array([[x, 0.3 * np.cos(a), 0.3 * np.sin(a)] for x in xs for a in ang], dtype=np.float32)
    faces = []
    for s in range(n_seg):
        for r in range(n_ring):
            a, b = s * n_ring + r, s * n_ring + (r + 1) % n_ring
            c, d = a + n_ring, b + n_ring
            faces += [(a, b, d), (a, d, c)]
    return verts, np.asarray(faces, dtype=np.int32)


def _sequence(k: int = 5, seed: int = 0, fps: float | None = 24.0) -> MeshSequence:
    verts, faces = _grid_bar()
    rng = np.random.default_rng(seed)
    frames = verts[None] + 0.05 * rng.standard_normal((k,) + verts.shape).astype(np.float32)
    frames[0] = verts
    return MeshSequence(frames, faces, fps=fps, name="bar")


def _rig(k: int = 6, seed: int = 1):
    """A 4-joint rig on the bar (a chain 0-1-2 and a second root 3), rigid per-frame bone transforms."""
    verts, faces = _grid_bar()
    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0.0, 0.0]])
    parents = np.array([-1, 0, 1, -1])
    d = np.linalg.norm(verts[:, None, :] - joints[None], axis=-1)
    w = np.exp(-4 * d)
    w /= w.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    rots = Rotation.from_rotvec(0.6 * rng.standard_normal((k, 4, 3))).as_matrix()
    T = np.tile(np.eye(4), (k, 4, 1, 1))
    T[:, :, :3, :3] = rots
    T[:, :, :3, 3] = 0.3 * rng.standard_normal((k, 4, 3)) + joints - np.einsum("kjab,jb->kja", rots, joints)
    T[0] = np.eye(4)
    return verts, faces, joints, parents, w, T


def _glb_parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + json_len])
    bin_off = 20 + json_len
    bin_len = struct.unpack_from("<I", data, bin_off)[0]
    return doc, data[bin_off + 8: bin_off + 8 + bin_len]


def _write_glb(path: Path, doc: dict, blob: bytes) -> Path:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    blob = blob + b"\0" * (-len(blob) % 4)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<4sII", b"glTF", 2, 28 + len(text) + len(blob)))
        fh.write(struct.pack("<II", len(text), 0x4E4F534A) + text)
        fh.write(struct.pack("<II", len(blob), 0x004E4942) + blob)
    return path


# ----------------------------------------------------------------------------- round trips

def test_npz_round_trip_keeps_arrays_and_extras(tmp_path):
    seq = _sequence()
    seq.extras.update(joints=np.zeros((5, 3, 3), np.float32), parents=np.array([-1, 0, -1], np.int32),
                      joint_names=["a", "b", "c"], weights=np.full((seq.n_verts, 3), 1 / 3, np.float32))
    path = save_npz(seq, tmp_path / "s.npz")
    back = load_sequence(path)
    assert np.array_equal(back.verts, seq.verts) and np.array_equal(back.faces, seq.faces)
    assert back.fps == pytest.approx(24.0) and back.name == "bar"
    assert back.extras["joint_names"] == ["a", "b", "c"]
    assert np.array_equal(back.extras["parents"], [-1, 0, -1])  # a forest stays a forest
    assert np.array_equal(back.extras["weights"], seq.extras["weights"])
    sub = load_sequence(path, frames=[4, 1])  # memory-mapped subset
    assert np.array_equal(sub.verts, seq.verts[[4, 1]])
    assert sub.extras["joints"].shape == (2, 3, 3) and sub.extras["times"].shape == (2,)
    comp = load_sequence(save_npz(seq, tmp_path / "c.npz", compressed=True), frames=slice(1, 3))
    assert np.array_equal(comp.verts, seq.verts[1:3])


def test_npz_fps_from_times_and_override(tmp_path):
    verts, faces = _grid_bar()
    np.savez(tmp_path / "t.npz", verts=np.stack([verts] * 4), faces=faces, times=np.arange(4) / 12.5)
    assert load_sequence(tmp_path / "t.npz").fps == pytest.approx(12.5)
    assert load_sequence(tmp_path / "t.npz", fps=60).fps == 60.0


def test_anime_written_and_read_back(tmp_path):
    seq = _sequence(k=7)
    path = save_anime(seq, tmp_path / "s.anime")
    h = read_anime_header(path)
    assert (h.n_frames, h.n_verts, h.n_faces) == (7, seq.n_verts, seq.n_faces)
    assert path.stat().st_size == 12 + seq.n_verts * 12 + seq.n_faces * 12 + 6 * seq.n_verts * 12
    back = load_sequence(path, fps=30)
    assert np.array_equal(back.faces, seq.faces) and back.fps == 30.0
    np.testing.assert_array_equal(back.verts[0], seq.verts[0])
    np.testing.assert_allclose(back.verts, seq.verts, atol=1e-6)
    sub = load_sequence(path, frames=[6, 0, 3])
    np.testing.assert_allclose(sub.verts, seq.verts[[6, 0, 3]], atol=1e-6)


def test_anime_layout_matches_the_published_format(tmp_path):
    """A file assembled by hand with the DeformingThings4D layout reads as anchor + offsets."""
    verts, faces = _grid_bar()
    offsets = np.random.default_rng(3).standard_normal((2,) + verts.shape).astype(np.float32)
    with open(tmp_path / "h.anime", "wb") as fh:
        fh.write(struct.pack("<iii", 3, len(verts), len(faces)))
        fh.write(verts.astype("<f4").tobytes() + faces.astype("<i4").tobytes() + offsets.astype("<f4").tobytes())
    seq = load_sequence(tmp_path / "h.anime")
    np.testing.assert_array_equal(seq.verts[1:], verts[None] + offsets)
    assert seq.fps is None


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_mesh_folder_round_trip(tmp_path, fmt):
    seq = _sequence(k=12)
    save_mesh_folder(seq, tmp_path / "frames", fmt=fmt)
    back = load_sequence(tmp_path / "frames", fps=24)
    assert back.n_frames == 12 and back.extras["frame_files"][2] == f"bar_0002.{fmt}"
    np.testing.assert_array_equal(back.faces, seq.faces)
    np.testing.assert_allclose(back.verts, seq.verts, rtol=0, atol=1e-6)
    sub = load_sequence(tmp_path / "frames", frames=slice(10, None))
    np.testing.assert_allclose(sub.verts, seq.verts[10:], atol=1e-6)


def test_mesh_folder_with_a_missing_frame_file_says_which(tmp_path, caplog):
    seq = _sequence(k=6)
    save_mesh_folder(seq, tmp_path / "frames")
    assert load_sequence(tmp_path / "frames").extras["missing_frames"] == []
    (tmp_path / "frames" / "bar_0003.obj").unlink()
    with caplog.at_level("WARNING", logger="backend.io.mesh_folder"):
        back = load_sequence(tmp_path / "frames")
    assert back.n_frames == 5 and back.extras["missing_frames"] == [3]
    assert "skip number 3" in caplog.text
    for k in (1, 5):  # every other frame kept: a regular step, no gap
        (tmp_path / "frames" / f"bar_{k:04d}.obj").unlink()
    assert missing_frame_numbers(sorted((tmp_path / "frames").iterdir())) == []
    assert missing_frame_numbers([Path("a_1.obj"), Path("b_3.obj"), Path("a_7.obj")]) == []  # two prefixes


def test_folder_natural_order_quads_and_uv_indices(tmp_path):
    """frame_2 before frame_10; quads become the same fan on every frame; v/vt/vn keeps vertex order."""
    quad = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], dtype=np.float32)
    folder = tmp_path / "seq"
    folder.mkdir()
    for k in (1, 2, 10):
        v = quad + [0, 0, 0.1 * k]
        lines = [f"v {x} {y} {z}" for x, y, z in v] + ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1", "vn 0 0 1"]
        lines += ["f 1/1/1 2/2/1 3/3/1 4/4/1", "f 1/1 2/2 5/3", "f -5 -1 -2"]  # quad, triangle, relative
        (folder / f"frame_{k}.obj").write_text("\n".join(lines) + "\n")
    (folder / "notes.txt").write_text("not a mesh")
    seq = load_sequence(folder)
    assert seq.extras["frame_files"] == ["frame_1.obj", "frame_2.obj", "frame_10.obj"]
    np.testing.assert_allclose(seq.verts[:, 0, 2], [0.1, 0.2, 1.0], atol=1e-6)
    np.testing.assert_array_equal(seq.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 4], [0, 4, 3]])
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]


def test_ply_polygons_are_triangulated(tmp_path):
    header = ("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\nproperty float z\n"
              "element face 2\nproperty list uchar int vertex_indices\nend_header\n")
    body = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n0.5 0.5 1\n4 0 1 2 3\n5 0 1 4 3 2\n"
    seq = load_sequence(_write_text(tmp_path / "poly.ply", header + body))
    assert seq.n_frames == 1 and seq.n_faces == 2 + 3  # quad -> 2 triangles, pentagon -> 3
    assert set(seq.faces[:2].ravel()) == {0, 1, 2, 3}
    np.testing.assert_allclose(seq.verts[0, 4], [0.5, 0.5, 1.0])


# ----------------------------------------------------------------------------- glTF

def test_rigged_gltf_round_trip_reproduces_lbs_frames(tmp_path):
    verts, faces, joints, parents, w, T = _rig()
    names = ["hip", "knee", "ankle", "tail tip"]
    colors = np.tile([0.2, 0.4, 0.9], (len(verts), 1))
    path = save_rigged_gltf(tmp_path / "rig.glb", verts, faces, joints, parents, names, w, T, fps=12.0,
                            vertex_colors=colors)
    expected = linear_blend_skinning(verts, w, T)
    seq = load_sequence(path, fps=12.0)
    box = float(np.ptp(expected[0], axis=0).max())
    assert seq.n_frames == len(T) and seq.fps == 12.0
    assert np.abs(seq.verts - expected).max() < 1e-4 * box
    assert seq.extras["joint_names"] == names
    np.testing.assert_array_equal(seq.extras["parents"], parents)
    np.testing.assert_allclose(seq.extras["joints"], np.einsum("kjab,jb->kja", T[..., :3, :3], joints)
                               + T[..., :3, 3], atol=1e-5)
    np.testing.assert_allclose(seq.extras["weights"], w, atol=1e-6)
    np.testing.assert_allclose(seq.extras["rest_joints"], joints, atol=1e-6)
    np.testing.assert_allclose(seq.extras["bone_transforms"], T, atol=1e-5)
    # default rate is the file's own keyframe rate
    assert load_sequence(path).fps == 12.0
    sub = seq.subset(slice(2, 5))  # per-frame ground truth follows a frame selection
    assert sub.extras["bone_transforms"].shape[0] == 3 and sub.extras["times"].shape == (3,)
    np.testing.assert_array_equal(sub.extras["joints"], seq.extras["joints"][2:5])


def test_rigged_gltf_keeps_top4_influences(tmp_path):
    verts, faces, _, _, _, _ = _rig()
    J = 6
    joints = np.stack([np.linspace(0, 3, J), np.zeros(J), np.zeros(J)], axis=1)
    parents = np.arange(-1, J - 1)
    w = np.random.default_rng(0).random((len(verts), J)) + 0.01
    w /= w.sum(axis=1, keepdims=True)
    T = np.tile(np.eye(4), (3, J, 1, 1))
    T[1, :, :3, 3] = [0.0, 0.5, 0.0]
    T[2, 3:, :3, :3] = Rotation.from_euler("z", 40, degrees=True).as_matrix()
    idx, top = top_k_influences(w, 4)
    w4 = np.zeros_like(w)
    np.put_along_axis(w4, idx, top, axis=1)
    seq = load_sequence(save_rigged_gltf(tmp_path / "r.glb", verts, faces, joints, parents, None, w, T))
    assert ((seq.extras["weights"] > 0).sum(axis=1) == 4).all()
    np.testing.assert_allclose(seq.extras["weights"], w4, atol=1e-6)
    expected = linear_blend_skinning(verts, w4, T)
    assert np.abs(seq.verts - expected).max() < 1e-4 * float(np.ptp(verts, axis=0).max())
    assert seq.extras["joint_names"][0] == "joint_00"


def test_rigged_gltf_reproduces_real_artist_rig(tmp_path):
    if not (REALDATA / "khronos_fox_run.npz").exists():
        pytest.skip(f"{REALDATA} is absent")
    d = np.load(REALDATA / "khronos_fox_run.npz")
    T = np.zeros(d["skin_mats"].shape[:2] + (4, 4))
    T[..., :3, :] = d["skin_mats"]
    T[..., 3, 3] = 1.0
    fps = float(1.0 / np.median(np.diff(d["times"])))
    path = save_rigged_gltf(tmp_path / "fox.glb", d["rest_verts"], d["faces"], d["rest_joints"], d["parents"],
                            list(d["joint_names"]), d["weights"], T, fps=fps)
    seq = load_sequence(path, fps=fps)
    box = float(np.ptp(d["verts"][0], axis=0).max())
    assert seq.n_frames == d["verts"].shape[0]
    assert np.abs(seq.verts - d["verts"]).max() < 1e-4 * box
    assert seq.extras["joint_names"] == [str(n) for n in d["joint_names"]]
    assert np.abs(seq.extras["joints"] - d["joints"]).max() < 1e-4 * box


def test_gltf_skinned_ignores_mesh_node_transform_and_merges_primitives(tmp_path):
    verts, faces, joints, parents, w, T = _rig(k=3)
    path = save_rigged_gltf(tmp_path / "rig.glb", verts, faces, joints, parents, None, w, T, fps=10)
    doc, blob = _glb_parts(path)
    mesh_node = next(n for n in doc["nodes"] if "skin" in n)
    mesh_node["translation"] = [5.0, -3.0, 2.0]  # must be ignored for a skinned mesh
    prim = doc["meshes"][0]["primitives"][0]
    doc["meshes"][0]["primitives"].append(dict(prim))
    # a rigid prop parented to the second joint follows it; a loose static mesh is left out
    doc["meshes"].append({"primitives": [{"attributes": {"POSITION": prim["attributes"]["POSITION"]},
                                          "indices": prim["indices"]}]})
    doc["nodes"].append({"name": "prop", "mesh": 1, "translation": [0.0, 1.0, 0.0]})
    doc["nodes"][2 + 1].setdefault("children", []).append(len(doc["nodes"]) - 1)
    doc["nodes"].append({"name": "ground", "mesh": 1})
    doc["scenes"][0]["nodes"].append(len(doc["nodes"]) - 1)
    seq = load_sequence(_write_glb(tmp_path / "edited.glb", doc, blob), fps=10)
    V = len(verts)
    expected = linear_blend_skinning(verts, w, T)
    assert seq.n_verts == 3 * V and seq.n_faces == 3 * len(faces)
    np.testing.assert_allclose(seq.verts[:, :V], expected, atol=1e-5)
    np.testing.assert_allclose(seq.verts[:, V:2 * V], expected, atol=1e-5)
    np.testing.assert_array_equal(seq.faces[len(faces):2 * len(faces)], faces + V)
    # prop: world(joint 1) @ translate(0,1,0) @ v, and its ground truth weight is one-hot on joint 1
    g1 = T[:, 1] @ np.c_[np.eye(4)[:, :3], np.r_[joints[1], 1.0]]  # T_k1 @ Bind_1
    prop = np.einsum("kab,vb->kva", g1[:, :3, :3], verts + [0.0, 1.0, 0.0]) + g1[:, None, :3, 3]
    np.testing.assert_allclose(seq.verts[:, 2 * V:], prop, atol=1e-5)
    np.testing.assert_array_equal(seq.extras["weights"][2 * V:, 1], 1.0)
    recon = linear_blend_skinning(seq.extras["rest_verts"], seq.extras["weights"], seq.extras["bone_transforms"])
    np.testing.assert_allclose(recon, seq.verts, atol=1e-5)


def _pack(arrays: list[np.ndarray]) -> tuple[bytes, list[tuple[int, int]]]:
    blob, spans = b"", []
    for a in arrays:
        blob += b"\0" * (-len(blob) % 4)
        spans.append((len(blob), a.nbytes))
        blob += a.tobytes()
    return blob, spans


def test_gltf_morph_targets_node_transforms_and_all_interpolations(tmp_path):
    """A GLB built here with pygltflib: LINEAR (slerp) rotation, STEP translation, CUBICSPLINE weights,
    a sparse morph target, a triangle strip without indices, node TRS inheritance."""
    import pygltflib as gl

    pyramid = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], np.float32)
    tri_idx = np.array([0, 1, 4, 1, 2, 4, 2, 3, 4, 3, 0, 4, 0, 2, 1, 0, 3, 2], np.uint16)
    delta0 = np.tile(np.array([0.0, 0.0, 0.5], np.float32), (5, 1))
    sparse_idx = np.array([1, 4], np.uint16)
    sparse_val = np.array([[0.3, 0, 0], [0, 0, -0.4]], np.float32)
    strip = np.array([[2, 0, 0], [3, 0, 0], [2, 1, 0], [3, 1, 0]], np.float32)
    key_t = np.array([0.0, 1.0, 2.0], np.float32)
    quats = Rotation.from_euler("xyz", [[0, 0, 0], [0, 90, 0], [30, 0, 170]], degrees=True).as_quat()
    step_tr = np.array([[0, 0, 0], [1, 2, 3], [-1, 0, 2]], np.float32)

    def f(t):  # cubic morph weights, exactly representable by a Hermite spline with tangents f'
        return np.stack([0.1 + 0.2 * t - 0.05 * t ** 3, 0.3 * t ** 2 - 0.1 * t ** 3], axis=-1)

    def df(t):
        return np.stack([0.2 - 0.15 * t ** 2, 0.6 * t - 0.3 * t ** 2], axis=-1)

    cubic = np.stack([df(key_t), f(key_t), df(key_t)], axis=1).astype(np.float32).reshape(-1)  # a, v, b
    arrays = [pyramid, tri_idx, delta0, sparse_idx, sparse_val, strip, key_t, quats.astype(np.float32),
              step_tr, cubic]
    blob, spans = _pack(arrays)
    views = [gl.BufferView(buffer=0, byteOffset=o, byteLength=n) for o, n in spans]
    acc = [
        gl.Accessor(bufferView=0, componentType=5126, count=5, type="VEC3", min=[0, 0, 0], max=[1, 1, 1]),
        gl.Accessor(bufferView=1, componentType=5123, count=18, type="SCALAR"),
        gl.Accessor(bufferView=2, componentType=5126, count=5, type="VEC3"),
        gl.Accessor(componentType=5126, count=5, type="VEC3", sparse=gl.Sparse(
            count=2, indices=gl.AccessorSparseIndices(bufferView=3, componentType=5123),
            values=gl.AccessorSparseValues(bufferView=4))),
        gl.Accessor(bufferView=5, componentType=5126, count=4, type="VEC3"),
        gl.Accessor(bufferView=6, componentType=5126, count=3, type="SCALAR", min=[0], max=[2]),
        gl.Accessor(bufferView=7, componentType=5126, count=3, type="VEC4"),
        gl.Accessor(bufferView=8, componentType=5126, count=3, type="VEC3"),
        gl.Accessor(bufferView=9, componentType=5126, count=18, type="SCALAR"),
    ]
    body_q = Rotation.from_euler("z", 90, degrees=True).as_quat()
    doc = gl.GLTF2(
        scene=0, scenes=[gl.Scene(nodes=[0])],
        nodes=[gl.Node(name="root", children=[1, 2], scale=[2.0, 2.0, 2.0]),
               gl.Node(name="body", mesh=0, translation=[0.5, 0, 0], rotation=body_q.tolist()),
               gl.Node(name="plate", mesh=1)],
        meshes=[gl.Mesh(primitives=[gl.Primitive(attributes=gl.Attributes(POSITION=0), indices=1,
                                                 targets=[{"POSITION": 2}, {"POSITION": 3}])]),
                gl.Mesh(primitives=[gl.Primitive(attributes=gl.Attributes(POSITION=4), mode=5)])],
        animations=[gl.Animation(name="wiggle", samplers=[
            gl.AnimationSampler(input=5, output=6, interpolation="LINEAR"),
            gl.AnimationSampler(input=5, output=7, interpolation="STEP"),
            gl.AnimationSampler(input=5, output=8, interpolation="CUBICSPLINE")], channels=[
            gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(node=0, path="rotation")),
            gl.AnimationChannel(sampler=1, target=gl.AnimationChannelTarget(node=0, path="translation")),
            gl.AnimationChannel(sampler=2, target=gl.AnimationChannelTarget(node=1, path="weights"))])],
        accessors=acc, bufferViews=views, buffers=[gl.Buffer(byteLength=len(blob))])
    doc.set_binary_blob(blob)
    path = tmp_path / "morph.glb"
    doc.save_binary(str(path))

    seq = load_sequence(path, fps=4)
    t = np.arange(9) / 4.0
    assert seq.n_frames == 9 and seq.fps == 4.0 and seq.extras["animation"] == "wiggle"
    np.testing.assert_allclose(seq.extras["times"], t)
    # expected, computed independently
    rot = Slerp(key_t, Rotation.from_quat(quats))(t).as_matrix()
    tr = step_tr[np.searchsorted(key_t, t, side="right") - 1]
    root = np.tile(np.eye(4), (9, 1, 1))
    root[:, :3, :3] = rot * 2.0
    root[:, :3, 3] = tr
    body = np.eye(4)
    body[:3, :3] = Rotation.from_quat(body_q).as_matrix()
    body[:3, 3] = [0.5, 0, 0]
    delta1 = np.zeros((5, 3), np.float32)
    delta1[sparse_idx] = sparse_val
    local = pyramid[None] + np.einsum("kt,tvc->kvc", f(t), np.stack([delta0, delta1]))
    world = root @ body
    expected_body = np.einsum("kab,kvb->kva", world[:, :3, :3], local) + world[:, None, :3, 3]
    expected_plate = np.einsum("kab,vb->kva", root[:, :3, :3], strip) + root[:, None, :3, 3]
    np.testing.assert_allclose(seq.verts[:, :5], expected_body, atol=1e-5)
    np.testing.assert_allclose(seq.verts[:, 5:], expected_plate, atol=1e-5)
    np.testing.assert_array_equal(seq.faces[:6], tri_idx.reshape(-1, 3))
    np.testing.assert_array_equal(seq.faces[6:], [[5, 6, 7], [6, 8, 7]])  # strip: {v_i, v_i+1+i%2, v_i+2-i%2}
    assert "joints" not in seq.extras
    # default sampling rate: the keyframe rate (1 key per second here)
    assert load_sequence(path).n_frames == 3
    # without animation: the rest pose, morphed by the node's own weights (which win over the mesh's)
    raw, blob_ = _glb_parts(path)
    raw.pop("animations")
    raw["meshes"][0]["weights"] = [1.0, 1.0]
    raw["nodes"][1]["weights"] = [0.5, 0.0]
    still = load_sequence(_write_glb(tmp_path / "still.glb", raw, blob_))
    rest_root = np.diag([2.0, 2.0, 2.0, 1.0]) @ body
    expected_still = (pyramid + 0.5 * delta0) @ rest_root[:3, :3].T + rest_root[:3, 3]
    assert still.n_frames == 1 and still.fps is None
    np.testing.assert_allclose(still.verts[0, :5], expected_still, atol=1e-5)


def test_morph_gltf_writer_round_trip(tmp_path):
    seq = _sequence(k=6, fps=15.0)
    back = load_sequence(save_sequence(seq, tmp_path / "m.glb"))
    assert back.n_frames == 6 and back.fps == 15.0
    np.testing.assert_array_equal(back.faces, seq.faces)
    np.testing.assert_allclose(back.verts, seq.verts, atol=1e-6)


def test_slerp_and_quaternion_conversion_match_scipy():
    rng = np.random.default_rng(0)
    r0, r1 = Rotation.random(50, random_state=1), Rotation.random(50, random_state=2)
    s = rng.random(50)
    ours = Rotation.from_quat(quat_slerp(r0.as_quat(), r1.as_quat(), s))
    ref = Rotation.from_quat([Slerp([0, 1], Rotation.from_quat([a, b]))(x).as_quat()
                              for a, b, x in zip(r0.as_quat(), r1.as_quat(), s)])
    assert (ours * ref.inv()).magnitude().max() < 1e-6
    mats = np.concatenate([Rotation.random(100, random_state=3).as_matrix(),
                           Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix()])  # 180 degree turns too
    q = matrix_to_quat(mats)
    np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), mats, atol=1e-9)
    # STEP holds the previous key; times outside the keys clamp
    vals = np.array([[0.0], [1.0], [5.0]])
    out = sample_channel(np.array([0.0, 1.0, 2.0]), vals, "STEP", np.array([-1, 0.5, 1.0, 1.99, 3.0]))
    np.testing.assert_array_equal(out[:, 0], [0, 0, 1, 1, 5])


# ----------------------------------------------------------------------------- real data

def _manifest_rows() -> list[tuple[str, int, int, int, int]]:
    text = (REALDATA / "MANIFEST.md").read_text()
    rows = re.findall(r"^\| `([^`]+\.npz)` \| \w+ \| [\w-]+ \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    return [(f, int(k), int(v), int(nf), int(j)) for f, k, v, nf, j in rows]


def test_realdata_matches_manifest():
    if not (REALDATA / "MANIFEST.md").exists():
        pytest.skip(f"{REALDATA} is absent: no real artist rigs to check against")
    rows = _manifest_rows()
    assert len(rows) == len(list(REALDATA.glob("*.npz"))) >= 1
    for name, k, v, n_faces, j in rows:
        seq = load_sequence(REALDATA / name)
        assert (seq.n_frames, seq.n_verts, seq.n_faces) == (k, v, n_faces), name
        assert seq.extras["joints"].shape == (k, j, 3) and len(seq.extras["joint_names"]) == j, name
        assert seq.extras["weights"].shape == (v, j) and seq.fps is not None and seq.fps > 1, name
        times = seq.extras["times"]
        assert seq.fps == pytest.approx(1.0 / np.median(np.diff(times)))
    horse = load_sequence(REALDATA / "quaternius_horse_gallop.npz", frames=slice(0, 4))
    assert int((horse.extras["parents"] < 0).sum()) == 5  # the artist's forest is kept
    assert horse.n_frames == 4 and horse.extras["joints"].shape[0] == 4


# ----------------------------------------------------------------------------- corrupt input

def test_truncated_and_corrupt_npz(tmp_path):
    path = save_npz(_sequence(), tmp_path / "s.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"\x00not a zip at all" * 10)
    for bad in ("cut.npz", "junk.npz"):
        with pytest.raises(SequenceError, match=bad):
            load_sequence(tmp_path / bad)
    np.savez(tmp_path / "nofaces.npz", verts=np.zeros((2, 5, 3)))
    with pytest.raises(SequenceError, match="no 'faces' array"):
        load_sequence(tmp_path / "nofaces.npz")
    np.savez(tmp_path / "obj.npz", verts=np.empty((2, 4, 3), dtype=object), faces=np.zeros((1, 3)))
    with pytest.raises(SequenceError, match="obj.npz: cannot read array 'verts.npy'"):
        load_sequence(tmp_path / "obj.npz")
    # corrupt bytes inside a stored array: zip CRC check
    flipped = bytearray(data)
    pos = data.find(b"verts.npy") + 200
    flipped[pos:pos + 8] = b"\xff" * 8
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(SequenceError, match="flip.npz"):
        load_sequence(tmp_path / "flip.npz")


def test_truncated_and_corrupt_anime(tmp_path):
    path = save_anime(_sequence(), tmp_path / "s.anime")
    data = path.read_bytes()
    (tmp_path / "cut.anime").write_bytes(data[:-100])
    with pytest.raises(SequenceError, match="truncated .anime"):
        load_sequence(tmp_path / "cut.anime")
    (tmp_path / "tiny.anime").write_bytes(data[:7])
    with pytest.raises(SequenceError, match="truncated"):
        load_sequence(tmp_path / "tiny.anime")
    (tmp_path / "neg.anime").write_bytes(struct.pack("<iii", -3, 10, 4) + data[12:])
    with pytest.raises(SequenceError, match="corrupt .anime header"):
        load_sequence(tmp_path / "neg.anime")
    (tmp_path / "long.anime").write_bytes(data + b"\0" * 12)
    with pytest.raises(SequenceError, match="more than the header"):
        load_sequence(tmp_path / "long.anime")


def test_corrupt_frame_files_and_vertex_count_change(tmp_path):
    seq = _sequence(k=4)
    folder = save_mesh_folder(seq, tmp_path / "objs")
    files = sorted(folder.iterdir())
    text = files[2].read_text()
    files[2].write_text(text[: text.index("\nf ")].rsplit("\n", 1)[0] + "\nv 1.0 2.0\n")  # truncated mid-line
    with pytest.raises(SequenceError, match="bar_0002.obj.*malformed vertex"):
        load_sequence(folder)
    files[2].write_text(text + "v 9 9 9\n")  # one extra vertex
    with pytest.raises(SequenceError, match=r"vertex count changes at frame 2 \(bar_0002.obj"):
        load_sequence(folder)
    plys = save_mesh_folder(seq, tmp_path / "plys", fmt="ply")
    first = sorted(plys.iterdir())[0]
    first.write_bytes(first.read_bytes()[:300])
    with pytest.raises(SequenceError, match="bar_0000.ply"):
        load_sequence(plys)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SequenceError, match="no .obj or .ply"):
        load_sequence(tmp_path / "empty")
    with pytest.raises(SequenceError, match="face index 99"):
        read_obj(_write_text(tmp_path / "bad.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99\n"))


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_truncated_and_corrupt_gltf(tmp_path):
    verts, faces, joints, parents, w, T = _rig(k=2)
    path = save_rigged_gltf(tmp_path / "ok.glb", verts, faces, joints, parents, None, w, T)
    data = path.read_bytes()
    (tmp_path / "cut.glb").write_bytes(data[: len(data) - 64])
    with pytest.raises(SequenceError, match="cut.glb: truncated GLB"):
        load_sequence(tmp_path / "cut.glb")
    (tmp_path / "head.glb").write_bytes(data[:10])
    with pytest.raises(SequenceError, match="truncated GLB"):
        load_sequence(tmp_path / "head.glb")
    json_len = struct.unpack_from("<I", data, 12)[0]
    garbled = bytearray(data)
    garbled[20 + json_len // 2: 20 + json_len // 2 + 4] = b"\xff\xfe{]"
    (tmp_path / "garbled.glb").write_bytes(bytes(garbled))
    with pytest.raises(SequenceError, match="corrupt GLB JSON"):
        load_sequence(tmp_path / "garbled.glb")
    doc, blob = _glb_parts(path)
    doc["accessors"][0]["count"] = 10 ** 6  # points far past the end of the buffer
    with pytest.raises(SequenceError, match="POSITION.*truncated or corrupt"):
        load_sequence(_write_glb(tmp_path / "acc.glb", doc, blob))
    doc, blob = _glb_parts(path)
    (tmp_path / "ext.gltf").write_text(json.dumps({**doc, "buffers": [{"uri": "missing.bin",
                                                                     "byteLength": len(blob)}]}))
    with pytest.raises(SequenceError, match="missing.bin"):
        load_sequence(tmp_path / "ext.gltf")
    (tmp_path / "ok.bin").write_bytes(blob)
    (tmp_path / "ok.gltf").write_text(json.dumps({**doc, "buffers": [{"uri": "ok.bin", "byteLength": len(blob)}]}))
    assert load_sequence(tmp_path / "ok.gltf").n_verts == len(verts)  # external buffers work
    uri = "data:application/octet-stream;base64," + base64.b64encode(blob).decode()
    (tmp_path / "embedded.gltf").write_text(json.dumps({**doc, "buffers": [{"uri": uri, "byteLength": len(blob)}]}))
    assert load_sequence(tmp_path / "embedded.gltf").n_verts == len(verts)  # data URIs work
    with pytest.raises(SequenceError, match="no animation named 'run'"):
        load_sequence(path, animation="run")


@pytest.mark.parametrize("suffix", [".npz", ".anime", ".glb"])
def test_every_truncation_is_a_sequence_error(tmp_path, suffix):
    """Cutting a file anywhere (header, geometry, animation) gives a SequenceError naming it."""
    if suffix == ".glb":
        verts, faces, joints, parents, w, T = _rig(k=3)
        path = save_rigged_gltf(tmp_path / "full.glb", verts, faces, joints, parents, None, w, T)
    else:
        path = save_sequence(_sequence(k=3), tmp_path / f"full{suffix}")
    data = path.read_bytes()
    for cut in np.unique(np.linspace(1, len(data) - 1, 25).astype(int)):
        bad = tmp_path / f"cut_{cut}{suffix}"
        bad.write_bytes(data[:cut])
        with pytest.raises(SequenceError, match=bad.name):
            load_sequence(bad)


def test_obj_frame_truncated_in_face_section(tmp_path):
    folder = save_mesh_folder(_sequence(k=3), tmp_path / "objs")
    last = sorted(folder.iterdir())[-1]
    lines = last.read_text().splitlines()
    last.write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(SequenceError, match="face count changes at frame 2 .bar_0002.obj"):
        load_sequence(folder)


def test_malformed_gltf_values_are_sequence_errors(tmp_path):
    verts, faces, joints, parents, w, T = _rig(k=2)
    path = save_rigged_gltf(tmp_path / "ok.glb", verts, faces, joints, parents, None, w, T)
    doc, blob = _glb_parts(path)
    doc["nodes"][1]["translation"] = [1.0, 2.0]  # a 2-vector where glTF wants 3 (armature node)
    with pytest.raises(SequenceError, match="bad_trs.glb: malformed glTF content"):
        load_sequence(_write_glb(tmp_path / "bad_trs.glb", doc, blob))
    doc, blob = _glb_parts(path)
    doc["nodes"][2]["children"] = [2]  # a node that is its own child
    with pytest.raises(SequenceError, match="cycle.glb: node 2 has more than one parent"):
        load_sequence(_write_glb(tmp_path / "cycle.glb", doc, blob))
    doc, blob = _glb_parts(path)
    doc["meshes"][0]["primitives"][0]["attributes"]["JOINTS_0"] = doc["meshes"][0]["primitives"][0]["indices"]
    with pytest.raises(SequenceError, match="joints.glb"):
        load_sequence(_write_glb(tmp_path / "joints.glb", doc, blob))


# ----------------------------------------------------------------------------- contract violations

@pytest.mark.parametrize("case, message", [
    ("no_frames", "no frames"),
    ("three_verts", "at least 4 vertices"),
    ("no_faces", "no faces"),
    ("nan", "NaN or Inf"),
    ("inf", "NaN or Inf"),
    ("face_range", "face index out of range"),
    ("flat_box", "zero size"),
])
def test_contract_violations_raised_through_loaders(tmp_path, case, message):
    verts, faces = _grid_bar()
    frames = np.stack([verts, verts + 0.1])
    if case == "no_frames":
        frames = frames[:0]
    elif case == "three_verts":
        frames, faces = frames[:, :3], np.array([[0, 1, 2]])
    elif case == "no_faces":
        faces = faces[:0]
    elif case == "nan":
        frames[1, 3, 0] = np.nan
    elif case == "inf":
        frames[0, 0, 2] = np.inf
    elif case == "face_range":
        faces = faces.copy()
        faces[4, 1] = len(verts)
    elif case == "flat_box":
        frames = np.zeros_like(frames)
    np.savez(tmp_path / f"{case}.npz", verts=frames, faces=faces)
    with pytest.raises(SequenceError, match=f"{case}.npz.*{message}"):
        load_sequence(tmp_path / f"{case}.npz")
    with pytest.raises(SequenceError, match=message):
        MeshSequence(frames, faces)


def test_vertex_count_change_and_unknown_format_rejected(tmp_path):
    verts, faces = _grid_bar()
    with pytest.raises(SequenceError, match="vertex count changes"):
        MeshSequence([verts, verts[:-1]], faces)
    (tmp_path / "clip.fbx").write_bytes(b"x")
    with pytest.raises(SequenceError, match="unsupported file type '.fbx'"):
        load_sequence(tmp_path / "clip.fbx")
    with pytest.raises(SequenceError, match="no such file"):
        load_sequence(tmp_path / "missing.npz")
    with pytest.raises(SequenceError, match="frame index 9 is out of range"):
        load_sequence(save_anime(_sequence(), tmp_path / "a.anime"), frames=[9])


# ----------------------------------------------------------------------------- Blender

_BLENDER_CHECK = """
import sys, numpy as np, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
data = np.load(sys.argv[2])
mesh = next(o for o in bpy.data.objects if o.type == "MESH" and (o.modifiers or o.data.shape_keys))
if "names" in data:
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    assert [b.name for b in arm.data.bones] == list(data["names"]), [b.name for b in arm.data.bones]
err = 0.0
for k, expected in enumerate(data["frames"]):
    bpy.context.scene.frame_set(k)  # the importer puts glTF time k / fps on frame k
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ev.to_mesh()
    co = np.array([(ev.matrix_world @ v.co)[:] for v in me.vertices])
    ev.to_mesh_clear()
    co = np.stack([co[:, 0], co[:, 2], -co[:, 1]], axis=1)  # Blender Z-up -> glTF Y-up
    err = max(err, float(np.abs(co - expected).max()))
print("MAXERR", err)
"""


@pytest.mark.blender
@pytest.mark.parametrize("kind", ["rig", "morph"])
def test_written_glb_plays_back_in_blender(tmp_path, kind):
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("the bpy wheel is not installed")
    verts, faces, joints, parents, w, T = _rig(k=5)
    if kind == "rig":
        names = ["hip", "knee", "ankle", "tail tip"]
        glb = save_rigged_gltf(tmp_path / "rig.glb", verts, faces, joints, parents, names, w, T, fps=24.0)
        np.savez(tmp_path / "expected.npz", frames=linear_blend_skinning(verts, w, T), names=np.array(names))
    else:
        seq = MeshSequence(linear_blend_skinning(verts, w, T), faces, fps=24.0, name="clip")
        glb = save_sequence(seq, tmp_path / "clip.glb")
        np.savez(tmp_path / "expected.npz", frames=seq.verts)
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(_BLENDER_CHECK))
    out = subprocess.run([sys.executable, str(script), str(glb), str(tmp_path / "expected.npz")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    err = float(re.search(r"MAXERR (\S+)", out.stdout).group(1))
    assert err < 1e-4 * float(np.ptp(verts, axis=0).max())
