"""The CPU platform: explicit opt-in only, complete PlatformBase implementation, selected by VERL_PLATFORM."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import torch


def test_platform_implements_every_abstract_method_and_is_never_auto_detected():
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry

    from verl_vgpo.cpu import platform_class, register_cpu_platform

    register_cpu_platform()
    cls = platform_class()
    assert PlatformRegistry.get("cpu") is cls
    assert not inspect.isabstract(cls)
    platform = cls()
    assert isinstance(platform, PlatformBase)
    assert platform.device_name == "cpu" and platform.current_device() == "cpu"
    assert platform.communication_backend_name() == "gloo"
    assert platform.is_available() and not platform.is_platform_available(use_smi_check=True)
    assert platform.ray_resource_name() not in ("CPU", "GPU")
    with platform.nvtx_range("x"):
        pass

    device = platform.device_module
    device.synchronize()
    device.empty_cache()
    assert device.memory_allocated() == 0 and device.max_memory_reserved() == 0
    free, total = device.mem_get_info()
    assert 0 < free <= total
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    assert torch.ones(2).to(device.current_device()).device.type == "cpu"


def _resolve_platform_in_subprocess(env_overrides):
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env.update(env_overrides)
    code = (
        "import verl\n"
        "from verl.utils.device import get_device_name, get_nccl_backend\n"
        "from verl.workers.engine import EngineRegistry\n"
        "cls = EngineRegistry.get_engine_cls('language_model', 'fsdp2')\n"
        "import sys\n"
        "cpu_modules = sorted(m for m in sys.modules if m.startswith('verl_vgpo.cpu.'))\n"
        "print(get_device_name(), get_nccl_backend(), cls.__name__, ','.join(cpu_modules) or '-')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_selected_only_by_verl_platform_env():
    # explicit opt-in: the plugin (loaded by `import verl`) registers it and VERL_PLATFORM selects it
    selected = _resolve_platform_in_subprocess({"VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": "1"}).split()
    assert selected[:3] == ["cpu", "gloo", "VGPOFocusFSDPEngineWithLMHead"]
    # the CPU platform, the hf_cpu rollout and the gloo change are imported only where the platform is selected
    assert {"verl_vgpo.cpu.platform", "verl_vgpo.cpu.rollout", "verl_vgpo.cpu.distributed"} <= set(selected[3].split(","))
    # without the variable verl's own detection runs (this machine has no GPU: its "nvidia" fallback)
    default = _resolve_platform_in_subprocess({"OMP_NUM_THREADS": "1"}).split()
    assert default[0] in ("cuda", "npu"), default
    assert default[3] == "-", default


def test_enable_cpu_platform_registers_the_focus_engine_for_cpu():
    code = (
        "import verl\n"
        "from verl.workers.engine import EngineRegistry\n"
        "assert 'cpu' not in EngineRegistry._engines['language_model']['fsdp2']\n"
        "from verl_vgpo.cpu import enable_cpu_platform\n"
        "enable_cpu_platform()\n"
        "from verl.utils.device import get_device_name\n"
        "print(EngineRegistry._engines['language_model']['fsdp2']['cpu'].__name__, get_device_name())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    result = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "VGPOFocusFSDPEngineWithLMHead cpu"
