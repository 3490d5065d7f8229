"""Stage 2: SPRig skeleton fine-tuning (paper §3.2-3.4, §5.1, §9; Eq. 2, 3, 8-16).

    python training/run.py --stage sprig-skeleton --preset default
    python -m training.sprig_skeleton --preset smoke --workdir runs/smoke --steps 20
    torchrun --nproc_per_node 4 training/run.py --stage sprig-skeleton --preset large

Self-supervised data (§5.1): for every training clip of the corpus (its labels are ignored) the
frozen base generator decodes an anchor rig on frame 0, which is encoded into the canonical token
sequence ``t_0``; point clouds (xyz + normals) are sampled on frames ``0, s, 2s, .. (K-1)s`` with the
same (face, barycentric) samples on every frame. The generator is fine-tuned with

    L_total = lambda_token L_token + lambda_geom L_geom                                   (§3.4)

* ``L_token`` (Eq. 2) = weighted teacher-forced CE of ``t_0`` on the anchor frame (Eq. 8) and on the
  non-anchor frames (Eq. 9), parent slots weighted by ``alpha``;
* ``L_geom`` (Eq. 3) compares inference-time predictions: every non-anchor frame is greedily decoded
  without gradient, the decoded tokens are re-scored with teacher forcing, and the softmax-expected
  bin centre of every coordinate slot gives differentiable joints. The anchor skeleton is ``t_0``
  with the expected positions of the anchor frame's teacher-forced logits.

The point encoder stays frozen (§9); with the opt-in vote term of a ``local`` base (``lambda_vote``) its vote
head trains too. Outputs under ``workdir``: ``sprig_skeleton/state.pt``
(resumable, atomic), ``sprig_skeleton/log.jsonl``, ``sprig_skeleton/labels.npz`` (pseudo-label
cache) and ``checkpoints/skeleton_sprig.safetensors``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

if __package__ in (None, ""):  # `python training/sprig_skeleton.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.metrics.skeleton_stability import skeleton_stability
from backend.models.checkpoint import load_model
from backend.models.skeleton_generator import COORDINATE_DECODINGS, SkeletonGenerator
from backend.models.tokenizer import SkeletonTokenizer, TokenizerError
from backend.normalize import AnchorBox
from backend.sampling import points_on_frames, sample_surface
from training.losses.skeleton_losses import (GeometryLossConfig, anchor_token_loss, batch_geometry_loss,
                                             expected_joint_positions, local_rotations, shift_for_next_token,
                                             skeleton_total_loss, symmetric_token_loss, token_loss,
                                             vote_consistency_loss)
from training.presets import get_preset
from training.pretrain import git_commit, setup_distributed
from training.stage_utils import (StageBookkeeping, autocast_factory, finetune_provenance, mean_log_entry,
                                  stage_config)

log = logging.getLogger(__name__)


# ---- configuration ---------------------------------------------------------------------------------

@dataclass
class SprigSkeletonConfig:
    """Fine-tuning settings (paper §9 where it gives a value).

    Attributes:
        n_frames: K, frames per clip: the anchor and K-1 others (paper: 3).
        frame_stride: spacing of those frames in the clip (paper: 1, consecutive frames).
        sym_frames: size of the random subset ``K`` of non-anchor frames used by Eq. 9 per step
            (None: all K-1).
        n_points: surface samples per frame (the base model's pretraining value when None).
        batch_size: clips per step (per process).
        steps: optimizer steps.
        lr, weight_decay, grad_clip: AdamW (paper: lr 3e-6 for Puppeteer).
        alpha: parent-slot weight (paper: 3.0; the ablation uses 1.0).
        lambda_anchor, lambda_sym: Eq. 2 weights (paper: lambda_sym = 1).
        lambda_token, lambda_geom: §3.4 weights (paper: lambda_geom = 0.5).
        no_token, no_geom: ablations (2) and (1) of Table 2.
        geom: Eq. 3 / 13-16 settings.
        geom_every: compute L_geom every this many steps (decoding is the costly part).
        geom_anchor: the anchor skeleton of Eq. 3: ``"predicted"`` (the topology of ``t_0`` with the
            expected positions of the anchor frame's teacher-forced logits, differentiable) or
            ``"label"`` (the bin centres of ``t_0``, a constant target).
        max_joints: joint limit for pseudo-labels and decoding.
        min_joint_ratio: collapse guard. A validation whose decoded skeletons have fewer joints on average
            than this fraction of the anchor pseudo-labels' (the base's own skeletons) is a collapse:
            that step is not exported, and the stage fails if no validated step passes.
        decode_coordinates: ``local`` base only: the fine-tuned model's coordinate decoding (saved in its
            checkpoint; used by validation, the decodes of ``L_geom`` and everything that loads it). None
            (default) keeps the base's (``all-proposals``: every kept vote cluster becomes a joint, so the
            joint count comes from the votes and the count head). ``proposals-then-free`` lets the decoder
            stop where ``t_0`` stops; on the shipped base it emits 0.80x the base's joints before any
            training, which the collapse guard refuses (``docs/sprig_training.md``).
        lambda_vote: ``local`` base only: weight of the vote consistency term
            (:func:`training.losses.skeleton_losses.vote_consistency_loss`): every frame's per-point joint
            votes pulled toward the base's anchor votes carried by the surface's local motion. The joints of
            a ``local`` model are clusters of these votes, so this is where their frame-to-frame
            consistency is decided; the token losses only choose among the clusters. 0 (default): off; on the
            shipped base it did not make the votes steadier (``docs/sprig_training.md``).
        vote_lr: learning rate of the vote head (the encoder's dense head, trained when ``lambda_vote > 0``
            even with ``freeze_encoder``), and of the whole encoder when it is not frozen.
        vote_neighbours: anchor neighbours of each sample whose motion gives its local rotation.
        freeze_encoder: keep the point encoder frozen (§9); with ``lambda_vote > 0`` its dense (vote) head
            still trains.
        max_train_clips, n_val_clips: clip counts (None: all training clips).
        val_every, ckpt_every, log_every: steps.
        seed: sampling seed.
        base_checkpoint, out_checkpoint: paths relative to the workdir.
        state_dir: folder of the resumable state, log and label cache, relative to the workdir.
    """

    n_frames: int = 3
    frame_stride: int = 1
    sym_frames: int | None = None
    n_points: int | None = None
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    alpha: float = 3.0
    lambda_anchor: float = 1.0
    lambda_sym: float = 1.0
    lambda_token: float = 1.0
    lambda_geom: float = 0.5
    no_token: bool = False
    no_geom: bool = False
    geom: GeometryLossConfig = field(default_factory=GeometryLossConfig)
    geom_every: int = 1
    geom_anchor: str = "predicted"
    max_joints: int = 64
    min_joint_ratio: float = 0.9
    decode_coordinates: str | None = None
    lambda_vote: float = 0.0
    vote_lr: float = 1e-4
    vote_neighbours: int = 16
    freeze_encoder: bool = True
    max_train_clips: int | None = None
    n_val_clips: int = 16
    val_every: int = 250
    ckpt_every: int = 100
    log_every: int = 20
    seed: int = 0
    base_checkpoint: str = "checkpoints/skeleton_base.safetensors"
    out_checkpoint: str = "checkpoints/skeleton_sprig.safetensors"
    state_dir: str = "sprig_skeleton"

    def to_dict(self) -> dict:
        return asdict(self)


STAGE_PRESETS: dict[str, dict] = {
    "smoke": dict(steps=6, batch_size=2, n_frames=3, max_train_clips=4, n_val_clips=2, val_every=3, ckpt_every=2,
                  log_every=1, max_joints=12, lr=1e-4,
                  min_joint_ratio=0.0),  # a few steps on an untrained tiny base: joint counts are noise
    "default": dict(steps=300, batch_size=8, lr=1e-5, geom_every=4, val_every=100),
    "large": dict(steps=20000, batch_size=20, lr=3e-6, val_every=1000, ckpt_every=500, log_every=50,
                  n_val_clips=64),
}


def make_config(preset: str, **overrides) -> SprigSkeletonConfig:
    """The stage config of a preset, with field overrides (``geom`` may be a dict of its fields)."""
    cfg = stage_config(SprigSkeletonConfig, STAGE_PRESETS, preset, overrides, "sprig-skeleton",
                       nested={"geom": GeometryLossConfig})
    if cfg.no_token and cfg.no_geom:
        raise ValueError("no_token and no_geom together leave nothing to train")
    if cfg.n_frames < 2:
        raise ValueError(f"n_frames must be at least 2 (anchor + one more), got {cfg.n_frames}")
    if cfg.geom_anchor not in ("predicted", "label"):
        raise ValueError(f"geom_anchor must be 'predicted' or 'label', got {cfg.geom_anchor!r}")
    if cfg.decode_coordinates is not None and cfg.decode_coordinates not in COORDINATE_DECODINGS:
        raise ValueError(f"decode_coordinates must be one of {COORDINATE_DECODINGS} or None, "
                         f"got {cfg.decode_coordinates!r}")
    return cfg


# ---- self-supervised clips -------------------------------------------------------------------------

@dataclass
class Clip:
    """One training clip, anchor-normalized.

    Attributes:
        name: corpus record name.
        verts: float32 ``[K, V, 3]`` the chosen frames (frame 0 is the anchor), anchor-box normalized.
        faces: int32 ``[F, 3]``.
        tokens: int64 ``[L]`` canonical anchor tokens ``t_0`` (BOS ... EOS) from the frozen base model.
    """

    name: str
    verts: np.ndarray
    faces: np.ndarray
    tokens: np.ndarray


def clip_frames(n_available: int, n_frames: int, stride: int) -> np.ndarray:
    """Frame indices ``0, s, 2s, ..`` (K of them), the stride shrunk when the clip is too short."""
    if n_available < 2:
        raise ValueError(f"a clip needs at least 2 frames, this one has {n_available}")
    k = min(n_frames, n_available)
    s = max(1, min(stride, (n_available - 1) // max(1, k - 1)))
    return np.arange(k) * s


def sample_clip(clip: Clip, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and normals float32 ``[K, N, 3]`` with one (face, barycentric) sample set for all frames."""
    samples = sample_surface(clip.verts[0], clip.faces, n_points, seed=seed)
    return points_on_frames(clip.verts, clip.faces, samples)


