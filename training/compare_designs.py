"""Train skeleton generator designs for the same wall-clock budget and plot validation CD-J2J against time.

    python training/compare_designs.py --corpus runs/default/corpus --workdir runs/compare \\
        --minutes 30 --designs perceiver,local

Each design (:data:`training.presets.GENERATOR_DESIGNS`) trains the preset's skeleton generator alone
(the skinning network is not part of the comparison) on the same training frames in the same order
(the pretraining's :class:`~training.pretrain.FrameSampler`, same seed), with the preset's optimizer
and loss (token cross-entropy; plus the dense joint-vote loss for the ``local`` design). The learning
rate warms up over the preset's warm-up steps and then follows a cosine over the *time* budget, so
every design ends its schedule when its budget ends.

The clock counts training only: data waiting, forward, backward and the optimizer. Validation (same
fixed frames for every design: teacher-forced CE and coordinate-token accuracy, greedy decodes scored
with CD-J2J; designs with joint proposals are decoded twice, with free coordinate tokens and pointing
at the proposals) runs every ``--val-minutes`` of training time and at the end, outside the clock. Run it
with nothing else on the machine: the budget is wall-clock time.

Resumable: ``WORKDIR/<design>/state.pt`` holds the model, the optimizer, the step and the training
seconds so far (written atomically every ``--save-minutes`` and at each validation); a killed run
continues where it stopped, a finished design is skipped. ``WORKDIR/<design>/log.jsonl`` holds the
validation records; the figure and a JSON summary are redrawn from them at the end (``--figure``,
default ``docs/generator_comparison.png``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # `python training/compare_designs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.checkpoint import load_training_state, save_model, save_training_state
from backend.models.skeleton_generator import SkeletonGenerator
from training.presets import GENERATOR_DESIGNS, OptimConfig, get_preset
from training.pretrain import (FrameSampler, batch_stream, git_commit, make_optimizer, skeleton_batch_loss,
                               validate_skeleton, validation_frames)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 10_000_000  # the batch stream's end; the time budget stops training long before


def lr_at_fraction(step: int, fraction: float, cfg: OptimConfig) -> float:
    """Linear warm-up over ``cfg.warmup_steps`` steps, then cosine decay to ``min_lr_ratio * lr`` over
    the elapsed ``fraction`` of the time budget."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, max(0.0, fraction))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def read_log(path: Path) -> list[dict]:
    """The records of a design's ``log.jsonl`` (empty if absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_design(design: str, preset: str, corpus, workdir: Path, budget_s: float, val_every_s: float,
                 save_every_s: float, n_val_frames: int | None, n_val_generate: int | None,
                 threads: int | None) -> list[dict]:
    """Train one design until ``budget_s`` training seconds; returns its validation records.

    Raises:
        RuntimeError: ``workdir/<design>/state.pt`` was written for another preset or budget.
    """
    P = get_preset(preset, design=design)
    overrides = {k: v for k, v in (("n_val_frames", n_val_frames), ("n_val_generate", n_val_generate))
                 if v is not None}
    cfg = replace(P.pretrain, **overrides)
    torch.set_num_threads(threads or P.num_threads or torch.get_num_threads())
    out = workdir / design
    out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out / "state.pt", out / "log.jsonl"
    tokenizer = P.skeleton.tokenizer
    torch.manual_seed(cfg.seed)
    model = SkeletonGenerator(P.skeleton)
    opt = make_optimizer(model, P.skeleton_optim)
    step, trained_s = 0, 0.0
    if state_path.is_file():
        state = load_training_state(state_path)
        if state.get("preset") != P.name or state.get("design") != design or state.get("budget_s") != budget_s:
            raise RuntimeError(f"{state_path} was written for preset {state.get('preset')!r}, design "
                               f"{state.get('design')!r}, budget {state.get('budget_s')} s; this run asks for "
                               f"{P.name!r}, {design!r}, {budget_s} s: use another --workdir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        step, trained_s = int(state["step"]), float(state["trained_s"])
        log.info("%s: resuming at step %d, %.0f of %.0f training seconds", design, step, trained_s, budget_s)
    records = [r for r in read_log(log_path) if "val_cd_j2j" in r]
    if trained_s >= budget_s and records and records[-1]["train_s"] >= budget_s:
        log.info("%s: finished (%.0f s, step %d); skipped", design, trained_s, step)
        return records
    sampler = FrameSampler(corpus, "train", cfg, tokenizer)
    val_frames = validation_frames(sampler, corpus, cfg)
    if not val_frames:
        raise RuntimeError(f"corpus {corpus.root} has no validation frames")
    n_params = sum(p.numel() for p in model.parameters())

    def save_state() -> None:
        save_training_state(state_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                         "trained_s": trained_s, "preset": P.name, "design": design,
                                         "budget_s": budget_s, "torch_rng": torch.get_rng_state()})

    def validate_now() -> None:
        t0 = time.perf_counter()
        metrics = validate_skeleton(model, val_frames, tokenizer, "cpu", cfg.skeleton_batch, cfg.n_val_generate)
        rec = {"design": design, "step": step, "train_s": round(trained_s, 2),
               "val_s": round(time.perf_counter() - t0, 2), **metrics}
        records.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log.info("%s at %.0f s (step %d): %s", design, trained_s, step,
                 {k: round(v, 4) for k, v in metrics.items()})
        save_state()

    if not records:
        log.info("%s: %.2f M params, budget %.0f s, validating %d frames (%d decoded)", design, n_params / 1e6,
                 budget_s, len(val_frames), min(len(val_frames), cfg.n_val_generate))
        validate_now()
    next_val = (math.floor(trained_s / val_every_s) + 1) * val_every_s
    next_save = trained_s + save_every_s
    model.train()
    batches = batch_stream(sampler, step, MAX_STEPS, cfg)
    bar = tqdm(total=round(budget_s), initial=round(trained_s), desc=f"{design} (s)", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    losses: list[dict] = []
    while trained_s < budget_s:
        t0 = time.perf_counter()
        sb, _ = next(batches)
        lr = lr_at_fraction(step, trained_s / budget_s, P.skeleton_optim)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _, parts = skeleton_batch_loss(model, sb, tokenizer.pad, cfg.vote_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), P.skeleton_optim.grad_clip)
        opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{design}: non-finite loss at step {step}")
        dt = time.perf_counter() - t0
        step, trained_s = step + 1, trained_s + dt
        losses.append(parts)
        bar.update(round(trained_s) - bar.n)
        if step % cfg.log_every == 0:
            entry = {"design": design, "step": step, "train_s": round(trained_s, 2), "lr": lr,
                     **{k: float(np.mean([p[k] for p in losses])) for k in losses[0]}}
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            losses = []
        if trained_s >= next_val or trained_s >= budget_s:
            validate_now()
            next_val += val_every_s
            model.train()
        elif trained_s >= next_save:
            save_state()
            next_save = trained_s + save_every_s
    bar.close()
    save_model(model, out / "skeleton_base.safetensors", stage="pretrain",
               provenance={"preset": P.name, "design": design, "step": step, "complete": False,
                           "note": f"design comparison, {budget_s:.0f} s training budget",
                           "preset_config": P.to_dict(), "validation": records[-1],
                           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           **git_commit()})
    return records


def plot_comparison(records: dict[str, list[dict]], figure: Path, title: str) -> None:
    """Validation CD-J2J and coordinate-token accuracy against training minutes, one line per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for design, recs in records.items():
        t = [r["train_s"] / 60 for r in recs]
        line = axes[0].plot(t, [r.get("val_free_cd_j2j", r["val_cd_j2j"]) for r in recs], marker="o",
                            label=f"{design}, free coordinates" if "val_proposals_cd_j2j" in recs[0] else design)[0]
        if "val_proposals_cd_j2j" in recs[0]:  # the same checkpoints decoded by pointing at proposals
            axes[0].plot(t, [r["val_proposals_cd_j2j"] for r in recs], marker="s", linestyle="--",
                         color=line.get_color(), label=f"{design}, pointing at proposals")
        axes[1].plot(t, [r["val_coord_acc"] for r in recs], marker="o", label=design)
    axes[0].set_ylabel("validation CD-J2J (greedy decodes)")
    axes[1].set_ylabel("coordinate-token accuracy (teacher-forced)")
    for ax in axes:
        ax.set_xlabel("training time (minutes)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    tmp = figure.with_name(figure.stem + ".tmp" + figure.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(figure)


def run(corpus_root: Path, workdir: Path, designs: list[str], minutes: float, preset: str = "default",
        val_minutes: float = 5.0, save_minutes: float = 2.0, n_val_frames: int | None = None,
        n_val_generate: int | None = None, threads: int | None = None, figure: Path | None = None,
        title: str | None = None) -> dict[str, list[dict]]:
    """Train every design for ``minutes`` of training time (resuming), then draw the figure.

    Returns:
        ``{design: validation records}``; each record has ``train_s``, ``step``, ``val_cd_j2j``, ...
    Raises:
        ValueError: unknown design or a non-positive budget.
    """
    from training.data.corpus import Corpus

    unknown = [d for d in designs if d not in GENERATOR_DESIGNS]
    if unknown or not designs:
        raise ValueError(f"unknown designs {unknown}; choose from {sorted(GENERATOR_DESIGNS)}")
    if minutes <= 0 or val_minutes <= 0 or save_minutes <= 0:
        raise ValueError("--minutes, --val-minutes and --save-minutes must be positive")
    corpus = Corpus(corpus_root)
    records = {}
    for design in designs:
        records[design] = train_design(design, preset, corpus, workdir, minutes * 60, val_minutes * 60,
                                       save_minutes * 60, n_val_frames, n_val_generate, threads)
    summary = {"preset": preset, "minutes": minutes, "corpus": str(corpus_root), "designs": designs,
               "records": records, **git_commit()}
    tmp = workdir / "comparison.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(workdir / "comparison.json")
    if figure is not None:
        plot_comparison(records, figure, title or f"preset {preset}: {minutes:g} training minutes per design")
        log.info("figure: %s", figure)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus folder (training/data/generate.py)")
    parser.add_argument("--workdir", type=Path, required=True, help="states and logs, one folder per design")
    parser.add_argument("--designs", default="perceiver,local",
                        help=f"comma-separated, from {', '.join(sorted(GENERATOR_DESIGNS))}")
    parser.add_argument("--minutes", type=float, default=30.0, help="training minutes per design")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--val-minutes", type=float, default=5.0, help="training minutes between validations")
    parser.add_argument("--save-minutes", type=float, default=2.0, help="training minutes between states")
    parser.add_argument("--n-val-frames", type=int, help="validation frames (default: the preset's)")
    parser.add_argument("--n-val-generate", type=int, help="of which greedily decoded (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the preset's)")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "generator_comparison.png")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    try:
        run(args.corpus, args.workdir, designs, args.minutes, args.preset, args.val_minutes, args.save_minutes,
            args.n_val_frames, args.n_val_generate, args.threads, args.figure, args.title)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
