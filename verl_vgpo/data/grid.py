"""The ``grid`` task in one place: 2 x 2 grids of easy-vqa shapes, questions, the chain-of-cells target.

Why a second task: easy-vqa's responses are about 12 tokens and their focus on the image rises along the
response, so there is no late visual forgetting for VGPO to correct. Here every response is a chain of one
clause per cell, then the answer, and the later clauses need the image as much as the first.

* images: four labelled easy-vqa images (64x64, one shape each, from the same easy-vqa split) pasted
  unchanged into a 128x128 grid; cells are numbered in reading order (1 top left, 2 top right,
  3 bottom left, 4 bottom right). Sample ``i`` of a split and seed is drawn from its own seeded generator,
  so any sample can be rebuilt alone and the same seed gives the same bytes;
* questions (:data:`KINDS`): the colour of the shape in a cell, the shape in a cell, or how many shapes of
  a colour there are (the colour present in the grid half of the time);
* :func:`target_text`: ``"cell 1 is a red circle. cell 2 is ... Answer: <word>"`` (about 40 tokens with the
  tiny VLM's tokenizer); :func:`parse_cells` reads the clauses back for per-cell accuracy;
* the prompt's wording, the answer marker, answer extraction and normalisation are easy-vqa's
  (:mod:`verl_vgpo.data.easy_vqa`), so the exact-match reward scores both tasks;
* :func:`write_splits`: verl RL parquet files with ``data_source`` :data:`DATA_SOURCE`, the task recorded in
  every row; a folder holding another task's parquet files is refused (:func:`check_data_folder`).

Train grids are built from easy-vqa's train images, test grids from its test images (unseen cells).

    python -m verl_vgpo.data.grid --local_save_dir data/grid --train_size 256 --val_size 64
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re

from verl_vgpo.data import easy_vqa

TASK = "grid"
DATA_SOURCE = "grid"
CELLS = 4  # 2 x 2, numbered 1..4 in reading order
CELL_PIXELS = 64  # easy-vqa's image side
GRID_SIDE = 2
KINDS = ("color", "shape", "count")
SETTINGS_FILE = "grid_settings.json"
INSTRUCTION = ("Name the colour and the shape in cells 1 to 4, "
               f"then give the answer as '{easy_vqa.ANSWER_MARKER} <one word>'.")
# the colours easy-vqa's images actually use (its questions name two more that no image has)
_IMAGE_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
_CLAUSE = re.compile(r"cell\s+([1-4])\s+is\s+an?\s+(\w+)\s+(\w+)", flags=re.IGNORECASE)


class DataFolderError(ValueError):
    """A data folder that cannot be used for the requested task."""


def prompt_text(question: str) -> str:
    """The user turn for one grid question (``<image>`` marks where verl inserts the image)."""
    return f"<image>{question} {INSTRUCTION}"


def target_text(cells, answer: str) -> str:
    """The supervised response: one clause per cell in reading order, then the answer after the marker."""
    clauses = " ".join(f"cell {index} is a {color} {shape}." for index, (color, shape) in enumerate(cells, start=1))
    return f"{clauses} {easy_vqa.ANSWER_MARKER} {answer}"


def parse_cells(response: str) -> dict[int, tuple[str, str]]:
    """cell number -> (colour, shape) named by a response's clauses (the first clause per cell counts)."""
    cells: dict[int, tuple[str, str]] = {}
    for match in _CLAUSE.finditer(response.split(easy_vqa.ANSWER_MARKER)[0]):
        cells.setdefault(int(match.group(1)), (match.group(2).lower(), match.group(3).lower()))
    return cells


def question_and_answer(kind: str, cells, rng: random.Random) -> tuple[str, str]:
    """One question of ``kind`` about ``cells`` [(colour, shape)] x 4, and its answer."""
    if kind == "color":
        index = rng.randrange(CELLS)
        return f"what color is the shape in cell {index + 1}?", cells[index][0]
    if kind == "shape":
        index = rng.randrange(CELLS)
        return f"what shape is in cell {index + 1}?", cells[index][1]
    if kind == "count":
        present = sorted({color for color, _ in cells})
        absent = [color for color in easy_vqa.COLORS if color not in present and color in _IMAGE_COLORS]
        color = rng.choice(present if rng.random() < 0.5 or not absent else absent)
        return f"how many {color} shapes are there?", str(sum(c == color for c, _ in cells))
    raise ValueError(f"unknown grid question kind {kind!r}; expected one of {KINDS}")


def _source_images(split: str) -> list[dict]:
    """One entry per labelled easy-vqa image of ``split``: {"image_id", "image_path", "color", "shape"},
    in image-id order (easy_vqa.load_split reads the labels off the questions)."""
    images = {}
    for sample in easy_vqa.load_split(split):
        images.setdefault(sample["image_id"],
                          {key: sample[key] for key in ("image_id", "image_path", "color", "shape")})
    return [images[image_id] for image_id in sorted(images)]


