"""TensorFlow for input only: imported on first use, and kept off the accelerators.

The model, the benchmark and their tests never import TensorFlow; everything in this
package that needs it calls ``tf()`` inside the function that uses it.
"""
from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def tf() -> Any:
    """The ``tensorflow`` module, with GPUs hidden from it (JAX owns the accelerators).

    TensorFlow's oneDNN kernels are left off unless ``TF_ENABLE_ONEDNN_OPTS`` says
    otherwise: the input pipeline runs none of them (decoding, cropping, resizing), and
    where TensorFlow turns them on by itself (CPUs with AVX-512) each of its two libraries
    prints a notice of them, with absl's warning of logs before its initialisation."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow
    tensorflow.config.set_visible_devices([], "GPU")
    return tensorflow


def plain_graph(fn):
    """``fn`` traced as it is, not rewritten by AutoGraph: the ops use no Python control
    flow on tensors, and AutoGraph re-reads source files when it converts, so editing the
    code during a run could otherwise make the run's evaluation trace the wrong lines."""
    return tf().autograph.experimental.do_not_convert(fn)
