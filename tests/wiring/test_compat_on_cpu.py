"""Each workaround in verl_vgpo.wiring.compat: verl's ORIGINAL code still fails on the installed versions.

When one of the "still fails" tests turns red, verl (or transformers) fixed the bug: delete that
section of compat.py and its test. The second test of each pair checks that the workaround is
installed on the affected versions and does its job.
"""

import ast
import inspect
import textwrap
import types

import pytest
import torch

from verl_vgpo.wiring import compat


def require_versions(versions: dict) -> None:
    """Skip a "verl's original still fails" test where the fix is not for the installed versions (it is off there)."""
    mismatch = compat.version_mismatch(**versions)
    if mismatch:
        pytest.skip(f"the fix is off on these versions: {mismatch}")


def test_versions_match():
    assert compat.versions_match(torch=">=2")
    assert not compat.versions_match(torch="<1")
    assert not compat.versions_match(**{"no-such-distribution-vgpo": ">=0"})
    assert "is not installed" in compat.version_mismatch(**{"no-such-distribution-vgpo": ">=0"})
    assert "(fix is for torch<1)" in compat.version_mismatch(torch="<1")


# --- Qwen2/2.5-VL text-only micro-batches (verl 0.9.x, transformers >= 5) ---------------------------


@pytest.fixture(scope="module")
def qwen2_5_vl(tiny_vlm_path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_vlm_path).eval()


def test_verls_qwen2_vl_text_only_dummy_still_fails(qwen2_5_vl):
    import verl.models.transformers.qwen2_vl as qwen2_vl

    require_versions(compat.QWEN2_VL_TEXT_ONLY_VERSIONS)
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
    from verl_vgpo.wiring.trainer import LEGACY_TRAINER_VERSIONS

    require_versions(LEGACY_TRAINER_VERSIONS)
    assert _legacy_old_log_prob_outputs(FOCUS_OUTPUT_KEY) == ["entropys", "old_log_probs"]


def test_legacy_trainer_refuses_vgpo_at_construction():
    import verl  # noqa: F401
    from omegaconf import OmegaConf
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from verl_vgpo.config import VGPOConfigError

    assert RayPPOTrainer.__init__._vgpo_legacy_guard
    config = OmegaConf.create({"algorithm": {"adv_estimator": "vgpo"}})
    with pytest.raises(VGPOConfigError, match="trainer.use_v1"):
        RayPPOTrainer(config, tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)


# --- Qwen3.5 packed linear attention on transformers' torch fallback (verl 0.9.x, transformers >= 5) ---


