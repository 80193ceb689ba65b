//! What the controllers that talk to a registry share: finding its address, writing a status with
//! server-side apply, and conditions as Kubernetes API conventions shape them.

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use registry::client::{Client as RegistryClient, ClientError};

/// The registry a resource in `namespace` talks to: `addr` when given (out-of-cluster runs, tests),
/// else the client Service of `cluster` (default `roster`, the chart's default release name).
pub fn registry_for(namespace: &str, cluster: Option<&str>, addr: Option<&str>) -> Result<RegistryClient, ClientError> {
    let addr = match addr {
        Some(a) => a.to_string(),
        None => {
            format!("{}.{namespace}.svc:{}", cluster.unwrap_or("roster"), crate::registry_cluster::build::HTTP_PORT)
        }
    };
    RegistryClient::new(vec![addr])
}

/// One condition, as JSON (the controllers build their statuses as JSON documents).
pub fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>) -> serde_json::Value {
    serde_json::json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
    })
}

/// Writes `status` into the resource's status subresource (server-side apply, our field manager).
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(crate::MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}
