"""What the ``local`` generator design's proposals and coordinate prior can reach with perfect votes.

    python bench/bench_proposal_ceiling.py --corpus runs/default/corpus --frames 64

On validation frames drawn as the pretraining draws them, every point's vote is set to its true
offset and distance to the nearest ground-truth joint (what the dense head is trained to predict).
Printed: the share of ground-truth joints that are the nearest joint of at least one surface point
(a joint no point votes for cannot be proposed), the proposals' joint-count error and CD-J2J, and the
teacher-forced accuracy of the coordinate prior alone (no learned logits, initial kernel widths) on
the coordinate tokens -- with the perfect votes, and with votes blurred by Gaussian noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.metrics.static_skeleton import cd_j2j  # noqa: E402
from backend.models.local_encoder import coordinate_prior, joint_proposals, joint_vote_targets  # noqa: E402
from training.presets import get_preset  # noqa: E402
from training.pretrain import FrameSampler, collate_skeleton, validation_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02],
                        help="std of Gaussian noise added to the vote targets (normalized units)")
    args = parser.parse_args(argv)
    from training.data.corpus import Corpus

    P = get_preset(args.preset, design="local", n_val_frames=args.frames)
    corpus = Corpus(args.corpus)
    tk = P.skeleton.tokenizer
    frames = validation_frames(FrameSampler(corpus, "train", P.pretrain, tk), corpus, P.pretrain)
    b = collate_skeleton(frames, tk, "cpu")
    off, dist = joint_vote_targets(b["points"], b["joints"], b["joint_valid"])
    nearest = (b["points"] + off)[..., None, :] - b["joints"][:, None]  # [B, N, J, 3]
    voted = (nearest.norm(dim=-1) < 1e-6).any(1) & b["joint_valid"]  # [B, J]
    print(f"{len(frames)} validation frames, {int(b['joint_valid'].sum())} joints; joints nearest to at least one of "
          f"{P.pretrain.n_points} surface points: {float(voted.sum() / b['joint_valid'].sum()):.1%}")
    log_sigma = torch.full((3,), float(np.log(P.skeleton.prior_sigma)))
    tgt = b["tokens"][:, 1:]
    is_coord = tgt < tk.n_disc
    print("| vote noise | proposals / joints | proposal count error | proposal CD-J2J | coordinate-token accuracy "
          "of the prior alone |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for noise in args.noise:
        noisy = off + noise * torch.randn(off.shape, generator=g)
        prop, w = joint_proposals(b["points"], noisy, dist, P.skeleton.proposals)
        counts = w.sum(1)
        n_true = b["joint_valid"].sum(1).float()
        cds = [cd_j2j(prop[i][w[i] > 0].numpy(), f.joints) for i, f in enumerate(frames) if w[i].sum() > 0]
        lp, _ = coordinate_prior(b["tokens"], prop, w, tk.n_disc, log_sigma, P.skeleton.cover_sigma)
        hit = (lp[:, :-1].argmax(-1) == tgt) & is_coord
        print(f"| {noise:.3f} | {float(counts.sum() / n_true.sum()):.2f} | {float((counts - n_true).abs().mean()):.1f} "
              f"| {np.mean(cds):.4f} | {float(hit.sum() / is_coord.sum()):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