def _packed_delta_rule_inputs(lengths=(7, 5), heads=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    query, key, value = rand(1, total, heads, dim), rand(1, total, heads, dim), rand(1, total, heads, dim)
    g = -torch.rand(1, total, heads, generator=generator)  # log decay < 0, as the model's g
    beta = torch.rand(1, total, heads, generator=generator)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return query, key, value, g, beta, cu_seqlens


def _per_sequence(kernel, query, key, value, g, beta, cu_seqlens):
    bounds = cu_seqlens.tolist()
    outputs = [
        kernel(query[:, s:e], key[:, s:e], value[:, s:e], g=g[:, s:e], beta=beta[:, s:e], initial_state=None,
               output_final_state=False, use_qk_l2norm_in_kernel=True)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1)


def test_verls_qwen3_5_packed_torch_fallback_still_leaks_state_across_sequences():
    import verl.models.transformers.qwen3_5 as verl_qwen3_5
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    require_versions(compat.QWEN3_5_PACKED_FALLBACK_VERSIONS)
    current = verl_qwen3_5._packed_chunk_gated_delta_rule
    verls_own = getattr(current, "__wrapped__", current)
    layer = types.SimpleNamespace(chunk_gated_delta_rule=torch_chunk_gated_delta_rule)
    inputs = _packed_delta_rule_inputs()
    expected = _per_sequence(torch_chunk_gated_delta_rule, *inputs)

    # verl hands cu_seqlens to the torch fallback, which ignores them: the second sequence sees the first
    leaked, _ = verls_own(layer, *inputs, cu_seqlens_cpu=None)
    first = int(inputs[-1][1])
    torch.testing.assert_close(leaked[:, :first], expected[:, :first])  # the first sequence is unaffected
    assert not torch.allclose(leaked[:, first:], expected[:, first:], atol=1e-4)


def test_qwen3_5_packed_torch_fallback_fix_runs_each_sequence_alone():
    import verl.models.transformers.qwen3_5 as verl_qwen3_5
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    compat.fix_qwen3_5_packed_linear_attention_fallback()
    fixed = verl_qwen3_5._packed_chunk_gated_delta_rule
    assert fixed.vgpo_torch_fallback_fix
    layer = types.SimpleNamespace(chunk_gated_delta_rule=torch_chunk_gated_delta_rule)
    inputs = _packed_delta_rule_inputs()
    expected = _per_sequence(torch_chunk_gated_delta_rule, *inputs)
    actual, _ = fixed(layer, *inputs, cu_seqlens_cpu=None)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    # any other kernel (fla's honours cu_seqlens) still goes to verl's own code
    seen = {}

    def varlen_kernel(query, key, value, cu_seqlens=None, **kwargs):
        seen["cu_seqlens"] = cu_seqlens
        return value, None

    out, _ = fixed(types.SimpleNamespace(chunk_gated_delta_rule=varlen_kernel), *inputs, cu_seqlens_cpu=None)
    assert torch.equal(seen["cu_seqlens"], inputs[-1]) and torch.equal(out, inputs[2])
    compat.fix_qwen3_5_packed_linear_attention_fallback()  # idempotent
    assert verl_qwen3_5._packed_chunk_gated_delta_rule is fixed


# --- one vision-tower pass per micro-batch with images and videos (verl 0.9.x, transformers >= 5) ------


def _mixed_micro_batch(model_path):
    """verl's inputs for one packed micro-batch holding an image sample and a video sample."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.wiring.vlm_batches import standard_samples

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa").eval()
    by_name = {sample.name: sample for sample in standard_samples(processor, model)}
    # the video first: the order of the visual items in the sequence is not images-then-videos
    video, image, images = by_name["video_only"], by_name["image"], by_name["two_images"]
    input_ids = torch.cat([video.input_ids, image.input_ids, images.input_ids]).unsqueeze(0)
    inputs = dict(
        pixel_values=torch.cat([image.multi_modal_inputs["pixel_values"], images.multi_modal_inputs["pixel_values"]]),
        pixel_values_videos=video.multi_modal_inputs["pixel_values_videos"],
        image_grid_thw=torch.cat([image.multi_modal_inputs["image_grid_thw"], images.multi_modal_inputs["image_grid_thw"]]),
        video_grid_thw=video.multi_modal_inputs["video_grid_thw"],
    )
    return model, input_ids, inputs


def _tower_calls_and_output(function, model, input_ids, inputs):
    calls = []
    handle = model.model.visual.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        with torch.no_grad():
            output = function(model.model, input_ids, None, **inputs)
    finally:
        handle.remove()
    return len(calls), output


def _embedding_outputs(output) -> dict:
    """verl's helpers return (inputs_embeds, attention_mask) (Qwen2-VL) or a dict (Qwen3-VL, Qwen3.5)."""
    if isinstance(output, tuple):
        return {"inputs_embeds": output[0]}
    return {key: value for key, value in output.items() if value is not None and key != "attention_mask"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_verls_get_input_embeds_still_runs_the_vision_tower_per_modality(tiny_vlm_of, family):
    import importlib

    module = importlib.import_module(
        {"qwen2_5_vl": "verl.models.transformers.qwen2_vl", "qwen3_vl": "verl.models.transformers.qwen3_vl",
         "qwen3_5": "verl.models.transformers.qwen3_5"}[family]
    )
    require_versions(compat.ONE_VISION_PASS_VERSIONS)
    verls_own = getattr(module._get_input_embeds, "__wrapped__", module._get_input_embeds)
    model, input_ids, inputs = _mixed_micro_batch(tiny_vlm_of(family))
    calls, _ = _tower_calls_and_output(verls_own, model, input_ids, inputs)
    assert calls == 2  # one pass for the images, one more for the video


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_one_vision_pass_gives_verls_embeddings(tiny_vlm_of, family):
    import importlib

    module = importlib.import_module(
        {"qwen2_5_vl": "verl.models.transformers.qwen2_vl", "qwen3_vl": "verl.models.transformers.qwen3_vl",
         "qwen3_5": "verl.models.transformers.qwen3_5"}[family]
    )
    compat.fix_qwen_vl_one_vision_pass_per_micro_batch()
    assert module._get_input_embeds.vgpo_one_vision_pass
    model, input_ids, inputs = _mixed_micro_batch(tiny_vlm_of(family))
    calls, fixed = _tower_calls_and_output(module._get_input_embeds, model, input_ids, inputs)
    _, expected = _tower_calls_and_output(module._get_input_embeds.__wrapped__, model, input_ids, inputs)
    assert calls == 1
    fixed, expected = _embedding_outputs(fixed), _embedding_outputs(expected)
    assert fixed.keys() == expected.keys()
    for key, value in expected.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        actual = fixed[key] if isinstance(fixed[key], (list, tuple)) else [fixed[key]]
        assert len(actual) == len(values), key
        for a, e in zip(actual, values):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-5, msg=f"{family}: {key}")
    # the image/video pads really carry visual features (not the pad tokens' embeddings)
    embeds = fixed["inputs_embeds"][0]
    video_pads = input_ids[0] == model.config.video_token_id
    pad_embedding = model.model.get_input_embeddings().weight[model.config.video_token_id]
    assert not torch.allclose(embeds[video_pads][0], pad_embedding)


# --- the replay buffer's poll interval has no setting (verl 0.9.x) ----------------------------------------


def test_verls_trainer_still_builds_the_replay_buffer_without_a_poll_interval():
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    require_versions(compat.REPLAY_POLL_VERSIONS)
    assert inspect.signature(ReplayBuffer.__init__).parameters["poll_interval"].default == 2.0
    tree = ast.parse(textwrap.dedent(inspect.getsource(trainer_base.PPOTrainer._build_replay_buffer)))
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    names |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword)}
    assert "poll_interval" not in names  # verl passes one now: drop the compat section and this test


