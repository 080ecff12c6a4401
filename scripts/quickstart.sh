#!/usr/bin/env bash
# One-command quick start on a fresh machine: Docker, runner image, the package,
# a ci-server on 127.0.0.1:8000 (reused if one already answers), then run the
# demo project's tests through it. Exits with `ci submit`'s status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=127.0.0.1
PORT=8000
URL="http://$HOST:$PORT"
DEADLINE=30 # seconds for the server to answer /health
export CI_RUNNER_IMAGE=ci-runner:bookworm

bash scripts/ensure-docker.sh
bash scripts/build-runner-image.sh "$CI_RUNNER_IMAGE"
python -m pip install -q -e .

# Python, not curl: curl may be missing on a fresh machine.
healthy() {
  python - "$URL/health" <<'PY' >/dev/null 2>&1
import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)
PY
}

if ! healthy; then
  echo "quickstart: starting ci-server on $URL (log: ci-server.log)" >&2
  # setsid + nohup: the server keeps running after this script ends.
  setsid nohup ci-server --host "$HOST" --port "$PORT" >>ci-server.log 2>&1 </dev/null &
  pid=$!
  for ((i = 0; ; i++)); do
    healthy && break
    if ! kill -0 "$pid" 2>/dev/null || grep -qs '^State:.*Z' "/proc/$pid/status"; then
      echo "quickstart: ERROR: ci-server exited; tail of ci-server.log:" >&2
      tail -n 30 ci-server.log >&2
      exit 1
    fi
    if ((i >= DEADLINE * 2)); then
      echo "quickstart: ERROR: no answer on $URL/health within ${DEADLINE}s; tail of ci-server.log:" >&2
      tail -n 30 ci-server.log >&2
      exit 1
    fi
    sleep 0.5
  done
fi

cd examples/demo
exec ci submit test
