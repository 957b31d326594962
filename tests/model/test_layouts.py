"""Layouts: single, the paper's two-device split, data x model replicas, multi-host.

Needs 8 devices: `make test` runs this file with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices in one process).
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.model import components, layers, layouts, networks
from alexnet_jax.model.cpu import onednn  # noqa: E402
from alexnet_jax.runtime import checkpoints
from alexnet_jax.training import experiment, optim
from alexnet_jax.training.config_base import base_config  # noqa: E402
from support import build, tiny_config  # noqa: E402

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices: run `make test`, or pytest with "
    "XLA_FLAGS=--xla_force_host_platform_device_count=8")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUTS = [("single", 1), ("model", 2), ("data_model", 8), ("data", 8)]


def step_config(norm="lrn"):
    config = base_config()
    config.model.variant = "small"
    config.model.norm = norm
    # The paper's init keeps training on noise well-conditioned.  From the scaled init the
    # loss starts at 7 (LRN) or 17 (BatchNorm) and 1e-7 rounding (another summation order,
    # another thread count) can grow past 1e-5 within 20 steps in any layout.
    config.model.init = "paper"
    config.optim.schedule = "constant"
    config.optim.learning_rate = 0.005
    # "auto" takes XLA's convolution for one tower per device and im2col for two on one
    # (layers.select): equal functions, rounded differently.  One arithmetic for every
    # layout isolates what this file tests; the forms are compared in test_kernels.py.
    config.model.implementation = "im2col"
    return config


@pytest.fixture
def order_keeping_kernels(monkeypatch):
    """XLA:CPU's YNNPACK kernels in place of Eigen's (the project's CPU default, ops.py).

    Eigen splits a sum differently for a batch of 32 on one device and of 4 on each of 8,
    and BatchNorm's nearly cancelling gradients grow that float32 rounding (2e-5 of conv1's
    weights after one step) to 6e-4 within 20 steps; YNNPACK's sums keep their order, so
    that this file sees the layouts' logic and not the kernels' rounding."""
    monkeypatch.setenv("ALEXNET_JAX_YNNPACK", "1")


def random_batches(count, batch=32, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(size=(batch, 28, 28, 1)).astype(np.float32),
             "label": rng.integers(0, 10, batch)} for _ in range(count)]


def train_steps(kind, devices, config, batches):
    """(params, BatchNorm statistics) at the start, after the first and after the last of
    ``batches``, and every step's metrics, trained under a layout."""
    layout, _, steps, state = build(config, len(batches), kind, devices)
    snapshots, history = [jax.device_get((state.params, state.batch_stats))], []
    for i, batch in enumerate(batches):
        state, step_metrics = steps.train(state, layout.shard_batch(batch))
        history.append(jax.device_get(step_metrics))
        if i in (0, len(batches) - 1):
            snapshots.append(jax.device_get((state.params, state.batch_stats)))
    return snapshots, history


# A layout changes how the training steps' sums are split and ordered, nothing else, so
# the updates it makes (the trees' change from their common start) may differ from one
# device's only by float32 rounding.  Two parts bound that difference, leaf by leaf:
# * storage: each step's ``p + update`` rounds to float32 (half a unit in the last place
#   of p, in each of the two runs), so ``steps`` ulps of the leaf's largest magnitude;
# * arithmetic: the gradients are sums in another order.  On random images with random
#   labels they nearly cancel, so their rounding is large relative to the update they add
#   up to, and 20 steps compound it: up to 0.7% of a layer's update on an AVX-512 EPYC
#   (conv1 with GroupNorm, parallelism=model).  A bias's update is measured against its
#   whole layer's (its kernel's update, and for a normalisation its scale's): a bias whose
#   update is itself rounding-sized (before a mean-subtracting normalisation, or one that
#   barely leaves zero) must then agree to within the layer's rounding, not its own.
# A layout's logic error (a gradient summed over too few or too many replicas, statistics
# of the local batch, another dropout mask) changes a layer's update by a whole part of
# it, 1/8 or more here; ``UPDATE_RTOL`` lies between the two, 7x above the rounding seen.
UPDATE_RTOL = 0.05