def test_replay_poll_interval_is_checked_and_applied():
    from omegaconf import OmegaConf

    buffer = types.SimpleNamespace(poll_interval=2.0)
    compat.apply_replay_buffer_poll_interval(buffer, OmegaConf.create({"max_off_policy_threshold": None}))
    assert buffer.poll_interval == 2.0  # unset: verl's default stays
    compat.apply_replay_buffer_poll_interval(buffer, OmegaConf.create({"poll_interval": 0.2}))
    assert buffer.poll_interval == 0.2
    for bad in (0, -1.0, float("inf"), "fast", True):
        with pytest.raises(ValueError, match="trainer.v1.sampler.poll_interval must be a positive number"):
            compat.apply_replay_buffer_poll_interval(buffer, OmegaConf.create({"poll_interval": bad}))
    with pytest.raises(TypeError, match="has no poll_interval"):
        compat.apply_replay_buffer_poll_interval(object(), {"poll_interval": 0.5})


# --- the list of fixes and VERL_VGPO_FIXES ------------------------------------------------------------


def _status_in_subprocess(fixes_env: str | None) -> dict:
    """Which fixes a fresh process (plugin loaded by ``import verl``) reports active, and whether verl's
    Qwen2-VL helper is wrapped there."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != compat.FIXES_ENV}
    if fixes_env is not None:
        env[compat.FIXES_ENV] = fixes_env
    code = (
        "import json, verl, verl.models.transformers.qwen2_vl as q; from verl_vgpo.wiring import compat; "
        "print(json.dumps({'active': [f.name for f, on, _ in compat.fix_status() if on], "
        "'wrapped': hasattr(q._get_input_embeds, 'vgpo_text_only_fix'), "
        "'estimator': __import__('verl.trainer.ppo.core_algos', fromlist=['x']).get_adv_estimator_fn('vgpo') is not None}))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "log": done.stdout + done.stderr}


def test_fixes_env_turns_every_fix_off_and_keeps_the_estimator():
    import verl  # noqa: F401  (this process: the plugin loaded with the fixes on)
    import verl.models.transformers.qwen2_vl as qwen2_vl

    assert qwen2_vl._get_input_embeds.vgpo_text_only_fix
    assert [f.name for f, on, _ in compat.fix_status()] == [f.name for f in compat.FIXES]
    assert all(on or "fix is for" in why for _, on, why in compat.fix_status())  # off only on other versions
    off = _status_in_subprocess("0")
    assert "verl-vgpo: VERL_VGPO_FIXES=0: no verl fix applied in this process" in off.pop("log")  # logged at INFO
    assert off == {"active": [], "wrapped": False, "estimator": True}


def test_apply_fixes_logs_one_line_naming_the_fixes(monkeypatch, caplog):
    import logging

    monkeypatch.setattr(compat, "_APPLIED_LOGGED", False)
    with caplog.at_level(logging.INFO, logger="verl_vgpo"):
        active = compat.apply_fixes()
        compat.apply_fixes()
    lines = [r.getMessage() for r in caplog.records if "verl fixes active" in r.getMessage()]
    assert len(lines) == 1 and all(name in lines[0] for name in active)
    monkeypatch.setenv(compat.FIXES_ENV, "0")
    monkeypatch.setattr(compat, "_APPLIED_LOGGED", False)
    with caplog.at_level(logging.INFO, logger="verl_vgpo"):
        assert compat.apply_fixes() == []
    assert "VERL_VGPO_FIXES=0: no verl fix applied" in caplog.text


def test_poll_interval_is_ignored_with_a_warning_when_fixes_are_off(monkeypatch, caplog):
    from omegaconf import OmegaConf

    monkeypatch.setenv(compat.FIXES_ENV, "off")
    buffer = types.SimpleNamespace(poll_interval=2.0)
    compat.apply_replay_buffer_poll_interval(buffer, OmegaConf.create({"poll_interval": 0.2}))
    assert buffer.poll_interval == 2.0
    assert "is ignored" in caplog.text


# --- filter_groups ignores max_num_gen_batches: endless generation (verl 0.9.x) ----------------------------


class _GroupsTQ:
    """The TransferQueue calls verl's ReplayBuffer.sample makes (kv_list, kv_batch_get of rm_scores, kv_clear),
    over prompt groups that finish at once with the scores ``score_of(prompt_number, rollout)``."""

    def __init__(self, score_of, rollouts: int = 2):
        self.score_of, self.rollouts = score_of, rollouts
        self.items: dict[str, dict] = {}
        self.scores: dict[str, float] = {}
        self.prompts = 0

    def add_prompts(self, count: int) -> int:
        for _ in range(count):
            uid = f"p{self.prompts}"
            self.items[uid] = {"is_prompt": True, "status": "finished", "global_steps": 1}
            for rollout in range(self.rollouts):
                self.items[f"{uid}_{rollout}_0"] = {"global_steps": 1}
                self.scores[f"{uid}_{rollout}_0"] = self.score_of(self.prompts, rollout)
            self.prompts += 1
        return count

    def kv_list(self):
        return {"train": dict(self.items)}

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        assert select_fields == ["rm_scores"]
        return {"rm_scores": [torch.tensor([self.scores[key]]) for key in keys]}

    def kv_clear(self, partition_id, keys):
        for key in keys:
            self.items.pop(key, None)


class _Endless(Exception):
    """Raised by the test's refill once far more prompts were asked for than any budget allows."""


