//! ACL replication into a secondary datacenter, as Consul's: while this server leads a datacenter
//! that is not the primary (ACLs on, `acl_replication_token` set), it reads the primary's policies,
//! roles and tokens with blocking queries through the `?dc=` routing, diffs them against its copy
//! (`acl::replication::diff`) and writes the difference through Raft in one command. Tokens then
//! resolve from the copy, so they keep working while the primary is unreachable. `/v1/acl/replication`
//! reports the [`Status`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::acl::replication::diff;
use crate::api::{AclPolicy, AclRole, AclToken};
use crate::app::App;
use crate::state::{Command, CommandResult};

/// How long one blocking read of the primary waits for a change.
const BLOCKING_WAIT: Duration = Duration::from_secs(30);
/// Retry delays after a failed round: from the first to the cap, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(10);

/// Consul's zero `time.Time`, what `LastSuccess`/`LastError` read before anything happened.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// `/v1/acl/replication`'s answer, with Consul's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    pub enabled: bool,
    pub running: bool,
    pub source_datacenter: String,
    /// "tokens" when replicating (policies, roles and global tokens); "" otherwise.
    pub replication_type: String,
    /// The primary's ACL index of the last policies, roles and tokens copied.
    pub replicated_index: u64,
    pub replicated_role_index: u64,
    pub replicated_token_index: u64,
    pub last_success: String,
    pub last_error: String,
    pub last_error_message: String,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            enabled: false,
            running: false,
            source_datacenter: String::new(),
            replication_type: String::new(),
            replicated_index: 0,
            replicated_role_index: 0,
            replicated_token_index: 0,
            last_success: NEVER.into(),
            last_error: NEVER.into(),
            last_error_message: String::new(),
        }
    }
}

/// This server's replication status, shared with the HTTP handler.
#[derive(Debug, Default)]
pub struct Replication(Mutex<Status>);

impl Replication {
    pub fn status(&self) -> Status {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The primary's ACL index each list was read at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Indexes {
    policies: u64,
    roles: u64,
    tokens: u64,
}

/// Runs for the server's lifetime; replicates only while this server leads a secondary.
pub async fn run(app: Arc<App>) {
    if !app.config.acl_replicates() {
        return;
    }
    let primary = app.config.primary_datacenter().to_string();
    app.acl_replication.update(|s| {
        s.enabled = true;
        s.source_datacenter = primary.clone();
        s.replication_type = "tokens".into();
    });
    let mut shutdown = app.shutdown.subscribe();
    let mut metrics = app.raft.metrics();
    let mut last = Indexes::default();
    let mut retry = RETRY_FIRST;
    loop {
        if !app.is_leader() {
            app.acl_replication.update(|s| s.running = false);
            // A new leader starts over from a full read, as Consul's does.
            last = Indexes::default();
            tokio::select! {
                _ = metrics.wait_for(|m| m.current_leader == Some(app.id)) => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        app.acl_replication.update(|s| s.running = true);
        let round = tokio::select! {
            r = replicate_once(&app, &primary, last.policies) => r,
            _ = shutdown.changed() => return,
        };
        match round {
            Ok(now) => {
                last = now;
                retry = RETRY_FIRST;
                let at = crate::http::acl::now_rfc3339();
                app.acl_replication.update(|s| {
                    s.replicated_index = now.policies;
                    s.replicated_role_index = now.roles;
                    s.replicated_token_index = now.tokens;
                    s.last_success = at;
                });
            }
            Err(message) => {
                tracing::warn!(primary = %primary, error = %message, "ACL replication round failed");
                let at = crate::http::acl::now_rfc3339();
                app.acl_replication.update(|s| {
                    s.last_error = at;
                    s.last_error_message = message;
                });
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(RETRY_CAP);
            }
        }
    }
}

/// One round: wait for the primary's ACLs to move past `index` (at once on the first round), read
/// them, and write what differs here.
async fn replicate_once(app: &Arc<App>, primary: &str, index: u64) -> Result<Indexes, String> {
    let (policies, policies_at) = read_primary::<AclPolicy>(app, primary, "/v1/acl/policies", index).await?;
    let (roles, roles_at) = read_primary::<AclRole>(app, primary, "/v1/acl/roles", 0).await?;
    let (tokens, tokens_at) = read_primary::<AclToken>(app, primary, "/v1/acl/tokens", 0).await?;
    if tokens.iter().any(|t| !t.local && t.secret_id == "<hidden>") {
        return Err("the replication token may not read token secrets: it needs acl = \"write\"".into());
    }
    let (local_policies, local_roles, local_tokens) = app.sm.read(|s| s.acl_replicated_copy());
    let changes = diff(&local_policies, &local_roles, &local_tokens, &policies, &roles, &tokens);
    if !changes.is_empty() {
        let count = changes.len();
        match app.propose(Command::AclReplicate { changes }).await {
            Ok((_, CommandResult::Rejected(why))) => return Err(format!("applying replicated ACLs: {why}")),
            Ok(_) => tracing::info!(primary = %primary, changed = count, "replicated ACL changes"),
            Err(e) => return Err(format!("applying replicated ACLs: {e}")),
        }
    }
    Ok(Indexes { policies: policies_at, roles: roles_at, tokens: tokens_at })
}

/// A (blocking, when `index` > 0) list read of the primary through this server's own `?dc=`
/// routing, with the replication token; the list and its `X-Consul-Index`.
async fn read_primary<T: DeserializeOwned>(
    app: &Arc<App>,
    primary: &str,
    path: &str,
    index: u64,
) -> Result<(Vec<T>, u64), String> {
    let mut query = vec![("dc".to_string(), primary.to_string())];
    if index > 0 {
        query.push(("index".into(), index.to_string()));
        query.push(("wait".into(), format!("{}s", BLOCKING_WAIT.as_secs())));
    }
    let token = app.config.acl_replication_token.as_deref();
    // The wait plus Consul's up to 1/16 jitter, and slack for the trip.
    let deadline = BLOCKING_WAIT + Duration::from_secs(15);
    let resp = tokio::time::timeout(deadline, crate::http::get_as(app, path.to_string(), query, token))
        .await
        .map_err(|_| format!("reading {path} from datacenter {primary:?}: no answer in {deadline:?}"))?;
    let status = resp.status();
    let body = resp.body();
    if !status.is_success() {
        let text = String::from_utf8_lossy(body);
        return Err(format!("reading {path} from datacenter {primary:?}: {status}: {}", text.trim()));
    }
    let at = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .ok_or_else(|| format!("reading {path} from datacenter {primary:?}: no X-Consul-Index"))?;
    let items = serde_json::from_slice(body).map_err(|e| format!("reading {path} from datacenter {primary:?}: {e}"))?;
    Ok((items, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_consuls_names_and_zero_times() {
        let json = serde_json::to_value(Status::default()).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "Enabled": false, "Running": false, "SourceDatacenter": "", "ReplicationType": "",
                "ReplicatedIndex": 0, "ReplicatedRoleIndex": 0, "ReplicatedTokenIndex": 0,
                "LastSuccess": "0001-01-01T00:00:00Z", "LastError": "0001-01-01T00:00:00Z", "LastErrorMessage": ""
            })
        );
    }
}
