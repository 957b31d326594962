"""The benchmark's smoke run: the seed protocol's JSON keys, and no TensorFlow on its path."""
import json
import subprocess
import sys


def test_benchmark_smoke_run_writes_the_reference_keys_and_imports_no_tensorflow(tmp_path):
    out = tmp_path / "bench.json"
    code = ("import sys; from absl import flags; from alexnet_jax import benchmark; "
            "benchmark.define_flags(); "
            "flags.FLAGS(['benchmark', '--variant', 'small', '--batch', '4', '--steps', '2', "
            f"'--burn_in', '1', '--json', {str(out)!r}]); benchmark.main(['benchmark']); "
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
