# Two commands for a fresh machine (see README):
#   make demo   install, then train stage 1 on the built-in scenes (the main job)
#   make test   install, then run the test suite
#
# The install pins the CPU build of torch that lies on this project's machines; on a GPU machine use
# `make demo TORCH=torch` (or install the package into an environment that already has CUDA torch).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export HF_EVALUATE_OFFLINE = 1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null 2>&1 || { echo "installing Java for pycocoevalcap"; \
	  (apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null) || \
	  echo "warning: no Java found and apt-get failed; caption metrics (pycocoevalcap) need java"; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" -e '.[test]'
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
	  stage1_pretrain/train.py

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs
