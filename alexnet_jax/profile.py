"""Where a compiled step's time goes, per layer and direction, without a profiler UI.

``layer_times`` runs a jitted function under ``jax.profiler.trace``, reads the time of
every XLA instruction from the trace, and attributes each instruction to the layer in
its metadata (the Flax module path, ``towers/conv1/...``, or a named scope such as
``pool1``), forward or backward (autodiff's transposes).  The sums of overlapping
instructions can exceed the wall time: XLA:CPU runs independent ones side by side.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r"metadata=\{[^}]*op_name=\"([^\"]*)\"")
_OPERAND = re.compile(r"%([\w.\-]+)")
_LAYER = re.compile(r"/(conv\d+|fc\d+|output|lrn\d+|bn\d+|pool\d+)(?:/|$)")


def instruction_layers(compiled_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (layer, "forward" | "backward") from the compiled module's
    metadata; instructions of no layer count as ``other``.  An instruction that XLA made
    without metadata (a convolution's kernel gradient it rewrote, a layout change) takes
    that of its nearest user that has some."""
    named, users = {}, {}
    for line in compiled_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, rest = match.groups()
        op_name = _OP_NAME.search(rest)
        named[name] = op_name.group(1) if op_name else None
        for operand in set(_OPERAND.findall(rest.split("metadata=")[0])) - {name}:
            users.setdefault(operand, []).append(name)

    def nearest_op_name(name: str) -> str | None:
        """The op_name of ``name`` or of its nearest user with one (breadth first)."""
        queue, seen = collections.deque([name]), {name}
        while queue:
            current = queue.popleft()
            if named.get(current):
                return named[current]
            for user in users.get(current, ()):
                if user not in seen:
                    seen.add(user)
                    queue.append(user)
        return None

    layers = {}
    for name in named:
        op_name = nearest_op_name(name) or ""
        layer = _LAYER.search(op_name)
        direction = "backward" if "transpose(" in op_name else "forward"
        layers[name] = (layer.group(1) if layer else "other", direction)
    return layers


def _trace_durations(directory: str) -> dict[str, float]:
    """Total microseconds per event name in the perfetto trace written under ``directory``."""
    totals: dict[str, float] = {}
    for path in glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True):
        with gzip.open(path) as f:
            trace = json.load(f)
        for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
            if event.get("ph") == "X":
                totals[event["name"]] = totals.get(event["name"], 0.0) + event.get("dur", 0.0)
    return totals


def layer_times(jitted: Callable, *args: Any, steps: int = 3) -> dict[str, dict[str, float]]:
    """Milliseconds per call of ``jitted(*args)`` spent in each layer's forward and backward
    instructions, averaged over ``steps`` calls (after one untimed call)."""
    layers = instruction_layers(jitted.lower(*args).compile().as_text())
    jax.block_until_ready(jitted(*args))
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(jitted(*args))
        durations = _trace_durations(directory)
    table: dict[str, dict[str, float]] = {}
    for name, (layer, direction) in layers.items():
        if name in durations:
            row = table.setdefault(layer, {"forward_ms": 0.0, "backward_ms": 0.0})
            row[f"{direction}_ms"] += durations[name] / 1000.0 / steps
    return dict(sorted(table.items(), key=_layer_order))


def _layer_order(item: tuple[str, Any]) -> tuple[int, int]:
    name = item[0]
    kinds = {"conv": 0, "lrn": 1, "bn": 1, "pool": 2, "fc": 0, "output": 0, "other": 0}
    kind = re.match(r"[a-z]+", name).group(0)
    index = int(re.sub(r"\D", "", name) or (9 if name == "output" else 10))
    return index, kinds.get(kind, 3)


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'layer':<8} {'forward ms':>11} {'backward ms':>12}"]
    for layer, row in table.items():
        lines.append(f"{layer:<8} {row['forward_ms']:>11.1f} {row['backward_ms']:>12.1f}")
    lines.append(f"{'sum':<8} {sum(r['forward_ms'] for r in table.values()):>11.1f} "
                 f"{sum(r['backward_ms'] for r in table.values()):>12.1f}")
    return "\n".join(lines)