def assert_updates_close(result, reference, start, steps):
    """``result``'s change from ``start`` equals ``reference``'s within float32 rounding
    after ``steps`` steps (the bound above), for every leaf of the trees."""
    def flat(tree):
        return {path: np.asarray(leaf, np.float64)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    got, want, begin = flat(result), flat(reference), flat(start)
    layer_update = {}
    for path in want:
        layer = path[:-1]
        layer_update[layer] = max(layer_update.get(layer, 0.0),
                                  float(np.max(np.abs(want[path] - begin[path]))))
    for path in want:
        error = float(np.max(np.abs(got[path] - want[path])))
        ulp = float(np.spacing(np.float32(np.max(np.abs(want[path])))))
        bound = UPDATE_RTOL * layer_update[path[:-1]] + steps * ulp
        assert error <= bound, (f"{jax.tree_util.keystr(path)}: {error:.3g} from the reference "
                                f"after {steps} step(s), over {bound:.3g} (its layer's update "
                                f"{layer_update[path[:-1]]:.3g})")


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    """Each leaf within rtol of the reference leaf's largest magnitude, plus atol, for
    values computed in one pass (no training steps compounding their rounding)."""
    def check(path, x, y):
        scale = float(np.max(np.abs(y)))
        error = float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        assert error <= rtol * scale + atol, f"{jax.tree_util.keystr(path)}: {error} vs {scale}"
    jax.tree_util.tree_map_with_path(check, a, b)


@pytest.mark.parametrize("norm", [name for name, norm in components.NORMS.items() if norm.layer])
def test_every_layout_trains_to_the_same_parameters_and_metrics(norm, order_keeping_kernels):
    """Same global batch, seed and dropout: after 1 step and after 20, the same parameters,
    BatchNorm statistics and metrics under single, model (2 devices), data_model (8) and
    data (8).  For each normalisation that adds a layer (without one, the network is
    LRN's less its LRN layers)."""
    batches = random_batches(20)
    config = step_config(norm)
    reference, reference_metrics = train_steps("single", 1, config, batches)
    for kind, devices in LAYOUTS[1:]:
        result, result_metrics = train_steps(kind, devices, config, batches)
        assert_updates_close(result[1], reference[1], reference[0], 1)
        assert_updates_close(result[2], reference[2], reference[0], len(batches))
        for got, want in zip(result_metrics, reference_metrics):
            # A loss near 2.3 in float32 is a mean of 32 terms summed in another order,
            # from logits of parameters that differ by the rounding above (in directions
            # uncorrelated with the gradient): a couple of its units in the last place,
            # 1e-7 each.  Measured over the 20 steps, every layout and norm: at most 2.0e-7
            # relative, on this AVX-512 EPYC and under AVX2 alike; rtol 1e-5 leaves 50x.
            # The error rates count examples: a flip needs two logits within ~1e-6 of each
            # other (none seen); a logic error shifts the loss by percents.
            for key in ("loss", "top1_error", "top5_error"):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=kind)


def test_the_moving_average_accumulation_and_label_smoothing_agree_in_every_layout(
        order_keeping_kernels):
    """With BatchNorm (statistics over the global batch), 2 steps accumulated into each
    update, label smoothing and a moving average of the weights: after 8 steps (4
    updates), every layout's parameters, statistics and their averages are one device's,
    within the rounding bound above."""
    batches = random_batches(8)
    config = step_config("batchnorm")
    config.optim.ema_decay = 0.9
    config.optim.accumulate_steps = 2
    config.loss.label_smoothing = 0.1
    results = {}
    for kind, devices in LAYOUTS:
        layout, _, steps, state = build(config, len(batches), kind, devices)
        start = jax.device_get((state.params, state.batch_stats))
        for batch in batches:
            state, _ = steps.train(state, layout.shard_batch(batch))
        results[kind] = jax.device_get(
            ((state.params, state.batch_stats), (state.ema["params"], state.ema["batch_stats"])))
    for kind, _ in LAYOUTS[1:]:
        for got, want in zip(results[kind], results["single"]):
            assert_updates_close(got, want, start, len(batches))


@pytest.mark.parametrize("towers", [2, 1])
def test_data_layout_sums_the_custom_vjp_convolutions_gradients_over_replicas(
        order_keeping_kernels, towers):
    """The CPU forms with their own VJP under ``data``: the towers side by side (one XLA
    convolution per tower) and one tower (oneDNN's convolutions, where built).  Each
    replica's kernel gradients are summed over the 8 replicas as autodiff's are, so 3
    steps end where one device's do."""
    config = step_config()
    config.model.implementation = "auto"
    config.model.towers = towers
    batches = random_batches(3)
    layout = build(config, len(batches), "data", 8)[0]
    one_tower = "xla_cpu_onednn" if onednn.register() else "xla_cpu"
    assert layout.model.layers.name == ("xla_cpu_per_tower" if towers == 2 else one_tower)
    reference, _ = train_steps("single", 1, config, batches)
    result, _ = train_steps("data", 8, config, batches)
    assert_updates_close(result[2], reference[2], reference[0], len(batches))


def test_tower_under_a_literal_pmap_is_the_papers_two_gpu_split():
    """``Tower``, the per-device program, under ``jax.pmap(axis_name="model")`` on 2 devices,
    each holding its tower's slice of the parameters: the single layout's logits, dropout
    included, and its gradients once each device's loss is divided by the number of towers.
    (Every device differentiates the same replicated loss, and the transposes of the
    towers' collectives sum those cotangents over the devices: undivided, each tower's
    gradient would come out once per tower.)"""
    config = networks.model_config("small", input_shape=(28, 28, 1), num_classes=10,
                                 init="scaled", conv_channels=(4, 6, 8, 8, 6),
                                 hidden_units=(16, 16))
    chosen = layers.select("im2col", grouped=True)  # one arithmetic on both sides
    model, tower = networks.AlexNet(config, chosen), networks.Tower(config, chosen)
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    params = layouts.initial_variables(config, jax.random.key(2))["params"]
    params = jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(3), v.shape),
                          params)  # non-zero biases, the output bias too
    rngs = {"dropout": jax.random.key(4)}

    def single_loss(params):
        logits = model.apply({"params": params}, x, True, rngs=rngs)
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(single_loss, has_aux=True))(params)
    dropout_key = model.apply({}, method=lambda m: m.make_rng("dropout"), rngs=rngs)

    def device_loss(tower_params, output_bias):
        partial = tower.apply({"params": tower_params}, x, True, dropout_key)
        logits = partial + output_bias
        return jnp.sum(jnp.sin(logits)) / config.towers, logits

    paper_split = jax.pmap(jax.value_and_grad(device_loss, (0, 1), has_aux=True),
                           axis_name="model", in_axes=(0, None), devices=jax.devices()[:2])
    (_, device_logits), (tower_grads, bias_grads) = paper_split(params["towers"],
                                                                params["output_bias"])
    for device in range(2):
        # Logits are sums of products: each within 1e-6 of the largest logit's magnitude
        # (a logit near zero carries the rounding of its larger terms).
        assert_trees_close(device_logits[device], logits, rtol=1e-6, atol=0.0)
    assert_trees_close(tower_grads, grads["towers"])
    np.testing.assert_allclose(bias_grads.sum(0), grads["output_bias"], rtol=1e-5, atol=1e-6)


def test_model_layout_puts_one_tower_on_each_device():
    layout, _, _, state = build(step_config(), 1, "data_model", 8)
    kernel = state.params["towers"]["conv1"]["kernel"]
    assert kernel.shape[0] == 2 and layout.mesh.shape == {"data": 4, "model": 2}
    for shard in kernel.addressable_shards:
        assert shard.data.shape[0] == 1  # one tower per device
    bias = state.params["output_bias"]
    assert all(s.data.shape == bias.shape for s in bias.addressable_shards)  # replicated
    momentum = jax.tree.leaves(state.opt_state)
    assert any(getattr(m, "shape", ())[:1] == (2,) and
               m.addressable_shards[0].data.shape[0] == 1 for m in momentum)


def test_layout_choice_and_errors():
    assert layouts.choose("auto", 2, 1) == "single"
    assert layouts.choose("auto", 2, 2) == "model"
    assert layouts.choose("auto", 2, 8) == "data_model"
    assert layouts.choose("auto", 1, 8) == "data"
    assert layouts.choose("auto", 2, 3) == "data"
    with pytest.raises(layouts.LayoutError, match="parallelism=.pipeline. is not one of: single"):
        layouts.choose("pipeline", 2, 8)
    with pytest.raises(layouts.LayoutError, match="use parallelism=data"):
        layouts.choose("model", 1, 2)
    with pytest.raises(layouts.LayoutError, match="data_model to use them all"):
        layouts.choose("model", 2, 8)
    with pytest.raises(layouts.LayoutError, match="only 8 device"):
        layouts.create("data", networks.model_config("small"), 16)
    layout = layouts.create("data_model", networks.model_config("small"), 8)
    with pytest.raises(layouts.LayoutError, match="batch_size=30 is not divisible by the 4"):
        layout.check_batch(30)


