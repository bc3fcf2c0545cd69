# The two commands a newcomer needs:
#   make run    — the whole system on one machine (SQLite, no external services) with a guided demo
#   make test   — every test (installs what it needs first)
# `make` alone lists every target (`make help`).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
NODE_STAMP := devtools/oidc-provider/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help run test test-fast setup lint fmt screenshots dashboards bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

$(NODE_STAMP): devtools/oidc-provider/package-lock.json
	npm ci --prefix devtools/oidc-provider --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed $(NODE_STAMP) ## install the venv (requirements-dev.txt) and the local OIDC provider (npm)

run: setup ## the whole system here (SQLite, no services) + a guided demo; prints the admin login
	$(VPY) devtools/stack.py up --embedded --demo

test: setup ## every test: lint, format, scanners, the Django suite, both SDKs, live SDK flows (CI)
	bash scripts/test.sh

# --reuse-db: the test databases outlive the run (tests/conftest.py empties them at the start), so no
# CREATE/DROP DATABASE per worker; PYTHONDONTWRITEBYTECODE= lets pytest cache its rewritten test modules;
# -n 3 on 2 cores: part of the suite waits (HTTP round trips, PostgreSQL), a third worker fills those waits.
test-fast: setup ## the Django suite without real-process and browser tests (PostgreSQL + Redis)
	bash scripts/ensure-services.sh
	PYTHONDONTWRITEBYTECODE= $(VPY) -m pytest -q -p no:randomly -n 3 --reuse-db -m "not live and not browser"

lint: setup ## ruff check and ruff format --check
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

fmt: setup ## ruff format the tree, and fix what ruff check can fix
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

screenshots: setup ## regenerate docs/img/*.png from a seeded local stack (headless Chromium)
	$(VPY) devtools/screenshots.py

dashboards: setup ## redraw the dashboard panels and a trace into docs/img (needs Debian's prometheus, PostgreSQL, Redis)
	$(VPY) devtools/render_dashboards.py

bench: setup ## token-path benchmark (docs/benchmarks.md)
	$(VPY) bench/token_bench.py

clean: ## remove var/ and artifacts/
	rm -rf var artifacts
