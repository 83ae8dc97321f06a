"""The paper's evaluation offline: PAPO_eval-shaped fixtures -> converter -> vgpo-evaluate --responses / --suite paper.

The fixtures follow the real row schema (LLaMA-Factory ShareGPT rows: ``messages`` = user turn with
``<image>`` + question + instruction, assistant turn = answer; ``images`` = paths relative to the split's
image zip) in the hub repository's layout (``data/<split>-00000-of-00001.parquet`` + ``<split>_images.zip``),
and Look-Back's ``GeoMath/GeoMath-data.json`` for geomath; images are tiny PNGs made here.
"""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from verl_vgpo.apps import evaluate
from verl_vgpo.data.paper_eval import BENCHMARKS, PAPER_KEYS, PAPER_RESULTS, convert_benchmarks

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
INSTRUCTION = "Put the final answer in \\boxed{}."
ANSWERS = ("B", "2.5")  # per benchmark: row 0 a letter, row 1 a number
SMALL = dict(min_pixels=3136, max_pixels=12544)  # few visual tokens for the tiny model


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (28, 28, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _row(key: str, index: int, image: str) -> dict:
    question = f"<image>{key} question {index}: which value? (A) 1 (B) 2.5\n{INSTRUCTION}"
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": ANSWERS[index]}],
            "images": [image]}


def write_sources(root: Path, broken_image: str | None = None) -> tuple[Path, Path]:
    """A PAPO_eval clone (nine splits) and a Look-Back eval_data folder (GeoMath), two rows each."""
    clone, lookback = root / "PAPO_eval", root / "eval_data" / "GeoMath"
    (clone / "data").mkdir(parents=True)
    (lookback / "images").mkdir(parents=True)
    for number, (key, bench) in enumerate(BENCHMARKS.items()):
        if bench.archive is None:
            rows = []
            for index in range(2):
                (lookback / "images" / f"{index}.png").write_bytes(_png(100 * number + index))
                rows.append({"id": f"geo-{index}", **_row(key, index, f"images/{index}.png")})
            (lookback / "GeoMath-data.json").write_text(json.dumps(rows))
            continue
        with zipfile.ZipFile(clone / bench.archive, "w") as archive:
            for index in range(2):
                data = b"not a png" if key == broken_image and index == 1 else _png(100 * number + index)
                archive.writestr(f"{bench.split}/{index}.png", data)
        rows = [_row(key, index, f"./data/images/{bench.split}/{index}.png") for index in range(2)]
        pd.DataFrame(rows).to_parquet(clone / "data" / f"{bench.split}-00000-of-00001.parquet")
    return clone, lookback.parent


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_sources")
    clone, lookback = write_sources(root)
    out = root / "converted"
    convert_benchmarks(PAPER_KEYS, str(out), local_dataset_path=str(clone), lookback_data_path=str(lookback),
                       log=lambda line: None, **SMALL)
    return {"root": root, "clone": clone, "lookback": lookback, "out": out}


def test_converter_writes_one_parquet_per_key_with_the_data_prompt(converted, tmp_path):
    for key in PAPER_KEYS:
        table = datasets.load_dataset("parquet", data_files=str(converted["out"] / f"{key}.parquet"))["train"]
        assert table["data_source"] == [key, key]
        for index, row in enumerate(table):
            assert row["prompt"] == [{"role": "user", "content": _row(key, index, "")["messages"][0]["content"]}]
            assert row["reward_model"]["ground_truth"] == ANSWERS[index]
            (image,) = row["images"]
            assert (image["min_pixels"], image["max_pixels"]) == (SMALL["min_pixels"], SMALL["max_pixels"])
            assert Image.open(io.BytesIO(image["bytes"])).size == (28, 28)
            assert row["extra_info"]["split"] == BENCHMARKS[key].split and row["extra_info"]["index"] == index
    # the recipe's pixel bounds by default (the VGPO authors' 512 x 512 .. 2048 x 2048)
    (path,) = convert_benchmarks(["geo3k"], str(tmp_path), local_dataset_path=str(converted["clone"]),
                                 log=lambda line: None).values()
    image = datasets.load_dataset("parquet", data_files=path)["train"][0]["images"][0]
    assert (image["min_pixels"], image["max_pixels"]) == (262_144, 4_194_304)


