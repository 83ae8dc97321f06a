"""``make demo``: VGPO (and GRPO for comparison) through verl's real ``main_ppo`` on a CPU-only machine.

    python -m verl_vgpo.apps.demo --algo vgpo --steps 4 --out artifacts/demo
    python -m verl_vgpo.apps.demo --algo both --steps 4 --out artifacts/demo    # vgpo then grpo, one plot

For each algorithm it runs ``examples/run_vgpo_tiny_cpu.sh`` (the documented command: ``python -m
verl.trainer.main_ppo`` with the CPU settings) in a subprocess, with a hard wall-clock limit. The script
builds the tiny random Qwen2.5-VL and the easy-vqa parquet files when they are missing. Progress is
printed per step; verl's ``file`` logger writes every step's metrics to ``<out>/<algo>/metrics.jsonl``.
Afterwards the demo writes ``<out>/demo.png`` (reward, focus in the first vs last third of responses, psi
and alpha ranges over steps) and ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO_ROOT / "examples" / "run_vgpo_tiny_cpu.sh"
ALGORITHMS = ("vgpo", "grpo")

REWARD_METRIC = "critic/score/mean"
ACCURACY_METRIC = "acc/mean"  # not always present: verl logs reward extra info only for validation
STEP_TIME_METRIC = "timing_s/step"
FOCUS_FIRST_METRIC = "vgpo/focus/first_third"
FOCUS_LAST_METRIC = "vgpo/focus/last_third"
PSI_METRICS = ("vgpo/token_weight/min", "vgpo/token_weight/mean", "vgpo/token_weight/max")
ALPHA_METRICS = ("vgpo/trajectory_weight/min", "vgpo/trajectory_weight/mean", "vgpo/trajectory_weight/max")
PROGRESS_METRICS = (REWARD_METRIC, "vgpo/focus/mean", FOCUS_FIRST_METRIC, FOCUS_LAST_METRIC, *PSI_METRICS[::2],
                    *ALPHA_METRICS[::2], STEP_TIME_METRIC)

_STEP_LINE = re.compile(r"\bstep:(\d+) - (.*)$")


class DemoError(RuntimeError):
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
            "a vision-language model whose prompts contain image tokens (e.g. python -m verl_vgpo.cpu.tiny_vlm --out DIR)"
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
# running main_ppo
# ---------------------------------------------------------------------------------------------------


def _format_progress(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}"]
    for key in PROGRESS_METRICS:
        if key in metrics:
            parts.append(f"{key}={metrics[key]:.4g}")
    return "  ".join(parts)


def _parse_console_metrics(text: str) -> dict[str, float]:
    metrics = {}
    for item in text.split(" - "):
        key, _, value = item.partition(":")
        try:
            metrics[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return metrics


def run_main_ppo(algo: str, steps: int, out_dir: Path, model_dir: Path, data_dir: Path, timeout_s: float,
                 extra_overrides: list[str] | None = None, quiet: bool = False) -> dict:
    """Run examples/run_vgpo_tiny_cpu.sh for one algorithm; returns {"wall_s", "metrics_path", "log_path"}."""
    if algo not in ALGORITHMS:
        raise DemoError(f"--algo must be one of {ALGORITHMS} (or both), got {algo!r}")
    run_dir = out_dir / algo
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    log_path = run_dir / "main_ppo.log"
    if metrics_path.exists():
        metrics_path.unlink()  # verl's file logger appends per run; never mix two runs
    env = dict(
        os.environ,
        ALGO=algo,
        STEPS=str(steps),
        OUT_DIR=str(run_dir),
        MODEL_DIR=str(model_dir),
        DATA_DIR=str(data_dir),
        PYTHON=sys.executable,
        VERL_FILE_LOGGER_PATH=str(metrics_path),
    )
    command = ["bash", str(RUN_SCRIPT), *(extra_overrides or [])]

    def show_step(line: str) -> None:
        match = _STEP_LINE.search(line)
        if match and not quiet:
            print(f"[{algo}] {_format_progress(int(match.group(1)), _parse_console_metrics(match.group(2)))}", flush=True)

    start = time.monotonic()
    return_code = stream_subprocess(command, REPO_ROOT, env, log_path, timeout_s, show_step)
    wall_s = time.monotonic() - start
    if return_code is None:
        raise DemoError(f"{algo}: main_ppo did not finish within {timeout_s:.0f}s and was stopped; log: {log_path}")
    if return_code != 0:
        raise DemoError(f"{algo}: main_ppo failed (exit code {return_code}):\n{_error_excerpt(log_path)}\nfull log: {log_path}")
    if not metrics_path.is_file():
        raise DemoError(f"{algo}: main_ppo finished but wrote no metrics file {metrics_path}")
    if not quiet:
        print(f"[{algo}] finished {steps} steps in {wall_s:.1f}s (metrics: {metrics_path})", flush=True)
    return {"wall_s": wall_s, "metrics_path": metrics_path, "log_path": log_path}


def stream_subprocess(command: list[str], cwd: Path, env: dict, log_path: Path, timeout_s: float, on_line) -> int | None:
    """Run ``command`` in its own process group, copy its output to ``log_path`` and ``on_line``; return
    its exit code, or None when it ran past ``timeout_s`` (then the whole group has been stopped)."""
    start = time.monotonic()
    deadline = start + timeout_s
    with open(log_path, "w") as log:
        # own process group: on timeout the whole tree (driver, Ray head, workers) is stopped together
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, start_new_session=True)
        try:
            for line in _lines_until(process, deadline):
                log.write(line)
                on_line(line)
            return process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        finally:
            if process.poll() is None:
                _stop_process_group(process)


def _lines_until(process: subprocess.Popen, deadline: float):
    """Yield the process's output lines; raise TimeoutExpired once the deadline passes (checked per line and
    by a watchdog, so a silent hang is bounded too)."""
    import threading

    expired = threading.Event()

    def watchdog():
        while process.poll() is None:
            if time.monotonic() >= deadline:
                expired.set()
                _stop_process_group(process)  # closes the pipe, so the reading loop below ends too
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    for line in process.stdout:
        yield line
        if expired.is_set():
            break
    if expired.is_set():
        raise subprocess.TimeoutExpired(process.args, 0)


def _stop_process_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _error_excerpt(log_path: Path, max_lines: int = 12) -> str:
    """The most informative lines of a failed run: the last exception lines."""
    lines = log_path.read_text(errors="replace").splitlines()
    error_lines = [line for line in lines if re.search(r"(Error|Exception)\b.*:", line) and "Warning" not in line]
    return "\n".join((error_lines or lines)[-max_lines:])


def read_metrics(metrics_path: Path) -> list[dict]:
    """verl's file-logger records -> [{"step": int, **metrics}], ordered by step."""
    records = []
    for line in Path(metrics_path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records.append({"step": int(record["step"]), **record["data"]})
    return sorted(records, key=lambda record: record["step"])


# ---------------------------------------------------------------------------------------------------
# plot and summary
# ---------------------------------------------------------------------------------------------------


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if value is not None and math.isfinite(float(value)):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def plot_runs(runs: dict[str, list[dict]], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    reward_axis, focus_axis, psi_axis, alpha_axis = axes.ravel()

    for algo, records in runs.items():
        steps, values = _series(records, REWARD_METRIC)
        reward_axis.plot(steps, values, marker="o", label=algo)
    reward_axis.set(title="reward (mean score per step)", xlabel="step", ylabel=REWARD_METRIC)
    reward_axis.legend()

    vgpo_records = runs.get("vgpo", [])
    for key, label in ((FOCUS_FIRST_METRIC, "first third"), (FOCUS_LAST_METRIC, "last third")):
        steps, values = _series(vgpo_records, key)
        focus_axis.plot(steps, values, marker="o", label=label)
    focus_axis.set(title="VGPO visual focus (cosine) along responses", xlabel="step", ylabel="mean focus")
    focus_axis.legend()

    for axis, keys, title in ((psi_axis, PSI_METRICS, "token weight psi"), (alpha_axis, ALPHA_METRICS, "trajectory weight alpha")):
        (_, low), (_, mean), (_, high) = (_series(vgpo_records, key) for key in keys)
        steps, _ = _series(vgpo_records, keys[1])
        if steps and len(low) == len(high) == len(steps):
            axis.fill_between(steps, low, high, alpha=0.25, label="min..max")
        axis.plot(steps, mean, marker="o", label="mean")
        axis.set(title=f"VGPO {title} range", xlabel="step")
        axis.legend()

    from matplotlib.ticker import MaxNLocator

    for axis in axes.ravel():
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle("verl main_ppo on CPU: tiny random Qwen2.5-VL on easy-vqa")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)


def write_summary(runs: dict[str, list[dict]], wall_times: dict[str, float], summary_path: Path, png_name: str) -> str:
    lines = ["# VGPO demo (verl main_ppo on CPU)", "",
             "Tiny random Qwen2.5-VL (verl_vgpo.cpu.tiny_vlm), easy-vqa images, graded exact-match reward, "
             "rollout `hf_cpu`. A random model does not learn VQA in a few steps: this shows the pipeline and "
             "VGPO's signals, not accuracy.", "", f"![demo]({png_name})", ""]
    for algo, records in runs.items():
        trained = sum(1 for record in records if record["step"] >= 1)
        lines += [f"## {algo}: {trained} steps, wall {wall_times.get(algo, float('nan')):.1f}s", ""]
        columns = [REWARD_METRIC, STEP_TIME_METRIC]
        if algo == "vgpo":
            columns += ["vgpo/focus/mean", FOCUS_FIRST_METRIC, FOCUS_LAST_METRIC, "vgpo/focus/last_over_first",
                        PSI_METRICS[0], PSI_METRICS[2], ALPHA_METRICS[0], ALPHA_METRICS[2], "vgpo/no_signal_fraction"]
        columns = [column for column in columns if any(column in record for record in records)]
        lines.append("| step | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for record in records:
            if record["step"] < 1:
                continue  # validation-only record (trainer.val_before_train)
            cells = [f"{record[column]:.4g}" if isinstance(record.get(column), (int, float)) else "" for column in columns]
            lines.append(f"| {record['step']} | " + " | ".join(cells) + " |")
        lines.append("")
        validation = [(record["step"], key, value) for record in records for key, value in record.items()
                      if key.startswith("val-core/") and isinstance(value, (int, float))]
        if validation:
            lines += ["Validation (greedy): " + ", ".join(f"step {step} {key}={value:.4g}" for step, key, value in validation), ""]
    text = "\n".join(lines)
    summary_path.write_text(text)
    return text


# ---------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="vgpo", choices=[*ALGORITHMS, "both"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="artifacts/demo")
    parser.add_argument("--model-dir", default=None, help="default: <out>/../tiny_vlm (built if missing)")
    parser.add_argument("--data-dir", default=None, help="default: <out>/../easy_vqa (built if missing)")
    parser.add_argument("--timeout", type=float, default=540.0, help="wall-clock limit per main_ppo run, seconds")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides passed to main_ppo")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else out_dir.parent / "tiny_vlm"
    data_dir = Path(args.data_dir).resolve() if args.data_dir else out_dir.parent / "easy_vqa"

    try:
        if not (model_dir / "config.json").exists():
            from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

            print(f"building tiny VLM in {model_dir}", flush=True)
            build_tiny_vlm(model_dir)
        if not (data_dir / "train.parquet").exists():
            print(f"building easy-vqa parquet files in {data_dir}", flush=True)
            from verl_vgpo.data.easy_vqa import write_splits

            write_splits(data_dir, train_size=64, val_size=16)
        check_model_has_image_tokens(model_dir)
        for split_file in ("train.parquet", "test.parquet"):
            check_dataset_has_images(data_dir / split_file)

        algorithms = ALGORITHMS if args.algo == "both" else (args.algo,)
        runs, wall_times = {}, {}
        for algo in algorithms:
            print(f"[{algo}] python -m verl.trainer.main_ppo algorithm.adv_estimator={algo} ... "
                  f"({args.steps} steps, limit {args.timeout:.0f}s)", flush=True)
            result = run_main_ppo(algo, args.steps, out_dir, model_dir, data_dir, args.timeout, args.overrides)
            runs[algo] = read_metrics(result["metrics_path"])
            wall_times[algo] = result["wall_s"]
            trained_steps = [record["step"] for record in runs[algo] if record["step"] >= 1]  # step 0: validation only
            if trained_steps != list(range(1, args.steps + 1)):
                raise DemoError(f"{algo}: expected logged steps 1..{args.steps}, got {trained_steps}")
    except DemoError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1

    png_path = out_dir / "demo.png"
    plot_runs(runs, png_path)
    summary = write_summary(runs, wall_times, out_dir / "summary.md", png_path.name)
    print(summary)
    print(f"plot: {png_path}\nsummary: {out_dir / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
