"""The ``hf_cpu`` rollout's parts without Ray: registration, the server's generation and weight sync.

Real parts only: verl's registries, transformers' Qwen2.5-VL and processor (tiny random build; the
generation and log-prob check also on Qwen3-VL and Qwen3.5), verl's own Qwen-VL monkey patch. The server class is exercised directly (its methods are what the Ray actor
runs); the Ray wiring itself is covered by the main_ppo smoke test.
"""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import verl  # noqa: F401  (loads the verl.plugins entry point)
from verl_vgpo.cpu import generation
from verl_vgpo.cpu import rollout as hf_cpu

EASY_VQA_IMAGE_ID = 0


def _easy_vqa_image(image_id: int = EASY_VQA_IMAGE_ID) -> Image.Image:
    import easy_vqa

    path = easy_vqa.get_train_image_paths()[image_id]
    with open(path, "rb") as image_file:
        return Image.open(io.BytesIO(image_file.read())).convert("RGB")


def _rollout_config(**overrides):
    from verl.workers.config import RolloutConfig

    values = dict(name="hf_cpu", prompt_length=128, response_length=12, tensor_model_parallel_size=1)
    values.update(overrides)
    return RolloutConfig(**values)


FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")


@pytest.fixture(scope="module")
def server(tiny_vlm_path):
    return hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}))


@pytest.fixture(scope="module", params=FAMILIES)
def family_server(request, tiny_vlm_of):
    """A server on the tiny checkpoint of each model family (Qwen2.5-VL, Qwen3-VL, Qwen3.5)."""
    return hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_of(request.param)}))


def _image_prompt(server, question: str = "what shape is it?", image_id: int = EASY_VQA_IMAGE_ID):
    image = _easy_vqa_image(image_id)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = server.processor(text=[text], images=[image], return_tensors="pt")
    return inputs["input_ids"][0].tolist(), [image]


def _text_prompt(server, question: str = "name a colour") -> list[int]:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return server.processor(text=[text], return_tensors="pt")["input_ids"][0].tolist()


GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True}


def _queued_while_busy(server, requests: list[dict], between=None) -> list:
    """Send ``requests`` (generate kwargs) while the server is busy, so they queue and are batched as they
    would be when verl's agent loop sends a step's requests at once; ``between`` (index, coroutine
    function): a call sent after request ``index`` (e.g. a weight update). Returns results or exceptions.

    Holding the server's serving lock stands in for a running batch (no generate call is needed for it).
    """

    async def run():
        lock = server._server_lock()
        tasks = []
        async with lock:
            for index, kwargs in enumerate(requests):
                tasks.append(asyncio.ensure_future(server.generate(request_id=f"q{index}", **kwargs)))
                await asyncio.sleep(0)  # validated and queued (or refused) before the next is sent
                if between is not None and between[0] == index:
                    tasks.append(asyncio.ensure_future(between[1]()))
                    await asyncio.sleep(0)
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(run())


def test_registered_in_both_verl_registries():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    hf_cpu.register_hf_cpu_rollout()  # what the plugin runs at load where VERL_PLATFORM=cpu
    assert get_rollout_class("hf_cpu", "async") is hf_cpu.HFCpuServerAdapter
    assert RolloutReplicaRegistry.get("hf_cpu") is hf_cpu.HFCpuReplica
    hf_cpu.register_hf_cpu_rollout()  # idempotent
    assert RolloutReplicaRegistry.get("hf_cpu") is hf_cpu.HFCpuReplica
    with pytest.raises(ValueError, match="Unknown rollout mode: hf_cpux. Available: .*hf_cpu"):
        RolloutReplicaRegistry.get("hf_cpux")


def test_parallel_rollout_sizes_are_refused():
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="tensor_model_parallel_size"):
        hf_cpu._check_single_process_rollout(_rollout_config(tensor_model_parallel_size=2))


