# Quick start: `make demo` (the main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install test test-photos lint serve demo demo-camera camera-recipes demo-scratch ablation docs-orl docs-orl-camera docs-search search-demo search-ablation search-dev-sweep bench bench-mining bench-serve bench-first-serve bench-inference clean

# torch==2.13.0 first: a CPU wheel on these machines; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[faces,search,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/mypy

# The face_recognition 1.3.0 source distribution's test photos (obama, biden), from PyPI, once.
test-photos: $(STAMP)
	$(BIN)/python tests/photos.py

test: lint test-photos
	$(BIN)/pytest

# The service and page on the embedded defaults: the wiki index (zero-shot encoder) and an ORL
# gallery (5 photos per person, pretrained dlib descriptor). The gallery is enrolled first if
# missing; the service comes up without waiting for the index: when runs/wiki-index has none,
# it builds it in the background (--build-index wiki), answering faces meanwhile and showing
# the build's progress on /health and the page.
HOST ?= 127.0.0.1
PORT ?= 8000
runs/orl-gallery.done: | $(STAMP)
	rm -rf runs/orl-gallery
	$(BIN)/tripletkit enroll orl --gallery runs/orl-gallery --per-person 5
	touch $@

serve: $(STAMP) runs/orl-gallery.done
	$(BIN)/tripletkit serve --index runs/wiki-index --build-index wiki \
		--gallery runs/orl-gallery --model dlib --host $(HOST) --port $(PORT)

# The ORL experiment: 4 folds of 10 held-out people; the from-scratch CNN first (its run is
# quoted as the table's scratch row), then dlib frozen and fine-tuned and the baselines at both
# resolutions; runs/demo/report.md.
demo: demo-scratch
	$(BIN)/tripletkit demo --config configs/orl.yaml

# The camera-adapted ORL experiment (issue 19): the same folds, with dlib's lowest levels first
# adapted to the x4 camera; runs/demo-camera/report.md (13.5 minutes on 2 cores with the chips cached).
demo-camera: $(STAMP)
	$(BIN)/tripletkit demo --config configs/orl-camera.yaml

# The camera adaptation recipes on validation people: docs/faces_camera_recipes.md.
camera-recipes: $(STAMP)
	$(BIN)/python experiments/camera_recipes.py

# The FaceNet experiment from scratch alone (a small residual CNN trained on 24 ORL people per
# fold, 6 validation people); runs/demo-scratch/.
demo-scratch: $(STAMP)
	$(BIN)/tripletkit demo --config configs/orl-scratch.yaml

# The mining ablation of the from-scratch experiment; its arms join runs/demo-scratch/.
ablation: $(STAMP)
	$(BIN)/tripletkit demo --config configs/orl-scratch.yaml --resume \
		--set 'ablation=[semi-hard-curriculum, semi-hard-fixed, hard, all]'

# Semantic search on the Wikipedia vital articles: both BM25 rows, the zero-shot encoder and the
# encoder fine-tuned with filtered mined negatives (one seed); runs/search-demo/report.md.
search-demo: $(STAMP)
	$(BIN)/tripletkit demo --config configs/wiki.yaml

# Every search arm (naive, unfiltered, each filter alone, filtered) at three seeds, paired
# tests, and the table without training-query positives; runs/search-ablation/report.md.
search-ablation: $(STAMP)
	$(BIN)/tripletkit demo --config configs/wiki_ablation.yaml

# The reduced dev-split sweep of the search recipe; writes docs/search_dev_sweep.md.
search-dev-sweep: $(STAMP)
	$(BIN)/python experiments/search_dev_sweep.py

# Publish the demo run (report, metrics, figures) as docs/orl/.
docs-orl:
	mkdir -p docs/orl
	rm -f docs/orl/*.png
	cp runs/demo/report.md runs/demo/metrics.json runs/demo/intervals.json runs/demo/protocols.json \
		runs/demo/*.png docs/orl/

# Publish the camera-adapted demo run as docs/orl-camera/.
docs-orl-camera:
	mkdir -p docs/orl-camera
	rm -f docs/orl-camera/*.png
	cp runs/demo-camera/report.md runs/demo-camera/metrics.json runs/demo-camera/intervals.json \
		runs/demo-camera/protocols.json runs/demo-camera/*.png docs/orl-camera/

# Publish the search ablation run (report, metrics, figures) as docs/search/.
docs-search:
	mkdir -p docs/search
	cp runs/search-ablation/report.md runs/search-ablation/*.json runs/search-ablation/qrels.*.tsv \
		runs/search-ablation/*.png docs/search/
	mkdir -p docs/search/runs
	for f in runs/search-ablation/*.trec; do gzip -9nc $$f > docs/search/runs/$$(basename $$f).gz; done

# Side-by-side loss + mining benchmark against pytorch-metric-learning and sentence-transformers;
# rewrites benchmarks/loss_cpu.md.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[faces,search,dev,bench]'
	$(BIN)/python benchmarks/bench_loss.py --out benchmarks/loss_cpu.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Hard-negative mining against sentence-transformers' miner and a bare exact search;
# rewrites benchmarks/mining_cpu.md.
bench-mining: $(STAMP)
	$(BIN)/python benchmarks/bench_mining.py --out benchmarks/mining_cpu.md

# Load test of the service (search over the wiki index, identification over the ORL gallery),
# 16 connections, at most 60 s a scenario, 127.0.0.1 only; rewrites benchmarks/serve_cpu.md.
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py --out benchmarks/serve_cpu.md

# The first `make serve` of a fresh clone of HEAD, installation included, every cache empty,
# until /health answers 200; rewrites benchmarks/first_serve.md.
bench-first-serve: $(STAMP)
	$(BIN)/python benchmarks/first_serve.py --out benchmarks/first_serve.md

# Inference side by side: the text encoder through sentence-transformers, ONNX Runtime fp32
# and int8 (docs/s, nDCG@10 on the wiki dev and test splits), dlib's descriptor through dlib's
# C++, the PyTorch port, ONNX Runtime fp32 and int8 (faces/s, parity, EER / VAL on ORL), peak
# memory; rewrites benchmarks/inference_cpu.md (about 10 minutes on 2 cores).
bench-inference: $(STAMP)
	$(BIN)/python benchmarks/bench_inference.py --out benchmarks/inference_cpu.md