def tiny_run_config(parallelism, devices, epochs):
    config = tiny_config(epochs=epochs, every_steps=0)  # checkpoints at the end of epochs
    config.optim.schedule = "constant"
    # Well-conditioned (loss starts at 2.3): from the scaled init, the loss starts near 7 on
    # random mock images and a ReLU within rounding of zero can flip a unit in one layout.
    config.model.init = "paper"
    config.model.implementation = "im2col"  # as in step_config
    config.parallelism = parallelism
    config.num_devices = devices
    return config


def saved_params(workdir):
    """The latest checkpoint's (params, BatchNorm statistics) and evaluation history."""
    config = tiny_run_config("single", 1, 2)
    manager = checkpoints.CheckpointManager(workdir, config)
    restored, _, history, _ = manager.restore_or_keep(build(config, 3).state,
                                                      optim.PlateauPolicy())
    manager.close()
    return jax.device_get((restored.params, restored.batch_stats)), history


def initial_params(config=None):
    """What a run of ``config`` (default: the tiny runs') starts from, in every layout."""
    state = build(config or tiny_run_config("single", 1, 2), 3).state
    return jax.device_get((state.params, state.batch_stats))


@pytest.mark.long
def test_checkpoints_move_between_layouts_and_continue_exactly(tmp_path, order_keeping_kernels):
    """1 epoch under one layout, the 2nd resumed under the other = 2 epochs on one device."""
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_run_config("single", 1, 2), str(tmp_path / "whole"))
        for first, second in [(("data_model", 8), ("single", 1)),
                              (("single", 1), ("data_model", 8))]:
            workdir = str(tmp_path / f"{first[0]}_then_{second[0]}")
            experiment.train_and_evaluate(tiny_run_config(*first, epochs=1), workdir)
            summary = experiment.train_and_evaluate(tiny_run_config(*second, epochs=2), workdir)
            assert summary["steps"] == 6 and summary["layout"] == second[0]
            params, history = saved_params(workdir)
            reference, reference_history = saved_params(str(tmp_path / "whole"))
            assert_updates_close(params, reference, initial_params(), summary["steps"])
            for got, want in zip(history, reference_history):
                # Evaluations of parameters that agree to the bound above: a few float32
                # units of the loss, as in the 20-step comparison (2e-7 relative there).
                np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
                assert got["top1_error"] == want["top1_error"]


def free_port(lowest=0):
    """A port on 127.0.0.1 that nothing listens on, at or above ``lowest`` where given."""
    for port in ([0] if not lowest else random.sample(range(lowest, 65536), 65536 - lowest)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


SLURM_PORTS = 65536 - 2**12  # JAX's coordinator port under SLURM: this + job id % 4096


def run_worker(workdir, devices, process_id=None, port=None, processes=2, extra=(),
               slurm=False):
    """The real command line (alexnet_jax.main) under mock data, in a fresh process whose
    output goes to ``output(process)``; ``extra`` flags after the others.  ``slurm``: the
    process finds its group as under SLURM's srun, from SLURM's environment and
    ``--distributed`` (JAX takes the coordinator's port from the job id)."""
    flags = (f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen="
             "false --xla_cpu_collective_call_terminate_timeout_seconds=600")  # as `make test`
    # A process that misses JAX's CPU topology exchange fails after 1 minute, not 2.
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
           "ALEXNET_JAX_YNNPACK": "1",  # see order_keeping_kernels
           "JAX_CPU_GET_LOCAL_TOPOLOGY_TIMEOUT_MINUTES": "1",
           "JAX_CPU_GET_GLOBAL_TOPOLOGY_TIMEOUT_MINUTES": "2"}
    argv = [sys.executable, os.path.join(REPO, "tests", "mock_data_main.py"),
            "--config", os.path.join(REPO, "experiments", "fashion_mnist.py"),
            "--workdir", workdir, "--config.parallelism=data_model",
            "--config.num_epochs=2", "--config.batch_size=8", "--config.eval_batch_size=40",
            "--config.data.max_train_examples=128", "--config.data.max_test_examples=40",
            "--config.data.data_dir=/nonexistent", "--config.progress_bar=False",
            # The defaults otherwise (asynchronous saves): 16 steps an epoch, checkpoints
            # inside each epoch and at its end, where "best" saves the same step as "latest".
            "--config.checkpoint.every_steps=4", "--config.log_every_steps=1",
            "--config.optim.learning_rate=0.01", *extra]  # 0.05 diverges on noise at batch 8
    if slurm:
        env.update(SLURM_JOB_ID=str(port - SLURM_PORTS), SLURM_STEP_NODELIST="127.0.0.1",
                   SLURM_NTASKS=str(processes), SLURM_PROCID=str(process_id),
                   SLURM_LOCALID="0")
        argv.append("--distributed")
    elif process_id is not None:
        argv += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                 f"--process_id={process_id}"]
    log = f"{workdir}.{process_id}.log"
    with open(log, "a") as f:  # a restart's output after the first run's
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    process.log = log
    return process


