"""Stage 1: pretrain the base static rigger (skeleton generator + skinning network) frame by frame.

    python training/run.py --stage pretrain --preset default
    torchrun --nproc_per_node 4 training/run.py --stage pretrain --preset large     # multi-GPU
    python -m training.pretrain --preset smoke --workdir runs/smoke --steps 10       # with overrides
    python -m training.pretrain --preset default --design perceiver --workdir runs/perceiver  # other design

Every training sample is one random frame of a corpus creature: the frame is rotated about the up
axis (Y), normalized by its own bounding box (the paper's anchor normalization with that frame as
the anchor), scaled/shifted a little, and sampled (points + normals). The skeleton generator learns
the frame's ground-truth joints with teacher-forced cross-entropy (Eq. 1) -- the ``local`` design
(``docs/generator_design.md``) also its per-point joint votes (:func:`skeleton_batch_loss`); the skinning network
learns the ground-truth weights given the ground-truth skeleton with a KL loss (Eq. 4).

Outputs under ``workdir``: ``pretrain/state.pt`` (resumable state, written atomically),
``pretrain/log.jsonl`` (losses and validation), and ``checkpoints/skeleton_base.safetensors`` +
``checkpoints/skinning_base.safetensors`` (exported at every validation and at the end).

Continuing across sessions: ``state.pt`` (weights + optimizer moments) is the exact resume point, but
it is too large to commit. When it is missing, the stage looks for exported base checkpoints of the
same preset -- ``--init-from DIR``, else ``workdir/checkpoints``, else the repository's
``checkpoints/`` -- and, if they are incomplete, warm-starts from them: weights loaded (sha256
verified), step counter set to the exported step so the cosine schedule continues, fresh optimizer
moments with a short linear learning-rate re-warm-up. Complete checkpoints are left alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

if __package__ in (None, ""):  # `python training/pretrain.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.metrics import static_skeleton_quality, static_skinning_quality
from backend.metrics.static_skeleton import cd_j2j
from backend.models.checkpoint import (CheckpointInfo, load_training_state, read_checkpoint, save_model,
                                       save_training_state)
from backend.models.inference import resolve_device
from backend.models.local_encoder import PointContext, joint_vote_loss, joint_vote_targets
from backend.models.skeleton_generator import COORDINATE_DECODINGS, SkeletonGenerator, skeleton_token_loss
from backend.models.skinning_network import SkinningNetwork, skinning_kl_loss
from backend.models.tokenizer import SkeletonTokenizer, TokenizerError
from backend.normalize import AnchorBox
from backend.sampling import SurfaceSamples, barycentric_interpolate, points_on_frames, sample_surface
from training.batching import pad_joint_columns, pad_skeletons
from training.presets import GENERATOR_DESIGNS, OptimConfig, PretrainConfig, Preset, get_preset

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


# ---- one training frame ----------------------------------------------------------------------------

@dataclass
class FrameSample:
    """One normalized, sampled frame with its targets.

    Attributes:
        points, normals: float32 ``[N, 3]`` surface samples (skeleton input, skinning shape context).
        tokens: int64 ``[L]`` ground-truth skeleton tokens.
        joints: float32 ``[J, 3]`` ground-truth joints (normalized); parents: int ``[J]``.
        query: float32 ``[Q, 6]`` skinning queries (position + normal); query_weights: float32 ``[Q, J]``.
        record: corpus index; frame: frame index.
    """

    points: np.ndarray
    normals: np.ndarray
    tokens: np.ndarray
    joints: np.ndarray
    parents: np.ndarray
    query: np.ndarray
    query_weights: np.ndarray
    record: int = -1
    frame: int = -1


def rotation_about_up(angle: float) -> np.ndarray:
    """float64 ``[3, 3]`` rotation by ``angle`` radians about +Y."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def vertex_corners(faces: np.ndarray, n_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """For every vertex one face using it and the vertex's slot in that face (``-1`` if unused).

    Returns:
        ``face int64 [V]`` and ``slot int64 [V]``.
    """
    face = np.full(n_verts, -1, dtype=np.int64)
    slot = np.zeros(n_verts, dtype=np.int64)
    for r in range(3):
        face[faces[:, r]] = np.arange(len(faces))
        slot[faces[:, r]] = r
    return face, slot


def prepare_frame(verts: np.ndarray, faces: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                  weights: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig,
                  tokenizer: SkeletonTokenizer, augment: bool = True) -> FrameSample:
    """Normalize, augment and sample one frame.

    Args:
        verts: float ``[V, 3]`` the frame's vertices; faces: int ``[F, 3]``.
        joints: float ``[J, 3]`` the frame's joints; parents: int ``[J]`` (single root).
        weights: float ``[V, J]`` ground-truth skinning.
        rng: source of the augmentation and the sampling.
        augment: random rotation about Y, scale and shift jitter (off for validation).
    Raises:
        TokenizerError: the skeleton cannot be tokenized (e.g. too many joints).
    """
    verts = np.asarray(verts, dtype=np.float64)
    joints = np.asarray(joints, dtype=np.float64)
    if augment and cfg.rotate_up:
        rot = rotation_about_up(rng.uniform(0.0, 2.0 * math.pi))
        verts, joints = verts @ rot.T, joints @ rot.T
    box = AnchorBox.fit(verts)
    verts, joints = box.apply(verts).astype(np.float64), box.apply(joints).astype(np.float64)
    if augment:
        scale = rng.uniform(*cfg.scale_jitter)
        verts, joints = verts * scale, joints * scale
        lo, hi = verts.min(0), verts.max(0)
        low = np.maximum(-0.5 - lo, -cfg.shift_jitter)
        high = np.minimum(0.5 - hi, cfg.shift_jitter)
        shift = rng.uniform(np.minimum(low, high), np.maximum(low, high))
        verts, joints = verts + shift, joints + shift
    verts = verts.astype(np.float32)
    joints = joints.astype(np.float32)
    tokens = tokenizer.encode(joints, parents)
    # One sampling pass for everything: N shape points, Q/2 surface queries and Q/2 mesh vertices
    # (a vertex is the sample at a corner of one of its faces, so it gets its vertex normal).
    n_vert = cfg.n_query // 2
    n_surf = cfg.n_query - n_vert
    surf = sample_surface(verts, faces, cfg.n_points + n_surf, seed=int(rng.integers(2**31)))
    corner_face, corner_slot = vertex_corners(faces, len(verts))
    usable = np.flatnonzero(corner_face >= 0)
    vidx = usable[rng.choice(len(usable), size=n_vert, replace=len(usable) < n_vert)]
    bary = np.zeros((n_vert, 3), np.float32)
    bary[np.arange(n_vert), corner_slot[vidx]] = 1.0
    samples = SurfaceSamples(np.concatenate([surf.face_index, corner_face[vidx]]),
                             np.concatenate([surf.barycentric, bary]))
    pts, nrm = points_on_frames(verts, faces, samples)
    points, normals = pts[:cfg.n_points], nrm[:cfg.n_points]
    weights = np.asarray(weights, dtype=np.float32)
    q_samples = SurfaceSamples(surf.face_index[cfg.n_points:], surf.barycentric[cfg.n_points:])
    q_w = np.concatenate([barycentric_interpolate(weights, faces, q_samples), weights[vidx]], axis=0)
    q_w = q_w / np.maximum(q_w.sum(1, keepdims=True), 1e-12)
    query = np.concatenate([pts[cfg.n_points:], nrm[cfg.n_points:]], axis=1).astype(np.float32)
    return FrameSample(points, normals, tokens, joints, np.asarray(parents, dtype=np.int64), query,
                       q_w.astype(np.float32))


def collate_skeleton(samples: list[FrameSample], tokenizer: SkeletonTokenizer, device) -> dict[str, torch.Tensor]:
    """Batch for the generator: ``points, normals [B, N, 3]``, ``tokens [B, L]`` (PAD-padded) and the
    ground-truth ``joints [B, J, 3]`` with ``joint_valid [B, J]`` (targets of the dense joint votes)."""
    padded = pad_skeletons([s.joints for s in samples], [s.parents for s in samples])
    return {
        "points": torch.from_numpy(np.stack([s.points for s in samples])).to(device),
        "normals": torch.from_numpy(np.stack([s.normals for s in samples])).to(device),
        "tokens": torch.from_numpy(tokenizer.pad_batch([s.tokens for s in samples])).to(device),
        "joints": torch.from_numpy(padded["joints"]).to(device),
        "joint_valid": torch.from_numpy(padded["valid"]).to(device),
    }


def skeleton_batch_loss(model, batch: dict[str, torch.Tensor], pad_id: int, vote_weight: float,
                        autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Pretraining loss of the generator on one batch from :func:`collate_skeleton`.

    The teacher-forced token cross-entropy (Eq. 1); for the ``local`` design plus ``vote_weight`` times
    the dense joint-vote loss (:func:`~backend.models.local_encoder.joint_vote_loss`).

    Args:
        model: the generator (or its DDP wrapper).
    Returns:
        ``(loss, logits [B, L, vocab], parts)`` where ``parts`` holds ``skeleton_ce`` and, for the
        ``local`` design, ``vote_loss`` (floats).
    """
    with autocast():
        logits, context = model(batch["points"], batch["normals"], batch["tokens"], return_context=True)
    loss = skeleton_token_loss(logits, batch["tokens"], pad_id)
    parts = {"skeleton_ce": float(loss.detach())}
    if isinstance(context, PointContext):
        target_off, target_dist = joint_vote_targets(batch["points"], batch["joints"], batch["joint_valid"],
                                                     context.offsets.shape[2])
        vote = joint_vote_loss(context.offsets, context.distances, target_off, target_dist)
        loss = loss + vote_weight * vote
        parts["vote_loss"] = float(vote.detach())
    return loss, logits, parts


