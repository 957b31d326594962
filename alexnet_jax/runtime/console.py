"""The console: the progress bar (tqdm: loss, error, images/s and time left), and the
notices a command holds back unless ``--verbose``."""
from __future__ import annotations

import logging
import os
import sys

# Loggers whose INFO and WARNING lines are the backends' business, not a run's: which
# backends failed to load ("Unable to initialize backend 'tpu'"), and the like.
BACKEND_LOGGERS = ("jax._src.xla_bridge", "jax._src.compiler")


def verbose() -> bool:
    """``--verbose`` on the command line, or ``ALEXNET_JAX_VERBOSE=1``."""
    return os.environ.get("ALEXNET_JAX_VERBOSE") == "1" or "--verbose" in sys.argv


def hold_back_notices() -> None:
    """Unless ``verbose()``: absl's INFO lines, JAX's backend notices and XLA's C++ log
    lines below FATAL (its slow-operation alarm among them: an E-line about constant
    folding that changes nothing) are not printed; errors still end a command with their
    own line.  Called first by every command (XLA reads the level when it first logs)."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in BACKEND_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class Progress:
    """A console progress bar with loss, error, images/s and time left (tqdm)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, steps: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{metrics['train_loss']:.3f}",
                                 err=f"{metrics['train_top1_error']:.3f}",
                                 img_s=f"{metrics['images_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

