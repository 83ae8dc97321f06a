"""The CPU run script's ``MODEL_FAMILY``: each family's patch size reaches main_ppo, and an unknown family or a
``MODEL_DIR`` of another family is refused before main_ppo (moved here from the slow families e2e test, whose
runs the recipe smoke runs of Qwen3-VL-8B and Qwen3.5-9B now cover; a ``config.json`` is all the script reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from verl_vgpo.apps.runner import RUN_SCRIPT


def _run(tmp_path, family: str, model_type: str):
    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir(exist_ok=True)
    data.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": model_type}))
    (data / "train.parquet").write_text("")
    wrapper = tmp_path / "python"  # prints main_ppo's arguments instead of starting it
    wrapper.write_text(f'#!/bin/sh\nif [ "$2" = verl.trainer.main_ppo ]; then shift 2; printf "%s\\n" "$@"; exit 0; fi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHON": str(wrapper), "MODEL_DIR": str(model), "DATA_DIR": str(data),
           "OUT_DIR": str(tmp_path / "out"), "MODEL_FAMILY": family}
    return subprocess.run(["bash", str(RUN_SCRIPT)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("family, patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16), ("qwen3_5", 16)])
def test_each_family_reaches_main_ppo_with_its_patch_size(tmp_path, family, patch):
    done = _run(tmp_path, family, family)
    assert done.returncode == 0, done.stderr
    arguments = done.stdout.split()
    assert f"data.image_patch_size={patch}" in arguments
    assert f"actor_rollout_ref.model.path={tmp_path / 'model'}" in arguments


def test_an_unknown_family_or_a_model_of_another_family_is_refused(tmp_path):
    unknown = _run(tmp_path, "qwen4_vl", "qwen4_vl")
    assert unknown.returncode == 2 and "MODEL_FAMILY must be qwen2_5_vl, qwen3_vl or qwen3_5" in unknown.stderr
    assert unknown.stdout == ""
    mismatch = _run(tmp_path, "qwen3_5", "qwen3_vl")
    assert mismatch.returncode == 2 and "holds a qwen3_vl model but MODEL_FAMILY=qwen3_5" in mismatch.stderr
    assert mismatch.stdout == ""