def _replay_buffer(monkeypatch, fake_tq, train_batch_size, refill):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1 import replay_buffer as replay_buffer_module

    monkeypatch.setattr(replay_buffer_module, "tq", fake_tq)
    buffer = replay_buffer_module.ReplayBuffer(
        trainer_mode="sync", trainer_config=OmegaConf.create({}), max_off_policy_threshold=None,
        max_off_policy_strategy="drop", sampler_kwargs=OmegaConf.create({}), poll_interval=0.0, refill_fn=refill,
        filter_groups_metric="reward", train_batch_size=train_batch_size, gen_batch_size=1,
        max_inflight_gen_batches=1,
    )
    fake_tq.add_prompts(train_batch_size)  # the step's first batch (prepare_step)
    return buffer


def _filter_groups(max_num_gen_batches):
    from omegaconf import OmegaConf

    return OmegaConf.create({"enable": True, "metric": "reward", "max_num_gen_batches": max_num_gen_batches})


def test_verls_v1_trainer_still_ignores_max_num_gen_batches(monkeypatch):
    """Every group scores the same: verl's buffer keeps asking for prompts, far past max_num_gen_batches."""
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    require_versions(compat.FILTER_GROUPS_BUDGET_VERSIONS)
    assert "max_num_gen_batches" not in inspect.signature(ReplayBuffer.__init__).parameters
    tree = ast.parse(textwrap.dedent(inspect.getsource(trainer_base.PPOTrainer._build_replay_buffer)))
    assert "max_num_gen_batches" not in {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword)}

    fake_tq = _GroupsTQ(lambda prompt, rollout: 0.0)

    def refill(count):
        if fake_tq.prompts > 100 * 4:  # 100 batches of 4 prompts with max_num_gen_batches=3
            raise _Endless
        return fake_tq.add_prompts(count)

    buffer = _replay_buffer(monkeypatch, fake_tq, 4, refill)
    with pytest.raises(_Endless):  # verl honours the key now: drop the compat section and this test
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)


