#!/usr/bin/env bash
# End-to-end against a real Kubernetes cluster (kind, k3d or any) that KUBECONFIG points at:
# install the chart, wait for the RegistryCluster, apply a ServiceRegistration and a KeyValue and
# find them in the registry, scale 3 -> 5 -> 3 (Raft membership followed through autopilot), roll
# the servers onto a new template with the data intact, lose every server pod at once, delete the
# resources, inject sidecars into annotated pods and a labelled namespace, turn TLS on and inject a
# sidecar that reaches the servers over HTTPS with the operator's client certificate, then an
# ACL-enabled cluster with Kubernetes login, uninstall.
#
# Without a cluster it prints why and exits 77, which scripts/test.sh reports as a skip (never as
# a pass). The images must already be in the cluster (built from registry/Dockerfile and
# operator/Dockerfile and sidecar/Dockerfile, e.g. `kind load docker-image`): ROSTER_IMAGE,
# ROSTER_OPERATOR_IMAGE and ROSTER_SIDECAR_IMAGE name them.
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
: "${ROSTER_SIDECAR_IMAGE:?set ROSTER_SIDECAR_IMAGE to a sidecar image the cluster can pull (sidecar/Dockerfile)}"

ns="roster-e2e-$$"
k() { "$kubectl" -n "$ns" "$@"; }
pf_pid=""
cleanup() {
    [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
    "$helm" uninstall roster -n "$ns" --wait >/dev/null 2>&1 || true
    "$kubectl" delete namespace "$ns" "$ns-apps" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    k get registryclusters,statefulsets,pods,events -o wide >&2 || true
    exit 1
}

# Waits up to $1 seconds for the command after it to succeed, running it anew each time. Give it the
# command itself, never a `test "$(...)"`: a substitution in the arguments is evaluated once, before
# the wait starts (scripts/test.sh rejects that form). On timeout it prints what the command said last.
eventually() {
    local deadline=$((SECONDS + $1)) out
    shift
    until out="$("$@" 2>&1)"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "gave up after waiting for: $* (last said: ${out:-nothing})" >&2
            return 1
        fi
        sleep 3
    done
}

# Waits up to $1 seconds until the command after $2 prints exactly $2 (run anew each time); on timeout
# it prints what it saw last.
eventually_eq() {
    local deadline=$((SECONDS + $1)) want=$2 seen
    shift 2
    while :; do
        seen="$("$@" 2>&1)" && [ "$seen" = "$want" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "gave up waiting for '$want' from: $* (last saw: '${seen}')" >&2
            return 1
        fi
        sleep 3
    done
}

jsonpath() { k get "$1" -o "jsonpath=$2"; }

echo "== helm install into $ns"
"$helm" install roster charts/roster -n "$ns" --create-namespace --wait --timeout 5m \
    --set operator.image.repository="${ROSTER_OPERATOR_IMAGE%:*}" \
    --set operator.image.tag="${ROSTER_OPERATOR_IMAGE##*:}" \
    --set operator.image.pullPolicy=IfNotPresent \
    --set sidecar.image.repository="${ROSTER_SIDECAR_IMAGE%:*}" \
    --set sidecar.image.tag="${ROSTER_SIDECAR_IMAGE##*:}" \
    --set cluster.image="$ROSTER_IMAGE"

echo "== the RegistryCluster becomes Available with 3 ready servers"
k wait --for=condition=Available registrycluster/roster --timeout=300s || fail "cluster not Available"
eventually_eq 120 "3/Running" jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}' \
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
eventually_eq 60 3 voters || fail "autopilot: $(curl -s "$api/v1/operator/autopilot/health")"

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
eventually_eq 300 5 voters || fail "5 voters expected"
eventually_eq 120 "5/Running" jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}' \
    || fail "not 5/Running after scale-up"

