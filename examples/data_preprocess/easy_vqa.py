"""Turn the offline ``easy-vqa`` PyPI package into verl's RL parquet format (train.parquet / test.parquet).

easy-vqa ships real 64x64 PNG images of one coloured shape and question/answer pairs whose answers are
single words (13 in total: colours, shapes, yes/no), so an exact-match reward is exact. Nothing is
downloaded: images and questions come from the installed package.

Each row has the columns verl's ``RLHFDataset`` and reward managers read:
    data_source   "easy_vqa"
    prompt        [{"role": "user", "content": "<image>{question} ..."}]  (<image> marks where the image goes)
    images        [{"bytes": <png bytes>}]
    ability       "vqa"
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"split", "index", "question", "answer", "image_id"}

    python examples/data_preprocess/easy_vqa.py --local_save_dir data/easy_vqa --train_size 64 --val_size 16
"""

from __future__ import annotations

import argparse
import os
import random
import sys

DATA_SOURCE = "easy_vqa"
INSTRUCTION = "Answer with a single word."


def _load_split(split: str):
    import easy_vqa

    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        image_paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        image_paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"unknown easy-vqa split {split!r}; expected 'train' or 'test'")
    return list(zip(questions, answers, image_ids, strict=True)), image_paths


def build_rows(split: str, size: int, seed: int) -> list[dict]:
    """``size`` rows of ``split`` (a seeded random subset, at most one question per image)."""
    if size <= 0:
        raise ValueError(f"--{'train' if split == 'train' else 'val'}_size must be positive, got {size}")
    samples, image_paths = _load_split(split)
    rng = random.Random(seed)
    rng.shuffle(samples)
    rows, used_images = [], set()
    for question, answer, image_id in samples:
        if image_id in used_images:
            continue  # one question per image keeps a small split visually diverse
        used_images.add(image_id)
        with open(image_paths[image_id], "rb") as image_file:
            png_bytes = image_file.read()
        index = len(rows)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"<image>{question} {INSTRUCTION}"}],
                "images": [{"bytes": png_bytes}],
                "ability": "vqa",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {
                    "split": split,
                    "index": index,
                    "question": question,
                    "answer": answer,
                    "image_id": int(image_id),
                },
            }
        )
        if len(rows) == size:
            return rows
    raise ValueError(f"easy-vqa split {split!r} has only {len(rows)} images; asked for {size} rows")


def write_parquet(rows: list[dict], path: str) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_save_dir", default="data/easy_vqa", help="output folder for the parquet files")
    parser.add_argument("--train_size", type=int, default=256)
    parser.add_argument("--val_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.makedirs(args.local_save_dir, exist_ok=True)
    outputs = {}
    for split, size, file_name in (("train", args.train_size, "train.parquet"), ("test", args.val_size, "test.parquet")):
        path = os.path.join(args.local_save_dir, file_name)
        write_parquet(build_rows(split, size, args.seed), path)
        outputs[split] = path
        print(f"easy_vqa: wrote {size} {split} rows to {path}")
    return outputs


if __name__ == "__main__":
    # run as a script, this file's folder is sys.path[0] and this file (easy_vqa.py) would shadow the
    # easy_vqa package it reads from
    _script_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _script_dir]
    sys.modules.pop("easy_vqa", None)
    main()
