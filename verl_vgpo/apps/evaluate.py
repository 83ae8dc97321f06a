"""Score a Hugging Face VLM checkpoint on benchmark parquet files (the verl RL format of
``examples/data_preprocess``) with the two protocols multimodal-RL papers report:

* ``greedy``: one response per prompt at temperature 0 (how the VGPO paper reports accuracy);
* ``avg@K``:  K sampled responses per prompt at temperature 1.0 (``--temperature``), accuracy averaged
  over the K samples and then over prompts (how PAPO and VPPO report, with K = 8).

Each response is scored by its row's ``data_source``: the paper protocol for the VGPO paper's ten
benchmarks (``mathvista``, ``mathverse``, ``wemath``, ``mmk12``, ``geomath``, ``geo3k``, ``logicvista``,
``counting``, ``mmmu_pro``, ``mathverse_v``; :mod:`verl_vgpo.rewards.paper_scoring`, ``--scoring papo`` =
PAPO-Eval's rule, the default, or ``lookback`` = Look-Back's), this project's rewards for its own data
(``easy_vqa`` -> :mod:`verl_vgpo.rewards.exact_match`; ``geometry3k``, ``virl39k`` ->
:mod:`verl_vgpo.rewards.math_boxed`), verl's default routing (``verl.utils.reward_score.default_compute_score``:
gsm8k, MATH, ...) for every other source.
``--reward PATH_OR_PKG:FUNCTION`` (e.g. ``pkg://verl_vgpo.rewards.math_boxed:compute_score`` or
``my_reward.py:score``) scores every row with one function, loaded by verl's own
``reward.custom_reward_function`` loader, with ``--reward_kwargs`` as its ``reward_kwargs``.
Accuracy is the reward's ``acc`` when it returns one, else its score (verl's ``val-core`` rule).

No silent zeros: for every reward whose answer format is known, the share of responses in which no
answer can be parsed (no ``\\boxed{}``, no ``Answer:``, no ``#### n``) is reported per source and protocol,
flagged in the table when most responses fail, and ``--strict`` turns that into a non-zero exit. The
accuracy table has one row per ``data_source`` plus the mean over all prompts and the mean over sources;
it is printed and written to ``<output_dir>/results.json`` (with the reward used for each source) and
every response goes to ``<output_dir>/generations.jsonl``.

``--responses FILE`` scores responses produced elsewhere (the format of ``generations.jsonl``; rows
matched by ``index`` within ``data_source``) and loads no model. ``--suite paper --data_dir DIR`` runs the
paper's benchmarks (``DIR/<key>.parquet``, converted first where missing, see
``examples/data_preprocess/paper_eval.py``) greedy and prints the table beside the paper's numbers
(``--paper_row``), with the difference per benchmark and on average.

Every error is one line naming the file and row (exit status 2); the outputs are written together at the
end, so a failed run leaves an earlier run's files as they were.

Generation uses vLLM when it is installed and a GPU is present (``--backend auto``), Hugging Face
``generate`` otherwise. The HF path uses the same helpers as the ``hf_cpu`` rollout
(:mod:`verl_vgpo.cpu.generation`): multimodal token types for the right M-RoPE positions, left-padded
prompts, the same special-token suppression and sampling settings.

    python -m verl_vgpo.apps.evaluate --model_path ckpt/hf --data ~/data/mmk12/test.parquet \\
        --protocols greedy avg@8 --output_dir eval/mmk12
    vgpo-evaluate --suite paper --data_dir ~/data/paper_eval --model_path ckpt/hf --output_dir eval/paper
    vgpo-evaluate --suite paper --data_dir ~/data/paper_eval --responses vllm_generations.jsonl --output_dir eval/given
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Sequence

IMAGE_PLACEHOLDER = "<image>"
_PROTOCOL_PATTERN = re.compile(r"^(greedy|avg@([1-9][0-9]*))$")


@dataclass(frozen=True)
class Protocol:
    """How many responses per prompt and at which temperature."""

    name: str
    num_samples: int
    temperature: float


def parse_protocol(name: str, sampling_temperature: float) -> Protocol:
    match = _PROTOCOL_PATTERN.match(name)
    if not match:
        raise ValueError(f"unknown protocol {name!r}: use 'greedy' or 'avg@K' with K >= 1 (e.g. avg@8)")
    if match.group(1) == "greedy":
        return Protocol(name="greedy", num_samples=1, temperature=0.0)
    if sampling_temperature <= 0:
        raise ValueError(f"{name} samples: --temperature must be > 0, got {sampling_temperature}")
    return Protocol(name=name, num_samples=int(match.group(2)), temperature=sampling_temperature)


@dataclass
class Example:
    data_source: str
    index: int
    messages: list[dict[str, Any]]
    images: list[Any]
    ground_truth: Any
    extra_info: Optional[dict] = None
    source_file: str = ""  # the parquet the row came from (for messages)


class EvaluateError(ValueError):
    """An input vgpo-evaluate cannot use; the message names the file and row (printed as one line)."""


def load_examples(
    parquet_paths: Sequence[str],
    max_rows_per_file: int | None = None,
    image_patch_size: int = 14,
    load_images: bool = True,
) -> list[Example]:
    """Rows of verl RL parquet files as chat messages with their images (PIL) in placeholder order.

    Images may be decoded PIL images (files written by ``datasets``) or ``{"bytes": ...}`` dicts (files
    written by pandas); both go through verl's own ``process_image``, as in training (``image_patch_size``
    14 for Qwen2.5-VL, 16 for Qwen3-VL / Qwen3.5, like ``data.image_patch_size``). ``load_images=False``
    (scoring given responses) checks the placeholders against the images but decodes none.
    """
    import datasets
    from verl.utils.dataset.vision_utils import process_image

    examples = []
    seen: set[tuple[int, int]] = set()
    for path in parquet_paths:
        expanded = os.path.expanduser(path)
        if not os.path.isfile(expanded):
            raise EvaluateError(f"{path}: no such file")
        identity = (os.stat(expanded).st_dev, os.stat(expanded).st_ino)  # one file under two names too
        if identity in seen:
            raise EvaluateError(f"{path}: given twice (each row would be scored twice)")
        seen.add(identity)
        try:
            table = datasets.load_dataset("parquet", data_files=expanded)["train"]
        except Exception as error:  # noqa: BLE001 -- pyarrow / datasets raise many types for a bad file
            raise EvaluateError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from None
        missing = {"data_source", "prompt", "reward_model"} - set(table.column_names)
        if missing:
            raise EvaluateError(f"{path}: missing column(s) {sorted(missing)}; expected the verl RL parquet layout")
        for row_number, row in enumerate(table):
            if max_rows_per_file is not None and row_number >= max_rows_per_file:
                break
            where = f"{path} row {row_number}"
            images = list(row.get("images") or [])
            if load_images:
                images = [_decoded(process_image, image, image_patch_size, f"{where} image {i}")
                          for i, image in enumerate(images)]
            try:
                ground_truth = row["reward_model"]["ground_truth"]
            except (KeyError, TypeError):
                raise EvaluateError(f"{where}: reward_model has no ground_truth") from None
            examples.append(
                Example(
                    data_source=row["data_source"],
                    index=row_number,
                    messages=_messages_with_images(row["prompt"], len(images), where),
                    images=images if load_images else [],
                    ground_truth=ground_truth,
                    extra_info=dict(row.get("extra_info") or {}),
                    source_file=path,
                )
            )
    if not examples:
        raise EvaluateError(f"no rows in {list(parquet_paths)}")
    return examples


def _decoded(process_image, image, patch_size: int, where: str):
    try:
        return process_image(image, patch_size)
    except OSError as error:  # PIL.UnidentifiedImageError, truncated or missing image files
        raise EvaluateError(f"{where} cannot be decoded ({type(error).__name__}: {error})") from None


def processor_patch_size(processor, where: str) -> int:
    """The vision patch size of a checkpoint's processor (14 for Qwen2.5-VL, 16 for Qwen3-VL / Qwen3.5).

    Images are resized to multiples of it (``process_image``) as ``data.image_patch_size`` does in
    training, so it is read from the checkpoint rather than assumed.
    """
    image_processor = getattr(processor, "image_processor", None)
    patch = getattr(image_processor, "patch_size", None)
    if patch is None:
        raise ValueError(f"{where}: the processor has no image_processor.patch_size; pass --image_patch_size")
    return int(patch)


def checkpoint_image_patch_size(model_path: str) -> int:
    """``processor_patch_size`` of the processor saved with ``model_path`` (only the processor is loaded)."""
    from transformers import AutoProcessor

    return processor_patch_size(AutoProcessor.from_pretrained(model_path), model_path)


def _messages_with_images(prompt: list[dict], num_images: int, where: str) -> list[dict[str, Any]]:
    """Replace ``<image>`` placeholders by image parts, as verl's RLHFDataset does for training."""
    messages, seen = [], 0
    for message in prompt:
        content = message["content"]
        parts = []
        for segment in re.split(f"({IMAGE_PLACEHOLDER})", content):
            if segment == IMAGE_PLACEHOLDER:
                parts.append({"type": "image"})
                seen += 1
            elif segment:
                parts.append({"type": "text", "text": segment})
        messages.append({"role": message["role"], "content": parts})
    if seen != num_images:
        raise EvaluateError(f"{where}: {seen} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")
    return messages


