"""Where the time of one pretraining step goes (the profile behind docs/generator_design.md).

    python bench/profile_pretrain_step.py --corpus runs/default/corpus --steps 30 --threads 1 2
    python bench/profile_pretrain_step.py --corpus runs/default/corpus --design local

Runs ``--steps`` real pretraining steps of a preset (after two warm-up steps) on frames drawn exactly
as the pretraining draws them and prints the mean seconds of: data preparation (drawing, normalizing,
sampling and collating a batch), the skeleton generator's encoder forward, decoder forward (with the
``local`` design's proposal prior), loss, backward split at the encoder output (decoder part, then
encoder part), gradient clipping + AdamW, and the skinning network's forward / backward / step. Then
the same steps with the forward passes under bf16 autocast on the CPU (one thread), and which bf16 /
AMX instruction-set flags the CPU reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models import SkeletonGenerator, SkinningNetwork  # noqa: E402
from backend.models.local_encoder import PointContext, joint_vote_loss, joint_vote_targets  # noqa: E402
from backend.models.skeleton_generator import skeleton_token_loss  # noqa: E402
from backend.models.skinning_network import skinning_kl_loss  # noqa: E402
from training.presets import GENERATOR_DESIGNS, get_preset  # noqa: E402
from training.pretrain import FrameSampler, collate_skeleton, collate_skinning, make_optimizer  # noqa: E402


def cpu_bf16_flags() -> list[str]:
    """The bf16 / AMX instruction-set flags ``/proc/cpuinfo`` lists (empty where it cannot be read)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags.split() if "bf16" in f or f.startswith("amx")})


def profile(P, batches, threads: int, bf16: bool) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    skel, skin = SkeletonGenerator(P.skeleton), SkinningNetwork(P.skinning)
    opt_skel, opt_skin = make_optimizer(skel, P.skeleton_optim), make_optimizer(skin, P.skinning_optim)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    pad = skel.tokenizer.pad
    times: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        times.setdefault(name, []).append(t1 - t0)
        return t1

    for sb, kb in batches:
        t = time.perf_counter()
        with autocast():
            context = skel.encode_points(sb["points"], sb["normals"])
        t = tick("skeleton encoder forward", t)
        with autocast():
            logits = skel.decode_logits(context, sb["tokens"])
        t = tick("skeleton decoder forward", t)
        loss = skeleton_token_loss(logits, sb["tokens"], pad)
        if isinstance(context, PointContext):
            off, dist = joint_vote_targets(sb["points"], sb["joints"], sb["joint_valid"],
                                           context.offsets.shape[2])
            loss = loss + P.pretrain.vote_loss_weight * joint_vote_loss(context.offsets, context.distances, off, dist)
        t = tick("skeleton loss", t)
        memory = SkeletonGenerator.memory(context)
        mark = {}
        def reached_encoder(grad: torch.Tensor) -> None:  # the decoder's backward is done
            mark.setdefault("t", time.perf_counter())

        memory.register_hook(reached_encoder)
        opt_skel.zero_grad(set_to_none=True)
        loss.backward()
        t_end = time.perf_counter()
        times.setdefault("skeleton backward: decoder", []).append(mark.get("t", t_end) - t)
        times.setdefault("skeleton backward: encoder", []).append(t_end - mark.get("t", t_end))
        t = t_end
        torch.nn.utils.clip_grad_norm_(skel.parameters(), P.skeleton_optim.grad_clip)
        opt_skel.step()
        t = tick("skeleton clip + AdamW", t)
        with autocast():
            lg = skin(kb["query"], kb["shape"], kb["joints"], kb["parents"], kb["valid"], kb["tree_dist"],
                      return_logits=True)
        loss_k = skinning_kl_loss(lg.float(), kb["target"])
        t = tick("skinning forward", t)
        opt_skin.zero_grad(set_to_none=True)
        loss_k.backward()
        t = tick("skinning backward", t)
        torch.nn.utils.clip_grad_norm_(skin.parameters(), P.skinning_optim.grad_clip)
        opt_skin.step()
        tick("skinning clip + AdamW", t)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--design", choices=sorted(GENERATOR_DESIGNS), default="perceiver")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast pass")
    args = parser.parse_args(argv)
    from training.data.corpus import Corpus

    P = get_preset(args.preset, design=args.design)
    cfg = P.pretrain
    sampler = FrameSampler(Corpus(args.corpus), "train", cfg, P.skeleton.tokenizer)
    n = args.steps + args.warmup
    batches, prep = [], []
    for step in range(n):
        t0 = time.perf_counter()
        samples = sampler.batch(step, max(cfg.skeleton_batch, cfg.skinning_batch))
        batches.append((collate_skeleton(samples[:cfg.skeleton_batch], P.skeleton.tokenizer, "cpu"),
                        collate_skinning(samples[:cfg.skinning_batch], "cpu")))
        prep.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in SkeletonGenerator(P.skeleton).parameters())
    tokens = np.mean([b[0]["tokens"].shape[1] for b in batches])
    print(f"preset {P.name}, design {args.design}: skeleton {n_params / 1e6:.2f} M params, batch "
          f"{cfg.skeleton_batch} x {cfg.n_points} points, mean padded length {tokens:.0f} tokens; "
          f"{args.steps} steps after {args.warmup} warm-up")
    print(f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}; torch {torch.__version__}, "
          f"load average {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}")
    print(f"data preparation (one process, cache warming up): {np.mean(prep[args.warmup:]):.3f} s/step")
    runs = [(t, False) for t in args.threads] + ([] if args.no_bf16 else [(min(args.threads), True)])
    results = {}
    for threads, bf16 in runs:
        times = profile(P, batches, threads, bf16)
        results[(threads, bf16)] = {k: float(np.mean(v[args.warmup:])) for k, v in times.items()}
    header = "| part | " + " | ".join(f"{t} thread{'s' * (t > 1)}{' bf16' if b else ''}" for t, b in runs) + " |"
    print(header)
    print("|---" * (len(runs) + 1) + "|")
    for key in results[runs[0]]:
        print(f"| {key} | " + " | ".join(f"{results[r][key]:.3f}" for r in runs) + " |")
    print("| **total (model)** | " + " | ".join(f"**{sum(results[r].values()):.3f}**" for r in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
