"""SIGKILL `sprig rig` and the server while they write: the output path holds the earlier file or a complete
new one, never a part, and the input is unchanged. A few kills here; bench/bench_kill_writes.py does 50+ each."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kill_writes", ROOT / "bench" / "bench_kill_writes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def setup(bench, tmp_path_factory):
    return bench.make_setup(tmp_path_factory.mktemp("kills"), n_frames=6)


def test_sigkill_sprig_rig_while_writing(bench, setup):
    tally, _ = bench.cli_trials(setup, kills=4, rng=random.Random(1), progress=False)
    assert tally.bad_outputs == [] and tally.inputs_changed == 0
    assert tally.kills_while_temp_present >= 1  # at least one kill landed while a file was being written
    assert tally.kills == 4
    trials = tally.kills + tally.finished_before_kill
    assert tally.outputs_old + tally.outputs_new_complete == 2 * trials  # out.glb and out.json each trial


def test_sigkill_the_server_while_saving(bench, setup):
    tally, _ = bench.server_trials(setup, kills=3, rng=random.Random(2), progress=False)
    assert tally.bad_outputs == [] and tally.inputs_changed == 0
    assert tally.kills_while_temp_present >= 1
    assert tally.kills == 3
    assert tally.outputs_old + tally.outputs_new_complete == tally.kills + tally.finished_before_kill
    left_cli, left_server = bench.leftover_after_clean_run(setup)
    assert left_cli == [] and left_server == []  # the next write removed what the kills left
