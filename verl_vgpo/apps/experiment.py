"""``vgpo-experiment``: GRPO vs VGPO from the same warm start, same data, same seeds, on CPU.

    vgpo-experiment --out artifacts/experiment            # 3 seeds, full length (about an hour on 2 cores)
    vgpo-experiment --quick --out artifacts/experiment    # 2 seeds, few steps (under 20 minutes)
    vgpo-experiment --task grid --out artifacts/experiment_grid   # the grid task (verl_vgpo.data.grid): 5 seeds
                                                                  # x 20 steps, about 40 minutes on 2 cores

Each (algorithm, seed) is one run of verl's real ``main_ppo`` through the CPU run script shipped with the
package (the demo's: warm-started tiny VLM, strict 0/1 reward, greedy validation before the first step and
after the last). The settings are identical for both algorithms except ``algorithm.adv_estimator``; the seed
sets verl's data order (``data.seed``). Nothing is tuned toward either algorithm: the demo's settings are used.

Writes to ``--out``:
  runs/<algo>_seed<k>/metrics.jsonl   each run's own metrics (verl's file logger truncates on resume)
  report.json                         {"settings": ..., "algorithms": {algo: {"seeds", "val_acc_before",
                                      "val_acc_after", "wall_s", per-step curves ...}}}
  runs/<algo>_seed<k>/validation/     easy-vqa: verl's validation dumps (report.json's val_by_kind: accuracy
                                      and answers per question kind before and after, as the demo's)
  runs/<algo>_seed<k>/analysis/       vgpo-analyze of the run's final checkpoint on the held-out questions
  analysis_before/                    vgpo-analyze of the warm start (the curve before RL)
  report.md                           mean ± sd tables, the measured difference against the seed spread, plots
  curves.png, focus.png, forgetting.png, final_forgetting.png

The forgetting curve of the final checkpoints (``--analyze-rows`` held-out questions, greedy, ``vgpo-analyze``'s
code) is measured for both algorithms alike: every run saves its last step as a Hugging Face checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

from verl_vgpo.apps import demo, runner
from verl_vgpo.data import easy_vqa, grid

REPORT_FORMAT = "vgpo-experiment/1"
ALGORITHMS = ("grpo", "vgpo")
FULL = {"seeds": 3, "steps": 40}  # 6 runs of 8-10 min on 2 cores: about an hour (docs/experiments.md)
QUICK = {"seeds": 2, "steps": 10}
# the grid's full run: 5 seeds (the seed spread judges a difference), 20 steps (10 runs of 3.5 min on 2 cores)
TASK_PRESETS = {"easy-vqa": {"full": FULL, "quick": QUICK},
                "grid": {"full": {"seeds": 5, "steps": 20}, "quick": QUICK}}
ANALYZE_ROWS = 100  # held-out questions vgpo-analyze scores per final checkpoint (0: no analysis)
POSITION_BINS = 5  # as the training metric vgpo/focus/pos_bin_k
MIN_TIMEOUT_S = 120.0  # below this a run cannot even start Ray and validate once on 2 cores
TASKS = ("easy-vqa", "grid")
TASK_DATA_SOURCE = {"easy-vqa": easy_vqa.DATA_SOURCE, "grid": grid.DATA_SOURCE}
# run-script knobs a task changes from the demo's: the grid chain is ~40 tokens (easy-vqa's ~12)
TASK_KNOBS = {"easy-vqa": {}, "grid": {"RESPONSE_LENGTH": 64}}


class ExperimentError(RuntimeError):
    """Bad experiment input or a failed run, with the reason."""


# ---------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------


def check_settings(algorithms, seeds, steps: int, knobs: dict, timeout_s: float) -> None:
    unknown = [algo for algo in algorithms if algo not in ALGORITHMS]
    if unknown:
        raise ExperimentError(f"unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
    if len(set(algorithms)) != len(algorithms) or not algorithms:
        raise ExperimentError(f"algorithms must be distinct and non-empty, got {list(algorithms)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ExperimentError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    if steps < 1:
        raise ExperimentError(f"budget too small to train: --steps must be >= 1, got {steps}")
    if int(knobs["TRAIN_SIZE"]) < int(knobs["BATCH_SIZE"]) * steps:
        raise ExperimentError(
            f"budget too small to train: {steps} steps of {knobs['BATCH_SIZE']} prompts need at least "
            f"{int(knobs['BATCH_SIZE']) * steps} training prompts, --train-size is {knobs['TRAIN_SIZE']}"
        )
    if int(knobs["VAL_SIZE"]) < 1:
        raise ExperimentError(f"--val-size must be >= 1, got {knobs['VAL_SIZE']}")
    if timeout_s < MIN_TIMEOUT_S:
        raise ExperimentError(f"budget too small to train: --timeout {timeout_s:.0f}s per run is below "
                              f"{MIN_TIMEOUT_S:.0f}s (Ray start-up and one validation alone take about that)")


def claim_output_folder(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse a folder holding another experiment's results (or any unrelated files) unless --overwrite."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    report = out_dir / "report.json"
    if overwrite:
        if not report.exists() and not (out_dir / "settings.json").exists():
            raise ExperimentError(f"{out_dir} is not empty and holds no experiment; --overwrite only replaces "
                                  "an earlier experiment's results")
        return
    if report.exists() or (out_dir / "settings.json").exists():
        previous = json.loads((out_dir / "settings.json").read_text()) if (out_dir / "settings.json").exists() else {}
        what = "the same settings" if previous == settings else f"other settings ({previous})"
        raise ExperimentError(f"{out_dir} already holds an experiment's results ({what}); nothing was overwritten. "
                              "Use another --out folder or pass --overwrite")
    raise ExperimentError(f"{out_dir} is not empty and holds no experiment; refusing to write into it")


def prepare_grid_inputs(model_dir: Path, data_dir: Path, family: str, train_size: int, val_size: int,
                        warm_start: bool = True, build_data: bool = True) -> None:
    """The grid task's warm start (``vgpo-tiny-vlm --warm-start --task grid``, cached) and parquet files,
    built when missing or stale; a data folder of another task is refused."""
    from verl_vgpo.cpu.warm_start import build_warm_start, task_settings

    try:
        easy_vqa._import_easy_vqa()
        grid.check_data_folder(data_dir, grid.DATA_SOURCE, "grid")
    except (easy_vqa.EasyVQAMissingError, grid.DataFolderError) as error:
        raise ExperimentError(str(error)) from error
    if warm_start:
        build_warm_start(model_dir, task_settings("grid", family=family))  # what vgpo-tiny-vlm --task grid builds
    elif not (model_dir / "config.json").exists():
        raise ExperimentError(f"--model-dir {model_dir} holds no checkpoint")
    wanted = {"task": "grid", "train_size": train_size, "val_size": val_size, "seed": 0}
    record_path = data_dir / grid.SETTINGS_FILE
    recorded = json.loads(record_path.read_text()) if record_path.exists() else {}
    if build_data and {key: recorded.get(key) for key in wanted} != wanted:
        print(f"building grid parquet files in {data_dir} ({train_size} train, {val_size} held-out)", flush=True)
        grid.write_splits(data_dir, train_size=train_size, val_size=val_size, seed=0, quiet=True)
    try:
        demo.check_model_has_image_tokens(model_dir)
        for split_file in ("train.parquet", "test.parquet"):
            demo.check_dataset_has_images(data_dir / split_file)
    except demo.DemoError as error:
        raise ExperimentError(str(error)) from error


# ---------------------------------------------------------------------------------------------------
# collecting one run
# ---------------------------------------------------------------------------------------------------


def _curve(records: list[dict], key: str) -> list[float | None]:
    """Per trained step (1..N) the metric's value, None where not logged."""
    return [float(record[key]) if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]) else None
            for record in records if record["step"] >= 1]