class GridSampler:
    """Grid samples of one easy-vqa split: ``sample(i)`` is a pure function of (split, seed, i)."""

    def __init__(self, split: str, seed: int):
        self.split, self.seed = split, seed
        self.sources = _source_images(split)
        self._pixels: dict[int, object] = {}

    def _cell_image(self, source: dict):
        from PIL import Image

        image_id = source["image_id"]
        if image_id not in self._pixels:  # each source PNG is decoded once per sampler
            with Image.open(source["image_path"]) as image:
                self._pixels[image_id] = image.convert("RGB")
        return self._pixels[image_id]

    def sample(self, index: int) -> dict:
        """{"split", "index", "kind", "question", "answer", "cells", "source_ids", "prompt", "target",
        "image" (PIL RGB)}."""
        from PIL import Image

        rng = random.Random(f"{TASK}/{self.split}/{self.seed}/{index}")
        sources = rng.sample(self.sources, CELLS)
        cells = [(source["color"], source["shape"]) for source in sources]
        kind = KINDS[index % len(KINDS)]  # kinds in rotation: every split is balanced across kinds
        question, answer = question_and_answer(kind, cells, rng)
        image = Image.new("RGB", (GRID_SIDE * CELL_PIXELS, GRID_SIDE * CELL_PIXELS))
        for position, source in enumerate(sources):
            row, column = divmod(position, GRID_SIDE)
            image.paste(self._cell_image(source), (column * CELL_PIXELS, row * CELL_PIXELS))
        return {"split": self.split, "index": index, "kind": kind, "question": question, "answer": answer,
                "cells": cells, "source_ids": [source["image_id"] for source in sources],
                "prompt": prompt_text(question), "target": target_text(cells, answer), "image": image}


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_rows(split: str, size: int, seed: int) -> list[dict]:
    """``size`` verl RL rows of grids built from easy-vqa's ``split`` images."""
    if size <= 0:
        raise ValueError(f"size of the {split} split must be positive, got {size}")
    sampler = GridSampler(split, seed)
    rows = []
    for index in range(size):
        sample = sampler.sample(index)
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": prompt_text(sample["question"])}],
            "images": [{"bytes": png_bytes(sample["image"])}],
            "ability": "vqa",
            "reward_model": {"style": "rule", "ground_truth": sample["answer"]},
            "extra_info": {"task": TASK, "split": split, "index": index, "kind": sample["kind"],
                           "question": sample["question"], "answer": sample["answer"],
                           "cell_colors": [color for color, _ in sample["cells"]],
                           "cell_shapes": [shape for _, shape in sample["cells"]],
                           "source_ids": sample["source_ids"], "target": sample["target"]},
        })
    return rows


def folder_data_sources(data_dir: str | os.PathLike) -> dict[str, set[str]]:
    """split -> the data_source values of the folder's ``<split>.parquet`` files that exist."""
    import pandas as pd

    found = {}
    for split in easy_vqa.SPLITS:
        path = os.path.join(data_dir, f"{split}.parquet")
        if os.path.exists(path):
            found[split] = set(pd.read_parquet(path, columns=["data_source"])["data_source"])
    return found


def check_data_folder(data_dir: str | os.PathLike, data_source: str, task: str) -> None:
    """Refuse a folder whose parquet files were built for another task (their rows' data_source differ)."""
    for split, sources in folder_data_sources(data_dir).items():
        if sources != {data_source}:
            raise DataFolderError(
                f"{os.path.join(data_dir, split + '.parquet')} holds rows of data_source {sorted(sources)}, not "
                f"{data_source!r}: the folder was built for another task than {task!r}; use another data folder")


def write_splits(out_dir: str | os.PathLike, train_size: int, val_size: int, seed: int = 0,
                 quiet: bool = False) -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` (and :data:`SETTINGS_FILE`) to ``out_dir``; a folder holding
    another task's parquet files is refused before anything is written."""
    import pandas as pd

    check_data_folder(out_dir, DATA_SOURCE, TASK)
    os.makedirs(out_dir, exist_ok=True)
    outputs = {}
    for split, size in (("train", train_size), ("test", val_size)):
        path = os.path.join(out_dir, f"{split}.parquet")
        pd.DataFrame(build_rows(split, size, seed)).to_parquet(path)
        outputs[split] = path
        if not quiet:
            print(f"grid: wrote {size} {split} rows to {path}")
    settings = {"task": TASK, "train_size": train_size, "val_size": val_size, "seed": seed,
                "example_target": target_text([("red", "circle")] * CELLS, "red")}
    with open(os.path.join(out_dir, SETTINGS_FILE), "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, sort_keys=True)
    return outputs


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local_save_dir", default="data/grid", help="output folder for the parquet files")
    parser.add_argument("--train_size", type=int, default=256)
    parser.add_argument("--val_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return write_splits(args.local_save_dir, args.train_size, args.val_size, args.seed)
    except DataFolderError as error:
        parser.exit(2, f"grid: {error}\n")


if __name__ == "__main__":
    main()