def load_clips(corpus, split: str, cfg: SprigSkeletonConfig,
               limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, normalized verts [K, V, 3], faces)`` of up to ``limit`` corpus clips of ``split``."""
    out = []
    ids = [int(i) for i in corpus.indices(split)]
    for index in tqdm(ids if limit is None else ids[:limit], desc=f"loading {split} clips", dynamic_ncols=True,
                      leave=False):
        rec = corpus.load(index)
        verts = np.asarray(rec.verts, dtype=np.float32)
        if verts.shape[0] < 2:
            log.warning("skipping %s record %d: fewer than 2 frames", split, index)
            continue
        frames = clip_frames(verts.shape[0], cfg.n_frames, cfg.frame_stride)
        box = AnchorBox.fit(verts[0])
        name = f"{split}_{index:07d}_{getattr(rec, 'family', 'clip')}"
        out.append((name, box.apply(verts[frames]), np.asarray(rec.faces, dtype=np.int32)))
    return out


@torch.no_grad()
def pseudo_labels(base: SkeletonGenerator, raw: list[tuple[str, np.ndarray, np.ndarray]], cfg: SprigSkeletonConfig,
                  n_points: int, device: torch.device, cache_path: Path | None, base_sha: str,
                  label_batch: int = 8) -> list[Clip]:
    """§5.1 steps (1)-(2): the frozen base model's anchor rig, encoded to canonical tokens.

    Labels are cached in ``cache_path`` keyed by clip name, the base checkpoint's sha256 and the
    sampling settings, so a resumed run does not decode again.
    """
    tk = base.tokenizer
    key = f"{base_sha}|{n_points}|{cfg.max_joints}|{cfg.seed}|{cfg.n_frames}|{cfg.frame_stride}"
    cached: dict[str, np.ndarray] = {}
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                cached = {k[4:]: z[k] for k in z.files if k.startswith("tok/")}
    todo = [i for i, (name, _, _) in enumerate(raw) if name not in cached]
    bar = tqdm(total=len(todo), desc="anchor pseudo-labels", disable=not todo, dynamic_ncols=True)
    for s in range(0, len(todo), label_batch):
        chunk = todo[s:s + label_batch]
        sampled = [sample_clip(Clip(raw[i][0], raw[i][1][:1], raw[i][2], np.zeros(0)), n_points, cfg.seed)
                   for i in chunk]
        pts = torch.from_numpy(np.concatenate([p for p, _ in sampled])).to(device)
        nrm = torch.from_numpy(np.concatenate([n for _, n in sampled])).to(device)
        for i, (joints, parents) in zip(chunk, base.generate(pts, nrm, max_joints=cfg.max_joints)):
            name, verts, faces = raw[i]
            try:
                tokens = tk.encode(joints, parents)
            except TokenizerError as exc:
                log.warning("skipping clip %s: its anchor rig cannot be tokenized (%s)", name, exc)
                continue
            cached[name] = tokens
        bar.update(len(chunk))
    bar.close()
    if cache_path is not None and todo:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        np.savez(tmp, key=np.asarray(key), **{f"tok/{k}": v for k, v in cached.items()})
        tmp.replace(cache_path)
    clips = [Clip(name, verts, faces, cached[name]) for name, verts, faces in raw if name in cached]
    short = [c.name for c in clips if (len(c.tokens) - 2) // 4 < 2]
    if short:
        log.info("%d clips have a single-joint anchor rig (no bones): the geometry loss ignores them", len(short))
    return clips


# ---- one step --------------------------------------------------------------------------------------

def make_batch(clips: list[Clip], n_points: int, seed: int, tokenizer: SkeletonTokenizer,
               device: torch.device) -> dict[str, torch.Tensor]:
    """``points, normals [B, K, N, 3]`` and PAD-padded anchor ``tokens [B, L]``."""
    pts, nrm = zip(*[sample_clip(c, n_points, seed + i) for i, c in enumerate(clips)])
    K = min(p.shape[0] for p in pts)
    return {"points": torch.from_numpy(np.stack([p[:K] for p in pts])).to(device),
            "normals": torch.from_numpy(np.stack([n[:K] for n in nrm])).to(device),
            "tokens": torch.from_numpy(tokenizer.pad_batch([c.tokens for c in clips])).to(device)}


@torch.no_grad()
def decode_frames(gen: SkeletonGenerator, batch: dict, cfg: SprigSkeletonConfig) -> list[tuple[int, int, np.ndarray]]:
    """Greedy constrained decoding (no gradient) of every non-anchor frame, re-encoded to tokens.

    Returns:
        ``(clip b, frame k, tokens int64 [L_bk])`` for every decoded skeleton.
    """
    tk = gen.tokenizer
    pts, nrm = batch["points"], batch["normals"]
    out = []
    for k in range(1, pts.shape[1]):
        for b, (joints, parents) in enumerate(gen.generate(pts[:, k], nrm[:, k], max_joints=cfg.max_joints)):
            try:
                out.append((b, k, tk.encode(joints, parents)))
            except TokenizerError as exc:  # decoder output stays within limits; be safe anyway
                log.warning("decoded skeleton could not be re-encoded: %s", exc)
    set_train_mode(gen, gen.training, cfg)  # generate() restores train mode on the whole model
    return out


def set_train_mode(gen: SkeletonGenerator, training: bool, cfg: SprigSkeletonConfig) -> None:
    """Train/eval mode of the generator, keeping a frozen encoder in eval mode (no dropout)."""
    gen.train(training)
    if cfg.freeze_encoder:
        gen.encoder.eval()


def forward_losses(model, gen: SkeletonGenerator, batch: dict, cfg: SprigSkeletonConfig, rng: np.random.Generator,
                   decoded: list[tuple[int, int, np.ndarray]] | None) -> dict[str, torch.Tensor | dict]:
    """One teacher-forced pass for every term (a single forward call, as DistributedDataParallel needs).

    The pass scores ``t_0`` on the anchor frame (Eq. 8) and on the chosen non-anchor frames (Eq. 9),
    and, when ``decoded`` is given, re-scores each decoded non-anchor skeleton on its own frame to get
    its differentiable joints for Eq. 3 (PAD extends shorter sequences; the decoder is causal, so
    padding after EOS changes nothing before it).

    Returns:
        ``{"anchor", "sym", "geom" (scalars; geom is 0 without decoded skeletons), "geom_parts"}``.
    """
    tk = gen.tokenizer
    pts, nrm, tokens = batch["points"], batch["normals"], batch["tokens"]
    B, K = pts.shape[:2]
    others = np.arange(1, K)
    if cfg.sym_frames is not None and cfg.sym_frames < len(others):
        others = np.sort(rng.choice(others, size=cfg.sym_frames, replace=False))
    frames = np.concatenate([[0], others]).astype(np.int64)
    Kf = len(frames)
    decoded = decoded or []
    L = max([tokens.shape[1]] + [len(t) for _, _, t in decoded])
    seqs = [tokens[b].cpu().numpy() for b in range(B) for _ in range(Kf)] + [t for _, _, t in decoded]
    all_tokens = torch.from_numpy(tk.pad_batch(seqs, length=L)).to(pts.device)
    bi = np.concatenate([np.repeat(np.arange(B), Kf), np.array([b for b, _, _ in decoded], dtype=np.int64)])
    ki = np.concatenate([np.tile(frames, B), np.array([k for _, k, _ in decoded], dtype=np.int64)])
    bi_t, ki_t = torch.from_numpy(bi).to(pts.device), torch.from_numpy(ki).to(pts.device)
    logits = model(pts[bi_t, ki_t], nrm[bi_t, ki_t], all_tokens)  # [B*Kf + D, L, V]
    n_tf = B * Kf
    tf = logits[:n_tf].view(B, Kf, L, -1)[:, :, : tokens.shape[1]]
    lg, tgt, mask = shift_for_next_token(tf[:, 0], tokens, tk.pad)
    out: dict = {"anchor": anchor_token_loss(lg, tgt, mask, cfg.alpha),
                 "sym": symmetric_token_loss(tf[:, 1:, :-1], tgt, mask, cfg.alpha)}
    out["geom"], out["geom_parts"] = tf.sum() * 0.0, {}
    if decoded:
        anchor_joints, anchor_valid = expected_joint_positions(tf[:, 0], tokens, tk)
        joints_d, valid_d = expected_joint_positions(logits[n_tf:], all_tokens[n_tf:], tk)
        anchors, per_clip = [], [[] for _ in range(B)]
        for b in range(B):
            label_joints, parents = tk.decode(tokens[b].cpu().numpy())
            joints0 = (anchor_joints[b, : int(anchor_valid[b].sum())] if cfg.geom_anchor == "predicted"
                       else torch.as_tensor(label_joints, device=pts.device))
            anchors.append((joints0, torch.as_tensor(parents, device=pts.device).long()))
        for row, (b, _, seq) in enumerate(decoded):
            _, parents = tk.decode(seq)
            per_clip[b].append((joints_d[row, : int(valid_d[row].sum())],
                                torch.as_tensor(parents, device=pts.device).long()))
        keep = [b for b in range(B) if per_clip[b] and len(anchors[b][1]) >= 2]
        if keep:
            out["geom"], out["geom_parts"] = batch_geometry_loss([anchors[b] for b in keep],
                                                                 [per_clip[b] for b in keep], cfg.geom)
    return out


def vote_term(gen: SkeletonGenerator, teacher: torch.nn.Module, batch: dict, cfg: SprigSkeletonConfig) -> torch.Tensor:
    """The vote consistency term of a batch (``local`` design): the model's votes on every frame against the
    frozen base encoder ``teacher``'s anchor votes carried by each sample's local rotation."""
    pts, nrm = batch["points"], batch["normals"]  # [B, K, N, 3]
    B, K, N, _ = pts.shape
    with torch.no_grad():
        _, anchor_off, anchor_dist = teacher(torch.cat([pts[:, 0], nrm[:, 0]], dim=-1))
    with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_encoder):
        feats = gen.encoder.features(torch.cat([pts, nrm], dim=-1).flatten(0, 1))  # [B K, N, d]
    off, dist = gen.encoder.votes(feats)
    return vote_consistency_loss(off.view(B, K, N, -1, 3), dist.view(B, K, N, -1), anchor_off, anchor_dist,
                                 local_rotations(pts, cfg.vote_neighbours))


def training_loss(model, gen: SkeletonGenerator, batch: dict, cfg: SprigSkeletonConfig, rng: np.random.Generator,
                  with_geom: bool, teacher: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_total`` of §3.4 for one batch, with the ablation switches; returns the loss and its parts.

    Args:
        model: the module to call (the generator, or its DistributedDataParallel wrapper).
        gen: the bare generator (tokenizer and decoding).
        with_geom: compute ``L_geom`` on this step (decodes every non-anchor frame).
        teacher: the frozen base's point encoder (``local`` design): adds ``lambda_vote`` x :func:`vote_term`.
    """
    use_geom = with_geom and not cfg.no_geom and cfg.lambda_geom > 0
    decoded = decode_frames(gen, batch, cfg) if use_geom else None
    terms = forward_losses(model, gen, batch, cfg, rng, decoded)
    l_tok = token_loss(terms["anchor"], terms["sym"], cfg.lambda_anchor, cfg.lambda_sym)
    total = skeleton_total_loss(l_tok, terms["geom"], 0.0 if cfg.no_token else cfg.lambda_token,
                                cfg.lambda_geom if use_geom else 0.0)
    l_vote = None
    if teacher is not None and cfg.lambda_vote > 0:
        l_vote = vote_term(gen, teacher, batch, cfg)
        total = total + cfg.lambda_vote * l_vote
    parts = {"anchor": float(terms["anchor"].detach()), "sym": float(terms["sym"].detach()),
             "token": float(l_tok.detach()), "total": float(total.detach())}
    if l_vote is not None:
        parts["vote"] = float(l_vote.detach())
    if use_geom:
        parts["geom"] = float(terms["geom"].detach())
        parts.update({f"geom_{k}": v for k, v in terms["geom_parts"].items()})
    return total, parts


