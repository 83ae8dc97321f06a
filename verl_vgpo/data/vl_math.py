"""Shared pieces of the multimodal-math converters (ViRL39K, MMK12, Geometry3K) -> verl RL parquet.

Used by ``examples/data_preprocess/{virl39k,mmk12,geometry3k}.py`` (thin commands around this module) and by
tests and apps that need rows in the same layout, so none of them imports a script by editing ``sys.path``.

One output row (the layout verl's ``RLHFDataset`` reads, as in verl's own geo3k example)::

    data_source   short dataset name ("virl39k", "mmk12", "geometry3k"); the accuracy table and
                  reward routing key
    prompt        [{"role": "user", "content": "<image>...question...\n\n<answer-format instruction>"}]
                  with exactly one "<image>" placeholder per image, in order
    images        list of {"bytes": PNG, "path": None, "min_pixels": int | None, "max_pixels": int | None}
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": final answer without \\boxed{}}
    extra_info    {"split", "index", "question", "answer", + per-dataset string fields}

Why images are plain dicts and not the Hugging Face ``Image`` feature: verl 0.9.1 has no data-config key for
image resolution. Its ``RLHFDataset`` turns an image dict into a chat part ``{"type": "image", **entry}`` and
``qwen_vl_utils.fetch_image`` (called by verl's agent loop, and by ``verl.utils.dataset.vision_utils.process_image``)
resizes each image into ``[min_pixels, max_pixels]`` read from that part. A decoded ``Image`` feature would
arrive as a bare PIL image and lose both keys (the processor defaults then apply: 3,136 to 12,845,056 pixels for
Qwen2.5-VL, so a small diagram gets only a few visual tokens).
"""

from __future__ import annotations

import argparse
import ast
import io
import os
from typing import Any, Callable, Iterable, Mapping

# The VGPO authors' answer-format instruction, verbatim: the text of their format prompt
# examples/format_prompt/math_format_perception.jinja in github.com/wzb-bupt/VGPO (commit 63a9a8b, used by
# train_vgpo_7B.sh as data.format_prompt). Their template renders "{{ content | trim }}", a blank line, then
# this sentence; build_prompt produces the same text.
VGPO_AUTHORS_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)
# verl-vgpo's own wording (the default before the paper recipe followed the authors exactly)
VERL_VGPO_INSTRUCTION = (
    "First think through the problem step by step inside <think> </think> tags, "
    "then give the final answer inside \\boxed{}."
)
INSTRUCTIONS = {"vgpo_authors": VGPO_AUTHORS_INSTRUCTION, "verl_vgpo": VERL_VGPO_INSTRUCTION}
DEFAULT_INSTRUCTION = "vgpo_authors"

# The VGPO authors' image resolution bounds (examples/configs/config.yaml of github.com/wzb-bupt/VGPO:
# data.min_pixels 262144 = 512 x 512, data.max_pixels 4194304 = 2048 x 2048).
PAPER_MIN_PIXELS = 262_144
PAPER_MAX_PIXELS = 4_194_304

IMAGE_PLACEHOLDER = "<image>"


class ConversionError(ValueError):
    """A source row cannot be converted; the message names the dataset, the row and the field."""


def build_prompt(question: str, num_images: int, instruction: str = DEFAULT_INSTRUCTION) -> list[dict[str, str]]:
    """The chat prompt for one question: image placeholders, the question, a blank line, the instruction.

    A question that already carries ``<image>`` placeholders keeps them where they are (their count
    must equal the number of images); otherwise the placeholders are put in front of the question.
    ``instruction`` names one of :data:`INSTRUCTIONS` (default: the VGPO authors' wording).
    """
    if instruction not in INSTRUCTIONS:
        raise ConversionError(f"unknown instruction {instruction!r}: choose one of {sorted(INSTRUCTIONS)}")
    question = question.strip()
    present = question.count(IMAGE_PLACEHOLDER)
    if present == 0:
        question = IMAGE_PLACEHOLDER * num_images + question
    elif present != num_images:
        raise ConversionError(f"question has {present} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")
    return [{"role": "user", "content": f"{question}\n\n{INSTRUCTIONS[instruction]}"}]