def test_generate_image_prompt_matches_a_plain_forward(family_server):
    server = family_server
    prompt_ids, images = _image_prompt(server)
    assert server.hf_config.image_token_id in prompt_ids
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    output = asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=params, request_id="r0", image_data=images))

    assert 1 <= len(output.token_ids) <= 12
    assert not set(output.token_ids) & set(server.suppress_ids), "special tokens (image pads ...) were sampled"
    assert output.stop_reason in ("completed", "length")
    assert output.extra_fields["global_steps"] is None  # no weight sync yet

    # the returned log-probs are the model's own next-token log-probs for the sampled tokens
    inputs = generation.inputs_from_ids(prompt_ids + output.token_ids, images, server.processor, server.hf_config)
    with torch.no_grad():
        logits = server.model(**inputs).logits[0].float()
    start = len(prompt_ids) - 1
    expected = torch.log_softmax(logits[start : start + len(output.token_ids)], dim=-1)
    expected = expected.gather(1, torch.tensor(output.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=2e-4, rtol=0)


def test_weight_update_changes_what_is_generated(tiny_vlm_path):
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}))
    prompt_ids, images = _image_prompt(server)
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": False}

    def generate():
        return asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=dict(greedy), request_id="g",
                                           image_data=images)).token_ids

    before = generate()
    # "trainer" weights: the same model with a different lm_head / embedding (tied) and one layer changed
    torch.manual_seed(1)
    new_weights = [(name, tensor + 0.5 * torch.randn_like(tensor)) for name, tensor in server.model.state_dict().items()
                   if "embed_tokens" in name or "layers.0." in name]
    untouched = [(name, tensor.clone()) for name, tensor in server.model.state_dict().items()
                 if not ("embed_tokens" in name or "layers.0." in name)]
    result = asyncio.run(server.update_weights(new_weights + untouched, global_steps=3))
    assert result["weight_updates"] == 1

    snapshot = server.named_parameters_snapshot()
    for name, tensor in new_weights:
        torch.testing.assert_close(snapshot[name], tensor)
    after = asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=dict(greedy), request_id="g2",
                                        image_data=images))
    assert after.extra_fields["global_steps"] == 3
    assert after.token_ids != before, "greedy output did not change after a large weight change"


def test_weight_update_refuses_mismatched_names_and_shapes(server):
    state = server.model.state_dict()
    name, tensor = next(iter(state.items()))
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="names the serving model does not have"):
        asyncio.run(server.update_weights([*state.items(), ("not.a.weight", tensor)]))
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="misses"):
        asyncio.run(server.update_weights([item for item in state.items() if item[0] != name]))
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="shape"):
        asyncio.run(server.update_weights([*[item for item in state.items() if item[0] != name],
                                           (name, torch.zeros(3, 3))]))


def test_generation_inputs_refuse_inconsistent_images(server):
    prompt_ids, images = _image_prompt(server)
    with pytest.raises(generation.GenerationError, match="image pad tokens but no image data"):
        generation.inputs_from_ids(prompt_ids, None, server.processor, server.hf_config)
    pad = server.hf_config.image_token_id
    with pytest.raises(generation.GenerationError, match="need"):
        generation.inputs_from_ids([pad] + prompt_ids, images, server.processor, server.hf_config)
    text_config = OmegaConf.create({"model_type": "qwen2"})
    with pytest.raises(generation.GenerationError, match="no image_token_id"):
        generation.inputs_from_ids([1, 2, 3], images, server.processor, text_config)


def test_prompt_longer_than_the_model_budget_is_refused(server):
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="no room"):
        hf_cpu.resolve_max_new_tokens({}, 200, server.config)
    assert hf_cpu.resolve_max_new_tokens({"max_tokens": 5}, 10, server.config) == 5
    assert hf_cpu.resolve_max_new_tokens({}, 10, server.config) == 12


