"""One tower of 64-192-384-256-256 conv maps and 4096-unit fc layers on ImageNet.

The widths of torchvision's AlexNet and of "One weird trick for parallelizing
convolutional neural networks" (Krizhevsky 2014); here with the paper's LRN and
training recipe.  61,100,840 parameters.

    python -m alexnet_jax.summary --config experiments/one_tower_imagenet.py
    python -m alexnet_jax.main --config experiments/one_tower_imagenet.py --workdir runs/one_tower
"""
from experiments.paper_imagenet import get_config as paper_config


def get_config():
    config = paper_config()
    config.model.variant = "one_tower"
    return config