def collate_skinning(samples: list[FrameSample], device) -> dict[str, torch.Tensor]:
    """Batch for H_phi with joints padded to the largest skeleton (``valid`` marks real joints)."""
    padded = pad_skeletons([s.joints for s in samples], [s.parents for s in samples])
    target = pad_joint_columns([s.query_weights for s in samples], padded["joints"].shape[1])
    shape = np.concatenate([np.stack([s.points for s in samples]), np.stack([s.normals for s in samples])], -1)
    t = {"query": np.stack([s.query for s in samples]), "shape": shape, **padded, "target": target}
    return {k: torch.from_numpy(v).to(device) for k, v in t.items()}


class FrameSampler:
    """Draws training frames from a corpus split; the frames of step ``t`` depend only on (seed, rank, t).

    Records are chosen per block of ``frames_per_record`` steps and reused inside the block with
    fresh frames and augmentation, so a small in-memory cache absorbs most loading.
    """

    def __init__(self, corpus, split: str, cfg: PretrainConfig, tokenizer: SkeletonTokenizer,
                 rank: int = 0, world: int = 1):
        self.corpus, self.cfg, self.tokenizer = corpus, cfg, tokenizer
        self.ids = [int(i) for i in corpus.indices(split)]
        if not self.ids:
            raise RuntimeError(f"corpus {getattr(corpus, 'root', '')} has no '{split}' records; run the data stage")
        self.rank, self.world = rank, world
        self.cache: OrderedDict[int, object] = OrderedDict()
        self.bad: set[int] = set()

    def record(self, index: int):
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        rec = self.corpus.load(index)
        self.cache[index] = rec
        while len(self.cache) > self.cfg.record_cache:
            self.cache.popitem(last=False)
        return rec

    def sample(self, index: int, frame: int | None, rng: np.random.Generator, augment: bool) -> FrameSample:
        rec = self.record(index)
        k = int(rng.integers(rec.verts.shape[0])) if frame is None else frame
        s = prepare_frame(rec.verts[k], rec.faces, rec.joints[k], rec.parents, rec.weights, rng, self.cfg,
                          self.tokenizer, augment=augment)
        s.record, s.frame = index, k
        return s

    def batch(self, step: int, size: int) -> list[FrameSample]:
        block = step // max(1, self.cfg.frames_per_record)
        out = []
        for b in range(size):
            pick = np.random.default_rng([self.cfg.seed, self.rank, self.world, block, b])
            rng = np.random.default_rng([self.cfg.seed, self.rank, self.world, step, b, 1])
            for attempt in range(50):
                index = self.ids[int(pick.integers(len(self.ids)))]
                if index in self.bad:
                    continue
                try:
                    out.append(self.sample(index, None, rng, augment=True))
                    break
                except TokenizerError as exc:
                    log.warning("skipping corpus record %d: %s", index, exc)
                    self.bad.add(index)
            else:
                raise RuntimeError("could not draw a usable training frame in 50 attempts")
        return out


