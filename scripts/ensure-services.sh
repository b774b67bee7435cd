#!/usr/bin/env bash
# Make sure the real services the integration tests use are up: start them if they are down.
set -u
redis_up() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 6379)); s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! redis_up; then
  echo "Redis is down on 127.0.0.1:6379: starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
fi
if command -v pg_isready >/dev/null && ! pg_up; then
  echo "PostgreSQL is down on 127.0.0.1:5432: starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
fi
# promtool and prometheus validate and run the shipped alerting rules (tests/integration/test_alerts.py)
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "promtool/prometheus missing: installing Debian's prometheus package"
  if command -v apt-get >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null || { echo "error: promtool is missing and could not be installed (apt-get install prometheus)"; exit 1; }
fi
redis_up || { echo "error: Redis is not reachable on 127.0.0.1:6379 and could not be started"; exit 1; }
echo "services: redis ok$(pg_up && echo ', postgres ok')"
