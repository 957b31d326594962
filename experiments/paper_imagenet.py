"""The paper's network and training recipe on ImageNet (ILSVRC-2012).

    python -m alexnet_jax.summary --config experiments/paper_imagenet.py
    python -m alexnet_jax.main --config experiments/paper_imagenet.py --workdir runs/paper

Model: two towers, 60,965,224 parameters, 724,406,816 multiply-adds per 224x224
image (``alexnet_jax.summary``).  Training: SGD batch 128, momentum 0.9, weight
decay 0.0005 coupled to the learning rate, lr 0.01 divided by 10 when the
validation error stops improving (3 times), ~90 epochs.  The paper reports
40.7% / 18.2% top-1 / top-5 error on ILSVRC-2012 val with 10 patches.
"""
from alexnet_jax.config_base import base_config


def get_config():
    config = base_config()
    config.model.variant = "paper"
    config.data.dataset = "imagenet2012"
    config.num_epochs = 90
    config.batch_size = 128
    config.data.cache = False  # 1.28 M JPEGs do not fit in memory; read them each epoch
    config.eval_batch_size = 100  # x 10 patches: 1,000 images of 224x224 per evaluation batch
    config.optim.schedule = "plateau"
    return config