class StepBatches(torch.utils.data.IterableDataset):
    """Collated training batches for steps ``start .. end - 1`` (CPU tensors), in step order."""

    def __init__(self, sampler: FrameSampler, start: int, end: int, cfg: PretrainConfig):
        super().__init__()
        self.sampler, self.start, self.end, self.cfg = sampler, start, end, cfg

    def __iter__(self):
        cfg, tk = self.cfg, self.sampler.tokenizer
        for step in range(self.start, self.end):
            samples = self.sampler.batch(step, max(cfg.skeleton_batch, cfg.skinning_batch))
            yield (collate_skeleton(samples[:cfg.skeleton_batch], tk, "cpu"),
                   collate_skinning(samples[:cfg.skinning_batch], "cpu"))


def batch_stream(sampler: FrameSampler, start: int, end: int, cfg: PretrainConfig):
    """Iterator over the batches of steps ``start .. end - 1``; with ``cfg.data_workers > 0`` they
    are prepared in a background process while the models train."""
    data = StepBatches(sampler, start, end, cfg)
    if cfg.data_workers <= 0:
        return iter(data)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=4)
    return iter(loader)


def validation_frames(sampler: FrameSampler, corpus, cfg: PretrainConfig) -> list[FrameSample]:
    """Fixed, un-augmented validation frames from the ``val`` split (``test`` if there is none)."""
    split = "val" if len(corpus.indices("val")) else "test"
    ids = [int(i) for i in corpus.indices(split)]
    if not ids:
        log.warning("corpus has no val/test records; validation is skipped")
        return []
    rng = np.random.default_rng([cfg.seed, 12345])
    frames = []
    for i in range(cfg.n_val_frames * 3):
        if len(frames) == cfg.n_val_frames:
            break
        index = ids[i % len(ids)] if i < len(ids) else ids[int(rng.integers(len(ids)))]
        rec = sampler.record(index)
        k = int(rng.integers(rec.verts.shape[0]))
        try:
            frames.append(sampler.sample(index, k, rng, augment=False))
        except TokenizerError as exc:
            log.warning("validation: skipping record %d: %s", index, exc)
    return frames


# ---- optimisation -------------------------------------------------------------------------------------

def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


@torch.no_grad()
def validate(skel: SkeletonGenerator, skin: SkinningNetwork, frames: list[FrameSample],
             tokenizer: SkeletonTokenizer, device, batch: int, n_generate: int, autocast) -> dict:
    """Skeleton metrics of :func:`validate_skeleton` and skinning KL / L1 / precision / recall."""
    out = validate_skeleton(skel, frames, tokenizer, device, batch, n_generate, autocast)
    skin.eval()
    kl, l1, prec, rec = [], [], [], []
    for s in range(0, len(frames), batch):
        chunk = frames[s:s + batch]
        kb = collate_skinning(chunk, device)
        with autocast():
            lg = skin(kb["query"], kb["shape"], kb["joints"], kb["parents"], kb["valid"], kb["tree_dist"],
                      return_logits=True)
        kl.append(skinning_kl_loss(lg, kb["target"]).item())
        w = torch.softmax(lg.float(), -1).cpu().numpy()
        for b, fs in enumerate(chunk):
            n = len(fs.parents)
            q = static_skinning_quality(w[b, :, :n], fs.query_weights)
            prec.append(q.precision), rec.append(q.recall), l1.append(q.avg_l1)
    out.update({"val_skinning_kl": float(np.mean(kl)), "val_skin_precision": float(np.nanmean(prec)),
                "val_skin_recall": float(np.nanmean(rec)), "val_skin_l1": float(np.mean(l1))})
    skin.train()
    return out


