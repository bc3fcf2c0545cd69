#!/bin/sh
# One image, every role. The container's command names the role:
#
#   gateway            public /v1 API           granian dromos.wsgi:application (gateway settings)
#   broker             private broker + admin   granian dromos.wsgi:application (broker settings)
#   worker             Celery worker            celery -A dromos worker (broker settings)
#   beat               Celery beat (run ONE)    celery -A dromos beat (broker settings)
#   migrate            one-shot: migrate the broker's tables, then the gateway's
#   manage ARGS...     manage.py ARGS... (settings from DJANGO_SETTINGS_MODULE, default broker)
#   check              manage.py check --deploy --fail-level ERROR for the current settings
#
# gateway and broker run under granian (docker/serve.py reads its settings from the
# environment); HTTP_SERVER=gunicorn runs gunicorn with docker/gunicorn.conf.py instead.
#
# `entrypoint.sh --dry-run ROLE ...` prints the command(s) it would run, one per line, each
# prefixed by its DJANGO_SETTINGS_MODULE, instead of running them (the tests compare them
# with what they start).
set -eu

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
ROLE=${1:-}
[ $# -gt 0 ] && shift

APP_DIR=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python}
GUNICORN_CONF="$APP_DIR/docker/gunicorn.conf.py"

usage() {
  echo "usage: entrypoint.sh [--dry-run] gateway|broker|worker|beat|migrate|check|manage [ARGS...]" >&2
  exit 64
}

# Run a command and go on (dry run: print it).
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "DJANGO_SETTINGS_MODULE=$DJANGO_SETTINGS_MODULE $*"; else "$@"; fi
}

# Replace this shell with the command, so it receives the container's signals.
run_exec() {
  if [ "$DRY_RUN" = 1 ]; then echo "DJANGO_SETTINGS_MODULE=$DJANGO_SETTINGS_MODULE $*"; exit 0; fi
  exec "$@"
}

# Each role keeps its own Prometheus multiprocess directory (a counter without labels makes
# its file when its module is imported, in a one-off command too).
metrics_dir() {
  export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/dromos-metrics-$1}"
  if [ "$DRY_RUN" = 0 ]; then mkdir -p "$PROMETHEUS_MULTIPROC_DIR"; fi
}

cd "$APP_DIR"
case "$ROLE" in
  gateway|broker)
    export DJANGO_SETTINGS_MODULE="dromos.settings.$ROLE"
    metrics_dir "$ROLE"
    case "${HTTP_SERVER:-granian}" in
      granian) run_exec "$PYTHON" "$APP_DIR/docker/serve.py" "$@" ;;
      gunicorn) run_exec "$PYTHON" -m gunicorn dromos.wsgi:application --config "$GUNICORN_CONF" "$@" ;;
      *) echo "HTTP_SERVER must be granian or gunicorn" >&2; exit 64 ;;
    esac
    ;;
  worker)
    export DJANGO_SETTINGS_MODULE=dromos.settings.broker
    metrics_dir worker
    run_exec "$PYTHON" -m celery -A dromos worker --loglevel "${LOG_LEVEL:-INFO}" \
      --concurrency "${CELERY_CONCURRENCY:-4}" --without-gossip --without-mingle "$@"
    ;;
  beat)
    export DJANGO_SETTINGS_MODULE=dromos.settings.broker
    metrics_dir beat
    run_exec "$PYTHON" -m celery -A dromos beat --loglevel "${LOG_LEVEL:-INFO}" \
      --schedule "${CELERY_BEAT_SCHEDULE:-${TMPDIR:-/tmp}/celerybeat-schedule}" "$@"
    ;;
  migrate)
    # Gateway and broker may share one database: each migrates its own tables.
    export DJANGO_SETTINGS_MODULE=dromos.settings.broker
    metrics_dir migrate
    run "$PYTHON" manage.py migrate --noinput "$@"
    export DJANGO_SETTINGS_MODULE=dromos.settings.gateway
    run_exec "$PYTHON" manage.py migrate --noinput "$@"
    ;;
  check)
    export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-dromos.settings.broker}"
    metrics_dir check
    run_exec "$PYTHON" manage.py check --deploy --fail-level ERROR "$@"
    ;;
  manage)
    export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-dromos.settings.broker}"
    metrics_dir manage
    run_exec "$PYTHON" manage.py "$@"
    ;;
  *)
    usage
    ;;
esac
