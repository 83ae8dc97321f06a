"""``main_ppo algorithm.adv_estimator=vgpo`` on CPU for the other model families: tiny Qwen3-VL and Qwen3.5.

The same run as test_main_ppo_smoke_on_cpu.py (verl's real V1 trainer, Ray, engine workers, agent loop,
hf_cpu rollout; only the CPU platform and the rollout are swapped through verl's registries), one VGPO
step per family through ``MODEL_FAMILY=<family>`` of the run script (which also passes Qwen3's 16-pixel
``data.image_patch_size``). Checked with the smoke test's own step checks: finite VGPO metrics, a focus
signal for every (image) sample (``vgpo/no_signal_fraction == 0``), weights inside their clip ranges,
and advantages that are not GRPO's on the same rollouts. The script refuses an unknown family or a
``MODEL_DIR`` of another family before starting main_ppo.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.e2e.test_main_ppo_smoke_on_cpu import (
    RANDOM_MODEL_KNOBS,
    RUN_TIMEOUT_S,
    _grpo_advantage_range_from_dump,
    assert_vgpo_step_metrics,
)
from verl_vgpo.apps import runner

pytestmark = pytest.mark.slow  # launches main_ppo or trains a warm start


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from verl_vgpo.data.easy_vqa import write_splits

    data = tmp_path_factory.mktemp("families_easy_vqa")
    write_splits(data, train_size=16, val_size=4)
    return data


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_one_vgpo_step_per_family(family, tiny_vlm_of, data_dir, tmp_path):
    model_dir = Path(tiny_vlm_of(family))
    rollout_dir = tmp_path / "rollouts"
    result = runner.run_main_ppo(
        "vgpo", 1, tmp_path, model_dir, data_dir, RUN_TIMEOUT_S, [f"trainer.rollout_data_dir={rollout_dir}"],
        quiet=True, knobs={**RANDOM_MODEL_KNOBS, "MODEL_FAMILY": family},
    )
    log = Path(result["log_path"]).read_text()
    assert f"Monkey patch {_model_class(family)} model forward" in log  # verl's patches for this family ran
    records = runner.read_metrics(result["metrics_path"])
    assert [record["step"] for record in records] == [1]
    assert_vgpo_step_metrics(records[0])
    grpo_min, grpo_max = _grpo_advantage_range_from_dump(rollout_dir / "1.jsonl")
    assert grpo_max > 0 > grpo_min, "rewards were equal within every group: nothing to re-weight"
    vgpo_range = (records[0]["critic/advantages/min"], records[0]["critic/advantages/max"])
    assert not (math.isclose(vgpo_range[0], grpo_min, abs_tol=1e-4) and math.isclose(vgpo_range[1], grpo_max, abs_tol=1e-4))


def _model_class(family: str) -> str:
    return {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_5": "Qwen3_5ForConditionalGeneration"}[family]


def test_run_script_refuses_an_unknown_family_or_a_model_of_another_family(tiny_vlm_of, data_dir, tmp_path):
    import os
    import subprocess
    import sys

    def run(**env):
        return subprocess.run(
            ["bash", str(runner.RUN_SCRIPT)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data_dir), "OUT_DIR": str(tmp_path), **env},
        )

    unknown = run(MODEL_FAMILY="qwen4_vl", MODEL_DIR=str(tmp_path / "none"))
    assert unknown.returncode == 2 and "MODEL_FAMILY must be qwen2_5_vl, qwen3_vl or qwen3_5" in unknown.stderr
    mismatch = run(MODEL_FAMILY="qwen3_5", MODEL_DIR=tiny_vlm_of("qwen3_vl"))
    assert mismatch.returncode == 2 and "holds a qwen3_vl model but MODEL_FAMILY=qwen3_5" in mismatch.stderr
