"""LRN vs BatchNorm (after or before the ReLU) vs no normalisation, 3 seeds each.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py --workdir runs/lrn_vs_bn

The default Fashion-MNIST experiment with the normalisation of conv1 and conv2
changed.  Each run is shortened to 1 epoch (937 steps, ~2.5 min here) so that the 12
runs fit in well under 90 minutes on a 2-core machine; the full 4-epoch default is
``--config.num_epochs=4`` away (set ``overrides`` below).  Results: README "Ablations".
"""


def get_sweep():
    return {
        "base": "experiments/fashion_mnist.py",
        "variants": [
            ("lrn", {"model.norm": "lrn"}),
            ("bn_after_relu", {"model.norm": "batchnorm", "model.norm_position": "after_relu"}),
            ("bn_before_relu", {"model.norm": "batchnorm", "model.norm_position": "before_relu"}),
            ("none", {"model.norm": "none"}),
        ],
        "seeds": [0, 1, 2],
        "baseline": "lrn",
        "overrides": {"num_epochs": 1, "log_every_steps": 25},
        "quick": {"data.max_train_examples": 512, "data.max_test_examples": 256,
                  "checkpoint.async_save": False},
    }
