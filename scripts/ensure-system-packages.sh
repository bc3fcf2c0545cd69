#!/usr/bin/env bash
# Debian packages the tests use: chromium (browser tests), postgresql-client (pg_dump) and
# prometheus (promtool parses the Grafana dashboard's queries). Installed only if missing.
set -eu
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "system packages present"
