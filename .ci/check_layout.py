"""Repository checks: the CPU run script is package data and examples/ links to it; no import cycle in verl_vgpo.

Run by `make check` (and so by `make test-all` / CI); not a test because it checks files, not behaviour.
"""

import ast
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


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (lazy imports count too)."""
    files = {".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in package.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = base.split(".")[: len(base.split(".")) - max(0, node.level - 1)] if node.level else []
                target = ".".join(parts + ([node.module] if node.module else []))
                edges |= {name for name in [target] + [f"{target}.{a.name}" for a in node.names] if name in files}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
        graph[module] = edges - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, seen = [], set()

    def walk(start, node, path):
        for nxt in sorted(graph[node]):
            if nxt == start and frozenset(path) not in seen:
                seen.add(frozenset(path))
                cycles.append(path + [start])
            elif nxt not in path and nxt > start:  # each cycle once, from its smallest module
                walk(start, nxt, path + [nxt])

    for module in sorted(graph):
        walk(module, module, [module])
    return cycles


if __name__ == "__main__":
    issues = problems() + [f"import cycle: {' -> '.join(c)}" for c in import_cycles(import_graph(ROOT / "verl_vgpo"))]
    for line in issues:
        print(f"layout: {line}", file=sys.stderr)
    print("checks ok" if not issues else f"{len(issues)} problem(s)")
    sys.exit(1 if issues else 0)
