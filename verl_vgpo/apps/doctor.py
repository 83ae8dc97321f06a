"""``vgpo-doctor``: can a ``algorithm.adv_estimator=vgpo`` run start on this node? Run it on every node.

    vgpo-doctor                 # versions, plugin load here and in a Ray worker, registrations, fixes, devices
    vgpo-doctor --skip-ray      # without starting (or joining, when RAY_ADDRESS is set) a Ray cluster

Prints what it finds and exits 0 when a vgpo run can start here, 1 with the reasons otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

from packaging.specifiers import SpecifierSet

# distribution -> the versions this release is tested with (constraints.txt pins the CPU test set; the
# GPU extras have not run in CI). Outside the install range of setup.py a run is refused.
TESTED = {
    "verl": "==0.9.1",
    "transformers": "==5.10.4",
    "torch": "==2.14.1",
    "vllm": None,
    "flash-attn": None,
    "flash-linear-attention": None,
}
REQUIRED = {"verl": ">=0.9.1,<0.10", "transformers": ">=5.5.3,<5.11", "torch": ">=2.6"}
PLUGIN_NAME = "vgpo"


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def version_lines() -> tuple[list[str], list[str]]:
    """(report lines, problems) for the versions found."""
    lines, problems = [], []
    for distribution, tested in TESTED.items():
        found = installed_version(distribution)
        required = REQUIRED.get(distribution)
        if found is None:
            note = "not installed" + (" (required)" if required else " (GPU extra; optional)")
            if required:
                problems.append(f"{distribution} is not installed (need {distribution}{required})")
        elif required and not SpecifierSet(required).contains(found, prereleases=True):
            note = f"{found}  OUTSIDE {required}"
            problems.append(f"{distribution} {found} is outside the supported range {required}")
        elif tested and SpecifierSet(tested).contains(found, prereleases=True):
            note = f"{found}  tested"
        elif tested:
            note = f"{found}  supported, not the tested {tested.lstrip('=')}"
        else:
            note = f"{found}  not yet tested by this release"
        lines.append(f"  {distribution:<24} {note}")
    return lines, problems


def plugin_policy_problem(policy: str | None) -> str | None:
    """Why verl would not load the plugin under ``VERL_USE_EXTERNAL_PLUGINS=policy``, or None."""
    policy = (policy or "auto").strip().lower()
    if policy == "auto":
        return None
    if policy == "none":
        return "VERL_USE_EXTERNAL_PLUGINS=none: verl loads no plugin, so algorithm.adv_estimator=vgpo is unknown"
    allowed = {name.strip() for name in policy.split(",") if name.strip()}
    if PLUGIN_NAME not in allowed:
        return (f"VERL_USE_EXTERNAL_PLUGINS={policy} does not name '{PLUGIN_NAME}': verl skips this plugin "
                f"(add {PLUGIN_NAME} to the list or unset the variable)")
    return None


def plugin_state() -> dict:
    """What ``import verl`` did with the plugin in this process."""
    import verl  # noqa: F401  (loads the plugin per VERL_USE_EXTERNAL_PLUGINS)

    plugin = sys.modules.get("verl_vgpo.plugin")
    state = {"loaded": bool(plugin is not None and plugin.LOADED),
             "status": dict(plugin.STATUS) if plugin is not None else {}}
    try:
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn

        state["estimator"] = get_adv_estimator_fn(PLUGIN_NAME) is not None
    except ValueError:
        state["estimator"] = False
    return state


def ray_worker_state() -> dict:
    """The plugin state inside a Ray worker (a local one-CPU Ray, or the cluster named by RAY_ADDRESS)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        return ray.get(ray.remote(num_cpus=0)(plugin_state).remote(), timeout=300)
    finally:
        if started_here:
            ray.shutdown()


