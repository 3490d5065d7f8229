"""Bookkeeping shared by the SPRig fine-tuning stages (skeleton and skinning).

Both stages fine-tune one model initialized from a base checkpoint and keep the same records:

* ``<state_dir>/state.pt``: the resumable state ``{"step", "model", "optimizer", "torch_rng",
  "base_sha256", "history"}`` (``history`` is the JSON text of every log entry so far);
* ``<state_dir>/log.jsonl``: one JSON object per training log or validation entry;
* the output checkpoint, written with its provenance (base checkpoint, corpus, config, commit,
  step, completion, last validation, creation time).

:class:`StageBookkeeping` does these; the training loops only call it.
"""

from __future__ import annotations

import datetime
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from backend.models.checkpoint import load_training_state, save_model, save_training_state

log = logging.getLogger(__name__)


def autocast_factory(enabled: bool, device: torch.device) -> Callable[[], ContextManager]:
    """A zero-argument factory of bf16 autocast contexts on CUDA when ``enabled``, else of no-op contexts."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def stage_config(cls: type, presets: dict[str, dict], preset: str, overrides: dict, stage: str,
                 nested: dict[str, type] | None = None):
    """``cls(**values)`` from a stage's preset table and field overrides (no stage-specific checks).

    Args:
        cls: the stage's config dataclass.
        presets: preset name -> field values.
        preset: the chosen preset; overrides: fields that replace the preset's values.
        stage: the stage name used in error messages (``sprig-skeleton``).
        nested: fields whose value may be given as a dict of the fields of the named dataclass.
    Raises:
        ValueError: unknown preset or unknown fields, named.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    values = {**presets[preset], **overrides}
    for name, nested_cls in (nested or {}).items():
        if isinstance(values.get(name), dict):
            values[name] = nested_cls(**values[name])
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {stage} settings {sorted(unknown)}")
    return cls(**values)


def finetune_provenance(preset: str, workdir: Path, base_checkpoint: Path, base_sha256: str, train_clips: int,
                        world: int, device: torch.device, config: dict, commit: dict, **extra: Any) -> dict:
    """Provenance of a fine-tuned checkpoint (the per-export fields are added by :meth:`StageBookkeeping.export`).

    Args:
        commit: ``{"commit", "dirty"}`` of the code that trains.
        **extra: stage-specific fields (e.g. ``skeleton_checkpoint``, ``skipped``).
    """
    return {"preset": preset, "base_checkpoint": str(base_checkpoint), "base_sha256": base_sha256, **extra,
            "corpus": str(Path(workdir) / "corpus"), "train_clips": train_clips, "world_size": world,
            "device": device.type, "torch": torch.__version__, "config": config, **commit}


def mean_log_entry(step: int, run: list[dict[str, float]], grad_norm: float, seconds: float,
                   sort_keys: bool = False) -> dict[str, float]:
    """One training log line: the mean of every loss part over the steps since the last line.

    Args:
        run: per-step parts since the last line; a key missing from some steps is averaged over the
            steps that have it.
        grad_norm: gradient norm of the last step.
        seconds: wall time since the last line.
        sort_keys: order the parts alphabetically (else by first appearance).
    Returns:
        ``{"step", <parts>..., "grad_norm", "s_per_step"}``.
    """
    if not run:
        raise ValueError("mean_log_entry: no steps to average")
    keys = list(dict.fromkeys(k for r in run for k in r))
    if sort_keys:
        keys.sort()
    return {"step": step, **{k: float(np.mean([r[k] for r in run if k in r])) for k in keys},
            "grad_norm": float(grad_norm), "s_per_step": seconds / len(run)}


def rounded(metrics: dict) -> dict:
    """Metrics for a log message: floats rounded to 4 digits, the ``step`` key dropped."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "step"}


@dataclass
class StageBookkeeping:
    """Resumable state, JSONL log and checkpoint export of one fine-tuning stage.

    Only rank 0 writes files; every rank may call the methods.

    Attributes:
        stage: checkpoint stage name (``sprig-skeleton`` / ``sprig-skinning``).
        state_dir: folder of ``state.pt`` and ``log.jsonl``.
        out_path: the exported checkpoint.
        base_sha256: sha256 of the base checkpoint; a state from another base is refused on resume.
        provenance: fixed provenance fields (:func:`finetune_provenance`).
        total_steps: the run's step count (an export at this step is marked complete).
        rank: process rank.
        history: every log entry so far (restored on resume).
    """

    stage: str
    state_dir: Path
    out_path: Path
    base_sha256: str
    provenance: dict = field(default_factory=dict)
    total_steps: int = 0
    rank: int = 0
    history: list[dict] = field(default_factory=list)
    _exported_step: int = field(default=-1, repr=False)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) / "state.pt"

    @property
    def log_path(self) -> Path:
        return Path(self.state_dir) / "log.jsonl"

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
        """Load ``state.pt`` into ``model`` / ``optimizer`` / the torch RNG when it exists.

        Returns:
            the step to continue from (0 without a state).
        Raises:
            RuntimeError: the state was fine-tuned from another base checkpoint.
        """
        path = self.state_path
        if not path.is_file():
            return 0
        state = load_training_state(path, map_location=device)
        if state.get("base_sha256") != self.base_sha256:
            raise RuntimeError(f"{path} was fine-tuned from another base checkpoint; delete it or use "
                               "another state_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step = int(state["step"])
        self.history = json.loads(state.get("history", "[]"))
        if self.rank == 0:
            log.info("resuming %s from step %d of %d (%s)", self.stage, step, self.total_steps, path)
        return step

    def save_state(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write the resumable state (atomic; rank 0 only)."""
        if self.rank == 0:
            save_training_state(self.state_path, {
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "base_sha256": self.base_sha256,
                "history": json.dumps(self.history)})

    def export(self, step: int, model: torch.nn.Module, metrics: dict) -> None:
        """Write the output checkpoint with provenance (rank 0 only; once per step)."""
        if self.rank == 0 and self._exported_step != step:
            self._exported_step = step
            prov = {**self.provenance, "step": step, "complete": step >= self.total_steps, "validation": metrics,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            save_model(model, self.out_path, stage=self.stage, provenance=prov)

    def log_line(self, entry: dict) -> None:
        """Append ``entry`` to the history and to ``log.jsonl``."""
        self.history.append(entry)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def last_validation(self, key: str) -> dict:
        """The latest history entry holding ``key`` (a validation entry), or ``{}``."""
        return next((h for h in reversed(self.history) if key in h), {})

    def log_validation(self, step: int, metrics: dict[str, float]) -> dict:
        """Log a validation result as ``{"step", **metrics}`` and return that entry."""
        entry = {"step": step, **metrics}
        self.log_line(entry)
        if step == 0:
            log.info("base model validation: %s", rounded(entry))
        else:
            log.info("step %d validation: %s", step, rounded(entry))
        return entry