def strip_boxed(answer: str) -> str:
    """``\\boxed{17^\\circ}`` -> ``17^\\circ``; an unboxed answer is returned stripped."""
    answer = answer.strip()
    if answer.startswith("\\boxed{") and answer.endswith("}"):
        depth = 0
        for position, char in enumerate(answer):
            depth += char == "{"
            depth -= char == "}"
            if depth == 0 and char == "}":
                # only strip when the box spans the whole answer
                if position == len(answer) - 1:
                    return answer[len("\\boxed{") : -1].strip()
                break
    return answer


def check_pixel_bounds(min_pixels: int | None, max_pixels: int | None) -> None:
    """Both bounds positive when given, and min <= max (qwen_vl_utils asserts it only at training time)."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConversionError(f"{name} must be a positive integer or None, got {value!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ConversionError(f"min_pixels {min_pixels} is larger than max_pixels {max_pixels}")


def to_png_image(
    image: Any,
    image_root: str | None,
    min_pixels: int | None = PAPER_MIN_PIXELS,
    max_pixels: int | None = PAPER_MAX_PIXELS,
) -> dict[str, Any]:
    """One source image (PIL image, {"bytes"/"path"} dict, or a path) as the image entry verl reads:
    ``{"bytes": PNG, "path": None, "min_pixels": ..., "max_pixels": ...}`` (None: the processor's default)."""
    from PIL import Image

    if isinstance(image, Mapping):
        if image.get("bytes"):
            image = Image.open(io.BytesIO(image["bytes"]))
        elif image.get("path"):
            image = image["path"]
        else:
            raise ConversionError(f"image dict without bytes or path: keys {sorted(image)}")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isabs(path):
            if image_root is None:
                raise ConversionError(
                    f"image {path!r} is a relative path: pass --image_root (the folder the dataset's "
                    "image archive was extracted to)"
                )
            path = os.path.join(image_root, path)
        if not os.path.isfile(path):
            raise ConversionError(f"image file not found: {path}")
        image = Image.open(path)
    if not isinstance(image, Image.Image):
        raise ConversionError(f"unsupported image value of type {type(image).__name__}")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None, "min_pixels": min_pixels, "max_pixels": max_pixels}


def as_image_list(value: Any) -> list[Any]:
    """A row's image field as a list: one image, a list of images, or a string holding a list of paths."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            # some releases store the list of relative paths as its Python/JSON repr
            parsed = ast.literal_eval(text)
            if not isinstance(parsed, list):
                raise ConversionError(f"image field {value!r} is not a list")
            return parsed
        return [text]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def make_row(
    *,
    data_source: str,
    split: str,
    index: int,
    question: str,
    answer: str,
    images: list[Any],
    image_root: str | None,
    extra: Mapping[str, str],
    instruction: str = DEFAULT_INSTRUCTION,
    min_pixels: int | None = PAPER_MIN_PIXELS,
    max_pixels: int | None = PAPER_MAX_PIXELS,
) -> dict[str, Any]:
    """One output row (layout in the module docstring); defaults are the VGPO authors' prompt and resolution."""
    check_pixel_bounds(min_pixels, max_pixels)
    if not isinstance(question, str) or not question.strip():
        raise ConversionError("empty question")
    if not isinstance(answer, str) or not strip_boxed(answer):
        raise ConversionError(f"empty answer {answer!r}")
    if not images:
        raise ConversionError("no image: these are multimodal benchmarks, every row needs one")
    ground_truth = strip_boxed(answer)
    return {
        "data_source": data_source,
        "prompt": build_prompt(question, len(images), instruction),
        "images": [to_png_image(image, image_root, min_pixels, max_pixels) for image in images],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "question": question.strip(),
            "answer": ground_truth,
            **{key: "" if value is None else str(value) for key, value in extra.items()},
        },
    }


