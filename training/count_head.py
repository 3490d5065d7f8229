"""Stage `count-head`: fit the ``local`` skeleton generator's joint-count head after pretraining.

    python training/run.py --stage count-head --preset default
    python -m training.count_head --preset default --workdir runs/default [--frames 1500]

The dense votes decide how many joint proposals a frame gets, and they miscount in both directions: a
snake's points vote along its whole body (too many proposals), a hand's joints merge (too few). A
:class:`~backend.models.local_encoder.JointCountHead` predicts the count from the frozen encoder's pooled
features instead, and decoding keeps the densest that many proposals of a finer clustering. It is a linear
map, fitted in closed form: ridge regression of the log ground-truth joint count on
:func:`~backend.models.local_encoder.count_features` of random augmented training frames (drawn as the
pretraining draws them). The stage writes the model back to ``checkpoints/skeleton_base.safetensors`` with
``count_head`` on (atomic; stage and provenance kept, plus a ``count_head`` record with the validation joint-
count error before and after); pretraining continued from such a file drops the head, and this stage fits it
again. Perceiver-design models have no votes: the stage says so and changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # `python training/count_head.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.checkpoint import load_model, save_model
from backend.models.local_encoder import joint_proposals
from backend.models.skeleton_generator import SkeletonGenerator
from training.presets import get_preset
from training.pretrain import COUNT_HEAD_PREFIX, FrameSample, FrameSampler, collate_skeleton, validation_frames
from training.stage_utils import stage_config

log = logging.getLogger(__name__)


@dataclass
class CountHeadConfig:
    """Attributes:
        n_frames: random augmented training frames the head is fitted on.
        ridge: L2 penalty of the regression (on standardized features).
        min_mass: minimum vote mass of the finer clustering the head picks proposals from.
        batch: frames per encoder batch.
        seed: frame sampling seed.
        checkpoint: the skeleton generator, relative to the workdir (rewritten in place).
    """

    n_frames: int = 1500
    ridge: float = 100.0
    min_mass: float = 1.0
    batch: int = 16
    seed: int = 0
    checkpoint: str = "checkpoints/skeleton_base.safetensors"


STAGE_PRESETS: dict[str, dict] = {"smoke": dict(n_frames=24, batch=8), "default": {}, "large": dict(n_frames=6000)}


@torch.no_grad()
def frame_counts(model: SkeletonGenerator, frames: list[FrameSample], batch: int,
                 desc: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every frame: ``count_features`` ``[n, 2 d + 3]``, its ground-truth joint count ``[n]``, and the number
    of proposals of the votes' own clustering (``cfg.proposals``) ``[n]`` and of the finer one ``[n]``."""
    feats, truth, n_votes, n_fine = [], [], [], []
    for s in tqdm(range(0, len(frames), batch), desc=desc, disable=not desc, leave=False):
        b = collate_skeleton(frames[s:s + batch], model.tokenizer, "cpu")
        features, offsets, distances = model.encoder(torch.cat([b["points"], b["normals"]], dim=-1))
        _, weight, f = model.count_inputs(b["points"], features, offsets, distances)
        _, own = joint_proposals(b["points"], offsets, distances, model.cfg.proposals)
        feats.append(f.numpy())
        truth.append(b["joint_valid"].sum(1).float().numpy())
        n_votes.append(own.sum(1).numpy())
        n_fine.append(weight.sum(1).numpy())
    return tuple(np.concatenate(x) for x in (feats, truth, n_votes, n_fine))


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """``(w [D], b)`` minimising ``|x w + b - y|^2 + ridge |w * std(x)|^2``: ridge regression on standardized
    features, folded back to the raw ones."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = (x - mu) / sd
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y - y.mean()))
    return w / sd, float(y.mean() - (w / sd) @ mu)


def run_stage(preset: str, workdir: Path, device: str = "auto", **overrides) -> dict:
    """Fit the joint-count head of ``workdir/<checkpoint>`` and write the model back with it switched on.

    Returns ``{"skipped": bool, "checkpoint", "val_count_err_votes", "val_count_err_head", "n_frames"}``
    (errors: mean absolute joint-count error of the validation frames' proposals).
    """
    from training.data.corpus import Corpus

    cfg = stage_config(CountHeadConfig, STAGE_PRESETS, preset, overrides, "count-head")
    P = get_preset(preset)
    workdir = Path(workdir)
    path = workdir / cfg.checkpoint
    model, info = load_model(path, expected="skeleton_generator", device="cpu")
    if model.cfg.design != "local":
        log.info("%s is a %r skeleton generator: no votes to count, nothing to fit", path, model.cfg.design)
        return {"skipped": True, "checkpoint": str(path)}
    model.eval()
    model.cfg = replace(model.cfg, count_min_mass=cfg.min_mass)  # the features depend on the finer clustering
    corpus = Corpus(workdir / "corpus")
    tk = model.tokenizer
    sampler = FrameSampler(corpus, "train", P.pretrain, tk)
    rng = np.random.default_rng(cfg.seed)
    train = [sampler.sample(int(rng.choice(sampler.ids)), None, rng, augment=True)
             for _ in tqdm(range(cfg.n_frames), desc="count-head frames", leave=False)]
    x, y, _, _ = frame_counts(model, train, cfg.batch, "count-head features")
    w, b = fit_ridge(x, np.log(np.maximum(y, 1.0)), cfg.ridge)
    head_cfg = replace(model.cfg, count_head=True, count_min_mass=cfg.min_mass)
    out = SkeletonGenerator(head_cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(COUNT_HEAD_PREFIX)}
    state["count_head.linear.weight"] = torch.tensor(w, dtype=torch.float32)[None]
    state["count_head.linear.bias"] = torch.tensor([b], dtype=torch.float32)
    out.load_state_dict(state)
    out.eval()
    val = validation_frames(FrameSampler(corpus, "train", P.pretrain, tk), corpus, P.pretrain)
    record = {"n_frames": len(train), **asdict(cfg)}
    if val:
        vx, vy, n_votes, n_fine = frame_counts(model, val, cfg.batch)
        kept = out.kept_count(torch.tensor(vx), torch.tensor(n_fine)).numpy()
        record.update(val_frames=len(val), val_joints_mean=float(vy.mean()),
                      val_count_err_votes=float(np.abs(n_votes - vy).mean()),
                      val_count_err_head=float(np.abs(kept - vy).mean()))
        log.info("joint count on %d validation frames (%.1f joints each): votes alone off by %.2f, the head by %.2f",
                 len(val), vy.mean(), record["val_count_err_votes"], record["val_count_err_head"])
    save_model(out, path, info.stage, {**info.provenance, "count_head": record})
    return {"skipped": False, "checkpoint": str(path), **record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit the local skeleton generator's joint-count head.")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", type=Path, required=True, help="run folder (e.g. runs/default)")
    parser.add_argument("--frames", type=int, help="training frames to fit on")
    parser.add_argument("--checkpoint", help="skeleton generator path under the workdir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {k: v for k, v in {"n_frames": args.frames, "checkpoint": args.checkpoint}.items() if v is not None}
    run_stage(args.preset, args.workdir, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
