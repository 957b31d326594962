"""The default experiment: the small two-tower AlexNet on Fashion-MNIST, offline.

    make train
    # or: python -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir runs/fm

The paper's structure (5 conv + 3 fc layers, two towers exchanging activations at
conv3, fc6, fc7 and the output, LRN after conv1 and conv2, overlapping pooling,
dropout 0.5) scaled to 28x28 images, trained with the paper's optimiser: SGD,
momentum 0.9, weight decay 0.0005 coupled to the learning rate.

Measured: see README "Results".
"""
from alexnet_jax.config_base import base_config


def get_config():
    config = base_config()
    config.model.variant = "small"
    config.data.dataset = "fashion_mnist"
    config.num_epochs = 4
    config.batch_size = 64
    config.optim.learning_rate = 0.02
    config.optim.schedule = "cosine"
    config.log_every_steps = 50
    return config
