"""Model checkpoints: one safetensors file per model, with JSON metadata and a verified sha256.

Metadata keys (all strings, JSON where structured):

* ``format`` -- ``sprig-checkpoint/1``
* ``model`` -- ``skeleton_generator`` or ``skinning_network``
* ``config`` -- the model's dataclass config
* ``stage`` -- training stage that produced the weights (``pretrain``, ``sprig-skeleton``, ...)
* ``provenance`` -- data / code / run facts (corpus, preset, steps, commit, date, ...)
* ``sha256`` -- digest of every tensor (name, dtype, shape, bytes) and of the other metadata

Loading parses the file with safetensors (no code runs), recomputes the digest and refuses a file
whose digest, model kind or tensor shapes do not match. Training-state files used for resuming are
written with ``torch.save`` and read with ``torch.load(weights_only=True)``; every write goes to a
temporary file that is renamed into place, so a kill never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig

log = logging.getLogger(__name__)

FORMAT = "sprig-checkpoint/1"
MODEL_KINDS: dict[str, tuple[type, type]] = {
    "skeleton_generator": (SkeletonGenerator, SkeletonGeneratorConfig),
    "skinning_network": (SkinningNetwork, SkinningNetworkConfig),
}


MAX_PARAMETERS = 500_000_000
"""Most parameters a checkpoint's config may describe (the shipped models have a few million); a
config beyond it is refused before any weight tensor of that size is allocated."""
MAX_CONFIG_INT = 1 << 16
"""Largest value an integer config field (widths, counts) may take."""
MAX_LAYERS = 64
"""Largest depth (a config field named ``*_layers``) accepted: building thousands of blocks, even
without memory, takes minutes; the shipped models have 1-4."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, modified, or does not match the expected model."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: Path
    model: str
    config: dict
    stage: str
    provenance: dict
    sha256: str


def model_kind(model: torch.nn.Module) -> str:
    for kind, (cls, _) in MODEL_KINDS.items():
        if isinstance(model, cls):
            return kind
    raise CheckpointError(f"no checkpoint kind for {type(model).__name__}")


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "sha256"):
        h.update(f"{key}={meta[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_replace(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``final``."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_model(model: torch.nn.Module, path: Path | str, stage: str, provenance: dict[str, Any] | None = None) -> str:
    """Write ``model`` to ``path`` (atomic); returns the sha256 stored in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    meta = {
        "format": FORMAT,
        "model": model_kind(module),
        "config": json.dumps(module.cfg.to_dict(), sort_keys=True),
        "stage": stage,
        "provenance": json.dumps(provenance or {}, sort_keys=True, default=str),
    }
    meta["sha256"] = _digest(tensors, meta)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; checkpoints are shared artefacts
    atomic_replace(tmp, path)
    log.info("saved %s (%s, stage %s, sha256 %s)", path, meta["model"], stage, meta["sha256"][:12])
    return meta["sha256"]


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Parse and verify a checkpoint; returns its tensors (CPU) and metadata.

    Raises:
        CheckpointError: missing file, not a safetensors file, missing metadata, sha256 mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several error types for corrupt headers/data
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (corrupt or truncated?): {exc}") from exc
    missing = [k for k in ("format", "model", "config", "stage", "provenance", "sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {missing}; not a SPRig checkpoint")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{path}: format {meta['format']!r}, expected {FORMAT!r}")
    digest = _digest(tensors, meta)
    if digest != meta["sha256"]:
        raise CheckpointError(f"{path}: sha256 mismatch (stored {meta['sha256'][:12]}..., computed "
                              f"{digest[:12]}...): the file is corrupt or was modified")
    try:
        info = CheckpointInfo(path=path, model=meta["model"], config=json.loads(meta["config"]),
                              stage=meta["stage"], provenance=json.loads(meta["provenance"]), sha256=digest)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(info.config, dict):
        raise CheckpointError(f"{path}: config metadata is not a JSON object")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{path}: tensor {name!r} holds {n_bad} NaN/Inf values of {t.numel()}: "
                                  "the weights are corrupt (a diverged training run?)")
    return tensors, info


def load_model(path: Path | str, expected: str | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Build the model a checkpoint describes and load its weights (eval mode).

    Args:
        path: the ``.safetensors`` file.
        expected: ``skeleton_generator`` / ``skinning_network`` to insist on a kind.
        device: where the model goes.
    Raises:
        CheckpointError: see :func:`read_checkpoint`; also a wrong model kind, an unknown config
            field, or tensors that do not fit the architecture.
    """
    tensors, info = read_checkpoint(path)
    if info.model not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {info.model!r}")
    if expected is not None and info.model != expected:
        raise CheckpointError(f"{path}: holds a {info.model}, expected a {expected}")
    cls, cfg_cls = MODEL_KINDS[info.model]
    cfg = _checked_config(path, cfg_cls, info.config)
    # Shapes first, on the meta device (no memory): a config that disagrees with the tensors, or one
    # describing a huge model, is refused before real modules are built.
    try:
        with torch.device("meta"):
            shapes_only = cls(cfg)
    except Exception as exc:  # a config value the constructor cannot use (any error type)
        raise CheckpointError(f"{path}: config cannot build {cls.__name__}: {type(exc).__name__}: {exc}") from exc
    n_params = sum(p.numel() for p in shapes_only.parameters())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: config describes a {cls.__name__} with {n_params:,} parameters, above the "
                              f"limit of {MAX_PARAMETERS:,} (corrupt or hostile config)")
    own = {k: tuple(v.shape) for k, v in shapes_only.state_dict().items()}
    del shapes_only
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shape_bad = [k for k in own if k in tensors and own[k] != tuple(tensors[k].shape)]
    if missing or unexpected or shape_bad:
        raise CheckpointError(f"{path}: weights do not fit {cls.__name__}({info.config}): missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {shape_bad[:5]}")
    model = cls(cfg)
    model.load_state_dict(tensors)
    model.to(device).eval()
    return model, info


def _checked_config(path: Path, cfg_cls: type, config: dict):
    """Build the config dataclass, refusing unknown fields, wrong types and out-of-range numbers."""
    for key, value in config.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            top = MAX_LAYERS if key.endswith("_layers") else MAX_CONFIG_INT
            if not 0 <= value <= top:
                raise CheckpointError(f"{path}: config field {key!r} = {value} is outside [0, {top}]")
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_CONFIG_INT:
                raise CheckpointError(f"{path}: config field {key!r} = {value} is not a sane finite number")
        elif not isinstance(value, (list, dict)):
            raise CheckpointError(f"{path}: config field {key!r} has type {type(value).__name__}")
    try:
        return cfg_cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config does not match {cfg_cls.__name__}: {exc}") from exc


def save_training_state(path: Path | str, state: dict[str, Any]) -> None:
    """Atomically write a resumable training state (models, optimizers, step, RNG) with torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    atomic_replace(tmp, path)


def load_training_state(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state written by :func:`save_training_state` (``weights_only=True``: no code runs)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state (corrupt or truncated?): {exc}") from exc
