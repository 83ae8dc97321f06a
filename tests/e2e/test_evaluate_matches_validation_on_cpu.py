"""vgpo-evaluate's greedy accuracy equals verl's own validation accuracy, end to end on CPU.

One ``main_ppo`` run with ``val_before_train`` and ``val_only`` (no training step) through the documented
CPU command (``examples/run_vgpo_tiny_cpu.sh``: hf_cpu rollout, verl's agent loop, dataset, reward
manager) and one ``vgpo-evaluate`` run on the same tiny VLM, parquet and reward.

The reward is a custom one given to both exactly as training takes it (``reward.custom_reward_function``
vs ``--reward``): the parity of a checksum of the response text. A random tiny VLM never answers easy-vqa
right, so exact match would be 0 on both sides whatever they generate; the checksum is 1 for about half
of the responses and flips with any change of the text, so equal accuracies mean equal generations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verl_vgpo.apps import runner

pytestmark = pytest.mark.slow  # launches main_ppo or trains a warm start


RUN_TIMEOUT_S = 420
VAL_ROWS = 16
RESPONSE_LENGTH = 16
VAL_ACC_KEY = "val-core/easy_vqa/acc/mean@1"

CHECKSUM_REWARD = '''
import zlib


def checksum_parity(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    acc = float(zlib.crc32(solution_str.encode("utf-8")) % 2)
    return {"score": acc, "acc": acc}
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm
    from verl_vgpo.data.easy_vqa import write_splits

    root = tmp_path_factory.mktemp("evaluate_vs_validation")
    model_dir = Path(build_tiny_vlm(root / "tiny_vlm", seed=0))
    data_dir = root / "easy_vqa"
    write_splits(data_dir, train_size=4, val_size=VAL_ROWS, seed=0, quiet=True)
    reward = root / "checksum_reward.py"
    reward.write_text(CHECKSUM_REWARD)
    return {"root": root, "model": model_dir, "data": data_dir, "reward": reward}


def test_cli_greedy_accuracy_equals_verl_validation_accuracy(workspace, monkeypatch):
    root, reward = workspace["root"], workspace["reward"]
    monkeypatch.setenv("RESPONSE_LENGTH", str(RESPONSE_LENGTH))
    val_dump = root / "validation"
    result = runner.run_main_ppo(
        "grpo",
        1,
        root / "main_ppo",
        workspace["model"],
        workspace["data"],
        RUN_TIMEOUT_S,
        [
            "trainer.val_before_train=True",
            "trainer.val_only=True",
            f"trainer.validation_data_dir={val_dump}",
            f"reward.custom_reward_function.path={reward}",
            "reward.custom_reward_function.name=checksum_parity",
        ],
        quiet=True,
    )
    records = runner.read_metrics(result["metrics_path"])
    validation = next(record for record in records if VAL_ACC_KEY in record)
    verl_acc = 100.0 * float(validation[VAL_ACC_KEY])
    (dump_file,) = sorted(val_dump.glob("*.jsonl"))
    verl_rows = [json.loads(line) for line in dump_file.read_text().splitlines() if line.strip()]
    assert len(verl_rows) == VAL_ROWS

    out = root / "evaluate"
    command = [
        sys.executable, "-m", "verl_vgpo.apps.evaluate",
        "--model_path", str(workspace["model"]),
        "--data", str(workspace["data"] / "test.parquet"),
        "--output_dir", str(out),
        "--protocols", "greedy",
        "--backend", "hf",
        "--max_new_tokens", str(RESPONSE_LENGTH),
        "--reward", f"{reward}:checksum_parity",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    cli_acc = next(row for row in summary["table"] if row["data_source"] == "easy_vqa")["greedy"]
    assert summary["rewards"]["easy_vqa"]["reward"] == f"{reward}:checksum_parity"

    # the checksum is not constant: both 0 and 1 occur, so agreement is not trivial
    assert 0 < cli_acc < 100, f"degenerate checksum accuracy {cli_acc}"
    assert abs(cli_acc - verl_acc) <= 100.0 / VAL_ROWS + 1e-9, (cli_acc, verl_acc)
    cli_pairs = sorted(
        (str(r["ground_truth"]), r["responses"][0])
        for r in (json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines())
    )
    verl_pairs = sorted((str(row["gts"]), row["output"]) for row in verl_rows)
    same = sum(min(cli_pairs.count(pair), verl_pairs.count(pair)) for pair in set(cli_pairs))
    assert same >= VAL_ROWS - 1, list(zip(cli_pairs, verl_pairs))
