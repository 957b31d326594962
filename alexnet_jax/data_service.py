"""A tf.data service dispatcher or worker, for input work spread over more hosts.

    python -m alexnet_jax.data_service dispatcher --host HOST --port 5050 [--work_dir DIR]
    python -m alexnet_jax.data_service worker --host HOST --dispatcher HOST:5050 --port 5051

``--host`` is the address a server is reached at (default 127.0.0.1: this machine alone;
give the address of the interface on the private network the hosts share).  TensorFlow's
servers take no address to bind to (``DispatcherConfig`` and ``WorkerConfig`` have a port
only) and listen on every interface, with no authentication: run them on a private
network, or let a firewall open their ports only to the training hosts.  Each says so as
it starts.

Start one dispatcher, and a worker on every host that lends its cores (each worker must
see the data directory at the same path as the training processes); then train with
``--config.data.service_address=grpc://HOST:5050``.  The training processes send the
per-example work (decoding, cropping) to the workers and receive finished examples.  What
it gives up: the examples of an epoch arrive in the workers' order, so a resumed run no
longer sees exactly the batches it would have seen (README, "Training on ImageNet").
"""

if __name__ == "__main__":  # before JAX is imported: XLA reads its log level then
    from alexnet_jax.runtime import console
    console.hold_back_notices()

import sys

from absl import app, flags

from alexnet_jax.input_pipeline.tf_runtime import tf


def start(role: str, port: int, dispatcher: str = "", work_dir: str = "",
          host: str = "127.0.0.1"):
    """The server of ``role`` (dispatcher or worker) on ``port``, reached at ``host``,
    started; it serves until stopped."""
    service = tf().data.experimental.service
    if role == "dispatcher":
        return service.DispatchServer(service.DispatcherConfig(
            port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir)))
    if role == "worker":
        if not dispatcher:
            raise app.UsageError("a worker needs --dispatcher HOST:PORT.")
        return service.WorkerServer(service.WorkerConfig(
            dispatcher_address=dispatcher, port=port, worker_address=f"{host}:%port%"))
    raise app.UsageError(f"the role is 'dispatcher' or 'worker', not {role!r}.")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m alexnet_jax.data_service dispatcher|worker ...")
    args = flags.FLAGS
    server = start(argv[1], args.port, args.dispatcher, args.work_dir, args.host)
    print(f"tf.data service {argv[1]} serving on {args.host}:{args.port}", flush=True)
    print(f"warning: TensorFlow's tf.data service listens on port {args.port} of every "
          "interface, without authentication: keep this host on a private network or "
          "firewall the port.", file=sys.stderr, flush=True)
    server.join()


if __name__ == "__main__":
    flags.DEFINE_string("host", "127.0.0.1", "The address to listen on (default: this "
                        "machine only).")
    flags.DEFINE_integer("port", 5050, "The port to serve on.")
    flags.DEFINE_string("dispatcher", "", "worker: the dispatcher's HOST:PORT.")
    flags.DEFINE_string("work_dir", "", "dispatcher: a directory to keep its state in.")
    app.run(main)
