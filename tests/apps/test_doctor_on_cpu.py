"""vgpo-doctor: exit 0 only where a vgpo run can start, otherwise the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from verl_vgpo.apps import doctor


def _doctor(env_overrides: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_PLUGINS",
                                                             "VERL_VGPO_FIXES", "RAY_ADDRESS")}
    env.update(OMP_NUM_THREADS="1", **env_overrides)
    return subprocess.run([sys.executable, "-m", "verl_vgpo.apps.doctor", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_ok_on_the_cpu_platform_with_every_registration_and_fix_listed():
    done = _doctor({"VERL_PLATFORM": "cpu"}, "--skip-ray")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "verl                     0.9.1  tested" in done.stdout
    assert "plugin loaded by import verl in this process: yes" in done.stdout
    assert "verl_vgpo.wiring.estimator.register_estimator: ok" in done.stdout
    assert "verl_vgpo.cpu.rollout.register_hf_cpu_rollout: ok" in done.stdout
    from verl_vgpo.wiring import compat

    for fix in compat.FIXES:
        assert f"{fix.name}: active" in done.stdout


def test_refuses_when_verl_would_skip_the_plugin():
    done = _doctor({"VERL_PLATFORM": "cpu", "VERL_USE_EXTERNAL_PLUGINS": "someone_else"}, "--skip-ray")
    assert done.returncode == 1
    assert "VERL_USE_EXTERNAL_PLUGINS=someone_else does not name 'vgpo'" in done.stderr
    assert "plugin loaded by import verl in this process: NO" in done.stdout


def test_no_accelerator_is_a_reason_unless_the_cpu_platform_is_selected(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    lines, problem = doctor.accelerators()
    assert lines == ["  none"] and "no GPU or NPU is visible" in problem
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    lines, problem = doctor.accelerators()
    assert problem is None and "VERL_PLATFORM=cpu" in lines[0]


def test_fixes_off_are_reported_as_off(monkeypatch, capsys):
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.setenv("VERL_VGPO_FIXES", "0")
    assert doctor.main(["--skip-ray"]) == 0
    assert "qwen2_vl_text_only_dummy: off (VERL_VGPO_FIXES=0)" in capsys.readouterr().out


def test_plugin_policy_and_version_rules(monkeypatch):
    assert doctor.plugin_policy_problem(None) is None
    assert doctor.plugin_policy_problem("vgpo, other") is None
    assert "loads no plugin" in doctor.plugin_policy_problem("none")
    monkeypatch.setitem(doctor.REQUIRED, "torch", "<1")
    lines, problems = doctor.version_lines()
    assert any("torch" in line and "OUTSIDE <1" in line for line in lines)
    assert problems == [f"torch {doctor.installed_version('torch')} is outside the supported range <1"]


@pytest.mark.slow  # starts a local Ray instance
def test_the_plugin_is_checked_inside_a_ray_worker():
    done = _doctor({"VERL_PLATFORM": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plugin loaded in a Ray worker: yes (estimator registered)" in done.stdout