# A generator takes the examples and a protocol and returns, per example, protocol.num_samples texts.
Generator = Callable[[Sequence[Example], Protocol], list[list[str]]]


class HFGenerator:
    """Batched ``generate`` with a Hugging Face VLM (CPU or one GPU), through the same helpers as the
    hf_cpu rollout (:mod:`verl_vgpo.cpu.generation`): prompts, special-token rule, sampling settings.
    Only the first batch of a protocol is seeded (``seed``), so a run is reproducible as a whole."""

    def __init__(self, model_path: str, max_new_tokens: int, batch_size: int, seed: int, device: str | None = None):
        from verl_vgpo.cpu import generation

        self.loaded = generation.load_model(model_path, device=device)
        if self.loaded.processor is None:
            raise EvaluateError(f"{model_path} has no image processor: vgpo-evaluate scores vision-language models")
        self.processor = self.loaded.processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed

    @property
    def suppressed_token_ids(self) -> list[int]:
        return self.loaded.suppress_ids

    def __call__(self, examples: Sequence[Example], protocol: Protocol) -> list[list[str]]:
        from verl_vgpo.cpu import generation

        tokens = generation.generate_conversations(
            self.loaded,
            [example.messages for example in examples],
            [example.images for example in examples],
            num_return_sequences=protocol.num_samples,
            temperature=protocol.temperature,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            seed_for_batch=lambda start: self.seed if start == 0 else None,
        )
        decode = self.processor.tokenizer.batch_decode
        return [decode(samples, skip_special_tokens=True) for samples in tokens]


def check_prompt_lengths(processor, examples: Sequence[Example], max_model_len: int, max_new_tokens: int) -> None:
    """Refuse, before any generation, prompts that cannot fit ``max_model_len`` with room for one token.

    vLLM raises inside ``generate`` for such a prompt and the whole evaluation is lost; image tokens
    depend on the processor's pixel limits, so the length is measured with the processor itself.
    """
    too_long = []
    for example in examples:
        text = processor.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=example.images or None, return_tensors="pt")
        length = int(inputs["input_ids"].shape[1])
        if length >= max_model_len:
            too_long.append(f"{example.data_source} row {example.index}: {length} tokens")
    if too_long:
        raise ValueError(
            f"{len(too_long)} prompt(s) do not fit --max_model_len={max_model_len} (prompt tokens incl. images; "
            f"generation may use up to {max_new_tokens} more): {'; '.join(too_long[:10])}"
            f"{' ...' if len(too_long) > 10 else ''}. Raise --max_model_len or filter those rows."
        )


