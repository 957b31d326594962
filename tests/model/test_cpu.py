"""The optional CPU extra (alexnet_jax/model/cpu/): the entry points' process settings (malloc
that keeps what it frees, forced host devices' flags), only where the backend is the CPU;
and the model and trainer without the extra."""
import os
import shutil
import subprocess
import sys

import pytest

from alexnet_jax.model.cpu import devices, malloc_tunables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What an entry point does first (it may restart the process), then reports the tunables,
# how much of a 256 MiB malloc'd block, written through, leaves the process's resident
# memory when it is freed, and XLA_FLAGS.
PROBE = """
import ctypes, os
from alexnet_jax import prepare_process
prepare_process()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def resident_kb():
    with open('/proc/self/status') as f:
        return sum(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))

size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
before = resident_kb()
libc.free(ctypes.c_void_p(block))
print(os.environ.get('GLIBC_TUNABLES', ''), before - resident_kb(),
      os.environ.get('XLA_FLAGS', ''), sep='|')
"""

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="glibc's tunables")


def run_probe(**env_changes):
    """(GLIBC_TUNABLES, KiB released by a free, XLA_FLAGS) of a process that prepared as
    the entry points do, with the CPU as its backend unless ``env_changes`` say otherwise."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    completed = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                               capture_output=True, text=True, check=True)
    tunables, released_kb, xla_flags = completed.stdout.strip().splitlines()[-1].split("|")
    return tunables, int(released_kb), xla_flags


@linux_only
def test_restart_gives_malloc_that_keeps_a_freed_block():
    tunables, released_kb, _ = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_MALLOC_TUNABLES=None)
    assert tunables == ":".join(f"{k}={v}" for k, v in malloc_tunables.MALLOC_TUNABLES.items())
    assert released_kb < 16 << 10  # freed, the block stays for the next malloc


@linux_only
def test_restart_keeps_the_tunables_a_user_set():
    tunables, released_kb, _ = run_probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000",
                                      ALEXNET_JAX_MALLOC_TUNABLES=None)
    ours = [f"{k}={v}" for k, v in malloc_tunables.MALLOC_TUNABLES.items()
            if "trim_threshold" not in k]
    assert tunables == ":".join(["glibc.malloc.trim_threshold=1000000", *ours])
    assert released_kb > 200 << 10  # the user's low threshold: the heap's top is trimmed


@linux_only
def test_no_restart_when_switched_off_or_chosen():
    for env in ({"GLIBC_TUNABLES": None, "ALEXNET_JAX_MALLOC_TUNABLES": "0"},
                {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536",
                 "ALEXNET_JAX_MALLOC_TUNABLES": None}):
        tunables, released_kb, _ = run_probe(**env)
        assert tunables == (env["GLIBC_TUNABLES"] or "")
        assert released_kb > 200 << 10  # glibc's default: a big block is unmapped when freed


@linux_only
@pytest.mark.parametrize("platforms", ["cuda", "tpu", "cuda,cpu"])
def test_no_restart_where_the_backend_is_an_accelerator(platforms):
    """GPU and TPU hosts keep glibc's malloc: its tunables are for XLA:CPU's arrays, and
    tf.data's threads there would share one arena."""
    tunables, released_kb, _ = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_MALLOC_TUNABLES=None,
                                         JAX_PLATFORMS=platforms)
    assert tunables == ""
    assert released_kb > 200 << 10


def test_the_backend_is_the_cpu_by_jax_platforms_or_where_no_accelerator_is_installed():
    assert devices.backend_is_cpu({"JAX_PLATFORMS": "cpu"})
    assert not devices.backend_is_cpu({"JAX_PLATFORMS": "tpu"})
    assert devices.backend_is_cpu({})  # this machine: jaxlib alone, no accelerator plugin
    assert devices.ACCELERATOR_PLUGINS.match("jax-cuda12-plugin")
    assert devices.ACCELERATOR_PLUGINS.match("jax_cuda13_pjrt")
    assert devices.ACCELERATOR_PLUGINS.match("libtpu")
    assert not devices.ACCELERATOR_PLUGINS.match("jaxlib")


@pytest.mark.parametrize("given,expected", [
    ("--xla_force_host_platform_device_count=2",
     "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false "
     "--xla_cpu_collective_call_terminate_timeout_seconds=600"),
    ("--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=true",
     "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=true "
     "--xla_cpu_collective_call_terminate_timeout_seconds=600"),  # the user's choice kept
    ("--xla_force_host_platform_device_count=1", "--xla_force_host_platform_device_count=1"),
    ("", "")])
def test_forced_host_devices_get_their_own_threads_and_a_long_collective_timeout(given,
                                                                              expected):
    assert devices.forced_device_flags(given) == expected
    _, _, xla_flags = run_probe(XLA_FLAGS=given)
    assert xla_flags == expected


@pytest.mark.long
def test_the_model_and_the_trainer_run_without_the_cpu_extra(tmp_path):
    """A copy of the package without alexnet_jax/model/cpu/: an entry point prepares nothing, the
    layers are the plain ones on the CPU too, and a training step runs."""
    shutil.copytree(os.path.join(REPO, "alexnet_jax"), tmp_path / "alexnet_jax",
                    ignore=shutil.ignore_patterns("cpu", "__pycache__"))
    script = (
        "import jax, numpy as np\n"
        "from alexnet_jax import prepare_process\n"
        "from alexnet_jax.model import layers\n"
        "from alexnet_jax.training import config_base, train\n"
        "prepare_process()\n"
        "assert layers.select('auto', 'cpu') is layers.PLAIN\n"
        "assert layers.compiler_options('cpu') == {}\n"
        "try:\n"
        "    layers.select('xla', 'cpu')\n"
        "except ValueError as error:\n"
        "    assert 'CPU extra' in str(error)\n"
        "config = config_base.base_config()\n"
        "config.model.variant = 'small'\n"
        "import support\n"
        "run = support.build(config)\n"
        "assert run.layout.model.layers is layers.PLAIN\n"
        "batch = {'image': np.zeros((8, 28, 28, 1), np.float32), 'label': np.zeros(8, np.int32)}\n"
        "state, metrics = run.steps.train(run.state, batch)\n"
        "print('trained', int(state.step), float(metrics['loss']) > 0)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{os.path.join(REPO, 'tests')}",
           "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                               capture_output=True, text=True)
    assert completed.stdout.strip().endswith("trained 1 True"), completed.stderr[-3000:]
