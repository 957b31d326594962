"""Where a compiled step's time goes, per layer and direction, without a profiler UI.

``instruction_profile`` runs a jitted function under ``jax.profiler.trace``, reads when
every XLA instruction ran from the trace, and attributes each instruction to the layer in
its metadata (the Flax module path, ``towers/conv1/...``, or a named scope such as
``pool1``), forward or backward (autodiff's transposes); ``per_layer`` sums it per layer.
The costliest instructions name what to change (a fusion that recomputes its inputs, a
layout change), where the per-layer table only says where.

XLA:CPU's runtime runs an instruction either inline (its trace event spans the work) or
asynchronously (a convolution or a matrix product handed to Eigen's threads: its event
spans only the hand-off, and an ``end: NAME`` event marks when the runtime saw the work
finished).  An instruction therefore runs from its event's start to its end event where
it has one, and at the latest until an instruction that reads its result starts.
Independent instructions run side by side, so each moment is split equally among the
instructions running then (``instruction_times``): the table sums to the time the calls
ran, and no moment counts twice.  It attributes the calls' time; what an instruction would
take alone, on an idle machine, is a benchmark's question.
"""
from __future__ import annotations

import bisect
import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

from alexnet_jax.model import components

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r"metadata=\{[^}]*op_name=\"([^\"]*)\"")
_OPERAND = re.compile(r"%([\w.\-]+)")
# A layer's name in an op's path: the network's own layers, and every normalisation's.
_LAYER = re.compile(r"/((?:conv|fc|pool|" + "|".join(components.norm_layer_names())
                    + r")\d+|output)(?:/|$)")


def _instructions(compiled_text: str) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """Every instruction's op_name (None without metadata), and the users of each."""
    named: dict[str, str | None] = {}
    users: dict[str, list[str]] = {}
    for line in compiled_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, rest = match.groups()
        op_name = _OP_NAME.search(rest)
        named[name] = op_name.group(1) if op_name else None
        for operand in set(_OPERAND.findall(rest.split("metadata=")[0])) - {name}:
            users.setdefault(operand, []).append(name)
    return named, users


def instruction_users(compiled_text: str) -> dict[str, list[str]]:
    """HLO instruction name -> the instructions that read its result."""
    return _instructions(compiled_text)[1]


def instruction_layers(compiled_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (layer, "forward" | "backward") from the compiled module's
    metadata; instructions of no layer count as ``other``.  An instruction that XLA made
    without metadata (a convolution's kernel gradient it rewrote, a layout change) takes
    that of its nearest user that has some."""
    return _layers(*_instructions(compiled_text))


def _layers(named: dict[str, str | None], users: dict[str, list[str]]
            ) -> dict[str, tuple[str, str]]:
    """``instruction_layers`` from the parsed module."""

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


def _trace_events(directory: str) -> list[dict[str, Any]]:
    """The complete ("X") events of the perfetto traces written under ``directory``."""
    events = []
    for path in glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True):
        with gzip.open(path) as f:
            trace = json.load(f)
        events += [e for e in (trace["traceEvents"] if isinstance(trace, dict) else trace)
                   if e.get("ph") == "X"]
    return events


def instruction_intervals(events: list[dict[str, Any]], instructions: Any,
                          users: dict[str, list[str]] | None = None
                          ) -> list[tuple[str, float, float]]:
    """(instruction, start, end) in microseconds for every run of an instruction named in
    ``instructions``: from its event's start to the end of its ``end: NAME`` event, or of
    its own event where it has none (it ran inline).  The runtime records an end event
    when it gets round to it, which can be after a user of the result has started: given
    ``users`` (``instruction_users``), a run ends at the latest when the first of its
    users' runs starts."""
    runs: list[tuple[str, float, float]] = []
    open_runs: dict[str, list[int]] = {}
    for event in sorted(events, key=lambda e: e["ts"]):
        name, start = event["name"], event["ts"]
        finish = start + event.get("dur", 0.0)
        if name.startswith("end: ") and open_runs.get(name[5:]):
            index = open_runs[name[5:]].pop(0)
            runs[index] = (runs[index][0], runs[index][1], max(runs[index][2], finish))
        elif name in instructions:
            open_runs.setdefault(name, []).append(len(runs))
            runs.append((name, start, finish))
    if not users:
        return runs
    starts: dict[str, list[float]] = {}
    for name, start, _ in runs:
        starts.setdefault(name, []).append(start)  # sorted: the runs are in time order
    clipped = []
    for name, start, end in runs:
        for user in users.get(name, ()):
            later = starts.get(user, [])
            first = bisect.bisect_right(later, start)
            if first < len(later) and later[first] < end:
                end = later[first]
        clipped.append((name, start, end))
    return clipped


def instruction_times(runs: list[tuple[str, float, float]]) -> dict[str, float]:
    """Microseconds per instruction, each moment split equally among the runs in progress
    then: the values sum to the length of the union of the intervals."""
    spans = [i for i, (_, start, end) in enumerate(runs) if end > start]
    changes = sorted([(runs[i][1], 1, i) for i in spans] + [(runs[i][2], -1, i) for i in spans])
    totals: dict[str, float] = {}
    active: set[int] = set()
    previous = changes[0][0] if changes else 0.0
    for time, change, index in changes:
        for i in active:
            name = runs[i][0]
            totals[name] = totals.get(name, 0.0) + (time - previous) / len(active)
        previous = time
        (active.add if change > 0 else active.discard)(index)
    return totals


def instruction_profile(jitted: Callable, *args: Any, steps: int = 3) -> list[dict[str, Any]]:
    """Every XLA instruction of ``jitted(*args)`` that ran: its name, layer, direction and
    milliseconds per call, averaged over ``steps`` calls (after one untimed call); the
    costliest first."""
    text = jitted.lower(*args).compile().as_text()
    named, users = _instructions(text)  # parsed once: the layers and the users
    layers = _layers(named, users)
    jax.block_until_ready(jitted(*args))
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(jitted(*args))
        durations = instruction_times(instruction_intervals(_trace_events(directory), layers,
                                                             users))
    rows = [{"instruction": name, "layer": layer, "direction": direction,
             "ms": durations[name] / 1000.0 / steps}
            for name, (layer, direction) in layers.items() if name in durations]
    return sorted(rows, key=lambda row: -row["ms"])


def per_layer(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``instruction_profile``'s rows summed per layer and direction, in the network's order."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = table.setdefault(row["layer"], {"forward_ms": 0.0, "backward_ms": 0.0})
        entry[f"{row['direction']}_ms"] += row["ms"]
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


def format_instructions(rows: list[dict[str, Any]], top: int = 12) -> str:
    """The ``top`` costliest rows of ``instruction_profile``: what to look at first."""
    lines = [f"{'ms':>6}  {'layer':<8} {'direction':<9} instruction"]
    lines += [f"{row['ms']:>6.2f}  {row['layer']:<8} {row['direction']:<9} {row['instruction']}"
              for row in rows[:top]]
    return "\n".join(lines)
