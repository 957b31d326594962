"""The benchmark's smoke run: the seed protocol's JSON keys, and no TensorFlow on its path."""
import json
import subprocess
import sys

from alexnet_jax import benchmark


def test_benchmark_smoke_run_writes_the_reference_keys(tmp_path):
    out = tmp_path / "bench.json"
    benchmark.main(["--variant", "small", "--batch", "4", "--steps", "2", "--burn_in", "1",
                    "--json", str(out)])
    result = json.load(open(out))
    for key in ("forward", "forward_backward"):
        assert result[key]["mean_s"] > 0 and result[key]["std_s"] >= 0
        assert result[key]["steps"] == 2
    assert result["train_step"]["images_per_s"] > 0
    assert result["versions"]["jax"] and result["device"]


def test_benchmark_path_imports_no_tensorflow():
    code = ("import sys; from alexnet_jax import benchmark; "
            "benchmark.run_benchmark('small', 2, 1, burn_in=0); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