@torch.no_grad()
def validate(gen: SkeletonGenerator, clips: list[Clip], cfg: SprigSkeletonConfig, n_points: int,
             device: torch.device, teacher: torch.nn.Module | None = None) -> dict[str, float]:
    """Token losses on held-out clips and the stability of their decoded skeletons over the K frames.

    ``val_joints``: mean joints of the decoded skeletons (every frame); ``val_label_joints``: mean joints
    of the clips' anchor pseudo-labels (the base model's); ``val_joint_ratio``: their ratio (the collapse
    guard's number).

    Stability uses the evaluation metrics (PJDD, BLRD, GSD, topology flicker of frames 1..K-1 against
    frame 0, :func:`backend.metrics.skeleton_stability.skeleton_stability`). With the base's point encoder as
    ``teacher``, also ``val_vote``: the vote consistency term (:func:`vote_term`).
    """
    was_training = gen.training
    gen.eval()
    rng = np.random.default_rng(cfg.seed)
    anchor, sym, stats = [], [], {"pjdd": [], "blrd": [], "gsd": [], "topology_flicker": []}
    decoded_joints, label_joints, votes = [], [], []
    for s in range(0, len(clips), max(1, cfg.batch_size)):
        chunk = clips[s:s + cfg.batch_size]
        batch = make_batch(chunk, n_points, 10_000 + s, gen.tokenizer, device)
        terms = forward_losses(gen, gen, batch, cfg, rng, None)
        anchor.append(float(terms["anchor"])), sym.append(float(terms["sym"]))
        if teacher is not None:
            votes.append(float(vote_term(gen, teacher, batch, cfg)))
        K = batch["points"].shape[1]
        per_frame = [gen.generate(batch["points"][:, k], batch["normals"][:, k], max_joints=cfg.max_joints)
                     for k in range(K)]
        for b in range(len(chunk)):
            joints = [per_frame[k][b][0] for k in range(K)]
            parents = [per_frame[k][b][1] for k in range(K)]
            decoded_joints.extend(len(p) for p in parents)
            label_joints.append((len(chunk[b].tokens) - 2) // 4)
            if min(len(j) for j in joints) < 2:
                continue
            summary = skeleton_stability(joints, parents).summary()
            for key in stats:
                if summary.get(key) is not None:
                    stats[key].append(summary[key])
    gen.train(was_training)
    out = {"val_anchor_ce": float(np.mean(anchor)), "val_sym_ce": float(np.mean(sym)),
           "val_joints": float(np.mean(decoded_joints)), "val_label_joints": float(np.mean(label_joints))}
    out["val_joint_ratio"] = out["val_joints"] / max(out["val_label_joints"], 1e-9)
    if votes:
        out["val_vote"] = float(np.mean(votes))
    out.update({f"val_{k}": float(np.mean(v)) for k, v in stats.items() if v})
    return out


# ---- the stage -------------------------------------------------------------------------------------

class SprigCollapseError(RuntimeError):
    """SPRig fine-tuning produced fewer joints than its base on every validated step."""


def collapsed(validation: dict, cfg: SprigSkeletonConfig) -> bool:
    """Whether a validation entry fails the collapse guard (decoded joints < ``min_joint_ratio`` x the base's)."""
    ratio = validation.get("val_joint_ratio")
    return ratio is not None and ratio < cfg.min_joint_ratio

def run_stage(preset: str, workdir: Path, device: str = "auto", stop_after: int | None = None,
              **overrides) -> dict:
    """Fine-tune the skeleton generator with SPRig; resumes from ``<state_dir>/state.pt``.

    Args:
        preset: ``smoke`` / ``default`` / ``large`` (model sizes come from the base checkpoint).
        workdir: run folder with ``corpus/`` and ``checkpoints/skeleton_base.safetensors``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        stop_after: stop after this many steps as if killed (resume tests).
        **overrides: :class:`SprigSkeletonConfig` fields, e.g. ``no_geom=True, steps=200,
            out_checkpoint="checkpoints/skeleton_ablation_nogeom.safetensors",
            state_dir="ablations/nogeom"`` for a short ablation.
    Returns:
        ``{"step", "complete", "validation", "checkpoint"}``.
    """
    from training.data.corpus import Corpus

    cfg = make_config(preset, **overrides)
    P = get_preset(preset)
    workdir = Path(workdir)
    rank, world, dev = setup_distributed(device)
    if P.num_threads > 0:
        torch.set_num_threads(P.num_threads)
    state_dir = workdir / cfg.state_dir
    out_path = workdir / cfg.out_checkpoint
    base_path = workdir / cfg.base_checkpoint
    base, base_info = load_model(base_path, expected="skeleton_generator", device=dev)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    n_points = cfg.n_points or int(base_info.provenance.get("preset_config", {}).get("pretrain", {})
                                   .get("n_points", P.pretrain.n_points))
    corpus = Corpus(workdir / "corpus")
    raw_train = load_clips(corpus, "train", cfg, cfg.max_train_clips)
    val_split = "val" if len(corpus.indices("val")) else "test"
    raw_val = load_clips(corpus, val_split, cfg, cfg.n_val_clips) if rank == 0 else []
    if not raw_train:
        raise RuntimeError(f"corpus {workdir / 'corpus'} has no usable training clips; run the data stage")
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 decodes the pseudo-labels once and caches them
    train_clips = pseudo_labels(base, raw_train, cfg, n_points, dev, state_dir / "labels.npz", base_info.sha256)
    val_clips = pseudo_labels(base, raw_val, cfg, n_points, dev, state_dir / "labels_val.npz", base_info.sha256)
    if world > 1 and rank == 0:
        dist.barrier()
    if not train_clips:
        raise RuntimeError("no training clip has a usable anchor pseudo-label")

    torch.manual_seed(cfg.seed)
    model_cfg = base.cfg
    if base.cfg.design == "local" and cfg.decode_coordinates is not None:
        model_cfg = replace(base.cfg, decode_coordinates=cfg.decode_coordinates)
    model = SkeletonGenerator(model_cfg).to(dev)
    model.load_state_dict(base.state_dict())
    # the vote consistency term's pseudo-labels come from the frozen base's encoder
    teacher = base.encoder if base.cfg.design == "local" and cfg.lambda_vote > 0 else None
    del base
    if cfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    vote_head = [] if teacher is None else list((model.encoder if not cfg.freeze_encoder else
                                                  model.encoder.dense_head).parameters())
    for p in vote_head:
        p.requires_grad_(True)
    for p in getattr(model, "count_head", torch.nn.Identity()).parameters():  # fitted on the frozen encoder
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    head_ids = {id(p) for p in vote_head}
    groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": cfg.lr}]
    if vote_head:
        groups.append({"params": vote_head, "lr": cfg.vote_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    book = StageBookkeeping(
        "sprig-skeleton", state_dir, out_path, base_info.sha256, total_steps=cfg.steps, rank=rank,
        provenance=finetune_provenance(preset, workdir, base_path, base_info.sha256, len(train_clips), world, dev,
                                       cfg.to_dict(), git_commit()))
    step = book.resume(model, opt, dev)
    model_m = DDP(model) if world > 1 else model
    autocast = autocast_factory(P.amp, dev)
    if rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
        log.info("sprig-skeleton (%s) on %s x%d: %d training clips, %d validation clips, %d points, K = %d, "
                 "%d steps; trainable %.2f M params", preset, dev, world, len(train_clips), len(val_clips),
                 n_points, cfg.n_frames, cfg.steps, sum(p.numel() for p in params) / 1e6)
    last_val: dict = book.last_validation("val_anchor_ce")
    if rank == 0 and step == 0 and val_clips:
        last_val = book.log_validation(0, validate(model, val_clips, cfg, n_points, dev, teacher))
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    per_rank = train_clips[rank::world] or train_clips
    bar = tqdm(total=cfg.steps, initial=step, desc=f"sprig-skeleton[{preset}]", disable=rank != 0,
               dynamic_ncols=True)
    set_train_mode(model, True, cfg)
    run: list[dict] = []
    t_last = time.time()
    while step < end:
        rng = np.random.default_rng([cfg.seed, rank, step])
        pick = rng.choice(len(per_rank), size=min(cfg.batch_size, len(per_rank)), replace=False)
        batch = make_batch([per_rank[i] for i in pick], n_points, int(rng.integers(2**31)), model.tokenizer, dev)
        with autocast():
            loss, parts = training_loss(model_m, model, batch, cfg, rng, with_geom=step % cfg.geom_every == 0,
                                        teacher=teacher)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite sprig-skeleton loss at step {step}: {parts}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        run.append(parts)
        bar.update(1)
        bar.set_postfix(total=f"{parts['total']:.3f}", anchor=f"{parts['anchor']:.3f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            now = time.time()
            book.log_line(mean_log_entry(step, run, float(gnorm), now - t_last, sort_keys=True))
            t_last, run = now, []
        if rank == 0 and val_clips and (step % cfg.val_every == 0 or step == cfg.steps):
            last_val = book.log_validation(step, validate(model, val_clips, cfg, n_points, dev, teacher))
            set_train_mode(model, True, cfg)
            if not collapsed(last_val, cfg):
                book.export(step, model, last_val)
        if step % cfg.ckpt_every == 0 or step == end:
            book.save_state(step, model, opt)
            if world > 1:
                dist.barrier()
    bar.close()
    if step >= cfg.steps:
        if rank == 0 and collapsed(last_val, cfg):
            validated = [h for h in book.history if "val_joint_ratio" in h]
            good = [h for h in validated if h["step"] > 0 and not collapsed(h, cfg)]
            if not good:
                start = [h for h in validated if h["step"] == 0]
                advice = ("Lower the learning rate or the steps, or raise lambda_anchor"
                          if not start or not collapsed(start[0], cfg) else
                          f"the untrained copy already decoded {start[0]['val_joint_ratio']:.2f}x the base's joints at "
                          f"step 0, so the fine-tuned decoding (decode_coordinates="
                          f"{cfg.decode_coordinates!r}) stops earlier than the base's, whatever the training: "
                          "decode as the base does (--decode base) or lower min_joint_ratio knowingly")
                raise SprigCollapseError(
                    f"sprig-skeleton collapsed: every validated step decodes fewer joints than "
                    f"{cfg.min_joint_ratio:g}x the base's (last: {last_val['val_joints']:.1f} vs "
                    f"{last_val['val_label_joints']:.1f}, step {step}); no checkpoint written to {out_path}. "
                    + advice)
            log.error("sprig-skeleton: the final model collapsed (%.1f joints vs the base's %.1f); %s keeps step %d, "
                      "the last validated step that did not", last_val["val_joints"], last_val["val_label_joints"],
                      out_path, good[-1]["step"])
        else:
            book.export(step, model, last_val)
        if rank == 0:
            log.info("sprig-skeleton complete (%d steps): %s", step, out_path)
    if world > 1:
        dist.barrier()
    return {"step": step, "complete": step >= cfg.steps, "validation": last_val,
            "checkpoint": str(out_path) if step >= cfg.steps else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPRig skeleton fine-tuning (stage 2).")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", type=Path, required=True, help="run folder (e.g. runs/default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--no-geom", action="store_true", help="ablation (1): without L_geom")
    parser.add_argument("--no-token", action="store_true", help="ablation (2): without L_token")
    parser.add_argument("--alpha", type=float, help="parent-slot weight (ablation (3): 1.0)")
    parser.add_argument("--state-dir", help="state/log folder under the workdir")
    parser.add_argument("--out", help="output checkpoint path under the workdir")
    parser.add_argument("--decode", choices=[*COORDINATE_DECODINGS, "base"],
                        help="local base: the fine-tuned model's coordinate decoding (default base: the base's own)")
    parser.add_argument("--lambda-vote", type=float, help="local base: weight of the vote consistency term (0: off)")
    parser.add_argument("--lr", type=float, help="learning rate of the decoder")
    parser.add_argument("--vote-lr", type=float, help="learning rate of the vote head")
    parser.add_argument("--val-every", type=int, help="validate (and export) every this many steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {k: v for k, v in {"steps": args.steps, "alpha": args.alpha, "state_dir": args.state_dir,
                                   "out_checkpoint": args.out, "lambda_vote": args.lambda_vote, "lr": args.lr,
                                   "vote_lr": args.vote_lr, "val_every": args.val_every}.items() if v is not None}
    if args.no_geom:
        overrides["no_geom"] = True
    if args.no_token:
        overrides["no_token"] = True
    if args.decode is not None:
        overrides["decode_coordinates"] = None if args.decode == "base" else args.decode
    result = run_stage(args.preset, args.workdir, args.device, **overrides)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if result["step"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
