"""The console's progress bar (tqdm): loss, error, images/s and time left."""
from __future__ import annotations


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

