"""PyTorch's training step on the seed's benchmark network, timed as the project's is.

The seed's PyTorch reference times forward and forward-backward only.  This script runs
under a Python that has torch (``python -m alexnet_jax.benchmark --compare`` starts it),
takes the reference's own network (``seed_net``, its final softmax dropped so that the
loss reads logits) and times one step of the paper's optimiser on it: cross-entropy,
SGD with momentum 0.9, weight decay 0.0005, learning rate 0.01, as the project's
``train.train_step`` does; ``--compile`` wraps the network in ``torch.compile``.  It
imports neither JAX nor anything of this package.

    PY benchmarks/torch_train_step.py --reference DIR --batch 32 --steps 20 [--compile] \\
        --json out.json
"""
import argparse
import importlib.util
import json
import os


def load_reference(directory: str):
    path = os.path.join(directory, "torch_seed_benchmark.py")
    spec = importlib.util.spec_from_file_location("torch_seed_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="the folder of torch_seed_benchmark.py")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--burn_in", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    reference = load_reference(args.reference)
    torch.manual_seed(0)
    model = reference.seed_net()[:-1]  # logits: the reference ends with a softmax
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = 0.1 * torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, 10, (args.batch,))

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    timing = reference.time_run(train_step, "Train step", args.steps, args.burn_in, lambda: None)
    timing["images_per_s"] = args.batch / timing["mean_s"]
    print(f"Train step: {timing['images_per_s']:.1f} images/s", flush=True)
    result = {"framework": "pytorch-" + torch.__version__, "batch": args.batch,
              "compiled": args.compile,
              "threads": torch.get_num_threads(), "train_step": timing}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
