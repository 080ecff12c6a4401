#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine. Idempotent: returns at once
# when `docker info` works. On a fresh CI machine there is no systemd service and
# no engine, so we install Debian's docker.io (plus debootstrap, which the runner
# image build needs, to pay for `apt-get update` only once) and start dockerd by hand.
set -euo pipefail

LOG=/var/log/ci-dockerd.log
DEADLINE=60 # seconds to wait for the engine to answer

docker_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

docker_up && exit 0

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  pkgs=(docker.io)
  command -v debootstrap >/dev/null || pkgs+=(debootstrap)
  echo "ensure-docker: installing ${pkgs[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
  # The package's postinst may have started an engine already.
  docker_up && exit 0
fi

# Start dockerd unless one is already running (it may still be starting up); the
# pid-file check needs no procps, which minimal machines lack. setsid + nohup
# detach it from this script's session so it outlives the script.
pid=""
running=$(cat "/proc/$(cat /var/run/docker.pid 2>/dev/null)/comm" 2>/dev/null || true)
if [[ $running != dockerd ]]; then
  echo "ensure-docker: starting dockerd (log: $LOG)" >&2
  setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
  pid=$!
fi

for ((i = 0; i < DEADLINE * 2; i++)); do
  docker_up && { echo "ensure-docker: docker is up" >&2; exit 0; }
  # Fail fast if the dockerd we started died (it stays our zombie until we exit).
  if [[ -n $pid ]] && { ! kill -0 "$pid" 2>/dev/null || grep -qs '^State:.*Z' "/proc/$pid/status"; }; then
    echo "ensure-docker: ERROR: dockerd exited; tail of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done

echo "ensure-docker: ERROR: docker did not answer within ${DEADLINE}s; tail of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
