//! `ServiceRegistration`: validate and build the catalog registration (pure), then the controller
//! that writes it to the registry and deregisters it when the resource goes (finalizer).

pub mod controller;

use registry::api::{
    CheckRegistration, DeregisterRequest, HealthCheck, HealthStatus, RegisterRequest,
    ServiceRegistration as CatalogService,
};

use crate::crd::ServiceRegistration;

/// Finalizer that holds a deleted resource until its service is out of the registry.
pub const FINALIZER: &str = "roster.dev/deregister";

/// Where a registration lives in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node: String,
    pub service_id: String,
}

pub fn placement(sr: &ServiceRegistration) -> Placement {
    let ns = sr.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    Placement {
        node: sr.spec.node.clone().unwrap_or_else(|| format!("external-{ns}")),
        service_id: sr.spec.id.clone().unwrap_or_else(|| sr.spec.name.clone()),
    }
}

/// Checks what the schema cannot, and builds the catalog registration.
pub fn build(sr: &ServiceRegistration) -> Result<RegisterRequest, Vec<String>> {
    let spec = &sr.spec;
    let mut errors = Vec::new();
    if spec.name.trim().is_empty() {
        errors.push("spec.name: required".to_string());
    }
    if !(1..=65535).contains(&spec.port) {
        errors.push(format!("spec.port: must be between 1 and 65535, not {}", spec.port));
    }
    if spec.address.trim().is_empty() {
        errors.push("spec.address: required".to_string());
    }
    let mut checks = Vec::new();
    for (i, c) in spec.checks.iter().enumerate() {
        match HealthStatus::parse(&c.status) {
            Some(status) if status != HealthStatus::Maintenance => checks.push((c, status)),
            _ => errors.push(format!("spec.checks[{i}].status: {:?} is not passing, warning or critical", c.status)),
        }
    }
    let mut names: Vec<&str> = spec.checks.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        errors.push("spec.checks: names must be unique".to_string());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let p = placement(sr);
    let check_id = |name: &str| format!("{}:{name}", p.service_id);
    Ok(RegisterRequest {
        node: Some(p.node.clone()),
        address: Some(spec.address.clone()),
        node_meta: Some([("external-source".to_string(), "kubernetes".to_string())].into_iter().collect()),
        skip_node_update: false,
        service: Some(CatalogService {
            id: Some(p.service_id.clone()),
            service: spec.name.clone(),
            tags: Some(spec.tags.clone()),
            address: Some(spec.address.clone()),
            meta: Some(spec.meta.clone()),
            port: u16::try_from(spec.port).ok(),
            ..Default::default()
        }),
        checks: Some(
            checks
                .into_iter()
                .map(|(c, status)| CheckRegistration {
                    check_id: Some(check_id(&c.name)),
                    name: Some(c.name.clone()),
                    status: Some(status),
                    notes: c.notes.clone(),
                    service_id: Some(p.service_id.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    })
}

pub fn deregistration(sr: &ServiceRegistration) -> DeregisterRequest {
    let p = placement(sr);
    DeregisterRequest { node: Some(p.node), service_id: Some(p.service_id), ..Default::default() }
}

/// The worst status among a service's checks (passing when it has none), as Consul aggregates.
pub fn aggregate_health(checks: &[HealthCheck], service_id: &str) -> HealthStatus {
    checks
        .iter()
        .filter(|c| c.service_id == service_id || c.service_id.is_empty())
        .map(|c| c.status)
        .max_by_key(|s| s.severity())
        .unwrap_or(HealthStatus::Passing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sr(yaml: &str) -> ServiceRegistration {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    #[test]
    fn builds_a_registration_on_the_namespace_node() {
        let r = build(&sr(r#"
apiVersion: roster.dev/v1alpha1
kind: ServiceRegistration
metadata: {name: billing-db, namespace: shop}
spec:
  name: postgres
  address: db.example.org
  port: 5432
  tags: [primary]
  checks: [{name: reachable, status: warning, notes: checked by the DBA team}]
"#))
        .expect("valid");
        assert_eq!(r.node.as_deref(), Some("external-shop"));
        let svc = r.service.expect("service");
        assert_eq!((svc.id.as_deref(), svc.port), (Some("postgres"), Some(5432)));
        let c = &r.checks.expect("checks")[0];
        assert_eq!(c.check_id.as_deref(), Some("postgres:reachable"));
        assert_eq!(c.status, Some(HealthStatus::Warning));
    }

    #[test]
    fn bad_specs_name_every_problem() {
        let err = build(&sr(r#"
apiVersion: roster.dev/v1alpha1
kind: ServiceRegistration
metadata: {name: x, namespace: shop}
spec:
  name: web
  address: ""
  port: 70000
  checks: [{name: a, status: fine}, {name: a}]
"#))
        .expect_err("invalid");
        let all = err.join("\n");
        for want in ["spec.port", "spec.address", "spec.checks[0].status", "unique"] {
            assert!(all.contains(want), "{want} missing in {all}");
        }
    }

    #[test]
    fn health_is_the_worst_check_of_the_service() {
        let check = |sid: &str, s| HealthCheck { service_id: sid.into(), status: s, ..Default::default() };
        let checks = [
            check("postgres", HealthStatus::Passing),
            check("postgres", HealthStatus::Warning),
            check("other", HealthStatus::Critical),
        ];
        assert_eq!(aggregate_health(&checks, "postgres"), HealthStatus::Warning);
        assert_eq!(aggregate_health(&[], "postgres"), HealthStatus::Passing);
    }
}
