# The README's commands. Each target installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed
PROMETHEUS_LISTEN ?= 127.0.0.1:9090
PROMETHEUS_DATA ?= .prometheus

.PHONY: run test lint demo bench schema-doc clean observe prometheus nginx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/runtap serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check proxy analytics tests scripts

test: lint prometheus
	$(BIN)/pytest

# Debian's prometheus: the end-to-end tests start one, `make observe` runs one. `apt-get update`
# only when the package lists do not know it yet.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  apt-cache show prometheus >/dev/null 2>&1 || $$SUDO apt-get update -qq; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

# Prometheus scraping runtap's admin listener (127.0.0.1:9464) with dashboards/prometheus.yml; point
# Grafana at dashboards/provisioning (see the files there) for the Overview and Runs dashboards.
observe: prometheus
	prometheus --config.file=dashboards/prometheus.yml --storage.tsdb.path=$(PROMETHEUS_DATA) \
	  --web.listen-address=$(PROMETHEUS_LISTEN)

demo: $(TEST_STAMP)
	$(BIN)/runtap demo

# Debian's nginx: `make bench` measures it beside runtap, as a child process with its own config
# (the package's service is not used). If it cannot be installed the bench runs without it.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  apt-cache show nginx >/dev/null 2>&1 || $$SUDO apt-get update -qq; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || \
	  echo "nginx could not be installed: the bench runs without it" >&2

bench: $(TEST_STAMP) nginx
	$(BIN)/python scripts/bench.py

schema-doc: $(RUN_STAMP)
	$(BIN)/python scripts/schema_doc.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
