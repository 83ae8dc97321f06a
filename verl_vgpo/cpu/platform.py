"""A CPU platform for verl 0.9's platform layer, so its real FSDP2 engine runs in gloo processes.

verl has no CPU platform: without an accelerator it falls back to "nvidia" and the first
``init_device_mesh("cuda")`` fails. This platform answers every ``PlatformBase`` method for the CPU:
device "cpu", the gloo backend, a ``torch.cpu``-based device module whose memory statistics are zeros
(the CPU allocator keeps none) and no-op profiling.

It is never auto-detected (``is_platform_available`` is always False), so registering it changes
nothing on a GPU machine. It is used only when asked for: ``VERL_PLATFORM=cpu`` in the environment
(verl reads it on its first ``get_platform()``; Ray workers inherit it) or :func:`enable_cpu_platform`.
"""

from __future__ import annotations

import logging
import os
import platform as host_platform
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

logger = logging.getLogger("verl_vgpo")

PLATFORM_NAME = "cpu"
DEVICE_NAME = "cpu"
# Ray resource that stands for one "device" slot of a CPU worker. It must not be "CPU": verl's
# placement-group bundle is {"CPU": max_colocate_count, <resource>: 1}, and "CPU" would overwrite the
# first entry. A cluster that runs CPU workers declares it, e.g. ray.init(resources={"verl_cpu_device": 4}).
RAY_RESOURCE_NAME = "verl_cpu_device"
VISIBLE_DEVICES_ENVVAR = "VERL_CPU_VISIBLE_DEVICES"


class _CPUDeviceModule(types.ModuleType):
    """What verl expects of ``torch.cuda`` (``get_torch_device()``), answered for the CPU.

    Attributes ``torch.cpu`` has (streams, events, synchronize, ...) are delegated to it; the rest are
    defined here. The CPU allocator keeps no statistics and no cache, so those calls are zeros / no-ops.
    """

    def __init__(self) -> None:
        super().__init__("verl_vgpo.cpu.device_module", "torch.cuda-like device module for the CPU")

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(torch.cpu, name)
        except AttributeError:
            raise AttributeError(
                f"the verl-vgpo CPU platform's device module has no attribute {name!r} (torch.cpu lacks it too); "
                "this verl code path needs an accelerator"
            ) from None

    # device management ------------------------------------------------------------------------
    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> str:
        # verl moves batches with ``.to(get_device_id())``: an int would mean cuda:<int>
        return DEVICE_NAME

    @staticmethod
    def set_device(device: Any) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return host_platform.processor() or host_platform.machine() or "cpu"

    # random number generator: the CPU generator is torch's default generator -----------------------
    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    # memory: no allocator statistics or cache on the CPU --------------------------------------------
    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def memory_stats(device: Any = None) -> dict:
        return {}

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        """(free, total) bytes of host memory, the CPU's counterpart of device memory."""
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)


CPU_DEVICE_MODULE = _CPUDeviceModule()


def _platform_base():
    from verl.plugin.platform.platform_base import PlatformBase

    return PlatformBase


def _make_platform_class():
    PlatformBase = _platform_base()

    class PlatformCPU(PlatformBase):
        """verl platform for plain CPU processes (gloo). See the module docstring."""

        @property
        def device_name(self) -> str:
            return DEVICE_NAME

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return CPU_DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            # never auto-detected: only VERL_PLATFORM=cpu or enable_cpu_platform() select it
            return False

        def current_device(self) -> str:  # type: ignore[override]
            return DEVICE_NAME

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            # expandable segments etc. are CUDA caching-allocator settings; the CPU allocator has none
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return VISIBLE_DEVICES_ENVVAR

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return RAY_RESOURCE_NAME

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            # CUDA IPC handles do not exist; weight sync must go through the non-IPC paths
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


_PLATFORM_CLASS = None


def platform_class():
    """The ``PlatformBase`` subclass (built lazily so importing this module does not import verl)."""
    global _PLATFORM_CLASS
    if _PLATFORM_CLASS is None:
        _PLATFORM_CLASS = _make_platform_class()
    return _PLATFORM_CLASS


def register_cpu_platform() -> None:
    """Register the platform class and verl's FSDP engines for device "cpu" (idempotent, inert).

    Registering selects nothing: the platform is never auto-detected and the engine entries are only
    looked up when the platform's device is "cpu".
    """
    from verl.plugin.platform.platform_manager import PlatformRegistry

    cls = platform_class()
    if PlatformRegistry.get(PLATFORM_NAME) is not cls:
        PlatformRegistry.register(platform=PLATFORM_NAME)(cls)
    _register_engines_for_cpu()


def _register_engines_for_cpu() -> None:
    """Point EngineRegistry's "cpu" entries of the FSDP backends at verl's CUDA FSDP engine classes.

    An entry already present (e.g. the focus-capturing subclass installed by verl_vgpo.wiring.engine) is kept.
    """
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_class in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            entries = EngineRegistry._engines.setdefault(model_type, {}).setdefault(backend, {})
            entries.setdefault(DEVICE_NAME, engine_class)


def cpu_platform_requested() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def enable_cpu_platform() -> None:
    """Select the CPU platform in this process and in processes started from it (Ray workers).

    Sets ``VERL_PLATFORM=cpu`` and, if verl already resolved another platform in this process,
    replaces it. Call before building engines or workers.
    """
    import verl.plugin.platform.platform_manager as platform_manager

    register_cpu_platform()
    os.environ["VERL_PLATFORM"] = PLATFORM_NAME
    current = platform_manager._current_platform
    if current is None or current.device_name != DEVICE_NAME:
        platform_manager.set_platform(platform_class()())
    # the focus-capturing subclass for the "cpu" entries just added (the plugin wrapped the other devices'
    # at load); the hf_cpu rollout and the gloo change need VERL_PLATFORM=cpu before ``import verl``
    from verl_vgpo.wiring.engine import register_engines

    register_engines()
    logger.info("verl-vgpo: CPU platform enabled (VERL_PLATFORM=cpu, gloo backend)")