def collect_run(records: list[dict], wall_s: float) -> dict:
    """One run's numbers: validation before/after, per-step curves, focus early/late."""
    summary = demo.run_summary(records, wall_s)
    matrix = demo.focus_position_matrix(records)
    return {
        **summary,
        "reward": _curve(records, runner.REWARD_METRIC),
        "step_time_s": _curve(records, runner.STEP_TIME_METRIC),
        "val_acc": demo.validation_accuracy(records),
        "focus_first_third": _curve(records, runner.FOCUS_FIRST_METRIC),
        "focus_last_third": _curve(records, runner.FOCUS_LAST_METRIC),
        "focus_pos_bins": matrix[1] if matrix else None,
    }


# every run starts from the warm start: a checkpoint left in its folder by an earlier run (--overwrite) is not resumed
RUN_OVERRIDES = ["trainer.resume_mode=disable"]
# the keys the final-checkpoint analysis sets; a user override of one would leave the analysis without its checkpoint
CHECKPOINT_KEYS = ("trainer.save_freq", "trainer.default_local_dir", "trainer.resume_mode",
                   "actor_rollout_ref.actor.checkpoint.")


def final_checkpoint_overrides(steps: int) -> list[str]:
    """Hydra overrides that make a run save its last step with a Hugging Face copy for vgpo-analyze."""
    return [f"trainer.save_freq={steps}", "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]"]


