"""``make demo``: VGPO (and GRPO for comparison) learning through verl's real ``main_ppo`` on a CPU-only machine.

    vgpo-demo                                   # warm start, then VGPO; greedy validation before and after
    vgpo-demo --algo both --steps 4 --out artifacts/demo

Steps: (1) the warm-started tiny VLM (verl_vgpo.cpu.warm_start: supervised on easy-vqa, cached), (2) easy-vqa
parquet files with VAL_SIZE held-out test questions (verl_vgpo.data.easy_vqa), (3) per algorithm the CPU
run script shipped with the package (``run_vgpo_tiny_cpu.sh``, the same file as
examples/run_vgpo_tiny_cpu.sh: ``python -m verl.trainer.main_ppo`` with the CPU settings) in a subprocess with
a hard wall-clock limit, strict 0/1 reward, greedy validation before the first step and after the last.
Progress is printed per step; verl's ``file`` logger writes every step's metrics to ``<out>/<algo>/metrics.jsonl``.
Afterwards: ``<out>/demo.png`` (validation accuracy, reward, focus over response position per step, focus
first vs last third, psi and alpha ranges), ``<out>/summary.json``
(``{algo: {val_acc_before, val_acc_after, steps, wall_s, val_by_kind}}``; ``val_by_kind``: accuracy and answers
per question kind before and after, from verl's validation dumps in ``<out>/<algo>/validation/``; null when
verl wrote none, with ``val_by_kind_error`` when they could not be read) and ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from verl_vgpo.apps.runner import (  # noqa: F401  (RUN_SCRIPT, read_metrics, run_main_ppo: the demo's public names)
    ALGORITHMS,
    ALPHA_METRICS,
    FOCUS_FIRST_METRIC,
    FOCUS_LAST_METRIC,
    PSI_METRICS,
    REWARD_METRIC,
    RUN_SCRIPT,
    STEP_TIME_METRIC,
    RunError,
    cpu_dtype_line,
    override_key,
    read_metrics,
    run_main_ppo,
)
from verl_vgpo.data.easy_vqa import (
    ANSWER_KINDS,
    ANSWER_MARKER,
    QUESTION_KINDS,
    answer_kind,
    extract_answer,
    normalize_answer,
)
from verl_vgpo.rewards.exact_match import ground_truth_text

FOCUS_BIN_METRIC = "vgpo/focus/pos_bin_{}"
FOCUS_BINS = 5  # verl_vgpo.advantage.FOCUS_POSITION_BINS (not imported: keeps this module free of torch)
# greedy validation accuracy as verl logs it: val-core/<data_source>/<reward key>/mean@<n>
VAL_ACC_PATTERN = re.compile(r"^val-core/[^/]+/acc/mean@\d+$")

# The demo's settings (run-script knobs), chosen from measurements on 2 CPU cores (docs/cpu_demo.md).
DEMO_SETTINGS = {
    "TRAIN_SIZE": 1024,
    "VAL_SIZE": 200,
    "BATCH_SIZE": 16,
    "ROLLOUT_N": 8,
    "LR": 1e-4,
    "RESPONSE_LENGTH": 32,
    "REWARD_FN": "compute_score",
}
DEMO_STEPS = 60
# per main_ppo run: a 60-step run takes about 800 s on 2 idle cores, about twice that beside other jobs
RUN_TIMEOUT_S = 2400.0
DEMO_QUESTIONS = "all"
# per run: verl's trainer.validation_data_dir (one <step>.jsonl per validation), read for the accuracy by kind
VALIDATION_DIR = "validation"
NO_ANSWER = "(no answer)"  # a response without the answer marker, in the answers counted by kind


class DemoError(RunError):
    """Bad demo input or a failed run, with the reason."""


# ---------------------------------------------------------------------------------------------------
# input checks (clear errors before Ray starts)
# ---------------------------------------------------------------------------------------------------


def check_model_has_image_tokens(model_dir: Path) -> None:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise DemoError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    if config.get("image_token_id") is None:
        raise DemoError(
            f"model at {model_dir} ({config.get('model_type', 'unknown type')}) declares no image_token_id: VGPO needs "
            "a vision-language model whose prompts contain image tokens (e.g. python -m verl_vgpo.cpu.tiny_vlm_cli --out DIR)"
        )


def check_dataset_has_images(parquet_path: Path, image_key: str = "images") -> None:
    import pandas as pd

    if not parquet_path.is_file():
        raise DemoError(f"data file {parquet_path} does not exist")
    frame = pd.read_parquet(parquet_path)
    if image_key not in frame.columns:
        raise DemoError(
            f"{parquet_path} has no '{image_key}' column: VGPO re-weights by visual focus and needs image prompts "
            "(build one with python -m verl_vgpo.data.easy_vqa)"
        )
    without_images = [index for index, images in enumerate(frame[image_key]) if images is None or len(images) == 0]
    if without_images:
        raise DemoError(
            f"{parquet_path}: {len(without_images)} of {len(frame)} rows have no image (first row {without_images[0]})"
        )
    without_placeholder = [
        index
        for index, messages in enumerate(frame["prompt"])
        if not any("<image>" in str(message.get("content", "")) for message in messages)
    ]
    if without_placeholder:
        raise DemoError(
            f"{parquet_path}: {len(without_placeholder)} prompts have no <image> placeholder "
            f"(first row {without_placeholder[0]}); verl would not place the image in the prompt"
        )


# ---------------------------------------------------------------------------------------------------
# plot and summary
# ---------------------------------------------------------------------------------------------------


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def validation_accuracy(records: list[dict]) -> list[tuple[int, float]]:
    """[(step, greedy validation accuracy)] from verl's ``val-core/<source>/acc/mean@n`` (step 0: before
    training; the mean over data sources when there are several)."""
    points = []
    for record in records:
        values = [float(value) for key, value in record.items()
                  if VAL_ACC_PATTERN.match(key) and isinstance(value, (int, float))]
        if values:
            points.append((record["step"], sum(values) / len(values)))
    return points


def focus_position_matrix(records: list[dict]) -> tuple[list[int], list[list[float]]] | None:
    """(steps, [step][bin] mean focus) from ``vgpo/focus/pos_bin_{k}``; None when no step logged them."""
    keys = [FOCUS_BIN_METRIC.format(k) for k in range(FOCUS_BINS)]
    rows = [(record["step"], [float(record.get(key, math.nan)) for key in keys])
            for record in records if any(key in record for key in keys)]
    if not rows:
        return None
    return [step for step, _ in rows], [values for _, values in rows]


def run_summary(records: list[dict], wall_s: float) -> dict:
    """``{"val_acc_before", "val_acc_after", "steps", "wall_s"}`` of one run (accuracies None when not logged)."""
    accuracy = validation_accuracy(records)
    before = [value for step, value in accuracy if step == 0]
    trained = [record["step"] for record in records if record["step"] >= 1]
    last = max(trained, default=0)
    after = [value for step, value in accuracy if step == last and last >= 1]
    return {"val_acc_before": before[0] if before else None, "val_acc_after": after[0] if after else None,
            "steps": len(trained), "wall_s": round(float(wall_s), 1)}


def validation_by_kind(dump_path: Path) -> dict:
    """``{kind: {"n", "acc", "answers", "truth"}}`` of one verl validation dump (``trainer.validation_data_dir``'s
    ``<step>.jsonl``: per question the response ``output``, the ground truth ``gts`` and the strict reward's
    ``acc``) per easy-vqa question kind. ``answers`` counts the final answers given (NO_ANSWER: no answer
    marker) and ``truth`` the right ones, most frequent first: they tell a model that learned to tell shapes
    apart from one that moved its answers toward one shape."""
    scored = {kind: [] for kind in ANSWER_KINDS}
    for line in Path(dump_path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        truth = ground_truth_text(record["gts"])
        accuracy = record.get("acc", record.get("score"))
        if not isinstance(accuracy, (int, float)):
            raise ValueError(f"{dump_path}: a record has no numeric 'acc' or 'score' ({accuracy!r})")
        output = str(record["output"])
        answer = extract_answer(output) if ANSWER_MARKER.lower() in output.lower() else NO_ANSWER
        scored[answer_kind(truth)].append((float(accuracy), answer, normalize_answer(truth)))
    return {kind: {"n": len(items), "acc": round(sum(acc for acc, _, _ in items) / len(items), 4),
                   "answers": dict(Counter(answer for _, answer, _ in items).most_common()),
                   "truth": dict(Counter(truth for _, _, truth in items).most_common())}
            for kind, items in scored.items() if items}


def validation_dir_of(overrides: list[str], default: Path, run_dir: Path) -> Path:
    """The folder verl dumps validation generations to: the last ``trainer.validation_data_dir=`` override (a
    relative one is relative to ``run_dir``, main_ppo's working directory), else ``default``."""
    given = [item.split("=", 1)[1].strip("'\"") for item in overrides
             if override_key(item) == "trainer.validation_data_dir" and "=" in item]
    if not given:
        return default
    return Path(given[-1]) if Path(given[-1]).is_absolute() else Path(run_dir) / given[-1]


def by_kind_summary(validation_dir: Path, last_step: int, val_acc_before: float | None,
                    val_acc_after: float | None) -> dict | None:
    """``{"before": ..., "after": ...}`` (:func:`validation_by_kind` of step 0 and of ``last_step``); None when
    neither is there. Only a dump of a step whose accuracy the run logged is read, and one whose overall
    accuracy is not the logged one (a file of another run) is a ValueError."""
    found = {}
    for when, step, logged in (("before", 0, val_acc_before), ("after", last_step, val_acc_after)):
        path = Path(validation_dir) / f"{step}.jsonl"
        if logged is None or not path.is_file():
            continue  # no validation logged at this step: a dump there belongs to another run
        kinds = validation_by_kind(path)
        questions = sum(kind["n"] for kind in kinds.values())
        overall = sum(kind["acc"] * kind["n"] for kind in kinds.values()) / questions if questions else None
        if overall is None or abs(overall - logged) > 1e-3:
            raise ValueError(f"{path}: accuracy {overall} is not the {logged} verl logged for step {step} "
                             "(a dump of another run?)")
        found[when] = kinds
    return found or None


def read_by_kind(validation_dir: Path, last_step: int, summary: dict) -> dict:
    """``{"val_by_kind": by_kind_summary(...) or None}``, plus ``"val_by_kind_error"`` when the dumps could not
    be read: the breakdown is an add-on, never the reason a finished run's results are lost."""
    try:
        return {"val_by_kind": by_kind_summary(validation_dir, last_step, summary.get("val_acc_before"),
                                               summary.get("val_acc_after"))}
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"accuracy by question kind not reported: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"val_by_kind": None, "val_by_kind_error": f"{type(error).__name__}: {error}"}


def write_summary_json(summaries: dict[str, dict], path: Path) -> dict:
    path.write_text(json.dumps(summaries, indent=2, sort_keys=True) + "\n")
    return summaries


def _heat_map(axis, figure, matrix, title: str) -> None:
    if matrix is None:
        axis.text(0.5, 0.5, "vgpo/focus/pos_bin_k not logged", ha="center", va="center", transform=axis.transAxes)
        axis.set(title=title, xticks=[], yticks=[])
        return
    import numpy as np

    steps, values = matrix
    image = axis.imshow(np.array(values, dtype=float).T, aspect="auto", origin="lower", cmap="viridis",
                        extent=(steps[0] - 0.5, steps[-1] + 0.5, 0, 1), interpolation="nearest")
    axis.set(title=title, xlabel="step", ylabel="position in response (0 = start)")
    figure.colorbar(image, ax=axis, label="mean focus")


def plot_runs(runs: dict[str, list[dict]], png_path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    accuracy_axis, reward_axis, heat_axis, focus_axis, psi_axis, alpha_axis = axes.ravel()

    for algo, records in runs.items():
        points = validation_accuracy(records)
        if points:
            accuracy_axis.plot(*zip(*points), marker="o", label=algo)
        steps, values = _series(records, REWARD_METRIC)
        reward_axis.plot(steps, values, marker=".", label=algo)
    accuracy_axis.set(title="greedy validation accuracy (step 0: before RL)", xlabel="step", ylabel="exact match")
    reward_axis.set(title="training reward (strict 0/1, mean per step)", xlabel="step", ylabel=REWARD_METRIC)
    for axis in (accuracy_axis, reward_axis):
        if axis.lines:
            axis.legend()

    vgpo_records = runs.get("vgpo", [])
    _heat_map(heat_axis, figure, focus_position_matrix(vgpo_records), "VGPO focus along the response, per step")
    for key, label in ((FOCUS_FIRST_METRIC, "first third"), (FOCUS_LAST_METRIC, "last third")):
        steps, values = _series(vgpo_records, key)
        focus_axis.plot(steps, values, marker=".", label=label)
    focus_axis.set(title="VGPO visual focus (cosine) along responses", xlabel="step", ylabel="mean focus")
    if focus_axis.lines:
        focus_axis.legend()

    for axis, keys, name in ((psi_axis, PSI_METRICS, "token weight psi"), (alpha_axis, ALPHA_METRICS, "trajectory weight alpha")):
        (_, low), (_, mean), (_, high) = (_series(vgpo_records, key) for key in keys)
        steps, _ = _series(vgpo_records, keys[1])
        if steps and len(low) == len(high) == len(steps):
            axis.fill_between(steps, low, high, alpha=0.25, label="min..max")
        axis.plot(steps, mean, marker=".", label="mean")
        axis.set(title=f"VGPO {name} range", xlabel="step")
        if axis.lines:
            axis.legend()

    for axis in axes.ravel():
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title or "verl main_ppo on CPU: warm-started tiny Qwen2.5-VL on easy-vqa")
    figure.tight_layout()
    figure.savefig(png_path, dpi=90)
    plt.close(figure)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""


def _kind_rows(by_kind: dict | None) -> list[tuple[str, dict, dict]]:
    """[(kind, before, after)] of a ``val_by_kind`` entry, every kind of either dump ({} where one lacks it)."""
    before, after = (by_kind or {}).get("before", {}), (by_kind or {}).get("after", {})
    return [(kind, before.get(kind, {}), after.get(kind, {})) for kind in dict.fromkeys([*before, *after])]


def _answers(kind_summary: dict, key: str = "answers", shown: int = 3) -> str:
    answers = list(kind_summary.get(key, {}).items())
    text = ", ".join(f"{answer or '(none)'} {count}" for answer, count in answers[:shown])
    return text + (f", +{len(answers) - shown} more" if len(answers) > shown else "")


def write_summary(runs: dict[str, list[dict]], summaries: dict[str, dict], summary_path: Path, png_name: str) -> str:
    lines = ["# VGPO demo (verl main_ppo on CPU)", "",
             "Warm-started tiny Qwen2.5-VL (verl_vgpo.cpu.warm_start), easy-vqa, strict 0/1 reward on the final "
             "answer, rollout `hf_cpu`; greedy validation before the first step and after the last.", "",
             f"![demo]({png_name})", "", "| algorithm | steps | val acc before | val acc after | wall s |",
             "|---|---|---|---|---|"]
    for algo, summary in summaries.items():
        lines.append(f"| {algo} | {summary['steps']} | {_cell(summary['val_acc_before'])} | "
                     f"{_cell(summary['val_acc_after'])} | {summary['wall_s']:.1f} |")
    lines.append("")
    by_kind = {algo: summary["val_by_kind"] for algo, summary in summaries.items() if summary.get("val_by_kind")}
    lines += [f"Accuracy by question kind not reported for {algo}: {summary['val_by_kind_error']}" for algo, summary
              in summaries.items() if summary.get("val_by_kind_error")]
    if by_kind:
        lines += ["Greedy validation accuracy by question kind, and the answers given (most frequent first):", "",
                  "| algorithm | kind | questions | before | after | right answers | answers before | answers after |",
                  "|---|---|---|---|---|---|---|---|"]
        for algo, kinds in by_kind.items():
            for kind, first, last in _kind_rows(kinds):
                lines.append(f"| {algo} | {kind} | {first.get('n', last.get('n'))} | {_cell(first.get('acc'))} | "
                             f"{_cell(last.get('acc'))} | {_answers(first or last, 'truth')} | {_answers(first)} | {_answers(last)} |")
        lines.append("")
    for algo, records in runs.items():
        lines += [f"## {algo}: {summaries[algo]['steps']} steps, wall {summaries[algo]['wall_s']:.1f}s", ""]
        columns = [REWARD_METRIC, STEP_TIME_METRIC]
        if algo == "vgpo":
            columns += ["vgpo/focus/mean", FOCUS_FIRST_METRIC, FOCUS_LAST_METRIC, PSI_METRICS[0], PSI_METRICS[2],
                        ALPHA_METRICS[0], ALPHA_METRICS[2], "vgpo/no_signal_fraction"]
        columns = [column for column in columns if any(column in record for record in records)]
        lines.append("| step | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for record in records:
            if record["step"] < 1:
                continue  # validation-only record (trainer.val_before_train)
            lines.append(f"| {record['step']} | " + " | ".join(_cell(record.get(column)) for column in columns) + " |")
        lines.append("")
    text = "\n".join(lines)
    summary_path.write_text(text)
    return text


# ---------------------------------------------------------------------------------------------------


def given_folders_as_they_are(model_given: bool, model_dir: Path, data_given: bool, data_dir: Path) -> dict:
    """:func:`prepare_inputs`' ``warm_start`` / ``build_data``: a folder the user gave that already holds a
    checkpoint / parquet files is used as it is (not rebuilt to the default warm start / overwritten)."""
    return {"warm_start": not model_given or not (model_dir / "config.json").exists(),
            "build_data": not data_given or not (data_dir / "train.parquet").exists()}


def prepare_inputs(model_dir: Path, data_dir: Path, family: str, train_size: int, val_size: int,
                   warm_start: bool = True, build_data: bool = True, questions: str = "all") -> None:
    """The warm-started (or random) model and the easy-vqa parquet files, built when missing or stale
    (``build_data=False``: the given data folder is used as it is, only checked)."""
    from verl_vgpo.data import easy_vqa

    try:
        easy_vqa._import_easy_vqa()
    except easy_vqa.EasyVQAMissingError as error:
        raise DemoError(str(error)) from error
    if warm_start:
        from verl_vgpo.cpu.warm_start import WarmStartSettings, build_warm_start

        build_warm_start(model_dir, WarmStartSettings(family=family))
    elif not (model_dir / "config.json").exists():
        from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

        build_tiny_vlm(model_dir, family=family)
    else:
        print(f"using the checkpoint in {model_dir} as it is", flush=True)
    wanted = {"train_size": train_size, "val_size": val_size, "seed": 0, "questions": questions}
    record_path = data_dir / "easy_vqa_settings.json"
    if not build_data and record_path.exists():
        built_with = json.loads(record_path.read_text()).get("questions", "all")
        if built_with != questions:
            raise DemoError(f"{data_dir} holds easy-vqa files built with {built_with} questions, not {questions}: "
                            f"pass --questions {built_with} or another data folder")
    if build_data and (not record_path.exists() or json.loads(record_path.read_text()) != wanted):
        print(f"building easy-vqa parquet files in {data_dir} ({train_size} train, {val_size} held-out, "
              f"{questions} questions)", flush=True)
        easy_vqa.write_splits(data_dir, train_size=train_size, val_size=val_size, seed=0, kinds=questions, quiet=True)
        record_path.write_text(json.dumps(wanted))
    check_model_has_image_tokens(model_dir)
    for split_file in ("train.parquet", "test.parquet"):
        check_dataset_has_images(data_dir / split_file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="vgpo", choices=[*ALGORITHMS, "both"])
    parser.add_argument("--steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--out", default="artifacts/demo")
    parser.add_argument("--family", default="qwen2_5_vl", help="tiny VLM family (verl_vgpo.cpu.tiny_vlm.FAMILIES)")
    parser.add_argument("--model-dir", default=None, help="default: <out>/../tiny_vlm_warm_<family> (built if missing)")
    parser.add_argument("--data-dir", default=None, help="default: <out>/../easy_vqa_demo (built if missing)")
    parser.add_argument("--val-size", type=int, default=DEMO_SETTINGS["VAL_SIZE"], help="held-out questions")
    parser.add_argument("--questions", default=DEMO_QUESTIONS, choices=QUESTION_KINDS,
                        help="easy-vqa questions to train and validate on (default %(default)s; see DEMO_QUESTIONS)")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="wall-clock limit per main_ppo run, seconds")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides passed to main_ppo")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else out_dir.parent / f"tiny_vlm_warm_{args.family}"
    data_dir = Path(args.data_dir).resolve() if args.data_dir else out_dir.parent / "easy_vqa_demo"
    knobs = {**DEMO_SETTINGS, "VAL_SIZE": args.val_size, "VAL_BEFORE_TRAIN": "True", "TEST_FREQ": args.steps,
             "MODEL_FAMILY": args.family}
    start = time.monotonic()
    try:
        print(cpu_dtype_line(), flush=True)
        prepare_inputs(model_dir, data_dir, args.family, knobs["TRAIN_SIZE"], args.val_size, questions=args.questions,
                       **given_folders_as_they_are(args.model_dir is not None, model_dir,
                                                   args.data_dir is not None, data_dir))
        algorithms = ALGORITHMS if args.algo == "both" else (args.algo,)
        runs, summaries = {}, {}
        for algo in algorithms:
            print(f"[{algo}] python -m verl.trainer.main_ppo algorithm.adv_estimator={algo} ... "
                  f"({args.steps} steps, limit {args.timeout:.0f}s)", flush=True)
            own_dir = out_dir / algo / VALIDATION_DIR
            shutil.rmtree(own_dir, ignore_errors=True)  # never read an earlier run's dumps
            # the user's overrides come after: their own trainer.validation_data_dir wins, and is read
            overrides = [f"trainer.validation_data_dir={own_dir}", *args.overrides]
            result = run_main_ppo(algo, args.steps, out_dir, model_dir, data_dir, args.timeout, overrides, knobs=knobs)
            runs[algo] = read_metrics(result["metrics_path"])
            trained_steps = [record["step"] for record in runs[algo] if record["step"] >= 1]  # step 0: validation only
            if trained_steps != list(range(1, args.steps + 1)):
                raise DemoError(f"{algo}: expected logged steps 1..{args.steps}, got {trained_steps}")
            summaries[algo] = run_summary(runs[algo], result["wall_s"])
            dumps = validation_dir_of(overrides, own_dir, result["run_dir"])
            summaries[algo].update(read_by_kind(dumps, args.steps, summaries[algo]))
    except DemoError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1

    png_path = out_dir / "demo.png"
    write_summary_json(summaries, out_dir / "summary.json")  # first: the measured numbers must survive a plot failure
    plot_runs(runs, png_path)
    summary = write_summary(runs, summaries, out_dir / "summary.md", png_path.name)
    print(summary)
    for algo, item in summaries.items():
        print(f"[{algo}] greedy validation accuracy on {args.val_size} held-out questions: "
              f"{_cell(item['val_acc_before'])} before -> {_cell(item['val_acc_after'])} after {item['steps']} steps")
        for kind, first, last in _kind_rows(item.get("val_by_kind")):
            print(f"[{algo}]   {kind} ({first.get('n', last.get('n'))} questions): {_cell(first.get('acc'))} -> "
                  f"{_cell(last.get('acc'))}; answers after: {_answers(last)}")
    print(f"total {time.monotonic() - start:.0f}s\nplot: {png_path}\nsummary: {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
