"""Stage 3: SPRig skinning fine-tuning (paper §4.2-4.3, §12; Eq. 5-7, 17-27).

    python training/run.py --stage sprig-skinning --preset default
    python -m training.sprig_skinning --preset smoke --workdir runs/smoke --steps 20
    torchrun --nproc_per_node 4 training/run.py --stage sprig-skinning --preset large

For every training clip (corpus labels ignored unless ``skeleton_source="gt"``):

1. the anchor skeleton ``(X, p)``: by default the frozen base skeleton generator's rig on frame 0;
2. the anchor teacher: the frozen base skinning network on the anchor *vertices* (``W^T_vtx``),
   transferred to the query points by barycentric interpolation (Eq. 5-6);
3. ``N`` query points drawn once on the anchor, as (face, barycentric) pairs shared by every frame,
   evaluated on frames ``0, s, .., (F-1)s`` (positions + normals), plus a shape cloud per frame.

The student (initialized from the base skinning network) predicts weights on every frame and is
trained with Eq. 7: masked symmetric KL and L1 to the teacher on non-anchor frames, an anchor L1,
masked entropy and a distance prior whose weight warms up linearly over 5 epochs. Clips whose
skeleton has fewer than 10 joints are skipped (§12).

Outputs under ``workdir``: ``sprig_skinning/state.pt`` (resumable), ``sprig_skinning/log.jsonl``,
``sprig_skinning/data.npz`` (cached skeletons, teachers and queries) and
``checkpoints/skinning_sprig.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

if __package__ in (None, ""):  # `python training/sprig_skinning.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.metrics.skinning import skin_consistency
from backend.models.checkpoint import load_model
from backend.models.inference import RiggerModels
from backend.models.skinning_network import SkinningNetwork
from backend.normalize import AnchorBox
from backend.sampling import points_on_frames, sample_surface, vertex_normals
from training.batching import pad_joint_columns, pad_skeletons
from training.losses.skinning_losses import SkinningLossConfig, point_teacher, skinning_loss
from training.presets import get_preset
from training.pretrain import git_commit, setup_distributed
from training.sprig_skeleton import clip_frames
from training.stage_utils import (StageBookkeeping, autocast_factory, finetune_provenance, mean_log_entry,
                                  stage_config)

log = logging.getLogger(__name__)

SKELETON_SOURCES = ("base", "sprig", "gt")


# ---- configuration ---------------------------------------------------------------------------------

@dataclass
class SprigSkinningConfig:
    """Fine-tuning settings (paper §12 where it gives a value).

    Attributes:
        n_frames: frames per clip, the anchor included (K + 1 in Eq. 19-26).
        frame_stride: spacing of those frames in the clip (1: consecutive frames).
        n_query: query points N per frame (the base model's pretraining value when None).
        n_shape: shape-context points per frame (the base model's pretraining value when None).
        batch_size: clips per step and process (paper: 12).
        steps: optimizer steps.
        lr, weight_decay, grad_clip: AdamW (paper: lr 1e-5).
        loss: Eq. 7 weights, Top-K_s mask, beta, warm-up and the five ablation switches.
        skeleton_source: ``base`` (frozen base generator on the anchor, self-supervised), ``sprig``
            (the fine-tuned skeleton checkpoint) or ``gt`` (the corpus skeleton; supervision leak,
            for diagnostics only).
        min_valid_joints: skip clips whose skeleton has fewer joints (paper: 10).
        max_joints: joint limit when decoding skeletons.
        max_train_clips, n_val_clips: clip counts (None: all training clips).
        val_every, ckpt_every, log_every: steps.
        seed: sampling seed.
        base_skeleton, base_skinning, sprig_skeleton, out_checkpoint: paths relative to the workdir.
        state_dir: folder of the resumable state, log and data cache, relative to the workdir.
    """

    n_frames: int = 3
    frame_stride: int = 1
    n_query: int | None = None
    n_shape: int | None = None
    batch_size: int = 12
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss: SkinningLossConfig = field(default_factory=SkinningLossConfig)
    skeleton_source: str = "base"
    min_valid_joints: int = 10
    max_joints: int = 64
    max_train_clips: int | None = None
    n_val_clips: int = 16
    val_every: int = 250
    ckpt_every: int = 100
    log_every: int = 20
    seed: int = 0
    base_skeleton: str = "checkpoints/skeleton_base.safetensors"
    base_skinning: str = "checkpoints/skinning_base.safetensors"
    sprig_skeleton: str = "checkpoints/skeleton_sprig.safetensors"
    out_checkpoint: str = "checkpoints/skinning_sprig.safetensors"
    state_dir: str = "sprig_skinning"

    def to_dict(self) -> dict:
        return asdict(self)


STAGE_PRESETS: dict[str, dict] = {
    "smoke": dict(steps=6, batch_size=2, max_train_clips=4, n_val_clips=2, val_every=3, ckpt_every=2, log_every=1,
                  max_joints=16, min_valid_joints=2, lr=1e-4, n_query=128, n_shape=128),
    "default": dict(steps=500, batch_size=12, lr=1e-5),
    "large": dict(steps=20000, batch_size=12, lr=1e-5, val_every=1000, ckpt_every=500, log_every=50,
                  n_val_clips=64),
}


def make_config(preset: str, **overrides) -> SprigSkinningConfig:
    """The stage config of a preset, with field overrides (``loss`` may be a dict of its fields)."""
    cfg = stage_config(SprigSkinningConfig, STAGE_PRESETS, preset, overrides, "sprig-skinning",
                       nested={"loss": SkinningLossConfig})
    if cfg.skeleton_source not in SKELETON_SOURCES:
        raise ValueError(f"skeleton_source must be one of {SKELETON_SOURCES}, got {cfg.skeleton_source!r}")
    if cfg.n_frames < 2:
        raise ValueError(f"n_frames must be at least 2 (anchor + one more), got {cfg.n_frames}")
    lc = cfg.loss
    if not any((lc.use_sym, lc.use_l1, lc.use_anchor, lc.use_ent, lc.use_prior)):
        raise ValueError("every loss term is switched off")
    return cfg


# ---- per-clip data ---------------------------------------------------------------------------------

@dataclass
class SkinClip:
    """Everything one clip contributes, precomputed (anchor-normalized).

    Attributes:
        name: corpus record name.
        query: float32 ``[F, N, 6]`` query positions + normals on the chosen frames (shared samples).
        shape: float32 ``[F, Ns, 6]`` shape-context clouds.
        joints: float32 ``[J, 3]`` anchor skeleton; parents: int64 ``[J]`` (-1 root).
        teacher: float32 ``[N, J]`` point teacher (Eq. 6).
    """

    name: str
    query: np.ndarray
    shape: np.ndarray
    joints: np.ndarray
    parents: np.ndarray
    teacher: np.ndarray


def build_clip(name: str, verts: np.ndarray, faces: np.ndarray, joints: np.ndarray, parents: np.ndarray,
               teacher_models: RiggerModels, n_query: int, n_shape: int, seed: int) -> SkinClip:
    """Queries, shape clouds and the anchor teacher of one clip.

    Args:
        verts: float32 ``[F, V, 3]`` anchor-normalized chosen frames (frame 0 = anchor).
        faces: int ``[F, 3]``.
        joints, parents: the anchor skeleton (normalized).
        teacher_models: holds the frozen base skinning network.
    """
    q_samples = sample_surface(verts[0], faces, n_query, seed=seed)
    s_samples = sample_surface(verts[0], faces, n_shape, seed=seed + 1)
    q_pts, q_nrm = points_on_frames(verts, faces, q_samples)
    s_pts, s_nrm = points_on_frames(verts, faces, s_samples)
    vnorm = vertex_normals(verts[0], faces)
    w_vtx = teacher_models.predict_weights(verts[0], vnorm, s_pts[0], s_nrm[0], joints, parents)  # [V, J]
    teacher = point_teacher(w_vtx, faces, q_samples)  # Eq. 5-6
    teacher = teacher / np.maximum(teacher.sum(1, keepdims=True), 1e-12)
    return SkinClip(name, np.concatenate([q_pts, q_nrm], -1).astype(np.float32),
                    np.concatenate([s_pts, s_nrm], -1).astype(np.float32),
                    np.asarray(joints, np.float32), np.asarray(parents, np.int64), teacher.astype(np.float32))


def prepare_clips(corpus, split: str, cfg: SprigSkinningConfig, limit: int | None, models: RiggerModels,
                  n_query: int, n_shape: int, cache_path: Path | None, key: str,
                  decode_batch: int = 8) -> tuple[list[SkinClip], dict]:
    """Build (or read from ``cache_path``) the clips of ``split``; returns them and skip counts.

    Clips whose skeleton has fewer than ``cfg.min_valid_joints`` joints are skipped (§12); anchor rigs
    are decoded ``decode_batch`` clips at a time.
    """
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                names = [str(n) for n in z["names"]]
                clips = [SkinClip(n, *(z[f"{i}/{f}"] for f in ("query", "shape", "joints", "parents", "teacher")))
                         for i, n in enumerate(names)]
                return clips, json.loads(str(z["skipped"]))
    clips: list[SkinClip] = []
    skipped = {"few_joints": 0, "short": 0}
    ids = [int(i) for i in corpus.indices(split)]
    # records read (all of the split), or clips kept when limited (skipped records do not count)
    bar = tqdm(total=len(ids) if limit is None else min(len(ids), limit), desc=f"skinning teachers ({split})",
               dynamic_ncols=True)
    pos = 0
    while pos < len(ids) and (limit is None or len(clips) < limit):
        chunk = ids[pos:pos + decode_batch]
        pos += len(chunk)
        items = []  # (index, family, normalized frames, faces, gt joints, gt parents)
        for index in chunk:
            rec = corpus.load(index)
            verts = np.asarray(rec.verts, dtype=np.float32)
            if verts.shape[0] < 2:
                skipped["short"] += 1
                continue
            box = AnchorBox.fit(verts[0])
            frames = clip_frames(verts.shape[0], cfg.n_frames, cfg.frame_stride)
            items.append((index, rec.family, box.apply(verts[frames]), np.asarray(rec.faces, dtype=np.int32),
                          box.apply(rec.joints[0]), np.asarray(rec.parents, np.int64)))
        if cfg.skeleton_source == "gt":
            skeletons = [(it[4], it[5]) for it in items]
        elif items:  # the anchor rig of every clip of the chunk in one batched decode
            clouds = [points_on_frames(it[2][0], it[3], sample_surface(it[2][0], it[3], n_shape,
                                                                       seed=cfg.seed * 1_000_003 + it[0] + 2))
                      for it in items]
            skeletons = models.generate_skeletons(np.stack([c[0] for c in clouds]), np.stack([c[1] for c in clouds]),
                                                  max_joints=cfg.max_joints, batch_size=decode_batch)
        else:
            skeletons = []
        for (index, family, nverts, faces, _, _), (joints, parents) in zip(items, skeletons):
            if limit is not None and len(clips) >= limit:
                break
            if len(parents) < cfg.min_valid_joints:
                skipped["few_joints"] += 1
                continue
            clips.append(build_clip(f"{split}_{index:07d}_{family}", nverts, faces, joints, parents, models,
                                    n_query, n_shape, cfg.seed * 1_000_003 + index))
        bar.update(len(chunk) if limit is None else len(clips) - bar.n)
    bar.close()
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"key": np.asarray(key), "names": np.asarray([c.name for c in clips], dtype=np.str_),
                  "skipped": np.asarray(json.dumps(skipped))}
        for i, c in enumerate(clips):
            for f in ("query", "shape", "joints", "parents", "teacher"):
                arrays[f"{i}/{f}"] = getattr(c, f)
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache_path)
    return clips, skipped


def collate(clips: list[SkinClip], device: torch.device) -> dict[str, torch.Tensor]:
    """Batch with joints padded to the largest skeleton.

    Returns:
        ``query [B, F, N, 6]``, ``shape [B, F, Ns, 6]``, ``joints [B, J, 3]``, ``parents [B, J]``,
        ``valid [B, J]``, ``tree_dist [B, J, J]``, ``teacher [B, N, J]``.
    """
    F = min(c.query.shape[0] for c in clips)
    skel = pad_skeletons([c.joints for c in clips], [c.parents for c in clips])
    arrays = {"query": np.stack([c.query[:F] for c in clips]), "shape": np.stack([c.shape[:F] for c in clips]),
              **skel, "teacher": pad_joint_columns([c.teacher for c in clips], skel["valid"].shape[1])}
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def predict_frames(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Student weights on every frame in one forward call: float ``[B, F, N, J]``."""
    q, s = batch["query"], batch["shape"]
    B, F = q.shape[:2]
    rep = lambda t: t.repeat_interleave(F, 0)  # noqa: E731
    w = model(q.flatten(0, 1), s.flatten(0, 1), rep(batch["joints"]), rep(batch["parents"]), rep(batch["valid"]),
              rep(batch["tree_dist"]))
    return w.view(B, F, *w.shape[1:]).float()


def training_loss(model, batch: dict[str, torch.Tensor], cfg: SprigSkinningConfig,
                  epoch: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 7 on a batch (see :func:`training.losses.skinning_losses.skinning_loss`)."""
    pred = predict_frames(model, batch)
    return skinning_loss(pred, batch["teacher"], batch["valid"], batch["query"][..., :3].float(),
                         batch["joints"], batch["parents"], cfg.loss, epoch)


@torch.no_grad()
def validate(model: SkinningNetwork, clips: list[SkinClip], cfg: SprigSkinningConfig,
             device: torch.device) -> dict[str, float]:
    """Teacher-based consistency of held-out clips (Eq. 35-37 via :func:`backend.metrics.skinning.skin_consistency`)."""
    was = model.training
    model.eval()
    l1, kl, ent = [], [], []
    for s in range(0, len(clips), max(1, cfg.batch_size)):
        chunk = clips[s:s + cfg.batch_size]
        pred = predict_frames(model, collate(chunk, device)).cpu().numpy()
        for b, c in enumerate(chunk):
            n = len(c.parents)
            sc = skin_consistency(pred[b, :, :, :n], c.teacher, k=cfg.loss.k_s, gamma=cfg.loss.gamma)
            l1.append(sc.l1), kl.append(sc.symkl), ent.append(sc.entropy)
    model.train(was)
    return {"val_l1": float(np.nanmean(l1)), "val_symkl": float(np.nanmean(kl)), "val_entropy": float(np.nanmean(ent))}


# ---- the stage -------------------------------------------------------------------------------------

def run_stage(preset: str, workdir: Path, device: str = "auto", stop_after: int | None = None,
              **overrides) -> dict:
    """Fine-tune the skinning network with SPRig; resumes from ``<state_dir>/state.pt``.

    Args:
        preset: ``smoke`` / ``default`` / ``large`` (model sizes come from the base checkpoint).
        workdir: run folder with ``corpus/`` and the base checkpoints under ``checkpoints/``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        stop_after: stop after this many steps as if killed (resume tests).
        **overrides: :class:`SprigSkinningConfig` fields, e.g. ``loss={"use_prior": False}, steps=200,
            out_checkpoint="checkpoints/skinning_ablation_noprior.safetensors", state_dir="ablations/noprior"``.
    Returns:
        ``{"step", "complete", "validation", "checkpoint", "clips"}``.
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
    skel_path = workdir / (cfg.sprig_skeleton if cfg.skeleton_source == "sprig" else cfg.base_skeleton)
    skel_model, skel_info = load_model(skel_path, expected="skeleton_generator", device=dev)
    base, base_info = load_model(workdir / cfg.base_skinning, expected="skinning_network", device=dev)
    for p in list(base.parameters()) + list(skel_model.parameters()):
        p.requires_grad_(False)
    teacher_models = RiggerModels(skeleton=skel_model, skinning=base, device=dev)
    pre = base_info.provenance.get("preset_config", {}).get("pretrain", {})
    n_query = cfg.n_query or int(pre.get("n_query", P.pretrain.n_query))
    n_shape = cfg.n_shape or int(pre.get("n_points", P.pretrain.n_points))
    corpus = Corpus(workdir / "corpus")
    key = "|".join(str(v) for v in (base_info.sha256, skel_info.sha256, cfg.skeleton_source, n_query, n_shape,
                                    cfg.n_frames, cfg.frame_stride, cfg.min_valid_joints, cfg.max_joints, cfg.seed))
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 builds the teachers once and caches them
    train_clips, skipped = prepare_clips(corpus, "train", cfg, cfg.max_train_clips, teacher_models, n_query, n_shape,
                                         state_dir / "data.npz", key + f"|{cfg.max_train_clips}")
    val_split = "val" if len(corpus.indices("val")) else "test"
    val_clips, _ = prepare_clips(corpus, val_split, cfg, cfg.n_val_clips, teacher_models, n_query, n_shape,
                                 state_dir / "data_val.npz", key + f"|{cfg.n_val_clips}")
    if world > 1 and rank == 0:
        dist.barrier()
    if not train_clips:
        raise RuntimeError(f"no training clip has a skeleton with >= {cfg.min_valid_joints} joints "
                           f"(skipped: {skipped}); lower min_valid_joints or check the base models")
    del skel_model

    torch.manual_seed(cfg.seed)
    model = SkinningNetwork(base.cfg).to(dev)
    model.load_state_dict(base.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    book = StageBookkeeping(
        "sprig-skinning", state_dir, out_path, base_info.sha256, total_steps=cfg.steps, rank=rank,
        provenance=finetune_provenance(preset, workdir, workdir / cfg.base_skinning, base_info.sha256,
                                       len(train_clips), world, dev, cfg.to_dict(), git_commit(),
                                       skeleton_checkpoint=str(skel_path), skipped=skipped))
    step = book.resume(model, opt, dev)
    model_m = DDP(model) if world > 1 else model
    autocast = autocast_factory(P.amp, dev)
    clips_per_epoch = max(1, len(train_clips))
    if rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
        log.info("sprig-skinning (%s) on %s x%d: %d training clips (skipped %s), %d validation clips, N = %d, "
                 "F = %d frames, %d steps, skeletons from %s", preset, dev, world, len(train_clips), skipped,
                 len(val_clips), n_query, cfg.n_frames, cfg.steps, cfg.skeleton_source)
    last_val: dict = book.last_validation("val_l1")
    if rank == 0 and step == 0 and val_clips:
        last_val = book.log_validation(0, validate(model, val_clips, cfg, dev))
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    per_rank = train_clips[rank::world] or train_clips
    bar = tqdm(total=cfg.steps, initial=step, desc=f"sprig-skinning[{preset}]", disable=rank != 0,
               dynamic_ncols=True)
    model.train()
    run: list[dict] = []
    t_last = time.time()
    while step < end:
        rng = np.random.default_rng([cfg.seed, rank, step])
        pick = rng.choice(len(per_rank), size=min(cfg.batch_size, len(per_rank)), replace=False)
        batch = collate([per_rank[i] for i in pick], dev)
        epoch = step * cfg.batch_size * world / clips_per_epoch
        with autocast():
            loss, parts = training_loss(model_m, batch, cfg, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite sprig-skinning loss at step {step}: {parts}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        run.append({**parts, "epoch": epoch})
        bar.update(1)
        bar.set_postfix(total=f"{parts['total']:.1f}", l1=f"{parts['l1']:.1f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            now = time.time()
            book.log_line(mean_log_entry(step, run, float(gnorm), now - t_last))
            t_last, run = now, []
        if rank == 0 and val_clips and (step % cfg.val_every == 0 or step == cfg.steps):
            last_val = book.log_validation(step, validate(model, val_clips, cfg, dev))
            book.export(step, model, last_val)
        if step % cfg.ckpt_every == 0 or step == end:
            book.save_state(step, model, opt)
            if world > 1:
                dist.barrier()
    bar.close()
    if step >= cfg.steps:
        book.export(step, model, last_val)
        if rank == 0:
            log.info("sprig-skinning complete (%d steps): %s", step, out_path)
    if world > 1:
        dist.barrier()
    return {"step": step, "complete": step >= cfg.steps, "validation": last_val,
            "checkpoint": str(out_path) if step >= cfg.steps else None, "clips": len(train_clips), "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPRig skinning fine-tuning (stage 3).")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", type=Path, required=True, help="run folder (e.g. runs/default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--skeleton-source", choices=SKELETON_SOURCES)
    for term in ("sym", "l1", "anchor", "ent", "prior"):
        parser.add_argument(f"--no-{term}", action="store_true", help=f"ablation: drop L_{term}")
    parser.add_argument("--state-dir", help="state/log folder under the workdir")
    parser.add_argument("--out", help="output checkpoint path under the workdir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {k: v for k, v in {"steps": args.steps, "skeleton_source": args.skeleton_source,
                                   "state_dir": args.state_dir, "out_checkpoint": args.out}.items() if v is not None}
    switches = {f"use_{t}": False for t in ("sym", "l1", "anchor", "ent", "prior") if getattr(args, f"no_{t}")}
    if switches:
        overrides["loss"] = switches
    result = run_stage(args.preset, args.workdir, args.device, **overrides)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if result["step"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
