"""The paper's other design claims, on the default Fashion-MNIST experiment.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/paper_claims.py --workdir runs/claims

* overlapping pooling (3x3, stride 2) vs non-overlapping (2x2, stride 2): the paper
  reports -0.4 / -0.3 points top-1 / top-5 from overlapping (Section 3.4);
* two towers vs one tower of half the width (the same per-tower kernels): the paper
  reports -1.7 / -1.2 points from the two-GPU net (Section 3.2);
* ReLU vs tanh: the paper's Figure 1 counts the epochs to reach 25% training error
  (six times fewer with ReLU); here "steps to 25% train error" in results.md;
* dropout vs none (Section 4.2: without dropout the net overfits substantially).

Shortened to 1 epoch per run like lrn_vs_bn.py; training error is logged every 10
steps for the steps-to-25% count.
"""


def get_sweep():
    return {
        "base": "experiments/fashion_mnist.py",
        "variants": [
            ("paper", {}),
            ("non_overlapping_pool", {"model.pool": "non_overlapping"}),
            ("one_tower_half_width", {"model.towers": 1}),
            ("tanh", {"model.activation": "tanh"}),
            ("no_dropout", {"model.dropout_rate": 0.0}),
        ],
        "seeds": [0, 1, 2],
        "baseline": "paper",
        "overrides": {"num_epochs": 1, "log_every_steps": 10},
        "quick": {"data.max_train_examples": 512, "data.max_test_examples": 256,
                  "checkpoint.async_save": False},
    }
