//! Tokens a secondary datacenter's server resolves by asking the primary, as Consul's servers do for
//! a token they hold no copy of: in a secondary without ACL replication (no replication token), and
//! in one whose replication has not yet brought any token. Once a copy exists, a token missing from
//! it is unknown, as in Consul (no asking).
//!
//! One stage of the request pipeline (`prepare`, before dispatch) asks the primary's
//! `/v1/internal/acl/rules` with the request's own token through the `?dc=` routing and records the
//! answer in a [`TokenCache`]; handlers then resolve synchronously, falling back to that cache
//! (`current`) for a token the state does not hold. The cache applies `acl_token_ttl` and
//! `acl_down_policy` while the primary is unreachable.

use std::sync::Arc;
use std::time::Duration;

use crate::acl::resolver::Resolver;
use crate::acl::token_cache::{Fetched, TokenCache};
use crate::acl::EffectiveRules;
use crate::api::ANONYMOUS_TOKEN_SECRET;
use crate::app::App;
use crate::config::Config;
use crate::state::State;
use crate::web::Req;

/// How long one question to the primary may take before it counts as unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers from the primary, by token.
#[derive(Debug)]
pub struct RemoteTokens(Arc<Resolver>);

impl RemoteTokens {
    pub fn new(config: &Config) -> Self {
        let cache = TokenCache::new(config.acl_token_ttl(), config.acl_down_policy());
        RemoteTokens(Resolver::new(cache, config.acl_default_allow()))
    }

    /// See [`Resolver::fresh_generation`].
    pub fn fresh_generation(&self, token: &Option<String>) -> Option<u64> {
        self.0.fresh_generation(token)
    }

    /// What the primary last said `token` may do (or the down policy's answer), if anything.
    pub fn current(&self, token: &Option<String>) -> Option<EffectiveRules> {
        self.0.current(token)
    }
}

/// A secondary datacenter's server with ACLs on: the only kind that may ask the primary.
pub fn in_secondary(config: &Config) -> bool {
    config.acl_enabled && config.primary_datacenter() != config.datacenter
}

/// Whether a token missing from `state` is asked of the primary.
pub fn asks_primary(config: &Config, state: &State) -> bool {
    in_secondary(config) && (!config.acl_replicates() || !state.acl_holds_global_tokens())
}

/// The pipeline stage: makes sure a request's token that only the primary knows is in the cache
/// (fresh, refreshed, or the down policy's answer) before the handlers resolve it.
pub async fn prepare(app: &Arc<App>, req: &Req) {
    // Another datacenter's servers resolve what is sent to them.
    if req.get("dc").is_some_and(|dc| !dc.is_empty() && dc != app.config.datacenter) {
        return;
    }
    resolve(app, crate::http::acl::token_of(app, req)).await;
}

/// Whether `token` is one this server resolves by asking the primary: a secondary that asks, and
/// the token not in its state.
pub fn only_primary_holds(config: &Config, state: &State, token: &Option<String>) -> bool {
    if !asks_primary(config, state) {
        return false;
    }
    let secret = token.as_deref().unwrap_or(ANONYMOUS_TOKEN_SECRET);
    state.acl_token_by_secret(secret, &crate::http::acl::now_rfc3339()).is_none()
}

/// Makes sure `token`, when only the primary holds it, is in the cache (fresh, refreshed, or the
/// down policy's answer) before anything resolves it synchronously: the request pipeline for the
/// request's token, DNS for the agent's default token.
pub async fn resolve(app: &Arc<App>, token: Option<String>) {
    let config = &app.config;
    if !in_secondary(config) {
        return;
    }
    if !app.sm.read(|s| only_primary_holds(config, s, &token)) {
        return;
    }
    // A refusal is forgotten: the handlers then answer "ACL not found" themselves.
    let asker = app.clone();
    let ask = move |token: Option<String>| async move { ask_primary(&asker, token.as_deref()).await };
    let _ = app.remote_tokens.0.resolve(token, ask).await;
}

/// The primary's `/v1/internal/acl/rules` with the token itself, as Consul's `ACL.TokenRead` with it.
async fn ask_primary(app: &Arc<App>, token: Option<&str>) -> Fetched {
    let primary = app.config.primary_datacenter().to_string();
    let asked = crate::http::get_from_datacenter(app, &primary, "/v1/internal/acl/rules".into(), token);
    let fetched = match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(resp) => Fetched::from_rules_answer(resp.status().as_u16(), resp.body(), &format!("datacenter {primary:?}")),
        Err(_) => Fetched::Unreachable(format!("datacenter {primary:?} did not answer in {ASK_TIMEOUT:?}")),
    };
    if let Fetched::Unreachable(why) = &fetched {
        tracing::warn!(primary = %primary, error = %why, down_policy = %app.config.acl_down_policy,
            "cannot resolve a token with the primary datacenter");
    }
    fetched
}
