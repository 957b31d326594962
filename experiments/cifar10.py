"""The small two-tower AlexNet on CIFAR-10 (32x32 RGB), for users who have it prepared
in TFDS (``data/tfds/cifar10``) or are online (TFDS downloads it).

    python -m alexnet_jax.main --config experiments/cifar10.py --workdir runs/cifar10

The paper reports 13% error without LRN and 11% with it for a 4-layer
cuda-convnet net on CIFAR-10.  Not measured here: this machine has no CIFAR-10
and cannot download it.
"""
from experiments.fashion_mnist import get_config as fashion_mnist_config


def get_config():
    config = fashion_mnist_config()
    config.data.dataset = "cifar10"
    config.data.random_crop_padding = 4
    config.data.shuffle_buffer = 50_000
    config.num_epochs = 30
    return config
