"""Load the rigger's two models and run them on anchor-normalized frames.

    models = load_models(Path("checkpoints"), which="sprig")
    skeletons = models.generate_skeletons(points, normals)           # [B, N, 3] each
    weights = models.predict_weights(verts, vnormals, pts, nrm, joints, parents)  # [Q, J]

All coordinates are anchor-box normalized (see ``backend.normalize``); outputs are too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.models.checkpoint import CheckpointError, CheckpointInfo, load_model
from backend.models.skeleton_generator import SkeletonGenerator
from backend.models.skinning_network import SkinningNetwork
from backend.skeleton import tree_distances

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = {
    "base": ("skeleton_base.safetensors", "skinning_base.safetensors"),
    "sprig": ("skeleton_sprig.safetensors", "skinning_sprig.safetensors"),
}


class NonFiniteOutputError(CheckpointError):
    """A model produced NaN or Inf (corrupt weights, or inputs far outside what it was trained on)."""


def _check_finite(values: np.ndarray, what: str, info: CheckpointInfo | None) -> None:
    """Raise :class:`NonFiniteOutputError` naming the model output and checkpoint when ``values`` are not finite."""
    if not np.all(np.isfinite(values)):
        source = f" of {info.path}" if info is not None else ""
        raise NonFiniteOutputError(f"the {what}{source} produced {int((~np.isfinite(values)).sum())} NaN/Inf "
                                   "values: corrupt weights, or input far outside what the model was trained on")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class RiggerModels:
    """The skeleton generator and skinning network, ready for inference."""

    skeleton: SkeletonGenerator
    skinning: SkinningNetwork
    device: torch.device
    skeleton_info: CheckpointInfo | None = None
    skinning_info: CheckpointInfo | None = None
    query_chunk: int = 4096

    @torch.inference_mode()
    def generate_skeletons(self, points: np.ndarray, normals: np.ndarray, max_joints: int = 64,
                           batch_size: int = 16, stop_after_repeats: int = 0,
                           should_cancel: Callable[[], bool] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Greedy constrained skeletons, one per frame.

        Args:
            points: float ``[B, N, 3]`` (or ``[N, 3]``) anchor-normalized surface samples.
            normals: float ``[B, N, 3]`` unit normals.
            stop_after_repeats: see ``SkeletonGenerator.generate`` (0: off).
            should_cancel: polled before every decoding step (see ``SkeletonGenerator.generate``).
        Returns:
            ``B`` pairs ``(joints float32 [J, 3] normalized, parents int32 [J])``.
        """
        points = np.asarray(points, dtype=np.float32)
        normals = np.asarray(normals, dtype=np.float32)
        if points.ndim == 2:
            points, normals = points[None], normals[None]
        if points.shape != normals.shape or points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points and normals must be [B, N, 3], got {list(points.shape)} and {list(normals.shape)}")
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for s in range(0, len(points), batch_size):
            p = torch.from_numpy(points[s:s + batch_size]).to(self.device)
            n = torch.from_numpy(normals[s:s + batch_size]).to(self.device)
            out.extend(self.skeleton.generate(p, n, max_joints=max_joints, stop_after_repeats=stop_after_repeats,
                                              should_cancel=should_cancel))
        for joints, _ in out:
            _check_finite(np.asarray(joints), "skeleton generator", self.skeleton_info)
        return out

    @torch.inference_mode()
    def predict_weights(self, query_pts: np.ndarray, query_normals: np.ndarray, shape_pts: np.ndarray,
                        shape_normals: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
        """Skinning weights (Eq. 4) at arbitrary query points, e.g. mesh vertices.

        Args:
            query_pts, query_normals: float ``[Q, 3]`` or per frame ``[K, Q, 3]``.
            shape_pts, shape_normals: float ``[N, 3]`` or ``[K, N, 3]`` sampled surface of the frame(s).
            joints: float ``[J, 3]`` (shared) or ``[K, J, 3]`` (per frame) normalized joints.
            parents: int ``[J]``, ``-1`` for the root.
        Returns:
            float32 ``[Q, J]`` (or ``[K, Q, J]``), rows on the simplex.
        """
        q = np.asarray(query_pts, dtype=np.float32)
        single = q.ndim == 2
        q = q[None] if single else q
        qn = np.asarray(query_normals, dtype=np.float32).reshape(q.shape)
        sp = np.asarray(shape_pts, dtype=np.float32)
        sp = sp[None] if sp.ndim == 2 else sp
        sn = np.asarray(shape_normals, dtype=np.float32).reshape(sp.shape)
        K = q.shape[0]
        if sp.shape[0] != K:
            raise ValueError(f"{K} query frames but {sp.shape[0]} shape frames")
        parents = np.asarray(parents, dtype=np.int64).reshape(-1)
        J = len(parents)
        jt = np.asarray(joints, dtype=np.float32)
        jt = np.array(np.broadcast_to(jt if jt.ndim == 3 else jt[None], (K, J, 3)))
        dev = self.device
        shape = torch.from_numpy(np.concatenate([sp, sn], axis=-1)).to(dev)
        jt_t = torch.from_numpy(np.ascontiguousarray(jt)).to(dev)
        par_t = torch.from_numpy(parents).to(dev)[None].expand(K, -1)
        valid = torch.ones(K, J, dtype=torch.bool, device=dev)
        dist = torch.from_numpy(tree_distances(parents)).to(dev)[None].expand(K, -1, -1)
        net = self.skinning
        shape_tokens = net.encode_shape(shape)
        joint_tokens = net.encode_joints(shape_tokens, jt_t, par_t, valid, dist)
        query = torch.from_numpy(np.concatenate([q, qn], axis=-1)).to(dev)
        out = np.empty((K, q.shape[1], J), dtype=np.float32)
        for s in range(0, q.shape[1], self.query_chunk):
            logits = net.query_logits(query[:, s:s + self.query_chunk], shape_tokens, joint_tokens, jt_t, par_t, valid)
            out[:, s:s + self.query_chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        _check_finite(out, "skinning network", self.skinning_info)
        return out[0] if single else out


def load_models(checkpoint_dir: Path | str, which: str = "sprig", device: str | torch.device = "auto",
                progress: Callable[[float], None] | None = None) -> RiggerModels:
    """Load ``skeleton_<which>`` and ``skinning_<which>`` from ``checkpoint_dir``.

    Args:
        checkpoint_dir: folder with the ``.safetensors`` files.
        which: ``sprig`` (fine-tuned), ``base`` (pretrained static rigger), or ``auto`` (per model
            the SPRig file when present, else the base one, with a warning).
        device: ``auto``, ``cpu``, ``cuda``...
        progress: called with 0.5 once the skeleton generator is loaded (each file takes about half a second
            to verify and load on 2 cores); it may raise to cancel.
    Raises:
        CheckpointError: listing every missing file, or naming a corrupt/mismatched one.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if which not in (*CHECKPOINT_NAMES, "auto"):
        raise ValueError(f"which must be 'sprig', 'base' or 'auto', got {which!r}")
    dev = resolve_device(device)
    paths = []
    for i, kind in enumerate(("skeleton", "skinning")):
        if which == "auto":
            sprig, base = (checkpoint_dir / CHECKPOINT_NAMES[w][i] for w in ("sprig", "base"))
            if not sprig.is_file() and base.is_file():
                log.warning("%s: no %s, using the base model %s", checkpoint_dir, sprig.name, base.name)
            paths.append(sprig if sprig.is_file() or not base.is_file() else base)
        else:
            paths.append(checkpoint_dir / CHECKPOINT_NAMES[which][i])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        hint = ""
        if which == "sprig":
            hint = (" (SPRig fine-tuning has not produced them yet? `python training/run.py` makes them; the rig "
                    "option models='base' uses the pretrained models instead)")
        elif which == "base":
            hint = " (run `python training/run.py --stage pretrain` and copy its checkpoints/ here)"
        raise CheckpointError(f"missing checkpoint file(s): {', '.join(missing)}{hint}")
    skel, skel_info = load_model(paths[0], expected="skeleton_generator", device=dev)
    if progress is not None:
        progress(0.5)
    skin, skin_info = load_model(paths[1], expected="skinning_network", device=dev)
    log.info("loaded %s (%s) and %s (%s) on %s", paths[0].name, skel_info.stage, paths[1].name, skin_info.stage, dev)
    return RiggerModels(skeleton=skel, skinning=skin, device=dev, skeleton_info=skel_info, skinning_info=skin_info)
