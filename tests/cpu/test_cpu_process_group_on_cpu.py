"""verl_vgpo.cpu.distributed: verl's worker process-group call works on the CPU platform (and only there).

verl builds the backend string "cpu:gloo,<device>:<backend>", i.e. "cpu:gloo,cpu:gloo" on the CPU platform,
which torch rejects. Each case runs in a fresh interpreter: the patch is installed at ``import verl``
according to VERL_PLATFORM, and a process group is process-global.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import torch.distributed as dist
    import verl
    import verl.utils.distributed as verl_distributed
    import verl.workers.engine_workers as engine_workers

    patched = getattr(verl_distributed.initialize_global_process_group_ray, "__vgpo_cpu_gloo__", False)
    print("patched", patched)
    print("engine_workers uses it", engine_workers.initialize_global_process_group_ray is verl_distributed.initialize_global_process_group_ray)
    try:
        engine_workers.initialize_global_process_group_ray(timeout_second=None)
        print("backend", dist.get_backend())
        dist.destroy_process_group()
    except ValueError as error:
        print("error", error)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(platform: str | None) -> str:
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    env.pop("VERL_PLATFORM", None)
    if platform:
        env["VERL_PLATFORM"] = platform
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_cpu_platform_workers_get_a_gloo_process_group():
    output = _probe("cpu")
    assert "patched True" in output
    assert "engine_workers uses it True" in output
    assert "backend gloo" in output


def test_without_the_cpu_platform_verl_is_untouched():
    assert "patched False" in _probe(None)
