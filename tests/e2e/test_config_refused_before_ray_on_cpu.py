"""A bad ``algorithm.vgpo`` config is refused by ``python -m verl.trainer.main_ppo`` in the driver, before
Ray starts: non-zero exit, the key named, and ``ray.init`` never reached.

The commands are the real CLI with verl's default config; no model or data is needed because the
refusal comes before anything is loaded. ``ray init kwargs`` is what main_ppo prints right before
``ray.init``: it must not appear.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # launches main_ppo or trains a warm start


@pytest.mark.parametrize(
    "override, message",
    [
        ("+algorithm.vgpo.gate_topratio=0.3", "unknown key(s) algorithm.vgpo.gate_topratio"),
        ("+algorithm.vgpo.gate_top_ratio=1.5", "algorithm.vgpo.gate_top_ratio=1.5 is invalid: must lie in [0, 1]"),
    ],
    ids=["misspelt_key", "out_of_range_value"],
)
def test_main_ppo_refuses_a_bad_vgpo_config_before_ray_starts(override, message, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env.pop("VERL_USE_EXTERNAL_PLUGINS", None)
    command = [sys.executable, "-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=vgpo", override]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert "VGPOConfigError" in output
    assert "ray init kwargs" not in output  # refused before main_ppo reached ray.init
