"""``SMOKE=cpu bash recipes/vgpo/<script>.sh [overrides...]``: a recipe's own config through the real
``python -m verl.trainer.main_ppo`` on a CPU-only machine, with only what cannot run on a CPU swapped.

``recipes/vgpo/common.sh`` calls this module (``run_main_ppo`` with ``SMOKE`` set) with the script's name, the
number of the user's own arguments and the exact argv it would hand to main_ppo. It composes that config with
Hydra to read the recipe's values, then runs main_ppo with ``recipe argv + swaps + user arguments`` (the user's
come last and win), after printing every swapped key with the recipe's value, the smoke value and why.

Swapped (and nothing else): the model (a random tiny model of the script's family, built and cached, unless
``MODEL_PATH`` is given), the rollout (``hf_cpu``, tensor parallel 1), the attention kernel (HF ``sdpa``; verl's
packed Qwen2.5-VL attention gets flash-attn's kernels from :mod:`verl_vgpo.testing.flash_attn_standin`), the
device and worker counts (2 data-parallel CPU ranks over gloo, one agent / reward / storage worker, Ray's CPU
resources), the data (embedded easy-vqa files unless ``TRAIN_FILES`` / ``VAL_FILES`` are given), the reward (a
random tiny model cannot write ``\\boxed{}``: :mod:`verl_vgpo.rewards.smoke`), the compute dtype of this host
(:mod:`verl_vgpo.cpu.dtype`) and the sizes, which keep the recipe's ratios: updates per rollout batch
(``train_batch_size / ppo_mini_batch_size``), rollout n, and token limits as the same multiple of one
sequence (prompt + response), so dynamic batching really splits. Steps: :data:`SMOKE_STEPS` with ``save_freq=1``.

Outputs under ``OUT_DIR`` (default ``artifacts/smoke/<script name>``): ``hydra/.hydra/config.yaml``,
``metrics.jsonl`` (verl's file logger), ``checkpoints/``, ``rollouts/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from verl_vgpo.apps.runner import override_key

SMOKE_VALUES = ("cpu",)
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")
# run_<family>_<size>_<algo>.sh
_SCRIPT_FAMILY = re.compile(r"^run_(qwen2_5_vl|qwen3_vl|qwen3_5)_")
# hub names of the families, for a clear refusal of a MODEL_PATH that is no local folder
_HUB_FAMILY = ((re.compile(r"qwen2\.5-vl|qwen2_5_vl", re.I), "qwen2_5_vl"),
               (re.compile(r"qwen3-vl|qwen3_vl", re.I), "qwen3_vl"),
               (re.compile(r"qwen3\.5|qwen3_5", re.I), "qwen3_5"))

SMOKE_STEPS = 3
DATA_PARALLEL_RANKS = 2
PROMPT_LENGTH = 128
RESPONSE_LENGTH = 16
MINI_BATCH_PROMPTS = 1
TRAIN_ROWS = 64
VAL_ROWS = 8
# measured peak of a smoke run (driver, Ray, 2 FSDP ranks, rollout server, workers): see the recipe README
MIN_MEMORY_GIB = 8.0
MIN_CORES = 2
STANDIN_MODULE = "verl_vgpo.testing.load_flash_attn_standin"

# token-budget keys scaled with the sequence length (when the recipe sets them, not interpolated)
TOKEN_KEYS = (
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
    "actor_rollout_ref.rollout.max_model_len",
)


class SmokeError(RuntimeError):
    """A smoke run that cannot start: the message says what to change."""


@dataclass
class Swap:
    key: str
    recipe: object
    smoke: object
    why: str
    new: bool = False  # not in the composed config: needs Hydra's "+"

    def override(self) -> str:
        value = self.smoke
        if isinstance(value, bool):
            text = str(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ",".join(str(v) for v in value) + "]"
        elif isinstance(value, str) and "," in value:
            # unquoted, Hydra reads a sweep; quoted, a backslash before a quote or at the end escapes it
            text = "'" + re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'") + "'"
        else:
            text = str(value)
        return f"{'+' if self.new else ''}{self.key}={text}"


@dataclass
class SmokePlan:
    script: str
    family: str
    out_dir: Path
    model_path: Path
    build_model: bool
    data_dir: Path | None
    swaps: list[Swap]
    argv: list[str]  # for python -m verl.trainer.main_ppo
    env: dict[str, str]
    user_keys: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def script_family(script: str) -> str:
    """The model family a recipe script trains, from its name (``run_<family>_...sh``)."""
    match = _SCRIPT_FAMILY.match(Path(script).name)
    if not match:
        raise SmokeError(f"SMOKE=cpu: cannot tell the model family of {Path(script).name} (expected run_<family>_*.sh "
                         f"with family one of {', '.join(FAMILIES)})")
    return match.group(1)


def check_smoke_value(value: str) -> str:
    if value not in SMOKE_VALUES:
        raise SmokeError(f"SMOKE must be one of {', '.join(SMOKE_VALUES)} (a CPU smoke run), got {value!r}; "
                         "unset SMOKE for a real run")
    return value


def model_family(model_path: str) -> str | None:
    """``model_type`` of a local model folder; for a hub-style name the family it names; else None."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    for pattern, family in _HUB_FAMILY:
        if pattern.search(model_path):
            return family
    return None


