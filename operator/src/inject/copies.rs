//! Copies of the operator's Secrets (the gossip key, the sidecars' client certificate) in the
//! namespaces of injected pods: a pod can mount only a Secret of its own namespace. `plan` is pure
//! (source and the namespace's Secret in, what to write out); `ensure` makes one copy current when a
//! pod is admitted; `keep_current` rewrites every copy whose source changed (a renewed
//! certificate), so running sidecars get the new files without a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::ResourceExt;

/// The label every copy carries: the name of its source in the operator's namespace.
pub const COPY_OF: &str = "roster.dev/copy-of";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const OPERATOR: &str = crate::MANAGER;

/// What to do about a namespace's Secret of the source's name.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// It matches the source.
    Keep,
    /// None there: create this copy.
    Create(Secret),
    /// The operator's copy is stale: replace its data (and labels) with this one's.
    Update(Secret),
    /// Somebody else's Secret of that name: left alone (its name).
    Foreign(String),
}

fn is_ours(secret: &Secret) -> bool {
    secret.labels().get(MANAGED_BY).map(String::as_str) == Some(OPERATOR)
}

/// The copy of `source` in `namespace`.
pub fn copy_of(source: &Secret, namespace: &str) -> Secret {
    let name = source.name_any();
    let labels = BTreeMap::from([(MANAGED_BY.to_string(), OPERATOR.to_string()), (COPY_OF.to_string(), name.clone())]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data: source.data.clone(),
        type_: source.type_.clone(),
        ..Default::default()
    }
}

pub fn plan(source: &Secret, existing: Option<&Secret>, namespace: &str) -> Plan {
    let copy = copy_of(source, namespace);
    match existing {
        None => Plan::Create(copy),
        Some(theirs) if !is_ours(theirs) => Plan::Foreign(copy.name_any()),
        Some(theirs) if theirs.data == copy.data && theirs.labels().get(COPY_OF) == copy.labels().get(COPY_OF) => {
            Plan::Keep
        }
        Some(_) => Plan::Update(copy),
    }
}

/// Carries out `plan` in `namespace`.
async fn write(client: &kube::Client, namespace: &str, plan: Plan) -> Result<(), String> {
    let theirs: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match plan {
        Plan::Keep => Ok(()),
        Plan::Foreign(name) => {
            tracing::warn!(%namespace, secret = %name, "a Secret the operator did not make has this name here: it is left \
                           alone, and sidecars of this namespace mount it as it is");
            Ok(())
        }
        Plan::Create(copy) => match theirs.create(&PostParams::default(), &copy).await {
            Ok(_) => Ok(()),
            // Another admission made it meanwhile: from the same source.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(format!("copying Secret {} into {namespace}: {e}", copy.name_any())),
        },
        Plan::Update(copy) => {
            let name = copy.name_any();
            theirs
                .patch(&name, &PatchParams::apply(crate::MANAGER).force(), &Patch::Apply(&copy))
                .await
                .map(|_| ())
                .map_err(|e| format!("updating the copy of Secret {name} in {namespace}: {e}"))
        }
    }
}

/// Makes `namespace` hold a current copy of the Secret `name` of `source_namespace` (nothing to do
/// in the source's own namespace).
pub async fn ensure(client: &kube::Client, source_namespace: &str, name: &str, namespace: &str) -> Result<(), String> {
    if namespace == source_namespace {
        return Ok(());
    }
    let ours: Api<Secret> = Api::namespaced(client.clone(), source_namespace);
    let source = ours.get(name).await.map_err(|e| format!("Secret {name}: {e}"))?;
    let theirs: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = theirs.get_opt(name).await.map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
    write(client, namespace, plan(&source, existing.as_ref(), namespace)).await
}

/// One pass over every copy of `name`: each stale one is rewritten from the source. A missing
/// source leaves the copies as they are.
pub async fn refresh(client: &kube::Client, source_namespace: &str, name: &str) -> Result<usize, String> {
    let ours: Api<Secret> = Api::namespaced(client.clone(), source_namespace);
    let Some(source) = ours.get_opt(name).await.map_err(|e| format!("Secret {name}: {e}"))? else {
        return Ok(0);
    };
    let all: Api<Secret> = Api::all(client.clone());
    let copies = all
        .list(&ListParams::default().labels(&format!("{COPY_OF}={name}")))
        .await
        .map_err(|e| format!("listing the copies of Secret {name}: {e}"))?;
    let (mut rewritten, mut failed) = (0, Vec::new());
    for copy in copies.items.iter().filter(|c| c.namespace().as_deref() != Some(source_namespace)) {
        let namespace = copy.namespace().unwrap_or_default();
        let plan = plan(&source, Some(copy), &namespace);
        if matches!(plan, Plan::Update(_)) {
            // One namespace refusing (a quota, a policy) must not keep the others stale.
            match write(client, &namespace, plan).await {
                Ok(()) => rewritten += 1,
                Err(e) => failed.push(e),
            }
        }
    }
    match failed.is_empty() {
        true => Ok(rewritten),
        false => {
            Err(format!("{} of the stale copies failed ({rewritten} updated): {}", failed.len(), failed.join("; ")))
        }
    }
}

/// Keeps the copies of `names` current, checking every `every`, until the task is dropped.
pub async fn keep_current(client: kube::Client, source_namespace: String, names: Vec<String>, every: Duration) {
    loop {
        for name in &names {
            match refresh(&client, &source_namespace, name).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(secret = %name, copies = n, "updated copies of a changed Secret"),
                Err(e) => tracing::warn!(error = %e, "cannot keep Secret copies current"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, namespace: &str, key: &str, labels: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("tls.crt".to_string(), ByteString(key.as_bytes().to_vec()))])),
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_copy_is_created_labelled_with_its_source() {
        let source = secret("registry-client-tls", "roster", "v1", &[]);
        let Plan::Create(copy) = plan(&source, None, "shop") else { panic!("create") };
        assert_eq!(copy.namespace().as_deref(), Some("shop"));
        assert_eq!(copy.labels().get(COPY_OF).map(String::as_str), Some("registry-client-tls"));
        assert_eq!((copy.data, copy.type_), (source.data, source.type_));
    }

    #[test]
    fn a_renewed_source_updates_the_operators_copy_but_never_a_foreign_secret() {
        let ours = [(MANAGED_BY, OPERATOR), (COPY_OF, "registry-client-tls")];
        let source = secret("registry-client-tls", "roster", "v1", &[]);
        let current = secret("registry-client-tls", "shop", "v1", &ours);
        assert_eq!(plan(&source, Some(&current), "shop"), Plan::Keep);
        let renewed = secret("registry-client-tls", "roster", "v2", &[]);
        let Plan::Update(copy) = plan(&renewed, Some(&current), "shop") else { panic!("update") };
        assert_eq!(copy.data, renewed.data);
        // A copy made before copies were labelled with their source gets the label.
        let unlabelled = secret("registry-client-tls", "shop", "v1", &[(MANAGED_BY, OPERATOR)]);
        assert!(matches!(plan(&source, Some(&unlabelled), "shop"), Plan::Update(_)));
        let foreign = secret("registry-client-tls", "shop", "mine", &[]);
        assert_eq!(plan(&renewed, Some(&foreign), "shop"), Plan::Foreign("registry-client-tls".into()));
    }
}
