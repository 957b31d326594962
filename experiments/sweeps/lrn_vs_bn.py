"""LRN vs BatchNorm (after or before the ReLU) vs GroupNorm vs no normalisation, tuned,
seeds added until each verdict settles.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py \\
        --workdir runs/lrn_vs_bn --plan          # the runs and their machine time first
    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py \\
        --workdir runs/lrn_vs_bn --parallel 2

The default Fashion-MNIST experiment (its schedule pinned below) with the normalisation
of conv1 and conv2 changed.  The last 5,000 training images are held out for
validation: each variant's learning rate is chosen from the grid on validation error
with seed 0, then seeds 1 and 2 run at that rate, then more seeds in rounds, for each
variant whose paired 95% interval against LRN still spans zero and is wider than ±0.3
points, up to 10 seeds; the test error is reported for the chosen rates only.
docs/results.md has the result, its machine time and the command that continues it from
the runs kept in docs/studies/lrn_vs_bn/.
"""


def get_sweep():
    return {
        "base": "experiments/fashion_mnist.py",
        "variants": [
            ("lrn", {"model.norm": "lrn"}),
            ("bn_after_relu", {"model.norm": "batchnorm", "model.norm_position": "after_relu"}),
            ("bn_before_relu", {"model.norm": "batchnorm", "model.norm_position": "before_relu"}),
            ("groupnorm", {"model.norm": "groupnorm"}),
            ("none", {"model.norm": "none"}),
        ],
        "seeds": [0, 1, 2],
        "precision": 0.3,  # points of top-1 error: the paired interval's half-width
        "max_seeds": 10,
        "baseline": "lrn",
        # The default experiment's schedule when the study began, pinned: 4 epochs of
        # batch 64, cosine from the tuned rate, no warmup.
        "overrides": {"data.validation_examples": 5000, "num_epochs": 4, "batch_size": 64,
                      "optim.schedule": "cosine", "optim.warmup_epochs": 0.0,
                      "log_every_steps": 25},
        "tune": {"optim.learning_rate": [0.01, 0.03, 0.1]},
        "quick": {"data.max_train_examples": 512, "data.max_test_examples": 256,
                  "data.validation_examples": 256},
    }
