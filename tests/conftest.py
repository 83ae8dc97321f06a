"""Shared pytest settings: keep tests single-threaded and deterministic on the 2-core machines."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run (a CI result is reproducible); HYPOTHESIS_PROFILE=explore
# draws new ones, as a developer searching for counterexamples would.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    """The CPU dtype every main_ppo run of the session gets from the run script (verl_vgpo.cpu.dtype)."""
    from verl_vgpo.cpu import dtype

    try:
        return dtype.describe(dtype.host_dtype())
    except ValueError as error:
        return f"verl-vgpo CPU dtype: {error}"


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """One tiny offline Qwen2.5-VL checkpoint (random weights, local tokenizer) per test session."""
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_vlm_of(tmp_path_factory, tiny_vlm_path):
    """``tiny_vlm_of(family)``: the tiny checkpoint of a model family, built once per session
    (``qwen2_5_vl`` is ``tiny_vlm_path``; see verl_vgpo.cpu.tiny_vlm.FAMILIES)."""
    from verl_vgpo.cpu.tiny_vlm import DEFAULT_FAMILY, build_tiny_vlm

    built = {DEFAULT_FAMILY: tiny_vlm_path}

    def of(family: str) -> str:
        if family not in built:
            built[family] = build_tiny_vlm(tmp_path_factory.mktemp(f"tiny_vlm_{family}") / "model", seed=0, family=family)
        return built[family]

    return of
