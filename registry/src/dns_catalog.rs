//! The servers' side of the DNS interface: answers read from this server's own state (a stale
//! read, as Consul's DNS answers by default), filtered by what the agent's default token may read.

use std::sync::Arc;

use crate::acl::{Access, Resource};
use crate::api::{CatalogNode, ServiceEntry};
use crate::app::App;
use crate::dns::answer::{self, Want};

pub struct StateCatalog(pub Arc<App>);

#[async_trait::async_trait]
impl crate::dns::Catalog for StateCatalog {
    fn datacenter(&self) -> String {
        self.0.config.datacenter.clone()
    }

    /// Picks while the state is borrowed and copies only the instances answered.
    async fn service(&self, name: &str, want: &Want<'_>) -> Result<(Vec<ServiceEntry>, bool), String> {
        let app = &self.0;
        let token = app.agent.token("default");
        app.sm.read(|s| {
            let a = crate::http::acl::authorizer_in(app, s, &token).map_err(|e| format!("{e:?}"))?;
            let healthy = s
                .health_service_refs(name)
                .1
                .into_iter()
                .filter(|e| {
                    answer::healthy_ref(e, want)
                        && a.allows(Resource::Service, &e.service.service, Access::Read)
                        && a.allows(Resource::Node, &e.node.node, Access::Read)
                })
                .collect();
            let (picked, more) = answer::pick(healthy, want.limit);
            Ok((picked.iter().map(|e| e.to_owned_entry()).collect(), more))
        })
    }

    async fn node(&self, name: &str) -> Result<Option<CatalogNode>, String> {
        let app = &self.0;
        let token = app.agent.token("default");
        app.sm.read(|s| {
            let a = crate::http::acl::authorizer_in(app, s, &token).map_err(|e| format!("{e:?}"))?;
            Ok(s.catalog_node(name).1.filter(|_| a.allows(Resource::Node, name, Access::Read)))
        })
    }
}
