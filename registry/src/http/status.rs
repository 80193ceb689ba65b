//! `/v1/status/*` and `/v1/operator/raft/*`.

use std::sync::Arc;

use warp::http::Method;

use super::acl::{authorize, require_global};
use super::{ok_json, require_leader, ApiError, ApiResult, Req};
use crate::acl::{Access, Global};
use crate::api::{RaftConfiguration, RaftServer};
use crate::server::App;

pub async fn handle_status(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    match tail {
        "leader" => Ok(ok_json(&app.leader().map(|(_, n)| n.rpc_addr).unwrap_or_default())),
        "peers" => {
            let m = app.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let peers: Vec<String> =
                membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.rpc_addr.clone())).collect();
            Ok(ok_json(&peers))
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}

fn configuration(app: &App) -> RaftConfiguration {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let servers = membership
        .nodes()
        .map(|(id, n)| RaftServer {
            id: format!("{id}"),
            node: n.name.clone(),
            address: n.rpc_addr.clone(),
            leader: m.current_leader == Some(*id),
            protocol_version: "3".into(),
            voter: voters.contains(id),
        })
        .collect();
    RaftConfiguration { servers, index: m.membership_config.log_id().map_or(0, |l| l.index) }
}

pub async fn handle_operator(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let authz = if req.method == Method::GET {
        super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?;
        authorize(app, req)?
    } else {
        super::acl::authorize_write(app, req)?
    };
    let need = if req.method == Method::GET { Access::Read } else { Access::Write };
    require_global(&authz, Global::Operator, need)?;
    match (tail, &req.method) {
        ("raft/configuration", &Method::GET) => {
            let opts = super::QueryOpts::parse(req)?;
            super::blocking::check_read(app, &opts).await?;
            Ok(ok_json(&configuration(app)))
        }
        ("raft/peer", &Method::DELETE) => {
            let config = configuration(app);
            let wanted_id = req.get("id");
            let wanted_addr = req.get("address");
            if wanted_id.is_none() && wanted_addr.is_none() {
                return Err(ApiError::BadRequest(
                    "Must specify ?id with server id or ?address with IP:port of peer to remove".into(),
                ));
            }
            let server = config
                .servers
                .iter()
                .find(|s| {
                    Some(s.id.as_str()) == wanted_id
                        || Some(s.node.as_str()) == wanted_id
                        || Some(s.address.as_str()) == wanted_addr
                })
                .ok_or_else(|| ApiError::BadRequest("address or id not found in the Raft configuration".into()))?;
            let id: u64 = server.id.parse().map_err(|_| ApiError::Internal("bad server id".into()))?;
            require_leader(app)?;
            crate::cluster::remove_server(app, id).await.map_err(ApiError::BadRequest)?;
            Ok(ok_json(&true))
        }
        ("raft/transfer-leader", &Method::POST) => {
            require_leader(app)?;
            let to = match req.get("id").filter(|i| !i.is_empty()) {
                None => None,
                Some(id) => {
                    let config = configuration(app);
                    let server = config.servers.iter().find(|s| s.id == id || s.node == id).ok_or_else(|| {
                        ApiError::BadRequest(format!("server {id:?} not found in the Raft configuration"))
                    })?;
                    Some(server.id.parse::<u64>().map_err(|_| ApiError::Internal("bad server id".into()))?)
                }
            };
            let new_leader = crate::cluster::hand_off_leadership(app, to).await.map_err(ApiError::Internal)?;
            Ok(ok_json(&serde_json::json!({ "Success": true, "Leader": new_leader.to_string() })))
        }
        ("raft/configuration" | "raft/peer" | "raft/transfer-leader", m) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}
