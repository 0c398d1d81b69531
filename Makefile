# The two commands the README promises: `make demo` and `make test`.
# Both create .venv and install everything (pinned by constraints.txt) on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= ../shared/data

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,annotate,dev]"
	touch $(STAMP)

test: install
	POSEPIPE_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m pytest -q

demo: install
	POSEPIPE_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m posepipe.flows.demo

bench: install
	$(BIN)/python bench/ingest_coco.py

clean:
	rm -rf $(VENV) data/store out