@torch.no_grad()
def validate_skeleton(skel: SkeletonGenerator, frames: list[FrameSample], tokenizer: SkeletonTokenizer, device,
                      batch: int, n_generate: int, autocast=nullcontext) -> dict:
    """Generator validation on fixed frames.

    Teacher-forced: ``val_skeleton_ce``, ``val_token_acc`` (all targets), ``val_coord_acc`` (coordinate
    bins only); ``local`` design: ``val_proposal_count_err`` (joint proposals vs ground-truth joints)
    and ``val_proposal_cd_j2j`` (over the frames with at least one proposal; absent if none has). Greedy
    decodes of the first ``n_generate`` frames: ``val_cd_j2j``, ``val_cd_b2b``, ``val_joint_count_err``
    (the model's own coordinate decoding, ``cfg.decode_coordinates``); ``local`` design: the same for every
    coordinate decoding, ``val_free_*``, ``val_proposals_*``, ``val_proposals-then-free_*`` and ``val_all-proposals_*``.
    """
    skel.eval()
    ce, acc, coord_acc, prop_cd, prop_err = [], [], [], [], []
    for s in range(0, len(frames), batch):
        chunk = frames[s:s + batch]
        sb = collate_skeleton(chunk, tokenizer, device)
        with autocast():
            logits, context = skel(sb["points"], sb["normals"], sb["tokens"], return_context=True)
        ce.append(skeleton_token_loss(logits, sb["tokens"], tokenizer.pad).item())
        tgt = sb["tokens"][:, 1:]
        mask = tgt != tokenizer.pad
        hit = (logits[:, :-1].argmax(-1) == tgt) & mask
        acc.append(hit.sum().item() / mask.sum().item())
        is_coord = tgt < tokenizer.n_disc
        coord_acc.append((hit & is_coord).sum().item() / max(1, is_coord.sum().item()))
        if isinstance(context, PointContext):
            for b, fs in enumerate(chunk):
                keep = context.proposal_weight[b] > 0
                n_prop = int(keep.sum())
                prop_err.append(abs(n_prop - len(fs.parents)))
                if n_prop:
                    prop_cd.append(cd_j2j(context.proposals[b][keep].cpu().numpy(), fs.joints))
    out = {"val_skeleton_ce": float(np.mean(ce)), "val_token_acc": float(np.mean(acc)),
           "val_coord_acc": float(np.mean(coord_acc))}
    if prop_err:
        out["val_proposal_count_err"] = float(np.mean(prop_err))
    if prop_cd:  # over the frames that have proposals
        out["val_proposal_cd_j2j"] = float(np.mean(prop_cd))
    gen_frames = frames[:n_generate]
    if gen_frames:
        pts = torch.from_numpy(np.stack([f.points for f in gen_frames])).to(device)
        nrm = torch.from_numpy(np.stack([f.normals for f in gen_frames])).to(device)
        decodings = COORDINATE_DECODINGS if skel.cfg.design == "local" else ("free",)
        for coordinates in decodings:
            j2j, b2b, jerr = [], [], []
            for s in range(0, len(gen_frames), batch):
                decoded = skel.generate(pts[s:s + batch], nrm[s:s + batch], coordinates=coordinates)
                for (pj, pp), f in zip(decoded, gen_frames[s:s + batch]):
                    qm = static_skeleton_quality(pj, f.joints, pp, f.parents)
                    j2j.append(qm.cd_j2j), b2b.append(qm.cd_b2b), jerr.append(abs(len(pp) - len(f.parents)))
            scores = {"cd_j2j": float(np.mean(j2j)), "cd_b2b": float(np.mean(b2b)),
                      "joint_count_err": float(np.mean(jerr))}
            if coordinates == skel.cfg.decode_coordinates:
                out.update({f"val_{k}": v for k, v in scores.items()})
            if len(decodings) > 1:
                out.update({f"val_{coordinates}_{k}": v for k, v in scores.items()})
    skel.train()
    return out


# ---- the stage ------------------------------------------------------------------------------------------

