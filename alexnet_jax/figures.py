"""The paper's figures from a trained run.

    python -m alexnet_jax.figures --workdir DIR [--step S] [--examples 2000]

Writes under ``DIR/figures/``:

* ``conv1_filters.png``: conv1's kernels, a block per tower (the paper's Figure 3), each
  titled with the tower's colour statistic (on ImageNet one tower learned
  colour-agnostic kernels, the other colour-specific ones);
* ``predictions.png``: the top-5 predictions for test images, with probability bars
  (Figure 4, left);
* ``nearest_neighbours.png``: test images and the test images nearest to them in the
  last hidden layer's feature space, by Euclidean distance (Figure 4, right);
* ``curves.png``: loss, top-1 and top-5 error for train and test, and the learning
  rate, from ``metrics.jsonl``.
"""
from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: XLA reads its log level then
    from alexnet_jax.runtime import console
    console.hold_back_notices()

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from alexnet_jax import input_pipeline
from alexnet_jax.input_pipeline import sources
from alexnet_jax.model import visualize
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.metric_writer import read_metrics
from alexnet_jax.training import experiment, train


def load_run(workdir: str, step: int | None = None) -> tuple[Any, Any, train.TrainState, Any]:
    """The run's config, its model, its trained state (latest or ``step``) and its pipeline."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    pipeline = input_pipeline.create_pipeline(config)
    parts = experiment.build(config, pipeline, parallelism="single")
    state = train.create_train_state(config.seed, parts.layout, parts.tx)
    manager = checkpoints.CheckpointManager(workdir, config)
    step = manager.latest.latest_step() if step is None else step
    if step is None:
        raise checkpoints.CheckpointError(f"No checkpoint in {manager.directory}.")
    arrays, _ = checkpoints.read_checkpoint(manager.latest, step, state)
    manager.close()
    return config, parts.layout.model, state.replace(**arrays), pipeline


def make_feature_extractor(model: Any, state: train.TrainState):
    """A jit-compiled function: images -> (probabilities, last hidden layer features)."""

    @jax.jit
    def extract(images):
        variables = train.variables_of(state, state.params)
        logits, inter = model.apply(variables, images, mutable=["intermediates"])
        stages = inter["intermediates"]["towers"]
        last = sorted(k for k in stages if k.startswith("fc"))[-1]
        features = stages[last][0]  # (towers, batch, units)
        features = jnp.concatenate(list(features), axis=-1)
        return jax.nn.softmax(logits), features

    return extract


def nearest_neighbours(queries: jax.Array, database: jax.Array, k: int,
                       exclude_self: bool = True) -> np.ndarray:
    """Indices of the k database rows nearest to each query (Euclidean), self excluded
    when the queries are the database's first rows."""
    distances = (jnp.sum(queries ** 2, 1)[:, None] - 2 * queries @ database.T
                 + jnp.sum(database ** 2, 1)[None, :])
    if exclude_self:
        distances = distances.at[jnp.arange(len(queries)), jnp.arange(len(queries))].set(jnp.inf)
    return np.asarray(jnp.argsort(distances, axis=1)[:, :k])


def _display(image: np.ndarray, dataset: str) -> np.ndarray:
    mean, std = sources.normalization(dataset)
    image = np.clip(image * np.asarray(std) + np.asarray(mean), 0, 1)
    return image[..., 0] if image.shape[-1] == 1 else image


def make_figures(workdir: str, step: int | None = None, examples: int = 2000) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, model, state, pipeline = load_run(workdir, step)
    out = os.path.join(workdir, "figures")
    os.makedirs(out, exist_ok=True)
    names = list(pipeline.builder.info.features["label"].names)
    paths = {}

    kernels = np.asarray(state.params["towers"]["conv1"]["kernel"])
    fig = visualize.conv1_figure(kernels, int(state.step))
    paths["conv1_filters"] = _save(fig, out, "conv1_filters.png")

    extract = make_feature_extractor(model, state)
    images, labels, probs, feats = [], [], [], []
    for batch in pipeline.eval_batches(config.eval_batch_size):
        n = int(batch["mask"].sum())
        p, f = extract(batch["image"])
        images.append(batch["image"][:n])
        labels.append(batch["label"][:n])
        probs.append(np.asarray(p[:n]))
        feats.append(np.asarray(f[:n]))
        if sum(len(x) for x in labels) >= examples:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    probs, feats = np.concatenate(probs), np.concatenate(feats)

    shown = 8
    fig, axes = plt.subplots(2, shown, figsize=(2.2 * shown, 5))
    for i in range(shown):
        axes[0, i].imshow(_display(images[i], config.data.dataset), cmap="gray")
        axes[0, i].set_title(names[labels[i]], fontsize=9)
        axes[0, i].axis("off")
        top = np.argsort(-probs[i])[:5]
        colours = ["tab:green" if c == labels[i] else "tab:gray" for c in top]
        axes[1, i].barh(range(5)[::-1], probs[i][top], color=colours)
        axes[1, i].set_yticks(range(5)[::-1], [names[c] for c in top], fontsize=7)
        axes[1, i].set_xlim(0, 1)
        axes[1, i].set_xlabel("probability", fontsize=8)
    fig.suptitle("Top-5 predictions on test images (green: the true class)")
    paths["predictions"] = _save(fig, out, "predictions.png")

    queries, k = 6, 6
    neighbours = nearest_neighbours(jnp.asarray(feats[:queries]), jnp.asarray(feats), k)
    fig, axes = plt.subplots(queries, k + 1, figsize=(1.6 * (k + 1), 1.7 * queries))
    for q in range(queries):
        for j, index in enumerate([q, *neighbours[q]]):
            ax = axes[q, j]
            ax.imshow(_display(images[index], config.data.dataset), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(names[labels[index]], fontsize=8)
        axes[q, 0].set_title("query" if q == 0 else "", fontsize=9)
    fig.suptitle(f"Nearest neighbours in the last hidden layer ({feats.shape[1]} features), "
                 f"among {len(feats)} test images")
    paths["nearest_neighbours"] = _save(fig, out, "nearest_neighbours.png")

    paths["curves"] = plot_curves(read_metrics(workdir), out)
    return paths


def plot_curves(records: list[dict], out: str) -> str:
    import matplotlib.pyplot as plt
    train_rows = [r for r in records if "train_loss" in r]
    test_rows = [r for r in records if "test_loss" in r]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, key, title in zip(axes, ("loss", "top1_error", "top5_error"),
                              ("cross-entropy loss", "top-1 error", "top-5 error")):
        ax.plot([r["epoch"] for r in train_rows], [r[f"train_{key}"] for r in train_rows],
                label="train (running)")
        ax.plot([r["epoch"] for r in test_rows], [r[f"test_{key}"] for r in test_rows], "o-",
                label="test")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    axes[3].plot([r["epoch"] for r in train_rows], [r["learning_rate"] for r in train_rows])
    axes[3].set_yscale("log")
    axes[3].set_title("learning rate")
    axes[3].set_xlabel("epoch")
    return _save(fig, out, "curves.png")


def _save(fig, out: str, name: str) -> str:
    import matplotlib.pyplot as plt
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=visualize.DPI)
    plt.close(fig)
    return path




def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    start = time.time()
    paths = make_figures(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.examples)
    for path in paths.values():
        print(path)
    print(f"{len(paths)} figures in {time.time() - start:.1f} s")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("examples", 2000, "Test images to search for neighbours.")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
