"""The paper's other design claims, on the default Fashion-MNIST experiment, tuned, seeds
added until each verdict settles.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/paper_claims.py \\
        --workdir runs/paper_claims --parallel 2

* overlapping pooling (3x3, stride 2) vs non-overlapping (2x2, stride 2): the paper
  reports -0.4 / -0.3 points top-1 / top-5 from overlapping (Section 3.4);
* two towers vs one tower of half the width (the same per-tower kernels): the paper
  reports -1.7 / -1.2 points from the two-GPU net (Section 3.2);
* ReLU vs tanh: the paper's Figure 1 counts the epochs to reach 25% training error
  (six times fewer with ReLU); here "steps to 25% train error" in results.md, logged
  every 10 steps;
* dropout vs none (Section 4.2: without dropout the net overfits substantially).

As in lrn_vs_bn.py: the last 5,000 training images are the validation split, each
variant's learning rate is chosen from the grid on it with seed 0, seeds 1 and 2 follow,
then more seeds in rounds for each variant whose paired 95% interval against the paper's
network still spans zero and is wider than +-0.3 points, up to 10 seeds.  5 variants x 3
rates + 5 x 2 seeds = 25 runs of the default experiment, then up to 5 x 7 more;
``--plan`` gives their machine time, docs/results.md the time they took.  Interrupted,
the same command resumes; scripts/keep_study.sh keeps the finished runs' results in
docs/studies/.
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
        "precision": 0.3,  # points of test top-1 error: the paired interval's half-width
        "max_seeds": 10,
        # The default experiment's schedule when the study began, pinned: 4 epochs of
        # batch 64, cosine from the tuned rate, no warmup.
        "overrides": {"data.validation_examples": 5000, "num_epochs": 4, "batch_size": 64,
                      "optim.schedule": "cosine", "optim.warmup_epochs": 0.0,
                      "log_every_steps": 10},
        "tune": {"optim.learning_rate": [0.01, 0.03, 0.1]},
        "quick": {"data.max_train_examples": 512, "data.max_test_examples": 256,
                  "data.validation_examples": 256},
    }
