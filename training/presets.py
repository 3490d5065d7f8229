"""Training presets: model sizes and optimisation, shared by every stage.

* ``smoke`` -- CI: a tiny model and a few steps (the whole pretraining in well under a minute).
* ``default`` -- the model that ships: pretraining fits in ~2 hours on 2 CPU cores
  (sizes and seconds per step in ``docs/model_sizes.md``).
* ``large`` -- a bigger model for a GPU (bf16 autocast, larger batches, more steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from backend.models.skeleton_generator import SkeletonGeneratorConfig
from backend.models.skinning_network import SkinningNetworkConfig


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``, gradient clipping."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class PretrainConfig:
    """Supervised frame-by-frame pretraining of the base static rigger.

    Attributes:
        steps: optimizer steps (both models step once per training step).
        skeleton_batch: frames per skeleton batch (per process).
        skinning_batch: frames per skinning batch (per process).
        n_points: surface samples given to the skeleton encoder and as skinning shape context.
        n_query: skinning query points per frame (half mesh vertices, half surface samples).
        rotate_up: random rotation about the up axis (Y) before normalization.
        scale_jitter: uniform range of the scale applied after normalization.
        shift_jitter: max translation (normalized units) after scaling, kept inside [-0.5, 0.5].
        val_every: steps between validations; ckpt_every: steps between resumable states.
        n_val_frames: validation frames (fixed); n_val_generate: of which also greedily decoded.
        vote_loss_weight: weight of the dense joint-vote loss (``local`` generator design only).
        log_every: steps between log lines.
        record_cache: corpus records kept in memory.
        frames_per_record: frames drawn from a record while it is loaded (amortizes loading).
        data_workers: 1 prepares batches in a background process (overlaps with training), 0 inline.
        seed: base seed of data sampling and initialization.
    """

    steps: int = 10000
    skeleton_batch: int = 8
    skinning_batch: int = 4
    n_points: int = 512
    n_query: int = 512
    rotate_up: bool = True
    scale_jitter: tuple[float, float] = (0.85, 1.0)
    shift_jitter: float = 0.03
    val_every: int = 500
    ckpt_every: int = 250
    n_val_frames: int = 64
    n_val_generate: int = 16
    vote_loss_weight: float = 1.0
    log_every: int = 50
    record_cache: int = 256
    frames_per_record: int = 4
    data_workers: int = 1
    seed: int = 0


@dataclass
class Preset:
    """Everything a preset fixes about the models and their optimisation."""

    name: str
    skeleton: SkeletonGeneratorConfig = field(default_factory=SkeletonGeneratorConfig)
    skinning: SkinningNetworkConfig = field(default_factory=SkinningNetworkConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    skeleton_optim: OptimConfig = field(default_factory=OptimConfig)
    skinning_optim: OptimConfig = field(default_factory=OptimConfig)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_threads: int = 0  # torch CPU threads of the training process (0 = torch default)

    def to_dict(self) -> dict:
        return asdict(self)


def _smoke() -> Preset:
    return Preset(
        name="smoke",
        skeleton=SkeletonGeneratorConfig(d_model=64, n_heads=4, n_latents=16, n_enc_layers=1, n_dec_layers=2,
                                         n_freq=4, mlp_ratio=2),
        skinning=SkinningNetworkConfig(d_model=48, n_heads=4, n_latents=16, n_shape_layers=1, n_joint_layers=1,
                                       n_point_layers=1, n_freq=4, mlp_ratio=2),
        pretrain=PretrainConfig(steps=30, skeleton_batch=4, skinning_batch=2, n_points=256, n_query=256,
                                val_every=15, ckpt_every=10, n_val_frames=8, n_val_generate=2, log_every=5,
                                record_cache=64, frames_per_record=2, data_workers=0),
        skeleton_optim=OptimConfig(lr=1e-3, warmup_steps=5),
        skinning_optim=OptimConfig(lr=1e-3, warmup_steps=5),
        num_threads=1,
    )


def _default() -> Preset:
    return with_generator_design(Preset(
        name="default",
        skeleton=SkeletonGeneratorConfig(d_model=192, n_heads=6, n_latents=64, n_enc_layers=2, n_dec_layers=4),
        skinning=SkinningNetworkConfig(d_model=96, n_heads=4, n_latents=48, n_shape_layers=1, n_joint_layers=2,
                                       n_point_layers=1),
        pretrain=PretrainConfig(steps=10000, skeleton_batch=8, skinning_batch=4, n_points=512, n_query=512),
        skeleton_optim=OptimConfig(lr=5e-4, warmup_steps=300),
        skinning_optim=OptimConfig(lr=5e-4, warmup_steps=300),
        num_threads=1,  # the second core prepares batches (data_workers=1)
    ), "local")


def _large() -> Preset:
    return with_generator_design(Preset(
        name="large",
        skeleton=SkeletonGeneratorConfig(d_model=512, n_heads=8, n_latents=256, n_enc_layers=4, n_dec_layers=8,
                                         dropout=0.1),
        skinning=SkinningNetworkConfig(d_model=256, n_heads=8, n_latents=128, n_shape_layers=3, n_joint_layers=3,
                                       n_point_layers=3),
        pretrain=PretrainConfig(steps=100000, skeleton_batch=64, skinning_batch=32, n_points=2048, n_query=2048,
                                val_every=2000, ckpt_every=1000, n_val_frames=256, n_val_generate=64, log_every=100,
                                record_cache=2048, frames_per_record=8),
        skeleton_optim=OptimConfig(lr=3e-4, warmup_steps=2000),
        skinning_optim=OptimConfig(lr=3e-4, warmup_steps=2000),
    ), "local")


PRESETS = {"smoke": _smoke, "default": _default, "large": _large}

_LOCAL_DECODING = {"decode_coordinates": "all-proposals", "proposal_radius": 0.05, "proposal_min_mass": 2.5}
"""How ``local`` designs decode by default: every vote cluster becomes a joint, clustered with the settings
measured best on a trained model's own votes (``docs/generator_design.md`` §6-7)."""