def check_overrides(overrides: list[str], analyze_rows: int) -> None:
    """Refuse, before anything runs, a user override of a key the experiment's own run settings rely on."""
    dumps = [item for item in overrides if runner.override_key(item) == "trainer.validation_data_dir"]
    if dumps:
        raise ExperimentError(f"override(s) {dumps}: the experiment writes each run's validation dumps to "
                              f"runs/<algo>_seed<k>/{demo.VALIDATION_DIR} itself (read for the accuracy by question kind); "
                              "drop them")
    keys = CHECKPOINT_KEYS if analyze_rows else ("trainer.resume_mode",)
    clashing = [item for item in overrides if runner.override_key(item).startswith(keys)]
    if clashing:
        raise ExperimentError(
            f"override(s) {clashing} change how runs save or resume checkpoints, which the experiment sets itself "
            "(each run starts from the warm start; with --analyze-rows > 0 it saves its last step for vgpo-analyze); "
            "drop them" + (" or pass --analyze-rows 0" if analyze_rows else ""))


def final_hf_checkpoint(run_dir: Path, steps: int) -> Path:
    path = run_dir / "checkpoints" / f"global_step_{steps}" / "actor" / "huggingface"
    if not (path / "config.json").is_file():
        raise ExperimentError(f"{run_dir.name}: no Hugging Face checkpoint of step {steps} at {path}")
    return path


def analyze_checkpoint(model: Path, label: str, data_dir: Path, out: Path, rows: int, max_new_tokens: int) -> dict:
    """vgpo-analyze of one checkpoint on the held-out parquet: {"bins": mean focus per position bin,
    "first_third", "last_third", "last_over_first", "responses", "tokens"} (the files are in ``out``)."""
    import csv

    from verl_vgpo.apps import analyze

    try:
        summary = analyze.run(["--model", str(model), "--label", label, "--data", str(data_dir / "test.parquet"),
                               "--out", str(out), "--max_rows", str(rows), "--max_new_tokens", str(max_new_tokens),
                               "--bins", str(POSITION_BINS)])
    except analyze.AnalyzeError as error:
        raise ExperimentError(f"vgpo-analyze of {label}: {error}") from error
    with open(out / "curve.csv", newline="") as handle:
        bins = [float(row["mean_focus"]) if row["mean_focus"] else None for row in csv.DictReader(handle)]
    entry = summary["models"][label]
    return {"bins": bins, **{key: entry[key] for key in ("first_third", "last_third", "last_over_first",
                                                         "responses", "tokens")}}


def assemble_report(settings: dict, runs: dict[str, list[dict]], before_rl: dict | None = None) -> dict:
    """{"format", "settings", "algorithms": {algo: {"seeds": [...], field: [per seed, same order]}}}."""
    algorithms = {}
    for algo, seed_runs in runs.items():
        entry = {"seeds": [run["seed"] for run in seed_runs]}
        for field in ("val_acc_before", "val_acc_after", "steps", "wall_s", "reward", "step_time_s", "val_acc",
                      "focus_first_third", "focus_last_third", "focus_pos_bins", "metrics_file", "final_focus",
                      "final_focus_error", "val_by_kind", "val_by_kind_error"):
            entry[field] = [run.get(field) for run in seed_runs]
        algorithms[algo] = entry
    return {"format": REPORT_FORMAT, "settings": settings, "algorithms": algorithms, "before_rl_focus": before_rl}