class VLLMGenerator:
    """vLLM offline generation (GPU)."""

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int,
        seed: int,
        tensor_parallel_size: int,
        max_model_len: int,
        max_images_per_prompt: int = 8,
    ):
        from transformers import AutoProcessor
        from vllm import LLM

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.max_model_len = max_model_len
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            seed=seed,
            limit_mm_per_prompt={"image": max(1, max_images_per_prompt)},
        )
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def __call__(self, examples: Sequence[Example], protocol: Protocol) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=protocol.num_samples,
            temperature=protocol.temperature,
            top_p=1.0,
            max_tokens=self.max_new_tokens,
            seed=self.seed,
            skip_special_tokens=True,
        )
        requests = []
        for example in examples:
            text = self.processor.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
            request: dict[str, Any] = {"prompt": text}
            if example.images:
                request["multi_modal_data"] = {"image": example.images}
            requests.append(request)
        outputs = self.llm.generate(requests, params)
        return [[completion.text for completion in output.outputs] for output in outputs]


def vllm_usable() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------
# Rewards: which function scores a row (as in training), and whether its answer could be parsed
# --------------------------------------------------------------------------------------------------

VERL_DEFAULT_REWARD = "verl.utils.reward_score.default_compute_score"
# this project's data sources (written by verl_vgpo.data and examples/data_preprocess) -> their reward
PROJECT_REWARDS = {
    "easy_vqa": "pkg://verl_vgpo.rewards.exact_match:compute_score",
    "geometry3k": "pkg://verl_vgpo.rewards.math_boxed:compute_score",
    "virl39k": "pkg://verl_vgpo.rewards.math_boxed:compute_score",
}
# the paper's ten benchmarks (verl_vgpo.data.paper_eval; mmk12 among them) are scored by the paper
# protocol, with --scoring choosing PAPO-Eval's rule ("papo") or Look-Back's ("lookback")
PAPER_REWARD = "pkg://verl_vgpo.rewards.paper_scoring:compute_score"
# a parse failure is reported as loud when more than this share of a source's responses fail
MOSTLY_UNPARSED = 0.5


class RewardError(ValueError):
    """No reward can score a data source, or a --reward spec cannot be loaded."""


def _has_boxed(response: str) -> bool:
    from verl_vgpo.rewards.math_boxed import last_boxed_content

    return last_boxed_content(response) is not None


def _has_paper_box(response: str) -> bool:
    from verl_vgpo.rewards.paper_scoring import has_answer

    return has_answer(response)


def _has_answer_marker(response: str) -> bool:
    from verl_vgpo.data.easy_vqa import ANSWER_MARKER

    return ANSWER_MARKER.lower() in response.lower()


def _has_gsm8k_answer(response: str) -> bool:
    from verl.utils.reward_score.gsm8k import extract_solution

    return extract_solution(response, method="strict") is not None


def _has_boxed_any(response: str) -> bool:
    from verl.utils.reward_score.math_dapo import last_boxed_only_string

    return last_boxed_only_string(response) is not None


def _has_minerva_answer_or_box(response: str) -> bool:
    # math_dapo: "Answer: ..." (Minerva) in the last 300 characters, else a \boxed{} there
    tail = response[-300:]
    return bool(re.search(r"(?i)Answer\s*:\s*([^\n]+)", tail)) or _has_boxed_any(tail)


# (what a response must contain, the check); keyed by the project's reward functions' qualified names
_PROJECT_PARSERS = {
    "verl_vgpo.rewards.math_boxed.compute_score": ("a \\boxed{} answer", _has_boxed),
    "verl_vgpo.rewards.exact_match.compute_score": ("an 'Answer:' line", _has_answer_marker),
    "verl_vgpo.rewards.exact_match.compute_graded_score": ("an 'Answer:' line", _has_answer_marker),
    "verl_vgpo.rewards.paper_scoring.compute_score": ("a \\boxed{} answer", _has_paper_box),
}


def _verl_default_parser(data_source: str):
    """The answer format verl's default routing expects for a source (None: not a fixed format)."""
    if data_source == "openai/gsm8k":
        return ("a '#### <number>' line", _has_gsm8k_answer)
    if data_source in ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500",
                       "hiyouga/geometry3k") or data_source.startswith("numina_"):
        return ("a \\boxed{} answer", _has_boxed_any)
    if data_source in ("math_dapo", "math", "math_dapo_reasoning") or data_source.startswith("aime"):
        return ("an 'Answer:' line or a \\boxed{} answer", _has_minerva_answer_or_box)
    return None


@dataclass
class Reward:
    """A verl-signature reward function ``fn(data_source=, solution_str=, ground_truth=, extra_info=)``."""

    name: str
    fn: Callable[..., Any]
    expects: Optional[str] = None  # the answer format, when known
    parses: Optional[Callable[[str], bool]] = None  # True when an answer can be read from a response

    def score(self, example: Example, response: str) -> tuple[float, str]:
        """(accuracy, metric name): the reward's ``acc`` when it returns one, else its score."""
        result = self.fn(
            data_source=example.data_source,
            solution_str=response,
            ground_truth=example.ground_truth,
            extra_info=dict(example.extra_info or {}),
        )
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        if isinstance(result, dict):
            if "acc" in result:
                return float(result["acc"]), "acc"
            if "score" not in result:
                raise RewardError(f"reward {self.name} returned a dict without 'acc' or 'score': {sorted(result)}")
            return float(result["score"]), "score"
        return float(result), "score"


async def _awaited(awaitable):
    return await awaitable


