"""The default experiment: the small two-tower AlexNet on Fashion-MNIST, offline.

    make train
    # or: python -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir runs/fm

The paper's structure (5 conv + 3 fc layers, two towers exchanging activations at
conv3, fc6, fc7 and the output, LRN after conv1 and conv2, overlapping pooling,
dropout, here 0.25) scaled to 28x28 images, trained with the paper's optimiser: SGD,
momentum 0.9, weight decay 0.0005 coupled to the learning rate; 4 epochs of batch 64,
no augmentation (in so short a budget the model is under-trained, and augmentation and
heavy dropout cost more than they give).  The learning rate rises linearly from 0 to
0.05 over the first quarter epoch and falls to 0 along a cosine: the schedule with the
lowest held-out validation error (docs/performance.md).  The README's table gives the
test error and wall time to expect.
"""
from alexnet_jax.training.config_base import base_config


def get_config():
    config = base_config()
    config.model.variant = "small"
    config.data.dataset = "fashion_mnist"
    config.num_epochs = 4
    config.batch_size = 64
    config.model.dropout_rate = 0.25
    config.data.random_crop_padding = 0  # in a 4-epoch budget augmentation costs more than it gives
    config.data.flip = False
    config.optim.learning_rate = 0.05
    config.optim.schedule = "cosine"
    config.optim.warmup_epochs = 0.25
    config.log_every_steps = 50
    return config
