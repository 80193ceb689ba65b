//! The servers' side of the DNS interface: answers read from this server's own state (a stale
//! read, as Consul's DNS answers by default), filtered by what the agent's default token may read
//! (in a secondary that holds no copy of the primary's tokens, as the primary says).

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

    /// Read under the same lock as the state: the service's index, and with ACLs the ACL index,
    /// the default token and whether it is still live (a token expires without any write). For a
    /// default token only the primary holds, the generation of the primary's answers while its own
    /// is fresh; once it is due, None (not versioned): the next answer asks, and so refreshes it.
    fn service_version(&self, name: &str) -> Option<crate::dns::Version> {
        let app = &self.0;
        let token = app.agent.token("default");
        let now = app.config.acl_enabled.then(crate::http::acl::now_rfc3339);
        app.sm.read(|s| {
            let remote = match crate::acl_remote::only_primary_holds(&app.config, s, &token) {
                true => app.remote_tokens.fresh_generation(&token)?,
                false => 0,
            };
            Some(crate::dns::Version {
                remote,
                catalog: s.service_index(name),
                acl: if now.is_some() { s.indexes().acl } else { 0 },
                token_live: match (&now, &token) {
                    (Some(now), Some(t)) => s.acl_token_by_secret(t, now).is_some(),
                    _ => false,
                },
                token,
            })
        })
    }

    /// Picks while the state is borrowed and copies only the instances answered; another
    /// datacenter's through the API's routing.
    async fn service(&self, name: &str, want: &Want<'_>) -> Result<(Vec<ServiceEntry>, bool), String> {
        let app = &self.0;
        let token = app.agent.token("default");
        if let Some(dc) = want.datacenter.filter(|_| crate::dns::plain(name)) {
            let path = format!("/v1/health/service/{name}");
            let resp = crate::http::get_as(app, path, vec![("dc".into(), dc.into())], token.as_deref()).await;
            let all = match resp.status().as_u16() {
                200 => serde_json::from_slice(resp.body()).map_err(|e| e.to_string())?,
                // Unknown or unreachable: nothing to answer with.
                400 | 503 => Vec::new(),
                s => return Err(format!("datacenter {dc} answered {s}")),
            };
            return Ok(answer::pick(answer::healthy(all, want), want.limit));
        }
        default_token_resolved(app, &token).await;
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

    /// Executes the query as `/v1/query/<name>/execute` does (failover included).
    async fn query(&self, name: &str, want: &Want<'_>) -> Result<Option<(Vec<ServiceEntry>, bool)>, String> {
        let app = &self.0;
        let token = app.agent.token("default");
        if !crate::dns::plain(name) {
            return Ok(None);
        }
        let path = format!("/v1/query/{name}/execute");
        // Stale, as Consul's DNS reads by default (`dns_config.allow_stale`): this server answers.
        let mut query = vec![("stale".to_string(), String::new())];
        query.extend(want.datacenter.map(|dc| ("dc".to_string(), dc.to_string())));
        let resp = crate::http::get_as(app, path, query, token.as_deref()).await;
        match resp.status().as_u16() {
            200 => {
                let r: crate::api::QueryExecuteResponse =
                    serde_json::from_slice(resp.body()).map_err(|e| e.to_string())?;
                Ok(Some(answer::pick(answer::healthy(r.nodes, want), want.limit)))
            }
            400 | 404 | 503 => Ok(None),
            s => Err(format!("executing query {name} answered {s}")),
        }
    }

    async fn node(&self, name: &str, dc: Option<&str>) -> Result<Option<CatalogNode>, String> {
        let app = &self.0;
        let token = app.agent.token("default");
        if let Some(dc) = dc.filter(|_| crate::dns::plain(name)) {
            let path = format!("/v1/catalog/node/{name}");
            let resp = crate::http::get_as(app, path, vec![("dc".into(), dc.into())], token.as_deref()).await;
            return match resp.status().as_u16() {
                200 => serde_json::from_slice(resp.body()).map_err(|e| e.to_string()),
                // Unknown or unreachable datacenter: no such name.
                400 | 404 | 503 => Ok(None),
                s => Err(format!("datacenter {dc} answered {s}")),
            };
        }
        default_token_resolved(app, &token).await;
        app.sm.read(|s| {
            let a = crate::http::acl::authorizer_in(app, s, &token).map_err(|e| format!("{e:?}"))?;
            Ok(s.catalog_node(name).1.filter(|_| a.allows(Resource::Node, name, Access::Read)))
        })
    }
}

/// Makes sure the default token is resolved when only the primary holds it. A token the primary
/// answered for before is refreshed behind, not waited for: a DNS client gives up after a few
/// seconds, and asking an unreachable primary takes longer.
async fn default_token_resolved(app: &Arc<App>, token: &Option<String>) {
    if !crate::acl_remote::in_secondary(&app.config) || app.remote_tokens.fresh_generation(token).is_some() {
        return;
    }
    if app.remote_tokens.current(token).is_some() {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { crate::acl_remote::resolve(&app, token).await });
    } else {
        crate::acl_remote::resolve(app, token.clone()).await;
    }
}
