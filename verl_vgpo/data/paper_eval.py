"""The ten benchmarks of the VGPO paper's tables -> one verl RL parquet per benchmark (``<key>.parquet``).

Keys (``data_source`` of every row, the routing key of ``vgpo-evaluate``) and where the rows come from:

==============  =========================================================  ============================
key             source (split or file)                                     rows reported
==============  =========================================================  ============================
mathvista       PAPO-Galaxy/PAPO_eval ``AI4Math_MathVista``                1,000
mathverse       PAPO-Galaxy/PAPO_eval ``AI4Math_MathVerse``                2,180
wemath          PAPO-Galaxy/PAPO_eval ``We_Math``                          1,740
mmk12           PAPO-Galaxy/PAPO_eval ``PAPO_MMK12``                       2,000
geomath         Look-Back's evaluation data ``GeoMath/GeoMath-data.json``  not stated
geo3k           PAPO-Galaxy/PAPO_eval ``hiyouga_geometry3k``               601
logicvista      PAPO-Galaxy/PAPO_eval ``lscpku_LogicVista``                447
counting        PAPO-Galaxy/PAPO_eval ``BUAADreamer_clevr_count_70k``      200
mmmu_pro        PAPO-Galaxy/PAPO_eval ``MMMU_MMMU_Pro``                    1,730
mathverse_v     PAPO-Galaxy/PAPO_eval ``AI4Math_MathVerse_vision_dependent``  1,308
==============  =========================================================  ============================

Sources: the split names and their image archives are PAPO-Eval's (``papo_eval/preprocess/prepare_data.py``,
``get_dataset_config``, and ``data/dataset_info.json`` in github.com/xhguo7/PAPO-Eval). The row counts are
those of the dataset listing and of a third-party harness that reads the same
splits; they are checked only as a printed note, never enforced. GeoMath is not part of PAPO_eval: it is
a file of Look-Back's evaluation data (``eval/utils/data_loaders.py:load_GeoMath_dataset`` in
github.com/PKU-YuanGroup/Look-Back reads ``GeoMath/GeoMath-data.json`` with images relative to
``GeoMath/``; the data is published as ``ShuoY/Look-Back-eval`` on the hub, as an archive), so it is
converted from a local copy only. Which data the VGPO paper used for its "Counting" column is not stated
in any source found; PAPO's counting split is used.

Row schema of both sources (LLaMA-Factory's ShareGPT layout, ``data/dataset_info.json`` of PAPO-Eval):
``messages`` = a ``user`` turn whose content holds one ``<image>`` per image, the question and the
answer-format instruction, and an ``assistant`` turn holding the reference answer; ``images`` = a list of
image paths relative to the extracted image archive (or embedded images). On the hub each split is a
parquet file with its images in a separate zip (``<split>_images.zip`` at the repository root).

Output row (verl's RL layout, as :mod:`verl_vgpo.data.vl_math`): ``prompt`` = the data's turns before the
answer, verbatim (the question with the data's own instruction; no instruction is added), ``images`` =
PNG bytes with the recipe's pixel bounds (262,144 .. 4,194,304 pixels, the VGPO authors' config) unless
other bounds are given, ``reward_model.ground_truth`` = the assistant turn (unboxed when stored boxed).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from verl_vgpo.data.vl_math import (
    IMAGE_PLACEHOLDER,
    PAPER_MAX_PIXELS,
    PAPER_MIN_PIXELS,
    ConversionError,
    as_image_list,
    check_pixel_bounds,
    output_features,
    strip_boxed,
    to_png_image,
)

PAPO_EVAL_HUB_ID = "PAPO-Galaxy/PAPO_eval"
LOOKBACK_EVAL_HUB_ID = "ShuoY/Look-Back-eval"
EXTRA_KEYS = ("source",)


@dataclass(frozen=True)
class Benchmark:
    key: str
    title: str
    split: str  # PAPO_eval split name, or the Look-Back file stem
    archive: Optional[str]  # image zip at the hub repository's root (None: not on a hub we can read)
    reported_rows: Optional[int]
    local_names: tuple[str, ...] = ()  # other file stems of the same split in local copies
    hub_id: Optional[str] = PAPO_EVAL_HUB_ID


BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark("mathvista", "MathVista", "AI4Math_MathVista", "AI4Math_MathVista_images.zip", 1000),
        Benchmark("mathverse", "MathVerse", "AI4Math_MathVerse", "AI4Math_MathVerse_images.zip", 2180),
        Benchmark("wemath", "WeMath", "We_Math", "We-Math_We-Math_images.zip", 1740, ("We-Math_We-Math",)),
        Benchmark("mmk12", "MMK12", "PAPO_MMK12", "PAPO_MMK12_test_images.zip", 2000),
        Benchmark("geomath", "GeoMath", "GeoMath-data", None, None, (), hub_id=None),
        Benchmark("geo3k", "Geo3K", "hiyouga_geometry3k", "hiyouga_geometry3k_images.zip", 601),
        Benchmark("logicvista", "LogicVista", "lscpku_LogicVista", "lscpku_LogicVista_images.zip", 447),
        Benchmark(
            "counting", "Counting", "BUAADreamer_clevr_count_70k", "BUAADreamer_clevr_count_70k_images.zip", 200
        ),
        Benchmark("mmmu_pro", "MMMU-Pro", "MMMU_MMMU_Pro", "MMMU_MMMU_Pro_images.zip", 1730),
        Benchmark(
            "mathverse_v",
            "MathVerse-V",
            "AI4Math_MathVerse_vision_dependent",
            "AI4Math_MathVerse_vision_dependent_images.zip",
            1308,
            ("AI4Math_MathVerse-vision-dependent",),
        ),
    )
}
PAPER_KEYS = tuple(BENCHMARKS)  # the paper's column order


def benchmark(key: str) -> Benchmark:
    if key not in BENCHMARKS:
        raise ConversionError(f"unknown benchmark {key!r}: choose from {', '.join(PAPER_KEYS)}")
    return BENCHMARKS[key]


def output_path(output_dir: str, key: str) -> str:
    return os.path.join(os.path.expanduser(output_dir), f"{key}.parquet")


# --------------------------------------------------------------------------------------------------
# Reading a split: the hub, or a local copy
# --------------------------------------------------------------------------------------------------


@dataclass
class SourceSplit:
    rows: Sequence[Mapping[str, Any]]
    image_roots: list[str]  # folders relative image paths are resolved against, in order
    where: str  # what the rows were read from (for messages and extra_info.source)


def _read_rows(path: str) -> list[Mapping[str, Any]]:
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as error:
                raise ConversionError(f"{path}: not JSON ({error})") from None
        if not isinstance(rows, list):
            raise ConversionError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        return rows
    import datasets

    return datasets.load_dataset("parquet", data_files=path)["train"]


def _extract(archive: str, scratch: str) -> str:
    target = os.path.join(scratch, os.path.basename(archive)[: -len(".zip")])
    try:
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target)
    except zipfile.BadZipFile as error:
        raise ConversionError(f"{archive}: not a zip archive ({error})") from None
    return target


def _local_split(bench: Benchmark, root: str, scratch: str) -> SourceSplit:
    """A split from a local copy: a clone of the hub repository (``data/<split>-*.parquet`` + the image zip,
    extracted or not), PAPO-Eval's prepared layout (``papo/<split>.json`` + ``images/``), or Look-Back's
    ``eval_data`` folder (``GeoMath/GeoMath-data.json``)."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise ConversionError(f"--local_dataset_path {root}: no such folder")
    stems = (bench.split, *bench.local_names)
    patterns = []
    for stem in stems:
        patterns += [f"data/{stem}-*.parquet", f"{stem}-*.parquet", f"{stem}.parquet", f"papo/{stem}.json",
                     f"data/papo/{stem}.json", f"{stem}.json", f"GeoMath/{stem}.json"]
    found = next((hits for pattern in patterns if (hits := sorted(glob.glob(os.path.join(root, pattern))))), None)
    if not found:
        raise ConversionError(
            f"{bench.key}: no rows for split {bench.split!r} in {root} (looked for {', '.join(patterns[:7])})"
        )
    rows: list[Mapping[str, Any]] = []
    for path in found:
        rows.extend(_read_rows(path))
    folder = os.path.dirname(found[0])
    roots = [folder, root, os.path.join(root, "images"), os.path.join(root, "data", "images"), os.path.join(root, "data")]
    if bench.archive and os.path.isfile(os.path.join(root, bench.archive)):
        roots.insert(0, _extract(os.path.join(root, bench.archive), scratch))
    return SourceSplit(rows=rows, image_roots=roots, where=os.path.relpath(found[0], root) if len(found) == 1 else root)


