"""The compute dtype of CPU runs: bf16 only where the host multiplies bf16 matrices natively.

On a CPU without AVX512-BF16 / AMX, torch runs bf16 matrix products on a slow fallback path, so the
actor's FSDP mixed precision (verl's default: bf16 parameters) is replaced by fp32 there. The rollout
server (``hf_cpu``) always generates in fp32. ``VGPO_CPU_DTYPE=bf16|fp32`` overrides the choice.

    python -m verl_vgpo.cpu.dtype            # prints the Hydra overrides for this host, one per line
"""

from __future__ import annotations

import os
import sys

DTYPE_ENV = "VGPO_CPU_DTYPE"
DTYPES = ("bf16", "fp32")


def host_has_native_bf16() -> bool:
    """True when oneDNN reports native bf16 support on this CPU (AVX512-BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def host_dtype() -> str:
    """``bf16`` or ``fp32`` for this host (``VGPO_CPU_DTYPE`` wins); a bad value is an error."""
    chosen = os.environ.get(DTYPE_ENV, "").strip().lower()
    if chosen:
        if chosen not in DTYPES:
            raise ValueError(f"{DTYPE_ENV} must be one of {DTYPES}, got {chosen!r}")
        return chosen
    return "bf16" if host_has_native_bf16() else "fp32"


def dtype_overrides(dtype: str) -> list[str]:
    """Hydra overrides that make the actor and reference engines compute in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return [f"+actor_rollout_ref.{role}.fsdp_config.mixed_precision.param_dtype={dtype}" for role in ("actor", "ref")]


def main() -> int:
    try:
        dtype = host_dtype()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(dtype_overrides(dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