def output(process, timeout_s=300):
    process.wait(timeout=timeout_s)
    with open(process.log) as f:
        return f.read()


def wait_for_listener(port, process, timeout_s=120):
    """Waits until ``process`` (the coordinator) accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)


def run_two_processes(workdir, extra=(), slurm=False):
    """Process 0 (the coordinator) first, process 1 once it listens: a client that starts
    first only retries with gRPC's growing back-off."""
    port = free_port(SLURM_PORTS if slurm else 0)
    first = run_worker(workdir, 2, 0, port, extra=extra, slurm=slurm)
    wait_for_listener(port, first)
    return [first, run_worker(workdir, 2, 1, port, extra=extra, slurm=slurm)]


# --- multi-host runs, and their faults ---------------------------------------------------

# A lost process's heartbeats are overdue after 10 s.
LOSES_A_PROCESS = ("--heartbeat_timeout_s=10",)


def wait_for_checkpoint(workdir, step, processes, timeout_s=240):
    path = os.path.join(workdir, "checkpoints", "latest", str(step))
    deadline = time.monotonic() + timeout_s
    while not os.path.isdir(path):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), \
            "\n".join(output(p, 1)[-2000:] for p in processes if p.poll() is not None)
        time.sleep(0.05)


def trainer_of(process):
    """The supervised trainer, the child of a multi-host command (supervisor.py)."""
    with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
        return int(f.read().split()[0])


def last_line(process):
    return [line for line in output(process).splitlines() if line.strip()][-1]


@pytest.mark.long
def test_two_processes_equal_one_process_and_a_lost_one_ends_the_other_and_resumes_exactly(
        tmp_path):
    """jax.distributed on 127.0.0.1 (gloo), with the defaults a user runs: asynchronous
    saves, 2 epochs, checkpoints inside an epoch and at its end, where "latest" and "best"
    save the same step (their barriers once collided there and hung both processes).

    * 2 processes x 2 devices == 1 process x 4.  The workers keep YNNPACK (run_worker):
      with Eigen's kernels the test losses differ by 1e-3 after 4 steps, for the reason
      order_keeping_kernels gives.
    * SIGKILL of process 1 mid-run: process 0 ends within the heartbeat timeout, with one
      line naming process 1, the step and where a restart resumes, status 1, and no core
      or thread dump; restarting both ends with the uninterrupted run's test loss, bit for
      bit.  The restart is SLURM's requeue of the group: the same command in every task,
      the group found from SLURM's environment (``--distributed``).
    """
    single = run_worker(str(tmp_path / "one"), 4)
    workers = run_two_processes(str(tmp_path / "two"))
    cut = run_two_processes(str(tmp_path / "cut"), LOSES_A_PROCESS)
    wait_for_checkpoint(str(tmp_path / "cut"), 8, cut)
    cut[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    cut[0].wait(timeout=120)
    assert time.monotonic() - killed < 10 + 30  # the heartbeat timeout, and some slack
    assert cut[0].returncode == 1, output(cut[0])[-3000:]
    line = last_line(cut[0])
    assert re.fullmatch(
        r"error: This is process 0: process 1 of 2 was lost at step \d+ \(it stopped, was "
        r"killed or its host went down\)\. Nothing is lost: restart every process with the "
        r"same command to resume from step \d+ \(its checkpoint is in .*\)\.", line), line
    assert "Fatal Python error" not in output(cut[0])
    assert not [name for name in os.listdir(REPO) if name.startswith("core")]
    restarted = run_two_processes(str(tmp_path / "cut"), LOSES_A_PROCESS, slurm=True)

    for process in [single, *workers, *restarted]:
        assert process.wait(timeout=300) == 0, output(process)[-3000:]
    assert "2 data replica(s) x 2 device(s) per replica over 2 process(es)" in output(workers[0])
    assert "[Gloo]" not in output(workers[0]) + output(workers[1])  # the supervisor drops it
    assert "Resuming from the checkpoint of step" in output(restarted[0])
    two, one, cut = (json.load(open(tmp_path / run / "summary.json"))
                     for run in ("two", "one", "cut"))
    assert two["steps"] == one["steps"] == cut["steps"] == 32
    assert two["devices"] == one["devices"] == 4
    assert cut["test_loss"] == two["test_loss"]  # bit for bit
    # Two processes sum the gradients over gloo, one process in XLA: another order, so a
    # few float32 units of each loss (1e-7 relative each; 2e-7 seen between layouts in
    # one process), far below the percents a lost replica's gradient would move them.
    np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=1e-5)
    assert two["test_top1_error"] == one["test_top1_error"]
    train_losses = [[r["train_loss"] for r in map(json.loads, open(d / "metrics.jsonl"))
                     if "train_loss" in r] for d in (tmp_path / "two", tmp_path / "one")]
    np.testing.assert_allclose(train_losses[0], train_losses[1], rtol=1e-5)
    assert len(train_losses[0]) == 32
    for run in (tmp_path / "two", tmp_path / "one"):
        assert sorted(os.listdir(run / "checkpoints" / "latest"), key=int) == ["24", "28", "32"]
        assert len(os.listdir(run / "checkpoints" / "best")) == 1
    params_two, _ = saved_params(str(tmp_path / "two"))
    params_one, _ = saved_params(str(tmp_path / "one"))
    from experiments.fashion_mnist import get_config  # what run_worker trains
    assert_updates_close(params_two, params_one, initial_params(get_config()), two["steps"])