def _converter(*args):
    command = [sys.executable, str(REPO / "examples/data_preprocess/paper_eval.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=CHILD_ENV, cwd=REPO)


def test_converter_errors_are_one_line_naming_the_source(tmp_path):
    clone, _ = write_sources(tmp_path / "src", broken_image="wemath")
    offline = _converter("--benchmarks", "mathvista", "--output_dir", tmp_path / "a")
    assert offline.returncode == 2
    (line,) = offline.stderr.strip().splitlines()[-1:]
    assert "PAPO-Galaxy/PAPO_eval" in line and "--local_dataset_path" in line and "Traceback" not in offline.stderr
    geomath = _converter("--benchmarks", "geomath", "--output_dir", tmp_path / "a")
    assert geomath.returncode == 2 and "--lookback_data_path" in geomath.stderr
    broken = _converter("--local_dataset_path", clone, "--benchmarks", "wemath", "--output_dir", tmp_path / "b")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "wemath (data/We_Math-00000-of-00001.parquet) row 1: image 0 cannot be decoded" in broken.stderr
    assert not (tmp_path / "b" / "wemath.parquet").exists()  # nothing half-written


# (response for row 0 = "B", response for row 1 = "2.5"): papo / lookback accuracy of each
PLANTED = {
    "mathvista": (["\\boxed{B}"], ["\\boxed{2.50}"]),  # 1, 1
    "mathverse": (["B"], ["\\boxed{5/2}"]),  # bare letter 0; 5/2 = 2.5 1
    "wemath": (["\\boxed{(B)}"], ["\\boxed{\\frac{5}{2}}"]),  # 1, 1
    "mmk12": (["\\boxed{B. 2.5}"], ["\\boxed{2.5} no, \\boxed{3}"]),  # papo 0 / lookback 1; last box 0
    "geomath": ([""], ["< think > </ think >\\boxed{2.5}"]),  # empty 0; white space 1
    "geo3k": (["\\boxed{A}"], ["\\boxed{2.5}"]),  # 0, 1
    "logicvista": (["\\boxed{B}"], ["2.5"]),  # 1, unboxed 0
    "counting": (["\\boxed{B}"], ["\\boxed{2.5}"]),
    "mmmu_pro": (["\\boxed{C}"], ["\\boxed{2.4}"]),
    "mathverse_v": (["\\boxed{b}"], ["\\boxed{2.5}"]),  # grade_answer is case-insensitive for letters
}
PAPO = {"mathvista": 100, "mathverse": 50, "wemath": 100, "mmk12": 0, "geomath": 50, "geo3k": 50,
        "logicvista": 50, "counting": 100, "mmmu_pro": 0, "mathverse_v": 100}


def _responses_file(path: Path, planted=PLANTED, extra=()):
    with open(path, "w", encoding="utf-8") as handle:
        for key, per_row in planted.items():
            for index, responses in enumerate(per_row):
                handle.write(json.dumps({"protocol": "greedy", "data_source": key, "index": index,
                                         "responses": responses}) + "\n")
        for record in extra:
            handle.write(json.dumps(record) + "\n")
    return path


def test_given_responses_are_scored_by_the_paper_protocol(converted, tmp_path):
    data = [str(converted["out"] / f"{key}.parquet") for key in PAPER_KEYS]
    responses = _responses_file(tmp_path / "given.jsonl")
    summary = evaluate.run(["--data", *data, "--responses", str(responses), "--output_dir", str(tmp_path / "papo")])
    table = {row["data_source"]: row for row in summary["table"]}
    assert {key: table[key]["greedy"] for key in PAPER_KEYS} == PAPO
    for key in PAPER_KEYS:
        assert summary["rewards"][key]["reward"] == f'{evaluate.PAPER_REWARD} {{"scoring": "papo"}}'
    assert summary["backend"] == "responses" and summary["protocols"][0]["name"] == "greedy"
    assert table["mathverse"]["parse_failure"]["greedy"] == 0.5  # the bare "B" has no box
    saved = [json.loads(line) for line in (tmp_path / "papo" / "generations.jsonl").read_text().splitlines()]
    assert [(r["data_source"], r["index"], r["responses"]) for r in saved][:2] == [
        ("mathvista", 0, ["\\boxed{B}"]), ("mathvista", 1, ["\\boxed{2.50}"])]

    lookback = evaluate.run(["--data", *data, "--responses", str(responses), "--scoring", "lookback",
                             "--output_dir", str(tmp_path / "lookback")])
    rows = {row["data_source"]: row["greedy"] for row in lookback["table"]}
    assert rows["mmk12"] == 50  # "B. 2.5" passes Look-Back's letter rule
    assert rows["geomath"] == 50  # "" reads as "None", which does not contain B
    assert {key: value for key, value in rows.items() if key in PAPER_KEYS and key != "mmk12"} == {
        key: value for key, value in PAPO.items() if key != "mmk12"}


def _main_error(argv, capsys) -> str:
    assert evaluate.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vgpo-evaluate")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line_naming_file_and_row(converted, tmp_path, capsys):
    geo3k = str(converted["out"] / "geo3k.parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier run")
    base = ["--data", geo3k, "--output_dir", str(out)]
    two_rows = {"geo3k": PLANTED["geo3k"]}

    extra = [{"protocol": "greedy", "data_source": "geo3k", "index": 7, "responses": ["x"]}]
    line = _main_error(base + ["--responses", str(_responses_file(tmp_path / "a.jsonl", two_rows, extra))], capsys)
    assert "a.jsonl line 3: geo3k row 7 does not exist in the data (2 rows loaded)" in line
    line = _main_error(base + ["--responses", str(_responses_file(tmp_path / "b.jsonl", {"geo3k": PLANTED["geo3k"][:1]}))], capsys)
    assert "1 row(s) have no greedy response: geo3k row 1 (" in line and "geo3k.parquet" in line
    extra = [{"protocol": "greedy", "data_source": "mathvista", "index": 0, "responses": ["x"]}]
    line = _main_error(base + ["--responses", str(_responses_file(tmp_path / "c.jsonl", two_rows, extra))], capsys)
    assert "c.jsonl line 3: data_source 'mathvista' is not in the data" in line

    # an unknown data_source, a missing column, an image that cannot be decoded
    frame = pd.read_parquet(geo3k)
    frame["data_source"] = "my_bench"
    frame.to_parquet(tmp_path / "unknown.parquet")
    line = _main_error(["--data", str(tmp_path / "unknown.parquet"), "--responses", str(tmp_path / "a.jsonl"),
                        "--output_dir", str(out)], capsys)
    assert "unknown.parquet row 0: no reward for data_source 'my_bench'" in line
    frame.drop(columns=["reward_model"]).to_parquet(tmp_path / "no_reward_model.parquet")
    line = _main_error(["--data", str(tmp_path / "no_reward_model.parquet"), "--model_path", str(tmp_path),
                        "--image_patch_size", "14", "--output_dir", str(out)], capsys)
    assert "no_reward_model.parquet: missing column(s) ['reward_model']" in line
    frame = pd.read_parquet(geo3k)
    frame.at[1, "images"] = [{**frame.at[1, "images"][0], "bytes": b"not an image"}]
    frame.to_parquet(tmp_path / "broken.parquet")
    line = _main_error(["--data", str(tmp_path / "broken.parquet"), "--model_path", str(tmp_path),
                        "--image_patch_size", "14", "--output_dir", str(out)], capsys)
    assert "broken.parquet row 1 image 0 cannot be decoded" in line
    line = _main_error(base + ["--suite", "paper", "--responses", str(tmp_path / "a.jsonl")], capsys)
    assert "--suite paper reads --data_dir" in line
    assert (out / "results.json").read_text() == "earlier run"  # no error touched the earlier outputs
    assert sorted(os.listdir(out)) == ["results.json"]


def test_paper_row_without_a_verified_source_is_refused(converted, tmp_path, capsys):
    responses = _responses_file(tmp_path / "given.jsonl")
    line = _main_error(["--suite", "paper", "--data_dir", str(converted["out"]), "--responses", str(responses),
                        "--paper_row", "32b", "--output_dir", str(tmp_path / "x")], capsys)
    assert "32b" in line and "could not be checked against a source" in line and "recorded rows: 7b" in line


def test_suite_paper_end_to_end_on_the_tiny_model(converted, tiny_vlm_path, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for key in PAPER_KEYS:  # one benchmark missing: converted from the local copy by the suite itself
        if key != "counting":
            (data_dir / f"{key}.parquet").write_bytes((converted["out"] / f"{key}.parquet").read_bytes())
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "verl_vgpo.apps.evaluate", "--suite", "paper", "--data_dir", str(data_dir),
               "--local_dataset_path", str(converted["clone"]), "--model_path", str(tiny_vlm_path),
               "--backend", "hf", "--max_new_tokens", "6", "--batch_size", "10", "--output_dir", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=CHILD_ENV, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (data_dir / "counting.parquet").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert summary["backend"] == "hf" and [p["name"] for p in summary["protocols"]] == ["greedy"]
    assert summary["protocols"][0]["temperature"] == 0.0
    comparison = summary["paper_comparison"]
    assert [entry["benchmark"] for entry in comparison] == [*PAPER_KEYS, "average"]
    ours = {row["data_source"]: row["greedy"] for row in summary["table"]}
    paper = PAPER_RESULTS["7b"]["methods"]
    for entry in comparison[:-1]:
        key = entry["benchmark"]
        assert entry["ours"] == ours[key]
        assert entry["VGPO"] == paper["VGPO"][key] and entry["diff_VGPO"] == pytest.approx(ours[key] - paper["VGPO"][key])
        assert entry["diff_DAPO"] == pytest.approx(ours[key] - paper["DAPO"][key])
    average = comparison[-1]
    assert average["VGPO"] == pytest.approx(np.mean(list(paper["VGPO"].values())))
    assert average["ours"] == pytest.approx(np.mean([ours[key] for key in PAPER_KEYS]))
    assert "| average |" in completed.stdout and "| average |" in (out / "results.md").read_text()
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(PAPER_KEYS)
    # the saved responses score the same when given back (--responses), without a model
    rescored = evaluate.run(["--suite", "paper", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "again"),
                             "--responses", str(out / "generations.jsonl")])
    assert rescored["table"] == summary["table"]
