"""easy-vqa in one place: prompt text, supervised target, answer extraction and verl's RL parquet rows.

The offline ``easy-vqa`` PyPI package ships 64x64 PNG images of one coloured shape and questions with
single-word answers (13 in total: colours, shapes, yes/no). Every consumer reads the format from here,
so the converter (examples/data_preprocess/easy_vqa_shapes.py), the warm start (verl_vgpo.cpu.warm_start),
the reward (verl_vgpo.rewards.exact_match) and the demo cannot drift apart:

* :func:`prompt_text`: the user turn, ``<image>`` placeholder first (verl puts the image there);
* :func:`target_text`: the supervised response, a short grounded rationale naming the shape's colour and
  kind, then the answer after :data:`ANSWER_MARKER` (about 10-15 tokens with the tiny VLM's tokenizer), so
  responses have a time axis on which VGPO's position-dependent terms act;
* :func:`extract_answer`: the final answer of a response (text after the last marker, else the whole text);
* :func:`build_rows` / :func:`write_splits`: verl RL parquet rows (``data_source``, ``prompt``, ``images``,
  ``ability``, ``reward_model``, ``extra_info``).

easy-vqa stores no image labels, so each image's colour and shape are read off its own questions (e.g.
"what color is the triangle?" -> "blue" gives both). Images whose questions do not determine both (about 11 %)
are skipped: their rationale could not be written.

    python -m verl_vgpo.data.easy_vqa --local_save_dir data/easy_vqa --train_size 64 --val_size 16
"""

from __future__ import annotations

import argparse
import os
import random
import re
import string

DATA_SOURCE = "easy_vqa"
ANSWER_MARKER = "Answer:"
INSTRUCTION = f"Name the colour and the shape, then give the answer as '{ANSWER_MARKER} <one word>'."
SPLITS = ("train", "test")
# which questions a split keeps: "all", or "open" (the answer is a colour or a shape, read off the image;
# the yes/no questions are left out: their wording alone decides most of them, e.g. "is there not a
# <colour> shape?" is nearly always "yes")
QUESTION_KINDS = ("all", "open")
YES_NO = ("yes", "no")

# the shape words and colours easy-vqa's questions use (its answers use a subset of the colours)
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "purple", "yellow", "orange")

