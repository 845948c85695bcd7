# gpucr — the README's two commands: `make demo` and `make test` (as root, on Debian 12 or 13).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export GPUCR_TEST_ROOT ?= /var/lib/gpucr-test
PYTEST_ARGS ?=

.PHONY: all deps venv protos test unit demo uninstall clean

all: protos

# real components: containerd 1.7.24 + 2.1.9, runc, CRIU 4.2.x (sid, private sysroot), iptables, busybox-static (idempotent)
deps:
	@bash install/deps.sh install

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "gpucr: error: Python >= 3.11 is required ($(PYTHON) is $$($(PYTHON) -V 2>&1))" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) \
	  || { echo "gpucr: error: '$(PYTHON) -m venv' failed: install the venv module (apt-get install python3-venv)" >&2; exit 1; }
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VENV)/bin/python -c 'import grpc, google.protobuf, grpc_tools, pytest, hypothesis' \
	  || { echo "gpucr: error: Python dependencies did not install (no network to PyPI?)" >&2; exit 1; }
	@touch $@

venv: $(VENV)/.installed

protos: venv deps
	@$(PY) tools/genproto.py

test: protos
	$(PY) -m pytest $(PYTEST_ARGS)

# unit tests only (no containerd): quick feedback while editing
unit: venv
	@$(PY) tools/genproto.py --no-cri
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

demo: protos
	@$(PY) demo/demo.py

uninstall:
	@bash install/deps.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info
	find nri_plugin -name _pb -type d -prune -exec rm -rf {} +