echo "== scale down to 3: servers leave Raft before their pods go"
k patch registrycluster roster --type merge -p '{"spec":{"replicas":3}}'
eventually_eq 300 3 jsonpath statefulset/roster '{.spec.replicas}' || fail "StatefulSet not shrunk"
eventually_eq 120 3 voters || fail "3 voters expected after scale-down"
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
eventually_eq 120 3 voters || fail "not healthy after the rolling update"
k get events --field-selector reason=ServerRestarted | grep -q ServerRestarted || fail "no ServerRestarted events"
kill "$pf_pid" 2>/dev/null || true
k port-forward svc/roster 18580:8500 >/dev/null 2>&1 &
pf_pid=$!
eventually 30 curl -sf "$api/v1/status/leader" || fail "no answer after the rolling update"
test "$(curl -sf "$api/v1/kv/config/flags/checkout?raw")" = on || fail "KV value lost in the rolling update"

echo "== every server pod deleted at once: new pod IPs, quorum and data come back"
k delete pods -l app.kubernetes.io/component=server --wait=false
kill "$pf_pid" 2>/dev/null || true
eventually_eq 300 "3/Running" jsonpath registrycluster/roster '{.status.readyServers}/{.status.phase}' \
    || fail "cluster not back after losing every server pod"
k port-forward svc/roster 18580:8500 >/dev/null 2>&1 &
pf_pid=$!
eventually 60 curl -sf "$api/v1/status/leader" || fail "no answer after every server pod was deleted"
eventually_eq 120 3 voters || fail "not 3 healthy voters after every server pod was deleted"
test "$(curl -sf "$api/v1/kv/config/flags/checkout?raw")" = on || fail "KV value lost with every server pod"
curl -sf "$api/v1/catalog/service/billing-db" | grep -q '"ServicePort":5432' || fail "billing-db lost with every pod"

echo "== deleting the resources cleans the registry (finalizers)"
k delete serviceregistration billing-db --wait --timeout=60s
k delete keyvalue feature-flags --wait --timeout=60s
test "$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/kv/config/flags/checkout")" = 404 || fail "KV key left behind"
test "$(curl -sf "$api/v1/catalog/service/billing-db")" = "[]" || fail "billing-db left in the catalog"

echo "== sidecar injection: an annotated pod, then every pod of a labelled namespace, gets a sidecar"
apps="$ns-apps"
"$kubectl" create namespace "$apps"
ka() { "$kubectl" -n "$apps" "$@"; }
catalog_has() { curl -sf "$api/v1/catalog/service/$1" | grep -q "\"ServicePort\":$2"; }
catalog_count() { curl -sf "$api/v1/catalog/service/$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
ka apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: shop
  annotations: {roster.dev/inject: "true", roster.dev/service-name: shop, roster.dev/service-tags: "v1"}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.9
      ports: [{containerPort: 8080}]
EOF
injected() { ka get pod "$1" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}' | grep -qw roster-sidecar; }
injected shop || fail "the annotated pod has no sidecar: $(ka get pod shop -o yaml | head -60)"
ka wait --for=condition=Ready pod/shop --timeout=120s || fail "the injected pod never became Ready: $(ka logs shop -c roster-sidecar --tail=20)"
eventually 60 catalog_has shop 8080 || fail "the injected sidecar registered no shop service"
"$kubectl" label namespace "$apps" roster.dev/inject=enabled
ka apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: cart, labels: {app: cart}}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.9
      ports: [{containerPort: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: batch, annotations: {roster.dev/inject: "false"}}
spec:
  containers: [{name: app, image: registry.k8s.io/pause:3.9}]
EOF
injected cart || fail "a pod of the labelled namespace has no sidecar"
injected batch && fail "a pod that refused the sidecar got one"
eventually 60 catalog_has cart 7000 || fail "the cart pod's sidecar registered no cart service"
ka apply -f - <<'EOF' 2>/tmp/roster-e2e-refused && fail "a pod with an unreadable port annotation was admitted"
apiVersion: v1
kind: Pod
metadata: {name: bad, annotations: {roster.dev/inject: "true", roster.dev/service-port: grpc}}
spec:
  containers: [{name: app, image: registry.k8s.io/pause:3.9}]
EOF
grep -q "roster.dev/service-port" /tmp/roster-e2e-refused || fail "the refusal does not name the annotation: $(cat /tmp/roster-e2e-refused)"
echo "== catalog sync: an annotated Kubernetes Service appears with its ready endpoints"
k patch registrycluster roster --type merge -p '{"spec":{"catalogSync":{"toRegistry":true}}}'
ka apply -f - <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: cart-svc, annotations: {roster.dev/sync: "true", roster.dev/service-name: cart-k8s}}
spec:
  selector: {app: cart}
  ports: [{port: 80, targetPort: 7000}]
