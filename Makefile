# Fresh machine (Debian, Python 3.11): `make demo` or `make test`. Both create .venv/ when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.asrq-installed

.PHONY: install system-deps demo test test-fast lint clean

# Speech synthesizers of the synthetic corpus (asrq/data/engines.py) and sox.
SYSTEM_PKGS := espeak-ng sox libsox-fmt-all flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts

system-deps:
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v flite >/dev/null \
	  || ! command -v festival >/dev/null || [ ! -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] \
	  || [ ! -d /usr/share/festival/voices/english/kal_diphone ] || [ ! -d /usr/share/festival/voices/english/ked_diphone ]; then \
	  echo "installing Debian packages $(SYSTEM_PKGS)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(SYSTEM_PKGS) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(PY) recipes/mini/run.py --config recipes/mini/config.yaml

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

lint: install
	$(VENV)/bin/ruff check asrq recipes export tests

clean:
	rm -rf exp/mini data/mini
