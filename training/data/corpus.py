"""The procedural corpus: one rigged, animated creature per index, and the reader for written corpora.

    record = generate_creature(index=7, seed=0)          # in memory, deterministic
    corpus = Corpus(Path("runs/default/corpus"))           # written by training/data/generate.py
    for i in corpus.indices("train"):
        rec = corpus.load(i)                               # CreatureRecord

A creature is built in five steps, each with its own random stream derived from ``(seed, index)``:
family -> body plan (skeleton + implicit parts, :mod:`.body_plans`) -> closed surface
(:mod:`.surface`) -> bone-heat weights (:mod:`.skinning`) -> motion clip and frames by linear
blend skinning (:mod:`.motion`, :func:`backend.lbs.linear_blend_skinning`), optionally plus a
small non-rigid wobble whose bound is stored in ``secondary_amplitude``.

On disk a corpus is a folder with ``config.json``, ``index.json`` (per creature: shard, family,
counts, split) and ``shards/shard_NNNNN.npz`` holding several creatures each (keys
``"0000042/verts"``...; weights are stored sparsely as the 4 largest entries per vertex).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from backend.lbs import linear_blend_skinning
from backend.sequence import MeshSequence

from .body_plans import FAMILIES, BodyPlanError, build_body_plan
from .motion import MotionConfig, make_clip, secondary_displacement
from .skinning import SkinningConfig, bone_heat_weights
from .surface import SurfaceConfig, SurfaceError, mesh_parts

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENERATOR_VERSION = 1  # bump when the same (seed, index, config) would give a different creature
SPLITS = ("train", "val", "test")
DEFAULT_FAMILY_WEIGHTS = {
    "humanoid": 0.15, "quadruped": 0.15, "bird": 0.10, "insect": 0.10, "spider": 0.10,
    "snake": 0.10, "fish": 0.10, "tentacled": 0.10, "dragon": 0.10,
}


class CorpusError(RuntimeError):
    """Raised for a missing, corrupt or mismatched corpus on disk, or a bad corpus request."""


@dataclass
class CorpusConfig:
    """What to generate.

    Attributes:
        n_creatures: number of creatures (indices ``0 .. n_creatures - 1``).
        seed: corpus seed; creature ``i`` depends only on ``(seed, i)`` and the fields below.
        frames: range of clip lengths K, drawn per creature (inclusive).
        n_frames: a fixed K for every clip (overrides ``frames``).
        verts: range of vertex counts after decimation (drawn log-uniformly per creature).
        families: families to draw from; ``family_weights`` their relative frequencies
            (default :data:`DEFAULT_FAMILY_WEIGHTS`).
        mutation_prob: chance of extra / missing / rescaled limbs.
        secondary_prob: chance of a non-rigid wobble on top of LBS; ``secondary_scale`` its
            amplitude range as a fraction of the creature's size.
        min_joints, max_joints: joint count bounds.
        size_range: the creature's longest side, in scene units.
        fps: clip frame rate.
        min_pose_deg: every frame's mean joint rotation away from the rest pose is at least this.
        grid_cells: marching-cubes grid cells along the longest side, at most.
        val_fraction, test_fraction: share of creatures in the validation / test splits.
        shard_size: creatures per shard file.
        workers: processes used to write a corpus.
    """

    n_creatures: int = 1600
    seed: int = 0
    frames: tuple[int, int] = (24, 64)
    n_frames: int | None = None
    verts: tuple[int, int] = (1000, 10000)
    families: tuple[str, ...] = FAMILIES
    family_weights: tuple[float, ...] | None = None
    mutation_prob: float = 0.3
    secondary_prob: float = 0.25
    secondary_scale: tuple[float, float] = (0.002, 0.008)
    min_joints: int = 6
    max_joints: int = 64
    size_range: tuple[float, float] = (1.0, 2.0)
    fps: float = 30.0
    min_pose_deg: float = 15.0
    grid_cells: int = 200
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    shard_size: int = 16
    workers: int = 2

    def __post_init__(self) -> None:
        self.frames = tuple(int(v) for v in self.frames)
        self.verts = tuple(int(v) for v in self.verts)
        self.families = tuple(self.families)
        self.size_range = tuple(float(v) for v in self.size_range)
        self.secondary_scale = tuple(float(v) for v in self.secondary_scale)
        if self.family_weights is not None:
            self.family_weights = tuple(float(v) for v in self.family_weights)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CorpusError` naming the first bad field."""
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise CorpusError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
        if self.family_weights is not None and len(self.family_weights) != len(self.families):
            raise CorpusError("family_weights needs one weight per family")
        lo, hi = self.frames
        if self.n_frames is not None and self.n_frames < 1:
            raise CorpusError(f"n_frames must be >= 1, got {self.n_frames}")
        if not 1 <= lo <= hi:
            raise CorpusError(f"frames range must satisfy 1 <= lo <= hi, got {self.frames}")
        if not 4 <= self.verts[0] <= self.verts[1]:
            raise CorpusError(f"verts range must satisfy 4 <= lo <= hi, got {self.verts}")
        if not 2 <= self.min_joints <= self.max_joints:
            raise CorpusError(f"joint bounds must satisfy 2 <= min <= max, got {self.min_joints}, {self.max_joints}")
        if self.n_creatures < 0 or self.shard_size < 1 or self.workers < 1:
            raise CorpusError("n_creatures >= 0, shard_size >= 1 and workers >= 1 are required")
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise CorpusError("val_fraction + test_fraction must lie in [0, 1)")

    def frame_count(self, rng: np.random.Generator) -> int:
        return int(self.n_frames) if self.n_frames else int(rng.integers(self.frames[0], self.frames[1] + 1))

    def generation_key(self) -> dict:
        """The fields a creature's content depends on (a resumed corpus must match them)."""
        d = asdict(self)
        for k in ("n_creatures", "workers"):
            d.pop(k)
        d["generator_version"] = GENERATOR_VERSION
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class CreatureRecord:
    """One rigged, animated creature.

    Attributes:
        index: creature index in the corpus; family; split (``"train" | "val" | "test"``).
        verts: float32 ``[K, V, 3]`` frames (frame 0 is the anchor; never the rest pose).
        faces: int32 ``[F, 3]`` triangles of a closed mesh (outward normals).
        rest_verts: float32 ``[V, 3]`` bind-pose mesh.
        joints: float32 ``[K, J, 3]`` joint world positions per frame.
        rest_joints: float32 ``[J, 3]`` bind-pose joints.
        parents: int32 ``[J]``; single root ``-1``; parents precede children.
        joint_names: ``J`` readable unique names.
        weights: float32 ``[V, J]`` dense; rows sum to 1 with at most 4 non-zero entries.
        transforms: float32 ``[K, J, 4, 4]`` rest -> frame k, so that
            ``linear_blend_skinning(rest_verts, weights, transforms)`` gives the pure-LBS frames.
        secondary_amplitude: bound on ``|verts - LBS|`` per vertex (0: frames are pure LBS).
        fps, motion (clip kind), variant (sub-kind of the family), mutations, seed: provenance.
    """

    index: int
    family: str
    split: str
    verts: np.ndarray
    faces: np.ndarray
    rest_verts: np.ndarray
    joints: np.ndarray
    rest_joints: np.ndarray
    parents: np.ndarray
    joint_names: list[str]
    weights: np.ndarray
    transforms: np.ndarray
    secondary_amplitude: float = 0.0
    fps: float = 30.0
    motion: str = ""
    variant: str = ""
    mutations: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.verts.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    def meta(self) -> dict:
        """Small JSON-able summary (what :meth:`Corpus.meta` returns)."""
        return {
            "family": self.family, "n_joints": self.n_joints, "n_verts": int(self.verts.shape[1]),
            "n_frames": self.n_frames, "split": self.split, "variant": self.variant, "motion": self.motion,
            "mutations": list(self.mutations), "secondary_amplitude": float(self.secondary_amplitude),
        }

    def lbs_frames(self) -> np.ndarray:
        """float32 ``[K, V, 3]``: the rest mesh posed by the stored weights and transforms."""
        return linear_blend_skinning(self.rest_verts, self.weights, self.transforms)

    def to_sequence(self) -> MeshSequence:
        """The frames as a :class:`backend.sequence.MeshSequence`, ground truth in ``extras``."""
        return MeshSequence(self.verts, self.faces, fps=self.fps, name=f"creature_{self.index:07d}_{self.family}",
                            extras={"joints": self.joints, "parents": self.parents,
                                    "joint_names": list(self.joint_names), "weights": self.weights,
                                    "rest_verts": self.rest_verts, "rest_joints": self.rest_joints,
                                    "transforms": self.transforms})


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def split_of(index: int, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Deterministic split of creature ``index``: a golden-ratio sequence, so shares are exact on average."""
    u = ((int(index) * 2654435769) % 4294967296) / 4294967296.0
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def choose_family(rng: np.random.Generator, config: CorpusConfig) -> str:
    weights = (np.asarray(config.family_weights, dtype=np.float64) if config.family_weights is not None
               else np.asarray([DEFAULT_FAMILY_WEIGHTS[f] for f in config.families]))
    return str(rng.choice(list(config.families), p=weights / weights.sum()))


def generate_creature(index: int, seed: int = 0, config: CorpusConfig | None = None) -> CreatureRecord:
    """Build creature ``index`` of the corpus with ``seed``, in memory (deterministic).

    Raises:
        CorpusError: when five attempts (each with its own derived random streams) fail.
    """
    config = config or CorpusConfig()
    last: Exception | None = None
    for attempt in range(5):
        try:
            return _generate(index, seed, config, attempt)
        except (BodyPlanError, SurfaceError, RuntimeError, np.linalg.LinAlgError) as exc:
            last = exc
            logger.debug("creature %d attempt %d failed: %s", index, attempt, exc)
    raise CorpusError(f"creature {index} (seed {seed}) failed five times; last error: {last}")


def _generate(index: int, seed: int, config: CorpusConfig, attempt: int) -> CreatureRecord:
    entropy = [int(seed), int(index)] + ([attempt] if attempt else [])
    streams = np.random.SeedSequence(entropy).spawn(6)
    r_family, r_body, r_surface, r_frames, r_motion, r_second = (np.random.default_rng(s) for s in streams)
    family = choose_family(r_family, config)
    plan = build_body_plan(family, r_body, max_joints=config.max_joints, min_joints=config.min_joints,
                           mutation_prob=config.mutation_prob, size_range=config.size_range)
    lo, hi = config.verts
    target = int(round(np.exp(r_surface.uniform(np.log(lo), np.log(hi)))))
    mesh = mesh_parts(plan.parts, SurfaceConfig(max_cells=config.grid_cells, target_verts=target,
                                                 verts_range=config.verts))
    skin = bone_heat_weights(mesh.verts, mesh.faces, plan.joints, plan.parents, plan.parts, SkinningConfig())
    K = config.frame_count(r_frames)
    clip = make_clip(plan, K, r_motion, MotionConfig(fps=config.fps, min_pose_deg=config.min_pose_deg))
    frames = linear_blend_skinning(mesh.verts, skin.weights, clip.transforms)
    amplitude = 0.0
    if r_second.random() < config.secondary_prob:
        size = float(np.ptp(mesh.verts, axis=0).max())
        amplitude = float(r_second.uniform(*config.secondary_scale) * size)
        softness = skin.bone_distance / max(float(skin.bone_distance.max()), 1e-12)
        frames = frames + secondary_displacement(mesh.verts, softness, K, amplitude, r_second, config.fps)
    if not np.isfinite(frames).all():
        raise RuntimeError("non-finite vertex positions")
    return CreatureRecord(
        index=int(index), family=family, split=split_of(index, config.val_fraction, config.test_fraction),
        verts=frames.astype(np.float32), faces=mesh.faces.astype(np.int32), rest_verts=mesh.verts.astype(np.float32),
        joints=clip.joints, rest_joints=plan.joints.astype(np.float32), parents=plan.parents.astype(np.int32),
        joint_names=list(plan.names), weights=skin.weights, transforms=clip.transforms,
        secondary_amplitude=amplitude, fps=float(config.fps), motion=clip.kind, variant=plan.variant,
        mutations=list(plan.mutations), seed=int(seed))


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------

_ARRAYS = ("verts", "faces", "rest_verts", "joints", "rest_joints", "parents", "transforms")


def record_arrays(rec: CreatureRecord, max_influences: int = 4) -> dict[str, np.ndarray]:
    """The arrays stored for ``rec`` (keys without the index prefix); weights become top-k pairs."""
    w = rec.weights
    k = min(max_influences, w.shape[1])
    idx = np.argsort(-w, axis=1)[:, :k]
    val = np.take_along_axis(w, idx, axis=1)
    out = {name: getattr(rec, name) for name in _ARRAYS}
    out["weight_index"] = idx.astype(np.int16)
    out["weight_value"] = val.astype(np.float32)
    out["joint_names"] = np.asarray(rec.joint_names, dtype=np.str_)
    out["info"] = np.asarray(json.dumps({
        "index": rec.index, "family": rec.family, "split": rec.split,
        "secondary_amplitude": rec.secondary_amplitude, "fps": rec.fps, "motion": rec.motion,
        "variant": rec.variant, "mutations": rec.mutations, "seed": rec.seed}))
    return out


def record_from_arrays(arrays) -> CreatureRecord:
    """Inverse of :func:`record_arrays` (``arrays`` maps the same keys to arrays)."""
    info = json.loads(str(arrays["info"]))
    V, J = arrays["rest_verts"].shape[0], arrays["parents"].shape[0]
    weights = np.zeros((V, J), dtype=np.float32)
    np.put_along_axis(weights, arrays["weight_index"].astype(np.int64), arrays["weight_value"], axis=1)
    return CreatureRecord(
        index=int(info["index"]), family=info["family"], split=info["split"],
        verts=arrays["verts"], faces=arrays["faces"], rest_verts=arrays["rest_verts"], joints=arrays["joints"],
        rest_joints=arrays["rest_joints"], parents=arrays["parents"],
        joint_names=[str(s) for s in arrays["joint_names"]], weights=weights, transforms=arrays["transforms"],
        secondary_amplitude=float(info["secondary_amplitude"]), fps=float(info["fps"]), motion=info["motion"],
        variant=info["variant"], mutations=list(info["mutations"]), seed=int(info["seed"]))


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def write_shard(shards_dir: Path, shard: int, records: list[CreatureRecord]) -> list[dict]:
    """Write ``records`` as one shard (npz, then its JSON summary, each atomically); returns the summaries."""
    arrays = {}
    metas = []
    for rec in records:
        for key, value in record_arrays(rec).items():
            arrays[f"{rec.index:07d}/{key}"] = value
        metas.append(dict(rec.meta(), index=rec.index, shard=shard_name(shard)))
    atomic_write_bytes(shards_dir / f"{shard_name(shard)}.npz", lambda fh: np.savez_compressed(fh, **arrays))
    atomic_write_json(shards_dir / f"{shard_name(shard)}.json", metas)
    return metas


class Corpus:
    """Read a corpus folder written by :func:`training.data.generate.generate_corpus`.

    Args:
        root: the corpus folder (with ``index.json``).
    Raises:
        CorpusError: when the folder or its index is missing or unreadable.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise CorpusError(f"no corpus at {self.root} (missing index.json); generate one with "
                              f"`python training/run.py --stage data`")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorpusError(f"unreadable corpus index {index_path}: {exc}") from exc
        if index.get("version") != FORMAT_VERSION:
            raise CorpusError(f"corpus format {index.get('version')} at {self.root}; this code reads {FORMAT_VERSION}")
        self.config = CorpusConfig.from_dict(index.get("config", {}))
        self._meta = {int(k): v for k, v in index["creatures"].items()}
        self._open: tuple[str, int, object] | None = None  # (shard, process id, open npz)

    def __len__(self) -> int:
        return len(self._meta)

    def all_indices(self) -> list[int]:
        return sorted(self._meta)

    def indices(self, split: str) -> list[int]:
        """Sorted creature indices of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return sorted(i for i, m in self._meta.items() if m["split"] == split)

    def meta(self, index: int) -> dict:
        """``family, n_joints, n_verts, n_frames, split`` (and variant, motion, mutations, ...) of a creature."""
        if index not in self._meta:
            raise CorpusError(f"creature {index} is not in the corpus at {self.root} ({len(self)} creatures)")
        return dict(self._meta[index])

    def load(self, index: int) -> CreatureRecord:
        """The full :class:`CreatureRecord` of creature ``index``."""
        shard = self.meta(index)["shard"]
        path = self.root / "shards" / f"{shard}.npz"
        # a handle opened in another process (e.g. before a DataLoader forked) must not be shared
        if self._open is None or self._open[0] != shard or self._open[1] != os.getpid():
            if self._open is not None and self._open[1] == os.getpid():
                self._open[2].close()
            try:
                self._open = (shard, os.getpid(), np.load(path, allow_pickle=False))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise CorpusError(f"cannot read shard {path}: {exc}") from exc
        data = self._open[2]
        prefix = f"{index:07d}/"
        try:
            arrays = {key[len(prefix):]: data[key] for key in data.files if key.startswith(prefix)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorpusError(f"corrupt shard {path}: {exc}") from exc
        if not arrays:
            raise CorpusError(f"creature {index} missing from shard {path}")
        return record_from_arrays(arrays)

    def close(self) -> None:
        if self._open is not None and self._open[1] == os.getpid():
            self._open[2].close()
        self._open = None

    def __getstate__(self) -> dict:  # pickling (e.g. to spawned workers) drops the open file
        state = dict(self.__dict__)
        state["_open"] = None
        return state


def timed_generate(index: int, seed: int, config: CorpusConfig) -> tuple[CreatureRecord, float]:
    """:func:`generate_creature` and its wall time in seconds."""
    start = time.perf_counter()
    rec = generate_creature(index, seed, config)
    return rec, time.perf_counter() - start