def _hub_split(bench: Benchmark, scratch: str) -> SourceSplit:
    if bench.hub_id is None or bench.archive is None:
        raise ConversionError(
            f"{bench.key}: not in {PAPO_EVAL_HUB_ID}; it is {bench.split}.json of Look-Back's evaluation data "
            f"({LOOKBACK_EVAL_HUB_ID}, an archive): unpack it and pass --lookback_data_path DIR"
        )
    import datasets
    from huggingface_hub import hf_hub_download

    try:
        rows = datasets.load_dataset(bench.hub_id, split=bench.split)
        archive = hf_hub_download(repo_id=bench.hub_id, filename=bench.archive, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 -- offline, proxy, auth: all end in the same advice
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"{bench.key}: cannot read split {bench.split!r} of {bench.hub_id} from the Hugging Face hub ({reason}); "
            f"copy the dataset repository to this machine and pass --local_dataset_path DIR"
        ) from None
    return SourceSplit(rows=rows, image_roots=[_extract(archive, scratch)], where=f"{bench.hub_id}:{bench.split}")


# --------------------------------------------------------------------------------------------------
# One row
# --------------------------------------------------------------------------------------------------


def _path_candidates(relative: str) -> list[str]:
    """``./data/images/a/b.png`` -> itself, ``data/images/a/b.png``, ``images/a/b.png``, ``a/b.png``, ``b.png``."""
    text = relative.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    parts = [part for part in text.split("/") if part]
    return [relative] + ["/".join(parts[start:]) for start in range(len(parts))]


