"""The errors a user sees, each as one line (``main.py`` prints them), in a module that
imports nothing of the package, so that every module can raise them without import
cycles.

* Rejections (exit status 2: the command was wrong, nothing was changed): ``ConfigError``,
  ``LayoutError``, ``MismatchError``, ``WorkdirInUseError``.
* Failures (exit status 1): ``DatasetUnavailableError``, ``CheckpointError`` (and
  ``DamagedError``), and in ``main.py`` a non-finite loss and an unwritable workdir.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what would."""


class LayoutError(ValueError):
    """The layout asked for does not fit the model, the devices or the batch size."""


class DatasetUnavailableError(RuntimeError):
    """The data cannot be read; the message says where it was looked for and what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the step and the cause."""


class MismatchError(CheckpointError):
    """The checkpoint was written by another model (variant, widths): a rejected command."""


class DamagedError(CheckpointError):
    """A checkpoint's arrays do not match the checksums it was written with."""


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir's lock; the message names it (host, pid, since when)."""


REJECTIONS = (ConfigError, LayoutError, MismatchError, WorkdirInUseError)
FAILURES = (DatasetUnavailableError, CheckpointError, FloatingPointError, PermissionError)
