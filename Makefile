# The two commands a new user needs: `make demo` and `make test`. Both create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,bo,sql
# The dashboard's browser test drives headless Chromium: Debian's package, installed by the
# rule below only when there is no `chromium` on PATH (then the target is a missing file).
CHROMIUM := $(shell command -v chromium || echo /usr/bin/chromium)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# SQLStorage's tests start their own PostgreSQL server (initdb, pg_ctl: Debian's package),
# installed by the rule below when no /usr/lib/postgresql/*/bin/initdb is there.
INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) /usr/lib/postgresql/bin/initdb)

.PHONY: demo test test-reliability lint unit integration benchmark benchmark-api benchmark-flows benchmark-bo benchmark-bo-parallel benchmark-bo-outcomes benchmark-early-stopping benchmark-redis-capacity benchmark-replica-acks clean

$(BIN)/.installed-$(EXTRAS): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins torch to the CPU wheel: anything else pulls GBs of CUDA.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

$(INITDB):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql

demo: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python -m bo_queue.demo

lint: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/ruff check bo_queue workers scheduler tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --site-dir site

test: lint $(CHROMIUM) $(INITDB)
	$(BIN)/python -m pytest

# Every reliability scenario at full size (20,000 tasks, 50 studies, the 10-minute soak),
# then its figures into docs/reliability.md; one file at a time, so that the
# soak and the load test have the machine to themselves. `make test` runs the quick sizes.
test-reliability: $(BIN)/.installed-$(EXTRAS)
	RELIABILITY=full RELIABILITY_README=1 \
		$(BIN)/python -m pytest tests/reliability -m '' -n 0 --timeout 1800

unit: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest tests/unit

integration: $(BIN)/.installed-$(EXTRAS) $(CHROMIUM) $(INITDB)
	$(BIN)/python -m pytest tests/integration

benchmark: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/throughput.py --markdown-out benchmarks/results/throughput.md

benchmark-api: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/api_throughput.py --markdown-out benchmarks/results/api_throughput.md

benchmark-flows: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/dependencies.py --markdown-out benchmarks/results/dependencies.md

benchmark-bo:
	$(MAKE) EXTRAS=dev,bo,bench $(BIN)/.installed-dev,bo,bench
	$(BIN)/python benchmarks/bo_quality.py --seeds 0-9 --problems branin,hartmann6 \
		--markdown-out benchmarks/results/bo_quality.md

# Parallel studies: slot wait, wall clock with 2 s evaluations, suggest() latency, 20 studies.
benchmark-bo-parallel:
	$(MAKE) EXTRAS=dev,bo,bench $(BIN)/.installed-dev,bo,bench
	$(BIN)/python benchmarks/bo_parallel.py --markdown-out benchmarks/results/bo_parallel.md

# Several objectives (ZDT1 hypervolume) and outcome constraints (constrained Hartmann6).
benchmark-bo-outcomes:
	$(MAKE) EXTRAS=dev,bo,bench $(BIN)/.installed-dev,bo,bench
	$(BIN)/python benchmarks/bo_quality.py --seeds 0-2 --problems zdt1 \
		--json-out benchmarks/results/bo_quality_moo.json \
		--markdown-out benchmarks/results/bo_quality_moo.md
	$(BIN)/python benchmarks/bo_quality.py --seeds 0-9 --problems chartmann6 \
		--json-out benchmarks/results/bo_quality_constrained.json \
		--markdown-out benchmarks/results/bo_quality_constrained.md

# Early stopping on SGDClassifier/digits: bo_queue with and without it, Optuna's MedianPruner.
benchmark-early-stopping:
	$(MAKE) EXTRAS=dev,bo,bench $(BIN)/.installed-dev,bo,bench
	$(BIN)/python benchmarks/early_stopping.py --seeds 0-2 \
		--markdown-out benchmarks/results/early_stopping.md

# What one Redis master carries: tasks/s and Redis CPU per 1,000 tasks at 1, 2, 4 workers.
benchmark-redis-capacity: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/redis_capacity.py -v --markdown-out benchmarks/results/redis_capacity.md
# What BO_QUEUE_REPLICA_ACKS=1 costs a submit: a primary and a replica, 0 and 1 acks.
benchmark-replica-acks: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/replica_acks.py --markdown-out benchmarks/results/replica_acks.md

# The manual (docs/, mkdocs.yml) as a site in site/; `.venv/bin/mkdocs serve` to read it live.
.PHONY: docs
docs: $(BIN)/.installed-$(EXTRAS)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
