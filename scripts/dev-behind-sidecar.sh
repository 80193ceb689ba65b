#!/usr/bin/env bash
# `roster dev` with a sidecar in front: the sidecar answers on HTTP_ADDR as an app's local agent
# would (agent API from its own state, everything else forwarded to the dev server). Used to run
# Consul clients' test suites through a sidecar. Stops both on SIGTERM/SIGINT.
#   scripts/dev-behind-sidecar.sh HTTP_ADDR [roster dev flags...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${ROSTER_BIN_DIR:-$here/target/debug}"
http_addr="$1"; shift
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dev_http="127.0.0.1:$(free_port)"
dev_gossip="127.0.0.1:$(free_port)"
side_gossip="127.0.0.1:$(free_port)"
# With ACLs on, the sidecar's own calls use the initial management token.
token=()
args=("$@")
for i in "${!args[@]}"; do
    if [ "${args[$i]}" = "--acl-initial-management" ]; then token=(--token "${args[$((i + 1))]}"); fi
done
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'stop; exit 0' TERM INT
trap stop EXIT
"$bin/roster" dev --http-addr "$dev_http" --gossip-addr "$dev_gossip" "$@" &
pids+=($!)
"$bin/roster-sidecar" --node-name "sidecar-$(hostname)" --address 127.0.0.1 --http-addr "$http_addr" \
    --servers "$dev_http" --gossip-addr "$side_gossip" --gossip-seeds "$dev_gossip" "${token[@]}" &
pids+=($!)
wait -n
