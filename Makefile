# clientflow: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
DBT_VENV := .venv-dbt
DBT_SOURCES := $(shell find dbt/models dbt/macros dbt/tests -type f 2>/dev/null) dbt/dbt_project.yml

.PHONY: install demo test test-stack test-scale failure-suite up up-celery down status lint lint-sql generate extractor bench-extract bench-load bench-parse bench-e2e bench-incremental clean

install: $(VENV)/.installed $(DBT_VENV)/.installed dbt/target/manifest.json

# Everything stays inside the clone: pip's cache, and the project itself as an editable install.
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

$(VENV)/.installed: requirements.txt pyproject.toml
	scripts/check-python.sh $(PY)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --quiet --no-deps --no-build-isolation -e .
	touch $@

# dbt lives in its own virtualenv (it would downgrade Airflow's protobuf); Cosmos calls it by path.
$(DBT_VENV)/.installed: requirements-dbt.txt
	$(PY) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/pip install --quiet --quiet -r requirements-dbt.txt
	touch $@

# Cosmos renders the DAG from this manifest (LoadMode.DBT_MANIFEST): parsing never runs dbt.
dbt/target/manifest.json: $(DBT_VENV)/.installed $(DBT_SOURCES)
	cd dbt && ../$(DBT_VENV)/bin/dbt parse --profiles-dir . --quiet
	touch $@

demo: install
	scripts/demo.sh

# Temporary files of the tests (and of Airflow, dbt and PyInstaller under them) stay in the clone.
# The suite runs in TEST_WORKERS processes (pytest-xdist; one test file stays in one process, in
# order), each a test session of its own: its own databases, bucket, ports and Redis key prefix.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : (n > 4 ? 4 : n) )))
test: install
	scripts/stack.sh services
	$(MAKE) --no-print-directory lint
	mkdir -p .cache/tmp
	TMPDIR=$(CURDIR)/.cache/tmp PYINSTALLER_CONFIG_DIR=$(CURDIR)/.cache/pyinstaller $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

# What users do on the running stack (the scheduler and triggerer, bucket events): starts the
# stack if needed and leaves it running (make down stops it).
test-stack: install extractor
	mkdir -p .cache/tmp
	TMPDIR=$(CURDIR)/.cache/tmp PYINSTALLER_CONFIG_DIR=$(CURDIR)/.cache/pyinstaller $(VENV)/bin/python -m pytest -m stack tests/stack -s

# The same DAGs on the CeleryExecutor, two workers, three clients at once, a worker killed mid-load
# (tests/stack/test_scale.py); stops the stack at the end.
test-scale: install extractor
	mkdir -p .cache/tmp
	TMPDIR=$(CURDIR)/.cache/tmp PYINSTALLER_CONFIG_DIR=$(CURDIR)/.cache/pyinstaller $(VENV)/bin/python -m pytest -m scale tests/stack/test_scale.py -s

# The release gate's failure simulations on the running local stack (tests/failure/): one line per
# scenario and a closing "N passed, M failed"; restarts the stack and leaves it running.
failure-suite: install extractor
	mkdir -p .cache/tmp
	TMPDIR=$(CURDIR)/.cache/tmp PYINSTALLER_CONFIG_DIR=$(CURDIR)/.cache/pyinstaller $(VENV)/bin/python -m pytest -m failure tests/failure -s

up: install
	scripts/stack.sh up

up-celery: install
	scripts/stack.sh up-celery

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

LINTED := clientflow client_extractor dags plugins tests bench

# The same checks as .pre-commit-config.yaml. lint-sql compiles the dbt project, which needs a
# PostgreSQL to connect to (any database: it only reads the catalog).
lint: install lint-sql
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/mypy clientflow client_extractor dags
	$(VENV)/bin/python -m clientflow.transform.generate --check

lint-sql: $(DBT_VENV)/.installed
	CLIENTFLOW_STAGING_DB=postgres CLIENTFLOW_STAGING_USER=postgres $(DBT_VENV)/bin/sqlfluff lint dbt/models dbt/macros dbt/tests --nocolor 2>&1 \
	  | grep -v 'because it is a macro' ; test $${PIPESTATUS[0]} -eq 0

# Rewrite the dbt files that follow from clientflow/entities.py (see clientflow/transform/generate.py).
generate: $(VENV)/.installed
	$(VENV)/bin/python -m clientflow.transform.generate

clean:
	rm -rf dist build dbt/target dbt/logs .cache/tmp

# The client extractor as one self-contained binary (PyInstaller onefile): dist/client-extractor.
extractor: dist/client-extractor

dist/client-extractor: $(VENV)/.installed $(shell find client_extractor -name '*.py') client_extractor/client-extractor.spec
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/client-extractor client_extractor/client-extractor.spec

bench-extract: extractor
	scripts/stack.sh services
	$(VENV)/bin/python bench/bench_extract.py

bench-load: install
	scripts/stack.sh services
	$(VENV)/bin/python bench/bench_load.py

bench-parse: install
	$(VENV)/bin/python bench/bench_parse.py

# The 1,000,000-patient batch through the real DAG on the local stack (it starts the stack).
bench-e2e: install extractor
	$(VENV)/bin/python bench/bench_e2e.py

# An incremental batch (1% of the rows changed) against a full refresh of the same source, on the
# local stack: extraction and batch-to-production times.
bench-incremental: install extractor
	$(VENV)/bin/python bench/bench_incremental.py