def output_features(extra_keys: Iterable[str]):
    """The parquet schema (Hugging Face features); images are plain dicts (see the module docstring)."""
    import datasets

    extra_info = {"split": datasets.Value("string"), "index": datasets.Value("int64")}
    extra_info.update({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    extra_info.update({key: datasets.Value("string") for key in extra_keys})
    return datasets.Features(
        {
            "data_source": datasets.Value("string"),
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "images": datasets.List(
                {
                    "bytes": datasets.Value("binary"),
                    "path": datasets.Value("string"),
                    "min_pixels": datasets.Value("int64"),
                    "max_pixels": datasets.Value("int64"),
                }
            ),
            "ability": datasets.Value("string"),
            "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
            "extra_info": extra_info,
        }
    )


def load_source(hub_name: str, split: str, local_dataset_path: str | None):
    """The source split: from the hub by name, or from a local copy (a clone of the hub repository,
    a folder of parquet files laid out like it, or a ``save_to_disk`` folder)."""
    import datasets

    if local_dataset_path is None:
        return datasets.load_dataset(hub_name, split=split)
    if os.path.isfile(os.path.join(local_dataset_path, "dataset_dict.json")):
        return datasets.load_from_disk(local_dataset_path)[split]
    if os.path.isfile(os.path.join(local_dataset_path, "dataset_info.json")):
        return datasets.load_from_disk(local_dataset_path)
    return datasets.load_dataset(local_dataset_path, split=split)


def convert_split(
    source,
    *,
    data_source: str,
    split: str,
    row_fn: Callable[[Mapping[str, Any], int], dict[str, Any]],
    extra_keys: Iterable[str],
    out_path: str,
    max_rows: int | None = None,
) -> int:
    """Convert every row of ``source`` with ``row_fn`` and write one parquet file; returns the row count.

    A row that cannot be converted stops the run with its index (no silent dropping).
    """
    import datasets

    rows = []
    for index, example in enumerate(source):
        if max_rows is not None and index >= max_rows:
            break
        try:
            rows.append(row_fn(example, index))
        except ConversionError as error:
            raise ConversionError(f"{data_source} {split} row {index}: {error}") from error
    if not rows:
        raise ConversionError(f"{data_source} {split}: the source split is empty")
    table = datasets.Dataset.from_list(rows, features=output_features(extra_keys))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    table.to_parquet(out_path)
    return len(rows)


def base_argument_parser(
    description: str, default_hub_name: str, default_output: str, splits: Iterable[str]
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--hub_name",
        default=default_hub_name,
        help="Hugging Face dataset to read (e.g. a preprocessed copy with the same columns)",
    )
    parser.add_argument(
        "--local_dataset_path",
        default=None,
        help="read the source from this local copy instead of the Hugging Face hub",
    )
    parser.add_argument("--output_dir", default=default_output, help="where the parquet files are written")
    parser.add_argument("--max_rows", type=int, default=None, help="convert only the first N rows of each split")
    parser.add_argument("--splits", nargs="+", default=list(splits))
    parser.add_argument(
        "--instruction",
        choices=sorted(INSTRUCTIONS),
        default=DEFAULT_INSTRUCTION,
        help="answer-format sentence after each question: the VGPO authors' exact wording (default) or verl-vgpo's",
    )
    parser.add_argument(
        "--min_pixels",
        type=int,
        default=PAPER_MIN_PIXELS,
        help="smaller images are upscaled to about this many pixels at training time (VGPO authors: 262144)",
    )
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=PAPER_MAX_PIXELS,
        help="larger images are downscaled to at most this many pixels at training time (VGPO authors: 4194304)",
    )
    parser.add_argument(
        "--processor_pixel_limits",
        action="store_true",
        help="write no pixel bounds: the model processor's defaults apply (e.g. 3136..12845056 for Qwen2.5-VL)",
    )
    return parser


def row_options(args: argparse.Namespace) -> dict[str, Any]:
    """The make_row keyword arguments chosen on the command line (instruction and pixel bounds)."""
    if args.processor_pixel_limits:
        min_pixels = max_pixels = None
    else:
        min_pixels, max_pixels = args.min_pixels, args.max_pixels
    check_pixel_bounds(min_pixels, max_pixels)
    return {"instruction": args.instruction, "min_pixels": min_pixels, "max_pixels": max_pixels}


def convert_splits(args: argparse.Namespace, data_source: str, extra_keys: Iterable[str], row_fn_for_split) -> None:
    """Convert every split named in ``args.splits``; ``row_fn_for_split(split)`` gives that split's row converter."""
    for split in args.splits:
        source = load_source(args.hub_name, split, args.local_dataset_path)
        out_path = os.path.join(os.path.expanduser(args.output_dir), f"{split}.parquet")
        count = convert_split(
            source,
            data_source=data_source,
            split=split,
            row_fn=row_fn_for_split(split),
            extra_keys=extra_keys,
            out_path=out_path,
            max_rows=args.max_rows,
        )
        print(f"{data_source} {split}: {count} rows -> {out_path}")


def require_field(example: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The first of ``names`` present in the row; a clear error listing the row's columns otherwise."""
    for name in names:
        if name in example and example[name] is not None:
            return example[name]
    raise ConversionError(f"none of the columns {list(names)} is present; the row has {sorted(example)}")