_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?answer\s*(?:is)?\s*[:\-]?\s*", flags=re.IGNORECASE)
_MARKER = re.compile(re.escape(ANSWER_MARKER), flags=re.IGNORECASE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class EasyVQAMissingError(RuntimeError):
    """The easy-vqa package is not installed."""


def prompt_text(question: str) -> str:
    """The user turn for one question (``<image>`` marks where verl inserts the image)."""
    return f"<image>{question} {INSTRUCTION}"


def target_text(color: str, shape: str, answer: str) -> str:
    """The supervised response: a grounded rationale, then the answer after ANSWER_MARKER."""
    return f"I see a {color} {shape}. {ANSWER_MARKER} {answer}"


def normalize_answer(text: str) -> str:
    """Lower-case, drop an "answer:" / "the answer is" prefix, punctuation and extra whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string answer, got {type(text).__name__}: {text!r}")
    text = _ANSWER_PREFIX.sub("", text.strip())
    return " ".join(text.translate(_PUNCTUATION).lower().split())


def extract_answer(response: str) -> str:
    """The normalised final answer of a response: what follows the last ANSWER_MARKER, else the whole text."""
    if not isinstance(response, str):
        raise TypeError(f"expected a string response, got {type(response).__name__}: {response!r}")
    parts = _MARKER.split(response)
    return normalize_answer(parts[-1])


ANSWER_KINDS = ("yes/no", "colour", "shape")


def answer_kind(answer: str) -> str:
    """The kind of question an easy-vqa answer belongs to: "yes/no", "colour" or "shape" (ValueError otherwise)."""
    answer = normalize_answer(answer)
    if answer in YES_NO:
        return "yes/no"
    if answer in COLORS:
        return "colour"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"{answer!r} is not an easy-vqa answer (yes/no, a colour of {COLORS} or a shape of {SHAPES})")


def _import_easy_vqa():
    try:
        import easy_vqa
    except ImportError as error:
        raise EasyVQAMissingError(
            "the easy-vqa package is not installed (pip install easy-vqa, or pip install 'verl-vgpo[test]'); "
            "it holds the images and questions, nothing is downloaded"
        ) from error
    return easy_vqa


def image_attributes(questions, answers, image_ids) -> dict[int, tuple[str, str]]:
    """image id -> (colour, shape), read off that image's questions; images not determined are left out."""
    colors, shapes = {}, {}
    for question, answer, image_id in zip(questions, answers, image_ids, strict=True):
        words = question.rstrip("?").split()
        named_shapes = [word for word in words if word in SHAPES]
        named_colors = [word for word in words if word in COLORS]
        if answer in SHAPES:
            shapes[image_id] = answer
            colors.update({image_id: color for color in named_colors})
        elif answer in COLORS:
            colors[image_id] = answer
            shapes.update({image_id: shape for shape in named_shapes})
        elif (answer == "yes") != bool({"not", "no"} & set(words)):  # "is there a X?" yes; "is no X present?" no
            shapes.update({image_id: shape for shape in named_shapes})
            colors.update({image_id: color for color in named_colors})
    return {image_id: (colors[image_id], shapes[image_id]) for image_id in colors.keys() & shapes.keys()}


def load_split(split: str) -> list[dict]:
    """Every question of an easy-vqa split whose image's colour and shape are known, in package order:
    [{"question", "answer", "image_id", "image_path", "color", "shape"}]."""
    easy_vqa = _import_easy_vqa()
    if split not in SPLITS:
        raise ValueError(f"unknown easy-vqa split {split!r}; expected one of {SPLITS}")
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    image_paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    attributes = image_attributes(questions, answers, image_ids)
    return [
        {"question": question, "answer": answer, "image_id": int(image_id), "image_path": image_paths[image_id],
         "color": attributes[image_id][0], "shape": attributes[image_id][1]}
        for question, answer, image_id in zip(questions, answers, image_ids, strict=True)
        if image_id in attributes
    ]


def sample_questions(split: str, size: int, seed: int, one_per_image: bool = True, kinds: str = "all") -> list[dict]:
    """``size`` questions of ``split`` of the given ``kinds`` (:data:`QUESTION_KINDS`): a seeded shuffle, at
    most one question per image by default."""
    if size <= 0:
        raise ValueError(f"size of the {split} split must be positive, got {size}")
    if kinds not in QUESTION_KINDS:
        raise ValueError(f"unknown easy-vqa question kinds {kinds!r}; expected one of {QUESTION_KINDS}")
    samples = load_split(split)
    if kinds == "open":
        samples = [sample for sample in samples if sample["answer"] not in YES_NO]
    random.Random(seed).shuffle(samples)
    chosen, used_images = [], set()
    for sample in samples:
        if one_per_image and sample["image_id"] in used_images:
            continue  # one question per image keeps a small split visually diverse
        used_images.add(sample["image_id"])
        chosen.append(sample)
        if len(chosen) == size:
            return chosen
    raise ValueError(f"easy-vqa split {split!r} has only {len(chosen)} usable images with {kinds} questions; "
                     f"asked for {size} rows")


def build_rows(split: str, size: int, seed: int, kinds: str = "all") -> list[dict]:
    """``size`` verl RL rows of ``split`` (see :func:`sample_questions`)."""
    rows = []
    for index, sample in enumerate(sample_questions(split, size, seed, kinds=kinds)):
        with open(sample["image_path"], "rb") as image_file:
            png_bytes = image_file.read()
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": prompt_text(sample["question"])}],
            "images": [{"bytes": png_bytes}],
            "ability": "vqa",
            "reward_model": {"style": "rule", "ground_truth": sample["answer"]},
            "extra_info": {"split": split, "index": index, "question": sample["question"], "answer": sample["answer"],
                           "image_id": sample["image_id"], "color": sample["color"], "shape": sample["shape"],
                           "target": target_text(sample["color"], sample["shape"], sample["answer"])},
        })
    return rows


def write_splits(out_dir: str | os.PathLike, train_size: int, val_size: int, seed: int = 0,
                 quiet: bool = False, kinds: str = "all") -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` to ``out_dir``; returns {"train": path, "test": path}."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    outputs = {}
    for split, size in (("train", train_size), ("test", val_size)):
        path = os.path.join(out_dir, f"{split}.parquet")
        pd.DataFrame(build_rows(split, size, seed, kinds=kinds)).to_parquet(path)
        outputs[split] = path
        if not quiet:
            print(f"easy_vqa: wrote {size} {split} rows ({kinds} questions) to {path}")
    return outputs


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local_save_dir", default="data/easy_vqa", help="output folder for the parquet files")
    parser.add_argument("--train_size", type=int, default=256)
    parser.add_argument("--val_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", default="all", choices=QUESTION_KINDS,
                        help="all questions, or only the open ones (colour / shape answers)")
    args = parser.parse_args(argv)
    return write_splits(args.local_save_dir, args.train_size, args.val_size, args.seed, kinds=args.questions)


if __name__ == "__main__":
    main()
