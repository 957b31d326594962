"""What a run writes for TensorBoard, read back with TensorBoard's own reader and served by a
real ``tensorboard`` on 127.0.0.1: scalars equal to metrics.jsonl, conv1's picture per
evaluation, the config, and the hyperparameters of every run of a sweep."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from alexnet_jax.runtime import metric_writer
from alexnet_jax.training import experiment
from support import tiny_config  # noqa: E402

EVERYTHING = {event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
              event_accumulator.TENSORS: 0}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two short runs that differ in learning rate, as a sweep lays them out."""
    root = tmp_path_factory.mktemp("sweep")
    with tfds.testing.mock_data(num_examples=96):
        for name, learning_rate in (("lr=0.01-seed0", 0.01), ("lr=0.03-seed0", 0.03)):
            config = tiny_config(epochs=2, every_steps=0)
            config.optim.learning_rate = learning_rate
            experiment.train_and_evaluate(config, str(root / name))
    return root


def load(run_dir):
    accumulator = event_accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard"),
                                                     size_guidance=EVERYTHING)
    return accumulator.Reload()


def test_scalars_equal_metrics_jsonl(sweep_dir):
    run = sweep_dir / "lr=0.01-seed0"
    events = load(run)
    for record in metric_writer.read_metrics(str(run)):
        for tag, value in record.items():
            if tag == "step":
                continue
            logged = {e.step: e.value for e in events.Scalars(tag)}
            assert logged[record["step"]] == pytest.approx(np.float32(value), rel=1e-6), tag
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "learning_rate", "images_per_s", "test_top1_error",
            "test_loss"} <= tags


def test_conv1_picture_at_each_evaluation_and_the_config_as_text(sweep_dir):
    events = load(sweep_dir / "lr=0.01-seed0")
    pictures = events.Images("conv1_kernels")
    assert [p.step for p in pictures] == [3, 6]  # the ends of the two epochs
    assert (pictures[0].width, pictures[0].height) == (720, 432)  # as figures' conv1 PNG
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"learning_rate": 0.01' in config_text


def session_hparams(run_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = load(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.ListFields()[0][1] for k, v in start.hparams.items()}


def test_every_run_declares_its_hyperparameters(sweep_dir):
    first, second = (session_hparams(sweep_dir / name)
                     for name in ("lr=0.01-seed0", "lr=0.03-seed0"))
    assert first["optim.learning_rate"] == pytest.approx(0.01)
    assert second["optim.learning_rate"] == pytest.approx(0.03)
    assert first["model.variant"] == "small" and first["model.towers"] == 2
    assert first["model.dropout_rate"] == pytest.approx(0.5)  # the variant's, resolved


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, body=None, timeout_s=10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def test_a_tensorboard_server_serves_the_scalars_and_the_hparams_table(sweep_dir):
    """The `tensorboard` the project installs, on 127.0.0.1, stopped by the test; every wait
    is bounded."""
    port = free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tensorboard"),
                               "--logdir", str(sweep_dir), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = "lr=0.03-seed0/tensorboard"
        expected = {r["step"]: r["test_top1_error"]
                    for r in metric_writer.read_metrics(str(sweep_dir / "lr=0.03-seed0"))
                    if "test_top1_error" in r}
        deadline, served = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                served = get(port, f"/data/plugin/scalars/scalars?run={run}"
                                   "&tag=test_top1_error")
                if len(served) == len(expected):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert served is not None, "tensorboard did not answer within 90 s"
        assert {step: value for _, step, value in served} == pytest.approx(expected)
        groups = get(port, "/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                      "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 100})
        rates = sorted(g["hparams"]["optim.learning_rate"] for g in groups["sessionGroups"])
        assert rates == pytest.approx([0.01, 0.03])
    finally:
        server.terminate()
        server.wait(timeout=30)