def git_commit() -> dict:
    """Commit hash and whether the working tree differs from it, untracked files included
    (``unknown`` outside a checkout)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": sha or "unknown", "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed when launched by torchrun (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
    return rank, world, dev


# ---- warm start from exported base checkpoints -------------------------------------------------------

BASE_FILES = {"skeleton_base": "skeleton_generator", "skinning_base": "skinning_network"}

# Preset fields that only change bookkeeping (threads, logging, validation, state cadence, data
# loading), not the weights a step produces; they may differ between the exporting and the continuing run.
BOOKKEEPING_FIELDS = frozenset({
    "num_threads", "pretrain.data_workers", "pretrain.record_cache", "pretrain.log_every", "pretrain.val_every",
    "pretrain.ckpt_every", "pretrain.n_val_frames", "pretrain.n_val_generate",
})
# Skeleton-generator fields set after pretraining by the count-head stage (``training/count_head.py``); a
# continued pretraining drops the fitted head (its weights are ``COUNT_HEAD_PREFIX*``) and the stage fits it again.
FITTED_AFTER_FIELDS = frozenset({"count_head", "count_min_mass"})
COUNT_HEAD_PREFIX = "count_head."


@dataclass
class WarmStartConfig:
    """How pretraining continues from exported base checkpoints when ``pretrain/state.pt`` is missing.

    Attributes:
        init_from: folder holding ``skeleton_base.safetensors`` and ``skinning_base.safetensors`` to
            continue from; when set, only this folder is used and any problem with it is an error.
        search: with ``init_from`` unset, look in ``workdir/checkpoints`` and then in ``repo_dir``.
        repo_dir: the repository's committed checkpoints (``<repo>/checkpoints``); ``None`` skips it.
        rewarmup_steps: length of the linear learning-rate re-warm-up after a warm start (the optimizer
            moments are not in the exported files and restart from zero); capped at each optimizer's
            ``warmup_steps``.
    """

    init_from: Path | None = None
    search: bool = True
    repo_dir: Path | None = field(default_factory=lambda: REPO / "checkpoints")
    rewarmup_steps: int = 200

    def __post_init__(self) -> None:
        if self.rewarmup_steps < 0:
            raise ValueError(f"rewarmup_steps must be >= 0, got {self.rewarmup_steps}")


class WarmStartError(RuntimeError):
    """Exported checkpoints exist for this preset but cannot be continued (mismatch, inconsistency)."""


@dataclass
class BaseCheckpoints:
    """A verified pair of exported base checkpoints.

    Attributes:
        folder: where they were found.
        tensors: ``{"skeleton_base" | "skinning_base": {name: tensor}}`` (CPU, sha256 verified).
        infos: the files' metadata, same keys.
        step: the training step they were exported at; complete: whether that was the last step.
    """

    folder: Path
    tensors: dict[str, dict[str, torch.Tensor]]
    infos: dict[str, CheckpointInfo]
    step: int
    complete: bool


def config_differences(saved, current, prefix: str = "", defaults=None) -> list[str]:
    """Dotted paths where two JSON-like configs differ, as ``"path: saved -> current"`` lines.

    ``defaults`` (same layout, optional) holds the code's default of every field: a field absent
    from ``saved`` whose current value is its default is no difference (the saved config predates
    the field, and the default reproduces what the older code did).
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            path = f"{prefix}.{key}" if prefix else str(key)
            default = defaults.get(key, "<no default>") if isinstance(defaults, dict) else "<no default>"
            if key not in saved and key in current and current[key] == default:
                continue
            if key not in saved or key not in current:
                out.append(f"{path}: {saved.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}")
            else:
                out.extend(config_differences(saved[key], current[key], path,
                                              defaults.get(key) if isinstance(defaults, dict) else None))
        return out
    return [] if saved == current else [f"{prefix}: {saved!r} -> {current!r}"]


def rewarm_factor(step: int, start: int, n_steps: int) -> float:
    """Learning-rate multiplier ``min(1, (step - start + 1) / n_steps)`` after a warm start at ``start``
    (1 when ``n_steps <= 0``)."""
    if n_steps <= 0:
        return 1.0
    return min(1.0, max(0, step - start + 1) / n_steps)


def read_base_checkpoints(folder: Path, P: Preset, explicit: bool) -> BaseCheckpoints | None:
    """Read and check the exported base checkpoints in ``folder`` against the preset ``P``.

    Returns ``None`` when the folder is not a candidate (files absent, or another preset) and
    ``explicit`` is false; with ``explicit`` these are errors too.

    Raises:
        WarmStartError: missing file (explicit), wrong stage or model kind, a pair exported at different
            steps, or a preset/model configuration that differs from ``P``.
        CheckpointError: a corrupt or modified file (sha256 mismatch).
    """
    paths = {name: folder / f"{name}.safetensors" for name in BASE_FILES}
    present = [n for n, p in paths.items() if p.is_file()]
    if len(present) < len(paths):
        missing = [str(p) for n, p in paths.items() if n not in present]
        if explicit:
            raise WarmStartError(f"--init-from {folder}: missing {', '.join(missing)}")
        if present:
            log.warning("%s holds only %s (missing %s); not continuing from it", folder, present, missing)
        return None
    tensors, infos = {}, {}
    for name, path in paths.items():
        tensors[name], infos[name] = read_checkpoint(path)  # verifies the sha256
    current_cfg = json.loads(json.dumps(P.to_dict()))  # tuples -> lists, as stored
    default_cfg = json.loads(json.dumps(Preset(name=P.name).to_dict()))  # every field at its code default
    for name, info in infos.items():
        prov = info.provenance
        if info.stage != "pretrain":
            raise WarmStartError(f"{info.path}: stage {info.stage!r}, expected 'pretrain'; only pretraining "
                                 "exports can be continued")
        if info.model != BASE_FILES[name]:
            raise WarmStartError(f"{info.path}: holds a {info.model}, expected a {BASE_FILES[name]}")
        if prov.get("preset") != P.name:
            msg = f"{info.path} belongs to preset {prov.get('preset')!r}, not {P.name!r}"
            if explicit:
                raise WarmStartError(msg)
            log.info("%s; not continuing from it", msg)
            return None
        if "step" not in prov or "complete" not in prov or "preset_config" not in prov:
            raise WarmStartError(f"{info.path}: provenance lacks step/complete/preset_config; cannot continue it")
        diffs = [d for d in config_differences(prov["preset_config"], current_cfg, defaults=default_cfg)
                 if d.split(":", 1)[0] not in BOOKKEEPING_FIELDS]
        if not diffs:  # the model config is part of the preset config; check the file's own copy too
            model_cfg = json.loads(json.dumps((P.skeleton if name == "skeleton_base" else P.skinning).to_dict()))
            diffs = [f"model config {d}" for d in config_differences(
                info.config, model_cfg, defaults=default_cfg["skeleton" if name == "skeleton_base" else "skinning"])
                if d.split(":", 1)[0] not in FITTED_AFTER_FIELDS]
        if diffs:
            raise WarmStartError(
                f"{info.path} was trained with a different configuration of preset {P.name!r} "
                f"(saved -> current): {'; '.join(diffs[:8])}{' ...' if len(diffs) > 8 else ''}. Continuing it "
                "would mix two trainings: restore that configuration, pass --init-from with matching files, or "
                "start fresh with --no-warm-start in another workdir")
    steps = {name: int(info.provenance["step"]) for name, info in infos.items()}
    completes = {name: bool(info.provenance["complete"]) for name, info in infos.items()}
    if len(set(steps.values())) != 1 or len(set(completes.values())) != 1:
        raise WarmStartError(f"{folder}: the two base checkpoints come from different exports (steps {steps}, "
                             f"complete {completes}); copy both files of one export")
    return BaseCheckpoints(folder=folder, tensors=tensors, infos=infos, step=next(iter(steps.values())),
                           complete=next(iter(completes.values())))