EOF
cart_ip="$(ka get pod cart -o jsonpath='{.status.podIP}')"
synced() { curl -sf "$api/v1/health/service/cart-k8s?passing" | grep -q "\"Address\":\"$cart_ip\",.*\"Port\":7000"; }
eventually 60 synced || fail "cart-svc not in the catalog with $cart_ip:7000: $(curl -s "$api/v1/catalog/service/cart-k8s")"
ka delete service cart-svc --wait --timeout=60s
eventually_eq 60 0 catalog_count cart-k8s || fail "cart-k8s stayed after its Service was deleted"
ka delete pod shop cart batch --wait --timeout=60s
eventually_eq 60 0 catalog_count shop || fail "the shop service stayed after its pod was deleted"

echo "== TLS turned on in two steps; an injected sidecar then reaches the servers over HTTPS only"
# Restarts the port-forward (its pod may have been replaced) and waits for an answer.
reforward() {
    kill "$pf_pid" 2>/dev/null || true
    wait "$pf_pid" 2>/dev/null || true
    k port-forward svc/roster 18580:8500 >/dev/null 2>&1 &
    pf_pid=$!
    eventually 60 curl -sf "$api/v1/status/leader" || fail "no answer after $1"
}
revision_changed() { test "$(jsonpath statefulset/roster '{.status.updateRevision}')" != "$1"; }
before="$(jsonpath statefulset/roster '{.status.updateRevision}')"
"$helm" upgrade roster charts/roster -n "$ns" --reuse-values --wait --timeout 5m \
    --set cluster.tls.enabled=true,cluster.tls.verifyIncoming=false
k wait --for=condition=TLSReady registrycluster/roster --timeout=120s || fail "TLSReady never became True"
eventually 120 revision_changed "$before" || fail "TLS did not change the server template"
eventually 600 updated || fail "servers not all on the TLS template"
reforward "TLS was turned on"
eventually_eq 120 3 voters || fail "not 3 healthy voters with TLS on"
before="$(jsonpath statefulset/roster '{.status.updateRevision}')"
"$helm" upgrade roster charts/roster -n "$ns" --reuse-values --wait --timeout 5m --set cluster.tls.verifyIncoming=true
eventually 120 revision_changed "$before" || fail "verifyIncoming did not change the server template"
eventually 600 updated || fail "servers not all on the verify-incoming template"
reforward "verifyIncoming was turned on"
eventually_eq 120 3 voters || fail "not 3 healthy voters with verifyIncoming"
k get secret roster-client-tls >/dev/null || fail "no client certificate Secret for sidecars"
ka apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: vault, labels: {app: vault}}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.9
      ports: [{containerPort: 8200}]
EOF
injected vault || fail "the pod has no sidecar"
vault_pod="$(ka get pod vault -o yaml)"
grep -qF 'https://roster.' <<<"$vault_pod" || fail "the sidecar was not given the servers' HTTPS address"
ka get secret roster-client-tls >/dev/null || fail "the client certificate Secret was not copied into $apps"
ka wait --for=condition=Ready pod/vault --timeout=120s \
    || fail "the TLS sidecar never became Ready: $(ka logs vault -c roster-sidecar --tail=20)"
eventually 60 catalog_has vault 8200 \
    || fail "the TLS sidecar registered no vault service: $(ka logs vault -c roster-sidecar --tail=20)"
ka delete pod vault --wait --timeout=60s
"$kubectl" delete namespace "$apps" --wait=false

