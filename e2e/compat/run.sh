#!/usr/bin/env bash
# Runs the Consul-client compatibility suite against an already running Roster server.
# It does not start the server: the caller does, and says where it listens with
# ROSTER_HTTP_ADDR (default 127.0.0.1:8500) or ROSTER_HTTP_ADDRS (comma separated, a cluster).
# Extra arguments go to pytest, e.g. `e2e/compat/run.sh -k kv -x`. Exits with pytest's exit code.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# no cache provider: leave no .pytest_cache behind in the work tree
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@"