def test_generate_runs_on_original_forwards_after_verl_patches_the_class(tiny_vlm_path):
    """verl's engine patches Qwen2.5-VL's forward at class level; generation must not use the patch."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    patched_classes = (qwen.Qwen2_5_VLForConditionalGeneration, qwen.Qwen2_5_VLModel)
    saved = {cls: cls.__dict__["forward"] for cls in patched_classes}
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}))
    prompt_ids, images = _image_prompt(server)
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1}
    reference = asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=dict(greedy), request_id="a",
                                            image_data=images)).token_ids
    try:
        from verl.models.transformers.monkey_patch import apply_monkey_patch

        apply_monkey_patch(server.model, use_remove_padding=False)
        patched = {cls: cls.__dict__["forward"] for cls in patched_classes}
        assert all(forward.__module__.startswith("verl.") for forward in patched.values())
        again = asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=dict(greedy), request_id="b",
                                            image_data=images)).token_ids
        assert again == reference
        # verl's patch is back in place after generation
        assert {cls: cls.__dict__["forward"] for cls in patched_classes} == patched
    finally:
        for cls, forward in saved.items():
            cls.forward = forward


def test_one_special_token_rule_for_rollout_and_evaluation(tiny_vlm_path, server):
    """The rollout and vgpo-evaluate suppress the same tokens: the special ones, end-of-sequence excepted."""
    from transformers import AddedToken, AutoTokenizer

    from verl_vgpo.apps.evaluate import HFGenerator

    evaluator = HFGenerator(tiny_vlm_path, max_new_tokens=4, batch_size=1, seed=0, device="cpu")
    assert evaluator.suppressed_token_ids == server.suppress_ids
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path)
    tokenizer.add_tokens([AddedToken("<think>", special=False), AddedToken("<|marker|>", special=True)])
    think, marker = tokenizer.convert_tokens_to_ids(["<think>", "<|marker|>"])
    suppressed = generation.suppressed_token_ids(tokenizer, [tokenizer.eos_token_id])
    assert marker in suppressed and think not in suppressed  # decode(skip_special_tokens=True) hides the same set
    assert tokenizer.eos_token_id not in suppressed
    image_pad = server.hf_config.image_token_id
    assert image_pad in suppressed and image_pad in server.suppress_ids


def test_full_determinism_seeds_once_so_rollouts_differ_and_repeat(tiny_vlm_path):
    """Seeding every request made the n rollouts of a prompt identical; one seed per server keeps them
    distinct and a fresh server with the same request order repeats them."""

    def two_samples():
        server = hf_cpu.HFCpuRolloutServer(_rollout_config(full_determinism=True, seed=7),
                                           OmegaConf.create({"path": tiny_vlm_path}))
        prompt_ids, images = _image_prompt(server)
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}
        # sent concurrently, as verl's agent loop does: full determinism still serves them one at a time
        outputs = _queued_while_busy(server, [dict(prompt_ids=prompt_ids, sampling_params=params, image_data=images)] * 2)
        assert server.max_batch_size == 1 and server.batch_sizes == [1, 1]
        return [output.token_ids for output in outputs]

    first, second = two_samples()
    assert first != second
    assert two_samples() == [first, second]


# ---- batched serving ---------------------------------------------------------------------------------


def test_batched_requests_match_single_requests(family_server):
    """Image prompts of different lengths and a text-only prompt in one generate call give each row the
    greedy tokens and log-probs it gets alone (left padding, attention mask and M-RoPE positions)."""
    server = family_server
    first_ids, first_images = _image_prompt(server, "what shape is it?", image_id=0)
    second_ids, second_images = _image_prompt(server, "does the image contain a blue circle or not?", image_id=1)
    requests = [
        dict(prompt_ids=first_ids, sampling_params=GREEDY, image_data=first_images),
        dict(prompt_ids=_text_prompt(server), sampling_params=GREEDY),
        dict(prompt_ids=second_ids, sampling_params=GREEDY, image_data=second_images),
    ]
    assert len({len(request["prompt_ids"]) for request in requests}) == 3  # the batch needs padding
    alone = [asyncio.run(server.generate(request_id=f"s{index}", **request)) for index, request in enumerate(requests)]
    calls = len(server.batch_sizes)
    batched = _queued_while_busy(server, requests)
    assert server.batch_sizes[calls:] == [3]
    for single, row in zip(alone, batched):
        assert row.token_ids == single.token_ids
        assert row.stop_reason == single.stop_reason
        torch.testing.assert_close(torch.tensor(row.log_probs), torch.tensor(single.log_probs), atol=1e-4, rtol=0)


def test_each_row_is_cut_at_its_own_token_budget(server):
    prompt_ids, images = _image_prompt(server)
    short, long = (dict(prompt_ids=prompt_ids, image_data=images, sampling_params={**GREEDY, "max_tokens": budget})
                   for budget in (3, 12))
    alone = asyncio.run(server.generate(request_id="short", **short))
    calls = len(server.batch_sizes)
    cut, full = _queued_while_busy(server, [short, long])
    assert server.batch_sizes[calls:] == [2]
    assert cut.token_ids == alone.token_ids == full.token_ids[: len(cut.token_ids)]
    assert cut.stop_reason == alone.stop_reason
    assert len(cut.log_probs) == len(cut.token_ids) <= 3
    eos = set(server.eos_token_ids)
    # cut at the budget of 3 tokens, or earlier where the full answer ends (the same greedy tokens)
    expected = next((i + 1 for i, token in enumerate(full.token_ids[:3]) if token in eos), 3)
    assert len(cut.token_ids) == expected
    assert (cut.stop_reason == "length") == (full.token_ids[expected - 1] not in eos)


def test_requests_with_other_sampling_settings_go_to_other_batches(tiny_vlm_path):
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}), max_batch_size=2)
    prompt_ids = _text_prompt(server)
    no_log_probs = {**GREEDY, "logprobs": False}
    sampled = {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "logprobs": True}
    settings = [no_log_probs, sampled, no_log_probs, GREEDY, no_log_probs, sampled]
    outputs = _queued_while_busy(server, [dict(prompt_ids=prompt_ids, sampling_params=params) for params in settings])
    # in arrival order of each group's first request; at most max_batch_size=2 rows per call
    assert server.batch_sizes == [2, 2, 1, 1]
    assert [output.log_probs is None for output in outputs] == [True, False, True, False, True, False]
    assert outputs[0].token_ids == outputs[2].token_ids == outputs[4].token_ids  # greedy
    assert outputs[3].token_ids == outputs[0].token_ids


def test_default_batch_cap_is_max_num_seqs(tiny_vlm_path):
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(max_num_seqs=7), OmegaConf.create({"path": tiny_vlm_path}))
    assert server.max_batch_size == 7
    with pytest.raises(hf_cpu.HFCpuRolloutError, match="max_batch_size"):
        hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}), max_batch_size=0)


def test_a_bad_request_fails_alone_and_the_others_are_batched(server):
    prompt_ids, images = _image_prompt(server)
    good = dict(prompt_ids=prompt_ids, sampling_params=GREEDY, image_data=images)
    requests = [
        good,
        dict(prompt_ids=prompt_ids, sampling_params=GREEDY),  # image pads without the image
        dict(prompt_ids=list(range(1, 200)), sampling_params=GREEDY),  # longer than max_model_len (140)
        good,
    ]
    calls = len(server.batch_sizes)
    first, no_image, too_long, second = _queued_while_busy(server, requests)
    assert isinstance(no_image, generation.GenerationError) and "image pad tokens but no image data" in str(no_image)
    assert isinstance(too_long, hf_cpu.HFCpuRolloutError) and "no room" in str(too_long)
    assert server.batch_sizes[calls:] == [2]
    assert first.token_ids == second.token_ids and first.token_ids


def test_requests_after_a_weight_update_wait_for_it_and_see_the_new_weights(tiny_vlm_path):
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}))
    prompt_ids, images = _image_prompt(server)
    request = dict(prompt_ids=prompt_ids, sampling_params=GREEDY, image_data=images)
    old_weights = {name: tensor.clone() for name, tensor in server.model.state_dict().items()}
    torch.manual_seed(2)
    new_weights = {name: tensor + 0.5 * torch.randn_like(tensor) if "embed_tokens" in name else tensor.clone()
                   for name, tensor in old_weights.items()}

    def update():
        return server.update_weights(list(new_weights.items()), global_steps=4)

    before, result, after_first, after_second = _queued_while_busy(server, [request, request, request],
                                                                   between=(0, update))
    assert result["weight_updates"] == 1
    # the request sent before the update ran alone on the old weights, those after it together on the new
    assert server.batch_sizes == [1, 2]
    assert before.extra_fields["global_steps"] is None
    assert after_first.extra_fields["global_steps"] == after_second.extra_fields["global_steps"] == 4
    assert after_first.token_ids == after_second.token_ids != before.token_ids
    reference = asyncio.run(server.generate(request_id="new", **request))
    assert reference.token_ids == after_first.token_ids
    asyncio.run(server.update_weights(list(old_weights.items()), global_steps=5))
    assert asyncio.run(server.generate(request_id="old", **request)).token_ids == before.token_ids


def test_a_failing_batch_fails_its_requests_and_the_server_serves_on(tiny_vlm_path):
    """A generate call that raises (NaN weights make sampling fail) answers every request of its batch
    with that error; the next batch runs normally."""
    server = hf_cpu.HFCpuRolloutServer(_rollout_config(), OmegaConf.create({"path": tiny_vlm_path}))
    request = dict(prompt_ids=_text_prompt(server), sampling_params={"temperature": 1.0, "top_p": 1.0, "top_k": -1})
    norm = server.model.get_output_embeddings().weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.fill_(float("nan"))
    failed = _queued_while_busy(server, [request, request])
    assert server.batch_sizes == [2]
    assert all(isinstance(error, RuntimeError) for error in failed) and failed[0] is failed[1]
    with torch.no_grad():
        norm.copy_(saved)
    assert asyncio.run(server.generate(request_id="after", **request)).token_ids
