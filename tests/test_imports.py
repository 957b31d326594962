"""The package's modules import each other in one direction, without cycles, lazy imports
included: commands, then tools and sweeps, then training, then the model and the input
pipeline, then runtime (the order ``alexnet_jax/__init__.py`` describes)."""
import ast
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "alexnet_jax")


def module_names() -> dict[str, str]:
    """Module name -> file, for every module of the package (packages by their __init__)."""
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (inside functions too):
    ``from a.b import c`` is module ``a.b.c`` where that is one, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name in modules:
                    found.add(name)
                elif node.module in modules:
                    found.add(node.module)
    return found


def test_no_module_imports_itself_through_others():
    modules = module_names()
    graph = {name: imports(path, modules) - {name} for name, path in modules.items()}
    cycles = []

    def visit(name, stack):
        if name in stack:
            cycles.append(stack[stack.index(name):] + [name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, stack + [name])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [])
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


# Each part of the package and the parts it may import (its own modules among them).
COMMANDS = ("main", "summary", "prepare", "figures", "benchmark", "data_service")
BELOW = {
    "commands": {"package", "tools", "sweep", "training", "model", "input_pipeline", "runtime"},
    "package": {"model", "runtime"},  # prepare_process: the CPU extra's process settings
    "sweep": {"sweep", "tools", "training", "model", "input_pipeline", "runtime"},
    "tools": {"tools", "training", "model", "input_pipeline", "runtime"},
    "training": {"training", "model", "input_pipeline", "runtime"},
    "model": {"model", "runtime"},
    "input_pipeline": {"input_pipeline", "runtime"},
    "runtime": {"runtime"},
}


def part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in COMMANDS:
        return "commands"
    assert parts[1] in BELOW, f"{module} is in no part of the package: add it to BELOW"
    return parts[1]


def test_imports_point_one_way():
    modules = module_names()
    wrong = [f"{name} ({part(name)}) imports {target} ({part(target)})"
             for name, path in sorted(modules.items())
             for target in sorted(imports(path, modules) - {name})
             if part(target) not in BELOW[part(name)]]
    assert wrong == [], "\n".join(wrong)


def test_the_top_level_holds_only_commands():
    top = {name.split(".")[1] for name in module_names() if name.count(".") == 1}
    assert top == set(COMMANDS) | (set(BELOW) - {"commands", "package"})


@pytest.mark.parametrize("folder", ["model", "training"])
def test_the_research_code_meets_no_thread_signal_or_orbax(folder):
    """Threads, signal handlers and orbax's workarounds are runtime's, not the model's or
    the loop's."""
    modules = module_names()
    found = []
    for name, path in sorted(modules.items()):
        if part(name) != folder:
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{name}: {n}" for n in names
                      if n.split(".")[0] in ("threading", "signal", "orbax")]
    assert found == []


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports_on_its_own(name):
    assert importlib.util.find_spec(name) is not None
