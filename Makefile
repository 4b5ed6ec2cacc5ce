# clientflow: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
DBT_VENV := .venv-dbt
SITE = $(shell $(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DBT_SOURCES := $(shell find dbt/models dbt/macros dbt/tests -type f 2>/dev/null) dbt/dbt_project.yml

.PHONY: install demo test up down status lint extractor bench-extract bench-load clean

install: $(VENV)/.installed $(DBT_VENV)/.installed dbt/target/manifest.json

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --disable-pip-version-check -r requirements.txt
	echo "$(CURDIR)" > "$(SITE)/clientflow-project.pth"
	touch $@

# dbt lives in its own virtualenv (it would downgrade Airflow's protobuf); Cosmos calls it by path.
$(DBT_VENV)/.installed: requirements-dbt.txt
	$(PY) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/pip install --quiet --quiet --disable-pip-version-check -r requirements-dbt.txt
	touch $@

# Cosmos renders the DAG from this manifest (LoadMode.DBT_MANIFEST): parsing never runs dbt.
dbt/target/manifest.json: $(DBT_VENV)/.installed $(DBT_SOURCES)
	cd dbt && ../$(DBT_VENV)/bin/dbt parse --profiles-dir . --quiet
	touch $@

demo: install
	scripts/demo.sh

test: install
	scripts/stack.sh services
	$(VENV)/bin/python -m pytest

up: install
	scripts/stack.sh up

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

lint: install
	$(VENV)/bin/ruff check clientflow dags plugins tests bench client_extractor
	$(VENV)/bin/mypy clientflow

clean:
	rm -rf dist build dbt/target dbt/logs

# The client extractor as one self-contained binary (PyInstaller onefile): dist/client-extractor.
extractor: dist/client-extractor

dist/client-extractor: $(VENV)/.installed client_extractor/extractor.py client_extractor/__main__.py client_extractor/__init__.py client_extractor/client-extractor.spec
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/client-extractor client_extractor/client-extractor.spec

bench-extract: extractor
	scripts/stack.sh services
	$(VENV)/bin/python bench/bench_extract.py

bench-load: install
	scripts/stack.sh services
	$(VENV)/bin/python bench/bench_load.py
