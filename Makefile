# Fresh machine (Debian, Python 3.11): `make demo` or `make test`. Both create .venv/ when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.asrq-installed

.PHONY: install system-deps demo test test-fast lint clean

# espeak-ng, flite, festival (+ voices), sox: the synthetic corpus (asrq/data/engines.py).
# cmake, g++: the native runner (export/runner); g++-aarch64-linux-gnu + qemu-user: its
# linux-aarch64 build, run under qemu in the tests; openssh-server/-client:
# `asrq device bench --target ssh:...` (tested against a local sshd).
SYSTEM_TOOLS := espeak-ng sox flite festival cmake g++ aarch64-linux-gnu-g++ qemu-aarch64 /usr/sbin/sshd ssh
SYSTEM_DIRS := /usr/share/festival/voices/us/cmu_us_slt_arctic_hts \
  /usr/share/festival/voices/english/kal_diphone /usr/share/festival/voices/english/ked_diphone
SYSTEM_PACKAGES := espeak-ng sox libsox-fmt-all flite festival festvox-kallpc16k festvox-kdlpc16k \
  festvox-us-slt-hts cmake g++ g++-aarch64-linux-gnu qemu-user openssh-server openssh-client

system-deps:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	for d in $(SYSTEM_DIRS); do [ -d $$d ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages $(SYSTEM_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
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
