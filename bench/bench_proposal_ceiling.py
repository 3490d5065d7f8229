"""What the ``local`` generator design's proposals and coordinate prior can reach with perfect votes.

    python bench/bench_proposal_ceiling.py --corpus runs/default/corpus --frames 64 \
        --votes-per-point 1 2 3 --radius 0.02 0.015

On validation frames drawn as the pretraining draws them, every point's votes are set to their true
offsets and distances to the ``K`` nearest ground-truth joints (what the dense head is trained to
predict). Printed, for every ``K`` and clustering radius: the share of ground-truth joints among the
``K`` nearest joints of at least one surface point (a joint no point votes for cannot be proposed), the
proposals' joint-count error and CD-J2J, and the teacher-forced accuracy of the coordinate prior alone
(no learned logits, initial kernel widths) on the coordinate tokens -- with the perfect votes, and
with votes blurred by Gaussian noise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.metrics.static_skeleton import cd_j2j  # noqa: E402
from backend.models.checkpoint import load_model  # noqa: E402
from backend.models.local_encoder import coordinate_prior, joint_proposals, joint_vote_targets  # noqa: E402
from training.presets import get_preset  # noqa: E402
from training.pretrain import FrameSampler, collate_skeleton, validation_frames  # noqa: E402


def proposal_scores(prop: torch.Tensor, w: torch.Tensor, n_true: torch.Tensor, frames: list) -> str:
    """Table cells: proposals per ground-truth joint, mean absolute count error, mean proposal CD-J2J."""
    counts = w.sum(1)
    cds = [cd_j2j(prop[i][w[i] > 0].numpy(), f.joints) for i, f in enumerate(frames) if w[i].sum() > 0]
    return (f"{float(counts.sum() / n_true.sum()):.2f} | {float((counts - n_true).abs().mean()):.1f} "
            f"| {np.mean(cds):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--votes-per-point", type=int, nargs="+", default=[1])
    parser.add_argument("--radius", type=float, nargs="+", default=None,
                        help="clustering radii to try (default: the preset's)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02],
                        help="std of Gaussian noise added to the vote targets (normalized units)")
    parser.add_argument("--skeleton", type=Path, nargs="*", default=[],
                        help="trained `local` generator checkpoints: also cluster their own votes (rows 'learned')")
    parser.add_argument("--min-mass", type=float, nargs="+", default=None,
                        help="learned rows: clustering min_mass values to try (default: the model's)")
    parser.add_argument("--weight-scale", type=float, nargs="+", default=None,
                        help="learned rows: vote weight scales to try (default: the model's)")
    parser.add_argument("--radius-scale", type=float, nargs="+", default=None,
                        help="learned rows: adaptive-radius scales to try (0: fixed radius; default: the model's)")
    args = parser.parse_args(argv)
    from training.data.corpus import Corpus

    P = get_preset(args.preset, design="local", n_val_frames=args.frames)
    corpus = Corpus(args.corpus)
    tk = P.skeleton.tokenizer
    frames = validation_frames(FrameSampler(corpus, "train", P.pretrain, tk), corpus, P.pretrain)
    b = collate_skeleton(frames, tk, "cpu")
    n_joints = int(b["joint_valid"].sum())
    log_sigma = torch.full((3,), float(np.log(P.skeleton.prior_sigma)))
    tgt = b["tokens"][:, 1:]
    is_coord = tgt < tk.n_disc
    n_true = b["joint_valid"].sum(1).float()
    print(f"{len(frames)} validation frames, {n_joints} joints ({float(n_true.mean()):.1f} per frame), "
          f"{P.pretrain.n_points} surface points")
    print("| votes per point | joints voted for | radius | vote noise | proposals / joints | proposal count error "
          "| proposal CD-J2J | coordinate-token accuracy of the prior alone |")
    print("|---|---|---|---|---|---|---|---|")
    for K in args.votes_per_point:
        off, dist = joint_vote_targets(b["points"], b["joints"], b["joint_valid"], K)
        moved = b["points"][:, :, None] + off  # [B, N, K, 3]
        hit = (moved[:, :, :, None] - b["joints"][:, None, None]).norm(dim=-1) < 1e-6  # [B, N, K, J]
        voted = hit.flatten(1, 2).any(1) & b["joint_valid"]
        for radius in args.radius or [P.skeleton.proposal_radius]:
            cfg = replace(P.skeleton.proposals, radius=radius)
            g = torch.Generator().manual_seed(0)
            for noise in args.noise:
                noisy = off + noise * torch.randn(off.shape, generator=g)
                prop, w = joint_proposals(b["points"], noisy, dist, cfg)
                lp, _ = coordinate_prior(b["tokens"], prop, w, tk.n_disc, log_sigma, P.skeleton.cover_sigma)
                right = (lp[:, :-1].argmax(-1) == tgt) & is_coord
                print(f"| {K} | {float(voted.sum()) / n_joints:.1%} | {radius:.3f} | {noise:.3f} "
                      f"| {proposal_scores(prop, w, n_true, frames)} | {float(right.sum() / is_coord.sum()):.1%} |",
                      flush=True)
    for path in args.skeleton:
        model, _ = load_model(path, expected="skeleton_generator")
        with torch.no_grad():
            ctx = model.encode_points(b["points"], b["normals"])
        K = ctx.offsets.shape[2]
        off, _ = joint_vote_targets(b["points"], b["joints"], b["joint_valid"], K)
        vote_err = float((ctx.offsets - off).norm(dim=-1).mean())
        print(f"\n{path}: {K} vote(s) per point, mean vote error {vote_err:.4f}\n")
        print("| radius | radius scale | min mass | weight scale | proposals / joints | proposal count error "
              "| proposal CD-J2J |")
        print("|---|---|---|---|---|---|---|")
        for radius in args.radius or [model.cfg.proposal_radius]:
            for radius_scale in args.radius_scale or [model.cfg.proposal_radius_scale]:
                for min_mass in args.min_mass or [model.cfg.proposal_min_mass]:
                    for scale in args.weight_scale or [model.cfg.proposal_weight_scale]:
                        cfg = replace(model.cfg.proposals, radius=radius, radius_scale=radius_scale, min_mass=min_mass,
                                      weight_scale=scale)
                        prop, w = joint_proposals(b["points"], ctx.offsets, ctx.distances, cfg)
                        print(f"| {radius:.3f} | {radius_scale:g} | {min_mass:g} | {scale:g} "
                              f"| {proposal_scores(prop, w, n_true, frames)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
