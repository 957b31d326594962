"""Does LARS keep batch 64's error at batch 1024, where SGD loses it?  You, Gitman and
Ginsburg (2017, arXiv 1708.03888) trained AlexNet at batch 8K with LARS "without loss in
accuracy", where SGD at the same batch lost it.  Here on the default Fashion-MNIST
experiment, each variant at its own tuned learning rate, seeds added until each verdict
settles.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/large_batch.py \\
        --workdir docs/studies/large_batch --plan

* ``paper``: the paper's SGD (momentum 0.9, coupled weight decay) at batch 64, the
  baseline; with paper_claims' schedule and grid its runs are paper_claims' ``paper``
  runs, which docs/studies/large_batch links to (the sweep recognises a run by its config);
* ``sgd_batch1024``: the same SGD at batch 1024;
* ``lars_batch1024``: LARS (optax's, trust coefficient 0.001, the same momentum and weight
  decay, biases and norms' parameters excluded from both) at batch 1024.

The same 4 epochs for all (the claim is at a fixed number of epochs): 3,436 updates at
batch 64, 212 at 1024.  Both large batches warm up linearly over half an epoch (26
updates), as large-batch recipes do (Goyal et al. 2017; You et al. 2017), then follow
the same cosine.  Each variant's rate is chosen on 5,000 held-out training images with
seed 0 from its own grid.  SGD's grid stops below the linear scaling rule's 16 x 0.03:
probed over one epoch with the same warmup, its loss blew up within 32 updates at 0.2,
0.3 and 1.0, and trained at 0.1.  LARS's step is rate x 0.001 x |w| per layer, so its
rates lie on another scale: probed the same way, 2 and 10 trained, 30 stayed at chance.
"""

from experiments.sweeps.paper_claims import get_sweep as paper_claims


def get_sweep():
    claims = paper_claims()
    large = {"batch_size": 1024, "optim.warmup_epochs": 0.5}
    return {
        "base": "experiments/fashion_mnist.py",
        "variants": [
            ("paper", {}),
            ("sgd_batch1024", large),
            ("lars_batch1024", {**large, "optim.optimizer": "lars"}),
        ],
        "seeds": [0, 1, 2],
        "baseline": "paper",
        "precision": claims["precision"],
        "max_seeds": claims["max_seeds"],
        # paper_claims' schedule and grid, so that batch 64's runs are its runs.
        "overrides": claims["overrides"],
        "tune": {"paper": claims["tune"],
                 "sgd_batch1024": {"optim.learning_rate": [0.025, 0.05, 0.1]},
                 "lars_batch1024": {"optim.learning_rate": [2.5, 5.0, 10.0, 20.0]}},
        "quick": {**claims["quick"], "data.max_train_examples": 2048},  # two batches of 1024
    }
