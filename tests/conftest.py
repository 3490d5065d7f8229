"""Shared fixtures: for the training-stage tests one torch thread, tiny corpora and tiny run folders; for the
Blender tests a fresh scene and untrained checkpoints.

Nothing here is autouse; a test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``
or by naming a fixture. Heavy imports happen inside the fixtures so other test modules do not pay for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# procedural creatures small enough for CPU tests: 5 frames, 250-400 vertices, one worker
TINY_CORPUS = dict(frames=(5, 5), verts=(250, 400), grid_cells=36, shard_size=8, workers=1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids spin-waiting on a shared machine (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_corpus_config():
    """Factory ``(n_creatures, **CorpusConfig fields) -> CorpusConfig`` with the tiny sizes above."""
    from training.data.corpus import CorpusConfig

    def make(n_creatures: int, **overrides) -> CorpusConfig:
        return CorpusConfig(n_creatures=n_creatures, **{**TINY_CORPUS, **overrides})

    return make


@pytest.fixture(scope="session")
def make_base_run(tiny_corpus_config):
    """Factory ``(root, n_creatures, val_fraction, test_fraction) -> root``: a run folder holding a tiny
    corpus written by the real generator and freshly initialized smoke-size base checkpoints
    (``checkpoints/skeleton_base.safetensors``, ``checkpoints/skinning_base.safetensors``)."""
    import torch

    from backend.models.checkpoint import save_model
    from backend.models.skeleton_generator import SkeletonGenerator
    from backend.models.skinning_network import SkinningNetwork
    from training.data.generate import generate_corpus
    from training.presets import get_preset

    def make(root: Path, n_creatures: int, val_fraction: float, test_fraction: float) -> Path:
        root = Path(root)
        generate_corpus(root / "corpus", tiny_corpus_config(n_creatures, val_fraction=val_fraction,
                                                            test_fraction=test_fraction), progress=False)
        P = get_preset("smoke")
        torch.manual_seed(0)
        prov = {"preset_config": P.to_dict(), "step": 0, "total_steps": 0,
                "note": "freshly initialized for the test"}
        save_model(SkeletonGenerator(P.skeleton), root / "checkpoints/skeleton_base.safetensors", "pretrain", prov)
        save_model(SkinningNetwork(P.skinning), root / "checkpoints/skinning_base.safetensors", "pretrain", prov)
        return root

    return make


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny checkpoints (see tests/test_server.py): the real pipeline runs, rig quality is not judged.
    Modules that need other checkpoints define their own ``checkpoints`` fixture."""
    from test_server import write_untrained_checkpoints

    return write_untrained_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture
def scene():
    """A Blender test's empty factory scene with the add-on enabled; afterwards the add-on's backend is stopped
    (if one was started) and the add-on disabled."""
    import bpy
    from test_blender_scenes import disable_addon, reset_scene

    reset_scene()
    yield bpy.context.scene
    from sprig_blender import runner

    runner.discard_backend()
    disable_addon()
