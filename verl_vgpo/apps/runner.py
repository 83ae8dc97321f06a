"""Run the CPU run script (``python -m verl.trainer.main_ppo`` with the CPU settings) in a subprocess.

Used by ``vgpo-demo``, ``vgpo-experiment``, the benchmarks and the end-to-end tests: a hard wall-clock limit
on the whole process tree, per-step progress lines parsed from verl's console logger, and verl's ``file``
logger records read back as ``[{"step": int, **metrics}]``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# package data (setup.py); examples/run_vgpo_tiny_cpu.sh is a link to this file
RUN_SCRIPT = Path(__file__).resolve().with_name("run_vgpo_tiny_cpu.sh")
ALGORITHMS = ("vgpo", "grpo")

REWARD_METRIC = "critic/score/mean"
STEP_TIME_METRIC = "timing_s/step"
FOCUS_FIRST_METRIC = "vgpo/focus/first_third"
FOCUS_LAST_METRIC = "vgpo/focus/last_third"
PSI_METRICS = ("vgpo/token_weight/min", "vgpo/token_weight/mean", "vgpo/token_weight/max")
ALPHA_METRICS = ("vgpo/trajectory_weight/min", "vgpo/trajectory_weight/mean", "vgpo/trajectory_weight/max")
PROGRESS_METRICS = (REWARD_METRIC, "vgpo/focus/mean", FOCUS_FIRST_METRIC, FOCUS_LAST_METRIC, *PSI_METRICS[::2],
                    *ALPHA_METRICS[::2], STEP_TIME_METRIC)

_STEP_LINE = re.compile(r"\bstep:(\d+) - (.*)$")


class RunError(RuntimeError):
    """A main_ppo run that failed, timed out or wrote no metrics, with the reason."""


# ---------------------------------------------------------------------------------------------------


def _format_progress(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}"]
    for key in PROGRESS_METRICS:
        if key in metrics:
            parts.append(f"{key}={metrics[key]:.4g}")
    return "  ".join(parts)


_NUMPY_SCALAR = re.compile(r"^np\.\w+\((.*)\)$")


def _parse_console_metrics(text: str) -> dict[str, float]:
    metrics = {}
    for item in text.split(" - "):
        key, _, value = item.partition(":")
        value = _NUMPY_SCALAR.sub(r"\1", value.strip())  # verl prints numpy scalars as np.float64(0.5)
        try:
            metrics[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return metrics


def cpu_dtype_line() -> str:
    """The actor dtype the run script will choose on this host (:mod:`verl_vgpo.cpu.dtype`), as the line it
    prints; printed at the start of the demo and the experiment. A bad ``VGPO_CPU_DTYPE`` is a RunError."""
    from verl_vgpo.cpu import dtype

    try:
        return dtype.describe(dtype.host_dtype())
    except ValueError as error:
        raise RunError(str(error)) from error


def run_main_ppo(algo: str, steps: int, out_dir: Path, model_dir: Path, data_dir: Path, timeout_s: float,
                 extra_overrides: list[str] | None = None, quiet: bool = False, knobs: dict | None = None,
                 run_name: str | None = None, cwd: Path | None = None) -> dict:
    """Run the CPU run script for one algorithm into ``out_dir/<run_name or algo>``.

    ``knobs`` are the script's environment knobs (TRAIN_SIZE, LR, SEED, ...); ``extra_overrides`` go to
    main_ppo as Hydra overrides. Returns {"wall_s", "metrics_path", "log_path", "run_dir"}.
    """
    if algo not in ALGORITHMS:
        raise RunError(f"--algo must be one of {ALGORITHMS} (or both), got {algo!r}")
    run_dir = out_dir / (run_name or algo)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    log_path = run_dir / "main_ppo.log"
    if metrics_path.exists():
        metrics_path.unlink()  # verl's file logger appends per run; never mix two runs
    env = dict(
        os.environ,
        **{key: str(value) for key, value in (knobs or {}).items()},
        ALGO=algo,
        STEPS=str(steps),
        OUT_DIR=str(run_dir),
        MODEL_DIR=str(model_dir),
        DATA_DIR=str(data_dir),
        PYTHON=sys.executable,
        VERL_FILE_LOGGER_PATH=str(metrics_path),
    )
    command = ["bash", str(RUN_SCRIPT), *(extra_overrides or [])]
    label = run_name or algo

    def show_step(line: str) -> None:
        match = _STEP_LINE.search(line)
        if match and not quiet:
            print(f"[{label}] {_format_progress(int(match.group(1)), _parse_console_metrics(match.group(2)))}", flush=True)

    start = time.monotonic()
    return_code = stream_subprocess(command, cwd or run_dir, env, log_path, timeout_s, show_step)
    wall_s = time.monotonic() - start
    if return_code is None:
        raise RunError(f"{label}: main_ppo did not finish within {timeout_s:.0f}s and was stopped; log: {log_path}")
    if return_code != 0:
        raise RunError(f"{label}: main_ppo failed (exit code {return_code}):\n{_error_excerpt(log_path)}\nfull log: {log_path}")
    if not metrics_path.is_file():
        raise RunError(f"{label}: main_ppo finished but wrote no metrics file {metrics_path}")
    if not quiet:
        print(f"[{label}] finished {steps} steps in {wall_s:.1f}s (metrics: {metrics_path})", flush=True)
    return {"wall_s": wall_s, "metrics_path": metrics_path, "log_path": log_path, "run_dir": run_dir}


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


def override_key(override: str) -> str:
    """The config key of a Hydra override (``+key=v``, ``++key=v``, ``~key``: ``key``)."""
    return override.split("=", 1)[0].lstrip("+~")


def read_metrics(metrics_path: Path) -> list[dict]:
    """verl's file-logger records -> [{"step": int, **metrics}], ordered by step."""
    records = []
    for line in Path(metrics_path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records.append({"step": int(record["step"]), **record["data"]})
    return sorted(records, key=lambda record: record["step"])
