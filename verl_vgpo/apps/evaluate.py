"""Score a Hugging Face VLM checkpoint on benchmark parquet files (the verl RL format of
``examples/data_preprocess``) with the two protocols multimodal-RL papers report:

* ``greedy``: one response per prompt at temperature 0 (how the VGPO paper reports accuracy);
* ``avg@K``:  K sampled responses per prompt at temperature 1.0 (``--temperature``), accuracy averaged
  over the K samples and then over prompts (how PAPO and VPPO report, with K = 8).

Each response is scored with the recipe's reward, :func:`verl_vgpo.rewards.math_boxed.compute_score`
(the last ``\\boxed{}`` against ``reward_model.ground_truth``). The accuracy table has one row per
``data_source`` plus the mean over all prompts and the mean over sources; it is printed and written to
``<output_dir>/results.json`` with every response in ``<output_dir>/generations.jsonl``.

Generation uses vLLM when it is installed and a GPU is present (``--backend auto``), Hugging Face
``generate`` otherwise. On the HF path the processor's ``mm_token_type_ids`` are passed so the model
computes the right multimodal (M-RoPE) positions, prompts are left-padded, and special tokens other
than end-of-sequence (image/video pads, vision start/end, ...) are suppressed so a weak model cannot
emit a token that breaks the position computation.

    python -m verl_vgpo.apps.evaluate --model_path ckpt/hf --data ~/data/mmk12/test.parquet \\
        --protocols greedy avg@8 --output_dir eval/mmk12
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from verl_vgpo.rewards.math_boxed import compute_score

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


def load_examples(
    parquet_paths: Sequence[str], max_rows_per_file: int | None = None, image_patch_size: int = 14
) -> list[Example]:
    """Rows of verl RL parquet files as chat messages with their images (PIL) in placeholder order.

    Images may be decoded PIL images (files written by ``datasets``) or ``{"bytes": ...}`` dicts (files
    written by pandas); both go through verl's own ``process_image``, as in training (``image_patch_size``
    14 for Qwen2.5-VL, 16 for Qwen3-VL, like ``data.image_patch_size``).
    """
    import datasets
    from verl.utils.dataset.vision_utils import process_image

    examples = []
    for path in parquet_paths:
        table = datasets.load_dataset("parquet", data_files=os.path.expanduser(path))["train"]
        missing = {"data_source", "prompt", "reward_model"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected the verl RL parquet layout")
        for row_number, row in enumerate(table):
            if max_rows_per_file is not None and row_number >= max_rows_per_file:
                break
            images = list(row.get("images") or [])
            examples.append(
                Example(
                    data_source=row["data_source"],
                    index=row_number,
                    messages=_messages_with_images(row["prompt"], len(images), f"{path} row {row_number}"),
                    images=[process_image(image, image_patch_size) for image in images],
                    ground_truth=row["reward_model"]["ground_truth"],
                )
            )
    if not examples:
        raise ValueError(f"no rows in {list(parquet_paths)}")
    return examples


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
        raise ValueError(f"{where}: {seen} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")
    return messages


# A generator takes the examples and a protocol and returns, per example, protocol.num_samples texts.
Generator = Callable[[Sequence[Example], Protocol], list[list[str]]]


class HFGenerator:
    """Batched ``generate`` with a Hugging Face VLM (CPU or one GPU), through the same helpers as the
    hf_cpu rollout (:mod:`verl_vgpo.cpu.generation`): prompts, special-token rule, sampling settings."""

    def __init__(self, model_path: str, max_new_tokens: int, batch_size: int, seed: int, device: str | None = None):
        from verl_vgpo.cpu import generation

        self.loaded = generation.load_model(model_path, device=device)
        if self.loaded.processor is None:
            raise ValueError(f"{model_path} has no image processor: vgpo-evaluate scores vision-language models")
        self.processor, self.model = self.loaded.processor, self.loaded.model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.suppressed_token_ids = self.loaded.suppress_ids

    def __call__(self, examples: Sequence[Example], protocol: Protocol) -> list[list[str]]:
        from verl_vgpo.cpu import generation

        loaded, tokenizer = self.loaded, self.processor.tokenizer
        responses: list[list[str]] = []
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start : start + self.batch_size]
            inputs = generation.chat_inputs(
                self.processor, [example.messages for example in batch], [example.images for example in batch]
            )
            result = generation.generate(
                loaded.model,
                inputs,
                max_new_tokens=self.max_new_tokens,
                eos_token_ids=loaded.eos_token_ids,
                pad_token_id=loaded.pad_token_id,
                suppress_ids=loaded.suppress_ids,
                temperature=protocol.temperature,
                num_return_sequences=protocol.num_samples,
                seed=self.seed if start == 0 else None,
            )
            decoded = tokenizer.batch_decode(result.tokens, skip_special_tokens=True)
            for offset in range(len(batch)):
                first = offset * protocol.num_samples
                responses.append(decoded[first : first + protocol.num_samples])
        return responses


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


def score_protocol(examples: Sequence[Example], responses: Sequence[Sequence[str]], protocol: Protocol):
    """Per-prompt mean accuracy over its samples, plus the per-response records."""
    if len(responses) != len(examples):
        raise ValueError(f"{len(responses)} response lists for {len(examples)} prompts")
    per_prompt, records = [], []
    for example, samples in zip(examples, responses):
        if len(samples) != protocol.num_samples:
            raise ValueError(f"{protocol.name}: expected {protocol.num_samples} responses, got {len(samples)}")
        scores = [
            compute_score(example.data_source, text, example.ground_truth, {"index": example.index})["acc"]
            for text in samples
        ]
        per_prompt.append(sum(scores) / len(scores))
        records.append(
            {
                "protocol": protocol.name,
                "data_source": example.data_source,
                "index": example.index,
                "ground_truth": _json_ready(example.ground_truth),
                "responses": list(samples),
                "acc": scores,
            }
        )
    return per_prompt, records


def accuracy_table(examples: Sequence[Example], per_protocol: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Rows: one per data_source (sorted), then ``all`` (mean over prompts) and ``mean_of_sources``."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for position, example in enumerate(examples):
        by_source[example.data_source].append(position)
    rows = []
    for source in sorted(by_source):
        positions = by_source[source]
        row: dict[str, Any] = {"data_source": source, "prompts": len(positions)}
        for name, per_prompt in per_protocol.items():
            row[name] = 100.0 * sum(per_prompt[p] for p in positions) / len(positions)
        rows.append(row)
    overall: dict[str, Any] = {"data_source": "all", "prompts": len(examples)}
    macro: dict[str, Any] = {"data_source": "mean_of_sources", "prompts": len(examples)}
    for name, per_prompt in per_protocol.items():
        overall[name] = 100.0 * sum(per_prompt) / len(per_prompt)
        macro[name] = sum(row[name] for row in rows) / len(rows)
    return rows + [overall, macro]


def format_table(rows: list[dict[str, Any]], protocol_names: Sequence[str]) -> str:
    header = ["data_source", "prompts", *protocol_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["data_source"], str(row["prompts"])] + [f"{row[name]:.2f}" for name in protocol_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def evaluate(
    examples: Sequence[Example], generator: Generator, protocols: Sequence[Protocol]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """Run every protocol; returns (table rows, per-response records, seconds per protocol)."""
    per_protocol, records, seconds = {}, [], {}
    for protocol in protocols:
        started = time.perf_counter()
        responses = generator(examples, protocol)
        seconds[protocol.name] = time.perf_counter() - started
        per_prompt, protocol_records = score_protocol(examples, responses, protocol)
        per_protocol[protocol.name] = per_prompt
        records.extend(protocol_records)
    return accuracy_table(examples, per_protocol), records, seconds


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model_path", required=True, help="Hugging Face checkpoint folder (or hub name)")
    parser.add_argument("--data", nargs="+", required=True, help="benchmark parquet file(s) in the verl RL layout")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--protocols", nargs="+", default=["greedy", "avg@8"], help="greedy and/or avg@K")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of avg@K")
    parser.add_argument("--max_new_tokens", type=int, default=2048)
    parser.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per HF generate call")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM only")
    parser.add_argument("--max_model_len", type=int, default=8192, help="vLLM only")
    parser.add_argument("--max_rows", type=int, default=None, help="evaluate only the first N rows of each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image_patch_size", type=int, default=14, help="14 for Qwen2.5-VL, 16 for Qwen3-VL (as data.image_patch_size)"
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--max_new_tokens and --batch_size must be >= 1")
    return args


def main(argv=None) -> list[dict[str, Any]]:
    args = _parse_args(argv)
    protocols = [parse_protocol(name, args.temperature) for name in args.protocols]
    if len({p.name for p in protocols}) != len(protocols):
        raise ValueError(f"a protocol is listed twice: {args.protocols}")
    examples = load_examples(args.data, args.max_rows, args.image_patch_size)

    backend = args.backend
    if backend == "auto":
        backend = "vllm" if vllm_usable() else "hf"
    if backend == "vllm":
        generator: Generator = VLLMGenerator(
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

    rows, records, seconds = evaluate(examples, generator, protocols)
    names = [p.name for p in protocols]
    table = format_table(rows, names)
    print(table)

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "generations.jsonl"), "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = {
        "model_path": args.model_path,
        "data": list(args.data),
        "backend": backend,
        "protocols": [p.__dict__ for p in protocols],
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "generation_seconds": seconds,
        "table": rows,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, allow_nan=False)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
