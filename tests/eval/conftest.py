"""Fixtures of the evaluation tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    from verl_vgpo.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model", seed=0)