def split_reward_spec(spec: str) -> tuple[str, str]:
    """``PATH_OR_PKG:FUNCTION`` -> (module path as verl's loader takes it, function name)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name or name.startswith("//") or "/" in name:
        raise RewardError(
            f"--reward must be PATH_OR_PKG:FUNCTION (e.g. pkg://verl_vgpo.rewards.math_boxed:compute_score or "
            f"my_reward.py:compute_score), got {spec!r}"
        )
    return path, name


def load_reward(spec: str, reward_kwargs: Optional[dict] = None) -> Reward:
    """A custom reward loaded exactly as training loads ``reward.custom_reward_function`` (verl's
    ``get_custom_reward_fn``: ``path``, ``name``, ``reward_kwargs``)."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    path, name = split_reward_spec(spec)
    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": path, "name": name, "reward_kwargs": dict(reward_kwargs or {})}}}
    )
    try:
        fn = get_custom_reward_fn(config)
    except (FileNotFoundError, ImportError, AttributeError, RuntimeError) as error:
        raise RewardError(f"--reward {spec!r} cannot be loaded: {error}") from error
    raw = fn.args[0] if isinstance(fn, partial) and fn.args else fn
    qualified = f"{getattr(raw, '__module__', '')}.{getattr(raw, '__qualname__', name)}"
    expects, parses = _PROJECT_PARSERS.get(qualified, (None, None))
    return Reward(name=spec if not reward_kwargs else f"{spec} {json.dumps(reward_kwargs, sort_keys=True)}",
                  fn=fn, expects=expects, parses=parses)


def reward_for_source(example: Example, custom: Optional[Reward] = None, scoring: str = "papo") -> Reward:
    """The reward for this row: ``custom`` when given, else the paper protocol (``scoring``) for the paper's
    benchmarks, else the project's reward for its own data sources, else verl's default routing (checked
    now, so an unknown source fails before any generation)."""
    from verl_vgpo.data.paper_eval import PAPER_KEYS

    if custom is not None:
        return custom
    if example.data_source in PAPER_KEYS:
        return load_reward(PAPER_REWARD, {"scoring": scoring})
    if example.data_source in PROJECT_REWARDS:
        return load_reward(PROJECT_REWARDS[example.data_source])
    from verl.utils.reward_score import default_compute_score

    try:
        default_compute_score(example.data_source, "", example.ground_truth, dict(example.extra_info or {}))
    except NotImplementedError as error:
        where = f"{example.source_file} row {example.index}: " if example.source_file else ""
        raise RewardError(
            f"{where}no reward for data_source {example.data_source!r}: it is not one of the paper's benchmarks "
            f"({', '.join(PAPER_KEYS)}) or this project's ({', '.join(sorted(PROJECT_REWARDS))}) and verl's "
            f"default routing does not know it ({error}); pass --reward PATH_OR_PKG:FUNCTION, as "
            "reward.custom_reward_function in training"
        ) from None
    except Exception:  # noqa: BLE001 -- the probe only asks whether a route exists; scoring raises for real
        pass
    expects, parses = _verl_default_parser(example.data_source) or (None, None)
    return Reward(name=VERL_DEFAULT_REWARD, fn=default_compute_score, expects=expects, parses=parses)


def rewards_by_source(
    examples: Sequence[Example], custom: Optional[Reward] = None, scoring: str = "papo"
) -> dict[str, Reward]:
    """One reward per data source (resolved from the source's first row); ``scoring`` is the paper
    protocol's rule for the paper's benchmarks."""
    rewards: dict[str, Reward] = {}
    for example in examples:
        if example.data_source not in rewards:
            rewards[example.data_source] = reward_for_source(example, custom, scoring)
    return rewards


# --------------------------------------------------------------------------------------------------
# Scoring and the table
# --------------------------------------------------------------------------------------------------


@dataclass
class ProtocolScores:
    """Per-prompt accuracy (mean over its samples) and per-prompt parse results of one protocol."""

    per_prompt: list[float]
    unparsed: list[Optional[int]] = field(default_factory=list)  # responses without an answer; None: unknown
    metric_by_source: dict[str, str] = field(default_factory=dict)


def score_protocol(
    examples: Sequence[Example],
    responses: Sequence[Sequence[str]],
    protocol: Protocol,
    rewards: Optional[dict[str, Reward]] = None,
):
    """Score every response with its source's reward; returns (ProtocolScores, per-response records)."""
    if len(responses) != len(examples):
        raise ValueError(f"{len(responses)} response lists for {len(examples)} prompts")
    rewards = rewards if rewards is not None else rewards_by_source(examples)
    scores_out = ProtocolScores(per_prompt=[])
    records = []
    for example, samples in zip(examples, responses):
        if len(samples) != protocol.num_samples:
            raise ValueError(f"{protocol.name}: expected {protocol.num_samples} responses, got {len(samples)}")
        reward = rewards[example.data_source]
        scored = [reward.score(example, text) for text in samples]
        accuracies = [accuracy for accuracy, _ in scored]
        scores_out.metric_by_source[example.data_source] = scored[0][1]
        parsed = [bool(reward.parses(text)) for text in samples] if reward.parses is not None else None
        scores_out.per_prompt.append(sum(accuracies) / len(accuracies))
        scores_out.unparsed.append(None if parsed is None else parsed.count(False))
        records.append(
            {
                "protocol": protocol.name,
                "data_source": example.data_source,
                "index": example.index,
                "source_file": example.source_file,
                "ground_truth": _json_ready(example.ground_truth),
                "responses": list(samples),
                "acc": accuracies,
                "parsed": parsed,
            }
        )
    return scores_out, records


def _parse_failure_rate(scores: ProtocolScores, positions: Sequence[int], num_samples: int) -> Optional[float]:
    counts = [scores.unparsed[p] for p in positions]
    if any(count is None for count in counts):
        return None
    return sum(counts) / (len(positions) * num_samples)


