"""Fixtures of the engine tests: one tiny offline Qwen2.5-VL checkpoint per test session.

verl's engine monkey-patches the Qwen-VL classes when it builds a model; the original transformers
methods are snapshotted here, at collection time (before any test builds an engine), so that tests
can run independent plain-HF references and put the classes back afterwards.
"""

import pytest

from tests.engine.vlm_batches import snapshot_qwen_methods

ORIGINAL_QWEN_METHODS = snapshot_qwen_methods()


@pytest.fixture(scope="session")
def original_qwen_methods():
    for (cls, attribute), method in ORIGINAL_QWEN_METHODS.items():
        assert method.__module__.startswith("transformers."), (
            f"{cls.__name__}.{attribute} was already patched ({method.__module__}) when the engine tests were collected"
        )
    return ORIGINAL_QWEN_METHODS


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    from verl_vgpo.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model", seed=0)
