//! The servers' side of the DNS interface: answers read from this server's own state (a stale
//! read, as Consul's DNS answers by default), filtered by what the agent's default token may read.

use std::sync::Arc;

use crate::acl::{Access, Resource};
use crate::api::{CatalogNode, ServiceEntry};
use crate::app::App;

pub struct StateCatalog(pub Arc<App>);

#[async_trait::async_trait]
impl crate::dns::Catalog for StateCatalog {
    fn datacenter(&self) -> String {
        self.0.config.datacenter.clone()
    }

    async fn service(&self, name: &str) -> Result<Vec<ServiceEntry>, String> {
        let app = &self.0;
        let token = app.agent.token("default");
        app.sm.read(|s| {
            let a = crate::http::acl::authorizer_in(app, s, &token).map_err(|e| format!("{e:?}"))?;
            Ok(s.health_service(name)
                .1
                .into_iter()
                .filter(|e| {
                    a.allows(Resource::Service, &e.service.service, Access::Read)
                        && a.allows(Resource::Node, &e.node.node, Access::Read)
                })
                .collect())
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