def accuracy_table(
    examples: Sequence[Example], per_protocol: dict[str, Any], protocols: Optional[Sequence[Protocol]] = None
) -> list[dict[str, Any]]:
    """Rows: one per data_source (sorted), then ``all`` (mean over prompts) and ``mean_of_sources``.

    ``per_protocol`` maps a protocol name to its :class:`ProtocolScores` (or a plain per-prompt list).
    Source rows and ``all`` carry ``parse_failure[<protocol>]``: the share of responses with no
    parsable answer (None when the reward's answer format is unknown).
    """
    samples = {p.name: p.num_samples for p in protocols or []}
    by_source: dict[str, list[int]] = defaultdict(list)
    for position, example in enumerate(examples):
        by_source[example.data_source].append(position)
    scores = {
        name: value if isinstance(value, ProtocolScores) else ProtocolScores(per_prompt=list(value))
        for name, value in per_protocol.items()
    }
    rows = []
    for source in sorted(by_source):
        positions = by_source[source]
        row: dict[str, Any] = {"data_source": source, "prompts": len(positions), "parse_failure": {}}
        for name, protocol_scores in scores.items():
            row[name] = 100.0 * sum(protocol_scores.per_prompt[p] for p in positions) / len(positions)
            if protocol_scores.unparsed:
                row["parse_failure"][name] = _parse_failure_rate(protocol_scores, positions, samples.get(name, 1))
        rows.append(row)
    overall: dict[str, Any] = {"data_source": "all", "prompts": len(examples), "parse_failure": {}}
    macro: dict[str, Any] = {"data_source": "mean_of_sources", "prompts": len(examples)}
    for name, protocol_scores in scores.items():
        overall[name] = 100.0 * sum(protocol_scores.per_prompt) / len(protocol_scores.per_prompt)
        macro[name] = sum(row[name] for row in rows) / len(rows)
        if protocol_scores.unparsed:
            overall["parse_failure"][name] = _parse_failure_rate(
                protocol_scores, range(len(examples)), samples.get(name, 1)
            )
    return rows + [overall, macro]


