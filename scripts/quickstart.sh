#!/usr/bin/env bash
# One-command quick start on a fresh machine: Docker, runner image, the package,
# a ci-server on 127.0.0.1:8000 (reused if one already answers), an API key for
# `ci` (the one it has if the server takes it, else a new key of a local admin,
# saved in ~/.config/ci/config.toml), then run the demo project's tests through
# it. Exits with `ci submit`'s status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=127.0.0.1
PORT=8000
URL="http://$HOST:$PORT"
DEADLINE=30 # seconds for the server to answer /health
LOCAL_NAME=local
LOCAL_EMAIL=local@localhost
export CI_RUNNER_IMAGE=ci-runner:bookworm
# The server's database, where `ci-admin` makes the local admin and its key.
export CI_DB_PATH="${CI_DB_PATH:-$PWD/ci_jobs.db}"

bash scripts/ensure-docker.sh
bash scripts/build-runner-image.sh "$CI_RUNNER_IMAGE"
python -m pip install -q -e '.[server]' # the server's dependencies too, not only ci's

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

# Does the server take the key `ci` would send ($CI_API_KEY, else the config file)?
key_works() {
  python - "$URL" <<'PY' >/dev/null 2>&1
import sys
from ci_client.client import CIClient, ClientError
from ci_client.config import resolve
connection = resolve(sys.argv[1], None)
if connection.api_key is None:
    sys.exit(1)
try:
    CIClient(connection.server, api_key=connection.api_key).list_jobs(limit=1)
except ClientError:
    sys.exit(1)
PY
}

local_user_exists() {
  ci-admin user list --json | python -c '
import json, sys
sys.exit(not any(user["email"] == sys.argv[1] for user in json.load(sys.stdin)))
' "$LOCAL_EMAIL"
}

if ! key_works; then
  local_user_exists || ci-admin user create --name "$LOCAL_NAME" --email "$LOCAL_EMAIL" --admin >&2
  errors=$(mktemp)
  if ! key=$(ci-admin key create --email "$LOCAL_EMAIL" --name "quickstart" 2>"$errors"); then
    cat "$errors" >&2
    exit 1
  fi
  rm -f "$errors"
  config=$(python -c 'import sys
from ci_client.config import write_api_key
print(write_api_key(sys.argv[1]))' "$key")
  echo "quickstart: saved a new API key of $LOCAL_EMAIL (an admin) in $config (mode 0600)" >&2
  if [[ -n "${CI_API_KEY:-}" ]]; then
    export CI_API_KEY="$key" # the old one, which the server refused, would win
  fi
  if ! key_works; then
    echo "quickstart: ERROR: the server on $URL does not take a key made in $CI_DB_PATH;" \
      "is it another server? Stop it, or set CI_DB_PATH to its database." >&2
    exit 1
  fi
fi

echo "quickstart: the dashboard is at $URL/: sign in with your API key (ci's, in" \
  "~/.config/ci/config.toml or \$CI_API_KEY)" >&2
cd examples/demo
exec ci submit test