def test_on_device_augmentation_is_the_same_in_every_layout():
    """The paper's augmentation in the jitted step, on a batch split over 8 devices: the same
    draws as on one device (each example's depend on its index alone), and the same pixels
    to float32 rounding (XLA may contract the arithmetic differently for another
    per-device shape)."""
    from alexnet_jax.input_pipeline.preprocess.on_device import PaperAugmentation
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 224, 224, 3), np.uint8),
             "offset": rng.integers(0, 33, (16, 2)).astype(np.int32),
             "index": rng.integers(0, 2**31 - 1, 16).astype(np.int32)}
    augmentation = PaperAugmentation(mean=rng.uniform(0, 1, (256, 256, 3)).astype(np.float32),
                                     seed=3)
    one_device = np.asarray(jax.jit(augmentation.train)(batch))
    flips, alphas = jax.jit(jax.vmap(augmentation.draws))(batch["index"])
    for kind in ("data_model", "data"):
        layout = layouts.create(kind, networks.model_config("small"), 8)
        sharded = layout.shard_batch(batch)
        spread = jax.jit(augmentation.train)(sharded)
        assert len(spread.sharding.device_set) == 8
        np.testing.assert_allclose(np.asarray(spread), one_device, rtol=1e-6, atol=1e-7)
        spread_flips, spread_alphas = jax.jit(jax.vmap(augmentation.draws))(sharded["index"])
        np.testing.assert_array_equal(spread_flips, flips)
        np.testing.assert_allclose(spread_alphas, alphas, rtol=1e-6)


@pytest.mark.long
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """A scheduler may signal one process first: every process learns of it and all save
    the same step, then exit with 143."""
    workdir = str(tmp_path / "run")
    processes = run_two_processes(workdir)
    wait_for_checkpoint(workdir, 8, processes)
    processes[1].send_signal(signal.SIGTERM)
    steps = set()
    for process in processes:
        assert process.wait(timeout=120) == 143, output(process)[-3000:]
        stopped = re.search(r"Stopped by SIGTERM at step (\d+); its checkpoint is in",
                            output(process))
        steps.add(int(stopped.group(1)))
    assert len(steps) == 1
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "latest", str(steps.pop())))


@pytest.mark.long
def test_a_process_stuck_on_a_stopped_peer_still_ends_on_sigterm_within_its_deadline(tmp_path):
    """Process 1's trainer is frozen (SIGSTOP): process 0 blocks in the next collective.
    SIGTERM still ends it within --stop_deadline_s, with one line and status 143."""
    workdir = str(tmp_path / "run")
    processes = run_two_processes(workdir, ("--stop_deadline_s=5",))
    wait_for_checkpoint(workdir, 8, processes)
    frozen = trainer_of(processes[1])
    os.kill(frozen, signal.SIGSTOP)
    try:
        time.sleep(1)
        processes[0].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        processes[0].wait(timeout=60)
        assert time.monotonic() - sent < 5 + 10
        assert processes[0].returncode == 143
        assert last_line(processes[0]).startswith(
            "error: Stopped by SIGTERM, but this process could not reach a step where every "
            "process saves within 5 s")
    finally:
        processes[1].kill()
        os.kill(frozen, signal.SIGKILL)
