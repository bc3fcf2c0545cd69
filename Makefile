# The two commands a newcomer needs:
#   make run    — the whole system on one machine (SQLite, no external services) with a guided demo
#   make test   — every test (installs what it needs first)
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
NODE_STAMP := devtools/oidc-provider/node_modules/.installed

.PHONY: run test setup lint fmt bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

$(NODE_STAMP): devtools/oidc-provider/package-lock.json
	npm ci --prefix devtools/oidc-provider --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed $(NODE_STAMP)

run: setup
	$(VPY) devtools/stack.py up --embedded --demo

test: setup
	bash scripts/test.sh

lint: setup
	$(VPY) -m ruff check .

bench: setup
	$(VPY) bench/token_bench.py

clean:
	rm -rf var artifacts
