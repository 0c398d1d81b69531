# The two commands the README promises: `make demo` and `make test`.
# Both create .venv and install everything (pinned by constraints.txt) on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= ../shared/data

.PHONY: install browser test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,annotate,dev]"
	touch $(STAMP)

# Headless Chromium renders the pipeline report in a test (Debian's package; needs root and apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed (needs root + apt): the report screenshot test will skip"; fi; }

test: install browser
	POSEPIPE_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m pytest -q

demo: install
	POSEPIPE_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m posepipe.flows.demo

bench: install
	$(BIN)/python bench/ingest_coco.py
	$(BIN)/python bench/ingest_labelme.py
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/mix.py
	$(BIN)/python bench/version.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/data_value.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/preannotate.py
	$(BIN)/python bench/qa.py
	$(BIN)/python bench/finetune.py

clean:
	rm -rf $(VENV) data/store out .prefect
