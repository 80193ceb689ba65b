//! The operator's real `ServerAdmin` reads the WAN pool's datacenters from a real server
//! (`roster dev`), as the `Federated` condition needs them.

use roster_operator::registry_cluster::controller::{RegistryAdmin, ServerAdmin, Target};

mod common;

const REGISTRY: &str = "127.0.0.1:19811";

#[tokio::test]
async fn datacenters_are_read_from_the_servers() {
    let _registry = common::start_registry_with(REGISTRY, "127.0.0.1:19812", &["--datacenter", "dc7"]).await;
    let admin = RegistryAdmin { addr: Some(REGISTRY.into()), token: None };
    let target = Target { namespace: "shop".into(), cluster: "registry".into(), token: None };
    let dcs = admin.datacenters(&target).await.expect("datacenters");
    assert_eq!(dcs, ["dc7"], "a server outside any WAN pool knows its own datacenter only");

    // Nobody there: an error, not an empty list (which would read as "not federated").
    let gone = RegistryAdmin { addr: Some("127.0.0.1:19813".into()), token: None };
    assert!(gone.datacenters(&target).await.is_err());
}
