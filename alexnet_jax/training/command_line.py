"""The one line a command prints for bad input it did not get past: a flag or config key
that does not parse, a config file that does not load, a device out of memory.  Kept
apart from ``main.py``, which defines the command's flags, so that they can be tested."""
from __future__ import annotations

import re
from typing import Any

from absl import flags as absl_flags


def flag_message(error: BaseException, argv: list[str]) -> str:
    """One line for a parsing error: the flag it is about and what is wrong with it; for an
    unknown config key, the key and the one config_flags suggests, or the keys beside it;
    for a config file that does not load, the file and why."""
    message = " ".join(str(error).split())
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(error))
    if suggestion:
        right, wrong = suggestion.groups()
        culprit = next((arg for arg in argv[1:] if f".{wrong}" in arg.split("=")[0]), wrong)
        return (f"{culprit}: the config has no key {wrong!r}; did you mean {right!r}? "
                "(alexnet_jax/training/config_base.py lists every key.)")
    if isinstance(error, (KeyError, AttributeError)):
        unknown = unknown_key(message.strip("\"'"), argv)
        if unknown:
            return unknown
    if not isinstance(error, (absl_flags.Error, ValueError, KeyError, AttributeError, TypeError)):
        config_file = next((value for name, value in zip(argv, argv[1:]) if name == "--config"),
                           next((arg.split("=", 1)[1] for arg in argv
                                 if arg.startswith("--config=")), "the config file"))
        where = f" (line {error.lineno})" if isinstance(error, SyntaxError) else ""
        return (f"--config {config_file} could not be loaded{where}: "
                f"{type(error).__name__}: {message}")
    return message


def unknown_key(key: str, argv: list[str]) -> str:
    """The line for ``--config.PATH.KEY=...`` naming a key the config lacks: its path and
    the keys its section has."""
    from alexnet_jax.training.config_base import base_config
    flag = next((arg.split("=")[0] for arg in argv[1:]
                 if arg.startswith("--config.") and arg.split("=")[0].endswith(f".{key}")), "")
    if not flag:
        return ""
    path = flag[len("--config."):]
    section = path.rsplit(".", 1)[0] if "." in path else ""
    node = base_config()
    for part in filter(None, section.split(".")):
        node = node[part]
    return (f"{flag}: the config has no key {path!r}; "
            f"config{'.' + section if section else ''} has: {', '.join(sorted(node.keys()))}.")


def out_of_memory(error: Exception, config: Any) -> str:
    """The line for a device that ran out of memory: what was asked, and the fix."""
    import jax
    asked = re.search(r"allocating (\d+) bytes", str(error))
    size = f" ({int(asked.group(1)) / 2**30:.1f} GiB at once)" if asked else ""
    return (f"Out of memory{size} on {jax.default_backend()} with batch_size="
            f"{config.batch_size} and eval_batch_size={config.eval_batch_size}: lower them "
            "(--config.batch_size=...), or spread the batch over more devices "
            "(--config.parallelism=auto). The checkpoints written so far are intact.")