def resolve_image(image: Any, image_roots: Sequence[str]) -> Any:
    """An image path relative to one of ``image_roots`` as an absolute path; other values unchanged."""
    if not isinstance(image, str) or os.path.isabs(image):
        return image
    tried = []
    for candidate in _path_candidates(image):
        for root in image_roots:
            path = os.path.join(root, candidate)
            if os.path.isfile(path):
                return path
            tried.append(path)
    raise ConversionError(f"image {image!r} not found (tried {', '.join(tried[:4])} ...)")


def _turns(messages: Any) -> list[dict[str, str]]:
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConversionError(f"'messages' must be a non-empty list of turns, got {type(messages).__name__}")
    turns = []
    for turn in messages:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise ConversionError(f"every turn of 'messages' needs a string 'role' and 'content', got {turn!r}"[:300])
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def convert_row(
    bench: Benchmark,
    row: Mapping[str, Any],
    index: int,
    image_roots: Sequence[str],
    where: str,
    min_pixels: Optional[int] = PAPER_MIN_PIXELS,
    max_pixels: Optional[int] = PAPER_MAX_PIXELS,
) -> dict[str, Any]:
    """One ShareGPT row (module docstring) -> one verl RL row; ConversionError names what is wrong."""
    for column in ("messages", "images"):
        if column not in row:
            raise ConversionError(f"missing column {column!r}; the row has {sorted(row)}")
    turns = _turns(row["messages"])
    if turns[-1]["role"] != "assistant":
        raise ConversionError(f"the last turn must be the assistant's answer, got role {turns[-1]['role']!r}")
    prompt, answer = turns[:-1], strip_boxed(turns[-1]["content"])
    if not answer:
        raise ConversionError("empty answer (assistant turn)")
    users = [turn for turn in prompt if turn["role"] == "user"]
    if len(users) != 1 or not users[0]["content"].strip():
        raise ConversionError(f"expected one non-empty user turn before the answer, got {len(users)}")
    images = as_image_list(row["images"].tolist() if hasattr(row["images"], "tolist") else row["images"])
    placeholders = sum(turn["content"].count(IMAGE_PLACEHOLDER) for turn in prompt)
    if not images or placeholders != len(images):
        raise ConversionError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    entries = []
    for number, image in enumerate(images):
        try:
            entries.append(to_png_image(resolve_image(image, image_roots), None, min_pixels, max_pixels))
        except ConversionError as error:
            raise ConversionError(f"image {number}: {error}") from None
        except OSError as error:  # PIL.UnidentifiedImageError and truncated files
            raise ConversionError(f"image {number} cannot be decoded ({error})") from None
    return {
        "data_source": bench.key,
        "prompt": prompt,
        "images": entries,
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "split": bench.split,
            "index": index,
            "question": users[0]["content"],
            "answer": answer,
            "source": where,
        },
    }


