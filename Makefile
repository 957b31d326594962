# Two commands set everything up on a fresh machine:
#   make train   creates .venv/, installs requirements.txt, builds the oneDNN kernels, fetches
#                Fashion-MNIST, trains the default experiment
#   make test    does the same set-up where anything is missing, then ruff and the test suite
# and one shows the runs while they train:
#   make tensorboard   serves runs/ (or LOGDIR=...) on http://127.0.0.1:6006
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR := data
FASHION_MNIST := $(DATA_DIR)/fashion-mnist
WORKDIR ?= runs/fashion_mnist
PYTEST_ARGS ?=

LOGDIR ?= runs
PORT ?= 6006

.PHONY: train test test-long test-isas data venv kernels tensorboard

venv: $(VENV)/installed
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	touch $@

# The CPU extra's oneDNN handlers for XLA:CPU (alexnet_jax/model/cpu/onednn.py; which run when:
# alexnet_jax/model/cpu/chooser.py), compiled against the oneDNN wheel in .venv/.  Without a C++
# compiler it says so, and XLA's own forms run.
# Without alexnet_jax/model/cpu/ (an optional extra), there is nothing to build.
ifneq ($(wildcard alexnet_jax/model/cpu/onednn_kernels.cc),)
ONEDNN_KERNELS := alexnet_jax/model/cpu/_onednn_kernels.so
kernels: $(ONEDNN_KERNELS)
$(ONEDNN_KERNELS): alexnet_jax/model/cpu/onednn_kernels.cc $(VENV)/installed
	$(PY) -c "from alexnet_jax.model.cpu import onednn; onednn.main()"
else
kernels:
endif

# Fashion-MNIST's four IDX files from Debian's dataset-fashion-mnist package; no root needed.
data: $(FASHION_MNIST)/train-images-idx3-ubyte.gz
$(FASHION_MNIST)/train-images-idx3-ubyte.gz:
	mkdir -p $(DATA_DIR)/debs $(FASHION_MNIST)
	cd $(DATA_DIR)/debs && { apt-get download dataset-fashion-mnist 2>/dev/null \
	  || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; }
	dpkg-deb -x $(DATA_DIR)/debs/dataset-fashion-mnist_*.deb $(DATA_DIR)/debs/root
	cp $(DATA_DIR)/debs/root/usr/share/datasets/fashion-mnist/*.gz $(FASHION_MNIST)/
	rm -rf $(DATA_DIR)/debs

tensorboard: venv
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1 --port $(PORT)

train: venv data kernels
	PYTHONUNBUFFERED=1 $(PY) -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir $(WORKDIR)
	@echo "Results: $(WORKDIR)/summary.json, metrics: $(WORKDIR)/metrics.jsonl"

# Three pytest workers share the two cores: most tests wait on XLA's single-threaded
# compiler, whose results the test processes share through a persistent compilation cache
# (tests/conftest.py).  Fashion-MNIST's TFDS files are prepared first, so that the workers
# only read them.  The layout tests need 8 devices: XLA gives 8 CPU devices to a process
# started with the flag below, so they run apart, on two workers (the flag slows
# single-device code by ~25% on CPU); the flags such devices need besides come from the
# CPU extra, as for the entry points (alexnet_jax/model/cpu/devices.py).
# `make test` leaves out the end-to-end tests marked `long` (multi-process faults, SIGKILL
# and SIGTERM resumes, a full disk, submitit, layouts through checkpoints, the README's
# forced-device command, the ImageNet experiments, vmapped seeds against separate runs,
# the benchmark's and the sweep planner's probe runs, the command line on an existing run
# and a damaged checkpoint, the package without its CPU extra: real processes, timeouts
# and whole runs); `make test-long` runs them, and CI runs both.
MULTI_DEVICE_FLAGS := --xla_force_host_platform_device_count=8
CHECKS = $(VENV)/bin/ruff check alexnet_jax tests experiments benchmarks && \
	$(PY) -c "from alexnet_jax import input_pipeline as p; from alexnet_jax.training import config_base; p.load_builder(config_base.base_config().data)"
ONE_DEVICE = $(PY) -m pytest -q -n 3 --dist loadfile -m "$(1)" $(PYTEST_ARGS) tests \
	--ignore=tests/model/test_layouts.py --ignore=tests/model/test_layouts_lowering.py
EIGHT_DEVICES = XLA_FLAGS="$(MULTI_DEVICE_FLAGS)" $(PY) -m pytest -q -n 2 --dist load -m "$(1)" \
	$(PYTEST_ARGS) tests/model/test_layouts.py tests/model/test_layouts_lowering.py
test: venv data kernels
	$(CHECKS)
	$(call ONE_DEVICE,not long)
	$(call EIGHT_DEVICES,not long)
test-long: venv data kernels
	$(CHECKS)
	$(call ONE_DEVICE,long)
	$(call EIGHT_DEVICES,long)

# The numerical tests under the instruction sets this CPU has below its own (AVX2 on an
# AVX-512 machine): another CPU's arithmetic, from this one.  Not part of `make test`.
test-isas: venv data kernels
	bash scripts/test_isas.sh $(ISAS)
