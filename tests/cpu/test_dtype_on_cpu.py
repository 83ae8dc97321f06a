"""The CPU runs' compute dtype (verl_vgpo.cpu.dtype) and how the run script applies it."""

import subprocess
import sys

import pytest

from verl_vgpo.apps.runner import RUN_SCRIPT, RunError, cpu_dtype_line
from verl_vgpo.cpu import dtype


def test_fp32_by_default_whatever_the_cpu(monkeypatch):
    monkeypatch.delenv(dtype.DTYPE_ENV, raising=False)
    assert dtype.host_dtype() == "fp32"


@pytest.mark.parametrize("value, expected", [("bf16", "bf16"), (" FP32 ", "fp32")])
def test_environment_variable_overrides(monkeypatch, value, expected):
    monkeypatch.setenv(dtype.DTYPE_ENV, value)
    assert dtype.host_dtype() == expected


def test_bad_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(dtype.DTYPE_ENV, "fp16")
    with pytest.raises(ValueError, match="VGPO_CPU_DTYPE must be one of"):
        dtype.host_dtype()
    with pytest.raises(RunError, match="VGPO_CPU_DTYPE"):
        cpu_dtype_line()


def test_overrides_cover_actor_and_reference():
    assert dtype.dtype_overrides("fp32") == [
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
        "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32",
    ]
    with pytest.raises(ValueError):
        dtype.dtype_overrides("float32")


def test_described_choice_names_dtype_cpu_and_source(monkeypatch):
    monkeypatch.setenv(dtype.DTYPE_ENV, "bf16")
    line = dtype.describe("bf16")
    assert line.startswith("verl-vgpo CPU dtype: actor/ref bf16, hf_cpu rollout fp32 (VGPO_CPU_DTYPE=bf16;")
    assert "torch CPU capability" in line and "native bf16 matmul: " in line


def test_module_prints_overrides_on_stdout_and_the_choice_on_stderr(monkeypatch):
    monkeypatch.delenv(dtype.DTYPE_ENV, raising=False)
    done = subprocess.run([sys.executable, "-m", "verl_vgpo.cpu.dtype", "--describe"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == dtype.dtype_overrides("fp32")
    assert "verl-vgpo CPU dtype: actor/ref fp32" in done.stderr


def _main_ppo_arguments(tmp_path, *overrides, env_dtype=None):
    """The arguments the run script hands to main_ppo: PYTHON is a wrapper that prints them instead of
    starting main_ppo (every other python call of the script runs for real)."""
    import json
    import os

    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir(exist_ok=True)
    data.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (data / "train.parquet").write_text("")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nif [ "$2" = verl.trainer.main_ppo ]; then shift 2; printf "%s\\n" "$@"; exit 0; fi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != dtype.DTYPE_ENV}
    if env_dtype:
        env[dtype.DTYPE_ENV] = env_dtype
    env.update(PYTHON=str(wrapper), MODEL_DIR=str(model), DATA_DIR=str(data), OUT_DIR=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(RUN_SCRIPT), *overrides], capture_output=True, text=True, env=env, check=True)
    return done.stdout.split(), done.stderr


def _dtype_arguments(arguments):
    return [a for a in arguments if a.partition("=")[0].endswith("mixed_precision.param_dtype")]


def test_run_script_gives_main_ppo_the_chosen_dtype_and_prints_it(tmp_path):
    arguments, stderr = _main_ppo_arguments(tmp_path)
    assert _dtype_arguments(arguments) == dtype.dtype_overrides("fp32")
    assert "verl-vgpo CPU dtype: actor/ref fp32" in stderr

    arguments, _ = _main_ppo_arguments(tmp_path, env_dtype="bf16")
    assert _dtype_arguments(arguments) == dtype.dtype_overrides("bf16")


def test_an_explicit_param_dtype_override_wins(tmp_path):
    # Hydra refuses the same '+key' twice, so the script adds none of its own
    given = "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16"
    arguments, stderr = _main_ppo_arguments(tmp_path, given)
    assert _dtype_arguments(arguments) == [given]
    assert "dtype as given in the overrides" in stderr
