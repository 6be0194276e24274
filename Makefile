# Two commands on a fresh Linux machine with Python 3.11: `make run` (the main job on the embedded default data)
# and `make test`. Both create the environment first when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION ?= 0.13.8
VENV := .venv
STAMP := $(VENV)/.oskt-synced
export UV_PYTHON_DOWNLOADS := never
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup run test lint bench results results-fewshot results-long results-vit results-eval rehearse clean-env

$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(PYTHON) -m uv sync --locked --all-extras --compile-bytecode --python $(PYTHON)
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/python -m flows run --profile quick

# Two pytest-xdist workers: the unit tests spread over both (independent; most of their time is CLI subprocesses
# starting up), then the pipeline, flow and cluster tests a file per worker (--dist loadfile: a file's tests share
# their servers, Ray and workspace in order; every Ray is started with address "local", never joining another).
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) tests/unit
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests --ignore=tests/unit

# The comparison of docs/results.md: the quick grid with 3 seeds (only the new cells run after `make run`), the
# three ablations of the paper (OSKT rows only, the teacher reused), then the report with the ablation rows.
SEEDS ?= [0,1,2]
results: run
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc exp run -S 'students.seeds=$(SEEDS)'
	$(VENV)/bin/oskt run --ablation random-init --set chain.init=random
	$(VENV)/bin/oskt run --ablation cosine --set chain.metric=cosine
	$(VENV)/bin/oskt run --ablation one-chain --set 'chain.widths=[8]'
	$(VENV)/bin/oskt report

# The few-shot table of docs/results.md (the paper's third claim; SPEC.md §5: S1, the cross scenario, a random
# 10 / 30 / 50 % of the target's training identities, drawn per seed): the cells join the main run's folder and
# MLflow store (its teacher, chains and KD++ / OFA-KD source phases are reused by key), the grid's report goes to
# outputs/fewshot/report, and the main report is rebuilt for $(SEEDS) (`oskt run` wrote the few-shot one there).
FEWSHOT := --set 'students.few_shot=[0.1,0.3,0.5]' --set 'students.scenarios=[synth_a->synth_b]' \
    --set 'students.names=[S1]' --set 'students.seeds=$(SEEDS)'
results-fewshot: setup
	$(VENV)/bin/oskt run --orchestrator prefect $(FEWSHOT)
	$(VENV)/bin/oskt report $(FEWSHOT) --out-dir outputs/fewshot
	$(VENV)/bin/oskt report --set 'students.seeds=$(SEEDS)'

# The long-budget table of docs/results.md (quick_long: 24 fine-tune epochs instead of 4, everything else quick's)
# in its own folder and MLflow store; quick's teacher and chains are adopted from outputs/ (compute.reuse_from), so
# run `make run` first. LONG_STUDENTS=[S1] for the columns at chain width only (a third of the cells).
LONG_STUDENTS ?= [S1,S2,S3]
results-long: setup
	$(VENV)/bin/oskt run --params outputs/long/params.yaml --profile quick_long --orchestrator prefect \
	    --set compute.out_dir=outputs/long --set 'compute.reuse_from=[outputs]' \
	    --set tracking.uri=sqlite:///outputs/long/mlflow.db --set 'students.seeds=$(SEEDS)' \
	    --set 'students.names=$(LONG_STUDENTS)'

# The ViT comparison of docs/results.md (quick_vit: ViT teacher dim 192, chain 96, students 96 / 120, 3 seeds),
# in its own folder and MLflow store: about 35 min on 2 cores.
results-vit: setup
	$(VENV)/bin/oskt run --params outputs/vit/params.yaml --profile quick_vit --orchestrator prefect \
	    --set compute.out_dir=outputs/vit --set tracking.uri=sqlite:///outputs/vit/mlflow.db --set 'students.seeds=$(SEEDS)'

# The evaluation protocols of docs/results.md (issue #20): each method's S1, seed 0, of `make run` through
# `oskt eval` plain / --flip / --rerank / both; figures to bench/results/eval_protocols.json.
results-eval: setup
	$(VENV)/bin/python bench/eval_protocols.py

# The paper-scale rehearsal (issue #18): each paper profile's whole pipeline (every stage and grid cell, full model
# and input size, REHEARSE_ITERS iterations per phase) on stand-in data through DVC -> Prefect -> Ray -> MLflow,
# each in its own workspace under outputs/rehearsal/; figures to bench/results/rehearsal.json, docs/cost.md.
REHEARSE_PROFILES ?= paper paper_vit
REHEARSE_ITERS ?= 2
rehearse: setup
	@for p in $(REHEARSE_PROFILES); do \
	    start=$$(date +%s); \
	    $(VENV)/bin/python -m flows rehearse --profile $$p --iters $(REHEARSE_ITERS) \
	        --record bench/results/rehearsal.json --doc docs/cost.md || exit $$?; \
	    echo "make rehearse: $$p took $$(( $$(date +%s) - start )) s"; \
	done

lint: setup
	$(VENV)/bin/ruff check oskt flows tests bench
	$(VENV)/bin/ruff format --check oskt flows tests bench

clean-env:
	rm -rf $(VENV)
