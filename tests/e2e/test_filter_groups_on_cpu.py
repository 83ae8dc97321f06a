"""vgpo-experiment end to end, with verl's ``algorithm.filter_groups`` on: one seed, 2 steps per algorithm,
each through verl's real ``main_ppo`` on the warm-started tiny VLM with the strict 0/1 reward.

One pair of runs checks three things (issue 12 §5, issue 14 §1):

* the experiment driver writes report.json / report.md with one entry per seed and each run's own metrics;
* filter_groups really acts: verl logs evicted groups, and every group the VGPO step trained on has mixed
  rewards and the batch is full again (refilled);
Not checked here (issue 14 §1 asks for it): that the focus of every kept row is its own. A recomputation
of the dumped rollouts' focus with a plain HF forward cannot tell an aligned from a misaligned batch on
this tiny model: its image features barely differ between images, and re-tokenising the dumped response
text differs from the sampled ids, so the recomputed statistics were 3.6e-3 from the logged ones with each
row's own response and 3.4e-3 with another group's (measured). The per-row alignment itself is tested in
tests/wiring (response_aligned_focus, the trainer layer on verl's real trainer classes).

Nothing is mocked: only the CPU platform and the hf_cpu rollout stand in for GPU pieces (verl registries).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from verl_vgpo.apps import experiment
from verl_vgpo.data import easy_vqa

STEPS = 2
BATCH_SIZE = 8
ROLLOUT_N = 4
RESPONSE_LENGTH = 32
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def experiment_out(tmp_path_factory):
    from verl_vgpo.cpu.warm_start import WarmStartSettings, build_warm_start

    root = tmp_path_factory.mktemp("filter_groups")
    # a short warm start (about 45 % held-out accuracy): rollouts of one prompt often all agree, often not
    model_dir = Path(build_warm_start(root / "warm", WarmStartSettings(steps=120, eval_size=32), progress=False))
    data_dir = root / "data"
    data_dir.mkdir()
    # unique question texts, so every dumped prompt maps back to its own image
    rows = pd.DataFrame(easy_vqa.build_rows("train", 400, seed=0))
    rows = rows[~rows["extra_info"].map(lambda info: info["question"]).duplicated()].head(96)
    rows.to_parquet(data_dir / "train.parquet")
    pd.DataFrame(easy_vqa.build_rows("test", 8, seed=0)).to_parquet(data_dir / "test.parquet")

    out = root / "experiment"
    code = experiment.main([
        "--out", str(out), "--seeds", "0", "--steps", str(STEPS), "--model-dir", str(model_dir),
        "--data-dir", str(data_dir), "--train-size", "96", "--val-size", "8", "--timeout", str(RUN_TIMEOUT_S),
        "--set", f"BATCH_SIZE={BATCH_SIZE}", f"ROLLOUT_N={ROLLOUT_N}", f"RESPONSE_LENGTH={RESPONSE_LENGTH}", "LR=0",
        "--",
        "algorithm.filter_groups.enable=True", "algorithm.filter_groups.metric=acc",
        "algorithm.filter_groups.max_inflight_gen_batches=2", "trainer.rollout_data_dir=rollouts",
    ])
    assert code == 0, "vgpo-experiment failed (see the captured output)"
    return {"out": out, "model": model_dir, "data": data_dir}


def _records(out: Path, algo: str) -> list[dict]:
    from verl_vgpo.apps.demo import read_metrics

    return read_metrics(out / "runs" / f"{algo}_seed0" / "metrics.jsonl")


def _dumped(out: Path, algo: str, step: int) -> list[dict]:
    path = out / "runs" / f"{algo}_seed0" / "rollouts" / f"{step}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if not str(row["uid"]).startswith("pad")]


def test_driver_writes_the_report_with_each_runs_own_metrics(experiment_out):
    out = experiment_out["out"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["algorithms"]) == {"grpo", "vgpo"}
    for algo, entry in report["algorithms"].items():
        assert entry["seeds"] == [0]
        assert entry["metrics_file"] == [f"runs/{algo}_seed0/metrics.jsonl"]
        assert (out / entry["metrics_file"][0]).is_file()
        assert len(entry["reward"][0]) == STEPS
        assert 0.0 <= entry["val_acc_before"][0] <= 1.0 and 0.0 <= entry["val_acc_after"][0] <= 1.0
        # learning rate 0: the policy never changes, so greedy validation cannot either
        assert entry["val_acc_before"][0] == entry["val_acc_after"][0]
    assert report["algorithms"]["vgpo"]["focus_first_third"][0][0] is not None
    assert report["algorithms"]["grpo"]["focus_first_third"][0] == [None] * STEPS
    text = (out / "report.md").read_text()
    assert "| grpo |" in text and "| vgpo |" in text and "![curves](curves.png)" in text
    # the same folder again: refused, nothing overwritten
    before = (out / "report.json").read_bytes()
    assert experiment.main(["--out", str(out), "--seeds", "0", "--steps", "1"]) == 1
    assert (out / "report.json").read_bytes() == before


def test_filter_groups_evicts_all_equal_groups_and_refills_the_batch(experiment_out):
    for algo in ("grpo", "vgpo"):
        records = [r for r in _records(experiment_out["out"], algo) if r["step"] >= 1]
        evicted = sum(value for r in records for key, value in r.items() if key.endswith("filter_groups/evicted_samples"))
        assert evicted > 0, f"{algo}: no group was evicted in {STEPS} steps; logged {sorted(records[0])}"
        for step in range(1, STEPS + 1):
            groups = defaultdict(list)
            for row in _dumped(experiment_out["out"], algo, step):
                groups[row["uid"].rsplit("_", 2)[0]].append(row["score"])
            assert len(groups) == BATCH_SIZE, f"{algo} step {step}: {len(groups)} groups, batch not refilled"
            for uid, scores in groups.items():
                assert len(scores) == ROLLOUT_N and len(set(scores)) > 1, f"{algo} step {step}: kept group {uid} {scores}"
