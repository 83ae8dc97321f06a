"""The grid task (verl_vgpo.data.grid): deterministic images and questions, every answer readable from the
pixels alone, the chain-of-cells target in range, and a data folder of another task refused."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageColor

from verl_vgpo.data import easy_vqa, grid
from verl_vgpo.rewards.exact_match import compute_score


def read_cell(cell: np.ndarray) -> tuple[str, str]:
    """(colour, shape) of one 64x64 easy-vqa cell from its pixels only: the background is the most common
    border colour; the shape's colour is its most common pixel, named by the nearest CSS colour (easy-vqa
    draws with PIL's named colours); the shape by how much of its bounding box it fills (rectangle ~1,
    circle ~pi/4, triangle ~1/2; measured over every labelled easy-vqa image: rectangles >= 0.909, circles
    0.730-0.900, triangles <= 0.691)."""
    cell = cell.astype(int)
    border = np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]])
    values, counts = np.unique(border, axis=0, return_counts=True)
    background = values[counts.argmax()]
    mask = np.abs(cell - background).sum(-1) > 60
    values, counts = np.unique(cell[mask], axis=0, return_counts=True)
    mode = values[counts.argmax()]
    palette = {name: np.array(ImageColor.getrgb(name)) for name in easy_vqa.COLORS}
    color = min(palette, key=lambda name: int(np.abs(palette[name] - mode).sum()))
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return color, "rectangle" if fill > 0.905 else "circle" if fill > 0.71 else "triangle"


def read_grid(png: bytes) -> list[tuple[str, str]]:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (128, 128, 3)
    return [read_cell(pixels[row * 64:(row + 1) * 64, column * 64:(column + 1) * 64])
            for row in range(2) for column in range(2)]


def answer_from_pixels(question: str, cells: list[tuple[str, str]]) -> str:
    """The answer to a grid question, computed from the pixel reading and the question text only."""
    if match := re.fullmatch(r"what color is the shape in cell ([1-4])\?", question):
        return cells[int(match.group(1)) - 1][0]
    if match := re.fullmatch(r"what shape is in cell ([1-4])\?", question):
        return cells[int(match.group(1)) - 1][1]
    if match := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return str(sum(color == match.group(1) for color, _ in cells))
    raise AssertionError(f"question of no known form: {question!r}")


def test_a_pixel_reading_rule_answers_every_question_and_every_clause():
    rows = grid.build_rows("train", 90, seed=0) + grid.build_rows("test", 90, seed=5)
    assert {row["extra_info"]["kind"] for row in rows} == set(grid.KINDS)
    answers = {row["extra_info"]["kind"]: set() for row in rows}
    for row in rows:
        cells = read_grid(row["images"][0]["bytes"])
        info = row["extra_info"]
        assert answer_from_pixels(info["question"], cells) == row["reward_model"]["ground_truth"] == info["answer"]
        # the chain itself is what the pixels show, cell by cell, and the reward accepts the target
        assert grid.parse_cells(info["target"]) == {index + 1: cell for index, cell in enumerate(cells)}
        assert compute_score(row["data_source"], info["target"], info["answer"])["score"] == 1.0
        answers[info["kind"]].add(info["answer"])
    # the questions are not answerable by one constant: several answers per kind
    assert len(answers["color"]) >= 5 and len(answers["shape"]) == 3 and {"0", "1", "2"} <= answers["count"]


def test_grids_are_deterministic_for_a_seed_and_differ_across_seeds_and_splits():
    first, again = grid.build_rows("test", 6, seed=0), grid.build_rows("test", 6, seed=0)
    assert [r["images"][0]["bytes"] for r in first] == [r["images"][0]["bytes"] for r in again]
    assert [r["prompt"] for r in first] == [r["prompt"] for r in again]
    other_seed = grid.build_rows("test", 6, seed=1)
    assert [r["extra_info"]["source_ids"] for r in other_seed] != [r["extra_info"]["source_ids"] for r in first]
    # sample i is rebuilt alone, identically (the warm start draws training samples per step)
    sampler = grid.GridSampler("test", 0)
    assert grid.png_bytes(sampler.sample(4)["image"]) == first[4]["images"][0]["bytes"]
    # train grids come from easy-vqa's train images, test grids from its test images
    train_ids = {image["image_id"] for image in grid._source_images("train")}
    test_ids = {image["image_id"] for image in grid._source_images("test")}
    assert all(set(r["extra_info"]["source_ids"]) <= test_ids for r in first)
    assert all(set(r["extra_info"]["source_ids"]) <= train_ids for r in grid.build_rows("train", 6, seed=0))


def test_rows_follow_easy_vqas_verl_schema_and_record_the_task():
    grid_row, = grid.build_rows("test", 1, seed=0)
    easy_row, = easy_vqa.build_rows("test", 1, seed=0)
    assert grid_row.keys() == easy_row.keys()
    assert grid_row["data_source"] == grid.DATA_SOURCE and grid_row["extra_info"]["task"] == "grid"
    assert grid_row["prompt"][0]["content"].startswith("<image>") and grid_row["prompt"][0]["role"] == "user"
    assert grid_row["reward_model"]["style"] == "rule"


def test_target_is_a_chain_of_30_to_60_tokens(tiny_vlm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path)
    samples = [grid.GridSampler("train", 0).sample(index) for index in range(30)]
    lengths = [len(tokenizer(sample["target"])["input_ids"]) for sample in samples]
    assert all(30 <= length <= 60 for length in lengths), lengths
    assert grid.target_text(samples[0]["cells"], "x").count("cell ") == grid.CELLS


def test_a_data_folder_of_another_task_is_refused(tmp_path):
    easy_dir = tmp_path / "easy"
    easy_vqa.write_splits(easy_dir, train_size=2, val_size=2, quiet=True)
    before = (easy_dir / "train.parquet").read_bytes()
    with pytest.raises(grid.DataFolderError, match=r"data_source \['easy_vqa'\], not 'grid'.*another task than 'grid'"):
        grid.write_splits(easy_dir, train_size=2, val_size=2, quiet=True)
    assert (easy_dir / "train.parquet").read_bytes() == before  # nothing overwritten
    grid_dir = tmp_path / "grid"
    grid.write_splits(grid_dir, train_size=2, val_size=2, quiet=True)
    with pytest.raises(grid.DataFolderError, match="another task than 'easy-vqa'"):
        grid.check_data_folder(grid_dir, easy_vqa.DATA_SOURCE, "easy-vqa")
    assert set(pd.read_parquet(grid_dir / "test.parquet")["data_source"]) == {"grid"}
    grid.check_data_folder(grid_dir, grid.DATA_SOURCE, "grid")  # its own task is accepted
