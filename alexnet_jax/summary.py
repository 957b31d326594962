"""The layer table of an experiment's model (``tools/layer_table.py``), printed.

    python -m alexnet_jax.summary --config experiments/paper_imagenet.py [--json FILE]

With ``--config.parallelism=model`` (or ``data_model``) it also lists what crosses
between the towers' devices per training step.
"""
from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: XLA reads its log level then
    from alexnet_jax.runtime import console
    console.hold_back_notices()

import json

from absl import app, flags
from ml_collections import config_flags

from alexnet_jax.tools.layer_table import format_crossings, format_table, summarize


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    summary = summarize(config)
    print(f"{config.model.variant} AlexNet, input {tuple(summary['input_shape'])}, "
          f"{summary['towers']} tower(s)")
    print(format_table([dict(r, shape=tuple(r["shape"])) for r in summary["layers"]],
                       summary["towers"]))
    if "crossings" in summary:
        print(format_crossings(summary["crossings"], summary["replica_batch"]))
    if flags.FLAGS.json:
        with open(flags.FLAGS.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string("json", None, "Also write the summary as JSON to this file.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