# ---------------------------------------------------------------------------------------------------
# statistics and the report
# ---------------------------------------------------------------------------------------------------


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_sd(values) -> tuple[float, float] | None:
    """(mean, sample sd; 0 for one value) of the finite values, None when there are none."""
    values = _finite(values)
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(stat: tuple[float, float] | None, digits: int = 3) -> str:
    return "n/a" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def algorithm_table_row(entry: dict) -> dict:
    """Per algorithm: mean ± sd over seeds of the report's table columns (None where not measured)."""
    per_seed_reward = [statistics.fmean(_finite(curve)) if _finite(curve) else None for curve in entry["reward"]]
    focus_first = [statistics.fmean(_finite(c)) if _finite(c) else None for c in entry["focus_first_third"]]
    focus_last = [statistics.fmean(_finite(c)) if _finite(c) else None for c in entry["focus_last_third"]]
    ratio = [last / first if first and last is not None else None for first, last in zip(focus_first, focus_last)]
    gain = [after - before if before is not None and after is not None else None
            for before, after in zip(entry["val_acc_before"], entry["val_acc_after"])]
    step_time = [statistics.fmean(_finite(c)) if _finite(c) else None for c in entry["step_time_s"]]
    return {"val_acc_before": mean_sd(entry["val_acc_before"]), "val_acc_after": mean_sd(entry["val_acc_after"]),
            "val_acc_gain": mean_sd(gain), "train_reward": mean_sd(per_seed_reward),
            "focus_first_third": mean_sd(focus_first), "focus_last_third": mean_sd(focus_last),
            "focus_last_over_first": mean_sd(ratio), "step_time_s": mean_sd(step_time)}


def difference_and_spread(grpo: list[float], vgpo: list[float]) -> tuple[float, float | None]:
    """(mean VGPO - mean GRPO, the larger of the two seed-to-seed sample sds; None with one seed each)."""
    spreads = [statistics.stdev(v) for v in (grpo, vgpo) if len(v) > 1]
    return statistics.fmean(vgpo) - statistics.fmean(grpo), max(spreads) if spreads else None


def difference_statement(report: dict) -> str:
    """A plain statement of VGPO minus GRPO in final validation accuracy against the seed-to-seed spread."""
    algorithms = report["algorithms"]
    if not {"grpo", "vgpo"} <= algorithms.keys():
        return "Only one algorithm was run: no difference to state."
    grpo, vgpo = (_finite(algorithms[a]["val_acc_after"]) for a in ("grpo", "vgpo"))
    if not grpo or not vgpo:
        return "Final validation accuracy is missing for an algorithm: no difference to state."
    difference, spread = difference_and_spread(grpo, vgpo)
    seeds = len(algorithms["vgpo"]["seeds"])
    if spread is None:
        return (f"Final greedy validation accuracy, VGPO minus GRPO: {difference * 100:+.1f} points with one seed; "
                "no seed-to-seed spread was measured, so nothing can be said about whether it is more than noise.")
    verdict = ("exceeds" if abs(difference) > spread else "does not exceed")
    return (f"Final greedy validation accuracy, VGPO minus GRPO: {difference * 100:+.1f} points (mean over {seeds} "
            f"seeds); the larger seed-to-seed standard deviation is {spread * 100:.1f} points, so the difference "
            f"{verdict} the spread" + ("." if verdict == "exceeds" else " and is not evidence that either is better here."))


def forgetting_statement(report: dict) -> str:
    """VGPO minus GRPO in the final checkpoints' last third / first third focus, against the seed spread."""
    algorithms = report["algorithms"]
    if not {"grpo", "vgpo"} <= algorithms.keys():
        return "Only one algorithm was run: no difference to state."
    ratios = {algo: _finite([(f or {}).get("last_over_first") for f in algorithms[algo].get("final_focus", [])])
              for algo in ("grpo", "vgpo")}
    if not all(ratios.values()):
        return "The final checkpoints of both algorithms were not analysed: no difference to state."
    difference, spread = difference_and_spread(ratios["grpo"], ratios["vgpo"])
    if spread is None:
        return (f"Final checkpoints, last third / first third focus, VGPO minus GRPO: {difference:+.3f} with one "
                "seed; no seed spread was measured.")
    verdict = "exceeds" if abs(difference) > spread else "does not exceed"
    return (f"Final checkpoints, last third / first third focus, VGPO minus GRPO: {difference:+.3f}; the larger "
            f"seed-to-seed standard deviation is {spread:.3f}, so the difference {verdict} the spread.")


def forgetting_rows(report: dict) -> list[tuple[str, list[dict]]]:
    """[(name, analysed entries)] of the warm start and of each algorithm's final checkpoints; only those with
    at least one analysis (report.md's table and final_forgetting.png show the same rows)."""
    rows = [("warm start (before RL)", [report["before_rl_focus"]])] if report.get("before_rl_focus") else []
    rows += [(f"{algo} final", [f for f in entry.get("final_focus", []) if f])
             for algo, entry in report["algorithms"].items()]
    return [(name, focus) for name, focus in rows if focus]


