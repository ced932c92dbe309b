# The two commands: `make run` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install run run-prod test lint format bench bench-scheduling bench-instructions soak clean browser deploy-tools

# llama-cpp-python (the instance tests' real model server) builds from source. Built for the
# build machine's own CPU (GGML_NATIVE), it used AMX instructions that this VM kind
# advertises but faults on (a general protection fault in libggml-cpu at the first
# completion): build it for x86-64 with AVX2 instead, which every machine here runs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

# The demo asks for DEBUG (unless the environment already says); with no SECRET_KEY or
# FIELD_ENCRYPTION_KEY it makes its own once and keeps them in DATA_DIR.
run: export DEBUG ?= true
# Log lines as text for the person at the terminal; deployments keep the JSON default.
run: export LOG_FORMAT ?= text
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py serve_embedded

# The production topology on this machine, under supervisord (README, "Production on one
# machine"): DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY and FIELD_ENCRYPTION_KEY come
# from the environment or .env; DEBUG stays off.
run-prod: install
	$(PY) manage.py serve_prod

# The import-cycle check reads the project's own imports (function-local ones too); the
# migration check fails on a migration that would break a rolling upgrade (README, Upgrading).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tests/tools/import_cycles.py
	$(PY) tests/tools/lint_migrations.py

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The e2e tests drive Debian's Chromium (Playwright cannot download its own browser here).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The deployment files' tests (tests/panel/test_deploy_files.py) check docker/ with Debian's
# docker-compose (`config`; no Docker daemon needed) and HAProxy (`-c`, and on loopback).
deploy-tools:
	@(command -v docker-compose >/dev/null && test -x /usr/sbin/haproxy) || \
	  (apt-get update -qq && apt-get install -y -qq docker-compose haproxy >/dev/null)

# The suite runs in TEST_WORKERS processes (pytest-xdist); tests/workers.py gives each its
# own DATA_DIR and Redis database (`python -m` puts the checkout on sys.path for -p).
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
TEST_WORKERS ?= 2
test: lint browser deploy-tools
	$(PY) -m pytest -p tests.workers -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Benchmarks print numbers; they never fail on a threshold. wrk comes from Debian.
bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) tests/bench/run.py $(BENCH_ARGS)
	$(PY) tests/bench/scheduling.py $(BENCH_SCHEDULING_ARGS)
	$(PY) tests/bench/on_demand.py
	$(PY) tests/bench/usage_writer.py $(BENCH_USAGE_ARGS)
	$(PY) tests/bench/upstream_client.py

# Instance scheduling alone: three models on a node allowed two, without and with anti-thrash.
bench-scheduling: install
	$(PY) tests/bench/scheduling.py $(BENCH_SCHEDULING_ARGS)

# Instructions per request under callgrind (load-independent; tests/bench/README.md).
bench-instructions: install
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(PY) tests/bench/instructions.py $(BENCH_INSTRUCTIONS_ARGS)

# The production topology under traffic and faults (README "Soak test"): needs a
# PostgreSQL server and redis-server (from Debian when missing); exits 1 when an invariant fails.
SOAK_SECONDS ?= 300
soak: install
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PY) tests/soak/run.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
