"""The package's modules import each other without cycles, lazy imports included."""
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


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports_on_its_own(name):
    assert importlib.util.find_spec(name) is not None
