#!/usr/bin/env bash
# End-to-end against a real Kubernetes cluster (kind, k3d or any) that KUBECONFIG points at:
# install the chart, wait for the RegistryCluster, apply a ServiceRegistration and a KeyValue and
# find them in the registry, scale 3 -> 5 -> 3 (Raft membership followed through autopilot), roll
# the servers onto a new template with the data intact, delete the resources, uninstall.
#
# Without a cluster it prints why and exits 77, which scripts/test.sh reports as a skip (never as
# a pass). The images must already be in the cluster (built from registry/Dockerfile and
# operator/Dockerfile, e.g. `kind load docker-image`): ROSTER_IMAGE and ROSTER_OPERATOR_IMAGE name them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

kubectl="${KUBECTL:-.tools/bin/kubectl}"
helm="${HELM:-.tools/bin/helm4}"
if [ -z "${KUBECONFIG:-}" ]; then
    echo "SKIP: KUBECONFIG is not set, so there is no cluster to test against"
    exit 77
fi
if [ ! -x "$kubectl" ] || [ ! -x "$helm" ]; then
    echo "SKIP: kubectl or helm missing ($kubectl, $helm): run scripts/install-helm.sh"
    exit 77
fi
if ! "$kubectl" version --request-timeout=5s >/dev/null 2>&1; then
    echo "SKIP: KUBECONFIG=$KUBECONFIG does not reach an API server"
    exit 77
fi
: "${ROSTER_IMAGE:?set ROSTER_IMAGE to a server image the cluster can pull (registry/Dockerfile)}"
: "${ROSTER_OPERATOR_IMAGE:?set ROSTER_OPERATOR_IMAGE to an operator image the cluster can pull (operator/Dockerfile)}"

ns="roster-e2e-$$"
k() { "$kubectl" -n "$ns" "$@"; }
pf_pid=""
cleanup() {
    [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
    "$helm" uninstall roster -n "$ns" --wait >/dev/null 2>&1 || true
    "$kubectl" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    k get registryclusters,statefulsets,pods,events -o wide >&2 || true
    exit 1
}

# Waits up to $1 seconds for the command after it to succeed.
eventually() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 3
    done
}

jsonpath() { k get "$1" -o "jsonpath=$2"; }

echo "== helm install into $ns"
"$helm" install roster charts/roster -n "$ns" --create-namespace --wait --timeout 5m \
    --set operator.image.repository="${ROSTER_OPERATOR_IMAGE%:*}" \
    --set operator.image.tag="${ROSTER_OPERATOR_IMAGE##*:}" \
    --set operator.image.pullPolicy=IfNotPresent \
    --set cluster.image="$ROSTER_IMAGE"

echo "== the RegistryCluster becomes Available with 3 ready servers"
k wait --for=condition=Available registrycluster/roster --timeout=300s || fail "cluster not Available"
eventually 120 test "$(jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}')" = "3/Running" \
    || fail "readyServers/phase: $(jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}')"
k get registrycluster roster
leader="$(jsonpath registrycluster/roster '{.status.leader}')"
case "$leader" in roster-[0-2]) ;; *) fail "leader column shows '$leader'" ;; esac

echo "== the registry, through its client Service"
k port-forward svc/roster 18580:8500 >/dev/null 2>&1 &
pf_pid=$!
api="http://127.0.0.1:18580"
eventually 30 curl -sf "$api/v1/status/leader" || fail "no answer through the port-forward"
voters() { curl -s "$api/v1/operator/autopilot/health" | python3 -c \
    'import json,sys; h=json.load(sys.stdin); print(sum(1 for s in h["Servers"] if s["Voter"] and s["Healthy"]))'; }
eventually 60 test "$(voters)" = 3 || fail "autopilot: $(curl -s "$api/v1/operator/autopilot/health")"

echo "== ServiceRegistration and KeyValue reach the registry"
k apply -f - <<'EOF'
apiVersion: roster.dev/v1alpha1
kind: ServiceRegistration
metadata: {name: billing-db}
spec: {name: billing-db, address: 10.1.2.3, port: 5432, tags: [primary]}
---
apiVersion: roster.dev/v1alpha1
kind: KeyValue
metadata: {name: feature-flags}
spec: {key: config/flags/checkout, value: "on"}
EOF
k wait --for=condition=Registered serviceregistration/billing-db --timeout=60s || fail "not registered"
k wait --for=condition=Synced keyvalue/feature-flags --timeout=60s || fail "not synced"
k get serviceregistrations,keyvalues
curl -sf "$api/v1/catalog/service/billing-db" | grep -q '"ServicePort":5432' || fail "billing-db not in the catalog"
test "$(curl -sf "$api/v1/kv/config/flags/checkout?raw")" = on || fail "KV value missing"

echo "== scale up to 5: new servers join as voters"
k patch registrycluster roster --type merge -p '{"spec":{"replicas":5}}'
eventually 300 test "$(voters)" = 5 || fail "5 voters expected"
eventually 120 test "$(jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}')" = "5/Running" \
    || fail "not 5/Running after scale-up"

echo "== scale down to 3: servers leave Raft before their pods go"
k patch registrycluster roster --type merge -p '{"spec":{"replicas":3}}'
eventually 300 test "$(jsonpath statefulset/roster '{.spec.replicas}')" = 3 || fail "StatefulSet not shrunk"
eventually 120 test "$(voters)" = 3 || fail "3 voters expected after scale-down"
k get events --field-selector reason=ServerRemoved | grep -q ServerRemoved || fail "no ServerRemoved events"
test "$(curl -sf "$api/v1/kv/config/flags/checkout?raw")" = on || fail "KV value lost in the scale-down"

echo "== rolling update: one server at a time, the leader last, the data intact"
k patch registrycluster roster --type merge \
    -p '{"spec":{"resources":{"requests":{"cpu":"60m","memory":"64Mi"}}}}'
updated() {
    local rev
    rev="$(jsonpath statefulset/roster '{.status.updateRevision}')"
    test "$(k get pods -l app.kubernetes.io/component=server -o \
        "jsonpath={range .items[*]}{.metadata.labels.controller-revision-hash}{'\n'}{end}" | grep -c "$rev")" = 3
}
eventually 600 updated || fail "servers not all on the new template"
eventually 120 test "$(voters)" = 3 || fail "not healthy after the rolling update"
k get events --field-selector reason=ServerRestarted | grep -q ServerRestarted || fail "no ServerRestarted events"
kill "$pf_pid" 2>/dev/null || true
k port-forward svc/roster 18580:8500 >/dev/null 2>&1 &
pf_pid=$!
eventually 30 curl -sf "$api/v1/status/leader" || fail "no answer after the rolling update"
test "$(curl -sf "$api/v1/kv/config/flags/checkout?raw")" = on || fail "KV value lost in the rolling update"

echo "== deleting the resources cleans the registry (finalizers)"
k delete serviceregistration billing-db --wait --timeout=60s
k delete keyvalue feature-flags --wait --timeout=60s
test "$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/kv/config/flags/checkout")" = 404 || fail "KV key left behind"
test "$(curl -sf "$api/v1/catalog/service/billing-db")" = "[]" || fail "billing-db left in the catalog"

echo "e2e: OK"
