"""CPU platform for verl (tests and CPU end-to-end runs). Selected only by ``VERL_PLATFORM=cpu`` or
:func:`enable_cpu_platform`; see :mod:`verl_vgpo.cpu.platform`."""

from .platform import (
    CPU_DEVICE_MODULE,
    PLATFORM_NAME,
    RAY_RESOURCE_NAME,
    cpu_platform_requested,
    enable_cpu_platform,
    platform_class,
    register_cpu_platform,
)

__all__ = [
    "CPU_DEVICE_MODULE",
    "PLATFORM_NAME",
    "RAY_RESOURCE_NAME",
    "cpu_platform_requested",
    "enable_cpu_platform",
    "platform_class",
    "register_cpu_platform",
]