def find_base_checkpoints(P: Preset, workdir: Path, ws: WarmStartConfig) -> BaseCheckpoints | None:
    """The exported base checkpoints to continue from: ``ws.init_from`` if set, else the first usable
    pair in ``workdir/checkpoints`` then ``ws.repo_dir``; ``None`` if there is none."""
    if ws.init_from is not None:
        folder = Path(ws.init_from)
        if not folder.is_dir():
            raise WarmStartError(f"--init-from {folder}: not a folder")
        return read_base_checkpoints(folder, P, explicit=True)
    if not ws.search:
        return None
    seen: set[Path] = set()
    for folder in (workdir / "checkpoints", ws.repo_dir):
        if folder is None or not Path(folder).is_dir() or Path(folder).resolve() in seen:
            continue
        seen.add(Path(folder).resolve())
        found = read_base_checkpoints(Path(folder), P, explicit=False)
        if found is not None:
            return found
    return None


def _leave_complete(base: BaseCheckpoints, ckpt_dir: Path, rank: int, world: int) -> dict:
    """Complete exported checkpoints and no ``state.pt``: nothing to train. Files found outside
    ``ckpt_dir`` are copied there (byte for byte, only where absent) so the next stages find them."""
    paths = {}
    if rank == 0:
        log.info("pretraining of preset %s is complete in %s (step %d, sha256 skeleton %s..., skinning %s...): "
                 "nothing to do", base.infos["skeleton_base"].provenance.get("preset"), base.folder, base.step,
                 base.infos["skeleton_base"].sha256[:12], base.infos["skinning_base"].sha256[:12])
        for name, info in base.infos.items():
            dst = ckpt_dir / f"{name}.safetensors"
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(info.path, dst)
                log.info("copied %s to %s", info.path, dst)
            paths[name] = str(dst)
    if world > 1:
        dist.barrier()
    return {"step": base.step, "complete": True, "validation": base.infos["skeleton_base"].provenance.get(
        "validation", {}), "checkpoints": paths}