echo "== an ACL-enabled cluster: bootstrapped by the operator, an ACLPolicy's token Secret used by a client"
k apply -f - <<'EOF'
apiVersion: roster.dev/v1alpha1
kind: RegistryCluster
metadata: {name: roster-acl}
spec: {replicas: 1, acl: {enabled: true, defaultPolicy: deny}}
---
apiVersion: roster.dev/v1alpha1
kind: ACLPolicy
metadata: {name: app-config}
spec:
  cluster: roster-acl
  rules: 'key_prefix "app/" { policy = "write" }'
  token: {secretName: app-config-token}
EOF
k wait --for=condition=Available registrycluster/roster-acl --timeout=300s || fail "ACL cluster not Available"
eventually 60 k get secret roster-acl-acl-bootstrap-token || fail "no bootstrap token Secret"
k wait --for=condition=Ready aclpolicy/app-config --timeout=120s || fail "ACLPolicy not Ready"
app_token="$(k get secret app-config-token -o jsonpath='{.data.token}' | base64 -d)"
[ -n "$app_token" ] || fail "the ACLPolicy's Secret holds no token"
kill "$pf_pid" 2>/dev/null || true
k port-forward svc/roster-acl 18580:8500 >/dev/null 2>&1 &
pf_pid=$!
eventually 60 curl -sf "$api/v1/status/leader" || fail "no answer from the ACL cluster"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
test "$(code -X PUT -d x "$api/v1/kv/app/greeting")" = 403 || fail "anonymous write allowed under default deny"
test "$(code -X PUT -d x -H "X-Consul-Token: $app_token" "$api/v1/kv/app/greeting")" = 200 \
    || fail "the ACLPolicy's token may not write app/"
test "$(code -X PUT -d x -H "X-Consul-Token: $app_token" "$api/v1/kv/other")" = 403 \
    || fail "the ACLPolicy's token may write outside app/"
k delete aclpolicy app-config --wait --timeout=60s
eventually_eq 60 403 code -X PUT -d x -H "X-Consul-Token: $app_token" "$api/v1/kv/app/greeting" \
    || fail "the token still works after its ACLPolicy was deleted"

echo "== Kubernetes login: a pod's sidecar logs in with its ServiceAccount token and registers its service"
"$helm" upgrade roster charts/roster -n "$ns" --reuse-values --wait --timeout 5m --set operator.tokenReviewer=true
k patch registrycluster roster-acl --type merge \
    -p "{\"spec\":{\"acl\":{\"kubernetesAuth\":{\"namespaces\":[\"$ns\"],\"maxTokenTTL\":\"1h\"}}}}"
boot_token="$(k get secret roster-acl-acl-bootstrap-token -o jsonpath='{.data.token}' | base64 -d)"
admin_get() { curl -sf -H "X-Consul-Token: $boot_token" "$api$1"; }
eventually 120 admin_get /v1/acl/auth-method/kubernetes || fail "the operator set up no kubernetes auth method"
k apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  serviceAccountName: web
  terminationGracePeriodSeconds: 20
  containers:
    - name: roster-sidecar
      image: $ROSTER_SIDECAR_IMAGE
      env:
        - {name: ROSTER_SERVERS, value: "roster-acl.$ns.svc:8500"}
        - {name: ROSTER_GOSSIP_SEEDS, value: "roster-acl-server.$ns.svc:8301"}
        - {name: ROSTER_GOSSIP_ADDR, value: "0.0.0.0:8301"}
        - {name: ROSTER_AUTH_METHOD, value: kubernetes}
        - {name: ROSTER_SERVICES, value: '[{"Name": "web", "Port": 8080}]'}
        - {name: ROSTER_NODE_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
EOF
k wait --for=condition=Ready pod/web --timeout=120s || fail "the sidecar pod never became Ready"
web_registered() { admin_get /v1/catalog/service/web | grep -q '"ServicePort":8080'; }
eventually 60 web_registered || fail "web not registered: $(k logs web --tail=20)"
login_tokens() { admin_get "/v1/acl/tokens?authmethod=kubernetes" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
eventually_eq 30 1 login_tokens || fail "the sidecar holds no login token"
k delete pod web --wait --timeout=60s
eventually_eq 60 0 login_tokens || fail "the sidecar did not log out when its pod stopped"
k delete registrycluster roster-acl --wait --timeout=120s

echo "e2e: OK"