def test_max_num_gen_batches_stops_a_step_whose_groups_all_score_the_same(monkeypatch):
    fake_tq = _GroupsTQ(lambda prompt, rollout: 0.0 if prompt % 4 else float(rollout))  # one group in 4 is kept
    buffer = _replay_buffer(monkeypatch, fake_tq, 4, lambda count: fake_tq.add_prompts(count))
    compat.apply_filter_groups_budget(buffer, _filter_groups(3), train_batch_size=4)
    with pytest.raises(compat.FilterGroupsExhaustedError) as raised:
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    message = str(raised.value)
    assert fake_tq.prompts == 12  # exactly 3 batches of 4 prompts were generated
    assert "algorithm.filter_groups" in message and "after 3 generation batches (12 prompts" in message
    assert "only 3 of 12 finished prompt groups (25.0%) were kept, 4 needed" in message


def test_max_num_gen_batches_lets_a_step_that_fills_its_batch_finish(monkeypatch):
    fake_tq = _GroupsTQ(lambda prompt, rollout: 0.0 if prompt % 2 else float(rollout))  # every other group kept
    buffer = _replay_buffer(monkeypatch, fake_tq, 4, lambda count: fake_tq.add_prompts(count))
    compat.apply_filter_groups_budget(buffer, _filter_groups(3), train_batch_size=4)
    batch, metrics = buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len({key.split("_")[0] for key in batch.keys}) == 4
    assert metrics["training/filter_groups/evicted_samples"] >= 2
    # the next step counts again from its own first batch
    fake_tq.add_prompts(4)
    batch, _ = buffer.sample(global_steps=2, partition_id="train", batch_size=4)
    assert len({key.split("_")[0] for key in batch.keys}) == 4