# --------------------------------------------------------------------------------------------------
# A benchmark -> its parquet file
# --------------------------------------------------------------------------------------------------


def write_parquet(rows: list[dict[str, Any]], path: str) -> None:
    """Write atomically: a run that fails leaves no partial ``path`` behind."""
    import datasets

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    try:
        datasets.Dataset.from_list(rows, features=output_features(EXTRA_KEYS)).to_parquet(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def convert_benchmark(
    key: str,
    output_dir: str,
    *,
    local_dataset_path: Optional[str] = None,
    lookback_data_path: Optional[str] = None,
    max_rows: Optional[int] = None,
    min_pixels: Optional[int] = PAPER_MIN_PIXELS,
    max_pixels: Optional[int] = PAPER_MAX_PIXELS,
    log: Callable[[str], None] = print,
) -> str:
    """Convert one benchmark to ``<output_dir>/<key>.parquet``; returns the path.

    ``geomath`` reads ``lookback_data_path`` (Look-Back's ``eval_data`` folder); the other nine read
    ``local_dataset_path`` when given, else the hub.
    """
    bench = benchmark(key)
    check_pixel_bounds(min_pixels, max_pixels)
    scratch = tempfile.mkdtemp(prefix=f"vgpo_{key}_")
    try:
        local = lookback_data_path if bench.hub_id is None else local_dataset_path
        if bench.hub_id is None and local is None:
            _hub_split(bench, scratch)  # raises the advice for data that only exists as a local copy
        source = _local_split(bench, local, scratch) if local is not None else _hub_split(bench, scratch)
        rows = []
        for index, row in enumerate(source.rows):
            if max_rows is not None and index >= max_rows:
                break
            try:
                rows.append(convert_row(bench, row, index, source.image_roots, source.where, min_pixels, max_pixels))
            except ConversionError as error:
                raise ConversionError(f"{key} ({source.where}) row {index}: {error}") from None
        if not rows:
            raise ConversionError(f"{key} ({source.where}): no rows")
        path = output_path(output_dir, key)
        write_parquet(rows, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    note = ""
    if max_rows is None and bench.reported_rows is not None and len(rows) != bench.reported_rows:
        note = f" (note: {bench.reported_rows} rows are reported for this split)"
    log(f"{key}: {len(rows)} rows from {source.where} -> {path}{note}")
    return path


def convert_benchmarks(keys: Iterable[str], output_dir: str, **options: Any) -> dict[str, str]:
    return {key: convert_benchmark(key, output_dir, **options) for key in keys}


# --------------------------------------------------------------------------------------------------
# The paper's numbers (greedy accuracy, %)
# --------------------------------------------------------------------------------------------------

# VGPO (arXiv 2604.09349), Tables 1-2, Qwen2.5-VL-7B, as copied by a third party (the paper PDF was not
# read). The VGPO row's MathVista 74.1, MathVerse-V 67.6, WeMath 72.5, MMK12 81.5, LogicVista 49.4 and Geo3K
# 45.8 match a second listing (wizwand.com's page for the paper); MathVerse, GeoMath, Counting, MMMU-Pro and
# the DAPO row rest on the first copy only. The 3B and 32B rows exist in the paper but no source for their
# numbers could be checked, so they are not recorded. The authors' model cards (MuMing0102/VGPO-RL-7B,
# -32B) say the numbers follow Look-Back's evaluation script at temperature 0.
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "7b": {
        "model": "Qwen2.5-VL-7B-Instruct",
        "methods": {
            "DAPO": dict(zip(PAPER_KEYS, (68.7, 69.6, 70.8, 77.0, 51.3, 45.6, 47.4, 85.5, 39.0, 66.6))),
            "VGPO": dict(zip(PAPER_KEYS, (74.1, 71.6, 72.5, 81.5, 54.3, 45.8, 49.4, 95.5, 40.5, 67.6))),
        },
    },
}
UNRECORDED_ROWS = ("3b", "32b")
