"""Each workaround in verl_vgpo.wiring.compat: verl's ORIGINAL code still fails on the installed versions.

When one of the "still fails" tests turns red, verl (or transformers) fixed the bug: delete that
section of compat.py and its test. The second test of each pair checks that the workaround is
installed on the affected versions and does its job.
"""

import types

import pytest
import torch

from verl_vgpo.wiring import compat


def test_versions_match():
    assert compat.versions_match(torch=">=2")
    assert not compat.versions_match(torch="<1")
    assert not compat.versions_match(**{"no-such-distribution-vgpo": ">=0"})


# --- Qwen2/2.5-VL text-only micro-batches (verl 0.9.x, transformers >= 5) ---------------------------


@pytest.fixture(scope="module")
def qwen2_5_vl(tiny_vlm_path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_vlm_path).eval()


def test_verls_qwen2_vl_text_only_dummy_still_fails(qwen2_5_vl):
    import verl.models.transformers.qwen2_vl as qwen2_vl

    assert compat.versions_match(**compat.QWEN2_VL_TEXT_ONLY_VERSIONS)
    verls_own = getattr(qwen2_vl._get_input_embeds, "__wrapped__", qwen2_vl._get_input_embeds)
    input_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), pytest.raises(AttributeError, match="mean"):
        verls_own(qwen2_5_vl.model, input_ids)


def test_qwen2_vl_text_only_fix_is_installed_and_works(qwen2_5_vl):
    import verl  # noqa: F401  (the plugin installs the fix with the engines)
    import verl.models.transformers.qwen2_vl as qwen2_vl

    assert qwen2_vl._get_input_embeds.vgpo_text_only_fix
    input_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        embeds, _ = qwen2_vl._get_input_embeds(qwen2_5_vl.model, input_ids)
        torch.testing.assert_close(embeds, qwen2_5_vl.model.get_input_embeddings()(input_ids))


# --- legacy trainer drops the engine's extra outputs (verl 0.9.x) -----------------------------------


def _legacy_old_log_prob_outputs(extra_field: str) -> list[str]:
    """Fields of what verl's legacy ``RayPPOTrainer._compute_old_log_prob`` keeps from an engine output
    that also carries ``extra_field``. Mocked: the worker group (Ray actors running the engine)."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils import tensordict_utils as tu

    prompt_len, response_len = 3, 4
    input_ids = torch.arange(2 * (prompt_len + response_len)).reshape(2, -1) + 10
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 0] = 0  # a left-padded prompt
    batch = DataProto.from_dict(
        tensors={
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "prompts": input_ids[:, :prompt_len],
            "responses": input_ids[:, prompt_len:],
            "response_mask": torch.ones(2, response_len, dtype=torch.int64),
        }
    )

    class EngineWorkers:
        def compute_log_prob(self, data):
            lengths = data["input_ids"].offsets().diff().tolist()

            def per_token(value):
                return torch.nested.as_nested_tensor([torch.full((n,), value) for n in lengths], layout=torch.jagged)

            fields = {"log_probs": per_token(-0.1), "entropy": per_token(0.5), extra_field: per_token(0.3)}
            return tu.get_tensordict(fields, non_tensor_dict={"metrics": {"mfu": 0.0}})

    trainer = types.SimpleNamespace(
        config=OmegaConf.create({"actor_rollout_ref": {"actor": {}}}), actor_rollout_wg=EngineWorkers()
    )
    old_log_prob, _ = RayPPOTrainer._compute_old_log_prob(trainer, batch)
    return sorted(old_log_prob.batch.keys())


def test_verls_legacy_trainer_still_drops_the_focus_field():
    from verl_vgpo.wiring.keys import FOCUS_OUTPUT_KEY

    assert compat.versions_match(**compat.LEGACY_TRAINER_VERSIONS)
    assert _legacy_old_log_prob_outputs(FOCUS_OUTPUT_KEY) == ["entropys", "old_log_probs"]


def test_legacy_trainer_guard_is_installed():
    import verl  # noqa: F401
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    assert RayPPOTrainer.__init__._vgpo_legacy_guard