def test_max_num_gen_batches_is_checked_and_off_when_unset(monkeypatch, caplog):
    from omegaconf import OmegaConf

    assert compat.filter_groups_budget(_filter_groups(10)) == 10
    for unbounded in (0, -1, None):
        assert compat.filter_groups_budget(_filter_groups(unbounded)) is None
    assert compat.filter_groups_budget(OmegaConf.create({"enable": False, "max_num_gen_batches": 3})) is None
    assert compat.filter_groups_budget(None) is None
    for bad in (1.5, "3", True):
        with pytest.raises(ValueError, match="max_num_gen_batches must be an integer"):
            compat.filter_groups_budget(_filter_groups(bad))
    buffer = types.SimpleNamespace(sample=None)
    compat.apply_filter_groups_budget(buffer, _filter_groups(0), train_batch_size=4)  # unbounded: untouched
    assert buffer.sample is None
    with pytest.raises(TypeError, match="has no refill_fn"):
        compat.apply_filter_groups_budget(types.SimpleNamespace(sample=None), _filter_groups(2), train_batch_size=4)
    monkeypatch.setenv(compat.FIXES_ENV, "0")
    fake_tq = _GroupsTQ(lambda prompt, rollout: 0.0)
    buffer = _replay_buffer(monkeypatch, fake_tq, 4, fake_tq.add_prompts)
    compat.apply_filter_groups_budget(buffer, _filter_groups(3), train_batch_size=4)
    assert not hasattr(buffer, "vgpo_generation_budget")
    assert "max_num_gen_batches=3 is ignored" in caplog.text


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
@pytest.mark.parametrize("mode", ["sync", "colocate_async", "separate_async"])
def test_every_trainer_mode_bounds_filter_groups_generation_for_every_estimator(mode, estimator, make_config, fake_tq):
    """The trainer layer hands max_num_gen_batches to verl's real replay buffer (every mode, every estimator)."""
    from tests.wiring.test_vgpo_trainer_on_cpu import MODE_OVERRIDES
    from verl_vgpo.wiring.trainer import VGPO_TRAINERS

    overrides = {**MODE_OVERRIDES[mode], "algorithm.adv_estimator": estimator, "algorithm.filter_groups.enable": True,
                 "algorithm.filter_groups.metric": "acc"}
    unbounded = VGPO_TRAINERS[mode](make_config(**overrides)).replay_buffer
    assert getattr(unbounded, "vgpo_generation_budget", None) is None  # verl's default 0: unbounded
    bounded = VGPO_TRAINERS[mode](make_config(**overrides, **{"algorithm.filter_groups.max_num_gen_batches": 5}))
    budget = bounded.replay_buffer.vgpo_generation_budget
    assert (budget.max_batches, budget.train_batch_size) == (5, bounded.config.data.train_batch_size)


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
def test_driver_refuses_a_bad_max_num_gen_batches_before_ray(estimator, make_config):
    from verl.utils.config import validate_config

    config = make_config(**{"algorithm.adv_estimator": estimator, "algorithm.filter_groups.enable": True,
                            "algorithm.filter_groups.max_num_gen_batches": 2.5})
    with pytest.raises(ValueError, match="max_num_gen_batches must be an integer"):
        validate_config(config, use_reference_policy=False, use_critic=False)


# --- packed Qwen2/2.5-VL attention returns bf16 into fp32 layers (verl 0.9.x) ---------------------------------


def _packed_attention_inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 7, 2, 8) for _ in range(3))
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])  # two packed sequences: verl's varlen branch
    return q, k, v, position_ids


def _flash_kernels(monkeypatch, qwen2_vl):
    """flash-attn's varlen kernel contract (fp16 / bf16 in, the same dtype out), as the stand-in computes it."""
    from verl_vgpo.testing import flash_attn_standin

    monkeypatch.setattr(qwen2_vl, "flash_attn_varlen_func", flash_attn_standin.flash_attn_varlen_func, raising=False)
    monkeypatch.setattr(qwen2_vl, "_flash_supports_window_size", True, raising=False)
    monkeypatch.setattr(qwen2_vl, "_flash_supports_deterministic", True, raising=False)


def test_verls_packed_qwen2_vl_attention_still_returns_bf16_for_fp32_inputs(monkeypatch):
    import verl.models.transformers.qwen2_vl as qwen2_vl

    require_versions(compat.QWEN2_VL_FLASH_OUTPUT_DTYPE_VERSIONS)
    _flash_kernels(monkeypatch, qwen2_vl)
    original = getattr(qwen2_vl._custom_flash_attention_forward, "__wrapped__", qwen2_vl._custom_flash_attention_forward)
    q, k, v, position_ids = _packed_attention_inputs()
    out = original(q, k, v, None, query_length=7, is_causal=True, position_ids=position_ids)
    assert out.dtype == torch.bfloat16  # verl returns its inputs' dtype now: drop the compat section and this test


def test_packed_qwen2_vl_attention_fix_returns_the_inputs_dtype(monkeypatch):
    import verl.models.transformers.qwen2_vl as qwen2_vl

    require_versions(compat.QWEN2_VL_FLASH_OUTPUT_DTYPE_VERSIONS)
    compat.fix_qwen2_vl_flash_attention_output_dtype()
    assert qwen2_vl._custom_flash_attention_forward.vgpo_output_dtype_fix
    _flash_kernels(monkeypatch, qwen2_vl)
    q, k, v, position_ids = _packed_attention_inputs()
    out = qwen2_vl._custom_flash_attention_forward(q, k, v, None, query_length=7, is_causal=True, position_ids=position_ids)
    original = qwen2_vl._custom_flash_attention_forward.__wrapped__
    expected = original(q, k, v, None, query_length=7, is_causal=True, position_ids=position_ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=0)
    bf16 = [t.to(torch.bfloat16) for t in (q, k, v)]
    assert qwen2_vl._custom_flash_attention_forward(*bf16, None, query_length=7, is_causal=True,
                                                    position_ids=position_ids).dtype == torch.bfloat16


