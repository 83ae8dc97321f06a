"""Repository layout the package relies on: the CPU run script is package data and examples/ links to it.

Run by `make check` (and so by `make test-all` / CI); not a test because it checks files, not behaviour.
"""

import sys
from pathlib import Path

from verl_vgpo.apps.runner import RUN_SCRIPT

ROOT = Path(__file__).resolve().parents[1]


def problems() -> list[str]:
    found = []
    if not (RUN_SCRIPT.is_file() and RUN_SCRIPT.parent.name == "apps"):
        found.append(f"{RUN_SCRIPT} is not a file in verl_vgpo/apps")
    example = ROOT / "examples" / "run_vgpo_tiny_cpu.sh"
    if not (example.is_symlink() and example.resolve() == RUN_SCRIPT.resolve()):
        found.append(f"{example} must be a link to {RUN_SCRIPT}")
    if "run_vgpo_tiny_cpu.sh" not in (ROOT / "setup.py").read_text():
        found.append("setup.py's package_data does not name run_vgpo_tiny_cpu.sh")
    if "examples/" in RUN_SCRIPT.read_text().split("set -euo pipefail", 1)[-1]:
        found.append(f"{RUN_SCRIPT.name} must not need a repository path (it ships in the wheel)")
    return found


if __name__ == "__main__":
    issues = problems()
    for line in issues:
        print(f"layout: {line}", file=sys.stderr)
    print("layout ok" if not issues else f"{len(issues)} layout problem(s)")
    sys.exit(1 if issues else 0)
