"""The static rigger: skeleton tokenizer, skeleton generator G_theta, skinning network H_phi,
checkpoints and inference entry points."""

from backend.models.checkpoint import CheckpointError, CheckpointInfo, load_model, save_model
from backend.models.inference import RiggerModels, load_models
from backend.models.skeleton_generator import SkeletonGenerator, SkeletonGeneratorConfig, skeleton_token_loss
from backend.models.skinning_network import SkinningNetwork, SkinningNetworkConfig, skinning_kl_loss
from backend.models.tokenizer import SkeletonTokenizer, TokenizerError, merge_duplicate_joints

__all__ = [
    "CheckpointError", "CheckpointInfo", "load_model", "save_model", "RiggerModels", "load_models",
    "SkeletonGenerator", "SkeletonGeneratorConfig", "skeleton_token_loss", "SkinningNetwork",
    "SkinningNetworkConfig", "skinning_kl_loss", "SkeletonTokenizer", "TokenizerError", "merge_duplicate_joints",
]