# --- verl 0.9.x: FSDP2 wraps lm_head alone; the fused-kernel forward reads its (sharded) weight -------------------


class _FusedKernelLM(torch.nn.Module):
    """An untied decoder whose forward is shaped like verl's fused-kernel forwards: the final hidden state and
    ``self.lm_head.weight`` go to verl's FusedLinearForPPO, lm_head itself is never called."""

    _no_split_modules = ["_Block"]

    def __init__(self, hidden=8, vocab=16):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(tie_word_embeddings=False)
        self.embed_tokens = torch.nn.Embedding(vocab, hidden)
        self.layers = torch.nn.ModuleList([_Block(hidden), _Block(hidden)])
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        self._verl_fused_kernels_backend = "torch"

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids):
        from verl.utils.experimental.torch_functional import FusedLinearForPPO

        hidden = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        log_probs, _ = FusedLinearForPPO(impl_backend="torch").forward(
            hidden_states=hidden, vocab_weights=self.lm_head.weight, input_ids=torch.roll(input_ids, -1, -1))
        return log_probs


class _Block(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)

    def forward(self, x):
        return x + torch.tanh(self.linear(x))


def _fsdp2_fused_log_probs(select_targets, monkeypatch):
    """verl's apply_fsdp2 on the toy model (1-rank gloo mesh) with ``select_targets`` as its wrap-target choice."""
    import verl.utils.fsdp_utils as fsdp_utils
    from torch.distributed.device_mesh import init_device_mesh

    from verl_vgpo.cpu.training_worker import ensure_single_process_group

    ensure_single_process_group()
    monkeypatch.setattr(fsdp_utils, "_select_fsdp2_wrap_targets", select_targets)
    torch.manual_seed(0)
    model = _FusedKernelLM()
    input_ids = torch.randint(0, 16, (2, 5))
    with torch.no_grad():
        expected = torch.log_softmax(model.lm_head(model.layers[1](model.layers[0](model.embed_tokens(input_ids)))), -1)
    expected = expected.gather(-1, torch.roll(input_ids, -1, -1).unsqueeze(-1)).squeeze(-1)
    fsdp_utils.apply_fsdp2(model, {"mesh": init_device_mesh("cpu", (1,))}, {})
    with torch.no_grad():
        return model(input_ids), expected


def test_verls_fsdp2_wrap_still_breaks_the_fused_kernel_forward_of_untied_models(monkeypatch):
    require_versions(compat.FSDP2_FUSED_LM_HEAD_VERSIONS)
    import verl.utils.fsdp_utils as fsdp_utils

    current = fsdp_utils._select_fsdp2_wrap_targets
    verls_own = getattr(current, "__wrapped__", current)
    with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
        _fsdp2_fused_log_probs(verls_own, monkeypatch)


def test_fsdp2_fused_kernels_fix_keeps_lm_head_in_the_root_unit(monkeypatch):
    require_versions(compat.FSDP2_FUSED_LM_HEAD_VERSIONS)
    import verl.utils.fsdp_utils as fsdp_utils

    compat.fix_fsdp2_fused_kernels_lm_head()
    fixed = fsdp_utils._select_fsdp2_wrap_targets
    assert fixed.vgpo_fused_lm_head_fix
    log_probs, expected = _fsdp2_fused_log_probs(fixed, monkeypatch)
    torch.testing.assert_close(log_probs, expected, rtol=1e-5, atol=1e-6)
    # without verl's fused-kernel mark the model is wrapped exactly as verl does (lm_head its own unit)
    model = _FusedKernelLM()
    del model._verl_fused_kernels_backend
    assert fixed(model, ["_Block"]) == fixed.__wrapped__(model, ["_Block"])
    assert any(module is model.lm_head for module in fixed(model, ["_Block"]))
    model._verl_fused_kernels_backend = "torch"
    assert not any(module is model.lm_head for module in fixed(model, ["_Block"]))
    assert any(module is model.embed_tokens for module in fixed(model, ["_Block"]))
