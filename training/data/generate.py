"""Write the procedural corpus to disk: stage ``data`` of ``training/run.py``.

    python training/run.py --stage data --preset smoke           # ~32 creatures, < 1 min
    python training/run.py --stage data                          # default preset, ~1600 creatures
    python -m training.data.generate --out runs/mine/corpus --n 200 --frames 32 --workers 2

Creatures are generated in shards (``shard_size`` creatures per ``.npz``) by a pool of worker
processes. A shard is written to a temporary file and renamed into place, then its JSON summary is
written the same way; a shard counts as done only when both exist, so a killed run never leaves a
corrupt shard behind, and running again resumes with the missing shards. ``index.json`` is
written last.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # `python training/data/generate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tqdm import tqdm

from training.data.corpus import (FORMAT_VERSION, CorpusConfig, CorpusError, atomic_write_json, generate_creature,
                                  shard_name, write_shard)

logger = logging.getLogger(__name__)

PRESETS: dict[str, CorpusConfig] = {
    # a few dozen small creatures with short clips: generates in well under a minute on 2 cores
    "smoke": CorpusConfig(n_creatures=32, frames=(24, 32), verts=(1000, 2500), shard_size=8),
    # about two hours of CPU pretraining for the base rigger
    "default": CorpusConfig(n_creatures=1600),
    "large": CorpusConfig(n_creatures=8000),
}


def preset_config(preset: str, **overrides) -> CorpusConfig:
    """The :class:`CorpusConfig` of a preset, with fields replaced by ``overrides`` (``None`` ignored)."""
    if preset not in PRESETS:
        raise CorpusError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[preset], **changes)


def _shard_job(args: tuple[str, int, list[int], CorpusConfig]) -> tuple[int, int, float]:
    """Worker: generate and write one shard; returns (shard, n_creatures, seconds)."""
    shards_dir, shard, indices, config = args
    start = time.perf_counter()
    records = [generate_creature(i, config.seed, config) for i in indices]
    write_shard(Path(shards_dir), shard, records)
    return shard, len(indices), time.perf_counter() - start


def _init_worker() -> None:
    # one BLAS / OpenMP thread per process: the pool already uses the cores
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def shard_plan(config: CorpusConfig) -> list[tuple[int, list[int]]]:
    """``(shard, indices)`` for every shard of the corpus."""
    n, size = config.n_creatures, config.shard_size
    return [(s, list(range(s * size, min(n, (s + 1) * size)))) for s in range((n + size - 1) // size)]


def shard_done(shards_dir: Path, shard: int, indices: list[int]) -> bool:
    """Whether the shard's npz and JSON summary exist and the summary lists exactly ``indices``."""
    import json

    meta_path = Path(shards_dir) / f"{shard_name(shard)}.json"
    if not meta_path.exists() or not (Path(shards_dir) / f"{shard_name(shard)}.npz").exists():
        return False
    try:
        return [m["index"] for m in json.loads(meta_path.read_text())] == list(indices)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate_corpus(root: Path, config: CorpusConfig, progress: bool = True) -> Path:
    """Generate (or resume) the corpus described by ``config`` in the folder ``root``.

    Returns:
        ``root``, holding ``config.json``, ``shards/`` and ``index.json``.
    Raises:
        CorpusError: when ``root`` holds a corpus made with different generation settings.
    """
    import json

    root = Path(root)
    shards_dir = root / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    config_path = root / "config.json"
    key = config.generation_key()
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old.get("generation") != key:
            diff = sorted(k for k in set(key) | set(old.get("generation", {}))
                          if key.get(k) != old.get("generation", {}).get(k))
            raise CorpusError(f"{root} holds a corpus generated with other settings ({', '.join(diff)}); "
                              f"use another folder or delete it")
    atomic_write_json(config_path, {"version": FORMAT_VERSION, "generation": key})

    for stale in shards_dir.glob(".shard_*.tmp"):  # left by a run killed while writing
        stale.unlink()
    plan = shard_plan(config)
    todo = [(s, idx) for s, idx in plan if not shard_done(shards_dir, s, idx)]
    done_creatures = sum(len(idx) for s, idx in plan) - sum(len(idx) for _, idx in todo)
    if done_creatures:
        logger.info("resuming: %d of %d creatures already written", done_creatures, config.n_creatures)
    jobs = [(str(shards_dir), s, idx, config) for s, idx in todo]
    start = time.perf_counter()
    bar = tqdm(total=config.n_creatures, initial=done_creatures, unit="creature", desc="corpus",
               disable=not progress, dynamic_ncols=True)
    try:
        if config.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                _, n, _ = _shard_job(job)
                bar.update(n)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(config.workers, len(jobs)), initializer=_init_worker) as pool:
                for _, n, _ in pool.imap_unordered(_shard_job, jobs):
                    bar.update(n)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    made = sum(len(idx) for _, idx in todo)
    if made:
        logger.info("generated %d creatures in %.1f s (%.1f per minute)", made, elapsed, 60.0 * made / elapsed)
    write_index(root, config)
    return root


def write_index(root: Path, config: CorpusConfig) -> dict:
    """Collect the shard summaries into ``root/index.json`` (atomically) and return it."""
    import json

    creatures: dict[str, dict] = {}
    for s, indices in shard_plan(config):
        path = Path(root) / "shards" / f"{shard_name(s)}.json"
        if not path.exists():
            raise CorpusError(f"shard {path.name} is missing; run the data stage again to finish the corpus")
        metas = json.loads(path.read_text())
        if [m["index"] for m in metas] != indices:
            raise CorpusError(f"shard {path.name} does not hold creatures {indices[0]}..{indices[-1]}; "
                              f"run the data stage again to rewrite it")
        for meta in metas:
            creatures[str(meta.pop("index"))] = meta
    index = {"version": FORMAT_VERSION, "config": json.loads(json.dumps(asdict(config))),
             "n_creatures": len(creatures), "creatures": creatures}
    atomic_write_json(Path(root) / "index.json", index)
    return index


def run_stage(preset: str, workdir: Path, device: str = "cpu", **overrides) -> Path:
    """Stage ``data`` of the training pipeline: write the corpus of ``preset`` to ``workdir/corpus``.

    ``device`` is unused (generation runs on CPU processes); ``overrides`` replace fields of the
    preset's :class:`CorpusConfig` (e.g. ``n_creatures=200, n_frames=32``).
    """
    config = preset_config(preset, **overrides)
    logger.info("corpus: %d creatures, frames %s, %d workers -> %s", config.n_creatures,
                config.n_frames or config.frames, config.workers, Path(workdir) / "corpus")
    return generate_corpus(Path(workdir) / "corpus", config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="corpus folder (default: runs/<preset>/corpus)")
    parser.add_argument("--n", type=int, default=None, help="number of creatures")
    parser.add_argument("--frames", type=int, default=None, help="fixed clip length K")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = preset_config(args.preset, n_creatures=args.n, n_frames=args.frames, workers=args.workers,
                           seed=args.seed)
    out = args.out or Path("runs") / args.preset / "corpus"
    generate_corpus(out, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
