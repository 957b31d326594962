"""Pictures of a network's state, shared by ``figures`` (PNG files) and the trainer
(TensorBoard images at each evaluation): one drawing, two destinations."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

DPI = 90


def tower_colour_statistic(kernels: np.ndarray) -> np.ndarray:
    """Per tower: the mean over its conv1 kernels of how much the kernel differs between
    colour channels (std across RGB / overall std); 0 for colour-agnostic kernels.
    ``kernels``: (towers, h, w, in_channels, out_channels)."""
    if kernels.shape[3] < 2:
        return np.full(kernels.shape[0], np.nan)
    across_colour = kernels.std(axis=3).mean(axis=(1, 2))
    overall = kernels.std(axis=(1, 2, 3)) + 1e-12
    return (across_colour / overall).mean(axis=1)


def filter_grid(kernels: np.ndarray) -> list[np.ndarray]:
    """One image per tower: its conv1 kernels tiled in a grid, each scaled to [0, 1]."""
    blocks = []
    for tower in kernels:
        h, w, c, n = tower.shape
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
        for k in range(n):
            f = tower[..., k]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)
            r, q = divmod(k, cols)
            grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = f
        blocks.append(grid)
    return blocks


def conv1_figure(kernels: np.ndarray, step: int) -> Any:
    """The paper's Figure 3: conv1's kernels, a block per tower, each titled with the
    tower's colour statistic.  A matplotlib figure (Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colour = tower_colour_statistic(kernels)
    blocks = filter_grid(kernels)
    fig, axes = plt.subplots(1, len(blocks), figsize=(4 * len(blocks), 4.8), squeeze=False)
    for t, (ax, block) in enumerate(zip(axes[0], blocks)):
        ax.imshow(block[..., 0] if block.shape[-1] == 1 else block, cmap="gray")
        stat = "grayscale input" if np.isnan(colour[t]) else f"colour statistic {colour[t]:.2f}"
        ax.set_title(f"tower {t + 1}: {kernels.shape[-1]} conv1 kernels at step {step}\n{stat}")
        ax.axis("off")
    fig.tight_layout()
    return fig


def figure_pixels(fig: Any) -> np.ndarray:
    """The figure drawn at ``DPI`` as (height, width, 3) uint8 RGB, then closed."""
    import matplotlib.pyplot as plt
    fig.set_dpi(DPI)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def conv1_pixels(params: Any, step: int) -> np.ndarray:
    """conv1's kernels per tower (``conv1_figure``) as an RGB picture for TensorBoard."""
    kernels = np.asarray(jax.device_get(params["towers"]["conv1"]["kernel"]))
    return figure_pixels(conv1_figure(kernels, step))
