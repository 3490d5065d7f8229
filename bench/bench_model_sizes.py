"""Seconds per pretraining step for a few model sizes (the numbers behind docs/model_sizes.md).

    python bench/bench_model_sizes.py --corpus runs/default/corpus --steps 8 --threads 2

Each candidate runs ``--steps`` real training steps (after one warm-up step) on frames drawn from the
corpus exactly as the pretraining draws them; the time is split into data preparation, the skeleton
generator's step and the skinning network's step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models import SkeletonGenerator, SkeletonGeneratorConfig, SkinningNetwork, SkinningNetworkConfig  # noqa: E402
from backend.models.skeleton_generator import skeleton_token_loss  # noqa: E402
from backend.models.skinning_network import skinning_kl_loss  # noqa: E402
from training.pretrain import FrameSampler, collate_skeleton, collate_skinning, make_optimizer  # noqa: E402
from training.presets import OptimConfig, get_preset  # noqa: E402

SKELETON_SIZES = {
    "S-128x1+3": SkeletonGeneratorConfig(d_model=128, n_heads=4, n_latents=32, n_enc_layers=1, n_dec_layers=3),
    "S-192x2+4": SkeletonGeneratorConfig(d_model=192, n_heads=6, n_latents=64, n_enc_layers=2, n_dec_layers=4),
    "S-256x2+6": SkeletonGeneratorConfig(d_model=256, n_heads=8, n_latents=64, n_enc_layers=2, n_dec_layers=6),
}
SKINNING_SIZES = {
    "K-64x1/1/1": SkinningNetworkConfig(d_model=64, n_heads=4, n_latents=32, n_shape_layers=1, n_joint_layers=1,
                                        n_point_layers=1),
    "K-96x1/2/1": SkinningNetworkConfig(d_model=96, n_heads=4, n_latents=48, n_shape_layers=1, n_joint_layers=2,
                                        n_point_layers=1),
    "K-128x2/2/2": SkinningNetworkConfig(d_model=128, n_heads=4, n_latents=64, n_shape_layers=2, n_joint_layers=2,
                                         n_point_layers=2),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skeleton-batch", type=int, default=8)
    parser.add_argument("--skinning-batch", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from training.data.corpus import Corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    P = get_preset("default")
    cfg = replace(P.pretrain, skeleton_batch=args.skeleton_batch, skinning_batch=args.skinning_batch)
    corpus = Corpus(args.corpus)
    tk = P.skeleton.tokenizer
    sampler = FrameSampler(corpus, "train", cfg, tk)
    # the same frames for every candidate; data time measured once
    t0 = time.perf_counter()
    batches = [sampler.batch(s, max(cfg.skeleton_batch, cfg.skinning_batch)) for s in range(args.steps + 1)]
    data_s = (time.perf_counter() - t0) / (args.steps + 1)
    tokens = [len(s.tokens) for b in batches for s in b]
    rows = []
    print(f"threads {torch.get_num_threads()}; data preparation {data_s:.3f} s/step "
          f"(tokens per frame mean {np.mean(tokens):.0f}, max {max(tokens)})")
    def skeleton_batch(frames):
        return collate_skeleton(frames[:cfg.skeleton_batch], tk, "cpu")

    def skeleton_loss(model, sb):
        return skeleton_token_loss(model(sb["points"], sb["normals"], sb["tokens"]), sb["tokens"], tk.pad)

    def skinning_batch(frames):
        return collate_skinning(frames[:cfg.skinning_batch], "cpu")

    def skinning_loss(model, kb):
        return skinning_kl_loss(model(kb["query"], kb["shape"], kb["joints"], kb["parents"], kb["valid"],
                                      kb["tree_dist"], return_logits=True), kb["target"])

    candidates = [("skeleton", name, SkeletonGenerator, c, skeleton_batch, skeleton_loss, cfg.skeleton_batch)
                  for name, c in SKELETON_SIZES.items()]
    candidates += [("skinning", name, SkinningNetwork, c, skinning_batch, skinning_loss, cfg.skinning_batch)
                   for name, c in SKINNING_SIZES.items()]
    for kind, name, model_cls, model_cfg, collate, loss_fn, batch in candidates:
        torch.manual_seed(0)
        model = model_cls(model_cfg)
        opt = make_optimizer(model, OptimConfig())
        times = []
        for i, b in enumerate(batches):
            tensors = collate(b)
            t = time.perf_counter()
            loss = loss_fn(model, tensors)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append({"model": name, "params_M": params, "s_per_step": float(np.mean(times))})
        print(f"  {kind} {name:12s} {params:5.2f} M params  {np.mean(times):.3f} s/step (batch {batch})")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "data_s_per_step": data_s,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
