# gpucr — the README's two commands: `make demo` and `make test` (as root, on Debian 12 or 13).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export GPUCR_TEST_ROOT ?= /var/lib/gpucr-test
PYTEST_ARGS ?=

.PHONY: all deps venv protos test unit demo package uninstall clean

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
	@$(VENV)/bin/python -c 'import grpc, google.protobuf, grpc_tools, pytest, hypothesis, prometheus_client, kubernetes, yaml' \
	  || { echo "gpucr: error: Python dependencies did not install (no network to PyPI?)" >&2; exit 1; }
	@touch $@

venv: $(VENV)/.installed

protos: venv deps
	@$(PY) tools/genproto.py

# two legs: every test on the host's cgroups, then (on a hybrid or v1 host) the tests that meet real cgroups, runc,
# CRIU and containerd again on a cgroup-v2-only view of it (tests/rig/cgroup_v2.sh); fails if either leg fails
V2_LEG_MARKS := integration or criu
test: protos
	@rc=0; echo "gpucr: leg 1 of 2: all tests on this host's cgroups ($$(stat -fc %T /sys/fs/cgroup) on /sys/fs/cgroup)"; \
	$(PY) -m pytest $(PYTEST_ARGS) || rc=1; \
	if [ "$$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then \
	  echo "gpucr: leg 2 of 2 not needed: this host is cgroup v2 only, so leg 1 was the v2 leg (no v1 leg here)"; \
	else \
	  echo "gpucr: leg 2 of 2: the tests marked '$(V2_LEG_MARKS)' on a cgroup-v2-only view (tests/rig/cgroup_v2.sh)"; \
	  bash tests/rig/cgroup_v2.sh $(PY) -m pytest -m '$(V2_LEG_MARKS)' $(PYTEST_ARGS) || rc=1; \
	fi; exit $$rc

# unit tests only (no containerd): quick feedback while editing
unit: venv
	@$(PY) tools/genproto.py --no-cri
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

demo: protos
	@$(PY) demo/demo.py

# dist/gpucr_<ver>_amd64.deb, dist/gpucr-<ver>.x86_64.rpm, dist/gpucr-criu_<criu ver>_amd64.deb (+ .rpm), with nfpm
package: protos
	@PY=$(PY) bash packaging/build.sh

uninstall:
	@bash install/deps.sh uninstall

clean:
	rm -rf $(VENV) build dist *.egg-info
	find nri_plugin -name _pb -type d -prune -exec rm -rf {} +