GENERATOR_DESIGNS: dict[str, dict] = {
    "perceiver": {"design": "perceiver", "decode_coordinates": "free"},
    "local": {"design": "local", **_LOCAL_DECODING},
    "local-attn": {"design": "local", "n_point_attn_layers": 1, **_LOCAL_DECODING},
    "local-votes2": {"design": "local", "votes_per_point": 2, **_LOCAL_DECODING},
}
"""Skeleton generator designs selectable on any preset: changes to the preset's
:class:`SkeletonGeneratorConfig` (its width, heads and decoder depth are kept). ``perceiver`` is the
original design (the ``smoke`` preset's, so that CI stays fast); ``local`` (the ``default`` and ``large``
presets') is the per-point encoder with dense joint votes and the proposal prior;
``local-votes2`` lets every point vote for its two nearest joints (``docs/generator_design.md``)."""


def with_generator_design(preset: Preset, design: str) -> Preset:
    """``preset`` with its skeleton generator switched to one of :data:`GENERATOR_DESIGNS` (in place)."""
    if design not in GENERATOR_DESIGNS:
        raise ValueError(f"unknown generator design {design!r}; choose from {sorted(GENERATOR_DESIGNS)}")
    preset.skeleton = replace(preset.skeleton, **GENERATOR_DESIGNS[design])
    return preset


def get_preset(name: str, design: str | None = None, **pretrain_overrides) -> Preset:
    """A fresh :class:`Preset` by name; ``design`` switches the skeleton generator design (see
    :data:`GENERATOR_DESIGNS`); keyword arguments override :class:`PretrainConfig` fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[name]()
    if design is not None:
        with_generator_design(preset, design)
    if pretrain_overrides:
        unknown = set(pretrain_overrides) - set(PretrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        preset.pretrain = replace(preset.pretrain, **pretrain_overrides)
    return preset