def mostly_unparsed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"data_source", "protocol", "rate"}`` for every source and protocol where most responses have no
    parsable answer (rate > MOSTLY_UNPARSED)."""
    loud = []
    for row in rows:
        if row["data_source"] in ("all", "mean_of_sources"):
            continue
        for name, rate in (row.get("parse_failure") or {}).items():
            if rate is not None and rate > MOSTLY_UNPARSED:
                loud.append({"data_source": row["data_source"], "protocol": name, "rate": rate})
    return loud


def describe_unparsed(entry: dict[str, Any], rewards: dict[str, Reward]) -> str:
    reward = rewards[entry["data_source"]]
    return (
        f"{entry['data_source']} ({entry['protocol']}): {100 * entry['rate']:.0f}% of responses lack "
        f"{reward.expects}, which its reward {reward.name} needs; the accuracy there is not meaningful"
    )


def format_table(rows: list[dict[str, Any]], protocol_names: Sequence[str]) -> str:
    """Markdown table: accuracy per protocol, then the parse-failure share per protocol ("n/a": unknown
    format); a share above half is marked ``!!``."""
    header = ["data_source", "prompts", *protocol_names, *(f"{name} unparsed" for name in protocol_names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["data_source"], str(row["prompts"])] + [f"{row[name]:.2f}" for name in protocol_names]
        failures = row.get("parse_failure")
        for name in protocol_names:
            rate = failures.get(name) if failures is not None else None
            if failures is None:
                cells.append("")
            elif rate is None:
                cells.append("n/a")
            else:
                cells.append(f"{100 * rate:.0f}%" + (" !!" if rate > MOSTLY_UNPARSED else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def evaluate(
    examples: Sequence[Example],
    generator: Generator,
    protocols: Sequence[Protocol],
    rewards: Optional[dict[str, Reward]] = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """Run every protocol; returns (table rows, per-response records, seconds per protocol).

    ``rewards`` (data source -> Reward) defaults to :func:`rewards_by_source` (the training routing).
    """
    rewards = rewards if rewards is not None else rewards_by_source(examples)
    per_protocol, records, seconds = {}, [], {}
    for protocol in protocols:
        started = time.perf_counter()
        responses = generator(examples, protocol)
        seconds[protocol.name] = time.perf_counter() - started
        protocol_scores, protocol_records = score_protocol(examples, responses, protocol, rewards)
        per_protocol[protocol.name] = protocol_scores
        records.extend(protocol_records)
    return accuracy_table(examples, per_protocol, protocols), records, seconds


# --------------------------------------------------------------------------------------------------
# Scoring responses produced elsewhere (--responses)
# --------------------------------------------------------------------------------------------------


class GivenResponses:
    """A Generator that returns responses read from a file (:func:`read_responses`)."""

    def __init__(self, by_protocol: dict[str, list[list[str]]]):
        self.by_protocol = by_protocol

    def __call__(self, examples: Sequence[Example], protocol: Protocol) -> list[list[str]]:
        return self.by_protocol[protocol.name]


def _same_file(path: str) -> str:
    """One spelling per file: a record's ``source_file`` and a loaded example's may differ in ``~`` or ``..``."""
    return os.path.realpath(os.path.expanduser(path)) if path else path


def _path_parts(path: str) -> list[str]:
    # either separator: a record may have been written on another operating system
    return [part for part in re.split(r"[\\/]+", path) if part]


def _shared_ending(first: str, second: str) -> int:
    """How many trailing path components two paths share (``a/geo/test.parquet``, ``b/geo/test.parquet``: 2)."""
    count = 0
    for one, other in zip(reversed(_path_parts(first)), reversed(_path_parts(second))):
        if one != other:
            break
        count += 1
    return count


def _row_of(candidates: list[tuple[str, int]], source_file: Any, where: str) -> int:
    """The example position of a record whose (data_source, index) is held by ``candidates`` [(file, position)]:
    the only one, else the one whose file is the record's ``source_file``: the same path, else the one path
    sharing the longest ending with it (a file written on another machine)."""
    if len(candidates) == 1:
        return candidates[0][1]
    files = ", ".join(file for file, _ in candidates)
    if source_file is None:
        raise EvaluateError(f"{where} exists in {len(candidates)} data files ({files}); add 'source_file' to each "
                            "record (as generations.jsonl has)")
    exact = [position for file, position in candidates if _same_file(file) == _same_file(str(source_file))]
    if len(exact) == 1:
        return exact[0]
    # written on another machine: the file whose path shares the longest ending with the record's (as written)
    shared = [(_shared_ending(os.path.abspath(os.path.expanduser(file)), str(source_file)), position)
              for file, position in candidates]
    best = max(length for length, _ in shared)
    matches = [position for length, position in shared if length == best]
    if best and len(matches) == 1:
        return matches[0]
    raise EvaluateError(f"{where}: source_file {source_file} is not one of its {len(candidates)} data files ({files})")


def read_responses(
    path: str, examples: Sequence[Example], protocol_names: Optional[Sequence[str]] = None, temperature: float = 1.0
) -> tuple[list[Protocol], dict[str, list[list[str]]]]:
    """Responses in the format of ``generations.jsonl`` (one JSON object a line with ``protocol``,
    ``data_source``, ``index`` = row number in its parquet file, ``responses``, and optionally
    ``source_file``), matched to ``examples`` by ``index`` within ``data_source``. Where two data files
    hold rows of one ``data_source``, a record must also name its parquet file in ``source_file`` (as
    generations.jsonl does); a record that does not is refused rather than matched to the wrong row.

    Returns the protocols (those of ``protocol_names``, else every protocol of the file in order of
    appearance) and, per protocol, the responses in ``examples`` order. A record for a row or source not
    in the data, a duplicate, a wrong number of responses or a row without a response is an EvaluateError
    naming the line or the row.
    """
    files_of: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)  # (source, index) -> [(file, position)]
    for p, example in enumerate(examples):
        files_of[(example.data_source, example.index)].append((example.source_file, p))
    rows_of: dict[str, int] = defaultdict(int)
    for example in examples:
        rows_of[example.data_source] += 1
    found: dict[str, dict[int, list[str]]] = {}
    order: list[str] = []
    protocols: dict[str, Protocol] = {}
    try:
        handle = open(os.path.expanduser(path), encoding="utf-8")
    except OSError as error:
        raise EvaluateError(f"--responses {path}: {error.strerror or error}") from None
    with handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluateError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise EvaluateError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = [key for key in ("protocol", "data_source", "index", "responses") if key not in record]
            if missing:
                raise EvaluateError(f"{where}: missing key(s) {missing} (the format of generations.jsonl)")
            name, source, index, texts = record["protocol"], record["data_source"], record["index"], record["responses"]
            if protocol_names is not None and name not in protocol_names:
                continue
            if name not in protocols:
                try:
                    protocols[name] = parse_protocol(str(name), temperature)
                except ValueError as error:
                    raise EvaluateError(f"{where}: {error}") from None
                order.append(name)
                found[name] = {}
            if source not in rows_of:
                raise EvaluateError(
                    f"{where}: data_source {source!r} is not in the data (sources: {', '.join(sorted(rows_of))})"
                )
            if isinstance(index, bool) or not isinstance(index, int) or (source, index) not in files_of:
                raise EvaluateError(
                    f"{where}: {source} row {index!r} does not exist in the data ({rows_of[source]} rows loaded)"
                )
            row = _row_of(files_of[(source, index)], record.get("source_file"), f"{where}: {source} row {index}")
            if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
                raise EvaluateError(f"{where}: 'responses' must be a list of strings")
            if len(texts) != protocols[name].num_samples:
                raise EvaluateError(
                    f"{where}: {name} needs {protocols[name].num_samples} response(s) per row, got {len(texts)}"
                )
            if row in found[name]:
                raise EvaluateError(f"{where}: a second {name} record for {source} row {index}")
            found[name][row] = texts
    names = list(protocol_names) if protocol_names is not None else order
    if not names:
        raise EvaluateError(f"--responses {path}: no records")
    by_protocol = {}
    for name in names:
        if name not in found:
            raise EvaluateError(f"--responses {path}: no {name} records (the file has: {', '.join(order) or 'none'})")
        absent = [examples[p] for p in range(len(examples)) if p not in found[name]]
        if absent:
            shown = "; ".join(f"{e.data_source} row {e.index} ({e.source_file})" for e in absent[:5])
            raise EvaluateError(
                f"--responses {path}: {len(absent)} row(s) have no {name} response: {shown}{' ...' if len(absent) > 5 else ''}"
            )
        by_protocol[name] = [found[name][p] for p in range(len(examples))]
    return [protocols[name] for name in names], by_protocol


# --------------------------------------------------------------------------------------------------
# The paper's suite and its comparison table
# --------------------------------------------------------------------------------------------------


def paper_row(name: str) -> dict[str, Any]:
    from verl_vgpo.data.paper_eval import PAPER_RESULTS, UNRECORDED_ROWS

    key = name.lower()
    if key not in PAPER_RESULTS:
        unverified = f"the paper's {name} row could not be checked against a source and is not recorded; " if key in UNRECORDED_ROWS else ""
        raise EvaluateError(f"--paper_row {name}: {unverified}recorded rows: {', '.join(PAPER_RESULTS)}")
    return PAPER_RESULTS[key]


def paper_comparison(rows: list[dict[str, Any]], row: dict[str, Any], protocol: str = "greedy") -> list[dict[str, Any]]:
    """Per paper benchmark in ``rows``: our accuracy, each paper method's and the difference (ours - paper);
    then ``average`` over those benchmarks (the paper's averages taken over the same benchmarks)."""
    from verl_vgpo.data.paper_eval import PAPER_KEYS

    ours = {r["data_source"]: r[protocol] for r in rows if r["data_source"] in PAPER_KEYS}
    methods = row["methods"]
    out = []
    for key in (key for key in PAPER_KEYS if key in ours):
        entry: dict[str, Any] = {"benchmark": key, "ours": ours[key]}
        for method, numbers in methods.items():
            entry[method] = numbers[key]
            entry[f"diff_{method}"] = ours[key] - numbers[key]
        out.append(entry)
    if out:
        average: dict[str, Any] = {"benchmark": "average", "ours": sum(e["ours"] for e in out) / len(out)}
        for method in methods:
            average[method] = sum(e[method] for e in out) / len(out)
            average[f"diff_{method}"] = average["ours"] - average[method]
        out.append(average)
    return out


def format_comparison(comparison: list[dict[str, Any]], row: dict[str, Any]) -> str:
    methods = list(row["methods"])
    header = ["benchmark", "ours", *(f"paper {m} ({row['model']})" for m in methods), *(f"ours - {m}" for m in methods)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for entry in comparison:
        cells = [entry["benchmark"], f"{entry['ours']:.2f}", *(f"{entry[m]:.1f}" for m in methods)]
        cells += [f"{entry[f'diff_{m}']:+.2f}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def suite_files(args: argparse.Namespace) -> list[str]:
    """``--data_dir``'s ``<key>.parquet`` for the chosen benchmarks, converting those that are missing."""
    from verl_vgpo.data.paper_eval import convert_benchmarks, output_path
    from verl_vgpo.data.vl_math import ConversionError

    paths = {key: output_path(args.data_dir, key) for key in args.benchmarks}
    missing = [key for key, path in paths.items() if not os.path.isfile(path)]
    if missing:
        print(f"--suite paper: converting {', '.join(missing)} into {args.data_dir}", file=sys.stderr)
        try:
            convert_benchmarks(
                missing,
                args.data_dir,
                local_dataset_path=args.local_dataset_path,
                lookback_data_path=args.lookback_data_path,
                log=lambda line: print(line, file=sys.stderr),
            )
        except ConversionError as error:
            raise EvaluateError(
                f"--suite paper: {args.data_dir} lacks {', '.join(f'{k}.parquet' for k in missing)} and converting "
                f"failed: {error} (or run examples/data_preprocess/paper_eval.py; --benchmarks picks a subset)"
            ) from None
    return [paths[key] for key in args.benchmarks]


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


class _OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line (``--help`` still prints the usage)."""

    def error(self, message):
        self.exit(2, f"vgpo-evaluate: {message} (see --help)\n")


def _parse_args(argv=None) -> argparse.Namespace:
    from verl_vgpo.data.paper_eval import PAPER_KEYS
    from verl_vgpo.rewards.paper_scoring import DEFAULT_SCORING, SCORINGS

    parser = _OneLineErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model_path", default=None, help="Hugging Face checkpoint folder (or hub name); not needed with --responses")
    parser.add_argument("--data", nargs="+", default=None, help="benchmark parquet file(s) in the verl RL layout")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--protocols", nargs="+", default=None,
        help="greedy and/or avg@K (default: greedy avg@8; --suite paper: greedy; --responses: those in the file)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of avg@K")
    parser.add_argument("--max_new_tokens", type=int, default=2048)
    parser.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per HF generate call")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM only")
    parser.add_argument("--max_model_len", type=int, default=8192, help="vLLM only")
    parser.add_argument("--max_rows", type=int, default=None, help="evaluate only the first N rows of each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reward",
        default=None,
        help="PATH_OR_PKG:FUNCTION scoring every row, loaded as reward.custom_reward_function in training\n"
        "(default: the paper protocol for the paper's benchmarks, this project's reward for its own data,\n"
        "else verl's default routing)",
    )
    parser.add_argument("--reward_kwargs", default=None, help="JSON object passed as reward_kwargs to --reward")
    parser.add_argument(
        "--scoring", choices=SCORINGS, default=DEFAULT_SCORING,
        help="rule of the paper protocol (the paper's benchmarks): papo = PAPO-Eval's, lookback = Look-Back's",
    )
    parser.add_argument(
        "--responses", default=None,
        help="score these responses (the format of generations.jsonl) instead of generating; no model is loaded",
    )
    parser.add_argument("--suite", choices=("paper",), default=None, help="paper: the paper's benchmarks, greedy")
    parser.add_argument("--data_dir", default=None, help="--suite paper: folder of <key>.parquet files")
    parser.add_argument(
        "--benchmarks", nargs="+", choices=PAPER_KEYS, default=list(PAPER_KEYS), help="--suite paper: a subset"
    )
    parser.add_argument(
        "--paper_row", default="7b",
        help="--suite paper: the paper's row to compare with (recorded: 7b; 3b and 32b could not be verified)",
    )
    parser.add_argument("--local_dataset_path", default=None, help="--suite paper: convert from this copy of PAPO_eval")
    parser.add_argument("--lookback_data_path", default=None, help="--suite paper: Look-Back's eval_data (GeoMath)")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 3 when most responses of a source have no parsable answer"
    )
    parser.add_argument(
        "--image_patch_size",
        type=int,
        default=None,
        help="as data.image_patch_size: 14 for Qwen2.5-VL, 16 for Qwen3-VL / Qwen3.5\n"
        "(default: the patch size of the checkpoint's processor)",
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--max_new_tokens and --batch_size must be >= 1")
    if args.image_patch_size is not None and args.image_patch_size < 1:
        parser.error("--image_patch_size must be >= 1")
    if args.responses is None and args.model_path is None:
        parser.error("--model_path is needed to generate (or pass --responses FILE to score given responses)")
    if args.suite == "paper":
        if args.data is not None:
            parser.error("--suite paper reads --data_dir/<key>.parquet; leave out --data")
        if args.data_dir is None:
            parser.error("--suite paper needs --data_dir (the folder of the converted <key>.parquet files)")
        if args.protocols not in (None, ["greedy"]):
            parser.error("--suite paper is greedy, as the paper reports; leave out --protocols")
        args.protocols = ["greedy"]
    elif args.data is None:
        parser.error("--data is required (or --suite paper --data_dir DIR)")
    if args.reward_kwargs is not None:
        if args.reward is None:
            parser.error("--reward_kwargs needs --reward")
        try:
            args.reward_kwargs = json.loads(args.reward_kwargs)
        except json.JSONDecodeError as error:
            parser.error(f"--reward_kwargs is not JSON: {error}")
        if not isinstance(args.reward_kwargs, dict):
            parser.error("--reward_kwargs must be a JSON object")
    return args


STRICT_EXIT_CODE = 3


def write_outputs(output_dir: str, files: dict[str, str]) -> None:
    """Write every file beside its final name first, then move them all in place, so a failure leaves the
    previous outputs as they were (or says which ones were replaced)."""
    os.makedirs(output_dir, exist_ok=True)
    partial = {name: os.path.join(output_dir, f".{name}.partial") for name in files}
    replaced: list[str] = []
    try:
        for name, text in files.items():
            with open(partial[name], "w", encoding="utf-8") as handle:
                handle.write(text)
        for name in files:
            os.replace(partial[name], os.path.join(output_dir, name))
            replaced.append(name)
    except OSError as error:
        done = f"{', '.join(replaced)} replaced, the others not" if replaced else "nothing was written"
        raise EvaluateError(f"{output_dir}: writing the results failed ({error}); {done}") from None
    finally:
        for path in partial.values():
            if os.path.exists(path):
                os.remove(path)


def run(argv=None) -> dict[str, Any]:
    """The CLI without the exit code: evaluates, writes the outputs, returns the results.json content."""
    from verl_vgpo.rewards.paper_scoring import lookback_is_complete

    args = _parse_args(argv)
    comparison_row = paper_row(args.paper_row) if args.suite == "paper" else None
    data = suite_files(args) if args.suite == "paper" else list(args.data)
    custom = load_reward(args.reward, args.reward_kwargs) if args.reward else None
    warnings = []
    if args.scoring == "lookback" and not lookback_is_complete():
        warnings.append("--scoring lookback without math_verify installed: Look-Back's second stage is skipped")

    if args.responses is not None:
        examples = load_examples(data, args.max_rows, load_images=False)
        rewards = rewards_by_source(examples, custom, args.scoring)
        protocols, given = read_responses(args.responses, examples, args.protocols, args.temperature)
        generator: Generator = GivenResponses(given)
        backend = "responses"
    else:
        protocols = [parse_protocol(name, args.temperature) for name in args.protocols or ["greedy", "avg@8"]]
        if len({p.name for p in protocols}) != len(protocols):
            raise EvaluateError(f"a protocol is listed twice: {args.protocols}")
        if args.model_path.startswith((os.sep, ".", "~")) and not os.path.isdir(os.path.expanduser(args.model_path)):
            raise EvaluateError(f"--model_path {args.model_path}: no such checkpoint folder")
        try:
            patch = args.image_patch_size or checkpoint_image_patch_size(args.model_path)
        except OSError as error:
            raise EvaluateError(f"--model_path {args.model_path}: {error}") from None
        examples = load_examples(data, args.max_rows, patch)
        rewards = rewards_by_source(examples, custom, args.scoring)  # before loading a model: an unknown source fails now
        backend = args.backend
        if backend == "auto":
            backend = "vllm" if vllm_usable() else "hf"
        if backend == "vllm":
            generator = VLLMGenerator(
                args.model_path,
                args.max_new_tokens,
                args.seed,
                args.tensor_parallel_size,
                args.max_model_len,
                max_images_per_prompt=max(len(example.images) for example in examples),
            )
            check_prompt_lengths(generator.processor, examples, args.max_model_len, args.max_new_tokens)
        else:
            generator = HFGenerator(args.model_path, args.max_new_tokens, args.batch_size, args.seed)

    rows, records, seconds = evaluate(examples, generator, protocols, rewards)
    names = [p.name for p in protocols]
    table = format_table(rows, names)
    print(table)
    loud = [describe_unparsed(entry, rewards) for entry in mostly_unparsed(rows)]
    for line in warnings + loud:
        print(f"WARNING: {line}", file=sys.stderr)

    summary = {
        "model_path": args.model_path,
        "data": data,
        "backend": backend,
        "responses": args.responses,
        "protocols": [p.__dict__ for p in protocols],
        "max_new_tokens": None if args.responses else args.max_new_tokens,
        "seed": None if args.responses else args.seed,
        "scoring": args.scoring,
        "rewards": {
            source: {"reward": reward.name, "expects": reward.expects, "parse_checked": reward.parses is not None}
            for source, reward in sorted(rewards.items())
        },
        "warnings": warnings,
        "mostly_unparsed": loud,
        "generation_seconds": seconds,
        "table": rows,
    }
    markdown = table + "\n"
    if comparison_row is not None:
        comparison = paper_comparison(rows, comparison_row)
        summary["paper_row"] = {"row": args.paper_row.lower(), "model": comparison_row["model"]}
        summary["paper_comparison"] = comparison
        compared = format_comparison(comparison, comparison_row)
        print(f"\n{compared}")
        markdown += f"\n{compared}\n"
    generations = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_outputs(
        args.output_dir,
        {
            "generations.jsonl": generations,
            "results.json": json.dumps(summary, indent=2, allow_nan=False),
            "results.md": markdown,
        },
    )
    summary["strict_failed"] = bool(args.strict and loud)
    return summary


def main(argv=None) -> int:
    """Console script ``vgpo-evaluate``: 0 on success, 3 under ``--strict`` when most responses of a source
    have no parsable answer, 2 for an input, reward or model that cannot be evaluated (one line, no
    traceback)."""
    from verl_vgpo.cpu.generation import GenerationError
    from verl_vgpo.data.vl_math import ConversionError

    try:
        summary = run(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed as one line
        return exit_request.code if isinstance(exit_request.code, int) else 2
    except (EvaluateError, RewardError, ConversionError, GenerationError, ValueError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"vgpo-evaluate: {message}", file=sys.stderr)
        return 2
    if summary["strict_failed"]:
        print(f"vgpo-evaluate --strict: {'; '.join(summary['mostly_unparsed'])}", file=sys.stderr)
        return STRICT_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