def check_model_path(model_path: str, family: str, script: str) -> Path:
    """A user-given MODEL_PATH for a smoke run: a local folder of the script's own family."""
    found = model_family(model_path)
    if found != family:
        raise SmokeError(f"SMOKE=cpu {script}: MODEL_PATH={model_path} is a {found or 'unknown'} model, but {script} "
                         f"trains a {family} model; give a tiny {family} model (or unset MODEL_PATH to build one)")
    if not (Path(model_path) / "config.json").is_file():
        raise SmokeError(f"SMOKE=cpu {script}: MODEL_PATH={model_path} is not a local model folder; a smoke run needs "
                         f"a tiny local {family} model (unset MODEL_PATH to build one)")
    return Path(model_path).resolve()


def check_machine(cores: int | None = None, available_gib: float | None = None) -> None:
    """Refuse a machine with fewer than MIN_CORES cores or MIN_MEMORY_GIB available memory, saying what it needs."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if available_gib is None:
        available_gib = _available_memory_gib()
    problems = []
    if cores < MIN_CORES:
        problems.append(f"{MIN_CORES} CPU cores (this process may use {cores})")
    if available_gib is not None and available_gib < MIN_MEMORY_GIB:
        problems.append(f"{MIN_MEMORY_GIB:.0f} GiB of available memory ({available_gib:.1f} GiB available)")
    if problems:
        raise SmokeError("SMOKE=cpu needs " + " and ".join(problems) + ": its 2 data-parallel ranks, Ray and the "
                         "rollout server run as separate processes. Free memory or use a larger machine.")


def _available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _compose(config_dir: str, config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _select(config, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key, default=None)


def _has(config, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None) if parent else config
    return node is not None and hasattr(node, "keys") and leaf in node


def _is_interpolation(config, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None)
    return node is not None and leaf in node and OmegaConf.is_interpolation(node, leaf)


def split_main_ppo_argv(argv: list[str]) -> tuple[str, str, list[str]]:
    config_dir = config_name = None
    overrides = []
    for arg in argv:
        if arg.startswith("--config-path="):
            config_dir = arg.split("=", 1)[1]
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if not config_dir or not config_name:
        raise SmokeError("SMOKE=cpu: the recipe's argv has no --config-path / --config-name")
    return config_dir, config_name, overrides


def build_plan(script: str, main_ppo_argv: list[str], user_argc: int, environ: dict[str, str],
               cwd: Path | None = None) -> SmokePlan:
    """Everything a smoke run of ``script`` does, without side effects (no build, no run)."""
    from verl_vgpo.cpu.dtype import dtype_overrides, host_dtype

    check_smoke_value(environ.get("SMOKE", ""))
    script = Path(script).name
    family = script_family(script)
    cwd = cwd or Path.cwd()
    config_dir, config_name, overrides = split_main_ppo_argv(main_ppo_argv)
    if not 0 <= user_argc <= len(overrides):
        raise SmokeError(f"SMOKE=cpu: {user_argc} user arguments but only {len(overrides)} overrides")
    recipe_overrides = overrides[: len(overrides) - user_argc]
    user_overrides = overrides[len(overrides) - user_argc:]
    user_keys = {override_key(arg) for arg in user_overrides}
    config = _compose(config_dir, config_name, overrides)

    out_dir = Path(environ.get("OUT_DIR") or cwd / "artifacts" / "smoke" / Path(script).stem).resolve()
    cache = Path(environ.get("SMOKE_CACHE") or cwd / "artifacts" / "smoke" / "cache").resolve()

    # the model: exported MODEL_PATH = the user's (the scripts' own default is a plain shell variable)
    if environ.get("MODEL_PATH"):
        model_path, build_model = check_model_path(environ["MODEL_PATH"], family, script), False
    else:
        model_path, build_model = cache / f"tiny_{family}", True
    data_dir = None
    if environ.get("TRAIN_FILES") and environ.get("VAL_FILES"):
        train_files, val_files = environ["TRAIN_FILES"], environ["VAL_FILES"]
    elif environ.get("TRAIN_FILES") or environ.get("VAL_FILES"):
        raise SmokeError("SMOKE=cpu: give both TRAIN_FILES and VAL_FILES, or neither (the embedded easy-vqa files)")
    else:
        data_dir = cache / "easy_vqa"
        train_files, val_files = str(data_dir / "train.parquet"), str(data_dir / "test.parquet")

    swaps: list[Swap] = []

    def swap(key: str, value, why: str) -> None:
        swaps.append(Swap(key, _select(config, key), value, why, new=not _has(config, key)))

    # model, rollout, attention
    swap("actor_rollout_ref.model.path", str(model_path),
         f"model: tiny random {family} ({'built and cached' if build_model else 'MODEL_PATH'})")
    swap("actor_rollout_ref.model.override_config.attn_implementation", "sdpa",
         "attention kernel: HF sdpa (packed Qwen2.5-VL attention: flash-attn's kernels as torch code)")
    swap("actor_rollout_ref.rollout.name", "hf_cpu", "rollout: HF generate on CPU (vLLM / SGLang need a GPU)")
    swap("actor_rollout_ref.rollout.tensor_model_parallel_size", 1, "rollout: one CPU process per replica")
    # devices and workers
    swap("trainer.device", "cpu", "device: CPU platform, gloo")
    swap("trainer.nnodes", 1, "devices: one machine")
    swap("trainer.n_gpus_per_node", DATA_PARALLEL_RANKS, f"devices: {DATA_PARALLEL_RANKS} data-parallel CPU ranks")
    swap("ray_kwargs.ray_init.num_cpus", 16, "Ray: CPU slots for verl's actors (2 would deadlock)")
    swap("ray_kwargs.ray_init.num_gpus", DATA_PARALLEL_RANKS, "Ray: verl counts GPUs; declared, never requested")
    swap("ray_kwargs.ray_init.resources.verl_cpu_device", DATA_PARALLEL_RANKS, "Ray: the CPU platform's device slots")
    swap("ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM", "cpu", "workers: CPU platform")
    given_modules = [m for m in environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    external_modules = ",".join(dict.fromkeys([*given_modules, STANDIN_MODULE]))
    swap("ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES", external_modules,
         "workers: your VERL_USE_EXTERNAL_MODULES plus the flash-attn kernel stand-in (never loads where flash-attn "
         "is installed)")
    swap("actor_rollout_ref.rollout.agent.num_workers", 1, "workers: one agent-loop worker (2 cores)")
    swap("reward.num_workers", 1, "workers: one reward worker (2 cores)")
    swap("transfer_queue.backend.SimpleStorage.num_data_storage_units", 1, "workers: one storage unit (2 cores)")
    swap("data.dataloader_num_workers", 0, "workers: no dataloader processes (2 cores)")
    swap("data.filter_overlong_prompts_workers", 1, "workers: one process filters prompts (2 cores)")
    swap("trainer.v1.sampler.poll_interval", 0.2, "replay-buffer poll 0.2 s (CPU steps take seconds)")
    # compute dtype of this host (bf16 only with native bf16 matmul)
    for override in dtype_overrides(host_dtype()):
        key, value = override.lstrip("+").split("=", 1)
        swap(key, value, "dtype: this host's CPU compute dtype")
    # data and reward
    swap("data.train_files", train_files, "data: " + ("TRAIN_FILES" if data_dir is None else "embedded easy-vqa"))
    swap("data.val_files", val_files, "data: " + ("VAL_FILES" if data_dir is None else "embedded easy-vqa"))
    if _select(config, "reward.custom_reward_function.path"):
        swap("reward.custom_reward_function.path", "pkg://verl_vgpo.rewards.smoke",
             "reward: a random tiny model never writes \\boxed{}; graded answer similarity (0, .25, ... 1) as acc")
        swap("reward.custom_reward_function.name", "compute_score", "reward: see above")

    # sizes, keeping the recipe's ratios
    train_batch = int(_select(config, "data.train_batch_size"))
    mini_batch = int(_select(config, "actor_rollout_ref.actor.ppo_mini_batch_size"))
    if train_batch % mini_batch:
        raise SmokeError(f"SMOKE=cpu: data.train_batch_size {train_batch} is not a multiple of "
                         f"actor_rollout_ref.actor.ppo_mini_batch_size {mini_batch}")
    updates = train_batch // mini_batch
    swap("data.train_batch_size", updates * MINI_BATCH_PROMPTS,
         f"size: {updates} updates per rollout batch as the recipe ({train_batch}/{mini_batch})")
    swap("actor_rollout_ref.actor.ppo_mini_batch_size", MINI_BATCH_PROMPTS, "size: prompts per update")
    prompt_length = int(_select(config, "data.max_prompt_length"))
    response_length = int(_select(config, "data.max_response_length"))
    recipe_sequence, smoke_sequence = prompt_length + response_length, PROMPT_LENGTH + RESPONSE_LENGTH
    swap("data.max_prompt_length", PROMPT_LENGTH, "size: easy-vqa prompts")
    swap("data.max_response_length", RESPONSE_LENGTH, "size: short responses")
    for key in TOKEN_KEYS:
        value = _select(config, key) if _has(config, key) and not _is_interpolation(config, key) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sequences = value / recipe_sequence
            swap(key, max(1, round(sequences * smoke_sequence)),
                 f"size: {sequences:g} x (prompt + response) as the recipe ({value} / {recipe_sequence})")
    for key in ("reward.reward_kwargs.max_resp_len", "reward.reward_kwargs.overlong_buffer_cfg.len"):
        value = _select(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            scaled = max(1, round(value * RESPONSE_LENGTH / response_length))
            swap(key, scaled, f"size: {value}/{response_length} of the response length as the recipe")

    # steps and outputs
    swap("trainer.total_training_steps", SMOKE_STEPS, f"steps: {SMOKE_STEPS}")
    swap("trainer.save_freq", 1, "checkpoints: every step (pruning to max_actor_ckpt_to_keep is exercised)")
    swap("trainer.default_local_dir", str(out_dir / "checkpoints"), "outputs: OUT_DIR/checkpoints")
    swap("trainer.rollout_data_dir", str(out_dir / "rollouts"), "outputs: OUT_DIR/rollouts")
    swap("trainer.logger", ["console", "file"], "outputs: verl's file logger -> OUT_DIR/metrics.jsonl")
    swaps.append(Swap("hydra.run.dir", None, str(out_dir / "hydra"), "outputs: Hydra's record in OUT_DIR/hydra"))

    argv = ["--config-path=" + config_dir, "--config-name=" + config_name, *recipe_overrides,
            *(s.override() for s in swaps), *user_overrides]
    env = {
        "VERL_PLATFORM": "cpu",
        "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS") or "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VERL_FILE_LOGGER_PATH": str(out_dir / "metrics.jsonl"),
        "VERL_USE_EXTERNAL_MODULES": external_modules,
    }
    notes = [f"the reward is swapped (the recipe's cannot score a random tiny model): {s.smoke}"
             for s in swaps if s.key == "reward.custom_reward_function.path"]
    return SmokePlan(script, family, out_dir, model_path, build_model, data_dir, swaps, argv, env, user_keys, notes)


def describe(plan: SmokePlan) -> str:
    lines = [f"SMOKE=cpu {plan.script} ({plan.family}): the recipe's config through verl's main_ppo with these keys "
             f"swapped (recipe -> smoke); everything else is the recipe's. Outputs: {plan.out_dir}"]
    width = max(len(s.key) for s in plan.swaps)
    for s in plan.swaps:
        mark = "   (your argument wins)" if s.key in plan.user_keys else ""
        lines.append(f"  {s.key:<{width}}  {s.recipe!s} -> {s.smoke!s}   [{s.why}]{mark}")
    lines.extend(f"  note: {note}" for note in plan.notes)
    return "\n".join(lines)


def write_smoke_data(data_dir: Path) -> None:
    """easy-vqa train / test parquet files with one row per question text: a dumped prompt (its token ids) then
    names its row and image unambiguously, which the end-to-end focus recompute relies on."""
    import pandas as pd

    from verl_vgpo.data.easy_vqa import build_rows

    data_dir.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", TRAIN_ROWS), ("test", VAL_ROWS)):
        rows = pd.DataFrame(build_rows(split, 6 * size, seed=0))
        rows = rows[~rows["extra_info"].map(lambda info: info["question"]).duplicated()].head(size)
        if len(rows) < size:
            raise SmokeError(f"easy-vqa's {split} split has only {len(rows)} distinct questions, {size} needed")
        rows.to_parquet(data_dir / f"{split}.parquet")


def prepare(plan: SmokePlan) -> None:
    """Build the cached tiny model and data files the plan needs (no-ops when present)."""
    if plan.build_model and not (plan.model_path / "config.json").is_file():
        from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

        print(f"SMOKE=cpu: building a random tiny {plan.family} model in {plan.model_path}", flush=True)
        build_tiny_vlm(plan.model_path, seed=0, family=plan.family)
    if plan.data_dir is not None and not (plan.data_dir / "test.parquet").is_file():
        write_smoke_data(plan.data_dir)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = Path(plan.env["VERL_FILE_LOGGER_PATH"])
    if metrics.exists() and not any("resume_mode" in key for key in plan.user_keys):
        metrics.unlink()  # one run's metrics per file (verl's file logger would mix runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_vgpo.apps.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", required=True, help="the recipe script's path or name")
    parser.add_argument("--user-args", type=int, required=True, help="how many trailing arguments are the user's")
    parser.add_argument("--print-only", action="store_true",
                        help="print the swaps and the argv, run nothing (also: SMOKE_PRINT_ONLY=1)")
    parser.add_argument("main_ppo_argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    main_ppo_argv = args.main_ppo_argv[1:] if args.main_ppo_argv[:1] == ["--"] else args.main_ppo_argv
    args.print_only = args.print_only or os.environ.get("SMOKE_PRINT_ONLY", "") == "1"
    try:
        check_smoke_value(os.environ.get("SMOKE", ""))
        script_family(args.script)
        if not args.print_only:
            check_machine()
        plan = build_plan(args.script, main_ppo_argv, args.user_args, dict(os.environ))
    except SmokeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(describe(plan), flush=True)
    if args.print_only:
        print("\n".join(["python -m verl.trainer.main_ppo", *plan.argv]))
        return 0
    prepare(plan)
    env = dict(os.environ, **plan.env)
    command = [sys.executable, "-m", "verl.trainer.main_ppo", *plan.argv]
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
