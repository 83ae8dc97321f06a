"""The compute dtype of CPU runs: fp32 unless ``VGPO_CPU_DTYPE=bf16`` asks for bf16.

verl's FSDP engines compute in bf16 by default (mixed precision: bf16 parameters under autocast). On a
CPU without AVX512-BF16 / AMX, torch runs bf16 matrix products on a slow fallback path; on a CPU with
them, the tiny models of the CPU runs still train faster in fp32 (docs/benchmarks.md gives both
measurements). So every CPU run (run script, demo, experiment, smoke runs, e2e tests) gives the actor and
reference engines fp32 parameters; the ``hf_cpu`` rollout server always generates in fp32.
``VGPO_CPU_DTYPE=bf16|fp32`` overrides the choice.

    python -m verl_vgpo.cpu.dtype              # prints the Hydra overrides for this host, one per line
    python -m verl_vgpo.cpu.dtype --describe   # the same, and the choice and why on stderr (the run script)
"""

from __future__ import annotations

import os
import sys

DTYPE_ENV = "VGPO_CPU_DTYPE"
DTYPES = ("bf16", "fp32")
DEFAULT_DTYPE = "fp32"


def host_has_native_bf16() -> bool:
    """True when oneDNN reports native bf16 support on this CPU (AVX512-BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def host_dtype() -> str:
    """``bf16`` or ``fp32`` for this host (``VGPO_CPU_DTYPE`` wins, else fp32); a bad value is an error."""
    chosen = os.environ.get(DTYPE_ENV, "").strip().lower()
    if chosen:
        if chosen not in DTYPES:
            raise ValueError(f"{DTYPE_ENV} must be one of {DTYPES}, got {chosen!r}")
        return chosen
    return DEFAULT_DTYPE


def dtype_overrides(dtype: str) -> list[str]:
    """Hydra overrides that make the actor and reference engines compute in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return [f"+actor_rollout_ref.{role}.fsdp_config.mixed_precision.param_dtype={dtype}" for role in ("actor", "ref")]


def describe(dtype: str) -> str:
    """One line for the start of a run: the dtypes chosen, what the CPU offers, and where the choice came from."""
    import torch

    source = f"{DTYPE_ENV}={os.environ[DTYPE_ENV].strip()}" if os.environ.get(DTYPE_ENV, "").strip() else \
        f"default; {DTYPE_ENV}=bf16 to change"
    native = "yes" if host_has_native_bf16() else "no"
    return (f"verl-vgpo CPU dtype: actor/ref {dtype}, hf_cpu rollout fp32 ({source}; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16 matmul: {native})")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        dtype = host_dtype()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "--describe" in argv:
        print(describe(dtype), file=sys.stderr, flush=True)
    print("\n".join(dtype_overrides(dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