def run_stage(preset: str | Preset, workdir: Path, device: str = "auto", stop_after: int | None = None,
              warm_start: WarmStartConfig | None = None, minutes: float | None = None, **overrides) -> dict:
    """Pretrain both models; resumes from ``workdir/pretrain/state.pt`` when it exists, else warm-starts
    from exported base checkpoints of the same preset when there are incomplete ones (see
    :class:`WarmStartConfig`), else starts from scratch. Complete exported checkpoints are left alone.

    Args:
        preset: preset name (``smoke`` / ``default`` / ``large``) or a :class:`Preset`.
        workdir: run folder; the corpus is read from ``workdir/corpus``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        stop_after: stop after this many steps as if killed (resume tests); the run stays incomplete.
        minutes: wall-clock budget of this invocation: once it is spent, validate, export and save the
            resumable state at the current step, and return (the run stays incomplete; call again to go on).
            The learning-rate schedule still follows the preset's step count.
        warm_start: where to look for exported checkpoints when there is no ``state.pt`` (default:
            ``workdir/checkpoints``, then the repository's ``checkpoints/``).
        **overrides: :class:`PretrainConfig` fields to change (e.g. ``steps=10``).
    Returns:
        the last validation metrics and paths of the exported checkpoints.
    Raises:
        WarmStartError: exported checkpoints of this preset exist but do not match its configuration.
    """
    from training.data.corpus import Corpus

    P = get_preset(preset, **overrides) if isinstance(preset, str) else preset
    cfg = P.pretrain
    workdir = Path(workdir)
    rank, world, dev = setup_distributed(device)
    if P.num_threads > 0:
        torch.set_num_threads(P.num_threads)
    out_dir, ckpt_dir = workdir / "pretrain", workdir / "checkpoints"
    state_path, log_path = out_dir / "state.pt", out_dir / "log.jsonl"
    base = None if state_path.is_file() else find_base_checkpoints(P, workdir, warm_start or WarmStartConfig())
    if base is not None and base.complete:
        return _leave_complete(base, ckpt_dir, rank, world)
    corpus_root = workdir / "corpus"
    corpus = Corpus(corpus_root)
    tokenizer = P.skeleton.tokenizer
    torch.manual_seed(cfg.seed)
    skel, skin = SkeletonGenerator(P.skeleton).to(dev), SkinningNetwork(P.skinning).to(dev)
    opt_skel, opt_skin = make_optimizer(skel, P.skeleton_optim), make_optimizer(skin, P.skinning_optim)
    step, history = 0, []
    warm: dict | None = None  # where a warm start came from; travels in state.pt and in the exports
    if state_path.is_file():
        state = load_training_state(state_path, map_location=dev)
        if state.get("preset") != P.name:
            raise RuntimeError(f"{state_path} belongs to preset {state.get('preset')!r}, not {P.name!r}; "
                               "use another workdir or delete it")
        if state.get("design", "perceiver") != P.skeleton.design:  # states from before the switch: perceiver
            raise RuntimeError(f"{state_path} holds a {state.get('design', 'perceiver')!r} skeleton generator, not "
                               f"{P.skeleton.design!r}; use another workdir or delete it")
        skel.load_state_dict(state["skeleton"]), skin.load_state_dict(state["skinning"])
        opt_skel.load_state_dict(state["opt_skeleton"]), opt_skin.load_state_dict(state["opt_skinning"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step, history = int(state["step"]), json.loads(state.get("history", "[]"))
        if "warm_start" in state:
            warm = json.loads(state["warm_start"])
        if rank == 0:
            log.info("resuming pretraining from step %d of %d (%s)", step, cfg.steps, state_path)
    elif base is not None:
        for name, model in (("skeleton_base", skel), ("skinning_base", skin)):
            tensors = {k: v for k, v in base.tensors[name].items()
                       if not k.startswith(COUNT_HEAD_PREFIX) or k in model.state_dict()}
            if len(tensors) < len(base.tensors[name]) and rank == 0:
                log.info("%s: its fitted joint-count head is dropped (training/count_head.py fits it again after "
                         "pretraining)", base.infos[name].path)
            try:
                model.load_state_dict(tensors)
            except RuntimeError as exc:
                raise WarmStartError(f"{base.infos[name].path}: weights do not fit the {P.name!r} model: "
                                     f"{exc}") from exc
        step = base.step
        ws = warm_start or WarmStartConfig()
        warm = {"step": step, "rewarmup_steps": int(ws.rewarmup_steps), "folder": str(base.folder),
                "sources": {name: {"file": str(info.path), "step": step, "sha256": info.sha256}
                            for name, info in base.infos.items()}}
        if rank == 0:
            log.warning("no %s: warm-starting pretraining from step %d of %d with the weights exported to %s "
                        "(sha256 skeleton %s..., skinning %s...)", state_path, step, cfg.steps, base.folder,
                        base.infos["skeleton_base"].sha256[:12], base.infos["skinning_base"].sha256[:12])
            log.warning("the optimizer moments are not stored in exported checkpoints: AdamW restarts from zero "
                        "moments, and the learning rate re-warms linearly over %d steps (skeleton) / %d steps "
                        "(skinning) onto the cosine schedule at step %d", min(ws.rewarmup_steps,
                        P.skeleton_optim.warmup_steps), min(ws.rewarmup_steps, P.skinning_optim.warmup_steps), step)
    n_skel = sum(p.numel() for p in skel.parameters())
    n_skin = sum(p.numel() for p in skin.parameters())
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("pretrain preset %s on %s x%d: skeleton %.2f M params, skinning %.2f M params, %d steps",
                 P.name, dev, world, n_skel / 1e6, n_skin / 1e6, cfg.steps)
    skel_m = DDP(skel) if world > 1 else skel
    skin_m = DDP(skin) if world > 1 else skin
    use_amp = P.amp and dev.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    sampler = FrameSampler(corpus, "train", cfg, tokenizer, rank, world)
    val_frames = validation_frames(sampler, corpus, cfg) if rank == 0 else []
    provenance = {"preset": P.name, "total_steps": cfg.steps, "corpus": str(corpus_root),
                  "corpus_train_records": len(sampler.ids), "world_size": world, "device": dev.type,
                  "torch": torch.__version__, "skeleton_params": n_skel, "skinning_params": n_skin,
                  "preset_config": P.to_dict(), **git_commit()}
    if warm is not None and rank == 0:
        trained_on = base.infos["skeleton_base"].provenance.get("corpus_train_records") if base is not None else None
        if trained_on is not None and trained_on != len(sampler.ids):
            log.warning("the warm-start weights were trained on a corpus with %s train records; %s has %d "
                        "(regenerated with other settings?)", trained_on, corpus_root, len(sampler.ids))

    def save_state() -> None:
        if rank == 0:
            state = {
                "step": step, "preset": P.name, "design": P.skeleton.design, "skeleton": skel.state_dict(),
                "skinning": skin.state_dict(),
                "opt_skeleton": opt_skel.state_dict(), "opt_skinning": opt_skin.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": json.dumps(history)}
            if warm is not None:
                state["warm_start"] = json.dumps(warm)
            save_training_state(state_path, state)

    exported = {"step": -1, "paths": {}}

    def export(metrics: dict) -> dict:
        if exported["step"] == step:
            return exported["paths"]
        paths = {}
        if rank == 0:
            prov = {**provenance, "step": step, "complete": step >= cfg.steps,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "validation": metrics}
            for name, model in (("skeleton_base", skel), ("skinning_base", skin)):
                paths[name] = str(ckpt_dir / f"{name}.safetensors")
                model_prov = prov if warm is None else {**prov, "warm_started_from": warm["sources"][name]}
                save_model(model, paths[name], stage="pretrain", provenance=model_prov)
        exported.update(step=step, paths=paths)
        return paths

    def log_line(entry: dict) -> None:
        history.append(entry)
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    if base is not None and rank == 0:
        log_line({"step": step, "event": "warm_start", "from": warm["folder"], "optimizer_moments": "reset",
                  "rewarmup_steps": warm["rewarmup_steps"]})
    last_val: dict = next((h for h in reversed(history) if "val_skeleton_ce" in h), {})
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain[{P.name}]", disable=rank != 0, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 60.0)  # sparse updates in log files
    t_last, run_loss = time.time(), []
    skel.train(), skin.train()
    batches = batch_stream(sampler, step, end, cfg)
    deadline = None if minutes is None else time.time() + 60.0 * minutes
    out_of_time = False
    while step < end:
        sb, kb = next(batches)
        sb = {k: v.to(dev, non_blocking=True) for k, v in sb.items()}
        kb = {k: v.to(dev, non_blocking=True) for k, v in kb.items()}
        for group, opt in ((opt_skel.param_groups, P.skeleton_optim), (opt_skin.param_groups, P.skinning_optim)):
            lr = lr_at(step, cfg.steps, opt)
            if warm is not None:
                lr *= rewarm_factor(step, warm["step"], min(warm["rewarmup_steps"], opt.warmup_steps))
            for g in group:
                g["lr"] = lr
        loss_skel, _, skel_parts = skeleton_batch_loss(skel_m, sb, tokenizer.pad, cfg.vote_loss_weight, autocast)
        opt_skel.zero_grad(set_to_none=True)
        loss_skel.backward()
        gn_skel = torch.nn.utils.clip_grad_norm_(skel.parameters(), P.skeleton_optim.grad_clip)
        opt_skel.step()
        with autocast():
            lg = skin_m(kb["query"], kb["shape"], kb["joints"], kb["parents"], kb["valid"], kb["tree_dist"],
                        return_logits=True)
        loss_skin = skinning_kl_loss(lg, kb["target"])
        opt_skin.zero_grad(set_to_none=True)
        loss_skin.backward()
        gn_skin = torch.nn.utils.clip_grad_norm_(skin.parameters(), P.skinning_optim.grad_clip)
        opt_skin.step()
        if not (torch.isfinite(loss_skel) and torch.isfinite(loss_skin)):
            raise FloatingPointError(f"non-finite loss at step {step}: skeleton {loss_skel.item()}, "
                                     f"skinning {loss_skin.item()}")
        step += 1
        run_loss.append((skel_parts["skeleton_ce"], loss_skin.item(), skel_parts.get("vote_loss", float("nan"))))
        bar.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            now = time.time()
            ls, lk, lv = np.mean(run_loss, axis=0)
            entry = {"step": step, "skeleton_ce": float(ls), "skinning_kl": float(lk),
                     "lr": opt_skel.param_groups[0]["lr"], "grad_norm_skeleton": float(gn_skel),
                     "grad_norm_skinning": float(gn_skin), "s_per_step": (now - t_last) / len(run_loss)}
            if np.isfinite(lv):
                entry["vote_loss"] = float(lv)
            log_line(entry)
            bar.set_postfix(skel=f"{ls:.3f}", skin=f"{lk:.3f}")
            t_last, run_loss = now, []
        if deadline is not None:
            flag = torch.tensor([float(time.time() >= deadline)], device=dev)
            if world > 1:  # rank 0's clock decides for every rank
                dist.broadcast(flag, src=0)
            out_of_time = bool(flag.item()) and step < end
        if rank == 0 and val_frames and (step % cfg.val_every == 0 or step == cfg.steps or out_of_time):
            last_val = {"step": step, **validate(skel, skin, val_frames, tokenizer, dev, cfg.skeleton_batch,
                                                 cfg.n_val_generate, autocast)}
            log_line(last_val)
            log.info("step %d validation: %s", step, {k: round(v, 4) for k, v in last_val.items() if k != "step"})
            export(last_val)
        if out_of_time:
            export(last_val)  # without validation frames; a no-op when the validation above exported
            log.info("time budget of %.1f minutes spent at step %d of %d: exported and saved; run again to "
                     "continue", minutes, step, cfg.steps)
        if step % cfg.ckpt_every == 0 or step == end or out_of_time:
            save_state()
            if world > 1:
                dist.barrier()
        if out_of_time:
            break
    bar.close()
    paths = {}
    if step >= cfg.steps:
        paths = export(last_val)
        if rank == 0:
            log.info("pretraining complete (%d steps): %s", step, paths)
    if world > 1:
        dist.barrier()
    return {"step": step, "complete": step >= cfg.steps, "validation": last_val, "checkpoints": paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pretrain the base static rigger (stage 1).")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", type=Path, required=True, help="run folder holding corpus/ (e.g. runs/default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads")
    parser.add_argument("--minutes", type=float,
                        help="wall-clock budget: validate, export and save at the step it runs out; run again to go on")
    parser.add_argument("--design", choices=sorted(GENERATOR_DESIGNS),
                        help="skeleton generator design (default: the preset's: local; perceiver for smoke)")
    parser.add_argument("--init-from", type=Path, metavar="DIR",
                        help="without pretrain/state.pt: continue from the exported skeleton_base/skinning_base "
                             "checkpoints in DIR (default: search WORKDIR/checkpoints, then the repository's "
                             "checkpoints/)")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="without pretrain/state.pt: start from scratch even if exported checkpoints exist")
    parser.add_argument("--rewarmup-steps", type=int, default=WarmStartConfig.rewarmup_steps,
                        help="linear learning-rate re-warm-up after a warm start (default: %(default)s, capped "
                             "at the preset's warm-up)")
    args = parser.parse_args(argv)
    if args.init_from is not None and args.no_warm_start:
        parser.error("--init-from and --no-warm-start exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    P = get_preset(args.preset, design=args.design, **({"steps": args.steps} if args.steps else {}))
    if args.num_threads:
        P.num_threads = args.num_threads
    ws = WarmStartConfig(init_from=args.init_from, search=not args.no_warm_start,
                         rewarmup_steps=args.rewarmup_steps)
    result = run_stage(P, args.workdir, args.device, warm_start=ws, minutes=args.minutes)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if result["step"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
