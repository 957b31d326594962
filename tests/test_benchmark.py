"""The benchmark: the seed protocol's JSON keys, no TensorFlow on its path, its work
counted by hand, and its per-layer profile."""
import json
import subprocess
import sys

import pytest

from alexnet_jax import benchmark
from alexnet_jax.model import networks


@pytest.mark.long
def test_benchmark_smoke_run_writes_the_reference_keys_and_imports_no_tensorflow(tmp_path):
    out = tmp_path / "bench.json"
    code = ("import sys; from absl import flags; from alexnet_jax import benchmark; "
            "benchmark.define_flags(); "
            "flags.FLAGS(['benchmark', '--variant', 'small', '--batch', '4', '--steps', '2', "
            f"'--burn_in', '1', '--profile', '--json', {str(out)!r}]); "
            "benchmark.main(['benchmark']); "
            "print('tensorflow' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "False"
    result = json.load(open(out))
    for key in ("forward", "forward_backward"):
        assert result[key]["mean_s"] > 0 and result[key]["std_s"] >= 0
        assert result[key]["steps"] == 2
    assert result["train_step"]["images_per_s"] > 0
    assert result["versions"]["jax"] and result["device"]
    assert result["matmul_gflops_per_s"] > 0
    for key in ("forward", "forward_backward", "train_step"):
        rate = result[key]
        assert 0 < rate["fraction_of_matmul"] < 10
        assert abs(rate["gflops_per_s"] - rate["fraction_of_matmul"]
                   * result["matmul_gflops_per_s"]) < 1e-6 * rate["gflops_per_s"]
    profile = result["profile"]  # (pooling may fuse into its neighbours' instructions)
    assert {"conv1", "conv2", "conv5", "fc6"} <= set(profile)
    assert set(profile) <= {f"conv{i}" for i in range(1, 6)} | {"lrn1", "lrn2", "pool1", "pool2",
                                                              "pool5", "fc6", "fc7", "output",
                                                              "other"}
    assert profile["conv2"]["backward_ms"] > 0 and profile["conv2"]["forward_ms"] > 0
    instructions = result["profile_instructions"]  # what the table sums, costliest first
    assert [row["ms"] for row in instructions] == sorted((row["ms"] for row in instructions),
                                                         reverse=True)
    assert abs(sum(row["ms"] for row in instructions) - sum(
        sum(row.values()) for row in profile.values())) < 1e-6


def test_profile_sums_instructions_per_layer_in_the_networks_order():
    from alexnet_jax.tools import profile
    rows = [{"instruction": "fusion.3", "layer": "pool1", "direction": "forward", "ms": 2.0},
            {"instruction": "convolution.1", "layer": "conv2", "direction": "backward", "ms": 1.5},
            {"instruction": "convolution.7", "layer": "conv1", "direction": "backward", "ms": 1.0},
            {"instruction": "fusion.9", "layer": "pool1", "direction": "forward", "ms": 0.5},
            {"instruction": "copy.2", "layer": "other", "direction": "forward", "ms": 0.25}]
    table = profile.per_layer(rows)
    assert list(table) == ["conv1", "pool1", "conv2", "other"]
    assert table["pool1"] == {"forward_ms": 2.5, "backward_ms": 0.0}
    assert table["conv2"] == {"forward_ms": 0.0, "backward_ms": 1.5}
    listing = profile.format_instructions(rows, top=2).splitlines()
    assert len(listing) == 3 and "fusion.3" in listing[1] and "convolution.1" in listing[2]


def test_work_is_counted_by_hand():
    """The small network: 13,535,232 multiply-adds per 28x28 image (README); its backward
    computes every layer's weight gradient and every input gradient but conv1's (5x5x1 ->
    24 maps per tower, 28x28, two towers: 940,800 multiply-adds)."""
    flops = benchmark.flops_per_image(networks.model_config("small"))
    assert flops["forward"] == 2 * 13_535_232
    assert flops["forward_backward"] == 3 * 2 * 13_535_232 - 2 * 940_800


def test_compare_gives_every_runner_the_same_protocol(tmp_path):
    """The peers are timed as the project is: same batch, steps and untimed burn-in."""
    runners = benchmark.peer_commands(str(tmp_path), sys.executable, "tf_benchmark", "float32",
                                      batch=128, steps=5, burn_in=2)
    assert {"project", "tensorflow"} <= set(runners)
    for command in runners.values():
        for flag, value in (("--batch", "128"), ("--steps", "5"), ("--burn_in", "2")):
            assert command[command.index(flag) + 1] == value


def test_profile_gives_an_instruction_without_metadata_its_nearest_users_layer():
    """XLA rewrites a convolution's kernel gradient into instructions without metadata;
    they count for the layer of the nearest instruction that uses their result."""
    from alexnet_jax.tools import profile
    text = "\n".join([
        '%conv_general_dilated.1 = f32[4,5,5,8]{3,2,1,0} convolution(%p0, %p1), '
        'metadata={op_name="jit(f)/jvp(AlexNet)/vmap(towers)/conv2/conv_general_dilated"}',
        '%transpose_copy_fusion.2 = f32[8,5,5,4]{3,2,1,0} fusion(%p0), kind=kLoop',
        '%convolution.3 = f32[3,3,8,8]{3,2,1,0} convolution(%transpose_copy_fusion.2, %p2)',
        '%stack.4 = f32[2,3,3,8,8]{4,3,2,1,0} concatenate(%convolution.3, %convolution.3), '
        'metadata={op_name="jit(f)/transpose(jvp(AlexNet))/vmap(towers)/conv2/stack"}',
        '%orphan.5 = f32[] add(%p3, %p3)',
    ])
    layers = profile.instruction_layers(text)
    assert layers["conv_general_dilated.1"] == ("conv2", "forward")
    assert layers["convolution.3"] == layers["transpose_copy_fusion.2"] == ("conv2", "backward")
    assert layers["stack.4"] == ("conv2", "backward")
    assert layers["orphan.5"] == ("other", "forward")


def test_profile_times_an_asynchronous_instruction_to_its_end_and_splits_overlaps():
    """XLA:CPU traces a convolution handed to Eigen's threads as a short hand-off event and
    an ``end: NAME`` event when the work finished; instructions running side by side share
    each moment, so the times sum to the span of the calls (hand-computed case)."""
    from alexnet_jax.tools import profile
    events = [  # microseconds; two calls of the same program
        {"name": "fusion.1", "ts": 0.0, "dur": 10.0},          # inline, 0-10
        {"name": "convolution.2", "ts": 4.0, "dur": 0.5},      # handed off at 4 ...
        {"name": "end: convolution.2", "ts": 15.0, "dur": 1.0},  # ... done at 16
        {"name": "ThunkExecutor::Execute", "ts": 0.0, "dur": 40.0},  # not an instruction
        {"name": "fusion.1", "ts": 20.0, "dur": 4.0},          # second call, alone
        {"name": "convolution.2", "ts": 24.0, "dur": 0.0},     # zero-length hand-off ...
        {"name": "end: convolution.2", "ts": 30.0, "dur": 0.0},  # ... done at 30
    ]
    runs = profile.instruction_intervals(events, {"fusion.1", "convolution.2"})
    assert sorted(runs) == [("convolution.2", 4.0, 16.0), ("convolution.2", 24.0, 30.0),
                            ("fusion.1", 0.0, 10.0), ("fusion.1", 20.0, 24.0)]
    times = profile.instruction_times(runs)
    # 0-4 fusion alone, 4-10 shared (3 each), 10-16 convolution alone; 20-24 fusion, 24-30 conv
    assert times == {"fusion.1": 4.0 + 3.0 + 4.0, "convolution.2": 3.0 + 6.0 + 6.0}
    assert sum(times.values()) == 16.0 + 10.0


def test_profile_ends_a_run_where_a_user_of_its_result_starts():
    """The runtime may record an asynchronous instruction's end event late, after a user
    of its result has started; the run then ends where that user starts."""
    from alexnet_jax.tools import profile
    text = "\n".join([
        '%conv.1 = f32[8]{0} convolution(%p0, %p1)',
        '%relu_fusion.2 = f32[8]{0} fusion(%conv.1), kind=kLoop',
    ])
    users = profile.instruction_users(text)
    assert users["conv.1"] == ["relu_fusion.2"]
    events = [
        {"name": "conv.1", "ts": 0.0, "dur": 1.0}, {"name": "end: conv.1", "ts": 9.0, "dur": 0.0},
        {"name": "relu_fusion.2", "ts": 5.0, "dur": 2.0},
        {"name": "conv.1", "ts": 20.0, "dur": 1.0}, {"name": "end: conv.1", "ts": 23.0, "dur": 0.0},
        {"name": "relu_fusion.2", "ts": 24.0, "dur": 1.0},
    ]
    runs = profile.instruction_intervals(events, {"conv.1", "relu_fusion.2"}, users)
    assert sorted(runs) == [("conv.1", 0.0, 5.0), ("conv.1", 20.0, 23.0),
                            ("relu_fusion.2", 5.0, 7.0), ("relu_fusion.2", 24.0, 25.0)]
    assert profile.instruction_times(runs) == {"conv.1": 8.0, "relu_fusion.2": 3.0}


def test_layers_vs_tf_cuts_the_seeds_network_alike_on_both_sides():
    """Each layer of ``benchmarks/layers_vs_tf.py``, alone, maps its listed input to the
    next layer's on both sides (the project's forms, TensorFlow's ops), and the whole
    network ends in fc8's 1000 units: both sides time the same network."""
    pytest.importorskip("tensorflow")
    import jax
    import numpy as np

    from benchmarks import layers_vs_tf as bench
    shapes = [shape for *_, shape in bench.SEED_LAYERS] + [(1000,)]
    for start, end in [*((i, i + 1) for i in range(len(bench.SEED_LAYERS))),
                       (0, len(bench.SEED_LAYERS))]:
        x = np.zeros((2, *shapes[start]), np.float32)
        forward, _, args = bench.project_functions(start, end, x)
        project = jax.eval_shape(forward, *args).shape
        forward, _, args = bench.tf_functions(start, end, x)
        tensorflow = tuple(forward.get_concrete_function(*args).structured_outputs.shape)
        # pool5's maps reach fc6 as they are: fc6 flattens them itself
        assert project[0] == 2 and np.prod(project[1:]) == np.prod(shapes[end]), (start, end)
        assert tensorflow == project, (start, end)
