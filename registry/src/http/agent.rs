//! `/v1/agent/*` on a server: the shared agent API (`crate::agent::api`) over this server as its
//! host. The server's agent writes its node's services and checks through Raft.

use std::sync::Arc;
use std::time::Duration;

use super::agent_admin;
use super::{ApiError, ApiResult, Req};
use crate::acl::Authorizer;
use crate::agent::sync::Catalog;
use crate::agent::Agent;
use crate::api::{AgentMember, CatalogNode, DeregisterRequest, HealthCheck, RegisterRequest};
use crate::app::{now_ms, App};
use crate::state::{Command, CommandResult};

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    crate::agent::api::handle(&ServerHost(app.clone()), req, tail).await
}

/// This server as the host of its agent.
pub struct ServerHost(pub Arc<App>);

/// The catalog as a server's agent writes it: proposals through Raft (forwarded to the leader).
#[async_trait::async_trait]
impl Catalog for App {
    async fn register(&self, r: &RegisterRequest) -> Result<(), String> {
        catalog_write(self, Command::Register { request: r.clone(), now_ms: now_ms() }).await
    }

    async fn deregister(&self, r: &DeregisterRequest) -> Result<(), String> {
        catalog_write(self, Command::Deregister { request: r.clone(), now_ms: now_ms() }).await
    }

    async fn node(&self, name: &str) -> Result<(Option<CatalogNode>, Vec<HealthCheck>), String> {
        Ok(self.sm.read(|s| (s.catalog_node(name).1, s.node_checks(name).1)))
    }
}

async fn catalog_write(app: &App, cmd: Command) -> Result<(), String> {
    match app.propose(cmd).await.map_err(|e| e.to_string())?.1 {
        CommandResult::Rejected(msg) => Err(msg),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl crate::agent::api::Host for ServerHost {
    fn agent(&self) -> &Agent {
        &self.0.agent
    }

    fn catalog(&self) -> &dyn Catalog {
        &*self.0
    }

    async fn authorize(&self, req: &Req) -> Result<Authorizer, ApiError> {
        super::acl::authorize(&self.0, req)
    }

    async fn acl_enabled(&self) -> bool {
        self.0.config.acl_enabled
    }

    async fn self_info(&self) -> serde_json::Value {
        agent_admin::agent_self(&self.0).await
    }

    fn coordinate(&self) -> crate::api::Coordinate {
        self.0.gossip.as_ref().map_or_else(crate::api::Coordinate::origin, |g| g.coordinate())
    }

    async fn members(&self, wan: bool) -> Vec<AgentMember> {
        agent_admin::members(&self.0, wan).await
    }

    fn leave(&self) {
        // Answer first, then leave the pool and stop as on SIGTERM.
        let app = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            app.leave.notify_one();
        });
    }

    async fn force_leave(&self, node: &str, prune: bool) -> Result<(), ApiError> {
        agent_admin::force_leave(&self.0, node, prune).await
    }

    fn reload(&self) -> Result<(), ApiError> {
        agent_admin::reload(&self.0)
    }

    fn prometheus(&self) -> String {
        self.0.metrics.watchers.set(self.0.sm.hub().watchers() as i64);
        self.0.metrics.render()
    }
}
