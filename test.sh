#!/usr/bin/env bash
# The one test command: fresh virtualenv, package with test extras, redis-server, lint,
# pytest (in two processes, pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing: installing it with apt-get" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# tests/test_netns_iptables.py: nat rules in throw-away network namespaces (as root).
if ! command -v iptables >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "iptables or ip missing: installing iptables and iproute2 with apt-get" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iptables iproute2 >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check -q .
# Two test processes: most tests wait on real processes and sockets, so two halve the
# wall time on a 2-core machine (every test starts its own redis-server and ports).
if [ "$#" -gt 0 ]; then
  exec .venv/bin/pytest -q -n 2 "$@"
fi
.venv/bin/pytest -q -n 2
# The end-to-end tests a second time with h11 reading every request and response
# (--parser h11, the reference engine; the pass above ran the httptools fast path).
echo "end-to-end tests again with --parser h11" >&2
HQM_PARSER=h11 exec .venv/bin/pytest -q -n 2 \
  tests/test_e2e_proxy.py tests/test_e2e_properties.py tests/test_ingress_answers.py \
  tests/test_ingress_limits.py tests/test_passthrough.py tests/test_openhqm_api.py \
  tests/test_idempotency.py tests/test_cancel_delay.py tests/test_access_log.py \
  tests/test_worker_redis.py tests/test_redis_worker_extra.py tests/test_poison.py \
  tests/test_timeouts.py tests/test_route_bypass.py
