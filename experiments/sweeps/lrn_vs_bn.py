"""LRN vs BatchNorm (after or before the ReLU) vs no normalisation, tuned, 3 seeds each.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py \\
        --workdir runs/lrn_vs_bn --parallel 2

The default Fashion-MNIST experiment (its full schedule) with the normalisation of conv1
and conv2 changed.  The last 5,000 training images are held out for validation: each
variant's learning rate is chosen from the grid on validation error with seed 0, then
seeds 1 and 2 run at that rate; the test error is reported for the chosen rates only.

Budget: 4 variants x 3 rates + 4 x 2 seeds = 20 runs of the default experiment.  On a 2-core
CPU with --parallel 2 a run takes 12-14 min (two share the cores: ~7 min of the machine each),
so the study needs ~2.5 h of an otherwise idle machine; scripts/keep_study.sh keeps
its finished runs in the repo for a later session.  Interrupted, the same command resumes
(finished runs are skipped, unfinished ones continue from their checkpoints).
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
        # The default experiment's schedule as of 2026-11-28, pinned: 4 epochs of batch 64,
        # cosine from the tuned rate, no warmup.
        "overrides": {"data.validation_examples": 5000, "num_epochs": 4, "batch_size": 64,
                      "optim.schedule": "cosine", "optim.warmup_epochs": 0.0,
                      "log_every_steps": 25},
        "tune": {"optim.learning_rate": [0.01, 0.03, 0.1]},
        "quick": {"data.max_train_examples": 512, "data.max_test_examples": 256,
                  "data.validation_examples": 256, "checkpoint.async_save": False},
    }