def forgetting_table(report: dict) -> list[str]:
    """report.md lines: mean focus per response position of the warm start and of each algorithm's final
    checkpoints (mean ± sd over seeds), first/last third and their ratio."""
    rows = forgetting_rows(report)
    if not rows:
        return []
    bins = len(rows[0][1][0]["bins"])
    responses = sorted({f["responses"] for _, focus in rows for f in focus})
    header = [f"{k / bins:.1f}-{(k + 1) / bins:.1f}" for k in range(bins)]
    lines = ["## Forgetting curve of the final checkpoints", "",
             f"`vgpo-analyze` on the first {'/'.join(map(str, responses))} held-out questions, greedy: mean focus (cosine "
             "of a response token's last hidden state to the mean image-token state) by relative position in the "
             "response; mean ± sd over seeds.", "",
             "| model | " + " | ".join(header) + " | first third | last third | last/first |",
             "|---|" + "---|" * (bins + 3)]
    for name, focus in rows:
        cells = [_fmt(mean_sd([f["bins"][k] for f in focus])) for k in range(bins)]
        cells += [_fmt(mean_sd([f[key] for f in focus])) for key in ("first_third", "last_third", "last_over_first")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", forgetting_statement(report), ""]


def by_kind_table(report: dict) -> list[str]:
    """report.md lines: greedy accuracy per easy-vqa question kind before and after (mean ± sd over seeds), and
    per seed the answer given most often after training with its share of the kind's answers (a share near 1:
    the answers moved to one, which raises accuracy by that answer's share of right answers, not by seeing)."""
    lines = []
    for algo, entry in report["algorithms"].items():
        seeds = [(seed, kinds) for seed, kinds in zip(entry["seeds"], entry.get("val_by_kind") or []) if kinds]
        for kind in easy_vqa.ANSWER_KINDS:
            before = [kinds["before"][kind] for _, kinds in seeds if kind in kinds.get("before", {})]
            after = [(seed, kinds["after"][kind]) for seed, kinds in seeds if kind in kinds.get("after", {})]
            if not before and not after:
                continue
            questions = "/".join(map(str, sorted({s["n"] for s in before} | {s["n"] for _, s in after})))
            top = [f"seed {seed}: {answer} {count / s['n']:.2f}" for seed, s in after
                   for answer, count in [max(s["answers"].items(), key=lambda item: item[1])]]
            lines.append(f"| {algo} | {kind} | {questions} | {_fmt(mean_sd([s['acc'] for s in before]))} | "
                         f"{_fmt(mean_sd([s['acc'] for _, s in after]))} | {', '.join(top)} |")
    if not lines:
        return []
    return ["## Accuracy by question kind", "",
            "Greedy validation accuracy per question kind (mean ± sd over seeds), and per seed the answer given most "
            "often after training with its share of that kind's answers.", "",
            "| algorithm | kind | questions | before | after | most frequent answer after (share), per seed |",
            "|---|---|---|---|---|---|", *lines, ""]


def write_report_md(report: dict, path: Path, plots: list[str]) -> str:
    settings = report["settings"]
    lines = [f"# GRPO vs VGPO on CPU (warm-started tiny VLM, {settings.get('task', 'easy-vqa')})", "",
             f"{len(settings['seeds'])} seeds ({', '.join(map(str, settings['seeds']))}), {settings['steps']} steps each, "
             f"identical settings except `algorithm.adv_estimator`; greedy validation on {settings['knobs']['VAL_SIZE']} "
             f"held-out questions before the first and after the last step. Machine: {settings['machine']}. "
             f"Total wall time {settings.get('total_wall_s', float('nan')):.0f}s.", "",
             "| algorithm | val acc before | val acc after | gain | train reward | focus first third | "
             "focus last third | last/first | step time s |", "|---|---|---|---|---|---|---|---|---|"]
    for algo, entry in report["algorithms"].items():
        row = algorithm_table_row(entry)
        lines.append(f"| {algo} | {_fmt(row['val_acc_before'])} | {_fmt(row['val_acc_after'])} | "
                     f"{_fmt(row['val_acc_gain'])} | {_fmt(row['train_reward'])} | {_fmt(row['focus_first_third'])} | "
                     f"{_fmt(row['focus_last_third'])} | {_fmt(row['focus_last_over_first'])} | "
                     f"{_fmt(row['step_time_s'], 2)} |")
    lines += ["", "mean ± sd over seeds; focus is computed by VGPO only (n/a for GRPO).", "",
              difference_statement(report), ""]
    lines += by_kind_table(report)
    lines += forgetting_table(report)
    lines += [f"![{Path(name).stem}]({name})" for name in plots]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot_report(report: dict, out_dir: Path) -> list[str]:
    """curves.png (accuracy and reward per step with seed bands), focus.png (early vs late focus over
    training), forgetting.png (focus by response position, per algorithm). Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def band(axis, curves, label):
        width = max((len(c) for c in curves), default=0)
        if not width:
            return
        data = np.array([[np.nan if v is None else v for v in c] + [np.nan] * (width - len(c)) for c in curves], float)
        steps = np.arange(1, width + 1)
        mean, sd = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
        axis.plot(steps, mean, label=label)
        axis.fill_between(steps, mean - sd, mean + sd, alpha=0.25)

    figure, (accuracy_axis, reward_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for algo, entry in report["algorithms"].items():
        band(reward_axis, entry["reward"], algo)
        points = [dict((int(s), v) for s, v in seed_points) for seed_points in entry["val_acc"]]
        steps = sorted({s for seed_points in points for s in seed_points})
        if steps:
            values = np.array([[p.get(s, np.nan) for s in steps] for p in points], float)
            mean, sd = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
            accuracy_axis.errorbar(steps, mean, yerr=sd, marker="o", capsize=4, label=algo)
    accuracy_axis.set(title="greedy validation accuracy (mean ± sd over seeds)", xlabel="step", ylabel="exact match")
    reward_axis.set(title="training reward (mean ± sd over seeds)", xlabel="step", ylabel="strict 0/1 reward")
    for axis in (accuracy_axis, reward_axis):
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "curves.png", dpi=90)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for algo, entry in report["algorithms"].items():
        if any(_finite(c) for c in entry["focus_first_third"]):
            band(axis, entry["focus_first_third"], f"{algo}: first third")
            band(axis, entry["focus_last_third"], f"{algo}: last third")
    axis.set(title="visual focus early vs late in responses", xlabel="step", ylabel="mean focus (cosine)")
    if axis.lines:
        axis.legend()
    else:
        axis.text(0.5, 0.5, "no focus logged", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(out_dir / "focus.png", dpi=90)
    plt.close(figure)

    algorithms = list(report["algorithms"])
    figure, axes = plt.subplots(1, len(algorithms), figsize=(6 * len(algorithms), 4.5), squeeze=False)
    for axis, algo in zip(axes[0], algorithms):
        matrices = [m for m in report["algorithms"][algo]["focus_pos_bins"] if m]
        if not matrices:
            axis.text(0.5, 0.5, f"{algo}: no vgpo/focus/pos_bin_k logged", ha="center", transform=axis.transAxes)
            axis.set(xticks=[], yticks=[], title=f"{algo}: focus by response position")
            continue
        steps = min(len(m) for m in matrices)
        mean = np.nanmean(np.array([m[:steps] for m in matrices], float), axis=0)  # [step, bin]
        image = axis.imshow(mean.T, aspect="auto", origin="lower", extent=(0.5, steps + 0.5, 0, 1), cmap="viridis")
        axis.set(title=f"{algo}: focus by response position (mean over seeds)", xlabel="step",
                 ylabel="position in response (0 = start)")
        figure.colorbar(image, ax=axis, label="mean focus")
    figure.tight_layout()
    figure.savefig(out_dir / "forgetting.png", dpi=90)
    plt.close(figure)
    names = ["curves.png", "focus.png", "forgetting.png"]

    curves = forgetting_rows(report)
    if curves:
        figure, axis = plt.subplots(figsize=(6.5, 4.5))
        for name, focus in curves:
            data = np.array([[np.nan if v is None else v for v in f["bins"]] for f in focus], float)
            centres = (np.arange(data.shape[1]) + 0.5) / data.shape[1]
            mean, sd = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
            axis.plot(centres, mean, marker="o", label=f"{name} ({len(focus)})")
            axis.fill_between(centres, mean - sd, mean + sd, alpha=0.2)
        axis.set(title="focus by position, held-out questions (mean ± sd over seeds)",
                 xlabel="relative position in response", ylabel="mean focus (cosine)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out_dir / "final_forgetting.png", dpi=90)
        plt.close(figure)
        names.append("final_forgetting.png")
    return names


# ---------------------------------------------------------------------------------------------------


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} logical CPUs, {platform.system()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="artifacts/experiment")
    parser.add_argument("--quick", action="store_true",
                        help="; ".join(f"{task}: {p['quick']['seeds']} seeds x {p['quick']['steps']} steps (full: "
                                       f"{p['full']['seeds']} x {p['full']['steps']})" for task, p in TASK_PRESETS.items()))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seed list (default 0..N-1)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--task", default="easy-vqa", choices=TASKS,
                        help="easy-vqa (default) or grid (verl_vgpo.data.grid: 2 x 2 grids, a chain of cells)")
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--model-dir", default=None,
                        help="default: <out>/../tiny_vlm_warm_<family> (grid: tiny_vlm_warm_grid_<family>)")
    parser.add_argument("--data-dir", default=None,
                        help="default: <out>/../easy_vqa_experiment (grid: grid_experiment)")
    parser.add_argument("--train-size", type=int, default=demo.DEMO_SETTINGS["TRAIN_SIZE"])
    parser.add_argument("--val-size", type=int, default=demo.DEMO_SETTINGS["VAL_SIZE"])
    parser.add_argument("--questions", default=demo.DEMO_QUESTIONS, choices=easy_vqa.QUESTION_KINDS,
                        help="easy-vqa questions to train and validate on (default: the demo's, %(default)s)")
    parser.add_argument("--timeout", type=float, default=demo.RUN_TIMEOUT_S, help="wall-clock limit per run, seconds")
    parser.add_argument("--analyze-rows", type=int, default=ANALYZE_ROWS,
                        help="held-out questions vgpo-analyze scores per final checkpoint and for the warm start "
                             "(0: no forgetting analysis, no checkpoint saved)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier experiment in --out")
    parser.add_argument("--set", nargs="+", default=[], metavar="KNOB=VALUE",
                        help="run-script knobs for every run alike, e.g. BATCH_SIZE=8 ROLLOUT_N=4 LR=1e-4")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, passed to every run alike")
    args = parser.parse_args(argv)

    if args.analyze_rows < 0:
        parser.error(f"--analyze-rows must be >= 0, got {args.analyze_rows}")
    preset = TASK_PRESETS[args.task]["quick" if args.quick else "full"]
    seeds = args.seeds if args.seeds is not None else list(range(preset["seeds"]))
    steps = args.steps if args.steps is not None else preset["steps"]
    knobs = {**demo.DEMO_SETTINGS, **TASK_KNOBS[args.task], "TRAIN_SIZE": args.train_size, "VAL_SIZE": args.val_size,
             "VAL_BEFORE_TRAIN": "True", "TEST_FREQ": steps, "MODEL_FAMILY": args.family}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.isupper() or key in ("ALGO", "STEPS", "SEED", "OUT_DIR", "MODEL_DIR", "DATA_DIR"):
            parser.error(f"--set takes KNOB=VALUE of the run script's knobs (not ALGO/STEPS/SEED/paths), got {item!r}")
        knobs[key] = value
    out_dir = Path(args.out).resolve()
    is_grid = args.task == "grid"
    default_model = f"tiny_vlm_warm_grid_{args.family}" if is_grid else f"tiny_vlm_warm_{args.family}"
    model_dir = Path(args.model_dir).resolve() if args.model_dir else out_dir.parent / default_model
    data_dir = (Path(args.data_dir).resolve() if args.data_dir
                else out_dir.parent / ("grid_experiment" if is_grid else "easy_vqa_experiment"))
    settings = {"algorithms": args.algorithms, "seeds": seeds, "steps": steps, "family": args.family,
                "knobs": knobs, "overrides": args.overrides, "model_dir": str(model_dir), "data_dir": str(data_dir),
                "task": args.task, "analyze_rows": args.analyze_rows}
    if not is_grid:  # easy-vqa's question kinds do not apply to the grid
        settings["questions"] = args.questions
    start = time.monotonic()
    dtype_line = None
    try:
        try:
            dtype_line = runner.cpu_dtype_line()
        except runner.RunError as error:
            raise ExperimentError(str(error)) from error
        print(dtype_line, flush=True)
        check_settings(args.algorithms, seeds, steps, knobs, args.timeout)
        check_overrides(args.overrides, args.analyze_rows)
        try:
            grid.check_data_folder(data_dir, TASK_DATA_SOURCE[args.task], args.task)
        except grid.DataFolderError as error:
            raise ExperimentError(str(error)) from error
        claim_output_folder(out_dir, settings, args.overwrite)
        given = demo.given_folders_as_they_are(args.model_dir is not None, model_dir, args.data_dir is not None,
                                               data_dir)
        try:
            if is_grid:
                prepare_grid_inputs(model_dir, data_dir, args.family, args.train_size, args.val_size, **given)
            else:
                demo.prepare_inputs(model_dir, data_dir, args.family, args.train_size, args.val_size,
                                    questions=args.questions, **given)
        except demo.DemoError as error:
            raise ExperimentError(str(error)) from error
        (out_dir / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        for stale in ("report.json", "report.md"):
            (out_dir / stale).unlink(missing_ok=True)
        response_length = int(knobs["RESPONSE_LENGTH"])
        before_rl = None
        if args.analyze_rows:
            print(f"[warm start] vgpo-analyze on {args.analyze_rows} held-out questions", flush=True)
            before_rl = analyze_checkpoint(model_dir, "warm_start", data_dir, out_dir / "analysis_before",
                                           args.analyze_rows, response_length)
        run_overrides = [*RUN_OVERRIDES, *(final_checkpoint_overrides(steps) if args.analyze_rows else []),
                         *args.overrides]
        runs: dict[str, list[dict]] = {algo: [] for algo in args.algorithms}
        for seed in seeds:  # seed-major: a stopped experiment still has both algorithms for the first seeds
            for algo in args.algorithms:
                name = f"{algo}_seed{seed}"
                print(f"[{name}] main_ppo algorithm.adv_estimator={algo} data.seed={seed}, {steps} steps", flush=True)
                # easy-vqa: verl's validation dumps, read for the accuracy by question kind
                validation_dir = out_dir / "runs" / name / demo.VALIDATION_DIR
                shutil.rmtree(validation_dir, ignore_errors=True)  # an --overwrite rerun never reads old dumps
                dumps = [] if is_grid else [f"trainer.validation_data_dir={validation_dir}"]
                try:
                    result = runner.run_main_ppo(algo, steps, out_dir / "runs", model_dir, data_dir, args.timeout,
                                                 [*dumps, *run_overrides], knobs={**knobs, "SEED": seed}, run_name=name)
                except runner.RunError as error:
                    raise ExperimentError(str(error)) from error
                records = runner.read_metrics(result["metrics_path"])
                trained = [record["step"] for record in records if record["step"] >= 1]
                if trained != list(range(1, steps + 1)):
                    raise ExperimentError(f"{name}: expected logged steps 1..{steps}, got {trained}")
                run = {"seed": seed, "metrics_file": str(result["metrics_path"].relative_to(out_dir)),
                       **collect_run(records, result["wall_s"])}
                if not is_grid:
                    run.update(demo.read_by_kind(validation_dir, steps, run))
                if args.analyze_rows:
                    try:
                        run["final_focus"] = analyze_checkpoint(
                            final_hf_checkpoint(result["run_dir"], steps), name, data_dir,
                            result["run_dir"] / "analysis", args.analyze_rows, response_length)
                    except Exception as error:  # an add-on: the runs' results are kept and reported without it
                        run["final_focus"], run["final_focus_error"] = None, f"{type(error).__name__}: {error}"
                        print(f"[{name}] forgetting analysis failed, reported as missing: {run['final_focus_error']}",
                              file=sys.stderr, flush=True)
                runs[algo].append(run)
                print(f"[{name}] validation accuracy {run['val_acc_before']} -> {run['val_acc_after']} "
                      f"({run['wall_s']:.0f}s)", flush=True)
    except ExperimentError as error:
        print(f"experiment failed: {error}", file=sys.stderr)
        return 1

    settings["machine"] = _machine()
    settings["cpu_dtype"] = dtype_line
    settings["total_wall_s"] = round(time.monotonic() - start, 1)
    report = assemble_report(settings, runs, before_rl)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = plot_report(report, out_dir)
    print(write_report_md(report, out_dir / "report.md", plots))
    print(f"report: {out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