def accelerators() -> tuple[list[str], str | None]:
    """(lines, problem): the devices torch sees; no accelerator is a problem unless VERL_PLATFORM=cpu."""
    import torch

    lines = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            lines.append(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        lines.append(f"  npu x {npu.device_count()}")
    if lines:
        return lines, None
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
        return ["  none; VERL_PLATFORM=cpu selects verl-vgpo's CPU platform (tests and CPU smoke runs)"], None
    return ["  none"], ("no GPU or NPU is visible: a cluster run cannot start here "
                        "(CPU runs set VERL_PLATFORM=cpu, as the CPU run script and SMOKE=cpu do)")


def diagnose(check_ray: bool = True) -> tuple[list[str], list[str]]:
    """(report lines, problems); no problems means a vgpo run can start here."""
    lines = ["versions (found / tested):"]
    found, problems = version_lines()
    lines += found
    if problems:  # importing verl could fail or mislead with the wrong versions
        return lines, problems

    listed = [ep for ep in entry_points(group="verl.plugins") if ep.name == PLUGIN_NAME]
    lines.append(f"entry point verl.plugins:{PLUGIN_NAME}: {listed[0].value if listed else 'MISSING'}")
    if not listed:
        problems.append("verl-vgpo's entry point is not installed: pip install verl-vgpo (or -e .) in this environment")
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS")
    lines.append(f"VERL_USE_EXTERNAL_PLUGINS: {policy or 'unset (auto)'}")
    if plugin_policy_problem(policy):
        problems.append(plugin_policy_problem(policy))

    here = plugin_state()
    lines.append(f"plugin loaded by import verl in this process: {'yes' if here['loaded'] else 'NO'}")
    lines.append("registrations:")
    lines += [f"  {name}: {state}" for name, state in here["status"].items()]
    lines.append(f"estimator '{PLUGIN_NAME}' in verl's registry: {'yes' if here['estimator'] else 'NO'}")
    failed = [name for name, state in here["status"].items() if state.startswith("failed")]
    if not here["loaded"] and not plugin_policy_problem(policy):
        problems.append("import verl did not load the plugin in this process")
    problems += [f"registration {name} failed: {here['status'][name]}" for name in failed]
    if here["loaded"] and not here["estimator"]:
        problems.append("the vgpo estimator is not in verl's registry")

    from verl_vgpo.wiring import compat

    lines.append(f"verl fixes ({compat.FIXES_ENV}={os.environ.get(compat.FIXES_ENV, 'unset')}):")
    for fix, active, why in compat.fix_status():
        lines.append(f"  {fix.name}: {'active' if active else 'off'} ({why}) - {fix.summary}")

    if check_ray:
        try:
            worker = ray_worker_state()
            lines.append(f"plugin loaded in a Ray worker: {'yes' if worker['loaded'] else 'NO'}"
                         f" (estimator {'registered' if worker['estimator'] else 'MISSING'})")
            if not (worker["loaded"] and worker["estimator"]):
                problems.append("a Ray worker did not load the plugin: check VERL_USE_EXTERNAL_PLUGINS and the "
                                "Python environment of the Ray workers")
        except Exception as error:  # a broken Ray is a finding, not a crash of the doctor
            lines.append(f"plugin in a Ray worker: could not check ({type(error).__name__}: {error})")
            problems.append(f"could not start a Ray worker: {type(error).__name__}: {error}")
    else:
        lines.append("plugin in a Ray worker: not checked (--skip-ray)")

    lines.append("accelerators:")
    device_lines, device_problem = accelerators()
    lines += device_lines
    if device_problem:
        problems.append(device_problem)
    return lines, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-ray", action="store_true", help="do not check the plugin inside a Ray worker")
    args = parser.parse_args(argv)
    lines, problems = diagnose(check_ray=not args.skip_ray)
    print("\n".join(lines))
    if problems:
        print("\nvgpo-doctor: a vgpo run cannot start here:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("\nvgpo-doctor: ok, a vgpo run can start here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
