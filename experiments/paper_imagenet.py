"""The paper's network and training recipe on ImageNet (ILSVRC-2012).

    python -m alexnet_jax.summary --config experiments/paper_imagenet.py
    python -m alexnet_jax.prepare --config experiments/paper_imagenet.py  # once: the 256x256 store
    python -m alexnet_jax.main --config experiments/paper_imagenet.py --workdir runs/paper

Model: two towers, 60,965,224 parameters, 724,406,816 multiply-adds per 224x224
image (``alexnet_jax.summary``).  Training: SGD batch 128, momentum 0.9, weight
decay 0.0005 coupled to the learning rate, lr 0.01 divided by 10 when the
validation error stops improving (3 times), ~90 epochs.  Input: the paper's 256x256
store, random 224 crops decoded on the host, mean, flips and PCA colour noise on the
device; evaluation on the centre crop and on the 10 patches (summary.json:
test_top1_error, test_10crop_top1_error).

Expected result: the paper reports 40.7% / 18.2% top-1 / top-5 error on ILSVRC-2012
val with 10 patches (one network).  ``tests/input_pipeline/test_imagenet.py`` runs this
config end to end on TFDS's mock ImageNet; what a GPU's step and a host's input pipeline
deliver, and so the wall time to expect, is in the README's performance table.
"""
from alexnet_jax.training.config_base import base_config


def get_config():
    config = base_config()
    config.model.variant = "paper"
    config.data.dataset = "imagenet2012"
    config.num_epochs = 90
    config.batch_size = 128
    config.data.cache = False  # 1.28 M images do not fit in memory; read them each epoch
    config.eval_batch_size = 100  # x 10 patches: 1,000 images of 224x224 per evaluation batch
    config.optim.schedule = "plateau"
    return config
