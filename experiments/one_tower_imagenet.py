"""One tower of 64-192-384-256-256 conv maps and 4096-unit fc layers on ImageNet.

The widths of torchvision's AlexNet and of "One weird trick for parallelizing
convolutional neural networks" (Krizhevsky 2014); here with the paper's LRN and
training recipe.  61,100,840 parameters.

    python -m alexnet_jax.summary --config experiments/one_tower_imagenet.py
    python -m alexnet_jax.main --config experiments/one_tower_imagenet.py --workdir runs/one_tower

Expected result (not measured here: no ImageNet on this machine; the config runs end to
end on TFDS's mock ImageNet in tests/input_pipeline/test_imagenet.py): cuda-convnet2's
one-tower net, 90 epochs with colour noise 0.1, reached 42.55% / 19.81% top-1 / top-5 error on the
centre crop and 40.42% / 18.15% with 10 views (its published layers-imagenet-1gpu
results); torchvision's AlexNet of these widths, without LRN, 43.48% / 20.93% on the
centre crop (torchvision's model table).  0.714 G multiply-adds per image, against the
paper network's 0.724 G.
"""
from experiments.paper_imagenet import get_config as paper_config


def get_config():
    config = paper_config()
    config.model.variant = "one_tower"
    return config
