# Two commands for a fresh machine (see README):
#   make demo   install, then run the main job on the built-in scenes (stage 1 -> stage 2 -> scores)
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

# The main job: the whole chain on the built-in data (stage 1 -> stage 2 -> captions for the held-out test
# split -> caption metrics, CHAIR and POPE). Every step writes under runs/. Stage 1 is SPARK plus the caption-word
# loss (configs/stage1_words.yaml), the recipe measured to make the captioner's object words read the image; the
# paper's loss alone is `stage1_pretrain/train.py` with no config (README, "Does the captioner read the image?").
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
SCENES := runs/scenes_test
STAGE2 := runs/stage2_words
demo: install
	$(LAUNCH) stage1_pretrain/train.py --config configs/stage1_words.yaml
	$(LAUNCH) stage2_vlm/train.py --config configs/stage2_words.yaml
	$(BIN)/python -m spark_vlm.data.coco_export --out $(SCENES) --split test --num-images 500
	$(BIN)/python eval/caption.py --checkpoint $(STAGE2) --image-dir $(SCENES)/test \
	  --annotations $(SCENES)/annotations/captions_test.json --out runs/eval/captions_test.json
	$(BIN)/python eval/captioning.py --results runs/eval/captions_test.json --split test \
	  --annotations $(SCENES)/annotations/captions_test.json --blind-seed 0 --out runs/eval/caption_scores.json
	$(BIN)/python eval/hallucination.py --results runs/eval/captions_test.json \
	  --captions $(SCENES)/annotations/captions_test.json --instances $(SCENES)/annotations/instances_test.json \
	  --synonyms $(SCENES)/annotations/synonyms.json --blind-seed 0 --out runs/eval/chair.json
	$(BIN)/python eval/pope.py --checkpoint $(STAGE2) --instances $(SCENES)/annotations/instances_test.json \
	  --image-dir $(SCENES)/test --num-images 100 --out runs/eval/pope.json
	$(BIN)/python eval/pope.py --checkpoint $(STAGE2) --instances $(SCENES)/annotations/instances_test.json \
	  --image-dir $(SCENES)/test --num-images 500 --answer statement --statements scenes --out runs/eval/pope_statement.json

# The explorer's browser test (tests/test_explorer_browser.py) drives Debian's chromium through chromedriver.
test: install
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing chromium + chromium-driver for the explorer's browser test"; \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: no chromium found and apt-get failed; the explorer's browser test will be skipped"; }
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs
